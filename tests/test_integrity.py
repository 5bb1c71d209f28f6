"""Integrity of the batch log as the CLI leaves it (GitHub issue 5), beyond tests/test_store.py: the
append-only triggers on a `celltx run` database, `celltx verify` naming run, table and row for each kind
of tampering in each batch-record table, release signatures that catch a record change even when the
hash chain is recomputed around it, corrections seen through `celltx export --batch`; and (GitHub
issue 10) forgery and loss by an insider who recomputes every sha256 digest with the package's own
functions: re-sealed runs, deleted newest runs, everything deleted, reused and renumbered ids, deleted
scenarios and corrections, dropped and no-op triggers, forged huge ids, and a store sealed by another
installation's key. Only the keyed seals (store/keys.py, store/seals.py) and a ledger head kept outside
the store (`verify --expect-head`, `--head-file`) catch those.
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
    problems = [p for p in store.verify(store.open_store(str(db), readonly=True)) if p.kind != "guard"]
    assert sorted((p.run_id, p.table, p.row_seq or 0, p.kind) for p in problems) == [
        (RID, "release", rel_seq, "signature"), (RID, "run", 0, "seal")]
    code, lines = verify_cli(db)
    line = next(x for x in lines if x.startswith(f"run {RID} release row {rel_seq}: signature"))
    assert code == 1 and batch_no in line
    assert any(x.startswith(f"run {RID} run: seal: run {RID} differs from what ledger entry") for x in lines)
    note(f"{what} in {batch_no}, chain recomputed: `{line[:110]}`; and the keyed seal: the run was re-sealed "
         "without the key")


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


# ------------------------------------------------------------------- forgery and loss (GitHub issue 10)
# An insider who knows the algorithm recomputes every sha256 digest after an edit; only the keyed seals
# (the ledger's HMAC entries, the QP role signatures) and a ledger head kept outside the store remain.

def reseal_run(con: sqlite3.Connection, rid: int) -> None:
    """Recompute everything a run's sha256 seals cover, as the store computes it: the batch record digest
    each release signed, every row digest, the chain head and the run seal. What is left to catch the
    edit is only what needs a key."""
    from collections import defaultdict

    content_hash, run = _sealed_fields(con, rid)
    prev, rec = store._genesis(rid, content_hash), defaultdict(hashlib.sha256)
    for spec in store._SPECS:
        cols = ", ".join(f'"{c}"' for c in spec.fields)
        for seq, *vals in con.execute(f'SELECT row_seq, {cols} FROM "{spec.name}" WHERE run_id = ? ORDER BY row_seq',
                                      (rid,)).fetchall():
            if spec.name == "release":
                vals[-1] = store._record_hex(rec, vals[spec.fields.index("batch_no")])
                con.execute("UPDATE release SET record_digest = ? WHERE run_id = ? AND row_seq = ?", (vals[-1], rid, seq))
            body = spec.body(vals, rid, seq)
            if spec.batch_idx is not None and vals[spec.batch_idx] is not None:
                rec[vals[spec.batch_idx]].update(body)
            prev = hashlib.sha256(prev + body).digest()
            con.execute(f'UPDATE "{spec.name}" SET digest = ? WHERE run_id = ? AND row_seq = ?', (prev, rid, seq))
    run["chain_head"] = prev.hex()
    con.execute("UPDATE run SET chain_head = ?, digest = ? WHERE id = ?",
                (run["chain_head"], store._run_seal(rid, content_hash, run), rid))


def delete_run(con: sqlite3.Connection, rid: int, ledger: bool = True) -> None:
    """Remove a run whole (records, signatures, corrections, run row), and with ``ledger`` its ledger
    entry too (the newest entries can go without breaking the chain of the ones before)."""
    for t in (*store.RECORD_TABLES, "release_signature", "correction"):
        con.execute(f'DELETE FROM "{t}" WHERE run_id = ?', (rid,))
    con.execute("DELETE FROM run WHERE id = ?", (rid,))
    if ledger:
        con.execute("DELETE FROM ledger WHERE kind = 'run' AND ref_id = ?", (rid,))


def restore_triggers(con: sqlite3.Connection) -> None:
    """Put the append-only triggers back exactly as the store defines them: the careful insider."""
    for ddl in store._append_only_ddl():
        con.execute(ddl)


def head_of(db: Path) -> str:
    engine = store.open_store(str(db), readonly=True)
    try:
        head = store.ledger_head(engine)
    finally:
        engine.dispose()
    assert head is not None and len(head) == 64
    return head


def findings(lines: list[str]) -> list[str]:
    """verify's finding lines, without the count and the append-only trigger ones (dropped on purpose)."""
    return [x for x in lines[:-1] if ": guard: " not in x]


def _kpi(db: Path, rid: int, path: str) -> float:
    import json

    r = runner.invoke(app, ["kpis", "--db", str(db), "--run", str(rid), "--json"])
    assert r.exit_code == 0, r.output
    value: Any = json.loads(r.stdout)["kpis"]
    for part in path.split("."):
        value = value[part]
    return float(value)


def test_resealed_infusions_moved_ten_days_earlier_are_detected(db: Path) -> None:
    """Every infusion of run 2 moved 10 days earlier and the run re-sealed with the package's own hashing
    functions (chain, record digests, run seal): `celltx verify` exits 1, naming run 2 as changed and
    re-sealed without the key, although every sha256 digest matches."""
    before = _kpi(db, RID, "vein_to_vein_days.mean")
    con = connect(db)
    drop_triggers(con)
    for t in ("patient", "batch"):
        con.execute(f"UPDATE {t} SET infused = infused - 10 WHERE run_id = ? AND infused IS NOT NULL", (RID,))
    reseal_run(con, RID)
    con.close()
    after = _kpi(db, RID, "vein_to_vein_days.mean")
    assert after == pytest.approx(before - 10, abs=0.5)
    code, lines = verify_cli(db)
    seal = [x for x in findings(lines) if x.startswith(f"run {RID} run: seal: run {RID} differs from what ledger")]
    qp = [x for x in findings(lines) if x.startswith(f"run {RID} release row") and "qualified_person signature" in x]
    assert code == 1 and len(seal) == 1 and len(findings(lines)) == 1 + len(qp) and qp, lines
    assert verify_cli(db, "--run", "1")[0] == 0
    note(f"vein-to-vein mean of run {RID} {before:.1f} -> {after:.1f} d, every sha256 recomputed; "
         f"verify exit {code}: {seal[0][:100]}; and {len(qp)} releases whose QP signature no longer matches")


def test_resealed_failed_sterility_turned_into_a_pass_is_detected(db: Path) -> None:
    """A failed sterility result turned into a pass and the run re-sealed without the key: verify exits 1
    (the keyed seal of run 2 no longer matches)."""
    con = connect(db)
    drop_triggers(con)
    seq, batch_no = con.execute("SELECT row_seq, batch_no FROM qc_test WHERE run_id = ? AND test = 'sterility' "
                                "AND result = 'fail' ORDER BY row_seq LIMIT 1", (RID,)).fetchone()
    con.execute("UPDATE qc_test SET result = 'pass' WHERE run_id = ? AND row_seq = ?", (RID, seq))
    reseal_run(con, RID)
    con.close()
    code, lines = verify_cli(db)
    assert code == 1 and any(f"run {RID} run: seal:" in x for x in findings(lines)), lines
    note(f"sterility of {batch_no} fail -> pass, re-sealed; exit {code}: {findings(lines)[0][:110]}")


def test_resealed_release_moved_five_days_breaks_the_qp_signature(db: Path) -> None:
    """A release moved 5 days earlier (release row and batch row) and everything unkeyed recomputed:
    verify exits 1 with the run's keyed seal and the release's qualified-person signature both broken."""
    con = connect(db)
    drop_triggers(con)
    seq, batch_no = con.execute("SELECT row_seq, batch_no FROM release WHERE run_id = ? ORDER BY row_seq LIMIT 1",
                                (RID,)).fetchone()
    con.execute("UPDATE release SET time = time - 5 WHERE run_id = ? AND row_seq = ?", (RID, seq))
    con.execute("UPDATE batch SET released = released - 5 WHERE run_id = ? AND batch_no = ?", (RID, batch_no))
    reseal_run(con, RID)
    con.close()
    code, lines = verify_cli(db)
    found = findings(lines)
    assert code == 1 and any(x.startswith(f"run {RID} run: seal:") for x in found), lines
    qp = [x for x in found if x.startswith(f"run {RID} release row {seq}: signature") and "qualified_person" in x]
    assert qp and batch_no in qp[0], lines
    note(f"release of {batch_no} moved 5 days, re-sealed; exit {code}: {qp[0][:140]}")


def test_removed_or_foreign_qp_signatures_are_detected(db: Path, tmp_path: Path, monkeypatch) -> None:
    """A release signature removed is reported (the release carries no signature); one copied from
    another release does not match its row; signatures made by another installation's role key are
    reported as signed by an unknown key."""
    con = connect(db)
    drop_triggers(con)
    con.execute("DELETE FROM release_signature WHERE run_id = ? AND row_seq = 0", (RID,))
    con.execute("UPDATE release_signature SET signature = (SELECT signature FROM release_signature WHERE run_id = ? "
                "AND row_seq = 2) WHERE run_id = ? AND row_seq = 1", (RID, RID))
    con.close()
    code, lines = verify_cli(db)
    found = findings(lines)
    assert code == 1 and len(found) == 2, lines
    assert found[0].startswith(f"run {RID} release row 0: signature") and "carries no qualified_person" in found[0]
    assert found[1].startswith(f"run {RID} release row 1: signature") and "does not match" in found[1]
    monkeypatch.setenv("CELLTX_KEY_FILE", str(tmp_path / "other" / "keys.json"))
    store.load_keys(create=True)
    code2, lines2 = verify_cli(db, "--run", "1")
    assert code2 == 1 and any("release row 0: unknown_key: release of" in x for x in lines2), lines2
    note(f"removed: `{found[0][:90]}`; copied: `{found[1][:90]}`; other key: `{lines2[1][:90]}`")


def test_failed_batch_set_back_to_in_progress_is_detected(db: Path) -> None:
    """A failed batch set back to in_progress (no release signs it) with the row chain and run seal
    recomputed: verify exits 1 through the run's keyed seal."""
    con = connect(db)
    drop_triggers(con)
    batch_no = con.execute("SELECT batch_no FROM batch WHERE run_id = ? AND status = 'failed' ORDER BY row_seq "
                           "LIMIT 1", (RID,)).fetchone()[0]
    con.execute("UPDATE batch SET status = 'in_progress', failure_reason = NULL WHERE run_id = ? AND batch_no = ?",
                (RID, batch_no))
    reseal_run(con, RID)
    con.close()
    code, lines = verify_cli(db)
    assert code == 1 and any(x.startswith(f"run {RID} run: seal:") for x in findings(lines)), lines
    note(f"{batch_no} failed -> in_progress, re-sealed; exit {code}: {findings(lines)[0][:110]}")


def test_deleting_the_newest_run_is_detected(db: Path, tmp_path: Path) -> None:
    """The newest run deleted whole (triggers dropped): with its ledger entry kept, verify names it as
    deleted; with the entry deleted too the rest of the store is whole, and `verify --expect-head HEAD`
    (HEAD printed when the run was written) exits 1."""
    head = head_of(db)
    for with_entry in (False, True):
        copy = tmp_path / f"newest-{with_entry}.db"
        shutil.copy(db, copy)
        con = connect(copy)
        drop_triggers(con)
        delete_run(con, RID, ledger=with_entry)
        restore_triggers(con)
        con.close()
        code, lines = verify_cli(copy)
        if not with_entry:
            kept = next((x for x in lines if x.startswith(f"run {RID} run: removed: run {RID} is in the ledger")), "")
            assert code == 1 and kept, lines
            continue
        assert code == 0, lines  # a shorter store, whole in itself: only the anchor can tell
        code, lines = verify_cli(copy, "--expect-head", head)
        assert code == 1 and any(f"expected head {head[:16]}... is not in the ledger" in x for x in lines), lines
    note(f"entry kept: `{kept[:100]}`; entry deleted too (triggers restored): plain verify exit 0, "
         f"--expect-head exit {code}: {findings(lines)[-1][:110]}")


def test_deleting_everything_is_detected_by_the_head(db: Path, tmp_path: Path) -> None:
    """Every run, record, scenario and ledger entry deleted (triggers put back): an empty store, so only
    a head kept outside it can tell; `verify --expect-head` and `verify --head-file` (kept by an earlier
    verify) exit 1."""
    head_file = tmp_path / "ledger.head"
    code, lines = verify_cli(db, "--head-file", str(head_file))
    assert code == 0 and head_file.read_text().strip() == head_of(db) and lines[-1].endswith("created")
    con = connect(db)
    drop_triggers(con)
    for t in (*store.RECORD_TABLES, "release_signature", "correction", "run", "scenario", "ledger"):
        con.execute(f'DELETE FROM "{t}"')
    restore_triggers(con)
    con.close()
    assert verify_cli(db)[0] == 0  # nothing left to be inconsistent
    code, lines = verify_cli(db, "--head-file", str(head_file))
    assert code == 1 and "the ledger is now empty" in lines[0], lines
    code2, lines2 = verify_cli(db, "--expect-head", head_file.read_text().strip())
    assert code2 == 1 and lines2[0] == lines[0]
    note(f"everything deleted; --head-file: exit {code}: {lines[0][:120]}")


def test_deleting_a_run_and_running_again_reuses_no_id_unnoticed(db: Path, tmp_path: Path) -> None:
    """The newest run deleted and `celltx run` again: the store gives the new run the same id (another
    replication, seed or time). With the old ledger entry kept, verify says the id was reused; with it
    deleted, the head kept from before is no longer in the ledger."""
    head = head_of(db)
    con = connect(db)
    scenario = con.execute("SELECT text FROM scenario").fetchone()[0]
    old_seal = con.execute("SELECT digest FROM run WHERE id = ?", (RID,)).fetchone()[0]
    con.close()
    sc_file = tmp_path / "sc.yaml"
    sc_file.write_text(scenario)
    outcomes = []
    for with_entry in (False, True):
        copy = tmp_path / f"reuse-{with_entry}.db"
        shutil.copy(db, copy)
        con = connect(copy)
        drop_triggers(con)
        delete_run(con, RID, ledger=with_entry)
        con.close()
        r = runner.invoke(app, ["run", str(sc_file), "--db", str(copy), "--seed", "99", "--json"])
        assert r.exit_code == 0, r.output
        con = connect(copy)
        assert con.execute("SELECT digest FROM run WHERE id = ?", (RID,)).fetchone()[0] != old_seal
        con.close()
        code, lines = verify_cli(copy, "--expect-head", head)
        assert code == 1, lines
        if not with_entry:
            assert any(f"run {RID} is in the ledger 2 times" in x for x in lines), lines
        else:
            assert any(f"expected head {head[:16]}" in x for x in lines), lines
        outcomes.append(findings(lines)[0][:100])
    note(f"run {RID} deleted and run again (id {RID} reused): {outcomes[0]} / {outcomes[1]}")


def test_deleting_a_middle_run_and_renumbering_is_detected(db: Path, tmp_path: Path) -> None:
    """Of three runs, run 2 deleted and run 3 renumbered 2 (its rows and seals recomputed for id 2, its
    ledger entry deleted): verify exits 1 (run 2 is not what the ledger sealed; run 3 is gone)."""
    con = connect(db)
    scenario = con.execute("SELECT text FROM scenario").fetchone()[0]
    con.close()
    sc_file = tmp_path / "sc.yaml"
    sc_file.write_text(scenario)
    assert runner.invoke(app, ["run", str(sc_file), "--db", str(db), "--json"]).exit_code == 0
    con = connect(db)
    drop_triggers(con)
    delete_run(con, RID, ledger=False)
    con.execute("UPDATE run SET id = 2 WHERE id = 3")
    for t in (*store.RECORD_TABLES, "release_signature", "correction"):
        con.execute(f'UPDATE "{t}" SET run_id = 2 WHERE run_id = 3')
    con.execute("DELETE FROM ledger WHERE kind = 'run' AND ref_id = 3")
    reseal_run(con, 2)
    con.close()
    code, lines = verify_cli(db)
    found = findings(lines)
    assert code == 1 and any(x.startswith("run 2 run: seal: run 2 differs") for x in found), lines
    note(f"run 2 deleted, run 3 renumbered 2 and re-sealed; exit {code}: {found[0][:110]}")


def test_delete_from_scenario_does_not_hide_runs(db: Path) -> None:
    """`DELETE FROM scenario` (triggers dropped): verify still sees both runs and reports their scenario
    deleted, instead of "every run verified" over an inner join that no longer finds them."""
    con = connect(db)
    drop_triggers(con)
    con.execute("DELETE FROM scenario")
    con.close()
    code, lines = verify_cli(db)
    found = findings(lines)
    assert code == 1
    for rid in (1, 2):
        assert f"run {rid} scenario: removed: scenario 1 of this run is missing (deleted)" in found, lines
    assert any("scenario 1 is in the ledger" in x for x in found), lines
    note(f"exit {code}: {'; '.join(found)[:200]}")


def test_removing_the_last_corrections_is_detected(db: Path) -> None:
    """Two corrections recorded on run 2, then the last one removed, then both: verify exits 1 each time,
    naming the correction removed (the correction chain alone cannot tell a removed last link)."""
    engine = store.open_store(str(db))
    try:
        ids = [store.record_correction(engine, RID, "qc_test", 0, f"reason {i}", {"sampled": 1.0 + i}, "qa:MK")
               for i in (1, 2)]
    finally:
        engine.dispose()
    assert verify_cli(db)[0] == 0
    con = connect(db)
    drop_triggers(con)
    con.execute("DELETE FROM correction WHERE id = ?", (ids[1],))
    con.close()
    code, lines = verify_cli(db)
    assert code == 1 and findings(lines) == [f"store correction: removed: correction {ids[1]} is in the ledger "
                                             f"(entry {_entry(db, 'correction', ids[1])}) but not in the store: "
                                             "deleted"], lines
    con = connect(db)
    con.execute("DELETE FROM correction")
    con.close()
    code2, lines2 = verify_cli(db)
    assert code2 == 1 and len(findings(lines2)) == 2, lines2
    note(f"last correction removed: exit {code}: {findings(lines)[0][:100]}; both removed: 2 findings")


def _entry(db: Path, kind: str, ref: int) -> int:
    con = connect(db)
    try:
        return con.execute("SELECT seq FROM ledger WHERE kind = ? AND ref_id = ?", (kind, ref)).fetchone()[0]
    finally:
        con.close()


def test_scenario_name_and_created_are_sealed(db: Path) -> None:
    """Renaming the stored scenario, or moving the time it was first stored: verify exits 1."""
    con = connect(db)
    drop_triggers(con)
    con.execute("UPDATE scenario SET name = 'renamed'")
    con.close()
    code, lines = verify_cli(db)
    assert code == 1 and any("scenario 1 ('renamed') differs from what ledger entry" in x for x in lines), lines
    con = connect(db)
    con.execute("UPDATE scenario SET name = 'integrity', created = '2020-01-01T00:00:00.000000+00:00'")
    con.close()
    code2, lines2 = verify_cli(db)
    assert code2 == 1 and any("scenario 1 ('integrity') differs" in x for x in lines2), lines2
    note(f"name changed: exit {code}; created changed: exit {code2}: {findings(lines2)[0][:100]}")


def test_dropped_triggers_are_reported_and_recreated(db: Path, tmp_path: Path) -> None:
    """All triggers dropped: verify exits 1 naming each missing append-only trigger; the next writable
    open (`celltx run`) re-creates them, after which UPDATE is refused again and verify is clean."""
    con = connect(db)
    n = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
    drop_triggers(con)
    con.close()
    code, lines = verify_cli(db)
    missing = [x for x in lines if ": guard: append-only trigger" in x and "is missing (dropped)" in x]
    assert code == 1 and len(missing) == n == len(store._append_only_ddl()), lines
    _run_again(db, tmp_path)
    con = connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("UPDATE qc_test SET result = 'pass'")
    con.close()
    assert verify_cli(db)[0] == 0
    note(f"{n} triggers dropped: {len(missing)} guard findings, exit {code}; re-created by the next run")


def _run_again(db: Path, tmp_path: Path) -> None:
    con = connect(db)
    scenario = con.execute("SELECT text FROM scenario").fetchone()[0]
    con.close()
    sc_file = tmp_path / "again.yaml"
    sc_file.write_text(scenario)
    r = runner.invoke(app, ["run", str(sc_file), "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output


def test_no_op_triggers_of_the_same_names_are_detected_and_replaced(db: Path, tmp_path: Path) -> None:
    """Every trigger replaced by a no-op of the same name (so an edit goes through): verify exits 1,
    naming each trigger as differing from its definition and the edit; the next writable open replaces
    them with the real ones (IF NOT EXISTS would have kept the no-ops)."""
    con = connect(db)
    names = [r[0] for r in con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")]
    tables = dict(con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'").fetchall())
    drop_triggers(con)
    for name in names:
        op = "UPDATE" if name.endswith("_no_update") else "DELETE"
        con.execute(f'CREATE TRIGGER "{name}" BEFORE {op} ON "{tables[name]}" BEGIN SELECT 1; END')
    con.execute("UPDATE qc_test SET result = 'pass' WHERE run_id = ? AND result = 'fail'", (RID,))
    con.close()
    code, lines = verify_cli(db)
    replaced = [x for x in lines if "differs from its definition (replaced)" in x]
    assert code == 1 and len(replaced) == len(names), lines
    assert any(x.startswith(f"run {RID} qc_test row") and ": changed:" in x for x in lines)
    _run_again(db, tmp_path)
    code2, lines2 = verify_cli(db)
    assert code2 == 1 and not any(": guard: " in x for x in lines2), lines2  # the edit stays found
    con = connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        con.execute("DELETE FROM release")
    con.close()
    note(f"{len(names)} no-op triggers: {len(replaced)} guard findings, exit {code}; replaced by the next run")


@pytest.mark.parametrize("forged_id", [10**9, 9 * 10**18])
def test_forged_run_with_a_huge_id_is_one_finding_not_a_memory_error(forged_id: int, db: Path) -> None:
    """A forged run row with id 1e9 or 9e18 (no triggers needed: a run row may be inserted): verify
    iterates the stored rows, so it finishes quickly, exits 1 and names the forged run (no MemoryError)."""
    import time
    import tracemalloc

    con = connect(db)
    cols = [r[1] for r in con.execute('PRAGMA table_info("run")') if r[1] != "id"]
    con.execute(f'INSERT INTO run (id, {", ".join(cols)}) SELECT ?, {", ".join(cols)} FROM run WHERE id = 1',
                (forged_id,))
    con.close()
    tracemalloc.start()
    t = time.perf_counter()
    code, lines = verify_cli(db)
    took, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 1 and any(x.startswith(f"run {forged_id} run: seal: run {forged_id} has no ledger entry")
                             for x in lines), lines
    assert took < 60 and peak < 500e6
    note(f"id {forged_id}: exit {code} in {took:.1f} s, peak {peak / 1e6:.0f} MB traced: {lines[0][:100]}")


def test_store_sealed_by_another_key_is_reported_as_such(db: Path, tmp_path: Path, monkeypatch) -> None:
    """The same store checked with another installation's key file (or with none): verify exits 1 and
    reports every run, the scenario and the releases as sealed (signed) by an unknown key, naming the
    key id stored, never the key."""
    import json

    ours = json.loads(Path(store.key_file()).read_text())
    monkeypatch.setenv("CELLTX_KEY_FILE", str(tmp_path / "elsewhere" / "keys.json"))
    code, lines = verify_cli(db)
    assert code == 1 and "no key file at" in "".join(lines)
    store.load_keys(create=True)
    code, lines = verify_cli(db)
    unknown = [x for x in lines if "sealed by an unknown key (key id " in x]
    assert code == 1 and {x.split(":")[0] for x in unknown} >= {"run 1 run", "run 2 run", "store scenario"}
    assert any("signed by an unknown qualified_person key" in x for x in lines)
    con = connect(db)
    stored = " ".join(map(str, con.execute("SELECT key_id FROM ledger UNION SELECT key_id FROM release_signature")))
    con.close()
    assert ours["seal"] not in stored and all(k not in stored for k in ours["roles"].values())
    note(f"exit {code}: {unknown[0][:100]}")


def test_head_file_is_kept_up_to_date_and_bad_heads_are_refused(db: Path, tmp_path: Path) -> None:
    """`verify --head-file F` creates F with the store's head, leaves it alone while the store is
    unchanged, moves it forward after a new run (the old head is still in the ledger), and is not
    updated by a failed verify; a malformed head (option or file) is exit 2 with one line."""
    f = tmp_path / "ci" / "head"
    f.parent.mkdir()
    assert verify_cli(db, "--head-file", str(f))[0] == 0 and f.read_text().strip() == head_of(db)
    first = f.read_text()
    code, lines = verify_cli(db, "--head-file", str(f))
    assert code == 0 and not lines[-1].startswith("head file") and f.read_text() == first
    _run_again(db, tmp_path)
    code, lines = verify_cli(db, "--head-file", str(f))
    assert code == 0 and lines[-1] == f"head file {f} updated" and f.read_text().strip() == head_of(db) != first.strip()
    assert verify_cli(db, "--expect-head", first.strip())[0] == 0  # an older head stays in the ledger
    con = connect(db)
    drop_triggers(con)
    delete_run(con, 3)
    restore_triggers(con)
    con.close()
    kept = f.read_text()
    assert verify_cli(db, "--head-file", str(f))[0] == 1 and f.read_text() == kept
    bad_file = tmp_path / "bad"
    bad_file.write_text("not a head\n")
    for extra in (["--expect-head", "xyz"], ["--expect-head", "0" * 63], ["--head-file", str(bad_file)],
                  ["--head-file", str(f), "--run", "1"]):
        code, lines = verify_cli(db, *extra)
        assert code == 2 and len(lines) == 1, (extra, lines)
    note(f"head file created, kept, updated after a run, not updated by a failed verify; bad heads exit 2: {lines[0]}")


def _corrupt(db: Path, how: str) -> str:
    """Damage the file as a bad disk or a careless copy would: bytes flipped inside a stored record, in
    the middle of the file, or the file cut in half."""
    data = bytearray(db.read_bytes())
    if how == "half":
        db.write_bytes(bytes(data[: len(data) // 2]))
        return f"cut from {len(data):,} to {len(data) // 2:,} bytes"
    at = data.find(b"COI-000043-A1", len(data) // 3) if how == "record" else len(data) // 2
    assert at > 0
    data[at:at + 64] = bytes(b ^ 0xA5 for b in data[at:at + 64])
    db.write_bytes(bytes(data))
    return f"64 bytes flipped at offset {at:,}"


@pytest.mark.parametrize("how", ["record", "middle", "half"])
def test_corrupted_store_is_never_reported_verified(how: str, db: Path) -> None:
    """A store damaged on disk (bytes flipped in a record, in the middle of the file, or the file cut in
    half): `celltx verify` never says "verified": it names the changed rows (exit 1) or says in one line
    that the store cannot be read (exit 2), without a traceback."""
    what = _corrupt(db, how)
    code, lines = verify_cli(db)
    assert code in (1, 2) and not any("verified" in x for x in lines), lines
    if code == 2:
        assert len(lines) == 1 and str(db) in lines[0], lines
    note(f"{what}: exit {code}: {lines[0][:140] if lines else ''}")
