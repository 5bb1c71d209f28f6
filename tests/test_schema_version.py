"""The store's schema version is read on every open: the same version is used, an older store of ours is
migrated in one transaction (store/migrate.py), a store written by a newer celltx-mfg is refused
untouched, and a new database gets the schema; the same checks on PostgreSQL (table celltx_meta)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from celltx_mfg import store
from celltx_mfg.store import StoreError, open_store, verify, write_run
from celltx_mfg.store import migrate as mig

from .test_store import SCENARIO_YAML, make_records


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _user_version(p: Path) -> int:
    con = sqlite3.connect(p)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


def _sqlite(p: Path, *sql: str) -> None:
    con = sqlite3.connect(p)
    try:
        for s in sql:
            con.execute(s)
        con.commit()
    finally:
        con.close()


def _columns(p: Path, table: str) -> list[str]:
    con = sqlite3.connect(p)
    try:
        return [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
    finally:
        con.close()


def _store_with_run(p: Path) -> None:
    e = open_store(str(p))
    write_run(e, "two-suite plant", SCENARIO_YAML, make_records())
    e.dispose()


@pytest.fixture
def version0(tmp_path: Path) -> Path:
    """A store as an imagined version 0 wrote it: today's tables without ``run.label``, user_version 0."""
    p = tmp_path / "v0.db"
    _store_with_run(p)
    _sqlite(p, 'ALTER TABLE "run" DROP COLUMN "label"', "PRAGMA user_version = 0")
    assert "label" not in _columns(p, "run")
    return p


def _add_label(conn: sa.Connection) -> None:
    conn.exec_driver_sql('ALTER TABLE "run" ADD COLUMN "label" VARCHAR')


def test_new_store_gets_the_version_and_reopens(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    _store_with_run(p)
    assert _user_version(p) == store.SCHEMA_VERSION == 4
    e = open_store(str(p))
    assert verify(e) == [] and len(store.list_runs(e)) == 1
    e.dispose()
    assert len(store.list_runs(open_store(str(p), readonly=True))) == 1


def test_empty_file_is_a_new_store(tmp_path: Path) -> None:
    p = tmp_path / "empty.db"
    p.touch()
    open_store(str(p)).dispose()
    assert _user_version(p) == store.SCHEMA_VERSION
    assert set(store.RECORD_TABLES) <= set(sa.inspect(open_store(str(p), readonly=True)).get_table_names())


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_store_is_refused_untouched(tmp_path: Path, readonly: bool) -> None:
    p = tmp_path / "new.db"
    _store_with_run(p)
    _sqlite(p, "PRAGMA user_version = 99")
    before = _sha(p)
    with pytest.raises(StoreError) as exc:
        open_store(str(p), readonly=readonly)
    msg = str(exc.value)
    assert "newer celltx-mfg" in msg and "99" in msg and f"version {store.SCHEMA_VERSION}" in msg
    assert str(p) in msg and "\n" not in msg
    assert _sha(p) == before and _user_version(p) == 99
    assert not (tmp_path / "new.db-wal").exists()


def test_older_store_is_migrated_then_verifies(version0: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(mig.MIGRATIONS, 0, _add_label)
    e = open_store(str(version0))
    assert _user_version(version0) == store.SCHEMA_VERSION
    assert "label" in _columns(version0, "run")
    assert verify(e) == []
    runs = store.list_runs(e)
    assert len(runs) == 1 and runs["label"].isna().all()
    e.dispose()
    assert verify(open_store(str(version0), readonly=True)) == []


def test_older_store_without_a_migration_is_refused_untouched(version0: Path) -> None:
    before = _sha(version0)
    with pytest.raises(StoreError, match="no migration from version 0 to 1"):
        open_store(str(version0))
    assert _sha(version0) == before and _user_version(version0) == 0


def test_failed_migration_rolls_back(version0: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half(conn: sa.Connection) -> None:
        _add_label(conn)
        raise sa.exc.OperationalError("step", {}, Exception("disk went away"))

    monkeypatch.setitem(mig.MIGRATIONS, 0, half)
    with pytest.raises(StoreError, match="disk went away"):
        open_store(str(version0))
    assert "label" not in _columns(version0, "run") and _user_version(version0) == 0


def test_read_only_open_does_not_migrate(version0: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(mig.MIGRATIONS, 0, _add_label)
    before = _sha(version0)
    with pytest.raises(StoreError, match="older than .* open it writable"):
        open_store(str(version0), readonly=True)
    assert _sha(version0) == before


def test_migration_steps_run_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(mig, "MIGRATIONS", {n: (lambda _c, n=n: seen.append(n)) for n in range(3)})
    assert mig.migrate(None, 0, "x", target=3) == 3  # type: ignore[arg-type]
    assert seen == [0, 1, 2]
    with pytest.raises(StoreError, match="no migration from version 3 to 4"):
        mig.pending(1, "x", target=5)


# ---------------------------------------------------------------------------------------- PostgreSQL
def _meta(url: str) -> list[tuple[str, str]]:
    e = sa.create_engine(url)
    try:
        with e.connect() as c:
            return [tuple(r) for r in c.execute(sa.text("SELECT key, value FROM celltx_meta"))]
    finally:
        e.dispose()


def _pg(url: str, sql: str) -> None:
    e = sa.create_engine(url)
    try:
        with e.begin() as c:
            c.execute(sa.text(sql))
    finally:
        e.dispose()


def test_postgres_keeps_the_version_in_celltx_meta(pg_url: str) -> None:
    open_store(pg_url).dispose()
    assert _meta(pg_url) == [("schema_version", str(store.SCHEMA_VERSION))]
    open_store(pg_url).dispose()
    assert _meta(pg_url) == [("schema_version", str(store.SCHEMA_VERSION))]


@pytest.mark.parametrize("readonly", [False, True])
def test_postgres_newer_store_is_refused(pg_url: str, readonly: bool) -> None:
    open_store(pg_url).dispose()
    _pg(pg_url, "UPDATE celltx_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer celltx-mfg .*99") as exc:
        open_store(pg_url, readonly=readonly)
    assert "s3cret" not in str(exc.value)
    assert _meta(pg_url) == [("schema_version", "99")]


def test_postgres_store_from_before_celltx_meta_is_version_1(pg_url: str) -> None:
    """A PostgreSQL store with our tables and no celltx_meta is version 1: a read-only open refuses it
    (it would need the version 2 migration), a writable open migrates it."""
    open_store(pg_url).dispose()
    _pg(pg_url, "DROP TABLE celltx_meta")
    with pytest.raises(StoreError, match="schema version 1 is older"):
        open_store(pg_url, readonly=True)
    open_store(pg_url).dispose()
    assert _meta(pg_url) == [("schema_version", str(store.SCHEMA_VERSION))]


# ------------------------------------------------------------------------ schema 1 -> 2: the ledger
def _store_as_schema_1(p: Path) -> None:
    """A run and a correction written, then the store taken back to what schema 1 had: no ledger, no
    release signatures (their triggers go with their tables), user_version 1."""
    e = open_store(str(p))
    rid = write_run(e, "two-suite plant", SCENARIO_YAML, make_records())
    store.record_correction(e, rid, "batch", 0, "suite recorded wrongly", {"suite": "S2"}, "qa:JL")
    e.dispose()
    _sqlite(p, "DROP TABLE ledger", "DROP TABLE release_signature", "PRAGMA user_version = 1")


def test_schema_1_store_is_adopted_into_the_ledger(tmp_path: Path) -> None:
    """A schema 1 store: refused by a read-only open (it needs migrating), migrated by a writable one.
    The scenario, run and correction it holds are entered in the ledger as adopted, verify is clean
    (its releases predate role signatures), a new run is written and signed as usual, and from then on
    re-sealing the old run without the key is found like any other."""
    p = tmp_path / "v1.db"
    _store_as_schema_1(p)
    with pytest.raises(StoreError, match="schema version 1 is older"):
        open_store(str(p), readonly=True)
    e = open_store(str(p))
    assert _user_version(p) == store.SCHEMA_VERSION == 4
    con = sqlite3.connect(p)
    entries = con.execute("SELECT seq, kind, ref_id, adopted FROM ledger ORDER BY seq").fetchall()
    con.close()
    assert entries == [(1, "scenario", 1, 1), (2, "run", 1, 1), (3, "correction", 1, 1)]
    assert verify(e) == []
    rid = write_run(e, "two-suite plant", SCENARIO_YAML, make_records(seed=5))
    e.dispose()
    assert verify(open_store(str(p), readonly=True)) == []
    con = sqlite3.connect(p)
    assert con.execute("SELECT COUNT(*) FROM release_signature WHERE run_id = ?", (rid,)).fetchone()[0] > 0
    assert con.execute("SELECT COUNT(*) FROM release_signature WHERE run_id = 1").fetchone()[0] == 0
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    con.row_factory = sqlite3.Row
    run = dict(con.execute("SELECT * FROM run WHERE id = 1").fetchone())
    run["seed"] = 12345  # another seed, and the run's sha256 seal recomputed for it
    content_hash = con.execute("SELECT content_hash FROM scenario").fetchone()[0]
    con.execute("UPDATE run SET seed = ?, digest = ? WHERE id = 1", (12345, store._run_seal(1, content_hash, run)))
    con.commit()
    con.close()
    found = {(x.run_id, x.kind) for x in verify(open_store(str(p), readonly=True)) if x.kind != "guard"}
    assert found == {(1, "seal")}
    open_store(str(p)).dispose()  # opening again (schema 2) adds nothing to the ledger
    con = sqlite3.connect(p)
    assert con.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 4  # + the new run
    con.close()


def test_postgres_schema_1_store_is_migrated(pg_url: str) -> None:
    e = open_store(pg_url)
    write_run(e, "two-suite plant", SCENARIO_YAML, make_records())
    e.dispose()
    _pg(pg_url, "DROP TABLE ledger")
    _pg(pg_url, "DROP TABLE release_signature")
    _pg(pg_url, "UPDATE celltx_meta SET value = '1' WHERE key = 'schema_version'")
    e = open_store(pg_url)
    assert _meta(pg_url) == [("schema_version", str(store.SCHEMA_VERSION))]
    assert verify(e) == []
    with e.connect() as c:
        assert c.execute(sa.text("SELECT kind, adopted FROM ledger ORDER BY seq")).all() == [("scenario", True),
                                                                                               ("run", True)]
    e.dispose()
