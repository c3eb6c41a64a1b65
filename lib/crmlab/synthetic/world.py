"""Build a world directory: chunks of customers, written as they are made.

Customers are drawn in sign-up order and processed in chunks of
``chunk_customers``; each chunk has its own random streams
(``numpy.random.default_rng([seed, chunk, stage])``), so the output depends
on the seed and the scenario only, and memory stays flat however many
customers there are. Each table's Parquet file gets one row group per chunk;
duplicate customers go after all originals, so a customer's row number is
known when it is made.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)
import pyarrow.parquet as pq

from crmlab.synthetic import activity, behaviour, campaigns, defects, geo, people
from crmlab.synthetic.clock import DAY, Clock, build_clock
from crmlab.synthetic.scenario import COUNTRY, GENERATOR_VERSION
from crmlab.synthetic.tables import (PARQUET_OPTIONS, SCHEMAS, TABLES, TRUTH_CAMPAIGNS,
                                     TRUTH_DEFECTS, TRUTH_DUPLICATES, TRUTH_SCHEMAS, Writer,
                                     date32_array, dict_array, ts_array)

log = logging.getLogger("crmlab.synthetic")

EXPECTED_ORDERS_SAMPLE = 20_000   # customers used for truth/daily.parquet expected_orders

@dataclass
class _Context:
    """Everything a chunk needs that is shared by all chunks."""

    doc: dict
    clock: Clock
    locales: list
    seg_names: list
    pools: dict
    cat: dict
    plans: list
    signup_all: np.ndarray
    loc_all: np.ndarray
    acq: np.ndarray
    n: int
    K: int
    id0: int
    rates: dict
    p_paid: float
    stride: int
    start_s: np.int64
    dup_counts: np.ndarray
    dup_offsets: np.ndarray
    orphan_base: int


def _prepare(doc: dict) -> _Context:
    seed, n = doc["seed"], doc["customers"]
    K = int(doc.get("chunk_customers", 50_000))
    clock = build_clock(doc)
    locales = list(doc["locale"])
    shares = np.array([doc["locale"][x] for x in locales])
    g = np.random.default_rng([seed, 999_999, 0])
    growth = float(doc.get("acquisition", {}).get("growth", 0.0))
    acq = np.exp(growth * (np.arange(clock.n_days) + 0.5) / clock.n_days) * (shares @ clock.mult)
    acq /= acq.sum()
    signup_all = np.sort(g.choice(clock.n_days, n, p=acq) + g.random(n))
    loc_all = g.choice(len(locales), n, p=shares)
    n_chunks = math.ceil(n / K)
    rates = doc["defects"]
    total_dups = int(round(rates.get("duplicate_customer", 0.0) * n))
    bounds = np.minimum(np.arange(n_chunks + 1) * K, n)
    dup_cum = np.round(total_dups * bounds / n).astype(np.int64)
    status = doc["orders"]["status"]
    return _Context(
        doc=doc, clock=clock, locales=locales, seg_names=list(doc["segments"]),
        pools={x: people.build_pools(seed, x, size=int(doc.get("pool_size", 1500)))
               for x in locales},
        cat=behaviour.build_catalogue(np.random.default_rng([seed, 999_999, 1]), doc),
        plans=campaigns.plan_campaigns(doc, clock), signup_all=signup_all, loc_all=loc_all,
        acq=acq, n=n, K=K, id0=int(doc.get("customer_id_start", 100001)), rates=rates,
        p_paid=float(status.get("paid", 1.0)) / float(sum(status.values())),
        stride=max(1, math.ceil(n / EXPECTED_ORDERS_SAMPLE)),
        start_s=np.int64((clock.start - dt.date(1970, 1, 1)).days * DAY),
        dup_counts=np.diff(dup_cum), dup_offsets=dup_cum[:-1],
        orphan_base=int(doc.get("customer_id_start", 100001)) + 3 * n + 1000)


def build_world(doc: dict, root: Path) -> dict:
    """Generate the world of an effective scenario into ``root``.

    Returns
    -------
    dict
        The content of ``world.json``.
    """
    ctx = _prepare(doc)
    clock = ctx.clock
    n_chunks = math.ceil(ctx.n / ctx.K)
    camp_acc = {p["index"]: {"n_t": 0, "n_c": 0, "uplift": 0.0, "rev": 0.0, "orders": 0.0}
                for p in ctx.plans}
    expected = np.zeros(clock.n_days)
    dup_pairs = []
    writer = Writer(root)
    with _chunk_source(ctx, n_chunks, root) as chunks:
        writer.start()
        try:
            for c, r in enumerate(chunks):
                for k, v in r.pop("camp").items():
                    for f in v:
                        camp_acc[k][f] += v[f]
                expected += r.pop("expected")
                dup_pairs.append(r.pop("dup_pairs"))
                log.info("chunk %d/%d: %d customers, %d orders", c + 1, n_chunks,
                         r["customers"].num_rows, r["orders"].num_rows)
                writer.put(r)
        finally:
            writer.join_checked()

    cat = ctx.cat
    products = pa.Table.from_arrays([
        pa.array(cat["product_id"]), pa.array(cat["name"], type=pa.string()),
        dict_array(cat["category"], cat["categories"]), pa.array(cat["unit_cost"]),
        pa.array(cat["list_price"])], schema=SCHEMAS["products"])
    camp_rows, camp_truth = [], []
    for p in ctx.plans:
        acc = camp_acc[p["index"]]
        camp_rows.append({"campaign_id": p["id"], "name": p["name"], "channel": p["channel"],
                          "start_date": p["start"], "end_date": p["end"],
                          "cost": round(p["fixed_cost"] + p["cpc"] * acc["n_t"], 2),
                          "cost_per_contact": p["cpc"], "planned_treatment_share": p["share"]})
        camp_truth.append({
            "campaign_id": p["id"], "has_control": p["share"] is not None,
            "planned_treatment_share": p["share"],
            "true_uplift": acc["uplift"] / acc["n_t"] if acc["n_t"] else 0.0,
            "true_revenue_uplift_per_contact": acc["rev"] / acc["n_t"] if acc["n_t"] else 0.0,
            "true_extra_orders_per_contact": acc["orders"] / acc["n_t"] if acc["n_t"] else 0.0,
            "effect_kind": p["effect"]["kind"], "srm_planted": p["srm_loss"] > 0,
            "shared_control_with": p["pair"], "n_treatment": int(acc["n_t"]),
            "n_control": int(acc["n_c"]), "attribution_days": p["window"],
            "channel": p["channel"]})
    writer.finish(products, pa.Table.from_pylist(camp_rows, schema=SCHEMAS["campaigns"]))

    truth = root / "truth"
    pq.write_table(pa.Table.from_pylist(camp_truth, schema=TRUTH_CAMPAIGNS),
                   truth / "campaigns.parquet", **PARQUET_OPTIONS)
    dp = pd.concat(dup_pairs, ignore_index=True)
    pq.write_table(pa.Table.from_pandas(dp, preserve_index=False, schema=TRUTH_DUPLICATES),
                   truth / "duplicates.parquet", **PARQUET_OPTIONS)
    df = (pd.concat(writer.defects, ignore_index=True) if writer.defects else
          pd.DataFrame({"table": [], "row": [], "key": [], "column": [], "defect": []}))
    df = df.sort_values(["table", "row", "column"], kind="stable", ignore_index=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False, schema=TRUTH_DEFECTS),
                   truth / "defects.parquet", **PARQUET_OPTIONS)
    expected += ctx.n * ctx.acq        # first orders at sign-up
    _write_daily(clock, doc, expected, truth / "daily.parquet")
    (truth / "params.json").write_text(json.dumps(_params(doc), indent=2, sort_keys=True,
                                                  default=str) + "\n")
    rows = {t: writer.rows[t] for t in TABLES}
    world = {"scenario": doc["name"], "seed": doc["seed"], "customers": ctx.n,
             "locale": ctx.locales[0] if len(ctx.locales) == 1 else doc["locale"],
             "start": doc["start"], "end": doc["end"], "currency": doc["currency"],
             "generator_version": GENERATOR_VERSION, "rows": rows}
    (root / "world.json").write_text(json.dumps(world, indent=2) + "\n")
    return world


_CTX: _Context | None = None     # the context forked worker processes inherit
_SPILL: Path | None = None       # where workers hand over their tables


def _worker_chunk(c: int) -> dict:
    """Build a chunk in a worker; its Arrow tables travel as IPC files, not pickles."""
    r = _make_chunk(_CTX, c)
    for k, v in list(r.items()):
        if isinstance(v, pa.Table):
            path = _SPILL / f"chunk{c:06d}-{k}.arrow"
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, v.schema) as w:
                w.write_table(v)
            r[k] = ("arrow", str(path))
    return r


def _receive(r: dict) -> dict:
    """Map a worker's IPC files back into (zero-copy) tables and remove the files."""
    for k, v in list(r.items()):
        if isinstance(v, tuple) and v[:1] == ("arrow",):
            with pa.memory_map(v[1]) as src:
                r[k] = pa.ipc.open_file(src).read_all()
            os.unlink(v[1])
    return r


def generation_workers(n_chunks: int) -> int:
    """Processes that build chunks: ``CRMLAB_GENERATE_WORKERS``, else up to
    two when there are at least three chunks (the output does not depend on it)."""
    env = os.environ.get("CRMLAB_GENERATE_WORKERS")
    if env:
        return max(0, int(env))
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
    return min(2, cpus) if n_chunks >= 3 and cpus > 1 else 0


@contextlib.contextmanager
def _chunk_source(ctx: _Context, n_chunks: int, spill_dir: Path):
    """Chunk results in order: built here, or by forked worker processes.

    Workers are forked before any writer thread or database exists; at most
    ``workers`` chunks are in flight, which bounds memory. Workers hand their
    tables over as Arrow IPC files (in /dev/shm when it is roomy, else in
    ``spill_dir``) that this process maps without copying.
    """
    workers = generation_workers(n_chunks)
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield (_make_chunk(ctx, c) for c in range(n_chunks))
        return
    global _CTX, _SPILL
    _CTX = ctx
    shm = Path("/dev/shm")
    spill = Path(tempfile.mkdtemp(prefix="crmlab-chunks-",
                                  dir=shm if _free(shm) > 8 * 2**30 else spill_dir))
    _SPILL = spill
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    try:
        pending = collections.deque(pool.submit(_worker_chunk, c)
                                    for c in range(min(workers, n_chunks)))

        def results():
            nxt = len(pending)
            while pending:
                r = _receive(pending.popleft().result())
                if nxt < n_chunks:
                    pending.append(pool.submit(_worker_chunk, nxt))
                    nxt += 1
                yield r

        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(spill, ignore_errors=True)
        _CTX = _SPILL = None


def _free(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _make_chunk(ctx: _Context, c: int) -> dict:
    """Customers [c*K, (c+1)*K) and everything they do, as Arrow tables.

    order_id and ticket_id (and their rows in truth) are numbered from 1
    within the chunk; the writer offsets them.
    """
    doc, clock, locales, seg_names = ctx.doc, ctx.clock, ctx.locales, ctx.seg_names
    seed, n, id0, rates, cat, plans = doc["seed"], ctx.n, ctx.id0, ctx.rates, ctx.cat, ctx.plans
    start_s = ctx.start_s
    start64 = np.datetime64(clock.start, "s")
    lo, hi = c * ctx.K, min(n, (c + 1) * ctx.K)

    def R(k):
        return np.random.default_rng([seed, c, k])

    loc = ctx.loc_all[lo:hi]
    m = hi - lo
    signup_t = ctx.signup_all[lo:hi]
    lat = behaviour.draw_latent(R(1), doc, loc)
    # nobody signs up before 16
    lat["age_days"] = np.maximum(lat["age_days"],
                                 np.ceil(clock.n_days - signup_t + 16 * 365.25).astype(np.int64))
    ids = np.arange(lo, hi, dtype=np.int64) + id0
    cols, info = _identity(R(2), doc, clock, ctx.pools, locales, lat, loc, signup_t, ids)

    # purchases, campaigns, orders
    ev = behaviour.purchase_events(R(3), clock, loc, signup_t, lat["lam"], lat["p"])
    ev = {"cust": ev["cust"], "t": ev["t"], "dropout": ev["dropout"],
          "kind": np.full(len(ev["t"]), -1, dtype=np.int64)}
    cust = {"loc": loc, "seg": lat["seg"], "lam": lat["lam"], "p": lat["p"],
            "spend_mean": lat["spend_mean"], "signup_t": signup_t, "region": info["region"],
            "dropout_t": _dropout_t(ev, m)}
    con = campaigns.assign(R(4), plans, clock, cust, ev, seg_names, locales, ctx.p_paid)
    ex = con.pop("extra")
    ev = {"cust": np.concatenate([ev["cust"], ex["cust"]]),
          "t": np.concatenate([ev["t"], ex["t"]]),
          "dropout": np.concatenate([ev["dropout"], np.zeros(len(ex["t"]), dtype=bool)]),
          "kind": np.concatenate([ev["kind"], ex["kind"]])}
    # nearly sorted already: a stable sort on one key is close to linear
    order = np.argsort(ev["cust"] * 10_000.0 + ev["t"], kind="stable")
    ev = {k: v[order] for k, v in ev.items()}
    dropout_t = _dropout_t(ev, m)
    o = behaviour.build_orders(R(5), doc, clock, cat, lat, loc, ev["cust"], ev["t"])
    o_s = clock.display_seconds(ev["t"])

    # orphan orders: copies of existing orders booked on unknown customers,
    # placed among the others
    ro = R(6)
    src, k_orph = defects.orphan_orders(ro, rates.get("orphan_order", 0.0), len(o_s))
    n_real = len(o_s)
    sort_cust = np.concatenate([ev["cust"], ro.integers(0, max(m, 1), k_orph)]).astype(np.int64)
    all_s = np.concatenate([o_s, (ro.random(k_orph) * clock.n_days * DAY).astype(np.int64)])
    src_all = np.concatenate([np.arange(n_real), src])
    perm = np.argsort(sort_cust * np.int64(10_000_000_000) + all_s, kind="stable")
    n_o = len(perm)
    ord_src = src_all[perm]
    is_orphan = perm >= n_real
    ord_s = all_s[perm]
    ord_cust = sort_cust[perm]
    order_id = np.arange(1, n_o + 1, dtype=np.int64)
    cust_id = np.where(is_orphan, ctx.orphan_base + ro.integers(0, n, n_o), ord_cust + id0 + lo)
    amount = o["amount"][ord_src]
    status_names = list(doc["orders"]["status"])
    status_code = o["status"][ord_src].astype(np.int32)
    channel_code = o["channel"][ord_src].astype(np.int32)
    line_cnt = o["n_lines"][ord_src]
    line_first = (np.cumsum(o["n_lines"]) - o["n_lines"])[ord_src]
    line_rows = np.repeat(line_first, line_cnt) + (
        np.arange(line_cnt.sum()) - np.repeat(np.cumsum(line_cnt) - line_cnt, line_cnt))

    # conversions and revenue, from the clean orders
    real = np.flatnonzero(~is_orphan)
    paid = (np.where(status_code[real] == status_names.index("paid"), amount[real], 0.0)
            if "paid" in status_names else amount[real])
    converted, revenue, pc_, po = campaigns.score(con, ord_cust[real], ord_s[real], paid)
    kind_sorted = ev["kind"][ord_src[real]]

    # duplicates: a person entered twice; their rows go after all originals
    rd = R(7)
    k_dup = int(ctx.dup_counts[c])
    eligible = np.flatnonzero(signup_t < clock.n_days - 30)
    dup_idx = (np.sort(rd.choice(eligible, min(k_dup, len(eligible)), replace=False))
               if k_dup else np.array([], dtype=np.int64))
    dup_ids = id0 + n + int(ctx.dup_offsets[c]) + np.arange(len(dup_idx), dtype=np.int64)
    gap = rd.uniform(7, 720, len(dup_idx))
    dup_t = np.minimum(signup_t[dup_idx] + gap, clock.n_days - rd.uniform(0.5, 7, len(dup_idx)))
    dup_s = clock.display_seconds(dup_t)
    dcols, changes, implied = defects.make_duplicates(
        rd, cols, info, dup_idx, dup_ids, dup_s, list(doc["acquisition"]["channels"]), start64,
        ctx.pools)
    moved = np.zeros(len(dup_idx), dtype=np.int64)
    if len(dup_idx):
        pos = np.full(m, -1)
        pos[dup_idx] = np.arange(len(dup_idx))
        jj = np.where(is_orphan, -1, pos[np.where(is_orphan, 0, ord_cust)])
        cand = (jj >= 0) & (ord_s > dup_s[np.maximum(jj, 0)])
        move = cand & (rd.random(n_o) < defects.DUPLICATE_ORDER_MOVE)
        cust_id[move] = dup_ids[jj[move]]
        moved = np.bincount(jj[move], minlength=len(dup_idx))

    # interactions and tickets
    inter = activity.interactions(R(8), doc, clock, lat, signup_t, dropout_t)
    is_cn = loc == (locales.index("zh_CN") if "zh_CN" in locales else -1)
    tk = activity.tickets(R(9), doc, clock, lat, is_cn, ord_cust[real], ord_s[real], dropout_t)

    # defects
    rdef = R(10)
    allc = {k: np.concatenate([cols[k], dcols[k]]) for k in cols}
    ainfo = {k: np.concatenate([info[k], info[k][dup_idx]]) for k in ("locale", "phone_number",
                                                                     "first", "last")}
    n_t = len(tk["cust"])
    dlog = defects.DefectLog({"customers": len(allc["name"]), "orders": n_o, "tickets": n_t})
    dlog.add("customers", np.arange(m, len(allc["name"])), None, "duplicate_customer")
    for j, imp in enumerate(implied):
        for col, dfc in imp:
            dlog.add("customers", np.array([m + j]), col, dfc)
    defects.inject_customers(rdef, rates, allc, ainfo, dlog)
    od = {"amount": amount, "ts": ord_s.copy(), "status_code": status_code,
          "status_dict": list(status_names), "channel_code": channel_code,
          "channel_dict": list(doc["orders"]["channels"])}
    defects.inject_orders(rdef, rates, od, dlog, clock.n_days * DAY, np.flatnonzero(is_orphan))
    defects.inject_tickets(rdef, rates, tk, dlog)

    out: dict = {}
    out["customers"] = _customers_table({k: v[:m] for k, v in allc.items()})
    out["dup_customers"] = _customers_table({k: v[m:] for k, v in allc.items()})
    out["orders"] = pa.Table.from_arrays([
        pa.array(order_id), pa.array(cust_id), ts_array(start_s, od["ts"]), pa.array(od["amount"]),
        dict_array(od["channel_code"], od["channel_dict"]),
        dict_array(od["status_code"], od["status_dict"]),
        pa.array(o["discount"][ord_src]), dict_array(np.zeros(n_o), [doc["currency"]]),
        pa.array(o["quantity"][ord_src].astype(np.int64))], schema=SCHEMAS["orders"])
    prod = o["product"][line_rows]
    out["order_lines"] = pa.Table.from_arrays([
        pa.array(np.repeat(order_id, line_cnt)), pa.array(cat["product_id"][prod]),
        dict_array(cat["category"][prod], cat["categories"]),
        pa.array(o["line_qty"][line_rows].astype(np.int64)),
        pa.array(o["unit_price"][line_rows])], schema=SCHEMAS["order_lines"])
    itypes = list(doc["interactions"]["types"])
    out["interactions"] = pa.Table.from_arrays([
        pa.array(inter["cust"] + id0 + lo), ts_array(start_s, inter["s"]),
        dict_array(inter["type"], itypes),
        dict_array(inter["type"], [doc["interactions"]["types"][t] for t in itypes])],
        schema=SCHEMAS["interactions"])
    ticket_id = np.arange(1, n_t + 1, dtype=np.int64)
    tchan = list(doc["tickets"]["channels"]) + ["wechat"]
    # ticket text: a sentence from the customer's locale's pool
    sizes = np.array([len(ctx.pools[x].sentences) for x in locales])
    tloc = loc[tk["cust"]]
    pick = np.floor(R(11).random(n_t) * sizes[tloc]).astype(np.int64)
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sentences = pa.array(np.concatenate([ctx.pools[x].sentences for x in locales]).tolist(),
                         type=pa.string())
    out["tickets"] = pa.Table.from_arrays([
        pa.array(ticket_id), pa.array(tk["cust"] + id0 + lo), ts_array(start_s, tk["opened_s"]),
        dict_array(tk["channel"], tchan), dict_array(tk["topic"], list(doc["tickets"]["topics"])),
        pa.array(tk["satisfaction"]), pa.array(tk["nps"]),
        sentences.take(pa.array(offs[tloc] + pick)),
        ts_array(start_s, tk["resolved_s"], null=tk["resolved_s"] < 0)], schema=SCHEMAS["tickets"])
    cids = [p["id"] for p in plans]
    treat = con["treat"].astype(bool)
    camp_col = dict_array(con["campaign"].astype(np.int64), cids)
    group_col = dict_array(np.where(treat, 0, 1), ["treatment", "control"])
    contact_cust = pa.array(con["cust"].astype(np.int64) + id0 + lo)
    out["campaign_contacts"] = pa.Table.from_arrays([
        camp_col, contact_cust, group_col, ts_array(start_s, con["sent_s"].astype(np.int64)),
        pa.array(con["delivered"].astype(np.int8)), pa.array(con["opened"].astype(np.int8)),
        pa.array(con["clicked"].astype(np.int8)), pa.array(converted.astype(np.int8)),
        pa.array(revenue.astype(float))], schema=SCHEMAS["campaign_contacts"])

    # truth
    start = clock.start
    dead = np.isfinite(dropout_t)
    signup_day = np.floor(clock.display_seconds(signup_t) / DAY)
    drop_day = np.floor(clock.display_seconds(np.where(dead, dropout_t, 0)) / DAY)
    out["truth_customers"] = pa.Table.from_arrays([
        pa.array(ids), dict_array(lat["seg"], seg_names), pa.array(lat["lam"]), pa.array(lat["p"]),
        pa.array(lat["spend_mean"]), date32_array(start, signup_day),
        date32_array(start, drop_day, null=~dead),
        pa.array(~dead), dict_array(loc, locales), pa.nulls(m, pa.int64())],
        schema=TRUTH_SCHEMAS["customers"])
    di = dup_idx
    out["truth_dup_customers"] = pa.Table.from_arrays([
        pa.array(dup_ids), dict_array(lat["seg"][di], seg_names), pa.array(lat["lam"][di]),
        pa.array(lat["p"][di]), pa.array(lat["spend_mean"][di]),
        date32_array(start, np.floor(dup_s / DAY)),
        date32_array(start, drop_day[di], null=~dead[di]), pa.array(~dead[di]),
        dict_array(loc[di], locales), pa.array(ids[di])], schema=TRUTH_SCHEMAS["customers"])
    out["dup_pairs"] = pd.DataFrame({"customer_id_a": ids[di], "customer_id_b": dup_ids,
                                     "changes": pd.Series(changes, dtype=object),
                                     "orders_moved": moved.astype(np.int64)})
    out["truth_contacts"] = pa.Table.from_arrays([
        camp_col, contact_cust, group_col, pa.array(con["p_control"].astype(float)),
        pa.array(con["p_treatment"].astype(float)), pa.array(con["rev_uplift"].astype(float))],
        schema=TRUTH_SCHEMAS["contacts"])
    oi = real[po]
    out["truth_campaign_orders"] = pa.Table.from_arrays([
        pa.array(order_id[oi]), dict_array(con["campaign"][pc_].astype(np.int64), cids),
        contact_cust.take(pa.array(pc_)),
        dict_array(np.where(treat[pc_], 0, 1), ["treatment", "control"]),
        pa.array(kind_sorted[po] == con["campaign"][pc_])], schema=TRUTH_SCHEMAS["campaign_orders"])
    camp = {}
    for p in plans:
        sel = con["campaign"] == p["index"]
        st = sel & treat
        camp[p["index"]] = {"n_t": int(st.sum()), "n_c": int((sel & ~treat).sum()),
                            "uplift": float((con["p_treatment"][st] - con["p_control"][st]).sum()),
                            "rev": float(con["rev_uplift"][st].sum()),
                            "orders": float(con["extra_orders"][st].sum())}
    out["camp"] = camp
    parts = []
    n_dup_before = int(ctx.dup_offsets[c])
    for table, keys in (("customers", allc["customer_id"]), ("orders", order_id),
                        ("tickets", ticket_id)):
        r, col_, def_ = dlog.arrays(table)
        if not len(r):
            continue
        if table == "customers":
            pos_ = np.where(r < m, lo + r + 1, n + n_dup_before + (r - m) + 1)
        else:
            pos_ = r + 1
        parts.append((np.full(len(r), table, dtype=object), pos_.astype(np.int64),
                      np.asarray(keys)[r].astype(np.int64), col_, def_))
    out["defects"] = pd.DataFrame({
        k: (np.concatenate([p_[i] for p_ in parts]) if parts else
            np.array([], dtype=np.int64 if k in ("row", "key") else object))
        for i, k in enumerate(("table", "row", "key", "column", "defect"))})
    sub = np.flatnonzero((np.arange(lo, hi) % ctx.stride) == 0)
    out["expected"] = ctx.stride * _expected_repeat(clock, loc[sub], signup_t[sub],
                                                    lat["lam"][sub], lat["p"][sub])
    return out


def _customers_table(cols: dict) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(np.asarray(cols["customer_id"], dtype=np.int64))] +
        [pa.array(cols[c], type=pa.string()) for c in SCHEMAS["customers"].names[1:]],
        schema=SCHEMAS["customers"])


def _dropout_t(ev: dict, m: int) -> np.ndarray:
    """Per customer: the time of the last organic purchase of those who dropped
    out (a postponed order can overtake the dropout purchase), inf for the rest."""
    out = np.full(m, np.inf)
    dead = np.zeros(m, dtype=bool)
    dead[ev["cust"][ev["dropout"]]] = True
    org = (ev["kind"] < 0) & dead[ev["cust"]]
    last = np.full(m, -np.inf)
    np.maximum.at(last, ev["cust"][org], ev["t"][org])
    out[dead] = last[dead]
    return out


def _identity(rng, doc, clock: Clock, pools, locales, lat, loc, signup_t, ids):
    """The customers of a chunk: contract columns (name -> object array) and helper arrays."""
    end_date = dt.date.fromisoformat(doc["end"])
    m = len(loc)
    cols = {c: np.empty(m, dtype=object) for c in SCHEMAS["customers"].names if c != "customer_id"}
    info = {"locale": np.empty(m, dtype=object), "phone_number": np.empty(m, dtype=object),
            "first": np.empty(m, dtype=object), "last": np.empty(m, dtype=object),
            "region": np.zeros(m, dtype=np.int64)}
    end64 = np.datetime64(end_date, "D")
    birth = end64 - lat["age_days"].astype("timedelta64[D]")
    signup_s = clock.display_seconds(signup_t)
    signup_day = np.datetime64(clock.start, "D") + (signup_s // DAY).astype("timedelta64[D]")
    acq = list(doc["acquisition"]["channels"])
    for li, locale in enumerate(locales):
        sel = np.flatnonzero(loc == li)
        k = len(sel)
        if not k:
            continue
        pl = pools[locale]
        female = lat["female"][sel]
        first, last, full = people.names(rng, pl, locale, female)
        by = birth[sel].astype("datetime64[Y]").astype(int) + 1970
        mail = people.emails(rng, pl, locale, first, last, by)
        number = people.phone_numbers(rng, locale, k)
        place_names, region, _ = behaviour.places(locale)
        place = lat["place"][sel]
        table = geo.CN_PROVINCES if locale == "zh_CN" else geo.US_STATES
        city_lists = [v[4] if locale == "zh_CN" else v[2] for v in table.values()]
        city = [city_lists[p][min(ci, len(city_lists[p]) - 1)] for p, ci in
                zip(place.tolist(), lat["city"][sel].tolist())]
        if locale == "zh_CN":
            gb = np.array([geo.CN_PROVINCES[p][2] for p in place_names])[place]
            nid = people.cn_resident_ids(rng, gb, birth[sel], female)
        else:
            nid = people.us_ssns(rng, k)
        cols["name"][sel] = full
        cols["email"][sel] = mail
        cols["phone"][sel] = people.format_phones(number, locale)
        cols["gender"][sel] = np.where(female, "F", "M")
        cols["birth_date"][sel] = np.datetime_as_string(birth[sel], unit="D")
        cols["address"][sel] = people.addresses(rng, pl, locale, k)
        cols["city"][sel] = city
        cols["postcode"][sel] = behaviour.postcodes(rng, locale, place_names, place)
        cols["region"][sel] = np.array(geo.REGIONS)[region[place]]
        cols["country"][sel] = COUNTRY[locale]
        cols["national_id"][sel] = nid
        info["locale"][sel] = locale
        info["phone_number"][sel] = number
        info["first"][sel] = first
        info["last"][sel] = last
        info["region"][sel] = region[place]
    cols["signup_date"][:] = np.datetime_as_string(signup_day, unit="D")
    cols["acquisition_channel"][:] = np.array(acq, dtype=object)[lat["acq"]]
    # one person, one address: make repeated e-mail addresses unique
    seen: set = set()
    for i, e in enumerate(cols["email"].tolist()):
        if e in seen:
            local, dom = e.split("@", 1)
            e = cols["email"][i] = f"{local}{int(rng.integers(1000, 10000))}@{dom}"
        seen.add(e)
    cols = {"customer_id": np.asarray(ids, dtype=np.int64), **cols}
    return cols, info


def _expected_repeat(clock: Clock, loc, signup_t, lam, p) -> np.ndarray:
    """Expected BG/NBD repeat purchases per day summed over customers.

    A customer active at clock time tau buys at rate lam and is still
    active with probability exp(-lam p (tau - tau_signup)) (Fader, Hardie &
    Lee 2005, eq. 5 integrated over the purchase count).
    """
    out = np.zeros(clock.n_days)
    tau_mid = ((clock.cum[:, :-1] + clock.cum[:, 1:]) / 2).astype(np.float32)
    mult = clock.mult.astype(np.float32)
    tau_s = clock.tau(loc, signup_t).astype(np.float32)
    days = np.arange(clock.n_days)
    lam32, lp = lam.astype(np.float32), (lam * p).astype(np.float32)
    for b in range(0, len(loc), 2000):
        sl = slice(b, b + 2000)
        L = loc[sl]
        dt_ = np.maximum(tau_mid[L] - tau_s[sl, None], 0)
        rate = lam32[sl, None] * mult[L] * np.exp(-lp[sl, None] * dt_)
        rate *= days[None, :] > np.floor(signup_t[sl])[:, None]
        out += rate.sum(axis=0, dtype=np.float64)
    return out


def _write_daily(clock: Clock, doc: dict, expected: np.ndarray, path: Path) -> None:
    locales = list(doc["locale"])
    shares = np.array([doc["locale"][x] for x in locales])
    days = pd.date_range(clock.start, periods=clock.n_days, freq="D")
    cols = {"date": pa.array(days.date, type=pa.date32()),
            "multiplier": pa.array(shares @ clock.mult),
            "is_promotion": pa.array(clock.promo.any(axis=0)),
            "holiday": pa.array(clock.holiday, type=pa.string()),
            "expected_orders": pa.array(np.round(expected, 3))}
    for li, x in enumerate(locales):
        cols[f"multiplier_{x}"] = pa.array(clock.mult[li])
        cols[f"is_promotion_{x}"] = pa.array(clock.promo[li])
    pq.write_table(pa.table(cols), path, **PARQUET_OPTIONS)


def _params(doc: dict) -> dict:
    params = copy.deepcopy(doc)
    params["bgnbd"] = {**{k: float(v) for k, v in doc["bgnbd"].items()}, "time_unit": "D"}
    for s in params["segments"].values():
        sp = s["spend"]
        sp["mean"] = float(sp["p"]) * float(sp["gamma"]) / (float(sp["q"]) - 1)
    params["generator_version"] = GENERATOR_VERSION
    return params
