"""Stores that are not ours, or broken (issue 10): someone else's SQLite file, a store written by a newer
celltx-mfg, a file with flipped bytes, a device, a FIFO, a folder that does not exist. Each is refused with
one clear line and exit 2 before anything is written (the file byte-identical after), or, for a damaged
value inside an intact file, reported by `celltx verify` at its row; the dashboard shows a page saying what
is wrong instead of a stack trace; exports are written whole or not at all.

Damage is real: bytes of the database file overwritten on disk (an interior b-tree page's child pointer,
one byte of a stored text), found with SQLite's own page map (dbstat).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from celltx_mfg import store
from celltx_mfg.cli import app
from celltx_mfg.store import StoreError, open_store

from .conftest import mounted_tmpfs, short_baseline_file
from .reliability import note, store_problems

pytest_plugins = ["tests.conftest_reliability"]

runner = CliRunner()
CELLTX = str(Path(sys.executable).parent / "celltx")
ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboards" / "Overview.py"
PAGES = [None, *sorted(p.relative_to(DASHBOARD.parent).as_posix() for p in (DASHBOARD.parent / "pages").glob("*.py"))]


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_baseline_file(tmp_path_factory.mktemp("sc"), horizon=60, warmup=10)


@pytest.fixture(scope="module")
def stored(short: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with two runs written by `celltx run`, checkpointed (no -wal left), to copy and damage."""
    db = tmp_path_factory.mktemp("stores") / "good.db"
    r = runner.invoke(app, ["run", str(short), "--db", str(db), "-r", "2", "--json"])
    assert r.exit_code == 0, r.output
    _checkpoint(db)
    return db


@pytest.fixture
def db(stored: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.db"
    shutil.copy(stored, out)
    return out


def _checkpoint(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def pragma(db: Path, name: str) -> object:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        con.close()


def one_line_exit2(result, *needles: str) -> str:
    """Exit 2, no traceback, one line of output naming what was asked for."""
    text = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {text[-2000:]}"
    assert "Traceback" not in text and result.exception is None or isinstance(result.exception, SystemExit), text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for n in needles:
        assert n in text, (n, text)
    return " ".join(text.split())[:220]


def commands(short: Path, db: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that opens a store, as a user would call it on ``db``."""
    return {
        "run": ["run", str(short), "--db", str(db)],
        "verify": ["verify", "--db", str(db)],
        "kpis": ["kpis", "--db", str(db)],
        "export": ["export", "--db", str(db), "--out", str(tmp / "exported")],
        "sweep": ["sweep", str(short), "--vary", "suites=2", "-r", "1", "--db", str(db)],
        "check": ["check", str(short), "--require", "patients_infused>=0", "--db", str(db)],
    }


COMMANDS = ("run", "verify", "kpis", "export", "sweep", "check")


# -------------------------------------------------------------------------------------- damaging a file
def _page(db: Path, table: str, kind: str) -> tuple[int, int]:
    """(offset, size) of the first page of ``kind`` ('internal' or 'leaf') of a table's b-tree."""
    con = sqlite3.connect(db)
    try:
        size = con.execute("PRAGMA page_size").fetchone()[0]
        (pageno,) = con.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno LIMIT 1",
                                (table, kind)).fetchone()
    finally:
        con.close()
    return (pageno - 1) * size, size


def damage_btree(db: Path, table: str = "step_event") -> None:
    """Point an interior page's right-most child at a page that does not exist (a malformed b-tree)."""
    off, _ = _page(db, table, "internal")
    with open(db, "r+b") as f:
        f.seek(off + 8)
        f.write(b"\x7f\xff\xff\xff")


def damage_text(db: Path, table: str) -> None:
    """Flip one byte of a stored text value (a chain-of-identity id) into invalid UTF-8: the file stays
    well-formed, the value is damaged."""
    off, size = _page(db, table, "leaf")
    with open(db, "r+b") as f:
        f.seek(off)
        page = bytearray(f.read(size))
        i = page.find(b"COI-")
        assert i >= 0, "no chain-of-identity id on the page"
        page[i + 4] = 0xFF
        f.seek(off)
        f.write(page)


def foreign(path: Path) -> Path:
    """Someone else's SQLite file: a table named `run`, a row, user_version 42, rollback journal."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, what TEXT)")
    con.execute("INSERT INTO run VALUES (1, 'theirs')")
    con.execute("PRAGMA user_version = 42")
    con.commit()
    con.close()
    return path


# -------------------------------------------------------------------------------- recognising a store
OURS_ID = 0x43544D46  # "CTMF", store.identity.APPLICATION_ID
V1_TABLES = frozenset(store.RECORD_TABLES) | {"run", "scenario", "correction"}


@pytest.mark.parametrize("application_id, version, tables, objects, kind", [
    (0, 0, frozenset(), 0, "new"),
    (OURS_ID, 1, frozenset({"run"}), 3, "ours"),
    (OURS_ID, 9, frozenset(), 0, "ours"),  # ours, newer: the version check refuses it
    (0, 1, V1_TABLES, 60, "ours"),  # written before the application id
    (0, 42, frozenset({"run"}), 1, "foreign"),
    (0, 0, frozenset({"notes"}), 1, "foreign"),
    (0, 7, frozenset(), 0, "foreign"),  # someone's empty file with their version
    (0x5A5A5A5A, 0, frozenset(), 0, "foreign"),
])
def test_classify(application_id: int, version: int, tables: frozenset[str], objects: int, kind: str) -> None:
    """A store is recognised by its application id, or (made before the id) by every table of the
    version-1 layout; an empty file is new; anything else is someone else's."""
    from celltx_mfg.store.identity import APPLICATION_ID, Header, StoreKind, classify

    assert APPLICATION_ID == OURS_ID
    assert classify(Header(application_id, version, tables, objects)) is StoreKind(kind)


def test_new_store_carries_the_application_id(tmp_path: Path) -> None:
    """A new store is stamped with celltx-mfg's SQLite application id, next to its schema version."""
    p = tmp_path / "new.db"
    open_store(str(p)).dispose()
    assert pragma(p, "application_id") == OURS_ID
    assert pragma(p, "user_version") == store.SCHEMA_VERSION
    note(f"application_id {OURS_ID:#010x}, user_version {store.SCHEMA_VERSION}")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_foreign_database_is_refused_untouched(cmd: str, short: Path, tmp_path: Path) -> None:
    """Someone else's SQLite file (a `run` table, user_version 42) named as the store: exit 2 with one
    line saying it is not a celltx store; the file is byte-identical after (no tables, triggers, WAL switch
    or user_version added)."""
    p = foreign(tmp_path / "theirs.db")
    before = sha(p)
    r = runner.invoke(app, commands(short, p, tmp_path)[cmd])
    msg = one_line_exit2(r, str(p), "not a celltx store")
    assert sha(p) == before and pragma(p, "user_version") == 42 and pragma(p, "journal_mode") == "delete"
    assert not Path(f"{p}-wal").exists()
    note(f"{cmd}: {msg}")


def test_other_application_id_is_refused_untouched(short: Path, tmp_path: Path) -> None:
    """An SQLite file stamped with another application's id, even with no tables, is refused untouched."""
    p = tmp_path / "app.db"
    con = sqlite3.connect(p)
    con.execute("PRAGMA application_id = 1515870810")
    con.commit()
    con.close()
    before = sha(p)
    msg = one_line_exit2(runner.invoke(app, ["run", str(short), "--db", str(p)]), "0x5a5a5a5a")
    assert sha(p) == before
    note(msg)


def test_newer_store_is_refused_untouched_by_run(db: Path, short: Path) -> None:
    """`celltx run` on a store of ours written by a newer celltx-mfg (the next schema version): exit 2
    before simulating, the store byte-identical (its version not rewritten)."""
    newer = store.SCHEMA_VERSION + 1
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {newer}")
    con.commit()
    con.close()
    before = sha(db)
    msg = one_line_exit2(runner.invoke(app, ["run", str(short), "--db", str(db)]), "newer celltx-mfg")
    assert sha(db) == before and pragma(db, "user_version") == newer
    note(msg)


def test_store_from_before_the_application_id_is_ours(db: Path, short: Path) -> None:
    """A store written before the application id (id 0, every version-1 table) reads and verifies
    untouched, and a writable open stamps the id."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA application_id = 0")
    con.commit()
    con.close()
    before = sha(db)
    assert runner.invoke(app, ["verify", "--db", str(db)]).exit_code == 0
    assert runner.invoke(app, ["kpis", "--db", str(db), "--json"]).exit_code == 0
    assert sha(db) == before
    r = runner.invoke(app, ["run", str(short), "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    assert pragma(db, "application_id") == OURS_ID
    assert store_problems(db) == (3, [])
    note("verify and kpis left it byte-identical; run stored run 3 and stamped the id")


# ---------------------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("cmd", COMMANDS)
def test_damaged_file_is_refused_by_every_command(cmd: str, db: Path, short: Path, tmp_path: Path) -> None:
    """A store whose b-tree is damaged (a child pointer to a page that does not exist): every command
    stops with one line saying the file is damaged (exit 2, no traceback); `run` does not append to it
    (the file byte-identical after)."""
    damage_btree(db)
    before = sha(db)
    r = runner.invoke(app, commands(short, db, tmp_path)[cmd])
    msg = one_line_exit2(r, str(db), "damaged")
    assert sha(db) == before
    note(f"{cmd}: {msg}")


def test_damaged_value_is_named_by_verify(db: Path, short: Path, tmp_path: Path) -> None:
    """One byte of a stored text flipped into invalid UTF-8 (the file well-formed): `celltx verify` names
    the run, table and row (exit 1) instead of stopping at it; `export`, which must read it, says in one
    line that the file is damaged (exit 2)."""
    damage_text(db, "step_event")
    r = runner.invoke(app, ["verify", "--db", str(db)])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and "run 1 step_event row" in r.output, r.output
    msg = one_line_exit2(runner.invoke(app, commands(short, db, tmp_path)["export"]), "damaged")
    note(f"verify: {r.output.splitlines()[0]}; export: {msg}")


def test_verify_runs_the_full_integrity_check(db: Path, tmp_path: Path) -> None:
    """A value changed under its index (patient.coi, indexed): quick_check, run on every open, passes, so
    `kpis` works; `verify` runs integrity_check, which compares every index with its table, and reports
    the file damaged (exit 2, one line)."""
    damage_text(db, "patient")
    assert pragma(db, "quick_check") == "ok"
    msg = one_line_exit2(runner.invoke(app, ["verify", "--db", str(db)]), "integrity_check", "damaged")
    note(msg)


@pytest.mark.parametrize("offset", [100, 4_096 + 17, 20_000, 60_000, 150_000, 300_000, 500_000, -4_000])
def test_flipped_bytes_never_give_a_traceback(offset: int, db: Path, short: Path, tmp_path: Path) -> None:
    """64 bytes flipped at one place in the file (header, schema, record pages, the end): verify, kpis,
    export and run each exit 0, 1 or 2 with at most a few lines and no traceback, and `run` appends only
    to a file SQLite's quick_check still finds well-formed."""
    data = bytearray(db.read_bytes())
    at = offset % len(data)
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    db.write_bytes(bytes(data))
    seen = []
    for cmd in ("verify", "kpis", "export", "run"):
        before = sha(db)
        r = runner.invoke(app, commands(short, db, tmp_path)[cmd] + (["--json"] if cmd in ("kpis", "run") else []))
        assert r.exit_code in (0, 1, 2), (cmd, r.exit_code, r.output[-2000:])
        assert r.exception is None or isinstance(r.exception, SystemExit), (cmd, repr(r.exception))
        assert "Traceback" not in r.output
        if cmd == "run" and r.exit_code == 0:
            assert pragma(db, "quick_check") == "ok"
        elif cmd == "run":
            assert sha(db) == before
        seen.append(f"{cmd} {r.exit_code}")
    note(f"byte {at}: " + ", ".join(seen))


# ---------------------------------------------------------------------------- where a store may be
def test_missing_folders_are_not_created(short: Path, tmp_path: Path) -> None:
    """`--db sqlite:////<missing>/x/y.db` is exit 2 naming the missing folder, and creates nothing; a
    store's own missing folder (one level) is still created."""
    missing = Path(f"/nonexistent_root_dir_{uuid.uuid4().hex[:8]}")
    msg = one_line_exit2(runner.invoke(app, ["run", str(short), "--db", f"sqlite:///{missing}/x/y.db"]),
                         f"folder {missing} does not exist")
    assert not missing.exists()
    deep = tmp_path / "a" / "b" / "c.db"
    one_line_exit2(runner.invoke(app, ["run", str(short), "--db", str(deep)]), "does not exist")
    assert not (tmp_path / "a").exists()
    own = tmp_path / "results" / "runs.db"
    assert runner.invoke(app, ["run", str(short), "--db", str(own), "--json"]).exit_code == 0
    note(f"{msg}; a/b/c.db refused with nothing created; results/runs.db created its own folder")


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_device_is_refused(device: str, short: Path, tmp_path: Path) -> None:
    """A device as the store (`--db /dev/null`): exit 2, one line saying what it is; no /dev/null-journal
    (or any other file) is created next to it."""
    journal = Path(device + "-journal")
    had_journal = journal.exists()
    for cmd in ("run", "verify", "kpis"):
        msg = one_line_exit2(runner.invoke(app, commands(short, Path(device), tmp_path)[cmd]), "character device")
    assert journal.exists() == had_journal
    note(msg)


def test_fifo_is_refused_without_waiting(short: Path, tmp_path: Path) -> None:
    """A FIFO as the store: `celltx run` and `celltx verify` (real processes, 60 s limit) exit 2 at once
    with one line, instead of blocking on the pipe."""
    fifo = tmp_path / "pipe.db"
    os.mkfifo(fifo)
    outs = []
    for args in (["run", str(short), "--db", str(fifo)], ["verify", "--db", str(fifo)]):
        p = subprocess.run([CELLTX, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "FIFO" in p.stderr and "Traceback" not in p.stderr
        outs.append(p.stderr.strip())
    note(outs[0])


def test_nul_character_in_a_url(short: Path) -> None:
    """`--db 'sqlite:///%zz%00.db'` (a NUL once decoded): exit 2, one line, no traceback."""
    note(one_line_exit2(runner.invoke(app, ["run", str(short), "--db", "sqlite:///%zz%00.db"]), "NUL"))


# ------------------------------------------------------------------------------------------- exports
def test_export_of_a_run_that_does_not_exist(db: Path, tmp_path: Path) -> None:
    """`celltx export --run 99` when there is no run 99: exit 2 naming it, and no files written."""
    out = tmp_path / "exp"
    msg = one_line_exit2(runner.invoke(app, ["export", "--db", str(db), "--run", "99", "--out", str(out)]),
                         "no run with id [99]")
    assert not out.exists() or not any(out.iterdir())
    note(msg)


def test_export_file_is_whole_or_absent(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CSV export failing half-way through a file (the disk full, here a writer that stops after part of
    the rows): the file of that name keeps its previous content, no temporary file is left, and the error
    is one line naming the file."""
    from celltx_mfg.store import export

    out = tmp_path / "exp"
    assert runner.invoke(app, ["export", "--db", str(db), "--out", str(out)]).exit_code == 0
    previous = (out / "step_event.csv").read_bytes()
    real = export._write_csv

    def half(table, path: Path) -> None:
        if "step_event" in path.name:
            path.write_bytes(previous[: len(previous) // 2])
            raise OSError(28, "No space left on device")
        real(table, path)

    monkeypatch.setattr(export, "_write_csv", half)
    r = runner.invoke(app, ["export", "--db", str(db), "--out", str(out)])
    msg = one_line_exit2(r, "step_event.csv", "No space left")
    assert (out / "step_event.csv").read_bytes() == previous
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    note(msg)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KB tmpfs mounted for the test (root only); skipped where mounting is not allowed."""
    with mounted_tmpfs(tmp_path, "256k") as mnt:
        yield mnt


def test_export_onto_a_full_disk(db: Path, tiny_disk: Path) -> None:
    """`celltx export` onto a 256 KB disk: exit 2 with one line naming the file that did not fit; every CSV
    left there is complete (as many rows as its table), none is cut mid-row."""
    out = tiny_disk / "exp"
    msg = one_line_exit2(runner.invoke(app, ["export", "--db", str(db), "--out", str(out)]), "No space left")
    con = sqlite3.connect(db)
    written = sorted(out.glob("*.csv"))
    for p in written:
        with open(p, newline="") as f:
            rows = sum(1 for _ in csv.reader(f)) - 1
        assert rows == con.execute(f'SELECT COUNT(*) FROM "{p.stem}"').fetchone()[0], p.name
    con.close()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    note(f"{len(written)} whole file(s) written ({', '.join(p.name for p in written)}), then: {msg}")


def test_check_on_a_full_disk(short: Path, tiny_disk: Path) -> None:
    """`celltx check --db` on a disk too small for the runs: exit 2 with one line saying the disk is full,
    no traceback, and every run stored there is whole."""
    db = tiny_disk / "gate.db"
    r = runner.invoke(app, ["check", str(short), "--require", "patients_infused>=0", "--db", str(db), "-r", "3"])
    msg = one_line_exit2(r, "full")
    runs, problems = store_problems(db)
    assert problems == []
    note(f"{runs} run(s) fitted, then: {msg}")


def test_open_store_refuses_in_the_library_too(tmp_path: Path) -> None:
    """Library callers get the same refusals as StoreError (one line), not sqlite3 errors."""
    p = foreign(tmp_path / "theirs.db")
    for target, needle in ((str(p), "not a celltx store"), ("/dev/null", "character device")):
        for readonly in (False, True):
            with pytest.raises(StoreError, match=needle) as e:
                open_store(target, readonly=readonly)
            assert "\n" not in str(e.value)


def test_postgres_database_with_a_clashing_table_is_refused(pg_url: str, short: Path) -> None:
    """A PostgreSQL database holding another application's `run` table: `celltx run` exits 2 with one line
    (password masked) naming the clash, and creates none of our tables there."""
    import sqlalchemy as sa

    e = sa.create_engine(pg_url)
    with e.begin() as c:
        c.execute(sa.text("CREATE TABLE run (id integer PRIMARY KEY, what text)"))
    msg = one_line_exit2(runner.invoke(app, ["run", str(short), "--db", pg_url]), "run", "left untouched")
    assert "s3cret" not in msg
    with e.connect() as c:
        assert sa.inspect(c).get_table_names() == ["run"]
    e.dispose()
    note(msg)


# ---------------------------------------------------------------------------------------- dashboard
def _dashboard(monkeypatch: pytest.MonkeyPatch, db: Path, page: str | None) -> AppTest:
    monkeypatch.setenv("CELLTX_DB", str(db))
    at = AppTest.from_file(str(DASHBOARD), default_timeout=120).run()
    if page is not None:
        at.switch_page(page).run()
    return at


@pytest.mark.parametrize("page", PAGES, ids=[p or "Overview" for p in PAGES])
@pytest.mark.parametrize("damage", ["btree", "value", "foreign"])
def test_dashboard_shows_a_page_for_an_unreadable_store(damage: str, page: str | None, db: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dashboard page on a damaged store (b-tree, or a patient's text value, which every page that
    shows KPIs reads) or on someone else's database: no exception, and a page saying the database cannot
    be read, with what to do, instead of a stack trace."""
    if damage == "btree":
        damage_btree(db)
    elif damage == "value":
        damage_text(db, "patient")
    else:
        db.unlink()
        foreign(db)
    at = _dashboard(monkeypatch, db, page)
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    # with one scenario stored, Compare has nothing to compare and What-if reads no patient until it runs
    if damage != "value" or page not in ("pages/5_Compare.py", "pages/6_What_if.py"):
        assert errors and "cannot be read" in errors[0], (errors, [m.value for m in at.markdown][:3])
        assert "celltx verify --db" in at.code[0].value
    note(f"{page or 'Overview'}: {errors[0][:140] if errors else 'page shown (reads no damaged row)'}")
