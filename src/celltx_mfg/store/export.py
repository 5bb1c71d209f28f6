"""Exports: every table as CSV or Parquet, and one batch's whole GMP record for a reviewer.

Each file is written whole or not at all: into a hidden temporary file beside it, synced, then renamed
over the name asked for, so a full disk or a killed export never leaves a file cut mid-row (an older file of
that name stays as it was)."""

import datetime as dt
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import Connection, Engine

from ..config import DEFAULT_START_DATE
from ._common import StoreError, _reading, _where
from .arrow_schema import CATEGORY, SCHEMAS, TABLES, TIMESTAMP, Column
from .schema import _ALL_TABLES, _BY_NAME, _SPECS, CORRECTION, RUN, SCENARIO, _Spec


def _select(t: sa.Table, run_ids: Sequence[int] | None) -> sa.Select[Any]:
    q = sa.select(t)
    if run_ids is not None:
        ids = [int(i) for i in run_ids]
        if t.name == "run":
            q = q.where(t.c.id.in_(ids))
        elif "run_id" in t.c:
            q = q.where(t.c.run_id.in_(ids))
        elif t.name == "scenario":
            q = q.where(t.c.id.in_(sa.select(RUN.c.scenario_id).where(RUN.c.id.in_(ids))))
    order = [t.c.run_id, t.c.row_seq] if "row_seq" in t.c and t.name != "correction" else [list(t.primary_key)[0]]
    return q.order_by(*order)


def _start_date(text: str) -> dt.date:
    """A scenario's ``start_date`` (day 0), read from its stored YAML; the config default if unset."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    value = data.get("start_date") if isinstance(data, dict) else None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    return DEFAULT_START_DATE


def _run_starts(conn: Connection) -> dict[int, int]:
    """Each run's day 0 as microseconds since the epoch (its scenario's ``start_date``, 00:00 UTC)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    by_scenario: dict[int, int] = {}
    for sid, text in conn.execute(sa.select(SCENARIO.c.id, SCENARIO.c.text)):
        day0 = dt.datetime.combine(_start_date(str(text)), dt.time(), tzinfo=UTC)
        by_scenario[int(sid)] = (day0 - epoch) // dt.timedelta(microseconds=1)
    return {int(rid): by_scenario[int(sid)] for rid, sid in conn.execute(sa.select(RUN.c.id, RUN.c.scenario_id))}


def _timestamps(values: list[Any]) -> pa.Array:
    """ISO-8601 text (naive means UTC) as UTC timestamps."""
    out: list[dt.datetime | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        t = v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(str(v))
        out.append(t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC))
    return pa.array(out, type=TIMESTAMP)


def _day0(run_ids: list[Any], starts: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's day 0 (microseconds since the epoch) and whether its run's start is unknown."""
    ids = pd.Series(np.asarray(run_ids, dtype=np.int64))
    base = ids.map(starts)
    return base.fillna(0).to_numpy(dtype=np.int64), base.isna().to_numpy()


def _event_times(days: pa.Array, day0: tuple[np.ndarray, np.ndarray]) -> pa.Array:
    """``start_date + days`` of each row's run, to the microsecond."""
    d = days.to_numpy(zero_copy_only=False).astype(np.float64)
    base, unknown = day0
    us = base + np.round(np.nan_to_num(d) * 86_400_000_000).astype(np.int64)
    return pa.array(us, type=pa.int64(), mask=np.isnan(d) | unknown).cast(TIMESTAMP)


def _column(col: Column, values: list[Any]) -> pa.Array:
    if col.type == TIMESTAMP:
        return _timestamps(values)
    if col.type == pa.bool_():
        return pa.array([None if v is None else bool(v) for v in values], type=pa.bool_())
    if col.type == CATEGORY:
        return pa.array(values, type=pa.string()).dictionary_encode().cast(CATEGORY)
    if col.type == pa.string():
        values = [bytes(v).hex() if isinstance(v, bytes | memoryview) else v for v in values]
    return pa.array(values, type=col.type)


def table_arrow(conn: Connection, t: sa.Table, run_ids: Sequence[int] | None = None,
                starts: dict[int, int] | None = None) -> pa.Table:
    """One table's rows as Arrow, with exactly the declared schema (``arrow_schema.SCHEMAS``), also when
    empty: digests as hex, entry times as UTC timestamps, each event time also as ``<field>_at``."""
    rows = conn.execute(_select(t, run_ids)).fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in t.columns]
    stored = {str(c.name): list(v) for c, v in zip(t.columns, columns, strict=True)}
    if starts is None and any(c.days_of for c in TABLES[t.name]):
        starts = _run_starts(conn)
    day0 = _day0(stored["run_id"], starts or {}) if "run_id" in stored else None
    arrays: list[pa.Array] = []
    for col in TABLES[t.name]:
        if col.days_of is None:
            arrays.append(_column(col, stored[col.name]))
        else:  # event times are record-table columns: every row names its run
            assert day0 is not None
            days = arrays[[c.name for c in TABLES[t.name]].index(col.days_of)]
            arrays.append(_event_times(days, day0))
    return pa.Table.from_arrays(arrays, schema=SCHEMAS[t.name])


def _csv_ready(table: pa.Table) -> pa.Table:
    """Same columns for CSV: timestamps as ISO-8601 UTC text (as stored), categories as text."""
    arrays = []
    for f, a in zip(table.schema, table.columns, strict=True):
        if f.type == TIMESTAMP:
            a = pa.array([None if v is None else v.isoformat(timespec="microseconds") for v in a.to_pylist()],
                         type=pa.string())
        elif pa.types.is_dictionary(f.type):
            a = a.cast(pa.string())
        arrays.append(a)
    return pa.Table.from_arrays(arrays, names=table.schema.names)


_CSV_DTYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` into a temporary file next to ``path``, synced to disk, then renamed to ``path``; on any
    failure the temporary file is removed and ``path`` is untouched."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:  # named by the file asked for, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_csv(table: pa.Table, path: Path) -> None:
    """Through pandas' nullable integer and boolean dtypes: integers stay integers next to nulls."""
    _csv_ready(table).to_pandas(types_mapper=_CSV_DTYPES.get).to_csv(path, index=False)


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def _export(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None, suffix: str,
            write: Callable[[pa.Table, Path], None]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with _reading(engine) as conn:
        starts = _run_starts(conn)
        for t in _ALL_TABLES:
            p = out / f"{t.name}.{suffix}"
            _atomic(p, partial(write, table_arrow(conn, t, run_ids, starts)))
            paths.append(p)
    return paths


def export_csv(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None = None) -> list[Path]:
    """One CSV per table (runs, scenarios, corrections and every record table), the same columns as
    ``export_parquet``: digests as hex, timestamps ISO-8601 UTC, integers as integers."""
    return _export(engine, out_dir, run_ids, "csv", _write_csv)


def export_parquet(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None = None) -> list[Path]:
    """One Parquet file per table with its declared Arrow schema (``store.arrow_schema``; see
    docs/data-dictionary.md), the same schema when a table is empty."""
    return _export(engine, out_dir, run_ids, "parquet", _write_parquet)


def _newest_run_of(conn: Connection, coi: str) -> int | None:
    """The newest run with a patient (else a batch) of this chain-of-identity id."""
    for spec in (_BY_NAME["patient"], _BY_NAME["batch"]):
        t = spec.table
        found = conn.execute(sa.select(sa.func.max(t.c.run_id)).where(t.c.coi == coi)).scalar()
        if found is not None:
            return int(found)
    return None


def _correction_notes(conn: Connection, run_id: int) -> dict[tuple[str, int], list[str]]:
    c = CORRECTION
    notes: dict[tuple[str, int], list[str]] = defaultdict(list)
    for row in conn.execute(sa.select(c).where(c.c.run_id == run_id).order_by(c.c.id)).mappings():
        notes[(row["table_name"], row["row_seq"])].append(
            f"{row['time']} {row['actor']}: {row['reason']} -> {row['new_values_json']}")
    return notes


def _coi_rows(conn: Connection, spec: _Spec, order: int, run_id: int, coi: str) -> pd.DataFrame:
    """One table's rows of the batch, with when they happened (the table's first time field that is set)."""
    t = spec.table
    res = conn.execute(sa.select(t).where(t.c.run_id == run_id, t.c.coi == coi).order_by(t.c.row_seq))
    df = pd.DataFrame(res.fetchall(), columns=list(res.keys()))
    if df.empty:
        return df
    # nullable integer and boolean dtypes: concatenating tables must not turn integers into floats
    ints = {"run_id": "Int64", "row_seq": "Int64"}
    ints.update({f: {"int": "Int64", "bool": "boolean"}[k] for f, k in zip(spec.fields, spec.kinds, strict=True)
                 if k in ("int", "bool")})
    df = df.astype(ints)
    when = pd.Series(np.nan, index=df.index)
    for f in spec.time_fields:
        when = when.fillna(pd.to_numeric(df[f], errors="coerce"))
    df.insert(1, "table", spec.name)
    df.insert(3, "sim_time", when)
    df.insert(4, "table_order", order)
    df["digest"] = [d.hex() for d in df["digest"]]
    return df


def _batch_record(parts: list[pd.DataFrame], notes: dict[tuple[str, int], list[str]]) -> pd.DataFrame:
    """The rows in simulation-time order, with their corrections, the digest last."""
    df = pd.concat(parts, ignore_index=True, sort=False)
    df = df.sort_values(["sim_time", "table_order", "row_seq"], na_position="last", kind="stable")
    said = [" | ".join(notes.get((t, int(s)), [])) for t, s in zip(df["table"], df["row_seq"], strict=True)]
    df.insert(4, "corrected", [bool(n) for n in said])
    df.insert(5, "corrections", said)
    df = df.drop(columns=["table_order"])
    digest = df.pop("digest")
    df["digest"] = digest
    return df


def export_batch_csv(engine: Engine, coi: str, out_path: str | Path, run_id: int | None = None) -> int:
    """A batch's whole GMP record for a reviewer: every row of every table for one chain-of-identity
    id, in simulation-time order (column ``sim_time``, days), one CSV; ``corrected`` marks rows changed
    after first entry and ``corrections`` says how, when, by whom and why. Without ``run_id`` the newest
    run holding the id is used. Returns the number of record rows written."""
    where = _where(engine)
    with _reading(engine) as conn:
        if run_id is None:
            run_id = _newest_run_of(conn, coi)
        if run_id is None:
            raise StoreError(f"no record of {coi} in {where}")
        notes = _correction_notes(conn, run_id)
        parts = [_coi_rows(conn, spec, order, run_id, coi) for order, spec in enumerate(_SPECS)
                 if "coi" in spec.fields]
        parts = [p for p in parts if not p.empty]
    if not parts:
        raise StoreError(f"no record of {coi} in run {run_id} of {where}")
    df = _batch_record(parts, notes)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic(out, lambda tmp: df.to_csv(tmp, index=False))
    return len(df)

