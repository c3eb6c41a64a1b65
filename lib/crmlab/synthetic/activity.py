"""Interactions and support tickets that carry churn signal.

Interactions (web visits, app log-ins, ...) arrive while a customer is active
at ``per_purchase * lam + base`` per day and fade after the dropout with a
``decay_days`` time constant. Tickets follow orders; their rate and their
satisfaction move with the customer's dropout propensity (the standardised
logit of p, whose Beta mean and variance are digamma/trigamma differences)
and worsen in the weeks before the dropout.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from crmlab.synthetic.behaviour import _categorical, sorted_uniforms
from crmlab.synthetic.clock import DAY, Clock

# how a ticket's topic moves latent satisfaction
TOPIC_SATISFACTION: dict[str, float] = {
    "delivery": -0.2, "refund": -0.35, "product_quality": -0.3, "payment": -0.1,
    "account": 0.0, "other": 0.15,
}
# latent satisfaction -> 1..5 stars
SATISFACTION_CUTS = (-1.3, -0.5, 0.25, 1.0)


def dropout_propensity(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """Standardised logit of the dropout probability under its Beta(a, b) population."""
    mean = special.digamma(a) - special.digamma(b)
    sd = np.sqrt(special.polygamma(1, a) + special.polygamma(1, b))
    logit = np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(1 - p, 1e-12, 1))
    return (logit - mean) / sd


def interactions(rng: np.random.Generator, scn: dict, clock: Clock, lat: dict,
                 signup_t: np.ndarray, dropout_t: np.ndarray) -> dict:
    """Interaction events per customer.

    Returns
    -------
    dict: ``cust`` (customer index), ``s`` (display seconds), ``type`` (index
    into ``scn["interactions"]["types"]``), sorted by customer then time.
    """
    cfg = scn["interactions"]
    T = float(clock.n_days)
    rate = float(cfg.get("per_purchase", 1.0)) * lat["lam"] + float(cfg.get("base", 0.0))
    end_active = np.minimum(dropout_t, T)
    span = np.maximum(end_active - signup_t, 0.0)
    n1 = rng.poisson(rate * span)
    decay = float(cfg.get("decay_days", 30))
    dead = np.isfinite(dropout_t)
    after = np.where(dead, T - end_active, 0.0)
    frac = 1 - np.exp(-after / decay)
    n2 = rng.poisson(float(cfg.get("per_purchase", 1.0)) * lat["lam"] * decay * frac)
    # times come out ascending per customer (sorted uniforms), so the two
    # parts only need merging
    c1 = np.repeat(np.arange(len(rate)), n1)
    t1 = np.repeat(signup_t, n1) + sorted_uniforms(rng, n1) * np.repeat(span, n1)
    c2 = np.repeat(np.arange(len(rate)), n2)
    # truncated exponential after the dropout (a monotone map of the uniforms)
    u = sorted_uniforms(rng, n2) * np.repeat(frac, n2)
    t2 = np.repeat(end_active, n2) - decay * np.log1p(-u)
    cust = np.concatenate([c1, c2])
    t = np.minimum(np.concatenate([t1, t2]), T - 1e-6)
    types = list(cfg["types"])
    chans = list(scn["orders"]["channels"])
    other = cfg.get("other_weights") or {}
    w_other = float(sum(other.values()))
    weights = np.zeros((len(types), len(rate)), dtype=np.float32)
    for j, ty in enumerate(types):
        ch = cfg["types"][ty]
        if ty in other:
            weights[j] = float(other[ty])
        elif ch in chans:
            weights[j] = (1 - w_other) * lat["chan_mix"][:, chans.index(ch)]
    ty = _categorical(rng, np.take(weights, cust, axis=1))
    s = clock.display_seconds(t)
    order = np.argsort(cust, kind="stable")
    return {"cust": cust[order], "s": s[order], "type": ty[order]}


def tickets(rng: np.random.Generator, scn: dict, clock: Clock, lat: dict, loc_is_cn: np.ndarray,
            ord_cust: np.ndarray, ord_s: np.ndarray, dropout_t: np.ndarray) -> dict:
    """Support tickets raised after orders.

    Parameters
    ----------
    ord_cust, ord_s : per-order customer index and display seconds.

    Returns
    -------
    dict: ``cust``, ``opened_s``, ``resolved_s`` (-1 = still open),
    ``topic``, ``channel`` (indices into the scenario's lists; channel
    ``wechat`` is index len(channels) for Chinese customers' chats),
    ``satisfaction`` (1-5), ``nps`` (0-10), ``angry`` (bool: within the
    pre-dropout weeks).
    """
    cfg = scn["tickets"]
    bg = scn["bgnbd"]
    z = dropout_propensity(lat["p"], float(bg["a"]), float(bg["b"]))
    segs = list(scn["segments"])
    base = np.array([float(scn["segments"][s].get("tickets", 0.05)) for s in segs])[lat["seg"]]
    logit = np.log(base / (1 - base)) + float(cfg.get("dropout_effect", 0.5)) * z
    prob = 1 / (1 + np.exp(-logit))
    hit = rng.random(len(ord_cust)) < prob[ord_cust]
    cust = ord_cust[hit]
    opened = ord_s[hit] + (rng.exponential(2.5, len(cust)) * DAY).astype(np.int64)
    keep = opened < clock.n_days * DAY
    cust, opened = cust[keep], opened[keep]
    m = len(cust)
    topics = list(cfg["topics"])
    topic = rng.choice(len(topics), m, p=_norm(list(cfg["topics"].values())))
    chans = list(cfg["channels"])
    channel = rng.choice(len(chans), m, p=_norm(list(cfg["channels"].values())))
    if "chat" in chans:
        chat = channel == chans.index("chat")
        channel = np.where(chat & loc_is_cn[cust], len(chans), channel)
    t_open = opened / DAY
    angry = t_open >= dropout_t[cust] - float(cfg.get("pre_dropout_days", 60))
    topic_eff = np.array([TOPIC_SATISFACTION.get(t, 0.0) for t in topics])[topic]
    latent = (0.9 - float(cfg.get("satisfaction_effect", 0.6)) * z[cust]
              - float(cfg.get("pre_dropout_effect", 0.8)) * angry + topic_eff
              + rng.normal(0, 1, m))
    satisfaction = np.digitize(latent, SATISFACTION_CUTS) + 1
    nps = np.clip(np.round(7 + 1.8 * latent + rng.normal(0, 0.8, m)), 0, 10).astype(np.int64)
    hours = np.exp(np.log(float(cfg.get("resolve_hours", 20))) + rng.normal(0, 1.0, m))
    resolved = opened + (hours * 3600).astype(np.int64)
    never = rng.random(m) < float(cfg.get("never_resolved", 0.01))
    resolved = np.where(never | (resolved >= clock.n_days * DAY), -1, resolved)
    order = np.lexsort((opened, cust))
    return {"cust": cust[order], "opened_s": opened[order], "resolved_s": resolved[order],
            "topic": topic[order], "channel": channel[order],
            "satisfaction": satisfaction[order].astype(np.int64), "nps": nps[order],
            "angry": angry[order]}


def _norm(w) -> np.ndarray:
    w = np.asarray(w, dtype=float)
    return w / w.sum()
