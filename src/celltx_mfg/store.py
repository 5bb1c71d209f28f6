"""The GMP batch log: every run's records in one SQLite (or other SQLAlchemy) database.

Why it is built this way (REFERENCE.md section 5, ALCOA+ / 21 CFR 11 / EU Annex 11):

* **Whole runs only.** ``write_run`` writes a run row and every record row in ONE transaction, so a failed
  or killed write leaves nothing visible and a reader never sees half a run.
* **Append-only.** Record tables refuse UPDATE and DELETE (SQLite triggers); a correction is a new row in
  ``correction`` naming the row it supersedes, with a reason, an actor and a time.
* **Tamper-evident.** Every record row carries ``digest = sha256(previous digest + canonical row)``; the
  chain starts from a digest of (run id, scenario hash), runs over the run's tables in
  ``RunRecords.TABLES`` order, and ``run.chain_head`` holds the last link; the run row's own ``digest``
  seals its fields and the head. ``verify`` recomputes it and names the run, table and row of
  anything changed, removed or inserted after the fact, even with the triggers dropped.
* **Release is a signature.** A release row stores ``record_digest``: the digest of its batch's record
  (batch row, steps, QC results, deviations) when it was signed; ``verify`` reports the signature invalid
  when the record no longer matches.

Every record table has the record's fields (same names, same order as in :mod:`celltx_mfg.records`)
plus ``run_id``, ``row_seq`` (the row's position within its run and table; ``seq`` is taken by
``StepEvent.seq``) and ``digest``. Writing is fast enough that logging never dominates a run: the
canonical row form is a fixed-layout ``struct`` of the numbers (an int in a float field hashes the same
as the float SQLite reads back) followed by the UTF-8 text, one hashlib call per row, and SQLite gets
the rows as multi-row INSERTs through the raw DB-API ``executemany``.
"""

import gc
import hashlib
import importlib
import importlib.metadata
import itertools
import json
import os
import sqlite3
import struct
import time
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import CheckConstraint, Index, UniqueConstraint, event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelMetaclass

from .records import RunRecords

DEFAULT_DB = "celltx.db"
SCHEMA_VERSION = 1  # PRAGMA user_version of a store this module created

# numpy scalars from the model's random streams must bind like the Python numbers they stand for
# (np.float64 and np.str_ subclass float and str and need nothing)
for _t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
    sqlite3.register_adapter(_t, int)
for _t in (np.float16, np.float32):
    sqlite3.register_adapter(_t, float)
sqlite3.register_adapter(np.bool_, bool)


class StoreError(Exception):
    """The store cannot be opened, read or written (path, permissions, full disk, not a database, a
    record the schema refuses). The message is one line naming the database."""


class Problem(NamedTuple):
    """One integrity finding of ``verify``."""

    run_id: int | None
    table: str
    row_seq: int | None
    kind: str  # changed | removed | inserted | signature | chain_head | missing
    detail: str

    def __str__(self) -> str:
        where = f"run {self.run_id}" if self.run_id is not None else "store"
        row = f" row {self.row_seq}" if self.row_seq is not None else ""
        return f"{where} {self.table}{row}: {self.kind}: {self.detail}"


# ---------------------------------------------------------------------------------------------- schema

RESOURCE_KINDS = ("suite", "incubator", "closed_device", "freezer", "operators", "qc_analysts",
                  "qa_reviewers", "apheresis", "manufacturing_slot", "infusion")
RELEASE_MODES = ("full", "conditional", "exceptional_oos")
SIGNATURE_MEANINGS = ("performed", "verified", "reviewed", "approved", "released")

# record attribute -> (table, {enumerated field: allowed values}, batch-record time fields)
_TABLE_DEFS: dict[str, tuple[str, dict[str, tuple[str, ...]], tuple[str, ...]]] = {
    "patients": ("patient", {"status": ("infused", "lost", "in_progress")}, ("referred",)),
    "batches": ("batch", {"status": ("infused", "released", "failed", "expired", "in_progress", "abandoned"),
                          "release_mode": RELEASE_MODES}, ("apheresis_start", "slot_day", "received")),
    "steps": ("step_event", {"outcome": ("ok", "failed")}, ("start",)),
    "resource_uses": ("resource_use", {"kind": RESOURCE_KINDS}, ("start",)),
    "qc_results": ("qc_test", {"result": ("pass", "fail")}, ("sampled",)),
    "deviations": ("deviation", {"severity": ("minor", "major", "critical")}, ("time",)),
    "shipments": ("shipment", {"direction": ("inbound", "outbound"), "condition": ("2-8C", "<=-150C")},
                  ("depart",)),
    "releases": ("release", {"mode": RELEASE_MODES, "signer_role": ("qualified_person",),
                             "meaning": SIGNATURE_MEANINGS}, ("time",)),
    "resources": ("resource", {"kind": RESOURCE_KINDS}, ()),
}
# the rows a release signs: its batch's record
_BATCH_RECORD_TABLES = ("batch", "step_event", "qc_test", "deviation")
_KIND = {str: "str", float: "float", int: "int", bool: "bool"}


@dataclass(frozen=True)
class _Spec:
    """One record table: where its rows come from, its columns, and its compiled row digest code."""

    attr: str  # RunRecords attribute
    name: str  # SQL table
    fields: tuple[str, ...]  # record fields (+ record_digest for release)
    kinds: tuple[str, ...]
    optional: tuple[bool, ...]
    time_fields: tuple[str, ...]
    model: type
    insert_sql: str  # one row
    insert_many_sql: str  # rows_per_insert rows: SQLite does a fifth less work per row than one by one
    rows_per_insert: int
    body: Callable[[Sequence[Any], int, int], bytes]  # canonical bytes of one row
    chain: Callable[..., Iterator[tuple]]  # rows -> insert tuples, extending the chain

    @property
    def table(self) -> sa.Table:
        return self.model.__table__  # type: ignore[attr-defined]

    @property
    def columns(self) -> tuple[str, ...]:
        return ("run_id", "row_seq", *self.fields, "digest")


def _q(name: str) -> str:
    return '"' + name + '"'


def _field_kind(tp: Any) -> tuple[str, bool]:
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _KIND[inner[0]], True
    return _KIND[tp], False


def _compile(name: str, kinds: Sequence[str], optional: Sequence[bool], batch_idx: int | None,
             batch_optional: bool) -> tuple[Callable, Callable]:
    """Generate the row serialiser and the chaining generator for one table.

    Generated rather than generic because this runs once per row for a million rows: the inlined
    form is about twice as fast as a loop over field descriptors. Canonical row = struct(table name,
    run_id, row_seq, numbers, null flags, text lengths) + UTF-8 text of the strings; lengths make it
    unambiguous, a null flag tells None from 0 or "", and NaN counts as None because SQLite stores
    NaN as NULL.
    """
    fmt, args, texts = ["<", f"{len(name.encode())}s", "q", "q"], ["NAME", "run_id", "seq"], []
    for i, (kind, opt) in enumerate(zip(kinds, optional)):
        v = f"r[{i}]"
        if kind == "str":
            if opt:
                fmt += ["B", "I"]
                args += [f"{v} is None", f'len("" if {v} is None else {v})']
                texts.append(f"'' if {v} is None else {v}")
            else:
                fmt.append("I")
                args.append(f"len({v})")
                texts.append(v)
        else:
            code = {"float": "d", "int": "q", "bool": "?"}[kind]  # '?' takes numpy bools too
            if opt and kind == "float":
                fmt += ["B", code]
                args += [f"({v} is None or {v} != {v})", f"(0.0 if ({v} is None or {v} != {v}) else {v})"]
            elif opt:
                fmt += ["B", code]
                args += [f"{v} is None", f"(0 if {v} is None else {v})"]
            else:
                fmt.append(code)
                args.append(v)
    text = 'f"' + "".join("{" + t + "}" for t in texts) + '".encode()' if texts else 'b""'
    body = f"PACK({', '.join(args)}) + {text}"
    rec = ""
    if batch_idx is not None:
        b = f"r[{batch_idx}]"
        rec = f"if {b} is not None: rec[{b}].update(body)" if batch_optional else f"rec[{b}].update(body)"
    src = f"""
def body(r, run_id, seq):
    return {body}

def chain(rows, run_id, prev, rec, state):
    for seq, r in enumerate(rows):
        body = {body}
        prev = SHA(prev + body).digest()
        {rec}
        yield (run_id, seq, *r, prev)
    state[0] = prev
"""
    ns: dict[str, Any] = {"NAME": name.encode(), "PACK": struct.Struct("".join(fmt)).pack,
                          "SHA": hashlib.sha256}
    exec(compile(src, f"<store row code: {name}>", "exec"), ns)
    return ns["body"], ns["chain"]


def _bool_check(field: str) -> str:
    return f"{_q(field)} IN (0, 1)"


def _enum_check(field: str, values: Sequence[str]) -> str:
    return f"{_q(field)} IN ({', '.join(repr(v) for v in values)})"


def _record_spec(attr: str, record: type) -> _Spec:
    name, enums, time_fields = _TABLE_DEFS[attr]
    hints = typing.get_type_hints(record)
    fields = list(record._fields)  # type: ignore[attr-defined]
    types = [hints[f] for f in fields]
    if name == "release":
        fields.append("record_digest")  # sha256 hex of the signed batch record
        types.append(str)
    kinds, optional = zip(*(_field_kind(t) for t in types))
    annotations: dict[str, Any] = {"run_id": int, "row_seq": int}
    ns: dict[str, Any] = {
        "__module__": __name__,
        "__tablename__": name,
        "run_id": Field(primary_key=True, foreign_key="run.id"),
        "row_seq": Field(primary_key=True),
    }
    for f, t in zip(fields, types):
        annotations[f] = t
    annotations["digest"] = bytes
    ns["__annotations__"] = annotations
    args: list[Any] = [CheckConstraint(_enum_check(f, v), name=f"ck_{name}_{f}") for f, v in enums.items()]
    args += [CheckConstraint(_bool_check(f), name=f"ck_{name}_{f}")
             for f, k in zip(fields, kinds) if k == "bool"]
    if name == "patient":
        args.append(UniqueConstraint("run_id", "coi", name="uq_patient_coi"))
    elif name == "batch":
        args.append(UniqueConstraint("run_id", "batch_no", name="uq_batch_batch_no"))
        args.append(Index("ix_batch_coi", "run_id", "coi"))
    elif "coi" in fields and name not in ("step_event", "resource_use"):
        # the two big tables go without: a (run_id, coi) index doubles their write time, and a batch
        # export scans one run's rows by primary key instead
        args.append(Index(f"ix_{name}_coi", "run_id", "coi"))
    args.append({"sqlite_with_rowid": False})
    ns["__table_args__"] = tuple(args)
    cls_name = "".join(p.title() for p in name.split("_")) + "Row"
    model = SQLModelMetaclass(cls_name, (SQLModel,), ns, table=True)
    batch_idx = fields.index("batch_no") if name in _BATCH_RECORD_TABLES else None
    body, chain_rows = _compile(name, kinds, optional, batch_idx,
                                batch_idx is not None and optional[batch_idx])
    cols = ("run_id", "row_seq", *fields, "digest")
    head = f"INSERT INTO {_q(name)} ({', '.join(_q(c) for c in cols)}) VALUES "
    one = f"({', '.join('?' * len(cols))})"
    k = 999 // len(cols)  # within the bound-parameter limit of every SQLite build
    return _Spec(attr, name, tuple(fields), tuple(kinds), tuple(optional), time_fields, model,
                 head + one, head + ", ".join([one] * k), k, body, chain_rows)


class ScenarioRow(SQLModel, table=True):
    """A scenario's full YAML, stored once per distinct text."""

    __tablename__ = "scenario"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    text: str
    content_hash: str = Field(unique=True)  # sha256 of the UTF-8 text
    created: str  # UTC ISO timestamp


class RunRow(SQLModel, table=True):
    """One replication, written whole. ``digest`` seals this row's fields and ``chain_head``."""

    __tablename__ = "run"
    __table_args__ = (CheckConstraint("status IN ('complete')", name="ck_run_status"),)
    id: int | None = Field(default=None, primary_key=True)
    scenario_id: int = Field(foreign_key="scenario.id", index=True)
    replication: int
    seed: int
    package_version: str
    status: str = "complete"
    started: str
    finished: str
    horizon: float
    warmup: float
    events: int
    costs_json: str
    label: str | None = None
    row_counts: str  # JSON {table: rows}: lets verify tell a removed last row from a changed one
    digest: bytes | None = None
    chain_head: str | None = None  # hex digest of the run's last record row


_SPECS: tuple[_Spec, ...] = tuple(_record_spec(attr, cls) for attr, cls in RunRecords.TABLES)
_BY_NAME = {s.name: s for s in _SPECS}
RECORD_TABLES = tuple(s.name for s in _SPECS)


class CorrectionRow(SQLModel, table=True):
    """A correction after first entry: supersedes named values of one record row; never edits it."""

    __tablename__ = "correction"
    __table_args__ = (
        CheckConstraint(_enum_check("table_name", RECORD_TABLES), name="ck_correction_table"),
        CheckConstraint("length(reason) > 0 AND length(actor) > 0", name="ck_correction_attributable"),
        Index("ix_correction_row", "run_id", "table_name", "row_seq"),
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    table_name: str
    row_seq: int
    reason: str
    new_values_json: str
    time: str  # UTC ISO timestamp
    actor: str
    digest: bytes  # chains the run's corrections on from run.chain_head


_ALL_TABLES = [ScenarioRow.__table__, RunRow.__table__, *(s.table for s in _SPECS), CorrectionRow.__table__]


def _append_only_ddl() -> list[str]:
    out = []
    for t in (*RECORD_TABLES, "correction", "scenario"):
        for op, verb in (("UPDATE", "changed"), ("DELETE", "deleted")):
            out.append(
                f'CREATE TRIGGER IF NOT EXISTS "{t}_no_{op.lower()}" BEFORE {op} ON {_q(t)} BEGIN '
                f"SELECT RAISE(ABORT, 'append-only GMP record: {t} rows cannot be {verb}; "
                f"record a correction instead'); END")
    out.append(
        'CREATE TRIGGER IF NOT EXISTS "run_no_update" BEFORE UPDATE ON "run" WHEN OLD.chain_head IS NOT NULL '
        "BEGIN SELECT RAISE(ABORT, 'append-only GMP record: a complete run cannot be changed'); END")
    out.append(
        'CREATE TRIGGER IF NOT EXISTS "run_no_delete" BEFORE DELETE ON "run" '
        "BEGIN SELECT RAISE(ABORT, 'append-only GMP record: runs cannot be deleted'); END")
    return out


# ------------------------------------------------------------------------------------------------ open

def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _iso(t: datetime | None) -> str:
    if t is None:
        return _now()
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _package_version() -> str:
    try:
        v = getattr(importlib.import_module("celltx_mfg"), "__version__", None)
        if v:
            return str(v)
    except ImportError:
        pass
    try:
        return importlib.metadata.version("celltx-mfg")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split()) or type(orig).__name__


def _where(engine: Engine) -> str:
    url = engine.url
    return str(url.database) if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)


def open_store(db: str = DEFAULT_DB, *, readonly: bool = False) -> Engine:
    """Open (creating if needed) a store at a file path or SQLAlchemy URL (anything with '://').

    SQLite connections get WAL (readers never block the writer), a 30 s busy timeout (parallel
    writers queue instead of failing), synchronous=NORMAL and foreign keys on. ``readonly`` opens an
    existing SQLite file without writing to it (dashboards); otherwise a write is probed so that a
    read-only file fails here, not after a long simulation.
    """
    if "://" in db:
        try:
            url = sa.make_url(db)
        except sa.exc.ArgumentError as e:
            raise StoreError(f"cannot open store {db}: {_reason(e)}") from e
        sqlite = url.get_backend_name() == "sqlite"
        where = (url.database or db) if sqlite else url.render_as_string(hide_password=True)
        file = url.database if sqlite and url.database and not url.database.startswith(("file:", ":memory:")) \
            else None
        if readonly and file:
            url = sa.make_url(f"sqlite:///file:{file}?mode=ro&uri=true")
    else:
        sqlite, file = True, str(Path(db).expanduser())
        where = file
        url = sa.make_url(f"sqlite:///file:{file}?mode=ro&uri=true") if readonly \
            else sa.URL.create("sqlite", database=file)
    if readonly and file and not os.access(Path(file).parent, os.W_OK):
        # read-only storage (an archive): SQLite cannot create the -shm file a WAL database needs there,
        # and nobody can be writing, so read it as immutable
        url = sa.make_url(f"sqlite:///file:{file}?mode=ro&immutable=1&uri=true")
    if file and not readonly:
        try:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot open store {where}: {e.strerror or e}") from e
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(f"cannot open store {where}: {_reason(e)}") from e
    if sqlite:
        event.listen(engine, "connect", _sqlite_settings(readonly))
    try:
        with engine.connect() as conn:
            if readonly:
                missing = set(RECORD_TABLES) - set(sa.inspect(conn).get_table_names())
                if missing:
                    raise StoreError(f"cannot open store {where}: not a celltx store "
                                     f"(missing tables {sorted(missing)})")
            else:
                if sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                SQLModel.metadata.create_all(conn, tables=_ALL_TABLES)
                if sqlite:
                    for ddl in _append_only_ddl():
                        conn.exec_driver_sql(ddl)
                    # a real write, so a read-only file fails now
                    conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.commit()
    except StoreError:
        engine.dispose()
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as e:
        engine.dispose()
        hint = ""
        if file and not readonly and not os.access(Path(file).parent, os.W_OK):
            hint = f" (directory {Path(file).parent} is not writable: SQLite keeps its -wal and -shm files there)"
        raise StoreError(f"cannot open store {where}: {_reason(e)}{hint}") from e
    return engine


def _sqlite_settings(readonly: bool) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if not readonly:
                # switching to WAL needs an exclusive lock and does not wait for the busy timeout
                deadline = time.monotonic() + 30
                while True:
                    try:
                        cur.execute("PRAGMA journal_mode=WAL")
                        break
                    except sqlite3.OperationalError as e:
                        if "locked" not in str(e) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.02)
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    return on_connect


# ----------------------------------------------------------------------------------------------- write

def _run_body(values: Sequence[Any]) -> bytes:
    return b"run" + json.dumps(list(values), separators=(",", ":")).encode()


_RUN_SEALED = ("replication", "seed", "package_version", "status", "started", "finished", "horizon", "warmup",
               "events", "costs_json", "label", "row_counts", "chain_head")


def _genesis(run_id: int, content_hash: str) -> bytes:
    """First link of a run's record chain: binds every row to its run and its scenario text."""
    return hashlib.sha256(_run_body([run_id, content_hash])).digest()


def _run_seal(run_id: int, content_hash: str, row: Mapping[str, Any]) -> bytes:
    """The run row's own digest, over all its fields including the chain head."""
    return hashlib.sha256(_run_body([run_id, content_hash, *(row[k] for k in _RUN_SEALED)])).digest()


def _correction_body(run_id: int, table: str, row_seq: int, reason: str, new_values_json: str, time: str,
                     actor: str) -> bytes:
    return b"correction" + json.dumps([run_id, table, row_seq, reason, new_values_json, time, actor],
                                      separators=(",", ":")).encode()


def _diagnose(spec: _Spec, rows: Sequence[Sequence[Any]]) -> tuple[int, str]:
    """Find the row a write choked on and say why: the first that breaks a type, enumeration or
    uniqueness rule (rows go to SQLite in groups, so its message cannot say). Runs only after a
    failure, so it may be slow; ``(-1, "")`` when no row is to blame (disk full, ...)."""
    want = {"str": (str,), "float": (int, float, np.integer, np.floating), "int": (int, np.integer),
            "bool": (bool, np.bool_, int)}
    enums = _TABLE_DEFS[spec.attr][1]
    key = {"patient": "coi", "batch": "batch_no"}.get(spec.name)
    seen: set[Any] = set()
    for seq, row in enumerate(rows):
        if len(row) != len(spec.fields):
            return seq, f"{len(row)} values for {len(spec.fields)} fields"
        for f, k, opt, v in zip(spec.fields, spec.kinds, spec.optional, row):
            if v is None and opt:
                continue
            if not isinstance(v, want[k]) or (k == "float" and not opt and v != v):
                return seq, f"field {f}={v!r} is not a {k}{'' if opt else ' (required)'}"
            if f in enums and v not in enums[f]:
                return seq, f"field {f}={v!r} is not one of {', '.join(enums[f])}"
            if k == "bool" and v not in (0, 1):
                return seq, f"field {f}={v!r} is not a bool"
        if key is not None:
            v = row[spec.fields.index(key)]
            if v in seen:
                return seq, f"{key} {v!r} appears twice in the run"
            seen.add(v)
    return -1, ""


def _insert_sqlite(dbapi_conn: Any, spec: _Spec, rows: Iterator[tuple]) -> None:
    """executemany of multi-row INSERTs (flattened groups of rows), then the remainder row by row."""
    k, tail = spec.rows_per_insert, []

    def groups() -> Iterator[tuple]:
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


def _batched(it: Iterator[tuple], n: int) -> Iterator[list[tuple]]:
    while chunk := list(itertools.islice(it, n)):
        yield chunk


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


def _write_run(engine: Engine, scenario_name: str, scenario_text: str, records: RunRecords,
               label: str | None, started: datetime | None, finished: datetime | None,
               bulk_raw: bool) -> int:
    where = _where(engine)
    content_hash = hashlib.sha256(scenario_text.encode()).hexdigest()
    tables = [(spec, getattr(records, spec.attr)) for spec in _SPECS]
    row = {
        "replication": int(records.replication), "seed": int(records.seed),
        "package_version": _package_version(), "status": "complete", "started": _iso(started),
        "finished": "", "horizon": float(records.horizon), "warmup": float(records.warmup),
        "events": int(records.events),
        "costs_json": json.dumps({str(k): float(v) for k, v in records.costs.items()}, sort_keys=True),
        "label": label,
        "row_counts": json.dumps({spec.name: len(rows) for spec, rows in tables}),
    }
    state: list[Any] = [None]
    current: _Spec | None = None
    current_rows: Sequence[Any] = ()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of fresh tuples: the cyclic collector would rescan them again and again
    try:
        with _write_txn(engine) as conn:
            try:
                scenario_id = _scenario_id(conn, scenario_name, scenario_text, content_hash)
                res = conn.execute(sa.insert(RunRow.__table__).values(scenario_id=scenario_id, **row))
                run_id = int(res.inserted_primary_key[0])
                prev = _genesis(run_id, content_hash)
                rec: defaultdict[str, Any] = defaultdict(hashlib.sha256)
                for spec, rows in tables:
                    current, current_rows = spec, rows
                    if spec.name == "release":  # sign each batch record as it stands
                        b = spec.fields.index("batch_no")
                        rows = current_rows = [(*r, _record_hex(rec, r[b])) for r in rows]
                    state[0] = None
                    gen = spec.chain(rows, run_id, prev, rec, state)
                    if bulk_raw:
                        _insert_sqlite(conn.connection.driver_connection, spec, gen)
                    else:
                        cols = spec.columns
                        for chunk in _batched(gen, 5000):
                            conn.execute(spec.table.insert(), [dict(zip(cols, t)) for t in chunk])
                    prev = state[0]  # set once the rows are exhausted
                current = None
                row["finished"] = _iso(finished)
                row["chain_head"] = prev.hex()
                conn.execute(sa.update(RunRow.__table__).where(RunRow.__table__.c.id == run_id)
                             .values(finished=row["finished"], chain_head=row["chain_head"],
                                     digest=_run_seal(run_id, content_hash, row)))
                conn.commit()
                return run_id
            except BaseException:
                conn.rollback()
                raise
    except StoreError:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error, TypeError, ValueError, struct.error, IndexError,
            OverflowError, UnicodeError) as e:
        at = ""
        if current is not None:
            seq, detail = _diagnose(current, current_rows)
            at = f" at {current.name}" + (f" row {seq} ({detail})" if detail else "")
        raise StoreError(f"run not written to {where}{at}: {_reason(e)}") from e
    finally:
        if gc_was_enabled:
            gc.enable()


def _record_hex(rec: Mapping[str, Any], batch_no: str | None) -> str:
    """Digest of a batch's record as it stands now (rows of batch, step_event, qc_test, deviation)."""
    h = rec.get(batch_no) if batch_no is not None else None
    return (h if h is not None else hashlib.sha256()).hexdigest()


def _scenario_id(conn: Connection, name: str, text: str, content_hash: str) -> int:
    t = ScenarioRow.__table__
    found = conn.execute(sa.select(t.c.id).where(t.c.content_hash == content_hash)).scalar()
    if found is not None:
        return int(found)
    res = conn.execute(sa.insert(t).values(name=name, text=text, content_hash=content_hash, created=_now()))
    return int(res.inserted_primary_key[0])


def _write_txn(engine: Engine) -> Connection:
    """A connection whose transaction holds SQLite's write lock from the start, so read-then-write
    sequences (scenario lookup, correction chain) cannot interleave with another writer."""
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    return conn


# ----------------------------------------------------------------------------------------- corrections

def record_correction(engine: Engine, run_id: int, table: str, row_seq: int, reason: str,
                      new_values: Mapping[str, Any], actor: str) -> int:
    """Record a correction of one GMP row after first entry; the row itself is never touched.

    ``new_values`` maps field names of that table to their corrected values; ``reason`` and ``actor``
    (person or role) make it attributable. Corrections chain on from the run's chain head, so removing
    or editing one is detectable too. Returns the correction id.
    """
    if table not in _BY_NAME:
        raise StoreError(f"no record table {table!r}; tables: {', '.join(RECORD_TABLES)}")
    spec = _BY_NAME[table]
    unknown = sorted(set(new_values) - set(spec.fields))
    if unknown or not new_values:
        raise StoreError(f"correction of {table}: fields {unknown or '(none given)'} are not fields of "
                         f"{table}: {', '.join(spec.fields)}")
    if not reason.strip() or not actor.strip():
        raise StoreError("a correction needs a reason and an actor (who, or which role)")
    try:
        values_json = json.dumps({k: new_values[k] for k in sorted(new_values)}, sort_keys=True,
                                 default=lambda v: v.item() if hasattr(v, "item") else str(v))
    except (TypeError, ValueError) as e:
        raise StoreError(f"correction values are not recordable: {e}") from e
    where = _where(engine)
    try:
        with _write_txn(engine) as conn:
            try:
                run = conn.execute(sa.select(RunRow.__table__.c.chain_head)
                                   .where(RunRow.__table__.c.id == run_id)).first()
                if run is None or run[0] is None:
                    raise StoreError(f"no run {run_id} in {where}")
                t = spec.table
                hit = conn.execute(sa.select(t.c.row_seq).where(t.c.run_id == run_id, t.c.row_seq == row_seq)).first()
                if hit is None:
                    raise StoreError(f"run {run_id} has no {table} row {row_seq}")
                c = CorrectionRow.__table__
                last = conn.execute(sa.select(c.c.digest).where(c.c.run_id == run_id)
                                    .order_by(c.c.id.desc()).limit(1)).scalar()
                prev = last if last is not None else bytes.fromhex(run[0])
                time = _now()
                digest = hashlib.sha256(prev + _correction_body(run_id, table, row_seq, reason, values_json,
                                                                time, actor)).digest()
                res = conn.execute(sa.insert(c).values(run_id=run_id, table_name=table, row_seq=row_seq,
                                                       reason=reason, new_values_json=values_json, time=time,
                                                       actor=actor, digest=digest))
                conn.commit()
                return int(res.inserted_primary_key[0])
            except BaseException:
                conn.rollback()
                raise
    except StoreError:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise StoreError(f"correction not written to {where}: {_reason(e)}") from e


# ---------------------------------------------------------------------------------------------- verify

def verify(engine: Engine, run_id: int | None = None) -> list[Problem]:
    """Recompute the record chains and release signatures; an empty list means nothing was altered.

    Each row is checked against the stored digest of the row before it, so a finding names the row
    itself: a changed row fails its own link (or, if its digest was recomputed too, the next row's),
    a gap in ``row_seq`` or a short table is a removal, a row past the count recorded in the run row
    (or for a run that does not exist) is an insertion. Works whether or not the triggers are in place.
    """
    problems: list[Problem] = []
    try:
        with engine.connect() as conn:
            r = RunRow.__table__
            s = ScenarioRow.__table__
            q = sa.select(r, s.c.content_hash, s.c.text).join(s, s.c.id == r.c.scenario_id).order_by(r.c.id)
            if run_id is not None:
                q = q.where(r.c.id == run_id)
            runs = conn.execute(q).mappings().all()
            if run_id is not None and not runs:
                return [Problem(run_id, "run", None, "missing", "no run with this id in the store")]
            for run in runs:
                _verify_run(conn, run, problems)
            if run_id is None and conn.dialect.name == "sqlite":  # ids are dense there: a gap is a removed run
                ids = [int(r["id"]) for r in runs]
                missing = sorted(set(range(1, max(ids, default=0) + 1)) - set(ids))
                if missing:
                    problems.append(Problem(None, "run", None, "removed", f"run(s) {missing} missing"))
            if run_id is None:
                _verify_orphans(conn, problems)
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise StoreError(f"cannot verify {_where(engine)}: {_reason(e)}") from e
    return problems


def _verify_run(conn: Connection, run: Mapping[str, Any], problems: list[Problem]) -> None:
    rid = int(run["id"])
    content_hash = run["content_hash"]
    if hashlib.sha256(str(run["text"]).encode()).hexdigest() != content_hash:
        problems.append(Problem(rid, "scenario", None, "changed",
                                f"scenario {run['scenario_id']} text no longer matches its hash"))
    if run["digest"] != _run_seal(rid, content_hash, run):
        problems.append(Problem(rid, "run", None, "changed", "run row differs from what was sealed"))
    try:
        counts = {k: int(v) for k, v in json.loads(run["row_counts"]).items()}
    except (TypeError, ValueError, AttributeError):
        counts = {}
        problems.append(Problem(rid, "run", None, "changed", "row counts unreadable"))
    prev: bytes | None = _genesis(rid, content_hash)
    rec: defaultdict[str, Any] = defaultdict(hashlib.sha256)
    for spec in _SPECS:
        prev = _verify_table(conn, spec, rid, counts.get(spec.name, 0), prev, rec, problems)
    if prev is not None and prev.hex() != run["chain_head"]:
        problems.append(Problem(rid, "run", None, "chain_head",
                                "the last record row does not match the chain head sealed in the run row"))
    _verify_corrections(conn, rid, run["chain_head"], problems)


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


def _verify_table(conn: Connection, spec: _Spec, rid: int, count: int, prev: bytes | None,
                  rec: defaultdict, problems: list[Problem]) -> bytes | None:
    """Check one table's links; returns the last good link (None when it is unknown)."""
    result = _run_rows(conn, spec, ["row_seq", *spec.fields, "digest"], rid)
    batch_i = spec.fields.index("batch_no") if spec.name in _BATCH_RECORD_TABLES else None
    release = spec.name == "release"
    sha = hashlib.sha256
    expected = 0
    for row in result:
        seq, vals, stored = row[0], row[1:-1], row[-1]
        if seq >= count:
            problems.append(Problem(rid, spec.name, seq, "inserted",
                                    f"beyond the {count} rows written with the run"))
            continue
        if seq > expected:
            gap = f"row {expected}" if seq == expected + 1 else f"rows {expected}-{seq - 1}"
            problems.append(Problem(rid, spec.name, expected, "removed", f"{gap} missing"))
            prev = None
        try:
            body = spec.body(vals, rid, seq)
        except (TypeError, ValueError, struct.error, UnicodeError) as e:
            problems.append(Problem(rid, spec.name, seq, "changed", f"value of the wrong type ({e})"))
            prev, expected = None, seq + 1
            continue
        if batch_i is not None and vals[batch_i] is not None:
            rec[vals[batch_i]].update(body)
        if prev is not None and sha(prev + body).digest() != stored:
            problems.append(Problem(rid, spec.name, seq, "changed",
                                    "digest mismatch: this row (or the one before it) was altered"))
        if release:
            batch_no, signed = vals[spec.fields.index("batch_no")], vals[-1]
            if _record_hex(rec, batch_no) != signed:
                problems.append(Problem(rid, spec.name, seq, "signature",
                                        f"release of {batch_no} invalid: its batch record changed after signing"))
        prev = stored if isinstance(stored, bytes) else None
        expected = seq + 1
    if expected < count:
        gap = f"row {expected}" if count == expected + 1 else f"rows {expected}-{count - 1}"
        problems.append(Problem(rid, spec.name, expected, "removed", f"{gap} missing"))
        prev = None
    return prev


def _verify_corrections(conn: Connection, rid: int, chain_head: str | None, problems: list[Problem]) -> None:
    c = CorrectionRow.__table__
    rows = conn.execute(sa.select(c).where(c.c.run_id == rid).order_by(c.c.id)).mappings().all()
    try:
        prev: bytes | None = bytes.fromhex(chain_head or "")
    except ValueError:
        prev = None
    for row in rows:
        body = _correction_body(rid, row["table_name"], row["row_seq"], row["reason"], row["new_values_json"],
                                row["time"], row["actor"])
        if prev is not None and hashlib.sha256(prev + body).digest() != row["digest"]:
            problems.append(Problem(rid, "correction", int(row["id"]), "changed",
                                    "correction digest mismatch: this correction (or the one before it) "
                                    "was altered or removed"))
        prev = row["digest"] if isinstance(row["digest"], bytes) else None


def _verify_orphans(conn: Connection, problems: list[Problem]) -> None:
    runs = sa.select(RunRow.__table__.c.id)
    for t in [*(s.table for s in _SPECS), CorrectionRow.__table__]:
        for (rid,) in conn.execute(sa.select(t.c.run_id).where(t.c.run_id.not_in(runs)).distinct()):
            problems.append(Problem(rid, t.name, None, "inserted", f"rows for run {rid}, which does not exist"))


# --------------------------------------------------------------------------------------------- readers

def list_runs(engine: Engine) -> pd.DataFrame:
    """One row per stored run, oldest first, with its scenario and patient count."""
    sql = sa.text(
        "SELECT r.id, s.name AS scenario, s.content_hash AS scenario_hash, r.scenario_id, r.replication, "
        "r.seed, r.label, r.started, r.finished, r.horizon, r.warmup, r.events, r.package_version, "
        "(SELECT COUNT(*) FROM patient p WHERE p.run_id = r.id) AS patients, r.chain_head "
        "FROM run r JOIN scenario s ON s.id = r.scenario_id ORDER BY r.id")
    return _read(engine, sql)


def list_scenarios(engine: Engine) -> pd.DataFrame:
    """One row per distinct scenario text, with how many runs used it."""
    sql = sa.text(
        "SELECT s.id, s.name, s.content_hash, s.created, "
        "(SELECT COUNT(*) FROM run r WHERE r.scenario_id = s.id) AS runs FROM scenario s ORDER BY s.id")
    return _read(engine, sql)


def _read(engine: Engine, sql: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    try:
        with engine.connect() as conn:
            res = conn.execute(sql, params or {})
            return pd.DataFrame(res.fetchall(), columns=list(res.keys()))
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise StoreError(f"cannot read {_where(engine)}: {_reason(e)}") from e


def load_frames(
    engine: Engine, run_ids: Sequence[int], tables: Iterable[str] | None = None
) -> dict[str, pd.DataFrame]:
    """The runs' records as frames keyed like ``RunRecords.frames()`` (patients, batches, steps, ...).

    Columns are ``run_id`` then the record's fields; booleans come back as bool and missing times as
    None/NaN, built the same way as ``RunRecords.frames()`` so both give the same KPIs. Corrections are
    not applied: these are the records as first entered. ``tables`` limits the read to those frames
    (e.g. ``analysis.KPI_TABLES``): a comparison of many runs need not read every step and test.
    """
    ids = [int(i) for i in run_ids]
    wanted = None if tables is None else set(tables)
    if wanted is not None and not wanted <= {s.attr for s in _SPECS}:
        raise StoreError(f"unknown tables {sorted(wanted - {s.attr for s in _SPECS})}")
    out: dict[str, pd.DataFrame] = {}
    try:
        with engine.connect() as conn:
            for spec in _SPECS:
                if wanted is not None and spec.attr not in wanted:
                    continue
                names = [f for f in spec.fields if f != "record_digest"]
                rows: list[Sequence[Any]] = []
                for rid in sorted(set(ids)):
                    rows.extend(map(tuple, _run_rows(conn, spec, ["run_id", *names], rid)))
                df = pd.DataFrame(rows, columns=["run_id", *names])
                for f, kind, opt in zip(spec.fields, spec.kinds, spec.optional):
                    if kind == "bool" and len(df):
                        df[f] = df[f].astype(bool) if not opt else df[f].map(
                            lambda v: None if v is None else bool(v))
                if not rows:
                    df = df.astype({"run_id": "int64"})
                out[spec.attr] = df
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise StoreError(f"cannot read {_where(engine)}: {_reason(e)}") from e
    return out


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
        sql, params = "SELECT text FROM scenario WHERE id = :v", {"v": scenario}
    else:
        sql, params = "SELECT text FROM scenario WHERE name = :v ORDER BY id DESC LIMIT 1", {"v": scenario}
    df = _read(engine, sa.text(sql), params)
    if df.empty:
        raise StoreError(f"no scenario {scenario!r} in {_where(engine)}")
    return str(df.iloc[0, 0])


# --------------------------------------------------------------------------------------------- exports

def _table_frame(conn: Connection, t: sa.Table, run_ids: Sequence[int] | None) -> pd.DataFrame:
    q = sa.select(t)
    if run_ids is not None:
        if t.name == "run":
            q = q.where(t.c.id.in_([int(i) for i in run_ids]))
        elif "run_id" in t.c:
            q = q.where(t.c.run_id.in_([int(i) for i in run_ids]))
    if t.name == "scenario" and run_ids is not None:
        used = sa.select(RunRow.__table__.c.scenario_id).where(RunRow.__table__.c.id.in_([int(i) for i in run_ids]))
        q = sa.select(t).where(t.c.id.in_(used))
    order = [t.c.run_id, t.c.row_seq] if "row_seq" in t.c and t.name != "correction" else [list(t.primary_key)[0]]
    res = conn.execute(q.order_by(*order))
    df = pd.DataFrame(res.fetchall(), columns=list(res.keys()))
    for c in df.columns:
        if c == "digest":
            df[c] = [d.hex() if isinstance(d, bytes) else d for d in df[c]]
    return df


def _export(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None, suffix: str,
            write: Callable[[pd.DataFrame, Path], None]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        with engine.connect() as conn:
            for t in _ALL_TABLES:
                df = _table_frame(conn, t, run_ids)
                p = out / f"{t.name}.{suffix}"
                write(df, p)
                paths.append(p)
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise StoreError(f"cannot read {_where(engine)}: {_reason(e)}") from e
    return paths


def export_csv(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None = None) -> list[Path]:
    """One CSV per table (runs, scenarios, corrections and every record table); digests as hex."""
    return _export(engine, out_dir, run_ids, "csv", lambda df, p: df.to_csv(p, index=False))


def export_parquet(engine: Engine, out_dir: str | Path, run_ids: Sequence[int] | None = None) -> list[Path]:
    """One Parquet file per table, same content as ``export_csv``."""
    return _export(engine, out_dir, run_ids, "parquet", lambda df, p: df.to_parquet(p, index=False))


def export_batch_csv(engine: Engine, coi: str, out_path: str | Path, run_id: int | None = None) -> int:
    """A batch's whole GMP record for a reviewer: every row of every table for one chain-of-identity
    id, in simulation-time order (column ``sim_time``, days), one CSV; ``corrected`` marks rows changed after first entry and ``corrections``
    says how, when, by whom and why. Without ``run_id`` the newest run holding the id is used.
    Returns the number of record rows written."""
    where = _where(engine)
    try:
        with engine.connect() as conn:
            if run_id is None:
                p, b = _BY_NAME["patient"].table, _BY_NAME["batch"].table
                run_id = conn.execute(sa.select(sa.func.max(p.c.run_id)).where(p.c.coi == coi)).scalar()
                if run_id is None:
                    run_id = conn.execute(sa.select(sa.func.max(b.c.run_id)).where(b.c.coi == coi)).scalar()
            if run_id is None:
                raise StoreError(f"no record of {coi} in {where}")
            c = CorrectionRow.__table__
            corr: dict[tuple[str, int], list[str]] = defaultdict(list)
            for row in conn.execute(sa.select(c).where(c.c.run_id == run_id).order_by(c.c.id)).mappings():
                corr[(row["table_name"], row["row_seq"])].append(
                    f"{row['time']} {row['actor']}: {row['reason']} -> {row['new_values_json']}")
            parts = []
            for order, spec in enumerate(_SPECS):
                if "coi" not in spec.fields:
                    continue
                t = spec.table
                res = conn.execute(sa.select(t).where(t.c.run_id == run_id, t.c.coi == coi).order_by(t.c.row_seq))
                df = pd.DataFrame(res.fetchall(), columns=list(res.keys()))
                if df.empty:
                    continue
                when = pd.Series(np.nan, index=df.index)
                for f in spec.time_fields:
                    when = when.fillna(pd.to_numeric(df[f], errors="coerce"))
                df.insert(1, "table", spec.name)
                df.insert(3, "sim_time", when)
                df.insert(4, "table_order", order)
                df["digest"] = [d.hex() for d in df["digest"]]
                parts.append(df)
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as e:
        raise StoreError(f"cannot read {where}: {_reason(e)}") from e
    if not parts:
        raise StoreError(f"no record of {coi} in run {run_id} of {where}")
    df = pd.concat(parts, ignore_index=True, sort=False)
    df = df.sort_values(["sim_time", "table_order", "row_seq"], na_position="last", kind="stable")
    notes = [" | ".join(corr.get((t, int(s)), [])) for t, s in zip(df["table"], df["row_seq"])]
    df.insert(4, "corrected", [bool(n) for n in notes])
    df.insert(5, "corrections", notes)
    df = df.drop(columns=["table_order"])
    digest = df.pop("digest")
    df["digest"] = digest
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    return len(df)
