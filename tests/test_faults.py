"""Faults around the batch log (GitHub issue 5): a `celltx run` killed mid-way, read-only and full
storage, two writers at once, a dashboard-like reader polling during writes, patients still in progress
at the horizon, and (slow) a ten-year run at ten times the baseline's scale with memory watched.

The CLI runs as a real process (the installed `celltx`), the database is a real SQLite file, and the
faults are real: SIGKILL, an immutable file or directory (chattr +i: we run as root, so file modes do not
bite), a 1 MB tmpfs for a full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg import store
from celltx_mfg.cli import app
from celltx_mfg.store import StoreError, open_store

from .conftest import SCENARIOS, mounted_tmpfs
from .reliability import note, store_problems

pytest_plugins = ["tests.conftest_reliability"]

CELLTX = str(Path(sys.executable).parent / "celltx")
BASE: dict[str, Any] = yaml.safe_load((SCENARIOS / "baseline.yaml").read_text())


def scenario(tmp: Path, name: str, horizon: float, warmup: float = 30.0, **changes: Any) -> Path:
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d.update(name=name, horizon_days=horizon, warmup_days=warmup)
    d.update(changes)
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def celltx(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CELLTX, *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_exit2(p: subprocess.CompletedProcess, *needles: str) -> str:
    text = p.stdout + p.stderr
    assert p.returncode == 2, f"exit {p.returncode}:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert len(text.splitlines()) <= 40, "one screen"
    for n in needles:
        assert n in text, (n, text[-2000:])
    return " ".join(text.split())[:200]


def run_count(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM run").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def whole(db: Path) -> int:
    runs, problems = store_problems(db)
    assert problems == [], problems
    return runs


@pytest.fixture(scope="module")
def two_years(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The baseline over two years: each replication simulates in ~0.3 s and writes ~30,000 rows."""
    return scenario(tmp_path_factory.mktemp("sc"), "two_years", 730.0, 90.0)


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scenario(tmp_path_factory.mktemp("sc"), "short", 120.0)


def stored_run(db: Path, scenario_file: Path) -> int:
    """One run of the scenario written to ``db`` in this process (what `celltx run` does, without the
    start-up cost of a process)."""
    from celltx_mfg.config import load_scenario
    from celltx_mfg.simulate import simulate

    sc, text = load_scenario(scenario_file)
    engine = open_store(str(db))
    try:
        return store.write_run(engine, sc.name, text, simulate(sc))
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------ killed mid-way

def _write_lock_held(db: Path) -> sqlite3.Connection | None:
    """Try to take SQLite's write lock without waiting: the connection holding it, or None when another
    process holds it (a write transaction is open there)."""
    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        return con
    except sqlite3.OperationalError as e:
        con.close()
        if "locked" in str(e) or "busy" in str(e):
            return None
        raise


@pytest.mark.parametrize("moment", ["while-writing", "while-simulating"])
def test_sigkill_mid_run_leaves_only_whole_runs(moment: str, two_years: Path, short: Path, tmp_path: Path) -> None:
    """`celltx run -r 6` killed with SIGKILL after its first run is committed, either while the next run is
    being written (its write transaction open) or while it is simulating: `verify` is clean, every visible
    run is whole, no partial run is visible, and the next `celltx run` on that database works."""
    db = tmp_path / "killed.db"
    proc = subprocess.Popen([CELLTX, "run", str(two_years), "--db", str(db), "-r", "6", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while run_count(db) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no run committed in 120 s"
            time.sleep(0.01)
        while True:
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline
            con = _write_lock_held(db)
            if moment == "while-writing" and con is None:
                proc.send_signal(signal.SIGKILL)  # its write transaction is open right now
                break
            if moment == "while-simulating" and con is not None:
                proc.send_signal(signal.SIGKILL)  # we hold the write lock: it cannot be writing
                proc.wait()
                con.rollback()
                con.close()
                break
            if con is not None:
                con.rollback()
                con.close()
            time.sleep(0.002)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    runs = whole(db)
    assert 1 <= runs < 6
    wal = db.with_name(db.name + "-wal")
    note(f"killed {moment}: {runs} whole run(s) visible, WAL left behind: "
         f"{wal.stat().st_size if wal.exists() else 0} bytes; verify clean")
    nxt = CliRunner().invoke(app, ["run", str(short), "--db", str(db), "-r", "1", "--json"])
    assert nxt.exit_code == 0, nxt.output[-2000:]
    assert json.loads(nxt.stdout)["runs"] == [runs + 1]
    assert whole(db) == runs + 1
    note(f"next `celltx run` stored run {runs + 1}; store whole")


# --------------------------------------------------------------------------------- read-only storage

def _immutable(path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _mutable(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def _make_read_only(path: Path) -> str:
    """Make a file or directory read-only for this (root) process: chattr +i, or chmod when we are not
    root; skip when neither works."""
    if os.geteuid() != 0:
        path.chmod(0o555 if path.is_dir() else 0o444)
        return "chmod"
    if _immutable(path):
        return "chattr +i"
    pytest.skip("running as root without a working chattr: no way to make storage read-only here")


def _undo_read_only(path: Path, how: str) -> None:
    if how == "chattr +i":
        _mutable(path)
    else:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_read_only_database_file(short: Path, tmp_path: Path) -> None:
    """`celltx run` into a database file that cannot be written: exit 2, the database named, refused before
    the simulation, no traceback; the stored runs are untouched."""
    db = tmp_path / "archive.db"
    stored_run(db, short)
    how = _make_read_only(db)
    try:
        t0 = time.monotonic()
        p = celltx("run", str(short), "--db", str(db))
        msg = assert_clean_exit2(p, str(db), "readonly")
        assert "patients_infused" not in p.stdout
    finally:
        _undo_read_only(db, how)
    assert whole(db) == 1
    note(f"{how} on the file: exit 2 in {time.monotonic() - t0:.2f} s: {msg}")


@pytest.mark.parametrize("existing", [False, True], ids=["new-db", "existing-db"])
def test_read_only_directory(existing: bool, short: Path, tmp_path: Path) -> None:
    """`celltx run` with its database in a directory that cannot be written (SQLite needs its -wal and
    -shm files there): exit 2, the database named, no traceback, nothing half-written."""
    d = tmp_path / "ro"
    d.mkdir()
    db = d / "log.db"
    if existing:
        stored_run(db, short)
    how = _make_read_only(d)
    try:
        p = celltx("run", str(short), "--db", str(db))
        msg = assert_clean_exit2(p, str(db))
    finally:
        _undo_read_only(d, how)
    assert whole(db) == (1 if existing else 0)
    note(f"{how} on the directory: exit 2: {msg}")


def test_read_only_directory_message_says_why(short: Path, tmp_path: Path) -> None:
    """The error for a database in a read-only directory says that the directory cannot be written."""
    d = tmp_path / "ro"
    d.mkdir()
    how = _make_read_only(d)
    try:
        p = celltx("run", str(short), "--db", str(d / "log.db"))
    finally:
        _undo_read_only(d, how)
    note(f"today: {' '.join((p.stdout + p.stderr).split())[:160]}")
    assert_clean_exit2(p, str(d), "not writable")


def test_verify_a_read_only_archive(short: Path, tmp_path: Path) -> None:
    """An archived batch log on read-only storage can still be verified, reported and exported."""
    d = tmp_path / "archive"
    d.mkdir()
    db = d / "log.db"
    stored_run(db, short)
    how = _make_read_only(d)
    try:
        results = {cmd: CliRunner().invoke(app, args) for cmd, args in {
            "verify": ["verify", "--db", str(db)],
            "kpis": ["kpis", "--db", str(db), "--json"],
            "export": ["export", "--db", str(db), "--out", str(tmp_path / "exp")],
        }.items()}
    finally:
        _undo_read_only(d, how)
    note("today: " + ", ".join(f"{c} exit {r.exit_code}" for c, r in results.items())
         + f" ({' '.join(results['verify'].output.split())[:100]})")
    assert {c: r.exit_code for c, r in results.items()} == {"verify": 0, "kpis": 0, "export": 0}


# ------------------------------------------------------------------------------------------ full disk

@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs mounted for the test (root only); skipped where mounting is not allowed."""
    with mounted_tmpfs(tmp_path, "1m") as mnt:
        yield mnt


def test_full_disk(short: Path, tiny_disk: Path) -> None:
    """`celltx run -r 3` onto a 1 MB disk: the run that does not fit fails with a clear message and exit 2;
    every stored run is whole; with space freed the next run is stored."""
    db = tiny_disk / "full.db"
    p = celltx("run", str(short), "--db", str(db), "-r", "3")
    msg = assert_clean_exit2(p, str(db), "full")
    runs = whole(db)
    assert runs < 3
    note(f"1 MB tmpfs: {runs} run(s) fitted, then exit 2: {msg}")
    r = subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ok = CliRunner().invoke(app, ["run", str(short), "--db", str(db), "--json"])
    assert ok.exit_code == 0, ok.output[-2000:]
    assert whole(db) == runs + 1
    note(f"after growing the disk to 16 MB the next run was stored as run {runs + 1}; store whole")


# --------------------------------------------------------------------------------------- concurrency

def test_two_processes_write_one_database(short: Path, tmp_path: Path) -> None:
    """Two `celltx run -r 3` processes on one store at the same time: both succeed (the busy timeout
    queues them), six whole runs, distinct ids, the scenario stored once, verify clean."""
    db = tmp_path / "shared.db"
    open_store(str(db)).dispose()  # an existing store: see the next test for a new one
    procs = [subprocess.Popen([CELLTX, "run", str(short), "--db", str(db), "-r", "3", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, e[-2000:]
    ids = [json.loads(o)["runs"] for o, _ in outs]
    assert sorted(ids[0] + ids[1]) == [1, 2, 3, 4, 5, 6]
    assert whole(db) == 6
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM scenario").fetchone()[0] == 1
    con.close()
    note(f"both exit 0; run ids {ids[0]} and {ids[1]}")


def test_two_processes_create_one_new_database(short: Path, tmp_path: Path) -> None:
    """Two `celltx run -r 3` processes started together on a database that does not exist yet: both
    succeed, or one fails clearly (exit 2, the database named, no traceback); every stored run is whole."""
    db = tmp_path / "new.db"
    procs = [subprocess.Popen([CELLTX, "run", str(short), "--db", str(db), "-r", "3", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    ok = [json.loads(o)["runs"] for p, (o, _) in zip(procs, outs, strict=True) if p.returncode == 0]
    failed = [(p, e) for p, (_, e) in zip(procs, outs, strict=True) if p.returncode != 0]
    for p, e in failed:
        assert p.returncode == 2 and "Traceback" not in e and str(db) in e, e[-2000:]
    assert ok, "neither process stored its runs"
    assert whole(db) == 3 * len(ok) and sorted(sum(ok, [])) == list(range(1, 3 * len(ok) + 1))
    note("both exit 0" if not failed else f"one exit 2: {' '.join(failed[0][1].split())[-90:]}")


def test_open_store_waits_for_a_store_being_created(tmp_path: Path) -> None:
    """open_store on a new database that another connection is creating (holds its write lock for one
    second, as open_store does while it creates the tables) waits for it instead of failing."""
    import threading

    db = tmp_path / "new.db"
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")  # a new file, still in rollback-journal mode, write-locked
    release = threading.Timer(1.0, lambda: con.execute("COMMIT"))
    release.start()
    t0 = time.monotonic()
    try:
        open_store(str(db)).dispose()
        note(f"opened after {time.monotonic() - t0:.2f} s")
    except StoreError as e:
        note(f"today: failed after {time.monotonic() - t0:.2f} s: {e}")
        raise
    finally:
        release.join()
        con.close()


def test_reader_polling_during_writes_sees_only_whole_runs(two_years: Path, tmp_path: Path) -> None:
    """A dashboard-like reader (open_store(readonly=True), list_runs, load_frames) polling while another
    process writes four runs sees every run whole from the moment it appears."""
    db = tmp_path / "live.db"
    proc = subprocess.Popen([CELLTX, "run", str(two_years), "--db", str(db), "-r", "4", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = None
    polls, seen_counts, checked = 0, set(), set()
    try:
        deadline = time.monotonic() + 120
        while engine is None:
            assert time.monotonic() < deadline
            try:
                engine = open_store(str(db), readonly=True)
            except StoreError:
                time.sleep(0.02)
        while True:
            running = proc.poll() is None
            runs = store.list_runs(engine)
            with engine.connect() as conn:
                sealed = {int(r[0]): json.loads(r[1]) for r in conn.exec_driver_sql("SELECT id, row_counts FROM run")}
            polls += 1
            seen_counts.add(len(runs))
            for _, r in runs.iterrows():
                rid = int(r["id"])
                assert r["patients"] == sealed[rid]["patient"], f"run {rid} listed with a partial patient table"
                if rid not in checked:
                    frames = store.load_frames(engine, [rid])
                    for spec in store._SPECS:
                        assert len(frames[spec.attr]) == sealed[rid][spec.name], (rid, spec.name)
                    checked.add(rid)
            if not running:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if engine is not None:
            engine.dispose()
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert checked == {1, 2, 3, 4}
    assert seen_counts & {1, 2, 3}, f"the reader never saw the store mid-way: {sorted(seen_counts)}"
    assert whole(db) == 4
    note(f"{polls} polls saw {sorted(seen_counts)} runs; every run whole when first seen")


# ------------------------------------------------------------------------------ in progress at the end

def test_patients_in_progress_at_horizon_are_reported(tmp_path: Path) -> None:
    """Forty referrals (a CSV) in the last two months of a 60-day horizon: every one is in the stored
    records; those unfinished are `in_progress` with `stage_at_horizon`, counted in
    patients_in_progress, not dropped."""
    days = [0.5 + 1.45 * i for i in range(40)]
    (tmp_path / "refs.csv").write_text("day\n" + "\n".join(f"{d:.2f}" for d in days) + "\n")
    sc = scenario(tmp_path, "cut_short", 60.0, 0.0)
    d = yaml.safe_load(sc.read_text())
    d["demand"] = {**d["demand"], "per_year": 0, "referrals_csv": "refs.csv", "dropout_per_day": 0.0}
    sc.write_text(yaml.safe_dump(d, sort_keys=False))
    db = tmp_path / "cut.db"
    p = celltx("run", str(sc), "--db", str(db), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    k = json.loads(p.stdout)["kpis"]
    con = sqlite3.connect(db)
    rows = con.execute("SELECT status, stage_at_horizon FROM patient").fetchall()
    batches = dict(con.execute("SELECT status, COUNT(*) FROM batch GROUP BY status").fetchall())
    horizon_ends = con.execute("SELECT COUNT(*) FROM resource_use WHERE \"end\" = 60.0").fetchone()[0]
    con.close()
    assert len(rows) == 40 == k["patients_referred"]
    in_progress = [s for st_, s in rows if st_ == "in_progress"]
    assert len(in_progress) == k["patients_in_progress"] > 0
    assert all(s for s in in_progress), "an unfinished patient without stage_at_horizon"
    assert all(s is None for st_, s in rows if st_ != "in_progress")
    assert k["patients_infused"] + k["patients_lost"] + k["patients_in_progress"] == 40
    assert batches.get("in_progress", 0) > 0 and horizon_ends > 0
    whole(db)
    stages: dict[str, int] = {}
    for s in in_progress:
        stages[s] = stages.get(s, 0) + 1
    note(f"40 referred: {k['patients_infused']} infused, {k['patients_lost']} lost, {len(in_progress)} in "
         f"progress at day 60 by stage {stages}; {batches.get('in_progress', 0)} batches in progress; "
         f"{horizon_ends} resource holds closed at the horizon")


# --------------------------------------------------------------------------------------- long run

def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_ten_years_at_4000_patients_a_year_memory_flat(tmp_path: Path) -> None:
    """Ten years at 4,000 referrals a year (the baseline plant scaled about x10): the run finishes, the
    model's live state (event queue, open resource holds, slot waitlist, patients in progress) stays
    bounded, and memory grows only with the records, at the same rate per record late as early."""
    from celltx_mfg.config import parse_text
    from celltx_mfg.model.journey import Model

    d = yaml.safe_load(yaml.safe_dump(BASE))
    d.update(name="ten_years_x10", horizon_days=3650, warmup_days=90)
    d["demand"]["per_year"] = 4000
    for s in d["sites"]:
        s["apheresis_per_day"] *= 10
        s["infusion_slots_per_day"] *= 10
    d["booking"]["starts_per_day"] *= 10
    r = d["resources"]
    for k in ("suites", "dedicated_suites", "incubators", "freezers"):
        r[k] *= 10
    for k in ("operators", "qc_analysts", "qa_reviewers"):
        r[k]["count"] *= 10
    sc = parse_text(yaml.safe_dump(d), "ten_years_x10")
    m = Model(sc, 20271)
    rec = m.rec
    samples: list[dict[str, float]] = []

    def sampler(env: Any) -> Any:
        while True:
            samples.append({
                "day": env.now, "rss_kb": _rss_kb(),
                "records": sum(len(getattr(rec, a)) for a in ("steps", "resource_uses", "qc_results", "deviations",
                                                               "shipments", "releases")) + len(m.patients) + len(m.batches),
                "event_queue": len(env._queue), "open_holds": len(m.open_holds),
                "waitlist": m.slotbook.waitlist_length,
                "in_progress": sum(1 for p in m.patients if p.status == "in_progress"),
            })
            yield env.timeout(100)

    t0 = time.monotonic()
    m.env.process(sampler(m.env))
    out = m.run()
    elapsed = time.monotonic() - t0
    assert len(out.patients) > 35_000 and samples[-1]["day"] == 3600
    steady = [s for s in samples if s["day"] >= 300]
    first = [s for s in steady if s["day"] < 1900]
    second = [s for s in steady if s["day"] >= 1900]
    for key in ("event_queue", "open_holds", "waitlist", "in_progress"):
        hi1, hi2 = max(s[key] for s in first), max(s[key] for s in second)
        assert hi2 <= 2 * hi1 + 50, (key, hi1, hi2)

    def per_record(part: list[dict[str, float]]) -> float:
        a, b = part[0], part[-1]
        return (b["rss_kb"] - a["rss_kb"]) * 1024 / (b["records"] - a["records"])

    b1, b2 = per_record(first), per_record(second)
    assert b2 <= 1.5 * b1 + 50, (b1, b2)
    assert b2 < 1024, "more than 1 KiB of memory per record"
    live = {k: (max(s[k] for s in first), max(s[k] for s in second))
            for k in ("event_queue", "open_holds", "waitlist", "in_progress")}
    note(f"{len(out.patients):,} patients, {samples[-1]['records']:,} records in {elapsed:.0f} s; RSS "
         f"{samples[0]['rss_kb'] / 1024:.0f} -> {samples[-1]['rss_kb'] / 1024:.0f} MB; memory per record "
         f"{b1:.0f} B (days 300-1800) vs {b2:.0f} B (days 1900-3600); live state max first/second half: {live}")
