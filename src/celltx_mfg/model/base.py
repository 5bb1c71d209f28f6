"""What every stage of the journey shares: the replication's clock, random streams, records and plant,
and the small moves any stage makes (a deviation, a patient entering a stage or lost, a dropout-aware
wait, staff time booked). The stages are mixins over this base; ``journey.Model`` puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any, cast

import simpy

from ..config import Scenario
from ..distributions import Stream, Streams
from ..records import Recorder, RunRecords
from . import rules
from .build import build_plant
from .entities import Batch, Outcome, Patient
from .plant import StaffPool, UnitPool
from .slotplan import SlotBooking

Proc = Generator[simpy.Event, Any, Any]
INF = math.inf
Priority = tuple[int, int, float]  # re-manufacture first, then urgency class, then referral time
RESCHEDULED = "rescheduled"  # activity of the manufacturing_slot record of a start moved before collection


class ModelBase:
    """One replication's state; the stage mixins read and change it."""

    def __init__(self, sc: Scenario, seed: int, replication: int = 0, start_time: float = 0.0) -> None:
        """``start_time``: the clock's first reading (a forecast starts at its state's ``as_of``; a plain run
        at day 0)."""
        self.sc = sc
        self.env = simpy.Environment(initial_time=start_time)
        self.streams = Streams(seed)
        self._stream_of = self.streams._streams  # the streams by name, read without a call on hot paths
        self._step_streams: dict[tuple[str, int], tuple[Stream, Stream | None]] = {}
        self._qc_plans: dict[str, tuple[Stream, Stream, float, bool]] = {}  # see Release.qc_plan
        self.rec = RunRecords(sc.name, seed, replication, sc.horizon_days, sc.warmup_days)
        self.record = Recorder(self.rec)
        plant = build_plant(self.env, sc)
        self.plant = plant
        # the hot paths read these on every step: plain attributes, no extra look-up through the plant
        self.suites, self.dedicated, self.pools = plant.suites, plant.dedicated, plant.pools
        self.operators, self.analysts, self.reviewers = plant.operators, plant.analysts, plant.reviewers
        self.starts, self.slotbook = plant.starts, plant.slotbook
        self.chairs, self.infusion_slots, self.open_hour = plant.chairs, plant.infusion_slots, plant.open_hour
        self.plans, self.plant_open = plant.plans, plant.plant_open
        self.suite_plans, self.uses_suite, self.site_quotas = plant.suite_plans, plant.uses_suite, plant.site_quotas
        self.slotbook.on_reschedule = self.rescheduled
        self.required_tests = rules.tests_required_for_release(sc.qc, sc.release)
        self.urgency_order = {u: i for i, u in enumerate(sc.booking.urgency_order)}
        self.open_holds: dict[tuple[str, str], tuple[str, str, str, float, float]] = {}
        self.open_until: dict[str, float] = {}  # batch -> when its last blocking deviation closes
        self.patients: list[Patient] = []
        self.batches: list[Batch] = []


    # ------------------------------------------------------------------ helpers
    def stream(self, source: str, dist: Any = None) -> Stream:
        return self._stream_of.get(source) or self.streams.get(source, dist)

    def step_streams(self, product: str, i: int, step: Any) -> tuple[Stream, Stream | None]:
        """A product step's duration and failure streams (looked up on every step: kept by index)."""
        key = (product, i)
        pair = self._step_streams.get(key)
        if pair is None:
            fail = None if step.failure is None else self.stream(f"fail:{product}:{step.name}")
            pair = (self.stream(f"step:{product}:{step.name}", step.duration), fail)
            self._step_streams[key] = pair
        return pair

    def deviation(self, b: Batch | None, p: Patient | None, kind: str, severity: str, stage: str,
                  detail: str) -> float | None:
        """Record a deviation; major and critical ones get an investigation that must close before release."""
        closed = None
        if rules.blocks_release(severity):
            closed = self.env.now + self.stream("deviation_investigation", self.sc.gmp.deviation_investigation).sample()
            if b is not None:
                self.open_until[b.batch_no] = max(closed, self.open_until.get(b.batch_no, 0.0))
        self.record.deviation(p.coi if p else None, b.batch_no if b else None, self.env.now, kind, severity, stage,
                              detail, closed)
        return closed

    def enter(self, p: Patient, stage: str) -> bool:
        """Move the patient to ``stage``; False when the patient dropped out before getting here."""
        if self.env.now >= p.dropout_at:
            self.lose(p, "dropout", p.dropout_at)
            return False
        p.stage = stage
        return True

    def lose(self, p: Patient, reason: str, when: float | None = None) -> None:
        p.status = "lost"
        p.lost_time = self.env.now if when is None else when
        p.lost_stage = p.stage
        p.lost_reason = reason

    def wait_until(self, p: Patient, t: float) -> Proc:
        """Wait until ``t`` unless the patient drops out first; returns False on dropout."""
        if p.dropout_at < t:
            if p.dropout_at > self.env.now:
                yield self.env.timeout(p.dropout_at - self.env.now)
            self.lose(p, "dropout", p.dropout_at)
            return False
        if t > self.env.now:
            yield self.env.timeout(t - self.env.now)
        return True

    def staff_use(self, pool: StaffPool, n: int, b: Batch | None, activity: str, requested: float,
                  start: float) -> None:
        for _ in range(n):
            self.record.resource_use(pool.kind, pool.kind, b.coi if b else None, b.batch_no if b else None, activity,
                                     requested, start, self.env.now)

    def priority(self, p: Patient, b: Batch) -> Priority:
        """Re-manufacture first (the patient has waited once already) unless the scenario ranks it like a
        first attempt, then urgency class, then arrival."""
        first = b.attempt > 1 and self.sc.booking.remanufacture.priority == "first"
        return (0 if first else 1, p.urgency_rank, p.referred)


    def ship(self, p: Patient, b: Batch, leg: str, origin: str, destination: str, transit: float, condition: str,
             hold: float, excursion: bool) -> Proc:
        """One leg under chain of custody, recorded at departure; returns RECOLLECT when the shipper's
        hold was exceeded on the way, else None."""
        env = self.env
        self.record.shipment(p.coi, b.batch_no, leg, origin, destination, env.now, env.now + transit, condition, hold,
                             excursion)
        yield env.timeout(transit)
        if leg == "inbound":
            b.received = env.now
        else:
            b.delivered = env.now
        if excursion:
            return self.excursion(p, b, leg, transit)
        return None

    def excursion(self, p: Patient, b: Batch, leg: str, transit: float) -> Outcome:
        """A shipment longer than the shipper's validated hold left its temperature range: the material
        is lost and the patient needs a new collection (rule 12)."""
        self.deviation(b, p, "shipper_hold_exceeded", "critical", f"{leg}_transit",
                       f"{leg} transit {transit:.2f} d > shipper hold {self.sc.gmp.shipper_hold_days:g} d")
        b.status, b.failure_reason = "failed", f"{leg}_excursion"
        return Outcome.RECOLLECT

    def rescheduled(self, slot: SlotBooking, old_day: int) -> None:
        """A booked start moved before collection: the batch gets its new day and the slot given up is
        recorded (a zero-length manufacturing_slot use, activity ``rescheduled``, at the old day)."""
        b = cast(Batch, slot.owner)
        b.slot_day = float(slot.day)
        self.record.resource_use("manufacturing_slot", "slot", b.coi, b.batch_no, RESCHEDULED, self.env.now,
                                 float(old_day), float(old_day))

    def pool_for(self, p: Patient, kind: str) -> UnitPool:
        if kind == "suite":
            return self.dedicated if p.infectious else self.suites
        return self.pools[kind]

