"""The forecast tables' digests (store/forecasts.py writes them, store/forecast_check.py checks them):
canonical row bytes, the chain's genesis and the forecast row's seal.

The row bytes are JSON of the values as their column's kind (no generated code as for the record
tables: a forecast has tens of rows, a run millions). Nothing here imports the forecast engine, so
``verify`` checks forecasts without it.
"""

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from .schema import FORECAST_LOAD, FORECAST_PATIENT

# (column, kind, optional) of the chained row tables, in column order after (forecast_id, row_seq)
Column = tuple[str, str, bool]
PATIENT_COLUMNS: tuple[Column, ...] = (
    ("coi", "str", False), ("stage", "str", False),
    *((f"{what}_{q}", "str", True) for what in ("release", "infusion") for q in ("p10", "p50", "p90")),
    ("p_infused_by_booked_date", "float", True), ("p_lost", "float", False),
    ("booked_infusion", "str", True), ("at_risk", "bool", False))
LOAD_COLUMNS: tuple[Column, ...] = (
    ("resource", "str", False), ("week", "int", False), ("start", "str", False),
    ("p10", "float", True), ("p50", "float", True), ("p90", "float", True))
CHAINED: tuple[tuple[sa.Table, tuple[Column, ...]], ...] = ((FORECAST_PATIENT, PATIENT_COLUMNS),
                                                            (FORECAST_LOAD, LOAD_COLUMNS))
# the forecast row's fields its seal covers, besides its id
SEALED = ("created", "as_of", "replications", "horizon_days", "scenario_name", "scenario_hash", "state_hash",
          "seed", "package_version", "label", "patient_count", "load_count", "chain_head")


# ------------------------------------------------------------------------------------------ digests

def _value(kind: str, optional: bool, v: Any) -> Any:
    """A stored value as its column's kind (SQLite gives booleans back as 0/1); a value of another kind
    raises TypeError: not what celltx wrote."""
    if v is None:
        if optional:
            return None
        raise TypeError("NULL in a required column")
    if kind == "str" and isinstance(v, str):
        return v
    if kind == "int" and isinstance(v, int) and not isinstance(v, bool):
        return v
    if kind == "float" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    if kind == "bool" and v in (0, 1):
        return bool(v)
    raise TypeError(f"{v!r} is not a {kind}")


def row_body(table: str, columns: Sequence[Column], forecast_id: int, seq: int, values: Sequence[Any]) -> bytes:
    """Canonical bytes of one patient or load row (its forecast and position included)."""
    vals = [_value(k, opt, v) for (_n, k, opt), v in zip(columns, values, strict=True)]
    return table.encode() + b"\0" + json.dumps([forecast_id, seq, *vals], separators=(",", ":")).encode()


def genesis(forecast_id: int, scenario_hash: str, state_hash: str) -> bytes:
    """First link of a forecast's chain: binds its rows to the forecast, its scenario and its state."""
    return hashlib.sha256(b"forecast genesis\0" + json.dumps([forecast_id, scenario_hash, state_hash],
                                                              separators=(",", ":")).encode()).digest()


def forecast_seal(forecast_id: int, row: Mapping[str, Any]) -> bytes:
    """The forecast row's own digest: every field and the chain head (what the ledger entry seals)."""
    vals = [row[k] for k in SEALED]
    return hashlib.sha256(b"forecast\0" + json.dumps([forecast_id, *vals], separators=(",", ":")).encode()).digest()
