"""Files that ship with the package: the Streamlit dashboard and the example scenarios.

They live once in git, at the repository root (``dashboards/``, ``scenarios/``); the wheel carries them as
package data (``celltx_mfg/_dashboards``, ``celltx_mfg/_scenarios``, see pyproject.toml). Found through
importlib.resources in an installed wheel or an editable install that maps them, else in the source
checkout this module was imported from.
"""

from __future__ import annotations

import importlib.util
from importlib.resources import files
from pathlib import Path


class ResourceMissing(LookupError):
    """The packaged files are in none of the places they could be."""


def _locate(package: str, repo_folder: str, marker: str) -> Path:
    candidates: list[Path] = [Path(str(files("celltx_mfg").joinpath(package)))]
    try:
        spec = importlib.util.find_spec(f"celltx_mfg.{package}")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) for p in spec.submodule_search_locations)
    candidates.append(Path(__file__).resolve().parents[2] / repo_folder)  # a source checkout (src layout)
    for c in candidates:
        if (c / marker).is_file():
            return c
    raise ResourceMissing(f"{repo_folder} not found (looked in {', '.join(str(c) for c in candidates)})")


def dashboard_app() -> Path:
    """The Streamlit entry script, ``Overview.py``, next to its ``pages/``."""
    return _locate("_dashboards", "dashboards", "Overview.py") / "Overview.py"


def example_scenarios() -> list[Path]:
    """The example scenario files, baseline.yaml first."""
    folder = _locate("_scenarios", "scenarios", "baseline.yaml")
    return sorted(folder.glob("*.yaml"), key=lambda p: (p.name != "baseline.yaml", p.name))
