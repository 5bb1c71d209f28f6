"""Connection policy: where a store is, how SQLite is set up on every connection, and the schema.

SQLite connections get WAL (readers never block the writer), a 30 s busy timeout (parallel writers
queue instead of failing), synchronous=NORMAL and foreign keys on. A read-only open never writes; a
writable open probes a write so that a read-only file fails at once, not after a long simulation.

Every open reads the store's schema version (store/migrate.py): a store written by a newer celltx-mfg
is refused untouched, an older one of ours is migrated by a writable open (a read-only open refuses it),
and an empty database gets the schema.
"""

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from ._common import OPEN_ERRORS, StoreError, _reason, display_url, url_label
from .guards import install_guards
from .keys import signing_keys
from .migrate import check_not_newer, has_our_tables, migrate, read_version, write_version
from .schema import _STORE_TABLES, DEFAULT_DB, RECORD_TABLES, SCHEMA_VERSION

_BUSY_TIMEOUT_S = 30


@dataclass(frozen=True)
class _Target:
    """Where a store is: the URL to connect to, the name for messages, and the SQLite file if any."""

    url: sa.URL
    where: str
    sqlite: bool
    file: str | None


def _ro_url(file: str, immutable: bool = False) -> sa.URL:
    return sa.make_url(f"sqlite:///file:{file}?mode=ro{'&immutable=1' if immutable else ''}&uri=true")


def _parse_url(db: str, readonly: bool) -> _Target:
    """A SQLAlchemy URL (anything with '://'); a plain SQLite file in it is opened like a path."""
    try:
        url = sa.make_url(db)
    except (sa.exc.ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
        raise StoreError(f"cannot open store {display_url(db)}: {_reason(e)}") from e
    sqlite = url.get_backend_name() == "sqlite"
    where = url_label(url, db)
    plain_file = sqlite and url.database and not url.database.startswith(("file:", ":memory:"))
    file = url.database if plain_file else None
    if readonly and file:
        url = _ro_url(file)
    return _Target(url, where, sqlite, file)


def _parse_path(db: str, readonly: bool) -> _Target:
    file = str(Path(db).expanduser())
    url = _ro_url(file) if readonly else sa.URL.create("sqlite", database=file)
    return _Target(url, file, True, file)


def _locate(db: str, readonly: bool) -> _Target:
    """Parse the path or URL; a read-only open on read-only storage (an archive) reads the file as
    immutable: SQLite cannot create the -shm file a WAL database needs there, and nobody can be writing."""
    target = _parse_url(db, readonly) if "://" in db else _parse_path(db, readonly)
    if readonly and target.file and not os.access(Path(target.file).parent, os.W_OK):
        target = replace(target, url=_ro_url(target.file, immutable=True))
    return target


def _make_directory(target: _Target) -> None:
    if not target.file:
        return
    try:
        Path(target.file).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot open store {target.where}: {e.strerror or e}") from e


def _create_engine(target: _Target, readonly: bool) -> Engine:
    try:
        engine = sa.create_engine(target.url)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(f"cannot open store {target.where}: {_reason(e)}") from e
    if target.sqlite:
        event.listen(engine, "connect", _sqlite_settings(readonly))
    return engine


def _enter_wal(cur: Any) -> None:
    """Switch to WAL: it needs an exclusive lock and does not wait for the busy timeout, so retry."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_settings(readonly: bool) -> Callable[[Any, Any], None]:
    """The settings every SQLite connection of the engine gets when it is made."""
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
            if not readonly:
                _enter_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    return on_connect


def _check_is_store(conn: Connection, where: str) -> None:
    missing = set(RECORD_TABLES) - set(sa.inspect(conn).get_table_names())
    if missing:
        raise StoreError(f"cannot open store {where}: not a celltx store (missing tables {sorted(missing)})")


def _check_readable(conn: Connection, where: str) -> None:
    """A read-only open: a celltx store of this schema version (it cannot migrate one)."""
    version = read_version(conn)
    check_not_newer(version, where)
    _check_is_store(conn, where)
    if version < SCHEMA_VERSION:
        raise StoreError(f"cannot open store {where}: schema version {version} is older than this "
                         f"celltx-mfg's {SCHEMA_VERSION}; open it writable once (e.g. celltx verify) to migrate it")


def _create_schema(conn: Connection, where: str, sqlite: bool) -> None:
    """In one transaction: check the version, migrate an older store of ours, create the tables (if new)
    and the append-only triggers, and write the schema version: a real write, so a read-only file fails
    now."""
    postgres = conn.dialect.name == "postgresql"
    if sqlite:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif postgres:  # parallel openers create the schema one at a time
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242131)")
    version = read_version(conn)
    check_not_newer(version, where)  # raising rolls back: nothing was written
    if version < SCHEMA_VERSION and (version > 0 or has_our_tables(conn)):
        migrate(conn, version, where)
    SQLModel.metadata.create_all(conn, tables=_STORE_TABLES)
    install_guards(conn)  # missing or altered append-only triggers are (re-)created as defined
    write_version(conn, SCHEMA_VERSION)
    conn.commit()


def _precheck_version(target: _Target) -> None:
    """Before a writable engine touches an existing SQLite file (WAL mode, -wal and -shm files), refuse a
    newer store from a read-only look at its header; anything unreadable is left to the open to report."""
    if not target.file or not Path(target.file).is_file():
        return
    try:
        con = sqlite3.connect(Path(target.file).absolute().as_uri() + "?mode=ro", uri=True)
        try:
            version = int(con.execute("PRAGMA user_version").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return
    check_not_newer(version, target.where)


def _unwritable_hint(target: _Target) -> str:
    if target.file and not os.access(Path(target.file).parent, os.W_OK):
        return (f" (directory {Path(target.file).parent} is not writable: "
                "SQLite keeps its -wal and -shm files there)")
    return ""


def _prepare(engine: Engine, target: _Target, readonly: bool) -> None:
    """First connection: a read-only store must be a celltx store; a writable one gets the schema."""
    try:
        with engine.connect() as conn:
            if readonly:
                _check_readable(conn, target.where)
            else:
                _create_schema(conn, target.where, target.sqlite)
    except StoreError:
        engine.dispose()
        raise
    except OPEN_ERRORS as e:
        engine.dispose()
        hint = "" if readonly else _unwritable_hint(target)
        raise StoreError(f"cannot open store {target.where}: {_reason(e)}{hint}") from e


def open_store(db: str = DEFAULT_DB, *, readonly: bool = False) -> Engine:
    """Open (creating if needed) a store at a file path or SQLAlchemy URL (anything with '://').

    ``readonly`` opens an existing SQLite file without writing to it (dashboards). A writable open
    loads the key file (creating it on first use: store/keys.py) before it touches anything.
    """
    target = _locate(db, readonly)
    if not readonly:
        signing_keys()  # a writer seals: a key file problem is found now, not after a long simulation
        _precheck_version(target)
        _make_directory(target)
    engine = _create_engine(target, readonly)
    _prepare(engine, target, readonly)
    return engine
