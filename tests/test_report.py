"""The page anatomy (crmlab.report) and the shared charts (crmlab.charts),
without a kernel: what each part writes and shows."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from crmlab import charts, report  # noqa: E402
from crmlab.exceptions import ParameterError  # noqa: E402
from crmlab.report import Report, change, format_value, write_json  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """What the Report displayed, as a list of HTML strings."""
    out: list[str] = []
    monkeypatch.setattr(report, "_display", out.append)
    return out


def _past_run(report_dir: Path, run_id: str, started: str, metrics: dict, status: str = "success",
              kpis: list | None = None) -> Path:
    d = report_dir / run_id
    d.mkdir(parents=True)
    write_json(d / "run.json", {"report": report_dir.name, "run_id": run_id, "status": status,
                                "started_at": started, "finished_at": started, "kpis": kpis or []})
    write_json(d / "metrics.json", metrics)
    return d


@pytest.fixture
def runs(tmp_path):
    """Three earlier runs of "segmentation" (one failed) and a new run dir."""
    rd = tmp_path / "reports" / "segmentation"
    _past_run(rd, "20260101T000000Z-aaaa", "2026-01-01T00:00:00+00:00", {"customers": 100, "churn": 0.20})
    _past_run(rd, "20260201T000000Z-bbbb", "2026-02-01T00:00:00+00:00", {"customers": 120, "churn": 0.25})
    _past_run(rd, "20260301T000000Z-cccc", "2026-03-01T00:00:00+00:00", {"customers": 999}, status="failed")
    new = rd / "20260401T000000Z-dddd"
    new.mkdir()
    return new


def test_metrics_and_kpis_are_written_json_safe(tmp_path):
    rep = Report("segmentation", run_dir=tmp_path / "run")
    rep.metric("customers", np.int64(1234), label="Customers", kpi=True, better="higher")
    rep.metric("share", np.float32(0.25), fmt="{:.0%}")
    rep.metric("missing", float("nan"))
    rep.metric("when", pd.Timestamp("2026-06-30"))
    rep.metric("by_segment", {"core": np.int64(3), "lost": np.float64(1.5)})
    assert rep.metric("customers", 1300, label="Customers", kpi=True) is None  # a cell ending with it shows nothing
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == {"customers": 1300, "share": 0.25, "missing": None, "when": "2026-06-30T00:00:00",
                       "by_segment": {"core": 3, "lost": 1.5}}
    kpis = json.loads((tmp_path / "run" / "kpis.json").read_text())
    assert kpis == [{"key": "customers", "label": "Customers", "value": 1300, "fmt": "{:,.0f}", "better": None}]
    with pytest.raises(ParameterError):
        rep.metric("bad key!", 1)
    with pytest.raises(ParameterError):
        rep.metric("k", 1, better="up")


def test_previous_and_history_read_earlier_successful_runs(runs):
    rep = Report("segmentation", run_dir=runs)
    prev = rep.previous(5)
    assert [p["run_id"] for p in prev] == ["20260201T000000Z-bbbb", "20260101T000000Z-aaaa"]
    hist = rep.history("customers")
    assert hist.tolist() == [100.0, 120.0] and hist.index.is_monotonic_increasing
    assert rep.history("no_such_metric").empty


def test_summary_states_changes_since_the_previous_run(runs, shown):
    rep = Report("segmentation", run_dir=runs)
    rep.metric("customers", 150, label="Active customers", kpi=True, better="higher")
    rep.metric("churn", 0.20, label="Churn rate", fmt="{:.1%}", kpi=True, better="lower")
    rep.finding("Core customers bring <b>60%</b> of revenue.")
    rep.summary()
    html = shown[-1]
    assert "Core customers bring &lt;b&gt;60%&lt;/b&gt; of revenue." in html
    assert "Active customers rose from 120 to 150 (+25.0%) since the previous run (2026-02-01)." in html
    assert "Churn rate fell from 25.0% to 20.0% (-5.0 pts)" in html
    # tones follow "better": more customers good, less churn good
    assert html.count('class="crm-good"') == 2 and 'class="crm-bad"' not in html
    # sparklines: two earlier successful runs + this one (the failed run is left out)
    sparks = re.findall(r'points="([^"]+)"', html)
    assert [len(p.split()) for p in sparks] == [3, 3]


def test_first_run_says_there_is_nothing_to_compare(tmp_path, shown):
    rep = Report("lifecycle", run_dir=tmp_path / "reports" / "lifecycle" / "r1")
    rep.metric("clv", 10.0, kpi=True)
    rep.summary()
    assert "first successful run" in shown[-1] and "no earlier run" in shown[-1]


def test_change_and_format():
    assert change(90, 100, "higher")["tone"] == "bad"
    assert change(90, 100, None)["tone"] == "flat"
    assert change(5, 0, "higher", "{:,.0f}")["text"] == "+5"
    assert change(None, 1) is None and change("x", 1) is None
    assert format_value(float("nan")) == "–" and format_value(1234.5, "{:,.1f}") == "1,234.5"
    assert format_value("text", "{:.1%}") == "text"


def test_header_escapes_and_redacts_the_source(tmp_path, shown):
    class Data:
        spec = "postgresql://crm:s3cret@db/crm"
        fingerprint = "abc123"
        extracted_at = pd.Timestamp("2026-06-30")
        row_counts = {"orders": {"rows": 12345, "quarantined": 2}}

    rep = Report("segmentation", run_dir=tmp_path / "r", params={"source": "<x>"})
    rep.header(Data(), as_of="2026-06-30")
    html = shown[-1]
    assert "s3cret" not in html and "postgresql://crm:***@db/crm" in html
    assert "12,345 orders" in html and "As of 2026-06-30" in html and report.STATUS_MARKER in html
    rep.footer()
    assert "abc123" in shown[-1] and "s3cret" not in shown[-1] and "&lt;x&gt;" in shown[-1]


def test_footer_gives_the_rerun_command(tmp_path, shown):
    rep = Report("segmentation", run_dir=tmp_path / "r",
                 params={"source": "synthetic:demo", "as_of": "2026-06-30", "k": 5, "flag": True,
                         "cities": ["杭州", "Lake Eric"], "run_dir": "x", "audience": "stakeholder"})
    assert rep.rerun_command() == ("crmlab run segmentation --source synthetic:demo -p as_of=2026-06-30 "
                                   "-p k=5 -p flag=true -p 'cities=[\"杭州\", \"Lake Eric\"]'")


def test_section_table_and_not_available(tmp_path, shown):
    rep = Report("segmentation", run_dir=tmp_path / "r")
    profile = pd.DataFrame({"segment": ["core", "tiny", "<lost>"], "customers": [40, 3, 12],
                            "revenue": [1234.5, 10.0, 99.0]})
    fig = charts.bar(profile.set_index("segment")["customers"])
    assert plt.fignum_exists(fig.number)
    rep.section("Segments", "Core is large.\n\nAct on <lost>.", figure=fig, table=profile,
                table_options={"count_col": "customers"})
    html = shown[-1]
    assert html.count('<p class="crm-text">') == 2 and "Act on &lt;lost&gt;." in html
    assert 'src="data:image/png;base64,' in html and not plt.fignum_exists(fig.number), \
        "figure inlined and closed"
    assert "tiny" not in html and "&lt;lost&gt;" in html and "1,234.50" in html
    rep.not_available("Satisfaction", needs="tickets.satisfaction")
    assert "Not available: needs tickets.satisfaction." in shown[-1]


def test_export_masks_personal_columns_for_stakeholders(tmp_path):
    people = pd.DataFrame({"customer_id": [1], "email": ["zhangsan@example.com"], "national_id": ["1101"]})
    rep = Report("segmentation", run_dir=tmp_path / "r")
    path = rep.export("../risk list", people)
    assert path == tmp_path / "r" / "exports" / "risk_list.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        assert list(csv.reader(fh)) == [["customer_id", "email"], ["1", "z***@example.com"]]
    raw = Report("segmentation", run_dir=tmp_path / "r2", audience="analyst").export("risk", people)
    assert "zhangsan@example.com" in raw.read_text(encoding="utf-8")


def test_scratch_run_dir_for_an_analyst_in_jupyterlab(tmp_path, monkeypatch, shown):
    monkeypatch.setenv("CRMLAB_REPORTS_DIR", str(tmp_path / "reports"))
    _past_run(tmp_path / "reports" / "segmentation", "20260101T000000Z-aaaa", "2026-01-01T00:00:00+00:00",
              {"customers": 100})
    rep = Report("segmentation", run_dir="")
    assert rep.run_dir.parent == tmp_path / "reports" / "_scratch" / "segmentation"
    assert rep.previous()[0]["metrics"] == {"customers": 100}
    rep.header()
    assert "draft" in shown[-1]


def test_audience_is_checked(tmp_path):
    with pytest.raises(ParameterError):
        Report("segmentation", run_dir=tmp_path, audience="everyone")


# -- charts ------------------------------------------------------------------

def test_bar_has_one_labelled_bar_per_row():
    fig = charts.bar(pd.DataFrame({"seg": ["核心客户", "at risk", "lost"], "n": [5, 3, 1]}), x="seg", y="n")
    ax = fig.axes[0]
    assert len(ax.patches) == 3
    assert [t.get_text() for t in ax.texts] == ["5", "3", "1"]
    fig_h = charts.bar(pd.Series({"a": 1.5, "b": 2.5}), horizontal=True, fmt="{:.1f}")
    assert len(fig_h.axes[0].patches) == 2 and sorted(t.get_text() for t in fig_h.axes[0].texts) == ["1.5", "2.5"]
    plt.close("all")


def test_line_with_band_draws_history_forecast_and_interval():
    idx = pd.date_range("2026-01-01", periods=10, freq="D")
    fut = pd.date_range("2026-01-11", periods=5, freq="D")
    fig = charts.line_with_band(pd.Series(range(10), idx), pd.Series(range(10, 15), fut),
                                lower=pd.Series(range(8, 13), fut), upper=pd.Series(range(12, 17), fut),
                                level=0.8)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1
    assert "80% prediction interval" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close("all")


def test_heatmap_and_small_multiples():
    m = pd.DataFrame([[1.0, 0.5], [1.0, 0.4]], index=["2026-01", "2026-02"], columns=[0, 1])
    fig = charts.heatmap(m, fmt=".0%")
    assert len(fig.axes[0].texts) == 4
    long = pd.DataFrame({"region": ["华东"] * 3 + ["North"] * 3 + ["South"] * 3 + ["West"] * 3,
                         "month": list(range(3)) * 4, "revenue": range(12)})
    fig = charts.small_multiples(long, facet="region", x="month", y="revenue", ncols=3)
    assert len(fig.axes) == 4 and all(len(ax.lines) == 1 for ax in fig.axes)
    plt.close("all")


def test_cjk_labels_render_without_missing_glyphs(recwarn):
    charts.use_theme()
    fig = charts.bar(pd.Series({"杭州市": 3, "上海市": 2}))
    fig.canvas.draw()
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    plt.close("all")


def _chinese_font_files() -> set[str]:
    """Fontconfig's Chinese fonts (else Debian's Noto CJK files)."""
    fc = shutil.which("fc-list")
    out = subprocess.run([fc, ":lang=zh", "file"], capture_output=True, text=True).stdout if fc else ""
    files = {line.strip().rstrip(":") for line in out.splitlines() if line.strip()}
    files = files or {str(p) for p in Path("/usr/share/fonts").rglob("Noto*CJK*")}
    if not files:
        pytest.fail("no Chinese font is installed: .ci/run installs Debian's fonts-noto-cjk")
    return files


# matplotlib's font cache, written without the fonts given as arguments
_STALE_CACHE = """
import sys
import matplotlib
from pathlib import Path
from matplotlib import font_manager as fm
hidden = set(sys.argv[1:])
fm.fontManager.ttflist = [f for f in fm.fontManager.ttflist if f.fname not in hidden]
fm.json_dump(fm.fontManager, Path(matplotlib.get_cachedir()) / f"fontlist-v{fm.FontManager.__version__}.json")
"""

# Chinese labels through the theme: warnings, and the font each glyph is drawn with
_DRAW_CHINESE = """
import json
import warnings
import matplotlib
matplotlib.use("Agg")
import pandas as pd
from matplotlib import font_manager as fm
from crmlab import charts
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    fig = charts.bar(pd.Series({"杭州市": 3, "上海市": 2}), title="Customers by city")
    fig.canvas.draw()

def drawn_with(char):
    # matplotlib >= 3.6 draws each glyph with the first family of font.family that has it
    for family in matplotlib.rcParams["font.family"]:
        path = fm.findfont(fm.FontProperties(family=family), fallback_to_default=False)
        if fm.get_font(path).get_char_index(ord(char)):
            return family, path
    return None, None

print(json.dumps({"warnings": [str(w.message) for w in caught if "missing from font" in str(w.message)],
                  "chinese": drawn_with("杭"), "latin": drawn_with("C")}))
"""


def test_cjk_font_found_when_matplotlibs_font_cache_predates_it(tmp_path):
    # fonts-noto-cjk installed after matplotlib first built its font cache:
    # the cache does not list the CJK fonts, fontconfig does
    hidden = _chinese_font_files()
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))
    subprocess.run([sys.executable, "-c", _STALE_CACHE, *sorted(hidden)], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", _DRAW_CHINESE], env=env, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["warnings"] == []
    family, path = got["chinese"]
    assert path in hidden and "CJK" in family, got
    assert got["latin"][0] == "DejaVu Sans", "Latin text keeps its own font"


def test_sparkline_shape():
    svg = charts.sparkline([1, None, 3, float("nan"), 2], width=100, height=20)
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(points) == 3 and svg.startswith("<svg") and svg.endswith("</svg>")
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[1] == min(ys), "the highest value is drawn highest (smallest y)"
    assert "polyline" not in charts.sparkline([5])


def test_save_writes_a_file_only_when_its_text_changed(tmp_path, monkeypatch):
    # every metric rewrites metrics.json (a run that fails half-way keeps its figures);
    # kpis.json is rewritten only when a KPI changed
    written = []
    real = report.write_json
    monkeypatch.setattr(report, "write_json", lambda path, obj, **kw: written.append(Path(path).name)
                        or real(path, obj, **kw))
    rep = Report("segmentation", run_dir=tmp_path / "run")
    rep.metric("customers", 1234, label="Customers", kpi=True)
    rep.metric("share", 0.25)
    rep.metric("orders", 99)
    rep.metric("orders", 99)
    rep.save()
    assert written == ["metrics.json", "kpis.json", "metrics.json", "metrics.json"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"customers": 1234, "share": 0.25,
                                                                          "orders": 99}
    (tmp_path / "run" / "kpis.json").unlink()  # gone from disk: written again
    rep.save()
    assert written[-1] == "kpis.json" and json.loads((tmp_path / "run" / "kpis.json").read_text())[0]["value"] == 1234
