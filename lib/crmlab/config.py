"""Paths and defaults, in one place.

Every path can be moved by an environment variable, so a scheduled run, a
test and an analyst's laptop can each keep their own tree:

``CRMLAB_HOME``         the project root (notebooks/, parameters/, synthetic/)
``CRMLAB_REPORTS_DIR``  the reports tree (default ``<home>/reports``)
``CRMLAB_DATA_DIR``     where generated synthetic worlds are cached
                        (default ``<home>/synthetic/data``)
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The project root: ``CRMLAB_HOME``, else the checkout this package
    was installed from (editable install), else the current directory."""
    env = os.environ.get("CRMLAB_HOME")
    if env:
        return Path(env).resolve()
    checkout = _PACKAGE_DIR.parents[1]
    if (checkout / "notebooks").is_dir():
        return checkout
    return Path.cwd()


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def parameters_dir() -> Path:
    return project_root() / "parameters"


def scenarios_dir() -> Path:
    return project_root() / "synthetic"


def data_dir() -> Path:
    env = os.environ.get("CRMLAB_DATA_DIR")
    return Path(env).resolve() if env else scenarios_dir() / "data"


def reports_dir(override: str | os.PathLike | None = None) -> Path:
    """The reports tree: the argument, else ``CRMLAB_REPORTS_DIR``, else
    ``<home>/reports``."""
    if override:
        return Path(override).resolve()
    env = os.environ.get("CRMLAB_REPORTS_DIR")
    return Path(env).resolve() if env else project_root() / "reports"


# report name -> notebook file (the stable names of the command line)
REPORTS: dict[str, str] = {
    "data-quality": "10-data-quality.ipynb",
    "segmentation": "20-segmentation.ipynb",
    "lifecycle": "30-lifecycle.ipynb",
    "forecasting": "40-forecasting.ipynb",
    "campaigns": "50-campaigns.ipynb",
}

DEFAULT_SOURCE = "synthetic:demo"
DEFAULT_SEED = 42

# privacy: groups smaller than this are not shown individually on
# stakeholder pages
MIN_GROUP_SIZE = 10

# exit codes (DESIGN.md "What one run leaves behind")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_DATA = 3
EXIT_TIMEOUT = 4
EXIT_LOCKED = 5
EXIT_GATED = 6  # the notebook succeeded but the data failed the run's gate: not published


def project_path(path: str | os.PathLike) -> Path:
    """A path as a user types it: absolute, relative to the current
    directory, or else relative to the project root."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (project_root() / p).exists():
        return project_root() / p
    return p


def load_yaml(path: str | os.PathLike, what: str) -> dict:
    """Read a YAML file that must hold a mapping (rules, mappings, scenarios,
    parameter files, schedules).

    ``what`` names the file for the user ("mapping", "segment map", ...);
    a missing file, invalid YAML or a top level that is not a mapping is a
    :class:`~crmlab.exceptions.ParameterError` that says which.
    """
    import yaml

    from crmlab.exceptions import ParameterError

    p = Path(path)
    if not p.is_file():
        raise ParameterError(f"{what} file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ParameterError(f"{what} {p.name} is not valid YAML{where}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ParameterError(f"{what} {p.name} must hold a mapping (name: value) at the top level")
    return doc
