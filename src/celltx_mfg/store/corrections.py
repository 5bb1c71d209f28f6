"""Corrections after first entry: a new row naming the record row it supersedes, with a reason, an
actor and a time, chained on from the run's chain head and entered in the keyed ledger (so removing the
last corrections is seen too). The record row itself is never touched."""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import _common
from ._common import DB_ERRORS, StoreError, _reason, _where, _write_txn
from .hashing import _correction_body
from .keys import signing_keys
from .schema import _BY_NAME, CORRECTION, RECORD_TABLES, RUN, _Spec
from .seals import Entry, append


def _checked_spec(table: str, new_values: Mapping[str, Any], reason: str, actor: str) -> _Spec:
    """The table's spec, once the correction names real fields and is attributable."""
    if table not in _BY_NAME:
        raise StoreError(f"no record table {table!r}; tables: {', '.join(RECORD_TABLES)}")
    spec = _BY_NAME[table]
    unknown = sorted(set(new_values) - set(spec.fields))
    if unknown or not new_values:
        raise StoreError(f"correction of {table}: fields {unknown or '(none given)'} are not fields of "
                         f"{table}: {', '.join(spec.fields)}")
    if not reason.strip() or not actor.strip():
        raise StoreError("a correction needs a reason and an actor (who, or which role)")
    return spec


def _values_json(new_values: Mapping[str, Any]) -> str:
    try:
        return json.dumps({k: new_values[k] for k in sorted(new_values)}, sort_keys=True,
                          default=lambda v: v.item() if hasattr(v, "item") else str(v))
    except (TypeError, ValueError) as e:
        raise StoreError(f"correction values are not recordable: {e}") from e


def _chain_tip(conn: Connection, spec: _Spec, run_id: int, row_seq: int, where: str) -> bytes:
    """The link a new correction of the run chains on: its last correction, else the run's chain head."""
    head = conn.execute(sa.select(RUN.c.chain_head).where(RUN.c.id == run_id)).first()
    if head is None or head[0] is None:
        raise StoreError(f"no run {run_id} in {where}")
    t = spec.table
    hit = conn.execute(sa.select(t.c.row_seq).where(t.c.run_id == run_id, t.c.row_seq == row_seq)).first()
    if hit is None:
        raise StoreError(f"run {run_id} has no {spec.name} row {row_seq}")
    last = conn.execute(sa.select(CORRECTION.c.digest).where(CORRECTION.c.run_id == run_id)
                        .order_by(CORRECTION.c.id.desc()).limit(1)).scalar()
    return last if last is not None else bytes.fromhex(head[0])


def record_correction(engine: Engine, run_id: int, table: str, row_seq: int, reason: str,
                      new_values: Mapping[str, Any], actor: str) -> int:
    """Record a correction of one GMP row after first entry; the row itself is never touched.

    ``new_values`` maps field names of that table to their corrected values; ``reason`` and ``actor``
    (person or role) make it attributable. Corrections chain on from the run's chain head, so removing
    or editing one is detectable too. Returns the correction id.
    """
    spec = _checked_spec(table, new_values, reason, actor)
    values_json = _values_json(new_values)
    where = _where(engine)
    ring = signing_keys()
    try:
        with _write_txn(engine) as conn:
            prev = _chain_tip(conn, spec, run_id, row_seq, where)
            time = _common._now()
            digest = hashlib.sha256(prev + _correction_body(run_id, table, row_seq, reason, values_json,
                                                            time, actor)).digest()
            res = conn.execute(sa.insert(CORRECTION).values(run_id=run_id, table_name=table, row_seq=row_seq,
                                                            reason=reason, new_values_json=values_json,
                                                            time=time, actor=actor, digest=digest))
            correction_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            append(conn, ring, [Entry("correction", correction_id, digest)])
        return correction_id
    except StoreError:
        raise
    except DB_ERRORS as e:
        raise StoreError(f"correction not written to {where}: {_reason(e)}") from e
