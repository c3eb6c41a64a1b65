"""The tables of a world: their Arrow schemas, and the writer that streams
chunks into Parquet files and the DuckDB database.

Parquet files get one row group per chunk (dictionary encoding only for
string columns with few distinct values); the DuckDB database gets the same
rows in the same order, inserted from Arrow by a single DuckDB thread.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TABLES = ("customers", "orders", "order_lines", "products", "interactions", "tickets",
          "campaigns", "campaign_contacts")

_S = pa.string()
_TS = pa.timestamp("us")
SCHEMAS: dict[str, pa.Schema] = {
    "customers": pa.schema([("customer_id", pa.int64())] + [(c, _S) for c in (
        "name", "email", "phone", "gender", "birth_date", "address", "city", "postcode", "region",
        "country", "national_id", "signup_date", "acquisition_channel")]),
    "orders": pa.schema([("order_id", pa.int64()), ("customer_id", pa.int64()),
                         ("order_date", _TS), ("amount", pa.float64()), ("channel", _S),
                         ("status", _S), ("discount", pa.float64()), ("currency", _S),
                         ("quantity", pa.int64())]),
    "order_lines": pa.schema([("order_id", pa.int64()), ("product_id", pa.int64()),
                              ("category", _S), ("quantity", pa.int64()),
                              ("unit_price", pa.float64())]),
    "products": pa.schema([("product_id", pa.int64()), ("name", _S), ("category", _S),
                           ("unit_cost", pa.float64()), ("list_price", pa.float64())]),
    "interactions": pa.schema([("customer_id", pa.int64()), ("ts", _TS), ("type", _S),
                               ("channel", _S)]),
    "tickets": pa.schema([("ticket_id", pa.int64()), ("customer_id", pa.int64()),
                          ("opened_at", _TS), ("channel", _S), ("topic", _S),
                          ("satisfaction", pa.int64()), ("nps", pa.int64()), ("text", _S),
                          ("resolved_at", _TS)]),
    "campaigns": pa.schema([("campaign_id", _S), ("name", _S), ("channel", _S),
                            ("start_date", pa.date32()), ("end_date", pa.date32()),
                            ("cost", pa.float64()), ("cost_per_contact", pa.float64()),
                            ("planned_treatment_share", pa.float64())]),
    "campaign_contacts": pa.schema([("campaign_id", _S), ("customer_id", pa.int64()),
                                    ("group", _S), ("sent_at", _TS), ("delivered", pa.int8()),
                                    ("opened", pa.int8()), ("clicked", pa.int8()),
                                    ("converted", pa.int8()), ("revenue", pa.float64())]),
}
TRUTH_SCHEMAS: dict[str, pa.Schema] = {
    "customers": pa.schema([("customer_id", pa.int64()), ("segment", _S), ("lam", pa.float64()),
                            ("p", pa.float64()), ("spend_mean", pa.float64()),
                            ("signup", pa.date32()), ("dropout_date", pa.date32()),
                            ("alive_at_end", pa.bool_()), ("locale", _S),
                            ("duplicate_of", pa.int64())]),
    "contacts": pa.schema([("campaign_id", _S), ("customer_id", pa.int64()), ("group", _S),
                           ("p_control", pa.float64()), ("p_treatment", pa.float64()),
                           ("revenue_uplift", pa.float64())]),
    "campaign_orders": pa.schema([("order_id", pa.int64()), ("campaign_id", _S),
                                  ("customer_id", pa.int64()), ("group", _S),
                                  ("incremental", pa.bool_())]),
}
TRUTH_CAMPAIGNS = pa.schema([
    ("campaign_id", _S), ("has_control", pa.bool_()), ("planned_treatment_share", pa.float64()),
    ("true_uplift", pa.float64()), ("true_revenue_uplift_per_contact", pa.float64()),
    ("true_extra_orders_per_contact", pa.float64()),
    ("effect_kind", _S), ("srm_planted", pa.bool_()), ("shared_control_with", _S),
    ("n_treatment", pa.int64()), ("n_control", pa.int64()), ("attribution_days", pa.int64()),
    ("channel", _S)])
TRUTH_DUPLICATES = pa.schema([("customer_id_a", pa.int64()), ("customer_id_b", pa.int64()),
                              ("changes", _S), ("orders_moved", pa.int64())])
TRUTH_DEFECTS = pa.schema([("table", _S), ("row", pa.int64()), ("key", pa.int64()),
                           ("column", _S), ("defect", _S)])
PARQUET_OPTIONS = {"compression": "snappy"}
# string columns with (nearly) one value per row: no dictionary encoding
HIGH_CARDINALITY = {"name", "email", "phone", "address", "postcode", "national_id",
                    "birth_date", "signup_date", "changes"}
DUCKDB_MEMORY = "512MB"           # the writer's DuckDB memory limit


def dict_array(codes: np.ndarray, values: list[str]) -> pa.Array:
    codes = np.asarray(codes, dtype=np.int32)
    mask = codes < 0
    idx = pa.array(np.where(mask, 0, codes), type=pa.int32(), mask=mask if mask.any() else None)
    return pa.DictionaryArray.from_arrays(idx, pa.array(values, type=_S)).cast(_S)


def ts_array(start_s: np.int64, seconds: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    us = (np.asarray(seconds, dtype=np.int64) + start_s) * 1_000_000
    return pa.array(us, type=pa.int64(), mask=null).cast(_TS)


def date32_array(start: dt.date, days: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    base = (start - dt.date(1970, 1, 1)).days
    d = np.asarray(np.where(null, 0, days) if null is not None else days, dtype=np.int32) + base
    return pa.array(d, type=pa.int32(), mask=null).cast(pa.date32())


class Writer(threading.Thread):
    """Writes finished chunks to Parquet and DuckDB while the next is built.

    pyarrow and DuckDB release the GIL, so on two cores writing overlaps
    generation. Ids that depend on earlier chunks (order_id, ticket_id and
    their row numbers) are offset here, in chunk order.
    """

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root = root
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.rows: dict[str, int] = {}
        self.error: BaseException | None = None
        self.off = {"orders": 0, "tickets": 0}
        self.pending_dups: list[pa.Table] = []
        self.pending_dup_truth: list[pa.Table] = []
        self.defects: list[pd.DataFrame] = []
        self.db = None
        self.db_rows = 0

    # -- output
    def _parquet(self, name: str, table: pa.Table) -> None:
        if name not in self.writers:
            path = self.root / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            dictionary = [f.name for f in table.schema
                          if pa.types.is_string(f.type) and f.name not in HIGH_CARDINALITY]
            self.writers[name] = pq.ParquetWriter(path, table.schema, use_dictionary=dictionary,
                                                  **PARQUET_OPTIONS)
            self.rows[name] = 0
        if table.num_rows or not self.rows[name]:
            self.writers[name].write_table(table, row_group_size=max(table.num_rows, 1))
        self.rows[name] += table.num_rows

    def _table(self, name: str, table: pa.Table) -> None:
        """A contract table: Parquet and the DuckDB database."""
        self._parquet(name, table)
        if self.db is None:
            self.db = duckdb.connect(str(self.root / "crm.duckdb"))
            self.db.execute("SET enable_progress_bar = false")
            self.db.execute("SET threads = 1")          # the other core is generating
            self.db.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
            self.db.execute("BEGIN")
            for t in TABLES:
                self.db.register("_empty", SCHEMAS[t].empty_table())
                self.db.execute(f'CREATE TABLE "{t}" AS SELECT * FROM _empty')
                self.db.unregister("_empty")
        if table.num_rows:
            self.db.register("_chunk", table)
            self.db.execute(f'INSERT INTO "{name}" SELECT * FROM _chunk')
            self.db.unregister("_chunk")
            self.db_rows += table.num_rows
            if self.db_rows > 2_000_000:       # commit now and then: bounded memory
                self.db.execute("COMMIT")
                self.db.execute("BEGIN")
                self.db_rows = 0

    def _offset(self, table: pa.Table, column: str, off: int) -> pa.Table:
        i = table.schema.get_field_index(column)
        return table.set_column(i, column, pc.add(table.column(column), pa.scalar(off, pa.int64())))

    def _chunk(self, r: dict) -> None:
        oo, to = self.off["orders"], self.off["tickets"]
        self._table("customers", r["customers"])
        self._table("orders", self._offset(r["orders"], "order_id", oo))
        self._table("order_lines", self._offset(r["order_lines"], "order_id", oo))
        self._table("interactions", r["interactions"])
        self._table("tickets", self._offset(r["tickets"], "ticket_id", to))
        self._table("campaign_contacts", r["campaign_contacts"])
        self._parquet("truth/customers", r["truth_customers"])
        self._parquet("truth/contacts", r["truth_contacts"])
        self._parquet("truth/campaign_orders",
                      self._offset(r["truth_campaign_orders"], "order_id", oo))
        self.pending_dups.append(r["dup_customers"])
        self.pending_dup_truth.append(r["truth_dup_customers"])
        d = r["defects"]
        if len(d):
            d = d.copy()
            for table, off in (("orders", oo), ("tickets", to)):
                sel = (d["table"] == table).to_numpy()
                d.loc[sel, "row"] += off
                d.loc[sel, "key"] += off
            self.defects.append(d)
        self.off["orders"] += r["orders"].num_rows
        self.off["tickets"] += r["tickets"].num_rows

    def finish(self, products: pa.Table, campaigns_table: pa.Table) -> None:
        """Duplicates after all originals, then the small tables; close everything."""
        for t in self.pending_dups:
            if t.num_rows:
                self._table("customers", t)
        for t in self.pending_dup_truth:
            if t.num_rows:
                self._parquet("truth/customers", t)
        self._table("products", products)
        self._table("campaigns", campaigns_table)
        for t in TABLES:
            if t not in self.writers:
                self._table(t, SCHEMAS[t].empty_table())
        for name, schema in TRUTH_SCHEMAS.items():
            if f"truth/{name}" not in self.writers:
                self._parquet(f"truth/{name}", schema.empty_table())
        for w in self.writers.values():
            w.close()
        if self.db is not None:
            self.db.execute("COMMIT")
            self.db.close()

    # -- thread
    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self._chunk(item)
                except BaseException as exc:  # surfaced by put()/join_checked()
                    self.error = exc

    def put(self, item: dict) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def join_checked(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error
