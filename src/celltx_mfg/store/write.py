"""Writing runs whole: the run row and every record row in ONE transaction, chained and sealed.

A failed or killed write leaves nothing visible and a reader never sees half a run. SQLite gets the
rows as multi-row INSERTs through the raw DB-API ``executemany``, so logging never dominates a run.
"""

import gc
import hashlib
import itertools
import json
import sqlite3
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection, Engine

from ..records import RunRecords
from . import _common
from ._common import DB_ERRORS, StoreError, _iso, _package_version, _reason, _where, _write_txn
from .hashing import _genesis, _record_hex, _run_seal, scenario_digest
from .keys import Keyring, signing_keys
from .schema import _SPECS, _TABLE_DEFS, RUN, SCENARIO, _Spec
from .seals import Entry, append, sign_releases

# numpy scalars from the model's random streams must bind like the Python numbers they stand for
# (np.float64 and np.str_ subclass float and str and need nothing)
for _int in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
    sqlite3.register_adapter(_int, int)  # type: ignore[arg-type]
for _float in (np.float16, np.float32):
    sqlite3.register_adapter(_float, float)  # type: ignore[arg-type]
sqlite3.register_adapter(np.bool_, bool)

# what a write can fail with besides the database: a record value the row code or SQLite refuses
_WRITE_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, TypeError, ValueError, struct.error, IndexError,
                                              OverflowError, UnicodeError)
_CORE_CHUNK = 5000  # rows per SQLAlchemy insert on other databases
_WANT_TYPE: dict[str, tuple[type, ...]] = {
    "str": (str,), "float": (int, float, np.integer, np.floating), "int": (int, np.integer),
    "bool": (bool, np.bool_, int)}


def _field_fault(spec: _Spec, f: str, k: str, opt: bool, v: Any) -> str:
    """Why one value breaks its column's type or enumeration rule; "" when it does not."""
    enums = _TABLE_DEFS[spec.attr][1]
    if v is None and opt:
        return ""
    if not isinstance(v, _WANT_TYPE[k]) or (k == "float" and not opt and v != v):
        return f"field {f}={v!r} is not a {k}{'' if opt else ' (required)'}"
    if f in enums and v not in enums[f]:
        return f"field {f}={v!r} is not one of {', '.join(enums[f])}"
    if k == "bool" and v not in (0, 1):
        return f"field {f}={v!r} is not a bool"
    return ""


def _diagnose(spec: _Spec, rows: Iterable[Sequence[Any]]) -> tuple[int, str]:
    """Find the row a write choked on and say why: the first that breaks a type, enumeration or
    uniqueness rule (rows go to SQLite in groups, so its message cannot say). Runs only after a
    failure, so it may be slow; ``(-1, "")`` when no row is to blame (disk full, ...)."""
    key = {"patient": "coi", "batch": "batch_no"}.get(spec.name)
    seen: set[Any] = set()
    for seq, row in enumerate(rows):
        if len(row) != len(spec.fields):
            return seq, f"{len(row)} values for {len(spec.fields)} fields"
        for f, k, opt, v in zip(spec.fields, spec.kinds, spec.optional, row, strict=True):
            fault = _field_fault(spec, f, k, opt, v)
            if fault:
                return seq, fault
        if key is not None:
            v = row[spec.fields.index(key)]
            if v in seen:
                return seq, f"{key} {v!r} appears twice in the run"
            seen.add(v)
    return -1, ""


def _insert_sqlite(dbapi_conn: Any, spec: _Spec, rows: Iterator[tuple[Any, ...]]) -> None:
    """executemany of multi-row INSERTs (flattened groups of rows), then the remainder row by row."""
    k, tail = spec.rows_per_insert, []

    def groups() -> Iterator[tuple[Any, ...]]:
        while True:
            part = list(itertools.islice(rows, k))
            if len(part) < k:
                tail.extend(part)
                return
            yield tuple(itertools.chain.from_iterable(part))

    cur = dbapi_conn.cursor()
    try:
        cur.executemany(spec.insert_many_sql, groups())
        if tail:
            cur.executemany(spec.insert_sql, tail)
    finally:
        cur.close()


def _batched(it: Iterator[tuple[Any, ...]], n: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _insert_core(conn: Connection, spec: _Spec, rows: Iterator[tuple[Any, ...]]) -> None:
    """Inserts through SQLAlchemy Core, for databases other than SQLite."""
    cols = spec.columns
    for chunk in _batched(rows, _CORE_CHUNK):
        conn.execute(spec.table.insert(), [dict(zip(cols, t, strict=True)) for t in chunk])


@dataclass(frozen=True)
class _Rows:
    """A table of a spooled run as an iterable that can be read again (to find a failing row)."""

    records: RunRecords
    table: str

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return self.records.rows(self.table)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Millions of fresh tuples: the cyclic collector would rescan them again and again."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Progress:
    """Which table a write is in, so a failure can be traced to the row that caused it."""

    spec: _Spec | None = None
    rows: Iterable[Sequence[Any]] = field(default_factory=tuple)

    def where(self) -> str:
        if self.spec is None:
            return ""
        seq, detail = _diagnose(self.spec, self.rows)
        return f" at {self.spec.name}" + (f" row {seq} ({detail})" if detail else "")


def _run_row(records: RunRecords, label: str | None, started: datetime | None) -> dict[str, Any]:
    """The run row's fields as first inserted (``finished`` and ``chain_head`` come at the end)."""
    return {
        "replication": int(records.replication), "seed": int(records.seed),
        "package_version": _package_version(), "status": "complete", "started": _iso(started),
        "finished": "", "horizon": float(records.horizon), "warmup": float(records.warmup),
        "events": int(records.events),
        "costs_json": json.dumps({str(k): float(v) for k, v in records.costs.items()}, sort_keys=True),
        "label": label,
        "row_counts": json.dumps({spec.name: records.count(spec.attr) for spec in _SPECS}),
    }


def _write_records(conn: Connection, records: RunRecords, run_id: int, prev: bytes, progress: _Progress,
                   bulk_raw: bool, ring: Keyring) -> bytes:
    """Every record table in ``RunRecords.TABLES`` order, extending the chain; returns its last link.
    Each release row is signed by its signer role's key as it goes in."""
    rec: defaultdict[str, Any] = defaultdict(hashlib.sha256)
    state: list[Any] = [None]
    for spec in _SPECS:
        rows: Iterable[Any] = getattr(records, spec.attr) if records.spool is None else _Rows(records, spec.attr)
        if spec.name == "release":  # sign each batch record as it stands
            b = spec.fields.index("batch_no")
            rows = [(*r, _record_hex(rec, r[b])) for r in rows]
            progress.spec, progress.rows = spec, rows
            sign_releases(conn, ring, run_id, rows)
        progress.spec, progress.rows = spec, rows
        state[0] = None
        gen = spec.chain(rows, run_id, prev, rec, state)
        if bulk_raw:
            _insert_sqlite(conn.connection.driver_connection, spec, gen)
        else:
            _insert_core(conn, spec, gen)
        prev = state[0]  # set once the rows are exhausted
    progress.spec = None
    return prev


def _scenario_id(conn: Connection, name: str, text: str, content_hash: str) -> tuple[int, Entry | None]:
    """The scenario's id, stored first if new (then with the ledger entry it needs)."""
    found = conn.execute(sa.select(SCENARIO.c.id).where(SCENARIO.c.content_hash == content_hash)).scalar()
    if found is not None:
        return int(found), None
    created = _common._now()
    values = {"name": name, "text": text, "content_hash": content_hash, "created": created}
    if conn.dialect.name == "postgresql":  # another writer may be storing the same new text right now
        ins = pg_insert(SCENARIO).values(**values).on_conflict_do_nothing(index_elements=["content_hash"])
        sid_or_none = conn.execute(ins.returning(SCENARIO.c.id)).scalar()
        if sid_or_none is None:  # it won: its transaction entered the scenario in the ledger
            return int(conn.execute(sa.select(SCENARIO.c.id).where(SCENARIO.c.content_hash == content_hash))
                       .scalar_one()), None
        sid = int(sid_or_none)
    else:
        sid = int(conn.execute(sa.insert(SCENARIO).values(**values)).inserted_primary_key[0])  # type: ignore[index]
    return sid, Entry("scenario", sid, scenario_digest(sid, name, content_hash, created))


def _write_run(engine: Engine, scenario_name: str, scenario_text: str, records: RunRecords,
               label: str | None, started: datetime | None, finished: datetime | None,
               bulk_raw: bool) -> int:
    where = _where(engine)
    content_hash = hashlib.sha256(scenario_text.encode()).hexdigest()
    row = _run_row(records, label, started)
    progress = _Progress()
    ring = signing_keys()  # before the transaction: a key file problem leaves the store untouched
    try:
        with _collector_paused(), _write_txn(engine) as conn:
            scenario_id, new_scenario = _scenario_id(conn, scenario_name, scenario_text, content_hash)
            res = conn.execute(sa.insert(RUN).values(scenario_id=scenario_id, **row))
            run_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            head = _write_records(conn, records, run_id, _genesis(run_id, content_hash), progress, bulk_raw, ring)
            row["finished"] = _iso(finished)
            row["chain_head"] = head.hex()
            seal = _run_seal(run_id, content_hash, row)
            conn.execute(sa.update(RUN).where(RUN.c.id == run_id)
                         .values(finished=row["finished"], chain_head=row["chain_head"], digest=seal))
            progress.spec = None
            append(conn, ring, [*([new_scenario] if new_scenario else []), Entry("run", run_id, seal)])
        return run_id
    except StoreError:
        raise
    except _WRITE_ERRORS as e:
        raise StoreError(f"run not written to {where}{progress.where()}: {_reason(e)}") from e


def write_run(engine: Engine, scenario_name: str, scenario_text: str, records: RunRecords,
              label: str | None = None, *, started: datetime | None = None,
              finished: datetime | None = None) -> int:
    """Write one run whole, in one transaction, and return its id.

    Either the run row (status 'complete') and every record row commit together, or nothing does. The
    scenario text is stored once per distinct content (sha256). ``started``/``finished`` are the
    simulation's wall-clock times when the caller has them; by default the write's own.
    """
    return _write_run(engine, scenario_name, scenario_text, records, label, started, finished,
                      bulk_raw=engine.dialect.name == "sqlite")
