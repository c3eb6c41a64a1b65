"""The five notebooks are thin templates (STYLE.md): committed without
outputs, no logic of their own, one typed `parameters` cell with the common
parameters, and every computation imported from crmlab."""

from __future__ import annotations

import ast
import json

import pytest

from crmlab import config

COMMON = {"source": "str", "mapping": "str", "as_of": "str", "run_dir": "str", "audience": "str"}
MAX_CELL_LINES = 15


def _load(name):
    path = config.notebooks_dir() / config.REPORTS[name]
    assert path.exists(), f"{path} is missing"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("report", sorted(config.REPORTS))
def test_committed_without_outputs(report):
    nb = _load(report)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {i} of {report} has outputs"
            assert cell.get("execution_count") is None, f"cell {i} of {report} was executed"


@pytest.mark.parametrize("report", sorted(config.REPORTS))
def test_no_logic_in_notebook(report):
    nb = _load(report)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        tree = ast.parse(src)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"cell {i} of {report} defines logic; move it into lib/crmlab"
        lines = [l for l in src.splitlines() if l.strip() and not l.strip().startswith("#")]
        assert len(lines) <= MAX_CELL_LINES, f"cell {i} of {report} has {len(lines)} lines"


@pytest.mark.parametrize("report", sorted(config.REPORTS))
def test_parameters_cell(report):
    nb = _load(report)
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{report} needs exactly one cell tagged 'parameters'"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first_code is cells[0], "the parameters cell is the first code cell"
    src = "".join(cells[0]["source"])
    tree = ast.parse(src)
    declared = {}
    for node in tree.body:
        # typed literal defaults only: `name: type = literal  # comment`
        assert isinstance(node, ast.AnnAssign), f"{report}: parameters are `name: type = value` lines"
        ast.literal_eval(node.value)  # a literal, not a derived value
        declared[node.target.id] = ast.unparse(node.annotation)
    for line in src.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"{report}: every parameter has a short comment: {line!r}"
    for name, typ in COMMON.items():
        assert declared.get(name) == typ, f"{report}: common parameter {name}: {typ} missing"


@pytest.mark.parametrize("report", sorted(config.REPORTS))
def test_reads_like_a_report(report):
    nb = _load(report)
    assert nb["cells"][0]["cell_type"] == "markdown", "a title cell comes first"
    tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
    assert "header" in tags and "summary" in tags, "header and summary cells are tagged"
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "crmlab" in code
    n_md = sum(c["cell_type"] == "markdown" for c in nb["cells"])
    assert n_md >= 4, "markdown cells say what each result means"
