"""The lock files: every pin hashed, runtime apart from development, and the two never disagree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")
DEV_ONLY = {"pytest", "hypothesis", "playwright", "ruff", "mypy", "pytest-xdist", "psycopg", "ray"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip lock file with hashes."""
    out: dict[str, tuple[str, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := PIN.match(line):
            name = _norm(m["name"])
            out[name] = (m["version"], 0)
        elif "--hash=sha256:" in line and name is not None:
            version, n = out[name]
            out[name] = (version, n + 1)
    return out


def test_every_pin_carries_hashes() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock"):
        p = pins(ROOT / lock)
        assert p, lock
        assert [n for n, (_, hashes) in p.items() if hashes == 0] == [], f"{lock}: pins without a hash"


def test_runtime_lock_holds_no_development_tool_and_dev_lock_agrees_with_it() -> None:
    runtime, dev = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-dev.lock")
    assert DEV_ONLY.isdisjoint(runtime), sorted(DEV_ONLY & set(runtime))
    assert DEV_ONLY <= set(dev)
    assert {n: v for n, (v, _) in runtime.items()} == {n: dev[n][0] for n in runtime}


def test_runtime_lock_pins_every_runtime_dependency() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins(ROOT / "requirements.lock")
    names = {_norm(re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0]) for d in meta["dependencies"]}
    assert names <= set(runtime), sorted(names - set(runtime))
