"""What every part of the store shares: its errors and findings, how it names a database in a message,
the clock it stamps records with, and the one place database errors become ``StoreError``."""

import importlib
import importlib.metadata
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

DB_ERRORS: tuple[type[Exception], ...] = (sa.exc.SQLAlchemyError, sqlite3.Error)
# and what opening a file can fail with besides the database
OPEN_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, OSError)


class StoreError(Exception):
    """The store cannot be opened, read or written (path, permissions, full disk, not a database, a
    record the schema refuses). The message is one line naming the database."""


class ProblemKind(StrEnum):
    """What ``verify`` found wrong; a str, so findings compare and print as the plain words."""

    CHANGED = "changed"
    REMOVED = "removed"
    INSERTED = "inserted"
    SIGNATURE = "signature"
    CHAIN_HEAD = "chain_head"
    MISSING = "missing"
    SEAL = "seal"  # a keyed seal (ledger entry) missing, broken or not matching its object
    UNKNOWN_KEY = "unknown_key"  # sealed or signed by a key this installation does not hold
    GUARD = "guard"  # an append-only trigger missing, replaced or disabled


class Problem(NamedTuple):
    """One integrity finding of ``verify``."""

    run_id: int | None
    table: str
    row_seq: int | None
    kind: ProblemKind  # a str enum: findings built with the plain word compare equal
    detail: str

    def __str__(self) -> str:
        where = f"run {self.run_id}" if self.run_id is not None else "store"
        row = f" row {self.row_seq}" if self.row_seq is not None else ""
        return f"{where} {self.table}{row}: {self.kind}: {self.detail}"


def _q(name: str) -> str:
    return '"' + name + '"'


def _now() -> str:
    """UTC wall-clock time of an entry (ALCOA+ contemporaneous); tests patch this module's ``_now``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _iso(t: datetime | None) -> str:
    if t is None:
        return _now()
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _package_version() -> str:
    try:
        v = getattr(importlib.import_module("celltx_mfg"), "__version__", None)
        if v:
            return str(v)
    except ImportError:
        pass
    try:
        return importlib.metadata.version("celltx-mfg")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split()) or type(orig).__name__


def display_url(db: str) -> str:
    """A store's path or URL as it may be printed: a URL's password masked, a plain path unchanged."""
    if "://" not in db:
        return db
    try:
        return sa.make_url(db).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparseable database URL>"


def url_label(url: sa.URL, fallback: str | None = None) -> str:
    """How a store is named in a message: a SQLite file by its path, any other URL with its password
    masked (the one rule, for an open engine and for a URL still being opened)."""
    if url.get_backend_name() == "sqlite":
        name = str(url.database or fallback)
        # a read-only open names the file as an SQLite URI (file:PATH?mode=ro): print the path
        return name.removeprefix("file:") if url.query.get("uri") == "true" else name
    return url.render_as_string(hide_password=True)


def _where(engine: Engine) -> str:
    return url_label(engine.url)


def damaged_text(exc: BaseException) -> bool:
    """A read failed on a stored text that is not UTF-8 (a flipped byte inside a value, which the file
    checks at open cannot see); ``exc`` a database error or the ``StoreError`` made of one."""
    cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
    return "Could not decode to UTF-8" in str(getattr(cause, "orig", None) or cause)


def _damage_hint(exc: BaseException) -> str:
    """What to do when SQLite found the file damaged while reading."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlite_errorname", "") == "SQLITE_CORRUPT" or damaged_text(exc):
        return " (the database file is damaged: `celltx verify` names the rows it can; restore it from a backup)"
    return ""


@contextmanager
def _reading(engine: Engine, what: str = "read") -> Iterator[Connection]:
    """A connection for a reader; any database error leaves as one ``StoreError`` line naming the store."""
    try:
        with engine.connect() as conn:
            yield conn
    except DB_ERRORS as e:
        raise StoreError(f"cannot {what} {_where(engine)}: {_reason(e)}{_damage_hint(e)}") from e


@contextmanager
def _write_txn(engine: Engine) -> Iterator[Connection]:
    """A connection whose transaction holds SQLite's write lock from the start, so read-then-write
    sequences (scenario lookup, correction chain) cannot interleave with another writer. It commits
    when the block ends normally and rolls back on anything else, so a failed write leaves nothing."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
