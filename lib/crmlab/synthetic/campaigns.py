"""Campaigns with randomised treatment and control and a planted effect.

A contact *converts* when the customer orders within ``attribution_days`` of
``sent_at``. Organic orders come from the customer's BG/NBD process, so the
probability of converting without the campaign is known exactly:

    p_control = alive(sent_at) * (1 - exp(-lam * (tau(sent_at + w) - tau(sent_at))))

(a customer still active at ``sent_at`` can only drop out after a purchase,
so the first purchase in the window is an ordinary Poisson event). The
campaign then acts on treated contacts whose message was delivered:

- ``positive`` / ``heterogeneous``: an extra order with probability
  ``uplift`` (per segment for heterogeneous), for customers still active:
  ``p_treatment = p_control + (1 - p_control) * uplift * P(delivered)``;
  a negative segment uplift ``-s`` (heterogeneous only) acts on that segment
  as ``negative`` with ``suppress = s`` does; with
  ``recency_half_life_days: h`` the uplift halves with every ``h`` days since
  the customer's last order before the message (recent buyers respond
  more -- an effect an analyst can see in the data, unlike the segment);
- ``negative``: with probability ``suppress`` the customer postpones the
  window's orders until after it: ``p_treatment = p_control * (1 - suppress *
  P(delivered))``;
- ``none``: ``p_treatment = p_control``.

The extra orders are real orders (``truth/campaign_orders.parquet``) outside
the BG/NBD process.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from scipy import special

from crmlab.exceptions import ParameterError
from crmlab.synthetic.clock import DAY, Clock
from crmlab.synthetic.geo import REGIONS

EFFECT_KINDS = ("positive", "heterogeneous", "negative", "none")


def plan_campaigns(scn: dict, clock: Clock) -> list[dict]:
    """The campaigns of a scenario, resolved against its calendar.

    Returns
    -------
    list of dict, in the scenario's order, each with ``index``, ``id``,
    ``name``, ``channel``, ``start``/``end`` (dates), ``day`` (day index of
    sending), ``window`` (attribution days), ``share`` (planned treatment
    share or None), ``audience``, ``effect``, ``srm_loss``, ``control_from``,
    ``pair`` (the id sharing this one's control group, if any), ``cpc``,
    ``fixed_cost``, ``funnel`` (delivered, opened, clicked rates).
    """
    cfg = scn["campaigns"]
    defaults = cfg.get("defaults") or {}
    costs = cfg.get("channel_cost") or {}
    funnels = cfg.get("funnel") or {}
    plans = []
    ids = [c["id"] for c in cfg.get("list", [])]
    if len(set(ids)) != len(ids):
        raise ParameterError("campaign ids must be unique")
    for i, c in enumerate(cfg.get("list", [])):
        c = {**defaults, **c}
        eff = dict(c.get("effect") or {"kind": "none"})
        if eff.get("kind") not in EFFECT_KINDS:
            raise ParameterError(f"campaign {c['id']}: effect kind must be one of {EFFECT_KINDS}")
        start = dt.date.fromisoformat(c["start"])
        window = int(c.get("attribution_days", 3))
        end = dt.date.fromisoformat(c["end"]) if c.get("end") else start + dt.timedelta(days=window)
        day = clock.day_index(start)
        if day + window >= clock.n_days:
            raise ParameterError(f"campaign {c['id']}: its attribution window runs past "
                                 "the world's end")
        share = c.get("planned_treatment_share")
        channel = c["channel"]
        plans.append({
            "index": i, "id": c["id"], "name": c.get("name", c["id"]), "channel": channel,
            "start": start, "end": end, "day": day, "window": window,
            "share": None if share is None else float(share),
            "audience": c.get("audience") or {"share": 1.0}, "effect": eff,
            "srm_loss": float((c.get("srm") or {}).get("control_loss", 0.0)),
            "control_from": c.get("control_from"), "pair": None,
            "cpc": float(c.get("cost_per_contact", costs.get(channel, 0.05))),
            "fixed_cost": float(c.get("fixed_cost", 0.0)),
            "funnel": tuple(float(v) for v in funnels.get(channel, (0.95, 0.2, 0.1))),
        })
    by_id = {p["id"]: p for p in plans}
    for p in plans:
        if p["control_from"]:
            a = by_id.get(p["control_from"])
            if a is None or a["control_from"] or a["pair"]:
                raise ParameterError(f"campaign {p['id']}: control_from must name another "
                                     "campaign with a control group of its own")
            if a["share"] is None or p["share"] is None:
                raise ParameterError(f"campaign {p['id']}: a shared control needs both "
                                     "campaigns to have a planned_treatment_share")
            a["pair"], p["pair"] = p["id"], a["id"]
            p["day"], p["start"], p["window"] = a["day"], a["start"], a["window"]
    return plans


def _uplift(plan: dict, seg: np.ndarray, seg_names: list[str],
            recency: np.ndarray | None = None) -> np.ndarray:
    """Each contact's planted uplift: the campaign's, or its segment's;
    scaled by ``0.5 ** (recency / recency_half_life_days)`` when the effect
    has a half-life (``recency``: days since the last order before sending)."""
    eff = plan["effect"]
    if eff["kind"] == "positive":
        u = np.full(len(seg), float(eff.get("uplift", 0.0)))
        by = eff.get("uplift_by_segment") or {}
        if by:
            u = np.array([float(by.get(s, eff.get("uplift", 0.0))) for s in seg_names])[seg]
    elif eff["kind"] == "heterogeneous":
        by = eff.get("uplift_by_segment") or {}
        u = np.array([float(by.get(s, eff.get("uplift", 0.0))) for s in seg_names])[seg]
    else:
        return np.zeros(len(seg))
    half = eff.get("recency_half_life_days")
    if half and recency is not None:
        u = u * 0.5 ** (recency / float(half))
    return u


def _recency(ev: dict, members: np.ndarray, t_sent: np.ndarray) -> np.ndarray:
    """Days from each member's last purchase event before ``t_sent`` to
    ``t_sent`` (the sign-up order counts; inf without one). ``ev`` is sorted
    by customer, then time."""
    key = ev["cust"] * 10_000.0 + ev["t"]
    pos = np.searchsorted(key, members * 10_000.0 + t_sent) - 1
    safe = np.maximum(pos, 0)
    found = (pos >= 0) & (ev["cust"][safe] == members) if len(key) else np.zeros(len(members), bool)
    return np.where(found, t_sent - ev["t"][safe] if len(key) else 0.0, np.inf)


def expected_orders_in_window(mu: np.ndarray, p: np.ndarray, terms: int = 60) -> np.ndarray:
    """E[number of purchases in a window] for a customer active at its start.

    With N ~ Poisson(mu) purchases in the window before any dropout and a
    dropout chance p after each, the count is min(N, D), D ~ Geometric(p):
    E = sum_k P(N >= k) (1 - p)^(k - 1).
    """
    k = np.arange(1, terms + 1)[None, :]
    tail = special.gammainc(k, mu[:, None])          # P(N >= k) for Poisson(mu)
    return (tail * (1 - p[:, None]) ** (k - 1)).sum(axis=1)


def assign(rng: np.random.Generator, plans: list[dict], clock: Clock, cust: dict,
           ev: dict, seg_names: list[str], locales: list[str], p_paid: float) -> dict:
    """Choose contacts, randomise, plant effects; change the events in place.

    Parameters
    ----------
    cust : dict of per-customer arrays ``loc``, ``seg``, ``lam``, ``p``,
        ``spend_mean``, ``signup_t``, ``dropout_t`` (inf if active at the end),
        ``region`` (index in :data:`crmlab.synthetic.geo.REGIONS`).
    ev : dict of per-event arrays ``cust``, ``t``, ``kind`` (-1 organic, else
        the campaign's index) -- sorted by customer then time; postponed
        orders get new times in place (the caller re-sorts and appends ``extra``).

    Returns
    -------
    dict of per-contact arrays: ``campaign`` (index), ``cust``, ``treat``
    (bool), ``sent_s`` (display seconds), ``window_s`` (seconds), ``delivered``,
    ``opened``, ``clicked``, ``p_control``, ``p_treatment``, ``rev_uplift``
    (expected revenue change if treated), ``extra_orders`` (expected extra
    orders if treated), plus ``extra`` (the appended events: ``cust``, ``t``,
    ``kind``).
    """
    out: dict[str, list] = {k: [] for k in ("campaign", "cust", "treat", "sent_s", "window_s",
                                            "delivered", "opened", "clicked", "p_control",
                                            "p_treatment", "rev_uplift", "extra_orders")}
    extra_c, extra_t, extra_k = [], [], []
    n = len(cust["loc"])
    by_id = {p["id"]: p for p in plans}
    for plan in plans:
        if plan["control_from"]:
            continue          # handled with the campaign whose control group it shares
        aud = plan["audience"]
        sent_s_day = plan["day"] * DAY + rng.integers(9 * 3600, 11 * 3600, n)
        t_sent = clock.t_of_display(sent_s_day)
        ok = cust["signup_t"] < t_sent
        if aud.get("locales"):
            ok &= np.isin(cust["loc"], [locales.index(x) for x in aud["locales"] if x in locales])
        if aud.get("regions"):
            ok &= np.isin(cust["region"], [REGIONS.index(x) for x in aud["regions"]])
        ok &= rng.random(n) < float(aud.get("share", 1.0))
        idx = np.flatnonzero(ok)
        u = rng.random(len(idx))
        partner = by_id[plan["pair"]] if plan["pair"] else None
        if plan["share"] is None:
            arms = [(plan, idx, np.ones(len(idx), dtype=bool))]
        elif partner is None:
            treat = u < plan["share"]
            arms = [(plan, idx, treat)]
        else:
            s = plan["share"]
            a = s / (1 + s)
            ta, tb = u < a, (u >= a) & (u < 2 * a)
            ctrl = ~(ta | tb)
            arms = [(plan, idx[ta | ctrl], ta[ta | ctrl]), (partner, idx[tb | ctrl], tb[tb | ctrl])]
        for arm, members, treat in arms:
            if arm["srm_loss"] > 0:
                keep = treat | (rng.random(len(members)) >= arm["srm_loss"])
                members, treat = members[keep], treat[keep]
            res = _effects(rng, arm, clock, cust, ev, members, treat, sent_s_day[members],
                           t_sent[members], seg_names, p_paid)
            for k in out:
                out[k].append(res[k])
            if len(res["extra_t"]):
                extra_c.append(res["extra_c"])
                extra_t.append(res["extra_t"])
                extra_k.append(np.full(len(res["extra_t"]), arm["index"]))
    for rows, new_t in ev.pop("postponed", []):
        ev["t"][rows] = new_t
    flat = {k: (np.concatenate(v) if v else np.array([])) for k, v in out.items()}
    flat["extra"] = {"cust": np.concatenate(extra_c) if extra_c else np.array([], dtype=np.int64),
                     "t": np.concatenate(extra_t) if extra_t else np.array([]),
                     "kind": np.concatenate(extra_k) if extra_k else np.array([], dtype=np.int64)}
    return flat


def _effects(rng, plan, clock, cust, ev, members, treat, sent_s, t_sent, seg_names, p_paid):
    w = plan["window"]
    m = len(members)
    loc = cust["loc"][members]
    lam = cust["lam"][members]
    alive = cust["dropout_t"][members] > t_sent
    dtau = clock.tau(loc, t_sent + w) - clock.tau(loc, t_sent)
    p_c = np.where(alive, 1 - np.exp(-lam * dtau), 0.0)
    d_rate, o_rate, c_rate = plan["funnel"]
    delivered = treat & (rng.random(m) < d_rate)
    kind = plan["effect"]["kind"]
    spend = cust["spend_mean"][members]
    extra_c = np.array([], dtype=np.int64)
    extra_t = np.array([])
    converted_extra = np.zeros(m, dtype=bool)
    if kind in ("positive", "heterogeneous"):
        recency = (_recency(ev, members, t_sent)
                   if plan["effect"].get("recency_half_life_days") else None)
        u = _uplift(plan, cust["seg"][members], seg_names, recency)
        up, sup = np.maximum(u, 0.0), np.maximum(-u, 0.0)
        p_t = p_c + (1 - p_c) * up * d_rate * alive
        extra_orders = up * d_rate * alive
        rev = extra_orders * spend * p_paid
        draw = rng.random(m)
        hit = delivered & alive & (draw < up)
        converted_extra = hit
        extra_c = members[hit]
        # most extra orders come soon after the message
        extra_t = t_sent[hit] + np.maximum(w * rng.random(int(hit.sum())) ** 2, 0.002)
        if sup.any():         # segments the campaign puts off (see ``negative``)
            p_t = p_t * (1 - sup * d_rate)
            n_window = expected_orders_in_window(lam * dtau, cust["p"][members])
            rev = rev - sup * d_rate * alive * n_window * spend * p_paid
            off = delivered & alive & (draw < sup)
            _postpone(rng, ev, members[off], t_sent[off], w, clock.n_days)
    elif kind == "negative":
        sup = float(plan["effect"].get("suppress", 0.0))
        p_t = p_c * (1 - sup * d_rate)
        extra_orders = np.zeros(m)          # postponed, not lost
        mu = lam * dtau
        n_window = expected_orders_in_window(mu, cust["p"][members])
        rev = -sup * d_rate * alive * n_window * spend * p_paid
        hit = delivered & alive & (rng.random(m) < sup)
        _postpone(rng, ev, members[hit], t_sent[hit], w, clock.n_days)

    else:
        p_t = p_c.copy()
        rev = extra_orders = np.zeros(m)
    opened = delivered & (rng.random(m) < o_rate)
    clicked = opened & (rng.random(m) < c_rate)
    opened |= converted_extra
    clicked |= converted_extra
    return {"campaign": np.full(m, plan["index"]), "cust": members, "treat": treat,
            "sent_s": sent_s, "window_s": np.full(m, w * DAY), "delivered": delivered,
            "opened": opened, "clicked": clicked, "p_control": p_c, "p_treatment": p_t,
            "rev_uplift": rev, "extra_orders": extra_orders, "extra_c": extra_c,
            "extra_t": extra_t}


def _postpone(rng, ev, who, t_sent, w, n_days):
    """Move who's orders in [t_sent, t_sent + w) to just after the window.

    The new times are queued in ``ev["postponed"]`` and applied by
    :func:`assign` after all campaigns, so the events stay sorted for the
    look-ups of later campaigns (whose windows do not overlap this one).
    """
    if not len(who):
        return
    key = ev["cust"] * 10_000.0 + ev["t"]
    lo = np.searchsorted(key, who * 10_000.0 + t_sent)
    hi = np.searchsorted(key, who * 10_000.0 + t_sent + w)
    cnt = hi - lo
    rows = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    shift_to = np.repeat(t_sent + w, cnt) + rng.uniform(0.05, 3.0, len(rows))
    ev.setdefault("postponed", []).append((rows, np.minimum(shift_to, n_days - 1e-6)))


def score(contacts: dict, ord_cust: np.ndarray, ord_s: np.ndarray, paid_amount: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Conversions and revenue of contacts from the final orders.

    Parameters
    ----------
    contacts : dict from :func:`assign`
    ord_cust, ord_s : per-order customer index and display seconds, sorted by
        (customer, time)
    paid_amount : per-order amount if paid, else 0

    Returns
    -------
    converted (bool), revenue (float) per contact, and the (contact, order)
    position pairs of the orders inside each contact's window.
    """
    big = np.float64(1e10)
    key = ord_cust * big + ord_s
    c = contacts["cust"].astype(np.float64)
    lo = np.searchsorted(key, c * big + contacts["sent_s"], side="left")
    hi = np.searchsorted(key, c * big + contacts["sent_s"] + contacts["window_s"], side="left")
    cnt = hi - lo
    cum = np.concatenate([[0.0], np.cumsum(paid_amount)])
    revenue = np.round(cum[hi] - cum[lo], 2)
    pair_contact = np.repeat(np.arange(len(cnt)), cnt)
    pair_order = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    return cnt > 0, revenue, pair_contact, pair_order
