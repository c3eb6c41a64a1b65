"""The lock, pyproject.toml's ranges and the README's speed table agree.

``requirements/lock.txt`` (``make lock``) is what ``make setup`` and CI
install; ``pyproject.toml`` keeps the ranges for library users; the README's
speed table is generated from ``bench/BASELINE-*.json`` by
``bench/readme_table.py``. Fast, no network, no install.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock_entries(text: str) -> list[tuple[Requirement, list[str]]]:
    """(requirement, hashes) per entry of a pip requirements file written by uv."""
    logical, buf = [], ""
    for line in text.splitlines():
        line = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    entries = []
    for item in logical:
        hashes = re.findall(r"--hash=(\S+)", item)
        spec = re.sub(r"--hash=\S+", "", item).strip()
        if spec.startswith("-"):
            raise AssertionError(f"requirements/lock.txt: option line {spec!r} in the lock")
        entries.append((Requirement(spec), hashes))
    return entries


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies and every extra's."""
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def pins() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for req, _ in lock_entries(LOCK.read_text()):
        (spec,) = req.specifier
        out.setdefault(canonicalize_name(req.name), []).append(spec.version)
    return out


def test_lock_parser_reads_pins_markers_and_hashes():
    text = ("# header\n"
            "soupsieve==2.10 ; python_full_version < '3.11.5' \\\n"
            "    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via beautifulsoup4\n"
            "pandas==3.1.2 \\\n    --hash=sha256:cc\n")
    (soup, soup_hashes), (pandas, _) = lock_entries(text)
    assert (soup.name, str(soup.specifier), soup_hashes) == ("soupsieve", "==2.10",
                                                               ["sha256:aa", "sha256:bb"])
    assert str(soup.marker) == 'python_full_version < "3.11.5"'
    assert (pandas.name, str(pandas.specifier)) == ("pandas", "==3.1.2")


def test_every_lock_entry_is_an_exact_pin_with_hashes():
    entries = lock_entries(LOCK.read_text())
    assert len(entries) > 100
    for req, hashes in entries:
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", \
            f"requirements/lock.txt: {req} is not pinned with =="
        assert req.url is None, f"requirements/lock.txt: {req.name} comes from a URL"
        assert hashes and all(h.startswith("sha256:") for h in hashes), \
            f"requirements/lock.txt: {req.name} has no sha256 hash"


def test_every_declared_package_is_pinned_in_the_lock():
    locked = pins()
    missing = [str(r) for r in declared() if canonicalize_name(r.name) not in locked]
    assert not missing, f"pyproject.toml declares {missing}, missing from requirements/lock.txt: make lock"


def test_lock_pins_satisfy_pyproject_ranges():
    locked = pins()
    outside = [f"{r.name}=={v} (pyproject: {r.specifier})" for r in declared()
               for v in locked.get(canonicalize_name(r.name), [])
               if not r.specifier.contains(v, prereleases=True)]
    assert not outside, f"requirements/lock.txt pins outside pyproject.toml's ranges: {outside}"


def test_extras_of_declared_packages_are_in_the_lock():
    """ibis-framework[duckdb,postgres] and psycopg[binary] bring their extras' packages."""
    locked = pins()
    missing = []
    for req in declared():
        if not req.extras:
            continue
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{req.name} is not installed here")
        for item in map(Requirement, requires):
            for extra in req.extras:
                if (item.marker and "extra" in str(item.marker)
                        and item.marker.evaluate({"extra": extra})
                        and canonicalize_name(item.name) not in locked):
                    missing.append(f"{item.name} (for {req.name}[{extra}])")
    assert not missing, f"requirements/lock.txt lacks {sorted(set(missing))}: make lock"


@pytest.mark.parametrize("python", ["3.11.0", "3.11.7", "3.12.1", "3.13.0"])
def test_lock_gives_one_version_of_each_package_per_tested_python(python):
    """One universal lock for 3.11-3.13: on each, every declared package (and every
    package at all) has exactly one pin whose markers apply on Linux."""
    env = {"python_full_version": python, "python_version": python[:4], "sys_platform": "linux",
           "os_name": "posix", "platform_system": "Linux", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "platform_machine": "x86_64"}
    applicable: dict[str, list[str]] = {}
    for req, _ in lock_entries(LOCK.read_text()):
        if req.marker is None or req.marker.evaluate(env):
            applicable.setdefault(canonicalize_name(req.name), []).append(str(req.specifier))
    doubled = {n: v for n, v in applicable.items() if len(v) > 1}
    assert not doubled, f"requirements/lock.txt pins twice on Python {python}: {doubled}"
    missing = [r.name for r in declared() if canonicalize_name(r.name) not in applicable]
    assert not missing, f"requirements/lock.txt has no pin on Python {python} for {missing}"


def test_setup_and_conda_install_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert "LOCK := requirements/lock.txt" in make
    assert "pip install -q --require-hashes -r $(LOCK)" in make
    assert "pip install -q --no-deps -e ." in make
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_part = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip_part == ["--require-hashes", "-r requirements/lock.txt"]
    assert "python=3.11" in env["dependencies"]


def _readme_table():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "bench" / "readme_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_speed_table_is_what_the_baselines_give():
    rt = _readme_table()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == rt.replace(readme, rt.render()), \
        "README.md's speed table is not what bench/BASELINE-*.json give: python bench/readme_table.py"
    assert rt.main(["--check"]) == 0


def test_readme_table_check_catches_a_hand_edit(tmp_path):
    rt = _readme_table()
    copy = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(rt.START)
    copy.write_text(text[:start] + text[start:].replace("| what |", "| what (edited) |", 1),
                    encoding="utf-8")
    assert rt.main(["--check", "--readme", str(copy)]) == 1


def test_every_number_in_the_speed_table_is_in_a_baseline():
    rt = _readme_table()
    baselines = [p for p in (ROOT / "bench").glob("BASELINE-*.json")]
    block = rt.render()
    for scale in rt.SCALES:
        if not (ROOT / "bench" / f"BASELINE-{scale}.json").exists():
            assert f"**{rt.SCALES[scale]}**: {rt.NOT_MEASURED}" in block
    if not baselines:
        assert not re.search(r"\d+(\.\d+)? s\b", block), "a time in the table without a baseline"
