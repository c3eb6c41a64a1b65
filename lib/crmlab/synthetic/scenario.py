"""Scenario files: find, read, merge and fingerprint them.

A scenario is ``synthetic/<name>.yaml`` (``crmlab.config.scenarios_dir()``)
or a path to a YAML file. ``base: <name>`` starts from another scenario and
overrides its keys (nested mappings are merged, lists replaced; a defect
rate of 0 switches that class off, ``defects: none`` all of them). The
*effective* scenario -- after the base and the caller's overrides -- is what
the generator uses, what ``truth/params.json`` records and what the world's
cache key hashes.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from crmlab import config
from crmlab.exceptions import ParameterError

# bump when the generator's output for the same scenario changes, so cached
# worlds are regenerated
GENERATOR_VERSION = "1.2.0"

LOCALES = ("zh_CN", "en_US")
COUNTRY = {"zh_CN": "CN", "en_US": "US"}

DEFECT_CLASSES = (
    "duplicate_customer", "invalid_email", "invalid_phone", "missing_value",
    "orphan_order", "negative_amount", "absurd_amount", "future_date",
    "date_out_of_range", "mixed_date_format", "mixed_phone_format",
    "case_whitespace", "out_of_domain",
)

REQUIRED_KEYS = ("seed", "customers", "start", "end", "currency", "locale", "bgnbd",
                 "segments", "catalogue", "orders", "seasonality", "campaigns")


def scenario_path(scenario: str | Path) -> Path:
    """The YAML file of a scenario name or path.

    Examples
    --------
    >>> scenario_path("demo").name
    'demo.yaml'
    """
    p = Path(scenario)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ParameterError(f"scenario file not found: {p}")
        return p.resolve()
    candidate = config.scenarios_dir() / f"{scenario}.yaml"
    if not candidate.is_file():
        known = sorted(q.stem for q in config.scenarios_dir().glob("*.yaml"))
        raise ParameterError(f"unknown scenario {str(scenario)!r}; known: {known}")
    return candidate


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _plain(obj: Any) -> Any:
    """YAML dates to ISO strings, tuples to lists: JSON-ready, hash-stable."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()[:10]
    return obj


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ParameterError(f"scenario {path.name} has a circular `base`")
    doc = config.load_yaml(path, "scenario")
    base = doc.pop("base", None)
    if base:
        base_path = scenario_path(base) if not Path(base).suffix else (path.parent / base)
        doc = _merge(_read(Path(base_path).resolve(), seen + (path,)), doc)
    return doc


def normalise_locale(locale: str | dict | None) -> dict[str, float]:
    """``"en_US"`` or ``{zh_CN: 0.6, en_US: 0.4}`` -> shares summing to 1."""
    if isinstance(locale, str):
        locale = {locale: 1.0}
    if not isinstance(locale, dict) or not locale:
        raise ParameterError("locale must be a locale name or a mapping of locale -> share")
    unknown = sorted(set(locale) - set(LOCALES))
    if unknown:
        raise ParameterError(f"unknown locale {unknown}; known: {list(LOCALES)}")
    total = float(sum(locale.values()))
    if total <= 0 or any(float(v) < 0 for v in locale.values()):
        raise ParameterError("locale shares must be non-negative and not all zero")
    return {k: float(v) / total for k, v in locale.items() if float(v) > 0}


def load_scenario(scenario: str | Path = "demo") -> dict:
    """Read a scenario (name or path) with its ``base`` merged in.

    Parameters
    ----------
    scenario : str or Path
        A name of ``synthetic/<name>.yaml`` or a path to a YAML file.

    Returns
    -------
    dict
        The scenario as plain JSON-ready data (dates as ISO strings) with
        ``name`` set (the file's stem), ``locale`` as shares summing to 1 and
        ``defects`` as a mapping (empty for ``defects: none``).

    Examples
    --------
    >>> s = load_scenario("demo")
    >>> s["name"], s["currency"]
    ('demo', 'CNY')
    """
    path = scenario_path(scenario)
    doc = _plain(_read(path))
    doc["name"] = path.stem
    return _finish(doc)


def _finish(doc: dict) -> dict:
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ParameterError(f"scenario {doc.get('name')!r} lacks {missing}")
    doc["locale"] = normalise_locale(doc["locale"])
    defects = doc.get("defects") or {}
    if defects in ("none", "None", False):
        defects = {}
    if not isinstance(defects, dict):
        raise ParameterError("defects must be `none` or a mapping of defect class -> rate")
    unknown = sorted(set(defects) - set(DEFECT_CLASSES))
    if unknown:
        raise ParameterError(f"unknown defect classes {unknown}; known: {list(DEFECT_CLASSES)}")
    for k, v in defects.items():
        if not 0 <= float(v) < 0.5:
            raise ParameterError(f"defect rate {k}={v} must be in [0, 0.5)")
    doc["defects"] = {k: float(v) for k, v in defects.items() if float(v) > 0}
    try:
        start, end = dt.date.fromisoformat(doc["start"]), dt.date.fromisoformat(doc["end"])
    except (TypeError, ValueError):
        raise ParameterError("start and end must be dates (YYYY-MM-DD)") from None
    if end <= start:
        raise ParameterError("end must be after start")
    if int(doc["customers"]) < 1:
        raise ParameterError("customers must be at least 1")
    doc["customers"] = int(doc["customers"])
    doc["seed"] = int(doc["seed"])
    for c in doc["campaigns"].get("list", []):
        for key in ("start", "end"):
            if key in c and not (doc["start"] <= c[key] <= doc["end"]):
                raise ParameterError(f"campaign {c.get('id')} {key} {c[key]} is outside the "
                                     f"world's window {doc['start']}..{doc['end']}")
    return doc


def effective_scenario(scenario: str | Path | dict = "demo", *, customers: int | None = None,
                       seed: int | None = None, locale: str | dict | None = None) -> dict:
    """The scenario with the caller's overrides applied (see :func:`load_scenario`)."""
    doc = copy.deepcopy(scenario) if isinstance(scenario, dict) else load_scenario(scenario)
    if customers is not None:
        doc["customers"] = int(customers)
    if seed is not None:
        doc["seed"] = int(seed)
    if locale is not None:
        doc["locale"] = locale
    return _finish(doc)


def scenario_hash(doc: dict) -> str:
    """A short digest of the effective scenario and the generator version."""
    text = json.dumps(doc, sort_keys=True, default=str) + GENERATOR_VERSION
    return hashlib.sha256(text.encode()).hexdigest()[:12]
