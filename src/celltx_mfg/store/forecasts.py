"""Forecasts in the batch log: ``write_forecast`` stores what ``celltx forecast --db`` told the plant,
``read_forecasts`` / ``read_forecast`` give it back as the typed ``ForecastResult`` it was made from.

A forecast is a record of what was predicted on a day, so it is kept like the batch record: written whole
in one transaction (the ``forecast`` row, one ``forecast_patient`` row per live patient, one
``forecast_load`` row per resource and week), append-only (store/guards.py), every row chained by sha256
from a genesis of the forecast's id and hashes, the forecast row sealing the chain's head, and the seal
entered in the keyed ledger (kind ``forecast``) so that ``verify`` finds an edit, a removal or a forecast
written outside celltx, like for runs (store/forecast_check.py).

Importing this module imports the forecast's result types (celltx_mfg.forecast.result), so the store
package does not import it itself: ``from celltx_mfg.store.forecasts import write_forecast``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..forecast.result import Band, ForecastResult, LoadKind, PatientForecast, WeekLoad
from . import _common
from ._common import DB_ERRORS, StoreError, _package_version, _reading, _reason, _where, _write_txn
from .forecast_seals import LOAD_COLUMNS, PATIENT_COLUMNS, Column, forecast_seal, genesis, row_body
from .keys import signing_keys
from .schema import FORECAST, FORECAST_LOAD, FORECAST_PATIENT
from .seals import _PG_LEDGER_LOCK, Entry, append

# ------------------------------------------------------------------------------------------ writing
_WRITE_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, TypeError, ValueError)

def _iso(v: dt.datetime | None) -> str | None:
    return None if v is None else v.isoformat()


def _quantile_iso(v: Any) -> str | None:
    """A date quantile as stored: ISO text, or NULL for "after the horizon"."""
    return v.isoformat() if isinstance(v, dt.datetime) else None


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def patient_values(p: PatientForecast) -> tuple[Any, ...]:
    """One patient's forecast as its row's values (PATIENT_COLUMNS order)."""
    r, i = p.release, p.infusion
    return (p.coi, p.stage, _quantile_iso(r.p10), _quantile_iso(r.p50), _quantile_iso(r.p90),
            _quantile_iso(i.p10), _quantile_iso(i.p50), _quantile_iso(i.p90),
            _finite(p.p_infused_by_booked_date), float(p.p_lost), _iso(p.booked_infusion), bool(p.at_risk))


def load_values(kind: LoadKind, w: WeekLoad) -> tuple[Any, ...]:
    """One week of one resource's load as its row's values (LOAD_COLUMNS order)."""
    u = w.utilisation
    return (kind.value, int(w.week), w.start.isoformat(), _finite(u.p10), _finite(u.p50), _finite(u.p90))


def _next_id(conn: Connection) -> int:
    """The new forecast's id, under the ledger lock on PostgreSQL (SQLite's write lock is already held)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LEDGER_LOCK})
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(FORECAST.c.id), 0))).scalar_one()) + 1


def _chain(fid: int, prev: bytes, table: sa.Table, columns: Sequence[Column],
           rows: Sequence[tuple[Any, ...]]) -> tuple[list[dict[str, Any]], bytes]:
    out = []
    for seq, vals in enumerate(rows):
        prev = hashlib.sha256(prev + row_body(table.name, columns, fid, seq, vals)).digest()
        out.append({"forecast_id": fid, "row_seq": seq, **dict(zip((c[0] for c in columns), vals, strict=True)),
                    "digest": prev})
    return out, prev


def _insert(conn: Connection, result: ForecastResult, label: str | None) -> tuple[int, bytes]:
    fid = _next_id(conn)
    patients = [patient_values(p) for p in result.ranked()]
    loads = [load_values(kind, w) for kind, weeks in result.capacity.items() for w in weeks]
    prev = genesis(fid, result.scenario_hash, result.state_hash)
    patient_rows, prev = _chain(fid, prev, FORECAST_PATIENT, PATIENT_COLUMNS, patients)
    load_rows, prev = _chain(fid, prev, FORECAST_LOAD, LOAD_COLUMNS, loads)
    row: dict[str, Any] = {
        "created": _common._now(), "as_of": result.as_of.isoformat(), "replications": int(result.replications),
        "horizon_days": float(result.horizon_days), "scenario_name": result.scenario_name,
        "scenario_hash": result.scenario_hash, "state_hash": result.state_hash, "seed": int(result.seed),
        "package_version": _package_version(), "label": label, "patient_count": len(patient_rows),
        "load_count": len(load_rows), "chain_head": prev.hex()}
    digest = forecast_seal(fid, row)
    conn.execute(sa.insert(FORECAST).values(id=fid, digest=digest, **row))
    for table, rows in ((FORECAST_PATIENT, patient_rows), (FORECAST_LOAD, load_rows)):
        if rows:
            conn.execute(sa.insert(table), rows)
    return fid, digest


def write_forecast(engine: Engine, result: ForecastResult, scenario_text: str | None = None,
                   label: str | None = None) -> int:
    """Store one forecast whole (rows, chain, seal and ledger entry in one transaction); returns its id.
    A failed write leaves nothing; the error is one ``StoreError`` line naming the store.
    ``scenario_text`` (what the CLI passes) is not stored: the forecast names its scenario by
    ``result.scenario_hash``, and the text of a scenario lives with the runs made from it."""
    del scenario_text
    ring = signing_keys()
    try:
        with _write_txn(engine) as conn:
            fid, digest = _insert(conn, result, label)
            append(conn, ring, [Entry("forecast", fid, digest)])
        return fid
    except StoreError:
        raise
    except _WRITE_ERRORS as e:
        raise StoreError(f"forecast not written to {_where(engine)}: {_reason(e)}") from e


# ------------------------------------------------------------------------------------------ reading

@dataclass(frozen=True)
class StoredForecast:
    """A forecast as the store holds it: its id, when it was written, its label, and the result."""

    id: int
    created: str
    label: str | None
    package_version: str
    result: ForecastResult


def _when(v: str | None) -> dt.datetime | None:
    return None if v is None else dt.datetime.fromisoformat(v)


def _patient(r: Mapping[str, Any]) -> PatientForecast:
    def band(what: str) -> Band:
        return Band(_when(r[f"{what}_p10"]), _when(r[f"{what}_p50"]), _when(r[f"{what}_p90"]))

    booked = r["p_infused_by_booked_date"]
    return PatientForecast(coi=str(r["coi"]), stage=str(r["stage"]), release=band("release"),
                           infusion=band("infusion"),
                           p_infused_by_booked_date=None if booked is None else float(booked),
                           p_lost=float(r["p_lost"]), booked_infusion=_when(r["booked_infusion"]))


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _capacity(rows: Sequence[Mapping[str, Any]]) -> dict[LoadKind, list[WeekLoad]]:
    out: dict[LoadKind, list[WeekLoad]] = {}
    for r in rows:
        band = Band(_float(r["p10"]), _float(r["p50"]), _float(r["p90"]))
        out.setdefault(LoadKind(r["resource"]), []).append(
            WeekLoad(week=int(r["week"]), start=dt.datetime.fromisoformat(r["start"]), utilisation=band))
    return out


def _rows_of(conn: Connection, table: sa.Table, fids: Sequence[int]) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {f: [] for f in fids}
    q = sa.select(table).where(table.c.forecast_id.in_(fids)).order_by(table.c.forecast_id, table.c.row_seq)
    for r in conn.execute(q).mappings():
        out[int(r["forecast_id"])].append(r)
    return out


def _stored(f: Any, patients: Sequence[Any], loads: Sequence[Any]) -> StoredForecast:
    result = ForecastResult(
        as_of=dt.datetime.fromisoformat(f["as_of"]), replications=int(f["replications"]),
        horizon_days=float(f["horizon_days"]), scenario_name=str(f["scenario_name"]),
        scenario_hash=str(f["scenario_hash"]), state_hash=str(f["state_hash"]), seed=int(f["seed"]),
        patients=[_patient(r) for r in patients], capacity=dict(_capacity(loads)))
    return StoredForecast(int(f["id"]), str(f["created"]), f["label"], str(f["package_version"]), result)


def read_forecasts(engine: Engine, forecast_id: int | None = None, limit: int | None = None) -> list[StoredForecast]:
    """The stored forecasts, newest first (or the one of ``forecast_id``; ``limit`` the newest N). A
    store without the forecast tables (a dashboard on an old, read-only store) has none."""
    with _reading(engine, "read the forecasts of") as conn:
        if FORECAST.name not in sa.inspect(conn).get_table_names():
            return []
        q = sa.select(FORECAST).order_by(FORECAST.c.id.desc())
        if forecast_id is not None:
            q = q.where(FORECAST.c.id == forecast_id)
        if limit is not None:
            q = q.limit(limit)
        heads = list(conn.execute(q).mappings())
        fids = [int(f["id"]) for f in heads]
        patients, loads = _rows_of(conn, FORECAST_PATIENT, fids), _rows_of(conn, FORECAST_LOAD, fids)
    return [_stored(f, patients[int(f["id"])], loads[int(f["id"])]) for f in heads]


def read_forecast(engine: Engine, forecast_id: int | None = None) -> StoredForecast:
    """One stored forecast (the newest when ``forecast_id`` is None); none is a ``StoreError`` that says
    which forecasts there are."""
    found = read_forecasts(engine, forecast_id, limit=1)
    if found:
        return found[0]
    ids = [f.id for f in read_forecasts(engine, limit=10)]
    have = f"stored forecasts (newest first): {', '.join(map(str, ids))}" if ids else \
        "it holds no forecast (celltx forecast STATE --scenario FILE --db ... stores one)"
    what = "no forecast" if forecast_id is None else f"no forecast {forecast_id}"
    raise StoreError(f"{what} in {_where(engine)}: {have}")
