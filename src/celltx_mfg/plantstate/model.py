"""The plant's state at one moment: every live patient, where their material is and what it holds.

A state is what a plant knows on a morning (or what a stored simulated run knew at day DAY): patients
referred and waiting, slots booked, material collected or in transit on its hold clock, batches in
manufacturing at a step, batches in QC with the tests started and the results in hand, batches awaiting
QA review or release, released product on its way to the site or waiting there for infusion, and units
out of service. It says nothing about the future: no durations still to come, no dropout times. The
forecast draws those.

Times are calendar ``datetime`` values in the plant's local time (no zone), whole seconds; a date alone
means its midnight. The scenario's ``start_date`` maps them to simulation days (``days_from``).

Rows are frozen dataclasses; the kinds are the files of a state folder (``KINDS``), each row's fields
are the file's columns in order. Whether a state makes sense against a scenario (units that exist, steps
of the product's process, tests of the QC panel) is checked in ``plantstate.validate``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    """Where a live patient is. The order is the journey's; each stage says which rows must exist."""

    waiting_for_slot = "waiting_for_slot"  # referred, no manufacturing start booked yet
    slot_booked = "slot_booked"  # start and apheresis chair booked, not yet collected
    apheresis = "apheresis"  # being collected now
    inbound_transit = "inbound_transit"  # collected, on the way to the plant (hold clock running)
    waiting_for_suite = "waiting_for_suite"  # received at the plant, quarantine, waiting for its first step
    manufacturing = "manufacturing"  # at a step of the product's process (running or waiting for units/staff)
    qc = "qc"  # made (cryopreserved); release tests running
    awaiting_release = "awaiting_release"  # the results release needs are in; QA review and QP release
    released = "released"  # released, not yet shipped
    outbound_transit = "outbound_transit"  # shipped to the treating site
    awaiting_infusion = "awaiting_infusion"  # at the site: lymphodepletion and the infusion slot


STAGE_ORDER = {s: i for i, s in enumerate(Stage)}
COLLECTED = frozenset(s for s in Stage if STAGE_ORDER[s] >= STAGE_ORDER[Stage.inbound_transit])
MADE = frozenset(s for s in Stage if STAGE_ORDER[s] >= STAGE_ORDER[Stage.qc])


class UnitKind(StrEnum):
    """Exclusive equipment a batch holds (one batch per unit at a time), named as the scenario's plant
    names them: suites S1.., dedicated suites SD1.., incubators I1.., closed devices C1.., freezers F1.."""

    suite = "suite"
    incubator = "incubator"
    closed_device = "closed_device"
    freezer = "freezer"


class QCOutcome(StrEnum):
    passed = "pass"
    failed = "fail"


class ReleaseMode(StrEnum):
    full = "full"
    conditional = "conditional"
    exceptional_oos = "exceptional_oos"


@dataclass(frozen=True, slots=True)
class StateInfo:
    """What the state is: the moment it describes and where it came from (file ``state``)."""

    as_of: dt.datetime
    scenario: str | None = None  # the scenario's name it was taken against, for the reader
    source: str | None = None  # e.g. "snapshot of run 3 (db.sqlite) at day 120"


@dataclass(frozen=True, slots=True)
class PatientState:
    """A live patient (file ``patients``), one row per chain of identity."""

    coi: str
    site: str
    product: str
    urgency: str
    infectious: bool
    referred: dt.datetime
    stage: Stage
    attempt: int  # the attempt now going on: 1 for the first collection, 2 after one failed batch
    booked_infusion: dt.datetime | None = None  # the clinic's booked infusion date, where there is one


@dataclass(frozen=True, slots=True)
class SlotState:
    """A booked manufacturing start and its apheresis chair (file ``slots``), for patients not yet in
    the suite. ``suite`` is the suite the slot plan booked, when the plant books suites."""

    coi: str
    batch_no: str
    booked: dt.datetime  # when the start was booked
    apheresis: dt.datetime  # the chair day
    start: dt.datetime  # the booked manufacturing start day
    suite: str | None = None


@dataclass(frozen=True, slots=True)
class BatchState:
    """One collection's material from apheresis on (file ``batches``): the live attempt of a patient.
    Times not reached yet are empty; ``hold_until`` is fresh material's hold limit (collection end plus
    the validated limit) until its first step starts."""

    coi: str
    batch_no: str
    attempt: int
    apheresis_start: dt.datetime
    apheresis_end: dt.datetime | None = None
    hold_until: dt.datetime | None = None
    received: dt.datetime | None = None
    mfg_start: dt.datetime | None = None
    mfg_end: dt.datetime | None = None
    expiry: dt.datetime | None = None
    oos: bool = False
    qa_review_start: dt.datetime | None = None
    released: dt.datetime | None = None
    release_mode: ReleaseMode | None = None
    shipped: dt.datetime | None = None
    delivered: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class StepState:
    """The step a batch in manufacturing is at (file ``steps``): its name in the product's process,
    when the previous step ended (``ready``) and when it started; ``started`` empty means the batch is
    waiting for that step's units or operators."""

    batch_no: str
    step: str
    ready: dt.datetime
    started: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class UnitHeld:
    """A unit a batch holds now (file ``units_held``): suite, incubator, closed device or freezer."""

    batch_no: str
    kind: UnitKind
    unit: str
    since: dt.datetime


@dataclass(frozen=True, slots=True)
class QCTestState:
    """A release test of a batch (file ``qc_tests``): sampled, set up by an analyst (``started``), and
    its result when in hand."""

    batch_no: str
    test: str
    sampled: dt.datetime
    started: dt.datetime | None = None
    result: QCOutcome | None = None
    result_time: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class OutOfService:
    """A unit out of service until a date (file ``out_of_service``): maintenance, an environmental
    excursion, line clearance running, a requalification."""

    kind: UnitKind
    unit: str
    until: dt.datetime
    since: dt.datetime | None = None
    reason: str | None = None


ROW_TYPES: dict[str, type] = {
    "patients": PatientState,
    "slots": SlotState,
    "batches": BatchState,
    "steps": StepState,
    "units_held": UnitHeld,
    "qc_tests": QCTestState,
    "out_of_service": OutOfService,
}
KINDS = ("state", *ROW_TYPES)  # the files of a state folder, in the order they are written and checked


def sort_key(row: Any) -> tuple[str, ...]:
    """Rows are kept in one order so that writing a state twice gives the same bytes: by their fields
    as text, in column order (coi or batch number first)."""
    return tuple("" if getattr(row, f.name) is None else str(getattr(row, f.name)) for f in fields(row))


@dataclass(frozen=True)
class PlantState:
    """A whole plant state; the row tuples are sorted (``sort_key``) whatever order they came in."""

    info: StateInfo
    patients: tuple[PatientState, ...] = ()
    slots: tuple[SlotState, ...] = ()
    batches: tuple[BatchState, ...] = ()
    steps: tuple[StepState, ...] = ()
    units_held: tuple[UnitHeld, ...] = ()
    qc_tests: tuple[QCTestState, ...] = ()
    out_of_service: tuple[OutOfService, ...] = ()
    # where each row was read from ("batches.csv row 4"), by the row object's id, for error messages
    sources: dict[int, str] = field(default_factory=dict, repr=False, compare=False)
    _index: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for kind in ROW_TYPES:
            object.__setattr__(self, kind, tuple(sorted(getattr(self, kind), key=sort_key)))

    @property
    def as_of(self) -> dt.datetime:
        return self.info.as_of

    def rows(self, kind: str) -> tuple[Any, ...]:
        return tuple(getattr(self, kind))

    def patient(self, coi: str) -> PatientState | None:
        return self._by("patients", "coi").get(coi)

    def batch_of(self, coi: str) -> BatchState | None:
        """The patient's live batch (from apheresis on), None before collection."""
        return self._by("batches", "coi").get(coi)

    def slot_of(self, coi: str) -> SlotState | None:
        return self._by("slots", "coi").get(coi)

    def step_of(self, batch_no: str) -> StepState | None:
        return self._by("steps", "batch_no").get(batch_no)

    def units_of(self, batch_no: str) -> tuple[UnitHeld, ...]:
        return tuple(u for u in self.units_held if u.batch_no == batch_no)

    def tests_of(self, batch_no: str) -> tuple[QCTestState, ...]:
        return tuple(t for t in self.qc_tests if t.batch_no == batch_no)

    def _by(self, kind: str, key: str) -> dict[str, Any]:
        idx = self._index.get(f"{kind}.{key}")
        if idx is None:
            idx = self._index[f"{kind}.{key}"] = {getattr(r, key): r for r in getattr(self, kind)}
        return idx

    def state_hash(self) -> str:
        """sha256 of the state's canonical JSON text: the same state always has the same hash, however
        it was read (a forecast names the state it started from by this)."""
        from .io import state_json_text

        return hashlib.sha256(state_json_text(self).encode()).hexdigest()


def days_from(start: dt.date, when: dt.datetime) -> float:
    """Simulation days of ``when`` for a scenario whose day 0 is ``start`` (its ``start_date``)."""
    return (when - dt.datetime.combine(start, dt.time())).total_seconds() / 86400.0


def at_day(start: dt.date, day: float) -> dt.datetime:
    """The datetime of simulation day ``day`` (the inverse of ``days_from``), to the whole second."""
    seconds = round(day * 86400.0)
    return dt.datetime.combine(start, dt.time()) + dt.timedelta(seconds=seconds)
