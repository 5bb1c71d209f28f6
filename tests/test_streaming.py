"""Streamed records: a replication that hands its records to a spool in chunks stores the same run,
row for row and digest for digest, as one that held them all; an interrupted streamed run stores nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from celltx_mfg import analysis, store
from celltx_mfg.config import Scenario
from celltx_mfg.records import STREAMED, RecordSpool, RunRecords
from celltx_mfg.simulate import simulate
from celltx_mfg.store import open_store, write_run

STARTED = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
FINISHED = datetime(2026, 1, 5, 8, 1, tzinfo=UTC)


def _dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every stored row of every table but the ledger and scenario (stamped with the write's own clock),
    digest columns included, ordered by their first two columns (id, or run and row)."""
    con = sqlite3.connect(db)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: con.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2').fetchall()
                for t in names if t not in ("ledger", "scenario") and not t.startswith("sqlite_")}
    finally:
        con.close()


def _store(db: Path, name: str, text: str, records: RunRecords) -> None:
    engine = open_store(str(db))
    try:
        write_run(engine, name, text, records, started=STARTED, finished=FINISHED)
    finally:
        engine.dispose()


def _hands_on(sc: Scenario) -> Scenario:
    assert sc.costs is not None
    return sc.model_copy(update={"costs": sc.costs.model_copy(update={"labour_basis": "hands_on"})})


@pytest.mark.parametrize("labour", ["paid", "hands_on"])
def test_streamed_run_is_stored_byte_identical(tmp_path: Path, baseline_small: tuple[Scenario, str],
                                               labour: str) -> None:
    sc, text = baseline_small
    if labour == "hands_on":
        sc = _hands_on(sc)
    held = simulate(sc, replication=1)
    spool = RecordSpool(str(tmp_path))
    try:
        streamed = simulate(sc, replication=1, spool=spool, chunk_rows=97)  # many chunks, odd size
        assert spool.count("steps") > 97 * 3 and len(streamed.steps) < 97  # it did stream
        assert streamed.costs == held.costs and streamed.events == held.events
        for table, _ in RunRecords.TABLES:
            assert [tuple(r) for r in streamed.rows(table)] == [tuple(r) for r in held.rows(table)], table
        _store(tmp_path / "held.db", sc.name, text, held)
        _store(tmp_path / "streamed.db", sc.name, text, streamed)
        k_held = analysis.kpis(held.frames(), held.horizon, held.warmup, held.costs or None)
        k_streamed = analysis.kpis(streamed.frames(), streamed.horizon, streamed.warmup, streamed.costs or None)
        assert k_streamed == k_held
    finally:
        spool.close()
    a, b = _dump(tmp_path / "held.db"), _dump(tmp_path / "streamed.db")
    assert a["step_event"] and a["release_signature"] and a["run"]
    assert a == b
    for db in ("held.db", "streamed.db"):
        engine = open_store(str(tmp_path / db))
        assert store.verify(engine) == []
        engine.dispose()


def test_spool_reads_back_in_order_and_again(tmp_path: Path) -> None:
    spool = RecordSpool(str(tmp_path))
    spool.write("steps", [(1, "a"), (2, "b")])
    spool.write("steps", [])
    spool.write("steps", [(3, None)])
    assert list(spool.rows("steps")) == [(1, "a"), (2, "b"), (3, None)]
    assert list(spool.rows("steps")) == [(1, "a"), (2, "b"), (3, None)]  # readable twice
    assert spool.count("steps") == 3 and spool.count("releases") == 0 and list(spool.rows("releases")) == []
    spool.close()
    assert spool.count("steps") == 0
    assert set(STREAMED) < {name for name, _ in RunRecords.TABLES}


def test_interrupted_streamed_run_stores_nothing(tmp_path: Path) -> None:
    """Killed while it streams (after chunks went to the spool) or while it stores: no run, no rows,
    no spool file left in the spool's folder."""
    db, folder = tmp_path / "runs.db", tmp_path / "spool"
    folder.mkdir()
    script = textwrap.dedent(f"""
        import os, signal
        from celltx_mfg.config import load_scenario
        from celltx_mfg.records import RecordSpool
        from celltx_mfg.simulate import simulate
        from celltx_mfg.store import open_store, write_run
        from tests.conftest import shrink, SCENARIOS

        class DiesMidway(RecordSpool):
            def write(self, table, rows):
                super().write(table, rows)
                if self.count("steps") >= 400:
                    os.kill(os.getpid(), signal.SIGKILL)

        engine = open_store({str(db)!r})
        sc, text = shrink(SCENARIOS / "baseline.yaml")
        records = simulate(sc, replication=0, spool=DiesMidway({str(folder)!r}), chunk_rows=100)
        write_run(engine, sc.name, text, records)
    """)
    root = Path(store.__file__).parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(store.__file__).parents[2]), str(root)])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300, cwd=root)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert list(folder.iterdir()) == []  # anonymous files: gone with the process
    if db.exists():
        con = sqlite3.connect(db)
        assert con.execute("SELECT count(*) FROM run").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM step_event").fetchone() == (0,)
        con.close()
