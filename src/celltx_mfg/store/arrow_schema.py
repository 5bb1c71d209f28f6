"""The Arrow schema of every exported table, derived once from the store's tables (`schema`) and the
record NamedTuples (`records`): types, units and meanings. Exports write it; `scripts/data_dictionary.py`
renders it as `docs/data-dictionary.md`.

* integers are `int64` (nullable where the column allows NULL), booleans `bool`, text `string`;
* enumerated columns (a CHECK `col IN ('a', 'b')` in the store) are dictionary columns;
* wall-clock entry times (`scenario.created`, `run.started`/`finished`, `correction.time`) are
  UTC timestamps;
* every event time (simulated days since the scenario's `start_date`) is kept as stored (`float64`
  days) and added as `<field>_at`: the absolute UTC timestamp `start_date + days`.
"""

import inspect
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ..records import RunRecords
from .schema import _ALL_TABLES, _BY_NAME, CorrectionRow, RunRow, ScenarioRow

TIMESTAMP = pa.timestamp("us", tz="UTC")
CATEGORY = pa.dictionary(pa.int32(), pa.string())
AT_SUFFIX = "_at"

# wall-clock entry times, stored as ISO-8601 UTC text
_WALL_CLOCK = {"scenario": ("created",), "run": ("started", "finished"), "correction": ("time",)}
# float fields of records that are durations or amounts, not event times
_NOT_EVENT_TIMES = {"hold_limit_days": "days", "available_unit_days": "unit-days"}
_ENUM_CHECK = re.compile(r'^"?(\w+)"? IN \((.*)\)$')
_QUOTED = re.compile(r"'([^']*)'")

# meanings of columns that no comment in records.py / schema.py explains; (table, column) or column
_MEANINGS: dict[str, str] = {
    "id": "Row id (primary key).",
    "run_id": "The run (`run.id`) this row belongs to.",
    "row_seq": "Position of the row within its run and table (0-based); with `run_id` the primary key.",
    "digest": "Hash-chain link: sha256 (hex) of the previous row's digest and this row's canonical bytes.",
    "coi": "Chain-of-identity id of the patient/donor whose material this concerns.",
    "batch_no": "Batch number, `<coi>-A<attempt>`.",
    "product": "Product (CAR-T therapy) made for the patient.",
    "scenario.name": "Scenario name from its YAML.",
    "scenario.text": "The scenario's full YAML text, as run.",
    "scenario.created": "When the scenario text was first stored.",
    "run.scenario_id": "The scenario (`scenario.id`) this run simulated.",
    "run.replication": "Replication number within its experiment (0-based).",
    "run.seed": "Random seed of the replication.",
    "run.package_version": "celltx-mfg version that simulated the run.",
    "run.status": "Run status: only whole, complete runs are stored.",
    "run.started": "When the simulation started (wall clock).",
    "run.finished": "When the simulation finished (wall clock).",
    "run.horizon": "Simulated length of the run.",
    "run.warmup": "Warm-up period excluded from KPIs.",
    "run.events": "SimPy events processed.",
    "run.costs_json": "JSON {cost component: total} in the KPI window.",
    "run.label": "Optional user label of the run.",
    "run.digest": "sha256 (hex) sealing the run row's fields and `chain_head`.",
    "correction.run_id": "The run whose record row is corrected.",
    "correction.table_name": "Table of the corrected record row.",
    "correction.row_seq": "`row_seq` of the corrected record row.",
    "correction.reason": "Why the values were corrected.",
    "correction.new_values_json": "JSON {field: new value} superseding the row's values.",
    "correction.time": "When the correction was entered (wall clock).",
    "correction.actor": "Who entered the correction (role:initials).",
    "patient.patient_no": "Patient number in referral order.",
    "patient.site": "Treatment site that referred the patient.",
    "patient.urgency": "Clinical urgency class.",
    "patient.infectious": "Donor material is infectious (needs segregated processing).",
    "patient.referred": "When the patient was referred.",
    "patient.first_apheresis": "When the first apheresis (cell collection) started.",
    "patient.infused": "When the patient was infused.",
    "patient.status": "Outcome at the horizon.",
    "patient.lost_time": "When the patient was lost.",
    "patient.stage_at_horizon": "Stage the patient was in at the horizon (if still in progress).",
    "patient.attempts": "Manufacturing attempts made for the patient.",
    "batch.attempt": "Attempt number for the patient (1-based).",
    "batch.status": "Batch outcome at the horizon.",
    "batch.failure_reason": "Why the batch failed, expired or was abandoned.",
    "batch.apheresis_start": "Apheresis (collection) starts.",
    "batch.apheresis_end": "Apheresis (collection) ends.",
    "batch.released": "QP release signed.",
    "batch.release_mode": "How the batch was released.",
    "batch.shipped": "Shipped to the treatment site.",
    "batch.delivered": "Delivered to the treatment site.",
    "batch.infused": "Infused into the patient.",
    "batch.expiry": "Shelf-life expiry of the product.",
    "batch.oos": "A QC result was out of specification.",
    "batch.recalled": "The batch was recalled.",
    "step_event.step": "Process step name.",
    "step_event.start": "Step starts.",
    "step_event.end": "Step ends.",
    "step_event.resources": "Resource units held, `kind:unit` separated by `;`.",
    "step_event.operators": "Operators the step needs.",
    "step_event.open": "Open (aseptic) step: needs a cleanroom suite.",
    "step_event.outcome": "Step outcome.",
    "resource_use.unit": "Resource unit (e.g. suite S3).",
    "resource_use.requested": "Resource requested.",
    "resource_use.start": "Resource seized.",
    "resource_use.end": "Resource released.",
    "qc_test.test": "QC test name.",
    "qc_test.sampled": "QC sample taken.",
    "qc_test.result_time": "QC result available.",
    "qc_test.result": "QC result.",
    "deviation.time": "Deviation raised.",
    "deviation.kind": "Kind of deviation.",
    "deviation.severity": "Deviation severity.",
    "deviation.stage": "Process stage where it happened.",
    "deviation.detail": "Free-text description; a hold-limit deviation ends with '; cause: <cause>'.",
    "deviation.closed": "Deviation closed by QA.",
    "shipment.direction": "Inbound: apheresis material to the plant; outbound: product to the treatment site.",
    "shipment.origin": "Where the shipment leaves from.",
    "shipment.destination": "Where the shipment goes.",
    "shipment.depart": "Shipment departs.",
    "shipment.arrive": "Shipment arrives.",
    "shipment.condition": "Shipping temperature condition.",
    "shipment.hold_limit_days": "Allowed time in transit under this condition.",
    "shipment.excursion": "Transit exceeded the hold limit (temperature excursion).",
    "release.time": "Release signed.",
    "release.mode": "Release mode.",
    "release.signer_role": "Role of the signer.",
    "release.meaning": "Meaning of the signature.",
    "release.record_digest": "sha256 (hex) of the batch record (batch, steps, QC, deviations) when signed.",
    "resource.kind": "Resource kind.",
    "resource_use.kind": "Resource kind.",
    "resource.capacity": "Units (or staff) of this kind.",
}


@dataclass(frozen=True)
class Column:
    """One exported column: Arrow type, nullability, unit and meaning; `days_of` names the stored
    event-time column a `<field>_at` timestamp is computed from."""

    name: str
    type: pa.DataType
    nullable: bool
    unit: str
    meaning: str
    values: tuple[str, ...] = ()  # allowed values of an enumerated column
    days_of: str | None = None


def _comments(cls: type) -> dict[str, str]:
    """`field: type  # comment` (and comment lines just above a field) of a class's source."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        s = line.strip()
        if s.startswith("#"):
            pending.append(s.lstrip("# ").strip())
            continue
        m = re.match(r"^(\w+)\s*:[^#]*(?:#\s*(.*))?$", s)
        if m:
            text = " ".join([*pending, *([m.group(2)] if m.group(2) else [])]).strip()
            if text:
                out[m.group(1)] = text
        pending = []
    return out


def _enums(t: sa.Table) -> dict[str, tuple[str, ...]]:
    """Enumerated columns: the store's CHECK (col IN ('a', 'b', ...)) constraints."""
    out: dict[str, tuple[str, ...]] = {}
    for c in t.constraints:
        if isinstance(c, sa.CheckConstraint):
            m = _ENUM_CHECK.match(str(c.sqltext).strip())
            if m and m.group(1) in t.c and _QUOTED.search(m.group(2)):
                out[m.group(1)] = tuple(_QUOTED.findall(m.group(2)))
    return out


def _arrow_type(col: sa.Column[Any]) -> pa.DataType:
    ty = col.type
    if isinstance(ty, sa.Boolean):
        return pa.bool_()
    if isinstance(ty, sa.Integer):
        return pa.int64()
    if isinstance(ty, sa.Float):
        return pa.float64()
    return pa.string()  # text; binary digests are exported as hex


def _class_comments(table: str) -> dict[str, str]:
    cls: type = {"scenario": ScenarioRow, "run": RunRow, "correction": CorrectionRow}.get(table, object)
    if table in _BY_NAME:
        cls = dict(RunRecords.TABLES)[_BY_NAME[table].attr]
    return {} if cls is object else _comments(cls)


def _meaning(table: str, col: str, comments: dict[str, str], values: tuple[str, ...]) -> str:
    text = _MEANINGS.get(f"{table}.{col}") or _MEANINGS.get(col) or ""
    note = comments.get(col, "")
    if values and set(re.split(r"[\s|]+", note.replace('"', ""))) >= set(values):
        note = ""  # the comment only lists the values, which the dictionary shows anyway
    if note == "UTC ISO timestamp":
        note = ""  # stored as text, exported as a timestamp
    parts = [p.rstrip(". |") for p in (text, note) if p]
    return ("; ".join(parts) + ".") if parts else ""


def _unit(table: str, col: str, ty: pa.DataType, event_time: bool) -> str:
    if ty == TIMESTAMP:
        return "UTC timestamp"
    if event_time:
        return "days since start"
    if col in _NOT_EVENT_TIMES:
        return _NOT_EVENT_TIMES[col]
    if table == "run" and col in ("horizon", "warmup"):
        return "days"
    if ty == pa.int64() and col not in ("id", "run_id", "row_seq", "scenario_id", "replication", "seed",
                                        "patient_no", "attempt", "seq"):
        return "count"
    if col == "costs_json":
        return "currency (JSON)"
    if ty == pa.int64():
        return "id / number"
    if ty == pa.bool_():
        return "flag"
    if ty == CATEGORY:
        return "category"
    return "text"


def _table_columns(t: sa.Table) -> tuple[Column, ...]:
    enums = _enums(t)
    comments = _class_comments(t.name)
    spec = _BY_NAME.get(t.name)
    out: list[Column] = []
    for c in t.columns:
        name = str(c.name)
        ty = _arrow_type(c)
        values = enums.get(name, ())
        if values:
            ty = CATEGORY
        if name in _WALL_CLOCK.get(t.name, ()):
            ty = TIMESTAMP
        event_time = spec is not None and ty == pa.float64() and name not in _NOT_EVENT_TIMES
        nullable = bool(c.nullable)
        meaning = _meaning(t.name, name, comments, values)
        out.append(Column(name, ty, nullable, _unit(t.name, name, ty, event_time), meaning, values))
        if event_time:
            out.append(Column(name + AT_SUFFIX, TIMESTAMP, nullable, "UTC timestamp",
                              f"`{name}` as an absolute time: scenario `start_date` (00:00 UTC) + days.",
                              days_of=name))
    return tuple(out)


TABLES: dict[str, tuple[Column, ...]] = {t.name: _table_columns(t) for t in _ALL_TABLES}


def arrow_schema(table: str) -> pa.Schema:
    """The declared Arrow schema of one exported table."""
    return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in TABLES[table]])


SCHEMAS: dict[str, pa.Schema] = {name: arrow_schema(name) for name in TABLES}
