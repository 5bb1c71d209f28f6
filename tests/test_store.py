"""The GMP batch log: whole-run writes, append-only tables, hash chain, signatures, readers, exports."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import celltx_mfg
from celltx_mfg import store
from celltx_mfg.records import (
    BatchRecord,
    Deviation,
    PatientRecord,
    QCResult,
    ReleaseRecord,
    ResourceSummary,
    ResourceUse,
    RunRecords,
    Shipment,
    StepEvent,
)
from celltx_mfg.store import Problem, ProblemKind, StoreError, open_store, write_run

SCENARIO_YAML = textwrap.dedent("""\
    name: two-suite plant
    horizon_days: 120
    warmup_days: 20
    # hand-built records below stand in for what simulate() returns
""")

STEPS = [  # (step, open, duration days, resources)
    ("thaw_and_wash", True, 0.1, "suite:{s}"),
    ("selection", False, 0.2, "closed_device:C1"),
    ("activation", True, 0.15, "suite:{s}"),
    ("transduction", True, 0.2, "suite:{s}"),
    ("expansion", False, 8.0, "incubator:I{i}"),
    ("harvest_formulation", True, 0.3, "suite:{s}"),
    ("cryopreservation", False, 0.5, "freezer:F1"),
]


def make_records(n_patients: int = 4, seed: int = 11, replication: int = 0) -> RunRecords:
    """A small, realistic run: two infused patients, one lost after a failed expansion (re-collected
    once), one still in manufacturing at the horizon. Times in days; one int time on purpose (slot days
    are whole days) and one numpy scalar, as the model may emit them."""
    rec = RunRecords(scenario_name="two-suite plant", seed=seed, replication=replication, horizon=120.0,
                     warmup=20.0, costs={"materials": 125000.0, "labour": 38250.5, "qc": 9800.0}, events=5123)
    for k in range(n_patients):
        coi = f"COI-{k + 1:05d}"
        referred = 3.25 + 9.5 * k
        fate = ("infused", "infused", "lost", "in_progress")[k % 4]
        attempts = 2 if fate == "lost" else 1
        for a in range(1, attempts + 1):
            bno = f"{coi}-A{a}"
            slot = int(referred) + 5 + 14 * (a - 1)  # whole days
            aph0 = slot - 1.0
            received = aph0 + 1.6
            t = slot + 0.3
            failed_here = fate == "lost"
            in_progress = fate == "in_progress"
            suite = f"S{1 + k % 2}"
            for i, (step, is_open, dur, res) in enumerate(STEPS):
                if in_progress and i > 4:
                    break
                outcome = "failed" if failed_here and step == "expansion" else "ok"
                rec.steps.append(StepEvent(coi, bno, step, i, t, t + 0.05 * (i % 2), t + 0.05 * (i % 2) + dur,
                                           res.format(s=suite, i=1 + k % 3), 2 if is_open else 1, is_open, outcome))
                rec.resource_uses.append(ResourceUse(res.split(":")[0], res.split(":")[1].format(s=suite, i=1 + k % 3),
                                                     coi, bno, step, t, t + 0.05 * (i % 2),
                                                     t + 0.05 * (i % 2) + dur))
                t += 0.05 * (i % 2) + dur
                if outcome == "failed":
                    rec.deviations.append(Deviation(coi, bno, t, "process_failure", "major", "manufacturing",
                                                    "expansion failed (recollect)", t + 4.0))
                    break
            if not in_progress:
                rec.resource_uses.append(ResourceUse("suite", suite, coi, bno, "line_clearance", t, t, t + 0.08))
            mfg_end = None if in_progress or failed_here else t
            released = None
            if mfg_end is not None:
                for test, dt in (("sterility", 7.0), ("mycoplasma", 1.0), ("endotoxin", 0.5), ("potency", 3.0)):
                    rec.qc_results.append(QCResult(coi, bno, test, mfg_end - 0.1, mfg_end, mfg_end + dt, "pass", True))
                released = mfg_end + 7.4
                rec.releases.append(ReleaseRecord(coi, bno, released, "full", "qualified_person", "released", ""))
                rec.shipments.append(Shipment(coi, bno, "outbound", "plant", "Site-B", released + 0.5,
                                              released + 1.5, "<=-150C", 10, False))
            rec.shipments.append(Shipment(coi, bno, "inbound", "Site-B", "plant", aph0 + 0.6, received, "2-8C",
                                          2.0, False))
            status = ("in_progress" if in_progress else "failed" if failed_here
                      else "infused")
            rec.batches.append(BatchRecord(
                coi, bno, a, "axi-cel", status, "process_failure" if failed_here else None, slot, aph0, aph0 + 0.25,
                received, float(slot), slot + 0.3, mfg_end, None if released is None else released - 0.4, released,
                None if released is None else "full", None if released is None else released + 0.5,
                None if released is None else released + 1.5, None if released is None else released + 3.0,
                None if mfg_end is None else mfg_end + 365.0, suite, False, False))
        infused = rec.batches[-1].infused
        rec.patients.append(PatientRecord(
            coi, k + 1, "Site-B", "axi-cel", "urgent" if k == 0 else "standard", k == 1, referred, referred + 0.5,
            referred + 4.0, infused, fate, referred + 40.0 if fate == "lost" else None,
            "manufacturing" if fate == "lost" else None, "max_attempts" if fate == "lost" else None,
            "manufacturing" if fate == "in_progress" else None, np.int64(attempts)))
    rec.deviations.append(Deviation(None, None, 30.0, "environmental_excursion", "minor", "facility",
                                    "grade B particle count alert, suite S2", None))
    rec.resources.extend([ResourceSummary("suite", 2, 200.0), ResourceSummary("incubator", 3, 300.0),
                          ResourceSummary("operators", 6, 420.5)])
    return rec


@pytest.fixture
def engine(tmp_path: Path):
    eng = open_store(str(tmp_path / "log" / "celltx.db"))
    yield eng
    eng.dispose()


def raw(engine) -> sqlite3.Connection:
    return sqlite3.connect(engine.url.database)


def count(engine, table: str) -> int:
    with raw(engine) as c:
        return c.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]


def write(engine, rec: RunRecords | None = None, label: str | None = None, text: str = SCENARIO_YAML) -> int:
    return write_run(engine, "two-suite plant", text, rec if rec is not None else make_records(), label=label)


def verify(engine, run_id: int | None = None) -> list[Problem]:
    """store.verify without its findings about the append-only triggers, which these tests drop on
    purpose to tamper (the guards' own tests are in tests/test_integrity.py)."""
    return [p for p in store.verify(engine, run_id) if p.kind != ProblemKind.GUARD]


def drop_triggers(engine) -> None:
    with raw(engine) as c:
        for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            c.execute(f'DROP TRIGGER "{name}"')


def as_declared(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Record frames with float-declared fields as float: the model may put a whole day (int) in a float
    field, and SQLite's REAL column hands it back as a float of the same value."""
    out = {}
    for name, cls in RunRecords.TABLES:
        df = frames[name].copy()
        for f, tp in cls.__annotations__.items():
            if "float" in str(tp) and df[f].dtype.kind in "iu":
                df[f] = df[f].astype(float)
        out[name] = df
    return out


# ------------------------------------------------------------------------------------- write and read


def test_records_read_back_equal(engine) -> None:
    rec = make_records()
    rid = write(engine, rec)
    loaded = store.load_frames(engine, [rid])
    assert list(loaded) == [name for name, _ in RunRecords.TABLES]
    expected = as_declared(rec.frames())
    for name, cls in RunRecords.TABLES:
        df = loaded[name]
        assert list(df.columns) == ["run_id", *cls._fields]
        assert (df["run_id"] == rid).all() and len(df) == len(getattr(rec, name))
        pd.testing.assert_frame_equal(df.drop(columns="run_id"), expected[name], check_exact=True)
    assert loaded["steps"]["open"].dtype == bool and loaded["batches"]["oos"].dtype == bool


def test_table_columns_are_the_record_fields_in_order(engine) -> None:
    insp = sa.inspect(engine)
    for name, cls in RunRecords.TABLES:
        table = store._SPECS[[a for a, _ in RunRecords.TABLES].index(name)].name
        cols = [c["name"] for c in insp.get_columns(table)]
        extra = ["record_digest"] if table == "release" else []
        assert cols == ["run_id", "row_seq", *cls._fields, *extra, "digest"], table


def test_runs_listed_with_meta_and_scenario_stored_once(engine) -> None:
    a = write(engine, make_records(seed=11, replication=0), label="suites=2")
    b = write(engine, make_records(n_patients=3, seed=12, replication=1), label="suites=2")
    c = write(engine, make_records(seed=13), text=SCENARIO_YAML + "# suites: 3\n")
    runs = store.list_runs(engine)
    assert list(runs["id"]) == [a, b, c]
    assert list(runs["patients"]) == [4, 3, 4]
    assert list(runs["seed"]) == [11, 12, 13] and list(runs["replication"]) == [0, 1, 0]
    assert runs.loc[0, "label"] == "suites=2" and pd.isna(runs.loc[2, "label"])
    assert runs.loc[0, "scenario_hash"] == runs.loc[1, "scenario_hash"] != runs.loc[2, "scenario_hash"]
    scen = store.list_scenarios(engine)
    assert list(scen["runs"]) == [2, 1]
    meta = store.load_run_meta(engine, b)
    assert (meta["horizon"], meta["warmup"], meta["seed"], meta["replication"]) == (120.0, 20.0, 12, 1)
    assert meta["costs"] == {"materials": 125000.0, "labour": 38250.5, "qc": 9800.0}
    assert meta["scenario_text"] == SCENARIO_YAML and meta["package_version"] == celltx_mfg.__version__
    assert store.scenario_text(engine, int(scen.loc[1, "id"])).endswith("# suites: 3\n")
    assert store.scenario_text(engine, "two-suite plant").endswith("# suites: 3\n")  # newest under the name
    with pytest.raises(StoreError):
        store.load_run_meta(engine, 99)


def test_unique_batch_number_and_coi_per_run(engine) -> None:
    rec = make_records()
    rec.batches.append(rec.batches[0])
    with pytest.raises(StoreError, match="batch row 5.*UNIQUE"):
        write(engine, rec)
    rec = make_records()
    rec.patients.append(rec.patients[1])
    with pytest.raises(StoreError, match="patient row 4.*UNIQUE"):
        write(engine, rec)
    assert count(engine, "run") == 0


# -------------------------------------------------------------------------------- one transaction


def test_write_refused_late_leaves_nothing(engine) -> None:
    write(engine)
    before = {t: count(engine, t) for t in ("scenario", "run", *store.RECORD_TABLES)}
    rec = make_records(seed=99)
    rec.releases[1] = rec.releases[1]._replace(meaning="rubber-stamped")  # release comes after the steps
    with pytest.raises(StoreError, match="release row 1.*CHECK constraint failed"):
        write(engine, rec, text=SCENARIO_YAML + "# new scenario text, rolled back too\n")
    assert {t: count(engine, t) for t in before} == before
    assert verify(engine) == []


def test_wrong_type_midway_names_the_field_and_leaves_nothing(engine) -> None:
    rec = make_records()
    rec.steps[17] = rec.steps[17]._replace(end="tomorrow")
    with pytest.raises(StoreError, match=r"step_event row 17 \(field end='tomorrow' is not a float"):
        write(engine, rec)
    assert count(engine, "run") == 0 and count(engine, "patient") == 0 and count(engine, "step_event") == 0


def test_killed_write_leaves_nothing(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, signal
        from celltx_mfg.records import RunRecords, StepEvent, PatientRecord
        from celltx_mfg.store import open_store, write_run

        class DiesMidway(list):
            def __iter__(self):
                for i, r in enumerate(list.__iter__(self)):
                    if i == 30000:
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield r

        rec = RunRecords("x", 1, 0, 100.0, 10.0)
        rec.patients.append(PatientRecord("COI-00001", 1, "Site-A", "axi-cel", "standard", False, 1.0, 2.0, 3.0,
                                          None, "in_progress", None, None, None, "manufacturing", 1))
        rec.steps = DiesMidway(StepEvent("COI-00001", "COI-00001-A1", "expansion", 4, i * 0.01, i * 0.01,
                                         i * 0.01 + 8.0, "incubator:I1", 1, False, "ok") for i in range(50000))
        write_run(open_store({str(db)!r}), "x", "name: x\\n", rec)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(store.__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    eng = open_store(str(db))
    assert count(eng, "run") == 0 and count(eng, "step_event") == 0 and count(eng, "scenario") == 0
    assert verify(eng) == []
    rid = write(eng)  # the store is fine afterwards
    assert verify(eng, rid) == []


# ------------------------------------------------------------------------------------- append-only


@pytest.mark.parametrize("table", [*store.RECORD_TABLES, "correction", "scenario"])
def test_gmp_tables_refuse_update_and_delete(engine, table: str) -> None:
    rid = write(engine)
    store.record_correction(engine, rid, "qc_test", 0, "transcription error in sample time", {"sampled": 20.1},
                            "qa_reviewer:JL")
    with raw(engine) as c:
        col = c.execute(f'SELECT * FROM "{table}"').description[2][0]
        with pytest.raises(sqlite3.IntegrityError, match="append-only GMP record"):
            c.execute(f'UPDATE "{table}" SET "{col}" = "{col}"')
        with pytest.raises(sqlite3.IntegrityError, match="append-only GMP record"):
            c.execute(f'DELETE FROM "{table}"')


def test_complete_run_row_cannot_change_or_go(engine) -> None:
    rid = write(engine)
    with raw(engine) as c:
        with pytest.raises(sqlite3.IntegrityError, match="append-only GMP record"):
            c.execute("UPDATE run SET seed = 1 WHERE id = ?", (rid,))
        with pytest.raises(sqlite3.IntegrityError, match="append-only GMP record"):
            c.execute("DELETE FROM run")


# ------------------------------------------------------------------------------------------ verify


def test_verify_detects_change_removal_insertion_with_triggers_dropped(engine) -> None:
    other = write(engine, make_records(seed=1))
    rid = write(engine, make_records(seed=2))
    assert verify(engine) == []
    drop_triggers(engine)
    with raw(engine) as c:
        c.execute("UPDATE step_event SET \"end\" = \"end\" + 0.5 WHERE run_id = ? AND row_seq = 9", (rid,))
    assert verify(engine) == [  # step 9 is in COI-00002's record, which its release (row 1) signed
        Problem(rid, "step_event", 9, "changed", "digest mismatch: this row (or the one before it) was altered"),
        Problem(rid, "release", 1, "signature", "release of COI-00002-A1 invalid: its batch record changed "
                                                "after signing")]
    assert verify(engine, other) == []
    with raw(engine) as c:
        c.execute("DELETE FROM resource_use WHERE run_id = ? AND row_seq IN (3, 4)", (rid,))
        c.execute("DELETE FROM resource WHERE run_id = ? AND row_seq = 2", (rid,))  # the last row of the run
    found = {(p.table, p.row_seq, p.kind) for p in verify(engine)}
    assert found == {("step_event", 9, "changed"), ("release", 1, "signature"), ("resource_use", 3, "removed"),
                     ("resource", 2, "removed")}
    with raw(engine) as c:  # a forged QC pass, with a digest computed the way the store does it
        last = c.execute("SELECT coi, batch_no, digest, row_seq FROM qc_test WHERE run_id = ? "
                         "ORDER BY row_seq DESC LIMIT 1", (rid,)).fetchone()
        row = (last[0], last[1], "sterility", 50.0, 50.1, 57.1, "pass", 1)
        seq = last[3] + 1
        forged = store._BY_NAME["qc_test"].body(row, rid, seq)
        c.execute("INSERT INTO qc_test VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                  (rid, seq, *row, hashlib.sha256(last[2] + forged).digest()))
        c.execute("PRAGMA foreign_keys = OFF")
        c.execute("INSERT INTO deviation VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                  (777, 0, None, None, 1.0, "x", "minor", "s", "d", None, b"\0" * 32))
    found = {(p.run_id, p.table, p.row_seq, p.kind) for p in verify(engine)}
    assert (rid, "qc_test", seq, "inserted") in found
    assert (777, "deviation", None, "inserted") in found
    assert len(found) == 6
    assert str(Problem(rid, "qc_test", seq, "inserted", "x")) == f"run {rid} qc_test row {seq}: inserted: x"


def test_verify_follows_a_recomputed_digest_to_the_next_row(engine) -> None:
    rid = write(engine)
    drop_triggers(engine)
    spec = store._BY_NAME["patient"]
    with raw(engine) as c:
        rows = c.execute("SELECT * FROM patient WHERE run_id = ? ORDER BY row_seq", (rid,)).fetchall()
        vals = list(rows[2][2:-1])
        assert vals[spec.fields.index("status")] == "lost"
        vals[spec.fields.index("status")] = "infused"  # rewrite a loss as an infusion, and its digest
        new = hashlib.sha256(rows[1][-1] + spec.body(vals, rid, 2)).digest()
        c.execute("UPDATE patient SET status = 'infused', digest = ? WHERE run_id = ? AND row_seq = 2", (new, rid))
    assert [(p.table, p.row_seq, p.kind) for p in verify(engine)] == [("patient", 3, "changed")]


def test_release_signature_invalid_when_batch_record_changes(engine) -> None:
    rid = write(engine)
    drop_triggers(engine)
    releases = store.load_frames(engine, [rid])["releases"]
    signed_batch = releases.loc[1, "batch_no"]
    with raw(engine) as c:  # a failed sterility result turned into a pass after release
        c.execute("UPDATE qc_test SET result = 'fail' WHERE run_id = ? AND batch_no = ? AND test = 'sterility'",
                  (rid, signed_batch))
    problems = verify(engine)
    assert [(p.table, p.kind) for p in problems] == [("qc_test", "changed"), ("release", "signature")]
    assert problems[1].row_seq == 1 and signed_batch in problems[1].detail


def test_verify_detects_run_row_and_scenario_edits(engine) -> None:
    rid = write(engine)
    drop_triggers(engine)
    with raw(engine) as c:
        c.execute("UPDATE run SET warmup = 0 WHERE id = ?", (rid,))
        c.execute("UPDATE scenario SET text = text || '# suites: 9'")
    assert {(p.table, p.kind) for p in verify(engine, rid)} == {("run", "changed"), ("scenario", "changed")}
    assert verify(engine, 42) == [Problem(42, "run", None, "missing", "no run with this id in the store")]


# ------------------------------------------------------------------------------------- corrections


def test_correction_is_a_new_row_chained_and_marked_in_batch_export(engine, tmp_path: Path) -> None:
    rid = write(engine)
    with pytest.raises(StoreError, match="not fields of qc_test"):
        store.record_correction(engine, rid, "qc_test", 0, "typo", {"colour": "red"}, "qa:JL")
    with pytest.raises(StoreError, match="reason and an actor"):
        store.record_correction(engine, rid, "qc_test", 0, " ", {"sampled": 1.0}, "qa:JL")
    with pytest.raises(StoreError, match="has no qc_test row 99"):
        store.record_correction(engine, rid, "qc_test", 99, "typo", {"sampled": 1.0}, "qa:JL")
    coi = "COI-00001"
    qc = store.load_frames(engine, [rid])["qc_results"]
    row = int(qc.index[qc["coi"] == coi][0])
    store.record_correction(engine, rid, "qc_test", row, "sample time misread from the label",
                            {"sampled": np.float64(19.75)}, "qa_reviewer:JL")
    store.record_correction(engine, rid, "batch", 0, "suite recorded wrongly", {"suite": "S2"}, "qa_reviewer:JL")
    assert count(engine, "correction") == 2 and verify(engine) == []
    out = tmp_path / "exp" / f"{coi}.csv"
    n = store.export_batch_csv(engine, coi, out)
    df = pd.read_csv(out)
    assert n == len(df) > 20
    assert set(df["table"]) == {"patient", "batch", "step_event", "resource_use", "qc_test", "shipment", "release"}
    assert (df["coi"] == coi).all() and df["sim_time"].is_monotonic_increasing
    marked = df[df["corrected"]]
    assert sorted(zip(marked["table"], marked["row_seq"], strict=True)) == [("batch", 0), ("qc_test", row)]
    assert "sample time misread" in marked[marked["table"] == "qc_test"]["corrections"].iloc[0]
    drop_triggers(engine)
    with raw(engine) as c:
        c.execute("UPDATE correction SET reason = 'nothing to see' WHERE id = 1")
    assert [(p.table, p.row_seq) for p in verify(engine)] == [("correction", 1)]
    with pytest.raises(StoreError, match="no record of COI-99999"):
        store.export_batch_csv(engine, "COI-99999", out)


# ------------------------------------------------------------------------------- values and paths


def test_numpy_values_and_nan_times_hash_as_read_back(engine) -> None:
    rec = make_records()
    p = rec.patients[0]
    rec.patients[0] = p._replace(site=np.str_("Site-B"), referred=np.float64(p.referred), infused=float("nan"))
    rec.steps[0] = rec.steps[0]._replace(operators=np.int64(2), open=np.bool_(True), ready=np.float32(5.5))
    rid = write(engine, rec)
    assert verify(engine, rid) == []
    got = store.load_frames(engine, [rid])["patients"]
    assert got.loc[0, "site"] == "Site-B" and np.isnan(got.loc[0, "infused"])


def test_core_insert_path_writes_the_same_rows(tmp_path: Path) -> None:
    """Other databases get SQLAlchemy Core executemany instead of the raw SQLite cursor: same rows,
    same digests (run ids are equal in both fresh stores)."""
    a, b = open_store(str(tmp_path / "raw.db")), open_store(f"sqlite:///{tmp_path / 'core.db'}")
    rec = make_records()
    ra = write_run(a, "two-suite plant", SCENARIO_YAML, rec)
    rb = store._write_run(b, "two-suite plant", SCENARIO_YAML, rec, None, None, None, bulk_raw=False)
    assert ra == rb and verify(b) == []
    for t in store.RECORD_TABLES:
        with raw(a) as ca, raw(b) as cb:
            q = f'SELECT * FROM "{t}" ORDER BY run_id, row_seq'
            assert ca.execute(q).fetchall() == cb.execute(q).fetchall(), t


def test_sqlite_settings_on_every_connection(engine) -> None:
    with engine.connect() as conn:
        get = lambda p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()  # noqa: E731
        assert get("journal_mode") == "wal"
        assert get("foreign_keys") == 1
        assert get("busy_timeout") == 30000
        assert get("synchronous") == 1  # NORMAL
        assert get("user_version") == store.SCHEMA_VERSION


def test_path_and_url_accepted_and_readonly_reader(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'by_url.db'}"
    e1 = open_store(url)
    rid = write(e1)
    e2 = open_store(str(tmp_path / "nested" / "by_url.db"))
    assert list(store.list_runs(e2)["id"]) == [rid]
    ro = open_store(str(tmp_path / "nested" / "by_url.db"), readonly=True)
    assert len(store.load_frames(ro, [rid])["steps"]) == 29 and verify(ro) == []
    with pytest.raises(StoreError):
        write(ro)
    assert store.DEFAULT_DB == "celltx.db"


def test_store_error_on_directory_and_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    with pytest.raises(StoreError, match=f"cannot open store {tmp_path / 'adir'}: it is a directory"):
        open_store(str(tmp_path / "adir"))
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"batch record, handwritten\n" * 200)
    with pytest.raises(StoreError, match="file is not a database"):
        open_store(str(junk))
    with pytest.raises(StoreError, match="not a celltx store"):
        sqlite3.connect(tmp_path / "empty.db").execute("CREATE TABLE t (a)").connection.commit()
        open_store(str(tmp_path / "empty.db"), readonly=True)


def test_store_error_on_read_only_file(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    open_store(str(db)).dispose()
    immutable = False
    if os.geteuid() == 0:  # root ignores file modes; an immutable file is read-only even for root
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)]).returncode != 0:
            pytest.skip("running as root without chattr: no way to make a read-only file here")
        immutable = True
    else:
        db.chmod(0o444)
    try:
        with pytest.raises(StoreError, match=f"cannot open store {db}: attempt to write a readonly database"):
            open_store(str(db))
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db)], check=True)


def test_store_error_when_disk_full(engine) -> None:
    sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA max_page_count = 40"))
    engine.dispose()  # new connections get the cap: the database "disk" holds 40 pages
    rec = make_records(n_patients=40)
    with pytest.raises(StoreError, match="run not written to .*database or disk is full"):
        write(engine, rec)
    assert count(engine, "run") == 0


def test_exports_one_file_per_table(engine, tmp_path: Path) -> None:
    a = write(engine)
    write(engine, make_records(n_patients=2, seed=5))
    paths = store.export_csv(engine, tmp_path / "csv", run_ids=[a])
    names = {p.stem for p in paths}
    assert names == {"scenario", "run", "correction", *store.RECORD_TABLES}
    steps = pd.read_csv(tmp_path / "csv" / "step_event.csv")
    assert len(steps) == 29 and set(steps["run_id"]) == {a} and steps["digest"].str.len().eq(64).all()
    pq = store.export_parquet(engine, tmp_path / "pq")
    assert len(pd.read_parquet(tmp_path / "pq" / "patient.parquet")) == 6
    assert len(pq) == len(paths)


def test_core_read_path_gives_the_same_rows(engine) -> None:
    """Other databases read through SQLAlchemy rows instead of the raw SQLite cursor: same values."""
    rid = write(engine)
    with engine.connect() as conn:
        for spec in store._SPECS:
            cols = ["row_seq", *spec.fields, "digest"]
            fast = [tuple(r) for r in store._run_rows(conn, spec, cols, rid, raw=True)]
            core = [tuple(r) for r in store._run_rows(conn, spec, cols, rid, raw=False)]
            assert fast == core and len(fast) == len(getattr(make_records(), spec.attr)), spec.name


def test_simulated_run_stores_verifies_and_gives_the_same_kpis(engine, baseline_small) -> None:
    """The model's own records: every enumeration passes the CHECKs, and KPIs from the store equal
    KPIs from the records, number for number."""
    from celltx_mfg.analysis import kpis
    from celltx_mfg.simulate import simulate

    sc, text = baseline_small
    rec = simulate(sc, seed=3)
    rid = write_run(engine, sc.name, text, rec)
    assert verify(engine) == []
    meta = store.load_run_meta(engine, rid)
    assert meta["scenario_text"] == text and meta["costs"] == pytest.approx(rec.costs)
    stored = kpis(store.load_frames(engine, [rid]), meta["horizon"], meta["warmup"], meta["costs"])
    direct = kpis(rec.frames(), rec.horizon, rec.warmup, rec.costs)
    assert stored == direct


def test_concurrent_writers_queue_instead_of_failing(tmp_path: Path) -> None:
    import threading

    db = str(tmp_path / "shared.db")
    open_store(db).dispose()
    ids: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        eng = open_store(db)  # its own engine and connections, as a separate process would have
        try:
            for rep in range(3):
                ids.append(write_run(eng, "two-suite plant", SCENARIO_YAML, make_records(seed=seed, replication=rep)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(ids) == [1, 2, 3, 4, 5, 6]
    eng = open_store(db)
    assert verify(eng) == [] and count(eng, "scenario") == 1
