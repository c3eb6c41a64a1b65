"""Behaviour from explicit models: segments, BG/NBD purchasing, Gamma-Gamma
spend, baskets with co-purchase affinities.

Published models followed here:

- BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way",
  Marketing Science 24(2), section 2): while active, purchases are Poisson
  with rate lam ~ Gamma(r, alpha) (eq. 1-2); after any (repeat) purchase the
  customer becomes inactive with probability p ~ Beta(a, b) (eq. 3-4). The
  purchase clock is the warped clock of :mod:`crmlab.synthetic.clock`.
- Gamma-Gamma spend (Fader, Hardie & Lee 2005, "RFM and CLV", Journal of
  Marketing Research 42(4), section "the spend model"; Colombo & Jiang 1999):
  an order's budget z ~ Gamma(p, nu), the customer's nu ~ Gamma(q, gamma), so
  the customer's mean spend is p / nu. The budget is spent in whole units at
  shelf prices, so an order's amount is the budget up to the fit of units and
  prices (unbiased on average, see :func:`build_orders`).
- Price response (``orders.prices`` in the scenario): every product's shelf
  price is its list price times a path of its own (permanent price changes and
  temporary markdowns, not tied to the calendar, see :func:`price_paths`), and
  the units of a line scale by ``(shelf price / list price) ** elasticity``
  -- a constant-elasticity demand curve, so the planted elasticity is what a
  log-log regression of units on price within products estimates.
"""

from __future__ import annotations

import numpy as np
from faker.providers.address.en_US import Provider as _UsAddress

from crmlab.synthetic import geo
from crmlab.synthetic.clock import Clock

# how a line's value picks its category: preference x exp(-(log v - log
# median price)^2 / (2 sigma^2)), so a 40 yuan line is groceries, not a phone
PRICE_FIT_SIGMA = 1.0
PRICE_GRID_STEP = 0.025
PRICE_GRID = np.arange(-3.0, 15.0, PRICE_GRID_STEP)   # log prices tabulated for fit and lookup
DISCOUNT_CONCENTRATION = 20.0   # an order's discount rate ~ Beta with this a + b around its mean
MAIN_LINE_WEIGHT = 1.6          # the first line of a basket tends to be the main item
MAX_UNITS_FACTOR = 3            # a line holds at most this many times its category's max_quantity (at list price)

# product-name words per category (names are cosmetic)
PRODUCT_WORDS: dict[str, tuple[str, ...]] = {
    "phones": ("Smartphone", "Phone", "Phone Pro", "Phone Lite", "Foldable Phone"),
    "accessories": ("Charger", "Cable", "Phone Case", "Screen Protector", "Power Bank",
                    "Earbuds", "Mouse", "Keyboard"),
    "electronics": ("Laptop", "Tablet", "Headphones", "Smartwatch", "Camera", "Monitor",
                    "Speaker"),
    "appliances": ("Air Fryer", "Rice Cooker", "Vacuum", "Air Purifier", "Coffee Maker",
                   "Washing Machine", "Refrigerator"),
    "beauty": ("Serum", "Face Cream", "Lipstick", "Sunscreen", "Cleanser", "Perfume"),
    "fashion": ("Jacket", "Dress", "Sneakers", "Jeans", "Handbag", "T-Shirt", "Scarf"),
    "baby_kids": ("Diapers", "Baby Formula", "Stroller", "Toy Set", "Kids Shoes",
                  "Baby Wipes"),
    "groceries": ("Rice", "Tea", "Snack Box", "Cooking Oil", "Coffee Beans", "Noodles",
                  "Milk"),
    "home": ("Bedding Set", "Towels", "Storage Box", "Desk Lamp", "Cookware", "Curtains"),
    "sports": ("Running Shoes", "Yoga Mat", "Bicycle", "Dumbbells", "Tent", "Racket"),
}
_BRANDS = ("Nova", "Zenith", "Aurora", "Vertex", "Lumo", "Orbit", "Kite", "Maple", "Pulse",
           "Atlas", "Cedar", "Halo", "Ember", "Tide", "Quill", "Summit")


def _mix(rng: np.random.Generator, weights: dict, names: list[str], n: int,
         concentration: float) -> np.ndarray:
    """Per-customer mixes around a preference vector: (n, len(names)) rows summing to 1."""
    w = np.array([float(weights.get(k, 0.0)) for k in names])
    w = w / w.sum()
    alpha = np.maximum(w * concentration, 1e-3)
    g = rng.standard_gamma(np.broadcast_to(alpha, (n, len(names))))
    g[:, w == 0] = 0.0
    s = g.sum(axis=1, keepdims=True)
    s[s == 0] = 1.0
    return g / s


def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per column of a (k, n) float32 weight matrix (columns need not sum to 1).

    The matrix is overwritten (it becomes the running sum). Transposed
    layout: each step below is a contiguous pass over n values.
    """
    k = weights.shape[0]
    np.cumsum(weights, axis=0, out=weights)
    u = rng.random(weights.shape[1], dtype=np.float32) * weights[-1]
    out = np.zeros(weights.shape[1], dtype=np.int64)
    for j in range(k - 1):
        out += weights[j] < u
    return out


def sorted_uniforms(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) draws, ``counts[i]`` for group i, ascending within each group.

    The k-th of n sorted uniforms is S_k / (S_n + E) with S cumulated
    standard exponentials and E one more (Renyi's representation), so no sort
    is needed.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    e = rng.standard_exponential(total)
    cs = np.cumsum(e)
    ends = np.cumsum(counts)
    starts = ends - counts
    before = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
    local = cs - np.repeat(before, counts)
    last = np.where(counts > 0, cs[np.maximum(ends - 1, 0)] - before, 0.0)
    tail = rng.standard_exponential(len(counts))
    return local / np.repeat(last + tail, counts)


def places(locale: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Provinces or states of a locale: names, region index, population weight."""
    table = geo.CN_PROVINCES if locale == "zh_CN" else geo.US_STATES
    names = list(table)
    region = np.array([geo.REGIONS.index(v[0]) for v in table.values()])
    weight = np.array([float(v[1]) for v in table.values()])
    return names, region, weight


def draw_latent(rng: np.random.Generator, scn: dict, loc: np.ndarray) -> dict:
    """Each customer's hidden traits.

    Parameters
    ----------
    rng : numpy Generator
    scn : dict
        Effective scenario.
    loc : (n,) int array
        Index of each customer's locale in ``scn["locale"]``.

    Returns
    -------
    dict of arrays, one row per customer: ``seg`` (segment index), ``lam``
    (purchases per clock day), ``p`` (dropout probability), ``nu`` and
    ``spend_mean`` (Gamma-Gamma), ``cat_mix`` (n, categories), ``chan_mix``
    (n, order channels), ``disc_share``, ``disc_rate``, ``female``,
    ``age_days``, ``place`` (index in the locale's provinces/states), ``city``
    (index in the place's cities), ``acq`` (acquisition channel index).
    """
    n = len(loc)
    segs = list(scn["segments"])
    seg_cfg = [scn["segments"][s] for s in segs]
    share = np.array([float(c["share"]) for c in seg_cfg])
    seg = rng.choice(len(segs), n, p=share / share.sum())
    bg = scn["bgnbd"]
    lam = rng.gamma(float(bg["r"]), 1.0 / float(bg["alpha"]), n)
    p = rng.beta(float(bg["a"]), float(bg["b"]), n)

    cats = list(scn["catalogue"])
    chans = list(scn["orders"]["channels"])
    acqs = list(scn["acquisition"]["channels"])
    conc = float(scn.get("mix_concentration", 12))
    locales = list(scn["locale"])
    nu = np.empty(n)
    spend_p = np.empty(n)
    cat_mix = np.empty((n, len(cats)))
    chan_mix = np.empty((n, len(chans)))
    disc_share = np.empty(n)
    disc_rate = np.empty(n)
    female = np.empty(n, dtype=bool)
    age = np.empty(n)
    acq = np.empty(n, dtype=np.int64)
    place = np.empty(n, dtype=np.int64)
    for si, c in enumerate(seg_cfg):
        sel = seg == si
        k = int(sel.sum())
        if not k:
            continue
        sp = c["spend"]
        nu[sel] = rng.gamma(float(sp["q"]), 1.0 / float(sp["gamma"]), k)
        spend_p[sel] = float(sp["p"])
        cat_mix[sel] = _mix(rng, c["categories"], cats, k, conc)
        chan_mix[sel] = _mix(rng, c["channels"], chans, k, conc)
        acq[sel] = rng.choice(len(acqs), k, p=_norm([c["acquisition"].get(a, 0) for a in acqs]))
        disc_share[sel] = np.clip(rng.beta(8 * c["discount"]["share"] + 0.5,
                                           8 * (1 - c["discount"]["share"]) + 0.5, k), 0, 0.95)
        disc_rate[sel] = float(c["discount"]["rate"])
        female[sel] = rng.random(k) < float(c["female"])
        age[sel] = np.clip(rng.normal(c["age"]["mean"], c["age"]["sd"], k), 18, 88)
        tilt = c.get("regions") or {}
        for li, locale in enumerate(locales):
            ss = sel & (loc == li)
            m = int(ss.sum())
            if not m:
                continue
            _, region, weight = places(locale)
            w = weight * np.array([float(tilt.get(geo.REGIONS[r], 1.0)) for r in region])
            place[ss] = rng.choice(len(w), m, p=w / w.sum())
    # mini programs are a Chinese channel: everyone else uses the app instead
    if "mini_program" in chans and "app" in chans:
        mp, app = chans.index("mini_program"), chans.index("app")
        other = loc != (locales.index("zh_CN") if "zh_CN" in locales else -1)
        chan_mix[other, app] += chan_mix[other, mp]
        chan_mix[other, mp] = 0.0
    city = np.floor(rng.random(n) ** 1.6 * 4).astype(np.int64)   # bigger cities first
    return {"seg": seg.astype(np.int64), "lam": lam, "p": p, "nu": nu, "spend_p": spend_p,
            "spend_mean": spend_p / nu, "cat_mix": cat_mix, "chan_mix": chan_mix,
            "disc_share": disc_share, "disc_rate": disc_rate, "female": female,
            "age_days": np.round(age * 365.25).astype(np.int64), "place": place,
            "city": city, "acq": acq}


def _norm(w) -> np.ndarray:
    w = np.asarray(w, dtype=float)
    return w / w.sum()


def purchase_events(rng: np.random.Generator, clock: Clock, loc: np.ndarray,
                    signup_t: np.ndarray, lam: np.ndarray, p: np.ndarray) -> dict:
    """Organic purchases of a BG/NBD population on the warped clock.

    The first order is at sign-up; repeat purchases follow a Poisson process
    of rate ``lam`` in clock time; after each repeat purchase the customer
    drops out with probability ``p``. Generated without a loop: the count in
    the window N ~ Poisson(lam * exposure), the repeat purchase that ends
    activity D ~ Geometric(p), x = min(N, D) purchases are the first x order
    statistics of N uniforms (cumulated exponentials over a Gamma total).

    Returns
    -------
    dict: ``cust`` (customer index per event, grouped by customer), ``t``
    (calendar days), ``dropout`` (bool: the purchase after which the customer
    dropped out), ``first`` (bool: the sign-up order), and per customer
    ``x`` (repeat purchases), ``alive`` (bool at the end), ``dropout_t``
    (calendar days of the dropout purchase, inf if alive).
    """
    n = len(loc)
    tau_s = clock.tau(loc, signup_t)
    tau_end = clock.cum[loc, clock.n_days]
    expo = np.maximum(tau_end - tau_s, 0.0)
    N = rng.poisson(lam * expo)
    D = rng.geometric(np.clip(p, 1e-12, 1.0))
    x = np.minimum(N, D)
    alive = N < D
    total = int(x.sum())
    owner = np.repeat(np.arange(n), x)
    e = rng.standard_exponential(total)
    cs = np.cumsum(e)
    ends = np.cumsum(x)
    starts = ends - x
    before = np.where(starts > 0, cs[np.maximum(starts - 1, 0)], 0.0)
    local = cs - np.repeat(before, x)
    s_x = np.where(x > 0, cs[np.maximum(ends - 1, 0)] - before, 0.0)
    g = rng.standard_gamma((N - x + 1).astype(float))
    u = local / np.repeat(s_x + g, x)
    tau_k = np.repeat(tau_s, x) + u * np.repeat(expo, x)
    t_k = clock.t_of_tau(loc[owner], tau_k)
    t_k = np.minimum(t_k, clock.n_days - 1e-9)
    # interleave the first (sign-up) order ahead of each customer's repeats
    cnt = x + 1
    cust = np.repeat(np.arange(n), cnt)
    pos = np.arange(len(cust)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    first = pos == 0
    t = np.empty(len(cust))
    t[first] = signup_t
    t[~first] = t_k
    dropout = np.zeros(len(cust), dtype=bool)
    last = np.cumsum(cnt) - 1
    dead = ~alive
    dropout[last[dead]] = True
    dropout_t = np.full(n, np.inf)
    dropout_t[dead] = t[last[dead]]
    return {"cust": cust, "t": t, "dropout": dropout, "first": first,
            "x": x, "alive": alive, "dropout_t": dropout_t}


def build_catalogue(rng: np.random.Generator, scn: dict) -> dict:
    """Products per category with lognormal list prices.

    Returns
    -------
    dict: ``product_id``, ``name``, ``category`` (index), ``list_price``,
    ``unit_cost`` arrays (sorted by category, then price), ``categories``
    (names), ``lo``/``hi`` (each category's slice), ``logp`` (log list price),
    ``median`` (per category), ``max_q``, ``pairs`` (categories x categories
    affinity rows, normalised), ``price_index`` (products x days: shelf
    price / list price, :func:`price_paths`).
    """
    cats = list(scn["catalogue"])
    rows = []
    for ci, name in enumerate(cats):
        c = scn["catalogue"][name]
        k = int(c["products"])
        price = np.exp(rng.normal(np.log(float(c["price"])), float(c["sigma"]), k))
        price = np.round(np.where(price > 100, np.round(price) - 0.01, price), 2)
        price = np.sort(np.maximum(price, 1.0))
        lo, hi = c["margin"]
        cost = np.round(price * (1 - rng.uniform(float(lo), float(hi), k)), 2)
        words = PRODUCT_WORDS.get(name, (name.title(),))
        w = rng.integers(0, len(words), k)
        b = rng.integers(0, len(_BRANDS), k)
        model = rng.integers(1, 99, k)
        for j in range(k):
            rows.append((ci, f"{_BRANDS[b[j]]} {words[w[j]]} {model[j]}", price[j], cost[j]))
    category = np.array([r[0] for r in rows])
    out = {
        "product_id": np.arange(1, len(rows) + 1, dtype=np.int64) + 1000,
        "name": [r[1] for r in rows],
        "category": category,
        "list_price": np.array([r[2] for r in rows]),
        "unit_cost": np.array([r[3] for r in rows]),
        "categories": cats,
    }
    out["lo"] = np.searchsorted(category, np.arange(len(cats)), side="left")
    out["hi"] = np.searchsorted(category, np.arange(len(cats)), side="right")
    out["logp"] = np.log(out["list_price"])
    # product index by category and log target price on a grid (the nearest
    # list price in log terms, so a budget is as often above as below it)
    grid = PRICE_GRID
    lookup, below = [], []
    for ci in range(len(cats)):
        lo, hi = out["lo"][ci], out["hi"][ci]
        lp = out["logp"][lo:hi]
        lookup.append(lo + np.searchsorted((lp[:-1] + lp[1:]) / 2, grid))
        below.append(np.clip(lo + np.searchsorted(lp, grid, side="right") - 1, lo, hi - 1))
    out["lookup"] = np.stack(lookup)
    # ... and the dearest list price at or below it (the cheapest if none is)
    out["lookup_below"] = np.stack(below)
    out["median"] = np.array([float(scn["catalogue"][c]["price"]) for c in cats])
    out["max_q"] = np.array([int(scn["catalogue"][c].get("max_quantity", 1)) for c in cats])
    pairs = np.zeros((len(cats), len(cats)))
    for ci, name in enumerate(cats):
        for other, w in (scn["catalogue"][name].get("pairs_with") or {}).items():
            pairs[ci, cats.index(other)] = float(w)
    out["pairs"] = pairs
    # drawn last, so the products themselves do not depend on the price settings
    out["price_index"] = price_paths(rng, scn, len(rows))
    return out


def _n_days(scn: dict) -> int:
    import datetime as dt

    return (dt.date.fromisoformat(scn["end"]) - dt.date.fromisoformat(scn["start"])).days + 1


def price_paths(rng: np.random.Generator, scn: dict, n_products: int) -> np.ndarray:
    """Each product's shelf price over time, as a multiple of its list price.

    Two movements, both drawn per product and independent of the calendar
    (so demand seasonality never moves with price; ``orders.prices`` in the
    scenario, every key optional):

    - permanent price changes: ``changes_per_year`` per product on average
      (Poisson), each a log step ~ Normal(0, ``change_sd``);
    - temporary markdowns (clearance, price tests): ``markdowns_per_year``
      episodes of ``markdown_weeks`` weeks (uniform between the two values),
      ``markdown_depth`` off the shelf price (uniform); overlapping
      markdowns keep the deepest.

    Prices change on Mondays only (a weekly price cycle, as retailers run
    them), so a week has one shelf price per product.

    Each path is then scaled so that the mean over days of ``index ** (1 +
    elasticity)`` is 1: with units answering the shelf price at the planted
    elasticity, spending at shelf prices averages spending at list prices,
    and orders keep their Gamma-Gamma budgets on average.

    Returns
    -------
    numpy.ndarray of float32, shape (n_products, n_days)
        Shelf price / list price per product and day of the world; all ones
        without ``orders.prices``.
    """
    n_days = _n_days(scn)
    cfg = (scn.get("orders") or {}).get("prices") or {}
    out = np.zeros((n_products, n_days))
    if not cfg:
        return np.ones((n_products, n_days), dtype=np.float32)
    import datetime as dt

    years = n_days / 365.25
    first_monday = (7 - dt.date.fromisoformat(scn["start"]).weekday()) % 7
    mondays = np.arange(first_monday, n_days, 7)
    k = rng.poisson(float(cfg.get("changes_per_year", 0.0)) * years, n_products)
    owner = np.repeat(np.arange(n_products), k)
    when = mondays[rng.integers(1 if mondays[0] == 0 else 0, len(mondays), len(owner))]
    step = rng.normal(0.0, float(cfg.get("change_sd", 0.0)), len(owner))
    np.add.at(out, (owner, when), step)
    out = np.cumsum(out, axis=1)
    out -= out.mean(axis=1, keepdims=True)
    k = rng.poisson(float(cfg.get("markdowns_per_year", 0.0)) * years, n_products)
    owner = np.repeat(np.arange(n_products), k)
    lo_w, hi_w = (int(v) for v in cfg.get("markdown_weeks", (1, 2)))
    lo_x, hi_x = (float(v) for v in cfg.get("markdown_depth", (0.1, 0.3)))
    start = mondays[rng.integers(0, len(mondays), len(owner))]
    length = 7 * rng.integers(lo_w, hi_w + 1, len(owner))
    depth = np.log1p(-rng.uniform(lo_x, hi_x, len(owner)))
    mark = np.zeros((n_products, n_days))
    for i, a, b, d in zip(owner, start, np.minimum(start + length, n_days), depth):
        mark[i, a:b] = np.minimum(mark[i, a:b], d)
    # centre each path so that, with units answering at the planted
    # elasticity e, spend at shelf prices averages spend at list prices:
    # mean over days of index ** (1 + e) is 1 (orders keep their budgets)
    log_index = out + mark
    power = 1.0 + float(cfg.get("elasticity", 0.0))
    if abs(power) > 1e-9:
        log_index -= np.log(np.exp(power * log_index).mean(axis=1, keepdims=True)) / power
    return np.exp(log_index).astype(np.float32)


def _shelf(cat: dict, idx: np.ndarray, day: np.ndarray) -> np.ndarray:
    """The shelf price of products ``idx`` on days ``day`` (cents)."""
    return np.maximum(np.round(cat["list_price"][idx] * cat["price_index"][idx, day], 2), 0.01)


def _dearest_within(cat: dict, lo: int, hi: int, day: np.ndarray, value: np.ndarray,
                    exclude: np.ndarray | None = None):
    """Per line, the dearest of products ``lo:hi`` (but ``exclude``) whose
    shelf price on ``day`` is at most ``value``: (index, found)."""
    shelf = cat["list_price"][lo:hi][None, :] * cat["price_index"][lo:hi][:, day].T
    if exclude is not None:
        rows = np.flatnonzero((exclude >= lo) & (exclude < hi))
        shelf[rows, exclude[rows] - lo] = np.inf
    fits = np.where(shelf <= value[:, None], shelf, -np.inf)
    best = np.argmax(fits, axis=1)
    found = np.isfinite(fits[np.arange(len(day)), best])
    best[~found] = np.argmin(shelf[~found], axis=1)
    return lo + best, found


def _affordable(cat: dict, category: np.ndarray, day: np.ndarray, value: np.ndarray,
                priced_out: np.ndarray) -> np.ndarray:
    """Per line, the dearest product of its category, other than the one
    that was priced out, whose shelf price that day is at most ``value``;
    failing that, the dearest such product of the whole catalogue; failing
    that, the cheapest product. (Buying the priced-out product after all
    would blunt its price answer.)"""
    out = np.empty(len(category), dtype=np.int64)
    found = np.zeros(len(category), dtype=bool)
    for ci in np.unique(category):
        sel = np.flatnonzero(category == ci)
        out[sel], found[sel] = _dearest_within(cat, cat["lo"][ci], cat["hi"][ci], day[sel], value[sel],
                                               priced_out[sel])
    rest = np.flatnonzero(~found)
    if len(rest):
        out[rest], _ = _dearest_within(cat, 0, len(cat["list_price"]), day[rest], value[rest],
                                       priced_out[rest])
    return out


def _grid_bin(logv: np.ndarray) -> np.ndarray:
    return np.clip(np.round((logv - PRICE_GRID[0]) / PRICE_GRID_STEP).astype(np.int64),
                   0, len(PRICE_GRID) - 1)


def build_orders(rng: np.random.Generator, scn: dict, clock: Clock, cat: dict, lat: dict,
                 loc: np.ndarray, cust: np.ndarray, t: np.ndarray) -> dict:
    """Amounts, discounts, channels, status and basket lines of purchase events.

    Transforms events (customer index ``cust``, calendar day ``t``) into one
    order each: a net budget ~ Gamma-Gamma, a discount rate (deeper on
    promotion days and for discount-prone customers), a gross budget
    ``budget / (1 - rate)`` split into 1 + Poisson lines whose categories
    follow the customer's mix, the previous line's ``pairs_with`` affinity
    and the line's value. Each line buys the product whose list price fits
    its value per unit (a few ranks of jitter for variety) at today's shelf
    price (``cat["price_index"]``): ``value / list_price * (shelf /
    list_price) ** elasticity`` units, rounded up or down at random so the
    expected units are exactly that (lines rounded to zero units are not
    bought; an order keeps at least one line). ``unit_price`` is the shelf
    price, ``gross`` the sum of the lines, ``discount = gross * rate`` and
    ``amount = gross - discount``: at list prices the expected amount is the
    Gamma-Gamma budget.

    Returns
    -------
    dict with per-order arrays ``amount``, ``discount``, ``channel`` (index),
    ``status`` (index), ``quantity``, ``n_lines`` and per-line arrays
    ``line_order`` (order position), ``product`` (catalogue position),
    ``line_qty``, ``unit_price`` (the shelf price), ``line_value`` (the
    line's budget); ``budget`` per order (the gross Gamma-Gamma budget).
    """
    n = len(cust)
    o = scn["orders"]
    day = np.clip(np.floor(t).astype(np.int64), 0, clock.n_days - 1)
    cl = loc[cust]
    # Gamma-Gamma net budget
    amount = rng.gamma(lat["spend_p"][cust], 1.0 / lat["nu"][cust])
    amount = np.clip(amount, 1.0, 200_000.0)
    # discount
    promo = clock.promo[cl, day]
    boost = np.where(promo, float(o.get("promotion_discount_share", 1.5)), 1.0)
    has = rng.random(n) < np.minimum(lat["disc_share"][cust] * boost, 0.95)
    mean = np.clip(lat["disc_rate"][cust] + clock.extra_discount[cl, day], 0.01, 0.6)
    k = DISCOUNT_CONCENTRATION
    rate = np.zeros(n)
    rate[has] = rng.beta(k * mean[has], k * (1 - mean[has]))
    rate = np.clip(rate, 0.0, 0.7)
    gross_target = amount / (1 - rate)
    # channel and status
    channel = _categorical(rng, np.take(lat["chan_mix"].T.astype(np.float32), cust, axis=1))
    st = o["status"]
    status = rng.choice(len(st), n, p=_norm(list(st.values())))
    # lines
    n_lines = np.minimum(1 + rng.poisson(float(o.get("extra_lines", 1.0)), n),
                         int(o.get("max_lines", 6)))
    total = int(n_lines.sum())
    line_order = np.repeat(np.arange(n), n_lines)
    first_line = np.cumsum(n_lines) - n_lines
    pos = np.arange(total) - np.repeat(first_line, n_lines)
    w = rng.gamma(1.5, 1.0, total)
    w = w * np.where(pos == 0, MAIN_LINE_WEIGHT, 1.0)
    wsum = np.add.reduceat(w, first_line)
    value = gross_target[line_order] * w / wsum[line_order]
    # category: the customer's mix (or the previous line's affinity) times how
    # well the category's prices fit the line's value (tabulated on a log grid)
    grid = PRICE_GRID
    fit = np.exp(-(grid[None, :] - np.log(cat["median"])[:, None]) ** 2 /
                 (2 * PRICE_FIT_SIGMA ** 2)).astype(np.float32)            # (categories, grid)
    gbin = _grid_bin(np.log(value))
    category = np.empty(total, dtype=np.int64)
    affinity = float(o.get("affinity", 0.5))
    pairs_t = np.ascontiguousarray(cat["pairs"].T.astype(np.float32))   # (to, from)
    has_pairs = cat["pairs"].sum(axis=1) > 0
    mix_t = np.ascontiguousarray(lat["cat_mix"].T.astype(np.float32))   # (categories, customers)
    line_cust = cust[line_order]
    for j in range(int(n_lines.max())):
        sel = np.flatnonzero(pos == j)
        W = np.take(mix_t, line_cust[sel], axis=1)
        if j > 0:
            prev = category[sel - 1]
            ua = np.flatnonzero((rng.random(len(sel)) < affinity) & has_pairs[prev])
            # the affinity leads; the customer's own mix (and a little of
            # everything) remains for values the paired categories cannot fit
            W[:, ua] = np.take(pairs_t, prev[ua], axis=1) + np.float32(0.15) * W[:, ua]
        W += np.float32(0.01)
        W *= np.take(fit, gbin[sel], axis=1)
        category[sel] = _categorical(rng, W)
    med = cat["median"][category]
    need = np.round(value / (med * np.exp(rng.normal(0, 0.35, total))))
    need = np.clip(need, 1, cat["max_q"][category])
    lo, hi = cat["lo"][category], cat["hi"][category]
    # the product whose list price fits the budget per unit, jittered a few
    # ranks for variety; an order's first line (its main item) takes a
    # product the budget covers, so an order is rarely priced out entirely
    gbin = _grid_bin(np.log(value / need))
    jitter = rng.integers(-2, 3, total)
    main = pos == 0
    idx = np.where(main, cat["lookup_below"][category, gbin] - np.abs(jitter),
                   cat["lookup"][category, gbin] + jitter)
    idx = np.clip(idx, lo, hi - 1)
    # the units the line's value buys at the list price, scaled by the price
    # response at today's shelf price (constant elasticity) and rounded up or
    # down at random so the expected units are exact
    line_day = day[line_order]
    shelf = _shelf(cat, idx, line_day)
    elasticity = float((o.get("prices") or {}).get("elasticity", 0.0))
    lp = cat["list_price"][idx]
    # (the cap bounds the units at the list price, before the price answer,
    # so the answer is the same constant elasticity for every line)
    units = np.minimum(value / lp, MAX_UNITS_FACTOR * cat["max_q"][category]) \
        * (shelf / lp) ** elasticity
    q = np.floor(units + rng.random(total)).astype(np.int64)
    # a line whose units round to zero was not bought; an order whose every
    # line was priced out buys, for its first line, the dearest product of
    # the category its value covers at today's shelf prices
    empty = np.flatnonzero(np.bincount(line_order, weights=q, minlength=n) == 0)
    if len(empty):
        f = first_line[empty]
        idx[f] = _affordable(cat, category[f], line_day[f], value[f], idx[f])
        shelf[f] = _shelf(cat, idx[f], line_day[f])
        q[f] = np.maximum(1, np.floor(value[f] / cat["list_price"][idx[f]]
                                      * (shelf[f] / cat["list_price"][idx[f]]) ** elasticity
                                      + rng.random(len(f))))
    keep = q > 0
    line_order, idx, q, shelf, value = (a[keep] for a in (line_order, idx, q, shelf, value))
    n_lines = np.bincount(line_order, minlength=n)
    gross = np.round(np.bincount(line_order, weights=q * shelf, minlength=n), 2)
    discount = np.round(gross * rate, 2)
    amount = np.round(gross - discount, 2)
    quantity = np.bincount(line_order, weights=q, minlength=n).astype(np.int64)
    return {"amount": amount, "discount": discount, "channel": channel, "status": status,
            "quantity": quantity, "n_lines": n_lines, "line_order": line_order,
            "product": idx, "line_qty": q, "unit_price": shelf, "promo": promo,
            "line_value": value, "budget": gross_target}


def postcodes(rng: np.random.Generator, locale: str, place_names: list[str],
              place: np.ndarray) -> list[str]:
    """Postcodes consistent with the province (first two digits) or state (ZIP range)."""
    n = len(place)
    if locale == "zh_CN":
        pre = np.array([geo.CN_PROVINCES[p][3] for p in place_names])[place]
        rest = rng.integers(0, 10_000, n)
        return [f"{a}{b:04d}" for a, b in zip(pre.tolist(), rest.tolist())]
    ranges = _UsAddress.states_postcode
    lo = np.array([ranges.get(s, (10001, 99950))[0] for s in place_names])[place]
    hi = np.array([ranges.get(s, (10001, 99950))[1] for s in place_names])[place]
    z = lo + np.floor(rng.random(n) * (hi - lo + 1)).astype(np.int64)
    return [f"{v:05d}" for v in z.tolist()]
