"""Integrity of the batch log as the CLI leaves it (GitHub issue 5), beyond tests/test_store.py: the
append-only triggers on a `celltx run` database, `celltx verify` naming run, table and row for each kind
of tampering in each batch-record table, release signatures that catch a record change even when the
hash chain is recomputed around it, corrections seen through `celltx export --batch`, and two ways
around the guarantees (pinned as known bugs).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg import store
from celltx_mfg.cli import app

from .conftest import SCENARIOS
from .reliability import note, store_problems

pytest_plugins = ["tests.conftest_reliability"]

runner = CliRunner()
RID = 2  # the run tampered with; run 1 must stay clean
BATCH_RECORD = ("step_event", "qc_test", "deviation", "release")


@pytest.fixture(scope="module")
def cli_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of a 240-day baseline written by the installed `celltx run` in its own process (so the
    database file is complete on disk when it exits)."""
    d = tmp_path_factory.mktemp("integrity")
    data = yaml.safe_load((SCENARIOS / "baseline.yaml").read_text())
    data.update(horizon_days=240, warmup_days=30, name="integrity")
    sc = d / "integrity.yaml"
    sc.write_text(yaml.safe_dump(data, sort_keys=False))
    db = d / "cli.db"
    p = subprocess.run([str(Path(sys.executable).parent / "celltx"), "run", str(sc), "--db", str(db), "-r", "2"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not Path(str(db) + "-wal").exists() or Path(str(db) + "-wal").stat().st_size == 0
    return db


@pytest.fixture
def db(cli_db: Path, tmp_path: Path) -> Path:
    """A private copy of the CLI-created database."""
    out = tmp_path / "copy.db"
    shutil.copy(cli_db, out)
    return out


def connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


def drop_triggers(con: sqlite3.Connection) -> None:
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')


def verify_cli(db: Path, *extra: str) -> tuple[int, list[str]]:
    r = runner.invoke(app, ["verify", "--db", str(db), *extra])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    return r.exit_code, r.output.strip().splitlines()


def count(con: sqlite3.Connection, table: str, rid: int = RID) -> int:
    return con.execute(f'SELECT COUNT(*) FROM "{table}" WHERE run_id = ?', (rid,)).fetchone()[0]


# ----------------------------------------------------------------------------------------- append-only

@pytest.mark.parametrize("table", BATCH_RECORD)
def test_batch_record_tables_refuse_update_and_delete(table: str, db: Path) -> None:
    """On a `celltx run` database, UPDATE and DELETE of step-event, QC, deviation and release rows are
    refused by the append-only triggers (one row, a whole run, the whole table), and nothing changes."""
    con = connect(db)
    before = con.execute(f'SELECT * FROM "{table}" ORDER BY run_id, row_seq').fetchall()
    assert len(before) > 0
    col = [c[1] for c in con.execute(f'PRAGMA table_info("{table}")')][4]
    attempts = [f'UPDATE "{table}" SET "{col}" = "{col}" WHERE run_id = {RID} AND row_seq = 0',
                f'UPDATE "{table}" SET digest = zeroblob(32)',
                f'DELETE FROM "{table}" WHERE run_id = {RID} AND row_seq = 0',
                f'DELETE FROM "{table}" WHERE run_id = {RID}',
                f'DELETE FROM "{table}"']
    for sql in attempts:
        with pytest.raises(sqlite3.IntegrityError, match=f"append-only GMP record: {table} rows cannot be"):
            con.execute(sql)
    assert con.execute(f'SELECT * FROM "{table}" ORDER BY run_id, row_seq').fetchall() == before
    con.close()
    assert verify_cli(db)[0] == 0
    note(f"{len(attempts)} UPDATE/DELETE statements refused on {len(before)} rows; table unchanged, verify clean")


@pytest.mark.parametrize("table", ["qc_test", "run"])
def test_insert_or_replace_is_detected(table: str, db: Path) -> None:
    """`INSERT OR REPLACE` of an existing row (a rewrite in disguise) slips past SQLite's DELETE triggers
    on a foreign connection (they fire for REPLACE only with recursive_triggers on, and a per-row
    BEFORE INSERT guard would halve write speed), so the defence is detection: verify names it."""
    con = connect(db)
    key = "id" if table == "run" else "run_id"
    row = list(con.execute(f'SELECT * FROM "{table}" WHERE {key} = 1 ORDER BY 1 LIMIT 1').fetchone())
    if table == "qc_test":
        row[8] = "fail" if row[8] == "pass" else "pass"  # result
    else:
        row[3] = row[3] + 1  # seed
    con.execute(f'INSERT OR REPLACE INTO "{table}" VALUES ({",".join("?" * len(row))})', row)
    con.commit()
    con.close()
    code, out = verify_cli(db)
    assert code == 1, out
    assert any(table in line for line in out), out
    note(f"REPLACE stored on a foreign connection; `celltx verify` exit {code}: {out[0][:120] if out else ''}")


# ------------------------------------------------------------------------------------------ tampering

def _row(con: sqlite3.Connection, table: str, seq: int) -> tuple:
    return con.execute(f'SELECT * FROM "{table}" WHERE run_id = ? AND row_seq = ?', (RID, seq)).fetchone()


def _forge_insert(con: sqlite3.Connection, table: str) -> int:
    """Append a copy of the run's last row as a new row, its digest chained the way the store does it."""
    spec = store._BY_NAME[table]
    last = con.execute(f'SELECT * FROM "{table}" WHERE run_id = ? ORDER BY row_seq DESC LIMIT 1', (RID,)).fetchone()
    seq = last[1] + 1
    vals = list(last[2:-1])
    digest = hashlib.sha256(last[-1] + spec.body(vals, RID, seq)).digest()
    con.execute(f'INSERT INTO "{table}" VALUES ({",".join("?" * len(last))})', (RID, seq, *vals, digest))
    return seq


@pytest.mark.parametrize("kind", ["changed", "removed", "inserted"])
@pytest.mark.parametrize("table", BATCH_RECORD)
def test_cli_verify_names_run_table_and_row(table: str, kind: str, db: Path) -> None:
    """With the triggers dropped, a row changed, removed or inserted in run 2 makes `celltx verify` exit 1
    and name run 2, the table and the row; run 1 verifies clean on its own."""
    con = connect(db)
    drop_triggers(con)
    n = count(con, table)
    seq = n // 2
    if kind == "changed":
        col = {"step_event": "end", "qc_test": "result_time", "deviation": "time", "release": "time"}[table]
        con.execute(f'UPDATE "{table}" SET "{col}" = "{col}" + 0.25 WHERE run_id = ? AND row_seq = ?', (RID, seq))
    elif kind == "removed":
        con.execute(f'DELETE FROM "{table}" WHERE run_id = ? AND row_seq = ?', (RID, seq))
    else:
        seq = _forge_insert(con, table)
    con.close()
    code, lines = verify_cli(db)
    assert code == 1, lines
    expected = f"run {RID} {table} row {seq}: {kind}"
    assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert not any(line.startswith("run 1 ") for line in lines), lines
    assert lines[-1].endswith("integrity problem(s) found")
    assert verify_cli(db, "--run", "1")[0] == 0
    note(f"exit 1: {'; '.join(lines[:-1])[:220]}")


def _sealed_fields(con: sqlite3.Connection, rid: int) -> tuple[str, dict[str, Any]]:
    con.row_factory = sqlite3.Row
    run = dict(con.execute("SELECT * FROM run WHERE id = ?", (rid,)).fetchone())
    content_hash = con.execute("SELECT content_hash FROM scenario WHERE id = ?", (run["scenario_id"],)).fetchone()[0]
    con.row_factory = None
    return content_hash, run


def reforge_chain(con: sqlite3.Connection, rid: int) -> None:
    """Recompute every digest of a run (rows, chain head, run seal) as the store computes them: what an
    insider who knows the algorithm would do to hide an edit. Release rows keep their signed
    record_digest."""
    content_hash, run = _sealed_fields(con, rid)
    prev = store._genesis(rid, content_hash)
    for spec in store._SPECS:
        cols = ", ".join(f'"{c}"' for c in spec.fields)
        for seq, *vals in con.execute(f'SELECT row_seq, {cols} FROM "{spec.name}" WHERE run_id = ? ORDER BY row_seq',
                                      (rid,)).fetchall():
            prev = hashlib.sha256(prev + spec.body(vals, rid, seq)).digest()
            con.execute(f'UPDATE "{spec.name}" SET digest = ? WHERE run_id = ? AND row_seq = ?', (prev, rid, seq))
    run["chain_head"] = prev.hex()
    con.execute("UPDATE run SET chain_head = ?, digest = ? WHERE id = ?",
                (run["chain_head"], store._run_seal(rid, content_hash, run), rid))


def _signed_batch_with_all_records(con: sqlite3.Connection) -> str:
    rows = con.execute(
        "SELECT r.batch_no FROM release r WHERE r.run_id = ? "
        "AND EXISTS (SELECT 1 FROM deviation d WHERE d.run_id = r.run_id AND d.batch_no = r.batch_no) "
        "ORDER BY r.row_seq", (RID,)).fetchall()
    assert rows, "no released batch with a deviation in run 2"
    return rows[0][0]


EDITS = {  # table -> (SQL changing one row of the batch's record, what it fakes)
    "batch": ("UPDATE batch SET suite = 'S99' WHERE run_id = :rid AND batch_no = :b", "suite swapped"),
    "step_event": ('UPDATE step_event SET "end" = "end" - 0.5 WHERE run_id = :rid AND batch_no = :b '
                   "AND step = 'expansion'", "expansion shortened"),
    "qc_test": ("UPDATE qc_test SET result = 'fail' WHERE run_id = :rid AND batch_no = :b AND test = 'sterility'",
                "sterility result flipped"),
    "deviation": ("UPDATE deviation SET severity = CASE severity WHEN 'minor' THEN 'major' ELSE 'minor' END "
                  "WHERE run_id = :rid AND batch_no = :b AND row_seq = (SELECT MIN(row_seq) FROM deviation "
                  "WHERE run_id = :rid AND batch_no = :b)", "deviation severity changed"),
}


@pytest.mark.parametrize("table", list(EDITS))
def test_release_signature_catches_record_change_even_with_chain_recomputed(table: str, db: Path) -> None:
    """A released batch's record (batch row, steps, QC, deviations) edited after signing and the whole
    hash chain recomputed around the edit: `celltx verify` still exits 1, naming the release row and the
    batch whose signature no longer matches."""
    con = connect(db)
    drop_triggers(con)
    batch_no = _signed_batch_with_all_records(con)
    sql, what = EDITS[table]
    assert con.execute(sql, {"rid": RID, "b": batch_no}).rowcount == 1
    reforge_chain(con, RID)
    rel_seq = con.execute("SELECT row_seq FROM release WHERE run_id = ? AND batch_no = ?",
                          (RID, batch_no)).fetchone()[0]
    con.close()
    problems = store.verify(store.open_store(str(db), readonly=True))
    assert [(p.run_id, p.table, p.row_seq, p.kind) for p in problems] == [(RID, "release", rel_seq, "signature")]
    code, lines = verify_cli(db)
    assert code == 1 and lines[0].startswith(f"run {RID} release row {rel_seq}: signature") and batch_no in lines[0]
    note(f"{what} in {batch_no}, chain recomputed: the only finding is `{lines[0][:110]}`")


# ------------------------------------------------------------------------------------------ corrections

def test_correction_is_a_new_row_and_shows_in_cli_batch_export(db: Path, tmp_path: Path) -> None:
    """A correction recorded with record_correction leaves the original row as entered, adds one
    correction row, is marked `corrected` (with reason, actor and new value) on that row only in
    `celltx export --batch COI`, and `celltx verify` stays clean; a second correction adds a second row."""
    con = connect(db)
    coi, batch_no = con.execute("SELECT coi, batch_no FROM release WHERE run_id = ? ORDER BY row_seq LIMIT 1",
                                (RID,)).fetchone()
    seq, sampled = con.execute("SELECT row_seq, sampled FROM qc_test WHERE run_id = ? AND batch_no = ? "
                               "AND test = 'potency'", (RID, batch_no)).fetchone()
    original = _row(con, "qc_test", seq)
    con.close()
    engine = store.open_store(str(db))
    try:
        store.record_correction(engine, RID, "qc_test", seq, "sample time misread from the label",
                                {"sampled": round(sampled + 0.1, 4)}, "qa_reviewer:MK")
        store.record_correction(engine, 1, "batch", 0, "suite entered wrongly", {"suite": "S2"}, "qa_reviewer:MK")
    finally:
        engine.dispose()
    con = connect(db)
    assert _row(con, "qc_test", seq) == original, "the corrected row itself must not change"
    assert con.execute("SELECT COUNT(*) FROM correction").fetchone()[0] == 2
    con.close()
    assert verify_cli(db)[0] == 0

    out = tmp_path / f"{coi}.csv"
    r = runner.invoke(app, ["export", "--db", str(db), "--batch", coi, "--run", str(RID), "--out", str(out)])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out)
    marked = df[df["corrected"]]
    assert list(zip(marked["table"], marked["row_seq"], strict=True)) == [("qc_test", seq)]
    text = marked["corrections"].iloc[0]
    assert "sample time misread" in text and "qa_reviewer:MK" in text and "sampled" in text
    assert float(marked["sampled"].iloc[0]) == pytest.approx(sampled)  # the record as first entered

    engine = store.open_store(str(db))
    try:
        store.record_correction(engine, RID, "qc_test", seq, "second look: the first correction was wrong too",
                                {"sampled": round(sampled + 0.2, 4)}, "qa_lead:AB")
    finally:
        engine.dispose()
    r = runner.invoke(app, ["export", "--db", str(db), "--batch", coi, "--run", str(RID), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = pd.read_csv(out).set_index(["table", "row_seq"]).loc[("qc_test", seq), "corrections"]
    assert "qa_reviewer:MK" in text and "qa_lead:AB" in text and text.count(" | ") == 1
    code, lines = verify_cli(db)
    assert code == 0, lines
    runs, problems = store_problems(db)
    assert runs == 2 and problems == []
    note(f"{coi} qc_test row {seq}: original kept, 2 corrections listed in the export, verify clean")


# ------------------------------------------------------------------------------------ a whole run gone

def test_verify_detects_a_deleted_run(cli_db: Path, tmp_path: Path) -> None:
    """With the triggers dropped, deleting a whole run (its run row and every record row) from a store of
    three runs is reported by `celltx verify` (exit 1)."""
    db = tmp_path / "three.db"
    shutil.copy(cli_db, db)
    scenario = connect(db).execute("SELECT text FROM scenario").fetchone()[0]
    sc_file = tmp_path / "sc.yaml"
    sc_file.write_text(scenario)
    assert runner.invoke(app, ["run", str(sc_file), "--db", str(db), "--json"]).exit_code == 0
    con = connect(db)
    drop_triggers(con)
    for t in store.RECORD_TABLES:
        con.execute(f'DELETE FROM "{t}" WHERE run_id = {RID}')
    con.execute(f"DELETE FROM run WHERE id = {RID}")
    left = [r[0] for r in con.execute("SELECT id FROM run ORDER BY id")]
    con.close()
    code, lines = verify_cli(db)
    note(f"today: runs {left} left, `celltx verify` exit {code}: {lines[0][:100] if lines else ''}")
    assert code == 1 and any(str(RID) in line and ("missing" in line or "removed" in line)
                             for line in lines[:-1]), lines
