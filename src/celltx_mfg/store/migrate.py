"""The store's schema version: where it is kept, how it is read, and the steps that bring an older store
of ours up to date.

SQLite keeps the version in ``PRAGMA user_version``; PostgreSQL, which has no such field, in the
one-row-per-key table ``celltx_meta`` (``key = 'schema_version'``). A PostgreSQL store made before that
table existed has our tables and no version row: it is version 1, the layout of that time.

``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``. ``open_store`` runs the steps a store
needs in the transaction that opens it, then writes the new version, so a failed step leaves the store
as it was. Version 1 is the first, so the registry is empty today; a schema change adds a step here and
raises ``SCHEMA_VERSION``.
"""

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._common import StoreError
from .schema import RECORD_TABLES, SCHEMA_VERSION

Migration = Callable[[Connection], None]

# from version N to N + 1; each step runs inside the caller's transaction and must not commit
MIGRATIONS: dict[int, Migration] = {}

META_TABLE = "celltx_meta"
_VERSION_KEY = "schema_version"
_PG_META_DDL = f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key text PRIMARY KEY, value text NOT NULL)"
_PG_UNVERSIONED = 1  # a PostgreSQL store with our tables and no version row predates celltx_meta


def has_our_tables(conn: Connection) -> bool:
    """Any of our record tables present (a store that is not new)."""
    return bool(set(RECORD_TABLES) & set(sa.inspect(conn).get_table_names()))


def read_version(conn: Connection) -> int:
    """The store's schema version; 0 for a new or empty database."""
    if conn.dialect.name == "sqlite":
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    if META_TABLE in sa.inspect(conn).get_table_names():
        value = conn.execute(sa.text(f"SELECT value FROM {META_TABLE} WHERE key = :k"),
                             {"k": _VERSION_KEY}).scalar()
        if value is not None:
            return int(value)
    return _PG_UNVERSIONED if has_our_tables(conn) else 0


def write_version(conn: Connection, version: int) -> None:
    """Record ``version`` inside the caller's transaction."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
        return
    conn.exec_driver_sql(_PG_META_DDL)
    conn.execute(sa.text(f"INSERT INTO {META_TABLE} (key, value) VALUES (:k, :v) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
                 {"k": _VERSION_KEY, "v": str(int(version))})


def check_not_newer(version: int, where: str) -> None:
    """Refuse a store written by a newer celltx-mfg: this one would misread or damage it."""
    if version > SCHEMA_VERSION:
        raise StoreError(f"cannot open store {where}: it was written by a newer celltx-mfg "
                         f"(schema version {version}; this celltx-mfg reads up to version {SCHEMA_VERSION}); "
                         "upgrade celltx-mfg to open it")


def pending(version: int, where: str, target: int = SCHEMA_VERSION) -> list[Migration]:
    """The steps from ``version`` to ``target``; a missing step is an error naming the versions."""
    steps = []
    for n in range(version, target):
        step = MIGRATIONS.get(n)
        if step is None:
            raise StoreError(f"cannot open store {where}: schema version {version} is older than this "
                             f"celltx-mfg's {target} and there is no migration from version {n} to {n + 1}")
        steps.append(step)
    return steps


def migrate(conn: Connection, version: int, where: str, target: int = SCHEMA_VERSION) -> int:
    """Run the steps from ``version`` to ``target`` in the caller's transaction; returns the new version
    (the caller writes it, in the same transaction)."""
    for step in pending(version, where, target):
        step(conn)
    return target
