"""Synthetic world generation benchmarks (issue 2, section 2).

``world``: ``crmlab.synthetic.generate`` of the scale's scenario (``demo``:
20,000 customers / ~400,000 orders; ``large``: 1,000,000 customers /
~20,000,000 orders) into the work directory -- all eight tables, the DuckDB
file and the truth folder. Targets: demo < 15 s; large < 120 s and < 4 GiB.
Large worlds are built by two forked worker processes (chunks in order, the
same bytes as one process); ``tree_peak_mib`` sums the resident memory of the
process and its workers (``peak_mib`` is the largest single one).
The world is deleted afterwards (not timed); reports' benches use their own
cached copy from ``ensure_world``.

``people_crmlab`` / ``people_faker`` (group ``people``): making the
personal columns of customers (name, e-mail, phone, address, city, postcode,
national id, birth date) -- crmlab's Faker-made pools sampled with numpy
versus calling Faker for every person (the 60/40 zh_CN/en_US mix of the
demo). Faker is timed on up to 20,000 people and extrapolated to the scale's
customer count (``note`` says so); ``people_per_second`` is in each row.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from run import timed

CUSTOMERS = {"demo": 20_000, "large": 1_000_000}
FAKER_SAMPLE = 20_000


class _TreeRSS(threading.Thread):
    """Peak resident memory of this process plus its children, summed (MiB).

    The harness's ``peak_mib`` is the largest single process; generation
    forks workers, so the sum is the honest figure.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0
        self.stop = threading.Event()

    @staticmethod
    def _rss_kib(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as fh:
                return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            return 0

    def _tree(self, pid: int) -> list[int]:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        return [pid] + [p for k in kids for p in self._tree(int(k))]

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, sum(map(self._rss_kib, self._tree(os.getpid()))) / 1024)


def world(scale: str, work: Path) -> dict:
    from crmlab import synthetic
    from crmlab.synthetic.world import generation_workers

    out = work / f"world-{scale}"
    shutil.rmtree(out, ignore_errors=True)
    rss = _TreeRSS()
    rss.start()
    with timed() as t:
        path = synthetic.generate(scale, out=out)
    rss.stop.set()
    info = json.loads((path / "world.json").read_text())
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    chunk = synthetic.load_scenario(scale).get("chunk_customers", 50_000)
    n_chunks = -(-info["customers"] // chunk)
    return {"seconds": t.seconds, "group": "generate-world", "impl": "crmlab",
            "rows": info["rows"]["orders"], "customers": info["rows"]["customers"],
            "order_lines": info["rows"]["order_lines"], "disk_mib": round(size / 2**20, 1),
            "workers": generation_workers(n_chunks), "tree_peak_mib": round(rss.peak, 1),
            "target_seconds": 15 if scale == "demo" else 120,
            "target_mib": None if scale == "demo" else 4096}


def people_crmlab(scale: str, work: Path) -> dict:
    from crmlab.synthetic import behaviour, people
    from crmlab.synthetic.clock import build_clock
    from crmlab.synthetic.scenario import load_scenario
    from crmlab.synthetic.world import _identity

    scn = load_scenario(scale)
    n = CUSTOMERS[scale]
    clock = build_clock(scn)
    locales = list(scn["locale"])
    shares = np.array([scn["locale"][x] for x in locales])
    rng = np.random.default_rng(1)
    with timed() as t:
        pools = {x: people.build_pools(scn["seed"], x, size=int(scn.get("pool_size", 1500)))
                 for x in locales}
        for lo in range(0, n, 50_000):
            m = min(50_000, n - lo)
            loc = rng.choice(len(locales), m, p=shares)
            lat = behaviour.draw_latent(rng, scn, loc)
            signup = np.sort(rng.random(m)) * clock.n_days
            _identity(rng, scn, clock, pools, locales, lat, loc, signup,
                      np.arange(lo, lo + m, dtype=np.int64))
    return {"seconds": t.seconds, "group": "people", "impl": "crmlab", "rows": n,
            "people_per_second": round(n / t.seconds)}


def people_faker(scale: str, work: Path) -> dict:
    from faker import Faker

    n = CUSTOMERS[scale]
    k = min(n, FAKER_SAMPLE)
    fakers = {"zh_CN": Faker("zh_CN"), "en_US": Faker("en_US")}
    for f in fakers.values():
        f.seed_instance(42)
    rng = np.random.default_rng(1)
    which = np.where(rng.random(k) < 0.6, "zh_CN", "en_US")
    with timed() as t:
        rows = []
        for loc in which.tolist():
            f = fakers[loc]
            rows.append((f.name(), f.email(), f.phone_number(), f.street_address(), f.city(),
                         f.postcode(), f.ssn(), f.date_of_birth(minimum_age=18, maximum_age=85)))
    rate = k / t.seconds
    out = {"seconds": n / rate, "group": "people", "impl": "faker", "rows": n,
           "people_per_second": round(rate)}
    if k < n:
        out["note"] = f"Faker timed on {k:,} people ({t.seconds:.1f} s), extrapolated to {n:,}"
    return out


CASES = {"world": world, "people_crmlab": people_crmlab, "people_faker": people_faker}
