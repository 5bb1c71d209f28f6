"""Connection policy: where a store is, how SQLite is set up on every connection, and the schema.

SQLite connections get WAL (readers never block the writer), a 30 s busy timeout (parallel writers
queue instead of failing), synchronous=NORMAL and foreign keys on. A read-only open never writes; a
writable open probes a write so that a read-only file fails at once, not after a long simulation.

Before any connection that could write, an existing SQLite file is looked at read-only
(store/identity.py): a device, FIFO or directory is refused, someone else's database (another application
id, or tables that are not ours) is refused untouched, and ``PRAGMA quick_check`` (``integrity_check`` for
an audit) must pass, so nothing reads from or appends to a damaged file. Every open reads the store's
schema version (store/migrate.py): a store written by a newer celltx-mfg is refused untouched, an older one
of ours is migrated by a writable open (a read-only open refuses it), and an empty database gets the schema
and our application id. Only the store's own folder is created, never the folders above it.
"""

import os
import sqlite3
import stat
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
from .identity import IntegrityCheck, StoreKind, check_integrity, recognise, recognise_sqlite, stamp
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
    """Create the store's own folder if it is missing, never the folders above it: a mistyped path must
    not leave directories behind anywhere on the machine."""
    if not target.file:
        return
    folder = Path(target.file).parent
    if folder.is_dir():
        return
    if not folder.parent.is_dir():
        raise StoreError(f"cannot open store {target.where}: folder {folder.parent} does not exist "
                         f"(only the store's own folder, {folder.name}, is created)")
    try:
        folder.mkdir()
    except FileExistsError:
        if not folder.is_dir():
            raise StoreError(f"cannot open store {target.where}: {folder} is not a folder") from None
    except OSError as e:
        raise StoreError(f"cannot open store {target.where}: {e.strerror or e}") from e


_NOT_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _check_file_kind(target: _Target) -> None:
    """A store is a regular file: a device (/dev/null), FIFO, socket or directory is refused before SQLite
    opens it (and leaves a /dev/null-journal behind, or blocks on the FIFO)."""
    if not target.file:
        return
    try:
        mode = os.stat(target.file).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot open store {target.where}: {e.strerror or e}") from e
    except ValueError as e:  # a NUL character (a URL's %00)
        raise StoreError(f"cannot open store {target.where}: the path contains a NUL character") from e
    for test, what in _NOT_FILES:
        if test(mode):
            raise StoreError(f"cannot open store {target.where}: it is {what}, not a database file")


def _create_engine(target: _Target, readonly: bool, lenient_text: bool = False) -> Engine:
    try:
        engine = sa.create_engine(target.url)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(f"cannot open store {target.where}: {_reason(e)}") from e
    if target.sqlite:
        event.listen(engine, "connect", _sqlite_settings(readonly, lenient_text))
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


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _sqlite_settings(readonly: bool, lenient_text: bool = False) -> Callable[[Any, Any], None]:
    """The settings every SQLite connection of the engine gets when it is made."""
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if lenient_text:
            dbapi_conn.text_factory = _lenient_text
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
    if recognise(conn, where) is StoreKind.NEW:
        raise StoreError(f"cannot open store {where}: it is empty, not a celltx store yet "
                         "(a run creates one: celltx run SCENARIO --db ...)")
    version = read_version(conn)
    check_not_newer(version, where)
    _check_is_store(conn, where)
    if version < SCHEMA_VERSION:
        raise StoreError(f"cannot open store {where}: schema version {version} is older than this "
                         f"celltx-mfg's {SCHEMA_VERSION}; open it writable once (any command that stores runs, "
                         "e.g. celltx run) to migrate it")


def _create_schema(conn: Connection, where: str, sqlite: bool) -> None:
    """In one transaction: check the version, migrate an older store of ours, create the tables (if new)
    and the append-only triggers, and write the schema version: a real write, so a read-only file fails
    now."""
    postgres = conn.dialect.name == "postgresql"
    if sqlite:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif postgres:  # parallel openers create the schema one at a time
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242131)")
    recognise(conn, where)  # someone else's database raises: nothing was written
    version = read_version(conn)
    check_not_newer(version, where)  # raising rolls back: nothing was written
    if version < SCHEMA_VERSION and (version > 0 or has_our_tables(conn)):
        migrate(conn, version, where)
    SQLModel.metadata.create_all(conn, tables=_STORE_TABLES)
    stamp(conn)
    install_guards(conn)  # missing or altered append-only triggers are (re-)created as defined
    write_version(conn, SCHEMA_VERSION)
    conn.commit()


def _look_uri(target: _Target) -> str:
    file = Path(target.file or "").absolute().as_uri()
    return file + ("?mode=ro&immutable=1" if "immutable=1" in str(target.url) else "?mode=ro")


def _look(target: _Target, check: IntegrityCheck) -> None:
    """Before any connection that could write touches an existing SQLite file (WAL mode, -wal and -shm
    files, tables, a new user_version): read-only, refuse someone else's database, a store written by a
    newer celltx-mfg and a damaged file. A file that cannot be looked at for another reason (a read-only
    folder) is left to the open, which says why."""
    if not target.file or not Path(target.file).is_file():
        return
    try:
        con = sqlite3.connect(_look_uri(target), uri=True)
    except sqlite3.Error:
        return
    try:
        query = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        kind, header = recognise_sqlite(query, target.where)
        if kind is StoreKind.NEW:
            return
        check_not_newer(header.user_version, target.where)
        check_integrity(query, target.where, check)
    except sqlite3.Error as e:
        found = _definite(e, target.where)
        if found is not None:
            raise found from e
    except UnicodeDecodeError as e:  # SQLite's own message quoting a damaged schema text it cannot decode
        raise StoreError(f"cannot open store {target.where}: the database file is damaged (malformed "
                         "database schema); nothing was read or written: restore it from a backup") from e
    finally:
        con.close()


def _definite(e: sqlite3.Error, where: str) -> StoreError | None:
    """What a failed look at the file says for sure (not a database, damaged); None for anything the open
    itself reports better (a locked file, a folder that cannot be written)."""
    name = getattr(e, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return StoreError(f"cannot open store {where}: not an SQLite database ({_reason(e)}); it was left untouched")
    if name == "SQLITE_CORRUPT":
        return StoreError(f"cannot open store {where}: the database file is damaged ({_reason(e)}); "
                          "nothing was read or written: restore it from a backup")
    return None


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


def open_store(db: str = DEFAULT_DB, *, readonly: bool = False, audit: bool = False,
               lenient_text: bool = False) -> Engine:
    """Open (creating if needed) a store at a file path or SQLAlchemy URL (anything with '://').

    ``readonly`` opens an existing SQLite file without writing to it (dashboards). ``audit`` (``verify``)
    checks the file with ``integrity_check`` instead of ``quick_check``. ``lenient_text`` reads a stored
    text that is not UTF-8 (a flipped byte) with replacement characters instead of failing, so that
    ``verify`` can name the damaged row; it makes reading slower, so it is for that second look only.
    A writable open loads the key file (creating it on first use: store/keys.py) before it writes.
    """
    target = _locate(db, readonly)
    _check_file_kind(target)
    _look(target, IntegrityCheck.FULL if audit else IntegrityCheck.QUICK)
    if not readonly:
        signing_keys()  # a writer seals: a key file problem is found now, not after a long simulation
        _make_directory(target)
    engine = _create_engine(target, readonly, lenient_text)
    _prepare(engine, target, readonly)
    return engine
