"""People: Faker-made pools sampled with numpy.

Faker makes a few thousand whole people a second, too slow for a million
customers, so it makes *pools* once (given names per gender, family names,
streets, sentences; seeded with ``Faker.seed_instance``) and numpy samples
and combines them per customer. Everything personal is formatted here:
names, e-mail addresses, phone numbers in each locale's formats, resident
identity numbers with their check digit, addresses, postcodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from faker import Faker

from crmlab.synthetic import geo

# the usual phone format per locale (the clean world uses only these) and
# the other ways customers type the same number (``mixed_phone_format``);
# placeholders: {n} national number, {a}{b}{c} its 3/4/4 (CN) or 3/3/4 (US) parts
PHONE_FORMATS: dict[str, str] = {"zh_CN": "{n}", "en_US": "({a}) {b}-{c}"}
PHONE_FORMATS_OTHER: dict[str, tuple[str, ...]] = {
    "zh_CN": ("+86 {a}-{b}-{c}", "0086{n}", "+86 {n}", "{a} {b} {c}", "{a}-{b}-{c}",
              "+86{n}", "(+86){n}"),
    "en_US": ("+1 ({a}) {b}-{c}", "{a}.{b}.{c}", "{a}-{b}-{c}", "+1 {a} {b} {c}", "{n}",
              "1-{a}-{b}-{c}", "+1{n}"),
}

# the other date formats of ``mixed_date_format`` (per locale: what people there type)
DATE_FORMATS_OTHER: dict[str, tuple[str, ...]] = {
    "zh_CN": ("%Y/%m/%d", "{y}年{m}月{d}日", "%Y.%m.%d", "%Y%m%d"),
    "en_US": ("%m/%d/%Y", "%b %d, %Y", "%d.%m.%Y", "%m-%d-%Y"),
}

_ID_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2])
_ID_CHECK = np.array(list("10X98765432"))


@dataclass
class Pools:
    """Faker-made building blocks of one locale."""

    first_female: np.ndarray
    first_male: np.ndarray
    last: np.ndarray
    roman_first: np.ndarray   # zh_CN: romanised names for e-mail addresses
    roman_last: np.ndarray
    streets: np.ndarray
    sentences: np.ndarray


def build_pools(seed: int, locale: str, size: int = 1500) -> Pools:
    """Draw the pools of a locale from a seeded Faker.

    Parameters
    ----------
    seed : int
    locale : {"zh_CN", "en_US"}
    size : int
        Entries per pool (Faker draws them with its own frequency weights,
        so common names stay common).
    """
    fk = Faker(locale)
    fk.seed_instance(seed)
    rng = np.random.default_rng([seed, 7001, 1 if locale == "zh_CN" else 2])
    if locale == "zh_CN":
        ff = [fk.first_name_female() for _ in range(size // 2)]
        fm = [fk.first_name_male() for _ in range(size // 2)]
        # most Chinese given names have two characters; compose more of them
        # from the characters Faker uses for each gender
        for names in (ff, fm):
            chars = np.array(sorted({c for n in names for c in n}))
            extra = rng.choice(chars, size=(size - len(names), 2))
            names.extend(a + b for a, b in extra)
        last = [fk.last_name() for _ in range(size)]
        rf = [fk.first_romanized_name().lower() for _ in range(size // 3)]
        rl = [fk.last_romanized_name().lower() for _ in range(size // 3)]
        streets = []
        for _ in range(size):
            streets.append(f"{fk.district()}区{fk.street_name()}")
    else:
        ff = [fk.first_name_female() for _ in range(size)]
        fm = [fk.first_name_male() for _ in range(size)]
        last = [fk.last_name() for _ in range(size)]
        rf, rl = [], []
        streets = [fk.street_address() for _ in range(size)]
    sentences = [fk.sentence(nb_words=10) for _ in range(max(200, size // 4))]
    return Pools(np.array(ff), np.array(fm), np.array(last), np.array(rf), np.array(rl),
                 np.array(streets), np.array(sentences))


def names(rng: np.random.Generator, pools: Pools, locale: str, female: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Given name, family name and full name per person (``female``: bool array)."""
    n = len(female)
    first = np.where(female, rng.choice(pools.first_female, n), rng.choice(pools.first_male, n))
    last = rng.choice(pools.last, n)
    if locale == "zh_CN":
        full = [b + a for a, b in zip(first.tolist(), last.tolist())]
    else:
        full = [f"{a} {b}" for a, b in zip(first.tolist(), last.tolist())]
    return first, last, full


def _ascii(s: str) -> str:
    return re.sub(r"[^a-z]", "", s.lower())


def emails(rng: np.random.Generator, pools: Pools, locale: str, first: np.ndarray,
           last: np.ndarray, birth_year: np.ndarray) -> list[str]:
    """Plausible personal addresses: name-based, with a year or digits; QQ numbers in China."""
    n = len(first)
    doms = geo.EMAIL_DOMAINS[locale]
    dom = rng.choice(np.array(list(doms)), n, p=np.array(list(doms.values())) / sum(doms.values()))
    digits = rng.integers(1, 1000, n)
    pattern = rng.integers(0, 6, n)
    yy = birth_year % 100
    out = []
    if locale == "zh_CN":
        rf = rng.choice(pools.roman_first, n)
        rl = rng.choice(pools.roman_last, n)
        qq = rng.integers(10_000_000, 3_000_000_000, n)
        for i in range(n):
            if dom[i] == "qq.com" or pattern[i] == 0:
                out.append(f"{qq[i]}@qq.com")
                continue
            k = pattern[i]
            local = (f"{rl[i]}{rf[i]}{birth_year[i]}" if k == 1 else
                     f"{rl[i]}.{rf[i]}{digits[i]}" if k == 2 else
                     f"{rf[i][0]}{rl[i]}{yy[i]:02d}{digits[i]}" if k == 3 else
                     f"{rl[i]}_{rf[i]}{digits[i]}" if k == 4 else
                     f"{rf[i]}{rl[i]}{digits[i]:03d}")
            out.append(f"{local}@{dom[i]}")
        return out
    for i in range(n):
        f, l_, k = _ascii(first[i]), _ascii(last[i]), pattern[i]
        local = (f"{f}.{l_}{yy[i]:02d}" if k == 0 else
                 f"{f}{l_}{digits[i]}" if k == 1 else
                 f"{f[:1]}{l_}{digits[i]}" if k == 2 else
                 f"{f}_{l_}{yy[i]:02d}{digits[i] % 10}" if k == 3 else
                 f"{l_}.{f}{digits[i]}" if k == 4 else
                 f"{f}{digits[i]:03d}{yy[i]:02d}")
        out.append(f"{local}@{dom[i]}")
    return out


def phone_numbers(rng: np.random.Generator, locale: str, n: int) -> np.ndarray:
    """National significant numbers: CN mobiles (11 digits), US numbers (10 digits)."""
    if locale == "zh_CN":
        pre = rng.choice(np.array(geo.CN_MOBILE_PREFIXES), n)
        rest = rng.integers(0, 100_000_000, n)
        return np.array([f"{a}{b:08d}" for a, b in zip(pre.tolist(), rest.tolist())])
    area = rng.choice(np.array(geo.US_AREA_CODES), n)
    exch = rng.integers(200, 1000, n)
    bad = (exch % 100 == 11) | (exch == 555)
    exch[bad] += 1
    line = rng.integers(0, 10_000, n)
    return np.array([f"{a}{b:03d}{c:04d}" for a, b, c in zip(area.tolist(), exch.tolist(),
                                                           line.tolist())])


def format_phone(number: str, locale: str, template: str) -> str:
    """One national number in a template of :data:`PHONE_FORMATS`."""
    if locale == "zh_CN":
        a, b, c = number[:3], number[3:7], number[7:]
    else:
        a, b, c = number[:3], number[3:6], number[6:]
    return template.format(n=number, a=a, b=b, c=c)


def format_phones(numbers: np.ndarray, locale: str) -> list[str]:
    t = PHONE_FORMATS[locale]
    return [format_phone(x, locale, t) for x in numbers.tolist()]


def cn_resident_ids(rng: np.random.Generator, gb_code: np.ndarray, birth: np.ndarray,
                    female: np.ndarray) -> list[str]:
    """18-digit resident identity numbers (GB 11643-1999) with a valid check digit.

    Area (province code + city 01 + district), birth date YYYYMMDD, a
    sequence number odd for men and even for women, and the ISO 7064
    MOD 11-2 check character.
    """
    n = len(gb_code)
    district = rng.integers(1, 19, n)
    seq = rng.integers(0, 500, n) * 2 + np.where(female, 0, 1)
    ymd = np.char.replace(np.datetime_as_string(birth, unit="D").astype("U10"), "-", "")
    body = [f"{g}01{d:02d}{b}{s:03d}" for g, d, b, s in
            zip(gb_code.tolist(), district.tolist(), ymd.tolist(), seq.tolist())]
    digits = np.frombuffer("".join(body).encode(), dtype=np.uint8).reshape(n, 17) - 48
    check = _ID_CHECK[(digits.astype(np.int64) @ _ID_WEIGHTS) % 11]
    return [b + c for b, c in zip(body, check.tolist())]


def id_check_digit(body17: str) -> str:
    """The check character of an 18-digit resident identity number's first 17 digits."""
    s = sum(int(c) * w for c, w in zip(body17, _ID_WEIGHTS.tolist()))
    return str(_ID_CHECK[s % 11])


def us_ssns(rng: np.random.Generator, n: int) -> list[str]:
    """SSN-like numbers: area 001-899 except 666, group 01-99, serial 0001-9999."""
    area = rng.integers(1, 900, n)
    area[area == 666] = 665
    group = rng.integers(1, 100, n)
    serial = rng.integers(1, 10_000, n)
    return [f"{a:03d}-{g:02d}-{s:04d}" for a, g, s in
            zip(area.tolist(), group.tolist(), serial.tolist())]


def addresses(rng: np.random.Generator, pools: Pools, locale: str, n: int) -> list[str]:
    """Street lines: ``新城区林街128号`` or Faker's US street addresses."""
    street = rng.choice(pools.streets, n)
    if locale == "zh_CN":
        num = rng.integers(1, 999, n)
        flat = rng.random(n) < 0.6
        bld = rng.integers(1, 30, n)
        room = rng.integers(1, 33, n) * 100 + rng.integers(1, 6, n)
        return [f"{s}{a}号{b}栋{r}室" if f else f"{s}{a}号" for s, a, f, b, r in
                zip(street.tolist(), num.tolist(), flat.tolist(), bld.tolist(), room.tolist())]
    return street.tolist()


def format_date(day: np.datetime64, locale: str, fmt: str) -> str:
    """A date in one of :data:`DATE_FORMATS_OTHER`."""
    d = day.astype("datetime64[D]").item()
    if fmt.startswith("{"):
        return fmt.format(y=d.year, m=d.month, d=d.day)
    return d.strftime(fmt)
