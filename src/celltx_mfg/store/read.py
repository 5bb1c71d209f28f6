"""Readers: runs, scenarios and the records as first entered, as pandas frames."""

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ._common import StoreError, _q, _reading, _where
from .schema import _SPECS, _Spec


def _run_rows(conn: Connection, spec: _Spec, cols: Sequence[str], rid: int,
              raw: bool | None = None) -> Iterable[Sequence[Any]]:
    """One run's rows of a table in row order. SQLite goes through the DB-API cursor: plain tuples,
    several times faster than SQLAlchemy rows for a million of them (booleans come back as 0/1)."""
    t = spec.table
    if raw if raw is not None else conn.dialect.name == "sqlite":
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        return cur.execute(f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(spec.name)} "
                           "WHERE run_id = ? ORDER BY row_seq", (rid,))
    return conn.execute(sa.select(*(t.c[c] for c in cols)).where(t.c.run_id == rid).order_by(t.c.row_seq))


def _read(engine: Engine, sql: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    with _reading(engine) as conn:
        res = conn.execute(sql, params or {})
        return pd.DataFrame(res.fetchall(), columns=list(res.keys()))


def list_runs(engine: Engine) -> pd.DataFrame:
    """One row per stored run, oldest first, with its scenario and patient count."""
    sql = sa.text(
        "SELECT r.id, s.name AS scenario, s.content_hash AS scenario_hash, r.scenario_id, r.replication, "
        "r.seed, r.label, r.started, r.finished, r.horizon, r.warmup, r.events, r.package_version, "
        "(SELECT COUNT(*) FROM patient p WHERE p.run_id = r.id) AS patients, r.chain_head "
        "FROM run r JOIN scenario s ON s.id = r.scenario_id ORDER BY r.id")
    return _read(engine, sql)


def stored_replications(engine: Engine, content_hash: str) -> list[int]:
    """Replication numbers already stored for one scenario text (read now, never cached): what a caller
    that must not store replication r twice (the dashboard's What-if) checks just before it runs."""
    sql = sa.text("SELECT DISTINCT r.replication FROM run r JOIN scenario s ON s.id = r.scenario_id "
                  "WHERE s.content_hash = :h ORDER BY r.replication")
    return [int(x) for x in _read(engine, sql, {"h": content_hash})["replication"]]


def list_scenarios(engine: Engine) -> pd.DataFrame:
    """One row per distinct scenario text, with how many runs used it."""
    sql = sa.text(
        "SELECT s.id, s.name, s.content_hash, s.created, "
        "(SELECT COUNT(*) FROM run r WHERE r.scenario_id = s.id) AS runs FROM scenario s ORDER BY s.id")
    return _read(engine, sql)


def _wanted_specs(tables: Iterable[str] | None) -> list[_Spec]:
    if tables is None:
        return list(_SPECS)
    wanted = set(tables)
    known = {s.attr for s in _SPECS}
    if not wanted <= known:
        raise StoreError(f"unknown tables {sorted(wanted - known)}")
    return [s for s in _SPECS if s.attr in wanted]


def _frame(conn: Connection, spec: _Spec, run_ids: Sequence[int]) -> pd.DataFrame:
    """One table's rows of the runs, built like ``RunRecords.frames()``: booleans as bool (None kept)."""
    names = [f for f in spec.fields if f != "record_digest"]
    rows: list[Sequence[Any]] = []
    for rid in run_ids:
        rows.extend(map(tuple, _run_rows(conn, spec, ["run_id", *names], rid)))
    df = pd.DataFrame(rows, columns=["run_id", *names])
    for f, kind, opt in zip(spec.fields, spec.kinds, spec.optional, strict=True):
        if kind == "bool" and len(df):
            df[f] = df[f].astype(bool) if not opt else df[f].map(lambda v: None if v is None else bool(v))
    if not rows:
        df = df.astype({"run_id": "int64"})
    return df


def load_frames(
    engine: Engine, run_ids: Sequence[int], tables: Iterable[str] | None = None
) -> dict[str, pd.DataFrame]:
    """The runs' records as frames keyed like ``RunRecords.frames()`` (patients, batches, steps, ...).

    Columns are ``run_id`` then the record's fields; booleans come back as bool and missing times as
    None/NaN, built the same way as ``RunRecords.frames()`` so both give the same KPIs. Corrections are
    not applied: these are the records as first entered. ``tables`` limits the read to those frames
    (e.g. ``analysis.KPI_TABLES``): a comparison of many runs need not read every step and test.
    """
    ids = sorted({int(i) for i in run_ids})
    specs = _wanted_specs(tables)
    with _reading(engine) as conn:
        return {spec.attr: _frame(conn, spec, ids) for spec in specs}


def load_run_meta(engine: Engine, run_id: int) -> dict[str, Any]:
    """What the KPIs need besides the records: horizon, warm-up, costs, and where the run came from."""
    df = _read(engine, sa.text(
        "SELECT r.id, r.replication, r.seed, r.label, r.started, r.finished, r.horizon, r.warmup, r.events, "
        "r.package_version, r.costs_json, r.chain_head, r.scenario_id, s.name AS scenario_name, "
        "s.text AS scenario_text, s.content_hash AS scenario_hash "
        "FROM run r JOIN scenario s ON s.id = r.scenario_id WHERE r.id = :rid"), {"rid": int(run_id)})
    if df.empty:
        raise StoreError(f"no run {run_id} in {_where(engine)}")
    meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in df.iloc[0].to_dict().items()}
    meta["costs"] = json.loads(meta.pop("costs_json"))
    meta["run_id"] = meta.pop("id")
    return meta


def scenario_text(engine: Engine, scenario: int | str) -> str:
    """A stored scenario's YAML, by id or by name (the newest text stored under that name)."""
    if isinstance(scenario, int):
        sql = "SELECT text FROM scenario WHERE id = :v"
    else:
        sql = "SELECT text FROM scenario WHERE name = :v ORDER BY id DESC LIMIT 1"
    df = _read(engine, sa.text(sql), {"v": scenario})
    if df.empty:
        raise StoreError(f"no scenario {scenario!r} in {_where(engine)}")
    return str(df.iloc[0, 0])
