"""Same seed, same database: a digest of every stored value, recorded before the architecture change.

Wall-clock columns (when a run started, finished, when a scenario was first stored) and the run seal that
folds them in are left out, and so are the keyed seals (ledger heads, release signatures, key ids: each
test session has its own key); everything the model produced, and every per-row digest of the batch log,
is in.
A change that alters results for the same seed must bump the version, add a CHANGELOG line and record the
new digest here.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from celltx_mfg.cli import app

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
WALL_CLOCK = {("scenario", "created"), ("run", "started"), ("run", "finished"), ("run", "digest"),
              ("correction", "time"), ("correction", "digest"), ("ledger", "time"), ("ledger", "digest")}
KEYED = {("ledger", "key_id"), ("ledger", "head"), ("release_signature", "key_id"),
         ("release_signature", "signature")}

GOLDEN = {
    "run": "b27f77b2cf5a16180b1c62842ec8e2cedadedc81346cb592a47a8c5656e37621",
    "sweep": "b063f635ad5760d32a4289122a0af59c5ec560910309d06a77a9293f0a97bb61",
}


def db_digest(path: Path) -> str:
    """sha256 over every table (by name), every row (sorted) and every column (by name)."""
    h = hashlib.sha256()
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for t in tables:
            cols = sorted(r[1] for r in con.execute(f'PRAGMA table_info("{t}")'))
            keep = [c for c in cols if (t, c) not in WALL_CLOCK | KEYED]
            h.update(f"{t}:{','.join(keep)}\n".encode())
            sel = ", ".join(f'"{c}"' for c in keep)
            for line in sorted(repr(row) for row in con.execute(f'SELECT {sel} FROM "{t}"')):
                h.update(line.encode())
                h.update(b"\n")
    finally:
        con.close()
    return h.hexdigest()


def _invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def test_run_database_is_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    _invoke(["run", str(SCENARIOS / "baseline.yaml"), "--db", str(db), "-r", "2", "--seed", "11", "--json"])
    _invoke(["run", str(SCENARIOS / "collect_then_queue.yaml"), "--db", str(db), "-r", "1", "--json"])
    _invoke(["run", str(SCENARIOS / "conditional_release.yaml"), "--db", str(db), "-r", "1", "--json"])
    got = db_digest(db)
    if not GOLDEN["run"]:
        pytest.fail(f"record the golden digest: {got}")
    assert got == GOLDEN["run"]


def test_sweep_database_is_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    _invoke(["sweep", str(SCENARIOS / "weekend_shifts.yaml"), "--db", str(db), "--vary", "suites=18,20",
             "-r", "2", "--jobs", "1", "--json"])
    got = db_digest(db)
    if not GOLDEN["sweep"]:
        pytest.fail(f"record the golden digest: {got}")
    assert got == GOLDEN["sweep"]
