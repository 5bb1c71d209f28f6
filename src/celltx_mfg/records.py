"""Plain immutable records the model emits; everything downstream (store, analysis) reads only these.

Times are simulation days from the scenario start (float); ``None`` means "did not happen before the
horizon". Every record that concerns material carries the chain-of-identity id ``coi``; batch records
also carry ``batch_no`` (``<coi>-A<attempt>``), so a record can never be attributed to the wrong donor.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, Any, NamedTuple, Protocol


class PatientRecord(NamedTuple):
    coi: str
    patient_no: int
    site: str
    product: str
    urgency: str
    infectious: bool
    referred: float
    slot_booked: float | None  # when a start was first booked (slot mode)
    first_apheresis: float | None
    infused: float | None
    status: str  # infused | lost | in_progress
    lost_time: float | None
    lost_stage: str | None  # where the patient was when lost
    lost_reason: str | None  # dropout | manufacturing_failure | max_attempts | ...
    stage_at_horizon: str | None
    attempts: int


class BatchRecord(NamedTuple):
    coi: str
    batch_no: str
    attempt: int
    product: str
    status: str  # infused | released | failed | expired | in_progress | abandoned
    failure_reason: str | None
    slot_day: float | None  # booked manufacturing start
    apheresis_start: float | None
    apheresis_end: float | None
    received: float | None  # receipt at the plant (quarantine)
    ready: float | None  # material accepted and slot day reached: ready for the suite
    mfg_start: float | None  # first processing step starts
    mfg_end: float | None  # last processing step ends (cryopreserved)
    qc_complete: float | None  # last required result in
    released: float | None
    release_mode: str | None  # full | conditional | exceptional_oos
    shipped: float | None
    delivered: float | None
    infused: float | None
    expiry: float | None
    suite: str | None  # suite unit that ran its open steps
    oos: bool
    recalled: bool


class StepEvent(NamedTuple):
    coi: str
    batch_no: str
    step: str
    seq: int  # position in the process
    ready: float  # could have started (previous step done)
    start: float
    end: float
    resources: str  # "suite:S3;incubator:I12"
    operators: int
    open: bool
    outcome: str  # ok | failed


class ResourceUse(NamedTuple):
    # suite | incubator | closed_device | freezer | operators | qc_analysts | qa_reviewers | apheresis | infusion
    # | manufacturing_slot
    kind: str
    unit: str
    coi: str | None
    batch_no: str | None
    activity: str  # step name, "line_clearance", "qc:<test>", "qa_review", "start" or "rescheduled" (a slot)
    requested: float
    start: float
    end: float


class QCResult(NamedTuple):
    coi: str
    batch_no: str
    test: str
    sampled: float
    start: float  # analyst set-up starts
    result_time: float
    result: str  # pass | fail
    required_for_release: bool  # needed before release under the policy in force


class HoldLossCause(Enum):
    """Why fresh material missed its hold limit (rule 3), as its deviation record states it (``detail``
    ends with ``; cause: <value>``)."""

    TRANSIT_DELAY = "transit_delay"  # received too late to start on shift within the limit
    START_AFTER_HOLD = "start_after_hold"  # the booked start itself lies past the limit (lead too long)
    SUITE_LOST_LATE = "suite_lost_late"  # the booked suite was still busy after collection (an overrun)
    SUITE_QUEUE = "suite_queue"  # no slot plan: the material queued for any suite
    EQUIPMENT_BUSY = "equipment_busy"  # other equipment of the first step was busy
    STAFF_UNAVAILABLE = "staff_unavailable"  # units in hand, but no operators on shift in time


HOLD_LOSS_CAUSES = tuple(c.value for c in HoldLossCause)
_CAUSE = "; cause: "


def with_cause(detail: str, cause: HoldLossCause) -> str:
    """A hold-limit deviation's detail with its cause, in the one form ``cause_of`` reads back."""
    return f"{detail}{_CAUSE}{cause.value}"


def cause_of(detail: str) -> str | None:
    """The cause named in a deviation's detail (``with_cause``), None when it names none."""
    _, sep, cause = detail.rpartition(_CAUSE)
    return cause if sep else None


class Deviation(NamedTuple):
    coi: str | None
    batch_no: str | None
    time: float
    kind: str
    severity: str  # minor | major | critical
    stage: str
    detail: str
    closed: float | None


class Shipment(NamedTuple):
    coi: str
    batch_no: str
    direction: str  # inbound (apheresis -> plant) | outbound (plant -> site)
    origin: str
    destination: str
    depart: float
    arrive: float
    condition: str  # "2-8C" | "<=-150C"
    hold_limit_days: float
    excursion: bool


class ReleaseRecord(NamedTuple):
    coi: str
    batch_no: str
    time: float
    mode: str  # full | conditional | exceptional_oos
    signer_role: str  # qualified_person
    meaning: str  # released
    results_pending: str  # tests still pending at release ("" for full release)


class ResourceSummary(NamedTuple):
    kind: str
    capacity: int
    available_unit_days: float  # capacity x time available in the KPI window (shifts for staff)


@dataclass
class RunRecords:
    """Everything one replication produced: what ``simulate`` returns and ``store`` writes."""

    scenario_name: str
    seed: int
    replication: int
    horizon: float
    warmup: float
    patients: list[PatientRecord] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    steps: list[StepEvent] = field(default_factory=list)
    resource_uses: list[ResourceUse] = field(default_factory=list)
    qc_results: list[QCResult] = field(default_factory=list)
    deviations: list[Deviation] = field(default_factory=list)
    shipments: list[Shipment] = field(default_factory=list)
    releases: list[ReleaseRecord] = field(default_factory=list)
    resources: list[ResourceSummary] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)  # total cost components in the KPI window
    events: int = 0  # SimPy events processed (for benchmarks)
    # rows of the STREAMED tables already handed to a spool (``simulate(..., spool=...)``): they come
    # before the rows still in the lists above
    spool: RecordSpool | None = field(default=None, repr=False, compare=False)

    TABLES = (
        ("patients", PatientRecord),
        ("batches", BatchRecord),
        ("steps", StepEvent),
        ("resource_uses", ResourceUse),
        ("qc_results", QCResult),
        ("deviations", Deviation),
        ("shipments", Shipment),
        ("releases", ReleaseRecord),
        ("resources", ResourceSummary),
    )

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        """Every row of ``table`` in record order: the spooled ones first, then those in memory."""
        if self.spool is not None:
            yield from self.spool.rows(table)
        yield from getattr(self, table)

    def count(self, table: str) -> int:
        """How many rows ``table`` has, spooled ones included."""
        return len(getattr(self, table)) + (self.spool.count(table) if self.spool is not None else 0)

    def frames(self) -> dict[str, object]:
        """pandas DataFrames, one per record type, with the record's fields as columns (a spooled run
        is read back whole: analysis needs the full tables)."""
        import pandas as pd

        return {
            name: pd.DataFrame(getattr(self, name) if self.spool is None else list(self.rows(name)),
                               columns=list(cls._fields))
            for name, cls in self.TABLES
        }


class Recorder:
    """The model's one way to write a record: one typed method per kind, each appending to its list in
    ``RunRecords`` as the event happens (so record order is event order)."""

    __slots__ = ("_steps", "_uses", "_qc", "_deviations", "_shipments", "_releases")

    def __init__(self, rec: RunRecords) -> None:
        self._steps = rec.steps
        self._uses = rec.resource_uses
        self._qc = rec.qc_results
        self._deviations = rec.deviations
        self._shipments = rec.shipments
        self._releases = rec.releases

    def step(self, coi: str, batch_no: str, step: str, seq: int, ready: float, start: float, end: float,
             resources: str, operators: int, open: bool, outcome: str) -> None:
        self._steps.append(StepEvent(coi, batch_no, step, seq, ready, start, end, resources, operators, open, outcome))

    def resource_use(self, kind: str, unit: str, coi: str | None, batch_no: str | None, activity: str,
                     requested: float, start: float, end: float) -> None:
        self._uses.append(ResourceUse(kind, unit, coi, batch_no, activity, requested, start, end))

    def qc_result(self, coi: str, batch_no: str, test: str, sampled: float, start: float, result_time: float,
                  result: str, required_for_release: bool) -> None:
        self._qc.append(QCResult(coi, batch_no, test, sampled, start, result_time, result, required_for_release))

    def deviation(self, coi: str | None, batch_no: str | None, time: float, kind: str, severity: str, stage: str,
                  detail: str, closed: float | None) -> None:
        self._deviations.append(Deviation(coi, batch_no, time, kind, severity, stage, detail, closed))

    def shipment(self, coi: str, batch_no: str, direction: str, origin: str, destination: str, depart: float,
                 arrive: float, condition: str, hold_limit_days: float, excursion: bool) -> None:
        self._shipments.append(
            Shipment(coi, batch_no, direction, origin, destination, depart, arrive, condition, hold_limit_days,
                     excursion)
        )

    def release(self, coi: str, batch_no: str, time: float, mode: str, signer_role: str, meaning: str,
                results_pending: str) -> None:
        self._releases.append(ReleaseRecord(coi, batch_no, time, mode, signer_role, meaning, results_pending))


# ------------------------------------------------------------------------------------ streamed records
# the tables the model appends to while it runs (patients, batches and resources come at the horizon)
STREAMED = ("steps", "resource_uses", "qc_results", "deviations", "shipments", "releases")


class RecordSink(Protocol):
    """Where a streaming replication hands its records, one chunk of one table at a time, in event
    order (``RecordSpool`` keeps them on disk for the writer)."""

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None: ...


class RecordSpool:
    """A replication's streamed records on disk, one temporary file per table, until the writer stores
    them in its one transaction: the memory a run holds no longer grows with its horizon. Chunks are
    pickled plain tuples; ``rows`` reads them back in the order they came. The files are anonymous
    (``TemporaryFile``): they disappear when the spool is closed or the process dies, so an interrupted
    run leaves nothing behind."""

    def __init__(self, folder: str | None = None) -> None:
        self._folder = folder
        self._files: dict[str, IO[bytes]] = {}
        self._counts: dict[str, int] = {}

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        f = self._files.get(table)
        if f is None:
            f = self._files[table] = tempfile.TemporaryFile(prefix=f"celltx-{table}-", dir=self._folder)
        pickle.dump([tuple(r) for r in rows], f, protocol=pickle.HIGHEST_PROTOCOL)
        self._counts[table] = self._counts.get(table, 0) + len(rows)

    def count(self, table: str) -> int:
        return self._counts.get(table, 0)

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        """The table's spooled rows, oldest first (plain tuples in the record's field order)."""
        f = self._files.get(table)
        if f is None:
            return
        f.flush()
        end = f.tell()
        f.seek(0)
        try:
            while f.tell() < end:
                yield from pickle.load(f)
        finally:
            f.seek(end)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._counts.clear()


class StreamingRecorder(Recorder):
    """A ``Recorder`` that hands a table's rows to ``sink`` whenever ``chunk_rows`` have gathered, so a
    replication holds at most one chunk per table (the check is one ``len`` per record). Rows for which
    ``keep(table, row)`` is true are also kept in ``kept[table]``, in order, for an end-of-run summary
    that must read them."""

    __slots__ = ("_sink", "_limit", "_tables", "_keep", "kept")

    def __init__(self, rec: RunRecords, sink: RecordSink, chunk_rows: int,
                 keep: Callable[[str, Any], bool] | None = None) -> None:
        super().__init__(rec)
        self._sink = sink
        self._limit = max(1, int(chunk_rows))
        self._tables = {name: getattr(rec, name) for name in STREAMED}
        self._keep = keep
        self.kept: dict[str, list[Any]] = {name: [] for name in STREAMED}

    def _full(self, table: str, rows: list[Any]) -> None:
        if self._keep is not None:
            keep = self._keep
            self.kept[table].extend(r for r in rows if keep(table, r))
        self._sink.write(table, rows)
        rows.clear()  # in place: the model's RunRecords and this recorder share the list

    def flush(self) -> None:
        """Hand every table's gathered rows to the sink."""
        for table, rows in self._tables.items():
            if rows:
                self._full(table, rows)

    def step(self, *args: Any, **kwargs: Any) -> None:
        super().step(*args, **kwargs)
        if len(self._steps) >= self._limit:
            self._full("steps", self._steps)

    def resource_use(self, *args: Any, **kwargs: Any) -> None:
        super().resource_use(*args, **kwargs)
        if len(self._uses) >= self._limit:
            self._full("resource_uses", self._uses)

    def qc_result(self, *args: Any, **kwargs: Any) -> None:
        super().qc_result(*args, **kwargs)
        if len(self._qc) >= self._limit:
            self._full("qc_results", self._qc)

    def deviation(self, *args: Any, **kwargs: Any) -> None:
        super().deviation(*args, **kwargs)
        if len(self._deviations) >= self._limit:
            self._full("deviations", self._deviations)

    def shipment(self, *args: Any, **kwargs: Any) -> None:
        super().shipment(*args, **kwargs)
        if len(self._shipments) >= self._limit:
            self._full("shipments", self._shipments)

    def release(self, *args: Any, **kwargs: Any) -> None:
        super().release(*args, **kwargs)
        if len(self._releases) >= self._limit:
            self._full("releases", self._releases)
