"""The store's schema version: where it is kept, how it is read, and the steps that bring an older store
of ours up to date.

SQLite keeps the version in ``PRAGMA user_version``; PostgreSQL, which has no such field, in the
one-row-per-key table ``celltx_meta`` (``key = 'schema_version'``). A PostgreSQL store made before that
table existed has our tables and no version row: it is version 1, the layout of that time.

``MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``. ``open_store`` runs the steps a store
needs in the transaction that opens it, then writes the new version, so a failed step leaves the store
as it was. A schema change adds a step here and raises ``SCHEMA_VERSION``.

Version 2 added the keyed ledger and the QP release signatures (store/seals.py): the step creates their
tables and enters every scenario, run and correction already stored in the ledger, marked ``adopted``:
they are sealed by this installation's key as they are found (``verify`` an old store before migrating
it if in doubt). Releases of adopted runs carry no role signature; their record digests and the run's
hash chain still cover them.

Version 3 added the forecast tables (store/forecasts.py) and the ledger kind ``forecast``; the step
creates the tables and widens the ledger's check on its kind.
Version 4 added ``scenario_note`` (labels, descriptions and hidden flags of scenarios, append-only,
store/notes.py): the step creates the empty table; the writable open then installs its triggers.
"""

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from ._common import StoreError
from .hashing import scenario_digest
from .keys import signing_keys
from .schema import (
    _FORECAST_TABLES,
    _NOTE_TABLES,
    _SEAL_TABLES,
    CORRECTION,
    LEDGER,
    LEDGER_KINDS,
    RECORD_TABLES,
    RUN,
    SCENARIO,
    SCHEMA_VERSION,
)
from .seals import Entry, append

Migration = Callable[[Connection], None]


def _adopt_into_ledger(conn: Connection) -> None:
    """1 -> 2: the ledger and signature tables, and a ledger entry (``adopted``) for every scenario, run
    and correction stored before them that has none yet (so the step is safe to repeat)."""
    SQLModel.metadata.create_all(conn, tables=_SEAL_TABLES)
    entered = {(str(k), int(r)) for k, r in conn.execute(sa.select(LEDGER.c.kind, LEDGER.c.ref_id))}
    s, r, c = SCENARIO.c, RUN.c, CORRECTION.c
    found = [Entry("scenario", int(i), scenario_digest(int(i), n, h, t)) for i, n, h, t in
             conn.execute(sa.select(s.id, s.name, s.content_hash, s.created).order_by(s.id))]
    found += [Entry("run", int(i), bytes(d)) for i, d in
              conn.execute(sa.select(r.id, r.digest).where(r.digest.is_not(None)).order_by(r.id))]
    found += [Entry("correction", int(i), bytes(d)) for i, d in conn.execute(sa.select(c.id, c.digest).order_by(c.id))]
    todo = [e for e in found if (e.kind, e.ref_id) not in entered]
    if todo:
        append(conn, signing_keys(), todo, adopted=True)


_LEDGER_KIND_CHECK = "ck_ledger_kind"


def _widen_ledger_kinds(conn: Connection) -> None:
    """Let the ledger hold the kinds of this version (its CHECK on ``kind``). PostgreSQL swaps the
    constraint; SQLite, which cannot alter one, rebuilds the table in the same transaction: entries are
    copied as they are (seq, time, head: the chain is unchanged) and the append-only triggers, which go
    with the old table, are re-created by the open that runs this step (store/guards.py)."""
    kinds = ", ".join(f"'{k}'" for k in LEDGER_KINDS)
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(f'ALTER TABLE {LEDGER.name} DROP CONSTRAINT IF EXISTS {_LEDGER_KIND_CHECK}, '
                             f"ADD CONSTRAINT {_LEDGER_KIND_CHECK} CHECK (kind IN ({kinds}))")
        return
    old = f"{LEDGER.name}_before_v3"
    cols = ", ".join(f'"{c.name}"' for c in LEDGER.columns)
    conn.exec_driver_sql(f'ALTER TABLE "{LEDGER.name}" RENAME TO "{old}"')
    for ix in LEDGER.indexes:
        conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{ix.name}"')
    SQLModel.metadata.create_all(conn, tables=[LEDGER])
    conn.exec_driver_sql(f'INSERT INTO "{LEDGER.name}" ({cols}) SELECT {cols} FROM "{old}" ORDER BY seq')
    conn.exec_driver_sql(f'DROP TABLE "{old}"')


def _add_forecast_tables(conn: Connection) -> None:
    """2 -> 3: the forecast tables (store/forecasts.py) and the ledger kind ``forecast``. Self-contained,
    so it can be renumbered when other steps are merged; safe to repeat."""
    SQLModel.metadata.create_all(conn, tables=_FORECAST_TABLES)
    _widen_ledger_kinds(conn)


def _add_scenario_notes(conn: Connection) -> None:
    """3 -> 4: the (empty) scenario note table; nothing stored before it changes."""
    SQLModel.metadata.create_all(conn, tables=_NOTE_TABLES)


# from version N to N + 1; each step runs inside the caller's transaction and must not commit
MIGRATIONS: dict[int, Migration] = {1: _adopt_into_ledger, 2: _add_forecast_tables, 3: _add_scenario_notes}

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
