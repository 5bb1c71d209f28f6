"""The append-only triggers as they must be: installed (and repaired) by a writable open, checked by
``verify`` by their text, not only by their names.

A trigger of the right name that does nothing (``BEGIN SELECT 1; END``) guards nothing, and
``CREATE TRIGGER IF NOT EXISTS`` would keep it; so a writable open drops and re-creates any trigger whose
definition differs, and ``verify`` (which never writes) reports missing, altered, disabled and foreign
triggers on the store's tables. On PostgreSQL the shared plpgsql function's body is checked too.
"""

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._common import Problem, ProblemKind, _q
from .schema import (
    _STORE_TABLES,
    PG_GUARD_FN_BODY,
    PG_GUARD_FN_NAME,
    Guard,
    _append_only_ddl_pg,
    pg_guards,
    sqlite_guards,
)

_OUR_TABLES = frozenset(t.name for t in _STORE_TABLES)


def _sqlite_triggers(conn: Connection) -> dict[str, tuple[str, str]]:
    """name -> (table, SQL text) of every trigger in the SQLite store."""
    rows = conn.exec_driver_sql("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
    return {str(n): (str(t), str(s or "")) for n, t, s in rows}


def install_guards(conn: Connection) -> None:
    """Create every missing trigger and replace any whose definition differs, in the caller's
    transaction; on PostgreSQL, when anything differs, the function and every trigger are re-created and
    disabled ones enabled (not on every open: CREATE TRIGGER locks the table against writers)."""
    if conn.dialect.name == "sqlite":
        have = _sqlite_triggers(conn)
        for g in sqlite_guards():
            if g.name in have and have[g.name][1] == g.sql:
                continue
            if g.name in have:
                conn.exec_driver_sql(f"DROP TRIGGER {_q(g.name)}")
            conn.exec_driver_sql(g.sql)
    elif conn.dialect.name == "postgresql":
        if not guard_problems(conn):  # re-creating locks every table: not while other writers run
            return
        for ddl in _append_only_ddl_pg():
            conn.exec_driver_sql(ddl.replace("%", "%%"))  # the driver reads % as a placeholder
        for name, table, _sql, enabled in _pg_triggers(conn):
            if enabled != "O" and name in {g.name for g in pg_guards()}:
                conn.exec_driver_sql(f"ALTER TABLE {_q(table)} ENABLE TRIGGER {_q(name)}")


def _pg_triggers(conn: Connection) -> list[tuple[str, str, str, str]]:
    """(name, table, definition, enabled flag) of the user triggers on tables of the current schema."""
    rows = conn.exec_driver_sql(
        "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid), t.tgenabled FROM pg_trigger t "
        "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT t.tgisinternal AND n.nspname = current_schema()")
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def _compare(expected: Iterable[Guard], have: dict[str, tuple[str, str]], schema: str) -> list[Problem]:
    out: list[Problem] = []
    want = {g.name: g for g in expected}
    for g in want.values():
        if g.name not in have:
            out.append(Problem(None, g.table, None, ProblemKind.GUARD,
                               f"append-only trigger {g.name} is missing (dropped)"))
        elif have[g.name][1] != g.sql.replace("{schema}", schema):
            out.append(Problem(None, g.table, None, ProblemKind.GUARD,
                               f"append-only trigger {g.name} differs from its definition (replaced): "
                               f"{' '.join(have[g.name][1].split())[:120]}"))
    for name, (table, _sql) in sorted(have.items()):
        if name not in want and table in _OUR_TABLES:
            out.append(Problem(None, table, None, ProblemKind.GUARD, f"trigger {name} is not one of the store's"))
    return out


def guard_problems(conn: Connection) -> list[Problem]:
    """What is wrong with the append-only triggers (empty when every one is in place, as defined)."""
    if conn.dialect.name == "sqlite":
        return _compare(sqlite_guards(), _sqlite_triggers(conn), "")
    if conn.dialect.name != "postgresql":
        return []
    rows = _pg_triggers(conn)
    schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
    out = _compare(pg_guards(), {n: (t, s) for n, t, s, _e in rows}, schema)
    out += [Problem(None, t, None, ProblemKind.GUARD, f"append-only trigger {n} is disabled")
            for n, t, _s, e in rows if e not in ("O", "A") and t in _OUR_TABLES]
    body = conn.execute(sa.text("SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                "WHERE p.proname = :f AND n.nspname = current_schema()"),
                        {"f": PG_GUARD_FN_NAME}).scalar()
    if body is None:
        out.append(Problem(None, "run", None, ProblemKind.GUARD, f"trigger function {PG_GUARD_FN_NAME} is missing"))
    elif body != PG_GUARD_FN_BODY:
        out.append(Problem(None, "run", None, ProblemKind.GUARD,
                           f"trigger function {PG_GUARD_FN_NAME} differs from its definition (replaced)"))
    return out
