"""The store's tables, each defined once: the run and scenario rows, one table per record list of
``RunRecords`` (same fields, same order, plus ``run_id``, ``row_seq`` and ``digest``), corrections,
the keyed ledger and release signatures (store/seals.py), and the triggers that make GMP records
append-only (their exact text is checked by ``verify``: store/guards.py).

``row_seq`` is a row's position within its run and table (``seq`` is taken by ``StepEvent.seq``).
"""

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import CheckConstraint, Index, UniqueConstraint
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelMetaclass

from .. import DEFAULT_DB as DEFAULT_DB
from ..records import RunRecords
from ._common import _q
from .hashing import RowBody, RowChain, compile_row_code

SCHEMA_VERSION = 4  # the layout this module creates: PRAGMA user_version on SQLite, celltx_meta on PostgreSQL;
# raising it needs a step in store/migrate.py MIGRATIONS

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
_MAX_PARAMS = 999  # bound parameters per statement that every SQLite build accepts


def table_of(model: type) -> sa.Table:
    """The SQLAlchemy table of a SQLModel row class (SQLModel adds ``__table__`` where mypy cannot see)."""
    return model.__table__  # type: ignore[attr-defined]


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
    body: RowBody  # canonical bytes of one row
    chain: RowChain  # rows -> insert tuples, extending the chain

    @property
    def table(self) -> sa.Table:
        return table_of(self.model)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("run_id", "row_seq", *self.fields, "digest")

    @property
    def batch_idx(self) -> int | None:
        return _batch_idx(self.name, self.fields)


def _batch_idx(name: str, fields: Sequence[str]) -> int | None:
    """Where the batch number is, for a table whose rows are part of a batch record a release signs."""
    return list(fields).index("batch_no") if name in _BATCH_RECORD_TABLES else None


def _field_kind(tp: Any) -> tuple[str, bool]:
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _KIND[inner[0]], True
    return _KIND[tp], False


def _bool_check(field: str) -> str:
    return f"{_q(field)} IN (0, 1)"


def _enum_check(field: str, values: Sequence[str]) -> str:
    return f"{_q(field)} IN ({', '.join(repr(v) for v in values)})"


def _record_fields(name: str, record: type) -> tuple[list[str], list[Any]]:
    """The record's fields and types, plus the release's signature of its batch record."""
    hints = typing.get_type_hints(record)
    fields = list(record._fields)  # type: ignore[attr-defined]
    types = [hints[f] for f in fields]
    if name == "release":
        fields.append("record_digest")  # sha256 hex of the signed batch record
        types.append(str)
    return fields, types


def _table_args(name: str, fields: Sequence[str], kinds: Sequence[str],
                enums: dict[str, tuple[str, ...]]) -> tuple[Any, ...]:
    """Checks (enumerations, booleans), chain-of-identity keys and indexes of one record table."""
    args: list[Any] = [CheckConstraint(_enum_check(f, v), name=f"ck_{name}_{f}") for f, v in enums.items()]
    # a 0/1 check only where booleans are integers (SQLite); PostgreSQL's boolean type enforces itself
    args += [CheckConstraint(_bool_check(f), name=f"ck_{name}_{f}").ddl_if(dialect="sqlite")
             for f, k in zip(fields, kinds, strict=True) if k == "bool"]
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
    return tuple(args)


def _record_model(name: str, fields: Sequence[str], types: Sequence[Any], table_args: tuple[Any, ...]) -> type:
    annotations: dict[str, Any] = {"run_id": int, "row_seq": int}
    annotations.update(zip(fields, types, strict=True))
    annotations["digest"] = bytes
    ns: dict[str, Any] = {
        "__module__": __name__,
        "__tablename__": name,
        "run_id": Field(primary_key=True, foreign_key="run.id"),
        "row_seq": Field(primary_key=True),
        # every other integer field is 64-bit (SQLite stores the same values either way)
        **{f: Field(sa_type=sa.BigInteger) for f, t in zip(fields, types, strict=True) if t is int},
        "__annotations__": annotations,
        "__table_args__": table_args,
    }
    cls_name = "".join(p.title() for p in name.split("_")) + "Row"
    return SQLModelMetaclass(cls_name, (SQLModel,), ns, table=True)


def _insert_sql(name: str, fields: Sequence[str]) -> tuple[str, str, int]:
    """One-row INSERT, multi-row INSERT and its rows per statement."""
    cols = ("run_id", "row_seq", *fields, "digest")
    head = f"INSERT INTO {_q(name)} ({', '.join(_q(c) for c in cols)}) VALUES "
    one = f"({', '.join('?' * len(cols))})"
    k = _MAX_PARAMS // len(cols)
    return head + one, head + ", ".join([one] * k), k


def _record_spec(attr: str, record: type) -> _Spec:
    name, enums, time_fields = _TABLE_DEFS[attr]
    fields, types = _record_fields(name, record)
    kinds, optional = (tuple(x) for x in zip(*(_field_kind(t) for t in types), strict=True))
    model = _record_model(name, fields, types, _table_args(name, fields, kinds, enums))
    batch_idx = _batch_idx(name, fields)
    body, chain_rows = compile_row_code(name, kinds, optional, batch_idx,
                                        batch_idx is not None and optional[batch_idx])
    one, many, k = _insert_sql(name, fields)
    return _Spec(attr, name, tuple(fields), kinds, optional, time_fields, model, one, many, k, body, chain_rows)


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
    seed: int = Field(sa_type=sa.BigInteger)  # 63-bit: a 32-bit INTEGER overflows on PostgreSQL
    package_version: str
    status: str = "complete"
    started: str
    finished: str
    horizon: float
    warmup: float
    events: int = Field(sa_type=sa.BigInteger)
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


LEDGER_KINDS = ("scenario", "run", "correction", "forecast")


class LedgerRow(SQLModel, table=True):
    """One entry of the run ledger: a scenario, run or correction as it was sealed, chained to the entry
    before it by ``head = HMAC(seal key, previous head + this entry)``. The newest head, kept outside the
    store (``verify --expect-head``), shows a deletion of the newest entries or of everything."""

    __tablename__ = "ledger"
    __table_args__ = (CheckConstraint(_enum_check("kind", LEDGER_KINDS), name="ck_ledger_kind"),
                      Index("ix_ledger_ref", "kind", "ref_id"))
    seq: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    kind: str
    ref_id: int = Field(sa_type=sa.BigInteger)  # scenario.id, run.id, correction.id or forecast.id
    digest: bytes  # the object's own sha256 seal (scenario fields; run.digest; correction.digest)
    adopted: bool = False  # entered by the schema 2 migration for an object written before the ledger
    time: str  # UTC ISO timestamp
    key_id: str  # id of the seal key (store/keys.py), never the key
    head: bytes  # HMAC-SHA256 chaining this entry to the one before


class ReleaseSignatureRow(SQLModel, table=True):
    """A release row's signature by its signer's role key: HMAC-SHA256 of the release row (batch record
    digest included) under the key of ``role``; kept beside the row so the record chain stays keyless."""

    __tablename__ = "release_signature"
    __table_args__ = ({"sqlite_with_rowid": False},)
    run_id: int = Field(primary_key=True, foreign_key="run.id")
    row_seq: int = Field(primary_key=True)  # the release row signed
    role: str
    key_id: str  # id of the role key (store/keys.py), never the key
    signature: bytes


# ------------------------------------------------------------------------------ forecasts (schema 3)
# A forecast from a plant state (celltx forecast --db): one ``forecast`` row, its per-patient rows and
# its capacity-load rows, written whole in one transaction. The rows are chained by sha256 from a genesis
# of the forecast's id and hashes to ``forecast.chain_head``; ``forecast.digest`` seals the row and the
# head, and is entered in the keyed ledger (kind ``forecast``). Append-only like the batch record: a
# forecast is what the plant was told on that day, never rewritten. Datetimes are ISO text.
FORECAST_LOAD_RESOURCES = ("suite", "qc_analysts", "qa_reviewers")


class ForecastRow(SQLModel, table=True):
    """One stored forecast: where it started from (state, scenario, seed), how (replications, horizon),
    and its seals. ``id`` is chosen in the writing transaction (under the ledger lock), so the row is
    inserted whole, sealed, and never updated."""

    __tablename__ = "forecast"
    __table_args__ = (CheckConstraint("replications > 0 AND patient_count >= 0 AND load_count >= 0",
                                      name="ck_forecast_counts"),)
    id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    created: str  # UTC ISO timestamp of the write
    as_of: str  # ISO datetime of the plant state
    replications: int
    horizon_days: float
    scenario_name: str
    scenario_hash: str
    state_hash: str
    seed: int = Field(sa_type=sa.BigInteger)
    package_version: str
    label: str | None = None
    patient_count: int  # rows written with it: a removed last row is told from a changed one
    load_count: int
    chain_head: str  # hex digest of its last patient or load row (of the genesis when it has none)
    digest: bytes


class ForecastPatientRow(SQLModel, table=True):
    """One live patient's forecast, by the state's chain-of-identity id; a quantile left NULL is a date
    after the forecast's horizon."""

    __tablename__ = "forecast_patient"
    __table_args__ = (
        CheckConstraint("p_lost >= 0 AND p_lost <= 1", name="ck_forecast_patient_p_lost"),
        CheckConstraint("p_infused_by_booked_date IS NULL OR (p_infused_by_booked_date >= 0 AND "
                        "p_infused_by_booked_date <= 1)", name="ck_forecast_patient_p_booked"),
        CheckConstraint(_bool_check("at_risk"), name="ck_forecast_patient_at_risk").ddl_if(dialect="sqlite"),
        Index("ix_forecast_patient_coi", "coi"),
        {"sqlite_with_rowid": False},
    )
    forecast_id: int = Field(primary_key=True, foreign_key="forecast.id", sa_type=sa.BigInteger)
    row_seq: int = Field(primary_key=True)
    coi: str
    stage: str
    release_p10: str | None = None
    release_p50: str | None = None
    release_p90: str | None = None
    infusion_p10: str | None = None
    infusion_p50: str | None = None
    infusion_p90: str | None = None
    p_infused_by_booked_date: float | None = None
    p_lost: float
    booked_infusion: str | None = None
    at_risk: bool
    digest: bytes


class ForecastLoadRow(SQLModel, table=True):
    """One week's utilisation band of one resource (suites, QC analysts, QA reviewers)."""

    __tablename__ = "forecast_load"
    __table_args__ = (
        CheckConstraint(_enum_check("resource", FORECAST_LOAD_RESOURCES), name="ck_forecast_load_resource"),
        {"sqlite_with_rowid": False},
    )
    forecast_id: int = Field(primary_key=True, foreign_key="forecast.id", sa_type=sa.BigInteger)
    row_seq: int = Field(primary_key=True)
    resource: str
    week: int
    start: str
    p10: float | None = None
    p50: float | None = None
    p90: float | None = None
    digest: bytes


class ScenarioNoteRow(SQLModel, table=True):
    """A planner's note on a scenario name: a label, a description and whether lists hide it.

    Notes are append-only like the records they describe: a change is a new row and the newest row of a
    scenario name wins whole (store/notes.py carries the fields a change leaves out over from the row
    before). Hiding a scenario only hides it from lists; its runs stay stored and verifiable."""

    __tablename__ = "scenario_note"
    __table_args__ = (
        CheckConstraint("length(scenario_name) > 0 AND length(actor) > 0", name="ck_scenario_note_named"),
        Index("ix_scenario_note_name", "scenario_name", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    scenario_name: str  # scenario.name (every text stored under that name)
    label: str | None = None
    description: str | None = None
    hidden: bool = False
    time: str  # UTC ISO timestamp
    actor: str


SCENARIO = table_of(ScenarioRow)
RUN = table_of(RunRow)
SCENARIO_NOTE = table_of(ScenarioNoteRow)
CORRECTION = table_of(CorrectionRow)
LEDGER = table_of(LedgerRow)
RELEASE_SIGNATURE = table_of(ReleaseSignatureRow)
FORECAST = table_of(ForecastRow)
FORECAST_PATIENT = table_of(ForecastPatientRow)
FORECAST_LOAD = table_of(ForecastLoadRow)
_ALL_TABLES = [SCENARIO, RUN, *(s.table for s in _SPECS), CORRECTION]  # the exported tables
_SEAL_TABLES = [LEDGER, RELEASE_SIGNATURE]  # store-internal: the seals over the exported ones
_FORECAST_TABLES = [FORECAST, FORECAST_PATIENT, FORECAST_LOAD]  # forecasts from plant states (schema 3)
_NOTE_TABLES = [SCENARIO_NOTE]  # planners' notes on scenarios: not GMP records, not exported with them
_STORE_TABLES = [*_ALL_TABLES, *_SEAL_TABLES, *_FORECAST_TABLES, *_NOTE_TABLES]


def _guarded_tables() -> tuple[str, ...]:
    """The tables whose rows can be neither changed nor deleted (``run`` has its own rule)."""
    return (*RECORD_TABLES, "correction", "scenario", "ledger", "release_signature",
            *(t.name for t in _FORECAST_TABLES), "scenario_note")


@dataclass(frozen=True)
class Guard:
    """One append-only trigger: its name, its table and the definition the store must hold, as the
    database reports it back (SQLite: ``sqlite_master.sql``; PostgreSQL: ``pg_get_triggerdef`` with
    ``{schema}`` for the store's schema). ``verify`` compares the text, so a no-op trigger of the same
    name is found, not only a missing one."""

    name: str
    table: str
    sql: str


_ABORT = "SELECT RAISE(ABORT, 'append-only GMP record: {what}'); END"


def _sqlite_guard(table: str, op: str, what: str, when: str = "") -> Guard:
    name = f"{table}_no_{op.lower()}"
    return Guard(name, table, f'CREATE TRIGGER "{name}" BEFORE {op} ON {_q(table)} {when}BEGIN '
                              + _ABORT.format(what=what))


def sqlite_guards() -> tuple[Guard, ...]:
    """The SQLite append-only triggers: a guarded table refuses UPDATE and DELETE; a run row may be
    updated until it is sealed (its chain head set) and never deleted."""
    out = [_sqlite_guard(t, op, f"{t} rows cannot be {verb}; record a correction instead")
           for t in _guarded_tables() for op, verb in (("UPDATE", "changed"), ("DELETE", "deleted"))]
    out.append(_sqlite_guard("run", "UPDATE", "a complete run cannot be changed", "WHEN OLD.chain_head IS NOT NULL "))
    out.append(_sqlite_guard("run", "DELETE", "runs cannot be deleted"))
    return tuple(out)


def _append_only_ddl() -> list[str]:
    """The SQLite trigger statements (``verify`` checks that the store holds exactly these)."""
    return [g.sql for g in sqlite_guards()]


PG_GUARD_FN_NAME = "celltx_append_only"
PG_GUARD_FN_BODY = """
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    RAISE EXCEPTION 'append-only GMP record: % cannot be truncated', TG_TABLE_NAME;
  END IF;
  IF TG_TABLE_NAME = 'run' THEN
    IF TG_OP = 'DELETE' THEN
      RAISE EXCEPTION 'append-only GMP record: runs cannot be deleted';
    END IF;
    IF OLD.chain_head IS NOT NULL THEN
      RAISE EXCEPTION 'append-only GMP record: a complete run cannot be changed';
    END IF;
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'append-only GMP record: % rows cannot be %; record a correction instead',
    TG_TABLE_NAME, CASE TG_OP WHEN 'UPDATE' THEN 'changed' ELSE 'deleted' END;
END """
_PG_GUARD_FN = (f"CREATE OR REPLACE FUNCTION {PG_GUARD_FN_NAME}() RETURNS trigger LANGUAGE plpgsql "
                f"AS $${PG_GUARD_FN_BODY}$$")


def pg_guards() -> tuple[Guard, ...]:
    """The PostgreSQL triggers: one plpgsql function; BEFORE UPDATE/DELETE per row and BEFORE TRUNCATE
    per statement on every guarded table and ``run`` (the run row may be updated until it is sealed)."""
    out = []
    for t in (*_guarded_tables(), "run"):
        for op, level in (("UPDATE", "ROW"), ("DELETE", "ROW"), ("TRUNCATE", "STATEMENT")):
            name = f"{t}_no_{op.lower()}"
            out.append(Guard(name, t, f"CREATE TRIGGER {name} BEFORE {op} ON {{schema}}.{t} "
                                      f"FOR EACH {level} EXECUTE FUNCTION {PG_GUARD_FN_NAME}()"))
    return tuple(out)


def _append_only_ddl_pg() -> list[str]:
    """The PostgreSQL statements that (re)create the function and the triggers."""
    out = [_PG_GUARD_FN]
    for g in pg_guards():
        out.append(g.sql.replace(f"CREATE TRIGGER {g.name}", f'CREATE OR REPLACE TRIGGER "{g.name}"')
                   .replace(f"{{schema}}.{g.table}", _q(g.table)))
    return out
