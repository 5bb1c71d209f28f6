"""Whose database is this, and is it whole? A store is recognised, and checked, before anything is written.

A SQLite store of ours carries ``APPLICATION_ID`` in its header (``PRAGMA application_id``, the field SQLite
reserves for the application that owns a file) next to its schema version (``PRAGMA user_version``). Stores
made before the application id have 0 there and every table of the version-1 layout; they are ours too, and
a writable open stamps the id. Anything else that already holds schema objects, or carries another
application's id, is someone else's database: it is refused before the first write, so it is left
byte-identical (no tables, no triggers, no WAL switch, no new ``user_version``).

On PostgreSQL, where a database is shared by schemas of many applications, a store is ours when our tables
are there; a database holding some of our table names but not the others is a clash and is refused.

``PRAGMA quick_check`` (``integrity_check``, which also compares every index with its table, for
``verify``) runs on every open of an existing SQLite store, so a damaged file is reported, in one line,
before a command reads from it or appends to it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._common import StoreError

APPLICATION_ID = 0x43544D46  # "CTMF" (celltx-mfg) as a big-endian 32-bit integer
# The tables of the version-1 layout: a SQLite database holding all of them without an application id is a
# store of ours written before the id was stamped. Spelled out: later layouts must not change this set.
LEGACY_TABLES = frozenset({"scenario", "run", "correction", "patient", "batch", "step_event", "resource_use",
                           "qc_test", "deviation", "shipment", "release", "resource"})

Query = Callable[[str], list[tuple[Any, ...]]]


class StoreKind(Enum):
    """What an open found at the named place."""

    NEW = "new"  # nothing there yet: the schema is created
    OURS = "ours"  # a celltx-mfg store (of any schema version)
    FOREIGN = "foreign"  # another application's database: refused, untouched


class IntegrityCheck(StrEnum):
    """How thoroughly an open checks an existing SQLite file (the PRAGMA run)."""

    QUICK = "quick_check"  # every b-tree page and record: linear in the file size
    FULL = "integrity_check"  # and every index against its table (``verify``)


@dataclass(frozen=True)
class Header:
    """What a SQLite database says about itself, read without writing."""

    application_id: int
    user_version: int
    tables: frozenset[str]
    objects: int  # tables, indexes, views and triggers


def read_header(query: Query) -> Header:
    """The header fields and schema of the database ``query`` runs on."""
    schema = query("SELECT type, name FROM sqlite_master")
    tables = frozenset(str(n) for t, n in schema if t == "table" and not str(n).startswith("sqlite_"))
    return Header(int(query("PRAGMA application_id")[0][0] or 0), int(query("PRAGMA user_version")[0][0] or 0),
                  tables, len(schema))


def classify(header: Header) -> StoreKind:
    """New, ours or foreign, from the application id, the version and the tables."""
    if header.application_id == APPLICATION_ID:
        return StoreKind.OURS
    if header.application_id != 0:
        return StoreKind.FOREIGN
    if header.objects == 0 and header.user_version == 0:
        return StoreKind.NEW
    return StoreKind.OURS if LEGACY_TABLES <= header.tables else StoreKind.FOREIGN


def _listed(names: Iterable[str], limit: int = 6) -> str:
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def foreign_error(where: str, header: Header) -> StoreError:
    """The one line that refuses someone else's SQLite database."""
    return StoreError(f"cannot open store {where}: not a celltx store, another application's database "
                      f"(SQLite application id {header.application_id:#010x}, user_version {header.user_version}, "
                      f"tables: {_listed(header.tables)}); it was left untouched: name a new file or a celltx store")


def recognise_sqlite(query: Query, where: str) -> tuple[StoreKind, Header]:
    """Classify the SQLite database ``query`` runs on; a foreign one raises (nothing written)."""
    header = read_header(query)
    kind = classify(header)
    if kind is StoreKind.FOREIGN:
        raise foreign_error(where, header)
    return kind, header


def recognise(conn: Connection, where: str) -> StoreKind:
    """Classify the database of an open connection (SQLite or another); a foreign one raises."""
    if conn.dialect.name == "sqlite":
        return recognise_sqlite(lambda sql: list(conn.exec_driver_sql(sql).fetchall()), where)[0]
    present = set(sa.inspect(conn).get_table_names()) & LEGACY_TABLES
    if not present:
        return StoreKind.NEW
    if present != LEGACY_TABLES:
        raise StoreError(f"cannot open store {where}: it holds tables named like a celltx-mfg store's "
                         f"({_listed(present)}) but not the others ({_listed(LEGACY_TABLES - present)}): "
                         "another application's tables, or a damaged store; it was left untouched")
    return StoreKind.OURS


def stamp(conn: Connection) -> None:
    """Mark a SQLite store as ours, inside the caller's transaction (a no-op elsewhere)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def check_integrity(query: Query, where: str, check: IntegrityCheck = IntegrityCheck.QUICK) -> None:
    """Run SQLite's own check of the file; a damaged one raises, naming the first problem found."""
    rows = query(f"PRAGMA {check.value}(3)")
    found = [_one_line(str(r[0]).replace("*** in database main ***", "")) for r in rows if r and str(r[0]) != "ok"]
    if found:
        raise StoreError(f"cannot open store {where}: the database file is damaged (SQLite {check.value}: "
                         f"{'; '.join(found)[:300]}); nothing was read or written: restore it from a backup")
