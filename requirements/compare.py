"""Print how an environment differs from the lock: what `make upstream` is testing.

    python requirements/compare.py requirements/lock.txt .venv-upstream/bin/python

Lists every package whose installed version is not the locked one (newer
releases are what the upstream smoke is about), and packages that only one side
has. Exits 0; with --status, exits 1 when some locked package resolves to
another version (`make upstream` then runs the fast tests; when nothing differs
the main suite already tests exactly this set).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, set[str]]:
    """name -> pinned versions (a package can have one pin per Python range)."""
    pins: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins.setdefault(norm(m[1]), set()).add(m[2])
    return pins


def installed(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout
    return {norm(k): v for k, v in json.loads(out).items()}


def main(lock: str, python: str, status: bool = False) -> int:
    pins, have = locked(Path(lock)), installed(python)
    skip = {"pip", "setuptools", "wheel", "crmlab"}
    changed = [f"  {n}: {' or '.join(sorted(pins[n]))} -> {have[n]}"
               for n in sorted(pins.keys() & have.keys()) if have[n] not in pins[n]]
    extra = [f"  {n} {have[n]} (not in the lock)" for n in sorted(have.keys() - pins.keys() - skip)]
    print(f"{len(changed)} of {len(pins)} locked packages resolve to another version here:")
    print("\n".join(changed + extra) if changed or extra else "  none: the lock is the newest set")
    return 1 if status and changed else 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--status"]
    sys.exit(main(args[0], args[1], status="--status" in sys.argv[1:]))
