"""The engine's view of a plant state: every live patient at one stage with its clocks, in simulation days
(days from the scenario's ``start_date``), and the units out of service.

This is what the model needs to start from, nothing more; the plant-state files (CSV folder, YAML or JSON,
``celltx_mfg.plantstate``) are read, validated and turned into this form by :mod:`.adapt`, so the engine
never parses a file and a state built in code (tests, the back-test) needs no files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum


class LiveStage(Enum):
    """Where a live patient is when the forecast starts, in journey order."""

    WAITING_FOR_SLOT = "waiting_for_slot"  # referred, no manufacturing slot (or chair) booked yet
    SLOT_BOOKED = "slot_booked"  # start day and apheresis day booked, not collected
    INBOUND_TRANSIT = "inbound_transit"  # collected, material on its way to the plant
    WAITING_FOR_SUITE = "waiting_for_suite"  # received at the plant, waiting for the start day or a suite
    MANUFACTURING = "manufacturing"  # a step in progress on its units
    QC = "qc"  # made; release tests running
    QA_RELEASE = "qa_release"  # the required results in hand; QA review or the QP's release to come
    RELEASED = "released"  # released, not shipped
    OUTBOUND_TRANSIT = "outbound_transit"  # shipped to the site
    AWAITING_INFUSION = "awaiting_infusion"  # at the site, lymphodepletion and the infusion to come

    @property
    def order(self) -> int:
        return _ORDER[self]

    def at_or_after(self, other: LiveStage) -> bool:
        return self.order >= other.order


_ORDER = {s: i for i, s in enumerate(LiveStage)}


@dataclass(frozen=True)
class LivePatient:
    """One live patient and the batch of its current attempt. Times are simulation days; ``None`` is not
    yet (or not known). Only the fields of the patient's stage and earlier ones are read."""

    coi: str
    site: str
    product: str
    urgency: str
    stage: LiveStage
    referred: float
    infectious: bool = False
    attempt: int = 1  # the current batch's attempt number (earlier ones failed)
    label: str = ""  # the stage as the state file names it (reported back unchanged); default stage.value
    slot_booked: float | None = None  # when the start was booked
    slot_day: int | None = None  # booked manufacturing start day
    aph_day: int | None = None  # booked apheresis day
    suite: str | None = None  # the suite booked or held
    first_apheresis: float | None = None
    apheresis_start: float | None = None
    apheresis_end: float | None = None  # collection end: the fresh hold clock and the transit start
    received: float | None = None
    step: int | None = None  # the product step in progress (index into the scenario's steps)
    step_start: float | None = None
    step_started: bool = True  # False: waiting for the step's own units or operators (held ones kept)
    units: Mapping[str, str] = field(default_factory=dict)  # kind -> unit held (suite, incubator, ...)
    mfg_start: float | None = None
    mfg_end: float | None = None
    tests_started: Mapping[str, float] = field(default_factory=dict)  # QC test -> sampled
    results: Mapping[str, bool] = field(default_factory=dict)  # QC test -> failed (results in hand)
    qc_complete: float | None = None
    review_start: float | None = None  # QA review under way since
    review_done: bool = False  # QA review finished, the QP's release to come
    released: float | None = None
    shipped: float | None = None
    oos: bool = False
    booked_infusion_day: int | None = None  # the clinic's booked infusion date, as a simulation day

    @property
    def stage_label(self) -> str:
        return self.label or self.stage.value


@dataclass(frozen=True)
class OutOfService:
    """A unit taken out of service until ``until`` (a simulation day): breakdown, requalification."""

    kind: str  # suite | incubator | closed_device | freezer
    unit: str
    until: float


@dataclass(frozen=True)
class StartState:
    """The plant at ``as_of`` (a simulation day): what the forecast starts from."""

    as_of: float
    patients: tuple[LivePatient, ...] = ()
    out_of_service: tuple[OutOfService, ...] = ()

    def digest(self) -> str:
        """Content hash of the state as the engine sees it: two forecasts of the same state share it."""
        body = {
            "as_of": self.as_of,
            "patients": [{**asdict(p), "stage": p.stage.value, "units": dict(p.units),
                          "tests_started": dict(p.tests_started), "results": dict(p.results)}
                         for p in self.patients],
            "out_of_service": [asdict(o) for o in self.out_of_service],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
