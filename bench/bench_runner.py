"""Runner benchmarks (issue 2, section 4): what one report costs to run and publish.

``runner_tiny`` / ``papermill_tiny`` (group ``run-one-report``): the tiny
test notebook ``tests/notebooks/ok.ipynb`` (a header, KPIs, a chart, a
masked table, the summary, an export) on a three-row orders source, from
parameters to an HTML page:

* crmlab -- ``runner.run_report``: parameter check, lock, source check,
  papermill in a child process, the nbconvert page, run.json, latest.html,
  the index;
* papermill+nbconvert -- the bare tools by hand: ``papermill.execute_notebook``
  then ``nbconvert.HTMLExporter`` (no checks, no manifest, no publishing).

The ratio is crmlab's fixed cost per report over the tools it wraps.

``report_<name>`` (one per report): the project's own notebook run with
``crmlab run`` on ``synthetic:demo`` (scale demo) or ``synthetic:large``
(scale large): wall time and peak memory, the kernel included (the
harness reads the peak resident set of reaped child processes). The world
is made before the clock starts. A report whose notebook does not exist
yet is reported with a note and no time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from run import timed

REPO = Path(__file__).resolve().parents[1]
TINY_NOTEBOOK = REPO / "tests" / "notebooks" / "ok.ipynb"
GROUP = "run-one-report"


def _tiny_project(work: Path) -> tuple[Path, Path]:
    project = work / "tiny-project"
    (project / "notebooks").mkdir(parents=True, exist_ok=True)
    from crmlab import config

    shutil.copyfile(TINY_NOTEBOOK, project / "notebooks" / config.REPORTS["segmentation"])
    src = work / "tiny-source"
    src.mkdir(parents=True, exist_ok=True)
    (src / "orders.csv").write_text("customer_id,order_date,amount\n1,2026-06-01,10\n2,2026-06-02,20\n"
                                    "1,2026-06-09,5\n", encoding="utf-8")
    return project, src


def runner_tiny(scale: str, work: Path) -> dict:
    project, src = _tiny_project(work)
    os.environ["CRMLAB_HOME"] = str(project)
    os.environ["CRMLAB_REPORTS_DIR"] = str(work / "tiny-reports")
    from crmlab.runner import run_report

    with timed() as t:
        result = run_report("segmentation", source=str(src), trigger="bench")
    if result.status != "success":
        raise RuntimeError(result.message)
    return {"seconds": t.seconds, "group": GROUP, "impl": "crmlab"}


def papermill_tiny(scale: str, work: Path) -> dict:
    project, src = _tiny_project(work)
    out = work / "papermill-out"
    out.mkdir(parents=True, exist_ok=True)
    os.environ["CRMLAB_REPORTS_DIR"] = str(work / "papermill-reports")

    with timed() as t:  # imports included: crmlab's child process pays them too
        import nbformat
        import papermill as pm
        from nbconvert import HTMLExporter

        pm.execute_notebook(str(TINY_NOTEBOOK), str(out / "notebook.ipynb"), kernel_name="python3",
                            parameters={"source": str(src), "run_dir": str(out / "run")},
                            progress_bar=False)
        html, _ = HTMLExporter(exclude_input=True).from_notebook_node(
            nbformat.read(str(out / "notebook.ipynb"), as_version=4))
        (out / "report.html").write_text(html, encoding="utf-8")
    return {"seconds": t.seconds, "group": GROUP, "impl": "papermill+nbconvert"}


def _report_case(report: str):
    def case(scale: str, work: Path) -> dict:
        from crmlab import config

        notebook = config.notebooks_dir() / config.REPORTS[report]
        if not notebook.exists():
            return {"seconds": 0.0, "group": "reports", "impl": "crmlab",
                    "note": f"skipped: {notebook.name} does not exist yet"}
        scenario = "demo" if scale == "demo" else "large"
        from crmlab.synthetic import ensure_world

        ensure_world(scenario)  # not timed: the world is cached for every case
        os.environ["CRMLAB_REPORTS_DIR"] = str(work / f"reports-{scale}")
        from crmlab.runner import run_report

        with timed() as t:
            result = run_report(report, source=f"synthetic:{scenario}", trigger="bench")
        if result.status != "success":
            raise RuntimeError(result.message)
        return {"seconds": t.seconds, "group": "reports", "impl": "crmlab",
                "execute_s": _timing(result.run_dir, "execute_s"),
                "render_s": _timing(result.run_dir, "render_s")}

    case.__name__ = f"report_{report.replace('-', '_')}"
    return case


def _timing(run_dir: Path, key: str):
    import json

    return json.loads((run_dir / "run.json").read_text())["timings"].get(key)


CASES = {"runner_tiny": runner_tiny, "papermill_tiny": papermill_tiny}
for _name in ("data-quality", "segmentation", "lifecycle", "forecasting", "campaigns"):
    _case = _report_case(_name)
    CASES[_case.__name__] = _case
SCALES = {"runner_tiny": ("demo",), "papermill_tiny": ("demo",)}
