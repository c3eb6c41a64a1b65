"""A synthetic CRM world with known truth.

``generate("demo")`` turns a scenario (``synthetic/<name>.yaml``) into a
world directory; ``ensure_world("demo")`` returns the cached one, making it
on first use. People come from Faker-made pools (``en_US``, ``zh_CN``);
behaviour from explicit models, so every report can be scored against what
was planted. Same scenario and seed -> byte-identical Parquet and truth files.

World directory
---------------
::

    customers.parquet orders.parquet order_lines.parquet products.parquet
    interactions.parquet tickets.parquet campaigns.parquet campaign_contacts.parquet
    crm.duckdb     the same eight tables
    world.json     {"scenario", "seed", "customers", "locale", "start", "end",
                    "currency", "generator_version", "rows": {table: n}}
    truth/         everything planted (below)

Columns follow the data contract (DESIGN.md). ``birth_date`` and
``signup_date`` are strings (ISO, except planted ``mixed_date_format`` rows);
``campaigns.planned_treatment_share`` is null for a campaign without a
control group. Control contacts get no message: their ``delivered``,
``opened`` and ``clicked`` are 0. A contact ``converted`` when the customer
ordered within the campaign's attribution window after ``sent_at`` (any
status); ``revenue`` sums the window's paid orders.

The models
----------
- Segments (``segments`` in the scenario): latent groups that differ in
  spend, category mix, channel mix, discount share, age, gender, region and
  ticket rate -- not in purchase rate.
- Purchases: one BG/NBD population (Fader, Hardie & Lee 2005, Marketing
  Science 24(2), eq. 1-4): lam ~ Gamma(r, alpha) per day, p ~ Beta(a, b);
  the first order is at sign-up; after each repeat purchase the customer
  drops out with probability p. The Poisson clock is warped day by day
  (weekly, yearly, holidays from :mod:`crmlab.calendars`, promotions;
  average 1 per locale), so counts stay BG/NBD and timing gets seasonality.
- Spend: Gamma-Gamma (Fader, Hardie & Lee 2005, JMR 42(4)): net amount ~
  Gamma(p, nu), nu ~ Gamma(q, gamma) per customer, per segment.
- Baskets: 1 + Poisson lines by category mix, co-purchase affinity and value;
  ``unit_price`` is the product's shelf price that day (its list price times a
  path of its own: price changes and markdowns); the units of a line answer
  it with the planted price elasticity ``orders.prices.elasticity``
  (constant-elasticity demand, see :mod:`crmlab.synthetic.behaviour`);
  ``amount = sum(quantity * unit_price) - discount``, the Gamma-Gamma budget
  on average.
- Campaigns: see :mod:`crmlab.synthetic.campaigns`.
- Tickets and interactions: see :mod:`crmlab.synthetic.activity`.
- Defects: see :mod:`crmlab.synthetic.defects`.

Truth folder
------------
``truth/customers.parquet``
    customer_id, segment, lam (purchases per day), p (dropout probability),
    spend_mean (the customer's mean net order amount, p / nu), signup (date),
    dropout_date (date of the repeat purchase after which the customer
    dropped out; null if active at the world's end), alive_at_end, locale,
    duplicate_of (the original's customer_id for a duplicate record, else
    null; a duplicate carries its original's latent values). Rows in the
    order of ``customers.parquet``.
``truth/params.json``
    The effective scenario, with ``bgnbd: {r, alpha, a, b, time_unit: "D"}``
    and each segment's ``spend: {p, q, gamma, mean}``, calendar, promotions,
    ``orders.prices`` (the planted price ``elasticity`` and the price paths'
    settings), currency, start, end, ``generator_version``.
``truth/duplicates.parquet``
    customer_id_a (original), customer_id_b (duplicate), changes
    ("field:change" list, e.g. ``name:abbreviated,phone:format``),
    orders_moved (orders booked on the duplicate).
``truth/defects.parquet``
    table, row (1-based position in that table's Parquet file), key (the
    row's id: customer_id, order_id or ticket_id), column (null for a whole
    duplicate row), defect (class name).
``truth/campaigns.parquet``
    campaign_id, has_control, planned_treatment_share, true_uplift (mean over
    treatment contacts of p_treatment - p_control), true_revenue_uplift_per_contact,
    true_extra_orders_per_contact (the extra orders a treated contact places:
    what a difference-in-differences on orders estimates for a campaign
    without a control group), effect_kind (positive / none / negative /
    heterogeneous), srm_planted, shared_control_with (the other campaign's id),
    n_treatment, n_control, attribution_days, channel.
``truth/contacts.parquet``
    campaign_id, customer_id, group, p_control, p_treatment (the contact's
    planted conversion probabilities without / with treatment),
    revenue_uplift (expected revenue change if treated).
``truth/campaign_orders.parquet``
    order_id, campaign_id, customer_id, group, incremental: every order in a
    contact's attribution window; ``incremental`` marks the extra orders the
    campaign created (outside the BG/NBD process -- drop them to fit it).
``truth/daily.parquet``
    date, multiplier (weekly x yearly x holiday x promotion, averaged over
    locales by customer share), is_promotion, holiday (event names joined by
    "+", or null), expected_orders (first orders plus expected BG/NBD repeat
    purchases, from a subsample of up to 20,000 customers when larger;
    campaign extras excluded), multiplier_<locale>, is_promotion_<locale>.

Speed and memory
----------------
Customers are made in chunks (``chunk_customers``) with their own random
streams; worlds of three chunks or more are built by two forked worker
processes while the main process writes Parquet and DuckDB
(``CRMLAB_GENERATE_WORKERS=0`` builds everything in-process; the bytes are
the same either way). ``crm.duckdb`` holds the same rows but is not
byte-identical between runs.

Examples
--------
>>> from crmlab import synthetic
>>> world = synthetic.generate("small", out=tmp_path / "w")        # doctest: +SKIP
>>> sorted(p.name for p in world.glob("*.parquet"))[:2]             # doctest: +SKIP
['campaign_contacts.parquet', 'campaigns.parquet']
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from crmlab import config
from crmlab.exceptions import ParameterError
from crmlab.synthetic.scenario import (DEFECT_CLASSES, GENERATOR_VERSION, effective_scenario,
                                       load_scenario, scenario_hash)

__all__ = ["generate", "ensure_world", "load_scenario", "world_dir", "GENERATOR_VERSION",
           "DEFECT_CLASSES"]

log = logging.getLogger("crmlab.synthetic")


def world_dir(scenario: str | Path | dict = "demo", *, customers: int | None = None,
              seed: int | None = None, locale: str | dict | None = None) -> Path:
    """Where the cached world of a scenario lives: ``data_dir()/<name>-<hash>``.

    The hash covers the effective scenario and the generator version, so a
    changed scenario gets a new directory.
    """
    doc = effective_scenario(scenario, customers=customers, seed=seed, locale=locale)
    return config.data_dir() / f"{doc['name']}-{scenario_hash(doc)}"


@contextlib.contextmanager
def _lock(target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    path = target.parent / f".{target.name}.lock"
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _build_into(doc: dict, target: Path) -> None:
    """Generate into a temporary sibling, then rename it into place."""
    from crmlab.synthetic.world import build_world

    if target.exists() and not (target / "world.json").exists() and any(target.iterdir()):
        raise ParameterError(f"{target} exists and is not a synthetic world; "
                             "choose an empty or new directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)      # mkdtemp makes it private; a world is shared
        build_world(doc, tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def generate(scenario: str | Path = "demo", *, customers: int | None = None,
             seed: int | None = None, locale: str | None = None,
             out: str | Path | None = None) -> Path:
    """Generate a synthetic CRM world.

    Parameters
    ----------
    scenario : str or Path
        A name of ``synthetic/<name>.yaml`` or a path to a scenario YAML.
    customers, seed, locale : optional
        Override the scenario's values (``locale``: ``"en_US"``, ``"zh_CN"``
        or a mapping of shares).
    out : str or Path, optional
        The world directory; default :func:`world_dir`. An existing world
        there is replaced atomically; any other non-empty directory is refused.

    Returns
    -------
    Path
        The world directory (layout in this module's docstring).

    Examples
    --------
    >>> generate("small", customers=500, out="/tmp/w")   # doctest: +SKIP
    PosixPath('/tmp/w')
    """
    doc = effective_scenario(scenario, customers=customers, seed=seed, locale=locale)
    default = config.data_dir() / f"{doc['name']}-{scenario_hash(doc)}"
    target = Path(out).resolve() if out else default
    with _lock(target):
        log.info("generating scenario %s (%d customers, seed %d) into %s",
                 doc["name"], doc["customers"], doc["seed"], target)
        _build_into(doc, target)
    return target


def ensure_world(scenario: str | Path = "demo") -> Path:
    """The cached world of a scenario, generated on first use.

    Safe to call from several processes at once: one generates, the others
    wait for it and reuse the result.

    Returns
    -------
    Path
        The world directory, ``data_dir()/<name>-<hash>``.

    Examples
    --------
    >>> world = ensure_world("small")                      # doctest: +SKIP
    >>> json.loads((world / "world.json").read_text())["rows"]["customers"]   # doctest: +SKIP
    2060
    """
    doc = effective_scenario(scenario)
    target = config.data_dir() / f"{doc['name']}-{scenario_hash(doc)}"
    if (target / "world.json").is_file():
        return target
    with _lock(target):
        if not (target / "world.json").is_file():
            log.info("generating scenario %s into %s", doc["name"], target)
            _build_into(doc, target)
    return target
