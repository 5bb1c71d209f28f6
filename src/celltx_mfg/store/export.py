"""Exports: every table as CSV or Parquet, and one batch's whole GMP record for a reviewer."""

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ._common import StoreError, _reading, _where
from .schema import _ALL_TABLES, _BY_NAME, _SPECS, CORRECTION, RUN, _Spec


def _table_frame(conn: Connection, t: sa.Table, run_ids: Sequence[int] | None) -> pd.DataFrame:
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
    res = conn.execute(q.order_by(*order))
    df = pd.DataFrame(res.fetchall(), columns=list(res.keys()))
    if "digest" in df.columns:
        df["digest"] = [d.hex() if isinstance(d, bytes) else d for d in df["digest"]]
    return df


def _export(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None, suffix: str,
            write: Callable[[pd.DataFrame, Path], None]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with _reading(engine) as conn:
        for t in _ALL_TABLES:
            p = out / f"{t.name}.{suffix}"
            write(_table_frame(conn, t, run_ids), p)
            paths.append(p)
    return paths


def export_csv(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None = None) -> list[Path]:
    """One CSV per table (runs, scenarios, corrections and every record table); digests as hex."""
    return _export(engine, out_dir, run_ids, "csv", lambda df, p: df.to_csv(p, index=False))


def export_parquet(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None = None) -> list[Path]:
    """One Parquet file per table, same content as ``export_csv``."""
    return _export(engine, out_dir, run_ids, "parquet", lambda df, p: df.to_parquet(p, index=False))


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
    df.to_csv(out, index=False)
    return len(df)

