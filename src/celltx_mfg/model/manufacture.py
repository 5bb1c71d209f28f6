"""Manufacture: the product's steps on exclusive units (suites, incubators, devices, freezers) and
operators on shift, line clearance after open processing, and the one place a stopped batch gives its
units and suite reservation back."""

from __future__ import annotations

import math
from typing import NoReturn, cast

from simpy import Event

from ..config import Step
from ..records import HoldLossCause, with_cause
from . import rules
from .base import ModelBase, Priority, Proc
from .build import ProductPlan
from .entities import Batch, BatchStopped, Outcome, Patient
from .plant import UnitPool


class Manufacture(ModelBase):
    def end_reservation(self, b: Batch, processed: bool = False) -> None:
        """The suite is back (or never needed): the plan projects it clear after line clearance (when it
        was processed in) and gives the rest of the booking to the slot book."""
        self.slotbook.release(b.slot, processed)

    def release_held(self, p: Patient, b: Batch, kinds: list[str], processed: bool = True) -> None:
        for kind in kinds:
            unit, requested, start, first = b.held.pop(kind)
            self.open_holds.pop((kind, unit), None)
            self.record.resource_use(kind, unit, b.coi, b.batch_no, first, requested, start, self.env.now)
            pool = self.pool_for(p, kind)
            if kind == "suite" and processed:
                self.env.process(self.line_clearance(pool, unit, b, p.infectious))
            else:
                pool.release(unit)
            if kind == "suite":
                self.end_reservation(b, processed)

    def line_clearance(self, pool: UnitPool, unit: str, b: Batch, infectious: bool) -> Proc:
        """Clearance, cleaning and second-person verification before the next donor (rule 6); extra
        decontamination after an infectious-marker-positive donor (rule 4)."""
        gmp = self.sc.gmp
        released = self.env.now
        dur = self.stream("line_clearance", gmp.line_clearance).sample()
        if infectious:
            dur += self.stream("infectious_decontamination", gmp.infectious_decontamination).sample()
        self.open_holds[("suite", unit)] = (b.coi, b.batch_no, "line_clearance", released, released)
        yield from self.operators.acquire(gmp.clearance_operators, dur, (0, 0, 0, released))
        start = self.env.now
        yield self.env.timeout(dur)
        self.operators.release(gmp.clearance_operators)
        self.staff_use(self.operators, gmp.clearance_operators, b, "line_clearance", released, start)
        self.open_holds.pop(("suite", unit), None)
        self.record.resource_use("suite", unit, b.coi, b.batch_no, "line_clearance", released, released, self.env.now)
        pool.release(unit)

    def abandon(self, p: Patient, b: Batch, status: str, reason: str | None, processed: bool = True) -> None:
        self.release_held(p, b, list(b.held), processed)
        self.end_reservation(b)
        b.status = status
        b.failure_reason = reason

    def manufacture(self, p: Patient, b: Batch) -> Proc:
        """The product's steps in order. Any stop returns the batch's units and the rest of its suite
        reservation here, in one place."""
        sc = self.sc
        steps = sc.products[p.product].steps
        plan = self.plans[p.product]
        prio = self.priority(p, b)
        assert b.apheresis_end is not None  # collected before it is made
        fresh = sc.gmp.starting_material == "fresh" and sc.gmp.on_hold_exceeded == "recollect"
        deadline = b.apheresis_end + sc.gmp.fresh_hold_limit_hours / 24.0 if fresh else None
        try:
            for i, step in enumerate(steps):
                yield from self.run_step(p, b, i, step, plan, prio, deadline if i == 0 else None)
                if i + 1 < len(steps) and self.env.now >= p.dropout_at:
                    self.lose(p, "dropout", p.dropout_at)
                    raise BatchStopped(Outcome.LOST, "abandoned", "patient_lost")
        except BatchStopped as stop:
            self.abandon(p, b, stop.status, stop.reason, stop.processed)
            return stop.outcome
        b.mfg_end = self.env.now
        b.expiry = self.env.now + sc.gmp.shelf_life_days
        self.end_reservation(b)
        return Outcome.MADE

    def acquire_units(self, p: Patient, b: Batch, step: Step, kinds: list[str], prio: Priority,
                      deadline: float | None, first: bool = False) -> Proc:
        """Take the units the step needs, in order. With a ``deadline`` (fresh material waiting for its
        first step) QA rejects the material when its hold limit passes first (rule 3). At the ``first``
        step nothing has been processed yet, so a patient who drops out while queueing leaves the queue
        at once: no start, no line clearance, the units already taken go straight back."""
        env = self.env
        ready = env.now
        for kind in kinds:
            pool = self.pool_for(p, kind)
            ev = pool.request(prio, self.booked_unit(b, kind, pool))
            if not ev.triggered:
                yield from self.wait_for_unit(p, b, kind, pool, ev, deadline, first)
            unit = cast(str, ev.value)  # a granted request carries the unit name
            b.held[kind] = [unit, ready, env.now, step.name]
            if kind == "suite":
                b.suite = unit
            self.open_holds[(kind, unit)] = (b.coi, b.batch_no, step.name, ready, env.now)
        return ready

    def wait_for_unit(self, p: Patient, b: Batch, kind: str, pool: UnitPool, ev: Event, deadline: float | None,
                      first: bool) -> Proc:
        """Queue for one unit until it is granted, the material's hold limit passes or (before any
        processing) the patient drops out, whichever comes first; the last two leave the queue."""
        env = self.env
        dropout = p.dropout_at if first else math.inf
        limit = math.inf if deadline is None else deadline
        if min(limit, dropout) == math.inf:
            yield ev
            return
        yield ev | env.timeout(max(0.0, min(limit, dropout) - env.now))
        if ev.triggered:
            return
        pool.cancel(ev)
        if dropout <= limit:
            self.lose(p, "dropout", dropout)
            raise BatchStopped(Outcome.LOST, "abandoned", "patient_lost", processed=False)
        self.hold_exceeded_waiting(p, b, kind)

    def booked_unit(self, b: Batch, kind: str, pool: UnitPool) -> str | None:
        """The suite the slot plan booked for this batch (another free one if it was lost late); any unit
        of other kinds, or without a plan."""
        if kind != "suite" or b.slot is None:
            return None
        return self.slotbook.suite_for(b.slot, pool.is_free)

    def hold_exceeded_waiting(self, p: Patient, b: Batch, kind: str) -> NoReturn:
        assert b.apheresis_end is not None
        dev = rules.starting_material_hold(self.sc.gmp, b.apheresis_end, self.env.now + 1e-6)
        assert dev is not None  # the deadline has passed
        if kind != "suite":
            cause = HoldLossCause.EQUIPMENT_BUSY
        elif b.slot is None:
            cause = HoldLossCause.SUITE_QUEUE
        else:
            cause = HoldLossCause.SUITE_LOST_LATE
        self.deviation(b, p, dev.kind, dev.severity, "waiting_for_suite",
                       with_cause(f"{dev.detail} waiting for a {kind}", cause))
        raise BatchStopped(Outcome.RECOLLECT, "failed", "starting_material_hold_exceeded", processed=False)

    def hold_loss_cause(self, b: Batch, duration: float) -> HoldLossCause:
        """Why fresh material that got its units missed its hold limit: it arrived too late to start on
        shift in time (transit), its booked start was already too late (the lead exceeds the hold), its
        suite came later than the material (lost late, or queued without a plan) and with it the day's
        operators, or the operators were busy."""
        assert b.apheresis_end is not None and b.received is not None
        deadline = b.apheresis_end + self.sc.gmp.fresh_hold_limit_hours / 24.0
        cal = self.operators.calendar
        if cal.next_start(b.received, duration) > deadline + 1e-9:
            return HoldLossCause.TRANSIT_DELAY
        if b.slot_day is not None and cal.next_start(b.slot_day + self.plant_open, duration) > deadline + 1e-9:
            return HoldLossCause.START_AFTER_HOLD
        held = b.held.get("suite")
        late = held is not None and held[2] > (b.ready or 0.0) + 1e-9  # the suite came after the material
        if late and (b.slot is None or b.slot.lost_late):
            return HoldLossCause.SUITE_QUEUE if b.slot is None else HoldLossCause.SUITE_LOST_LATE
        return HoldLossCause.STAFF_UNAVAILABLE

    def run_step(self, p: Patient, b: Batch, i: int, step: Step, plan: ProductPlan, prio: Priority,
                 deadline: float | None) -> Proc:
        env = self.env
        ready = yield from self.acquire_units(p, b, step, plan.acquire[i], prio, deadline, first=i == 0)
        durations, failures = self.step_streams(p.product, i, step)
        dur = durations.sample()
        if step.operators:
            yield from self.operators.acquire(step.operators, dur, (self.staff_rank(b, i, plan), *prio))
        start = env.now
        if i == 0:
            stop = self.first_step_check(p, b, start, dur)
            if stop is not None:
                self.operators.release(step.operators)
                raise stop
        if b.slot is not None:
            self.slotbook.started(b.slot, i, start, start + dur)
        yield env.timeout(dur)
        if step.operators:
            self.operators.release(step.operators)
            self.staff_use(self.operators, step.operators, b, step.name, ready, start)
        failure = step.failure
        failed = failure is not None and failures is not None and failures.sample() < failure.probability
        units = ";".join(f"{k}:{v[0]}" for k, v in b.held.items())
        self.record.step(p.coi, b.batch_no, step.name, i, ready, start, env.now, units, step.operators, step.open,
                         "failed" if failed else "ok")
        dev = rules.step_time_limit(step, dur)
        if dev is not None:
            self.deviation(b, p, dev.kind, dev.severity, "manufacturing", dev.detail)
        if failed:
            self.step_failure(p, b, step)
        self.release_held(p, b, plan.release[i])

    def staff_rank(self, b: Batch, i: int, plan: ProductPlan) -> int:
        """Operators go first to fresh starting material (it is on the clock), then to the step that gives
        a planned suite back (the next booked batch waits for it), then to routine work."""
        if i == 0 and self.sc.gmp.starting_material == "fresh":
            return 0
        return 1 if b.slot is not None and i == plan.suite_last else 2

    def first_step_check(self, p: Patient, b: Batch, start: float, duration: float) -> BatchStopped | None:
        """Starting material past its hold limit, or the patient gone, stops the batch before processing."""
        sc = self.sc
        assert b.apheresis_end is not None
        dev = rules.starting_material_hold(sc.gmp, b.apheresis_end, start)
        if dev is not None:
            detail = with_cause(dev.detail, self.hold_loss_cause(b, duration))
            self.deviation(b, p, dev.kind, dev.severity, "waiting_for_suite", detail)
            if sc.gmp.on_hold_exceeded == "recollect":
                return BatchStopped(Outcome.RECOLLECT, "failed", "starting_material_hold_exceeded", processed=False)
        if not self.enter(p, "manufacturing"):
            # gone while the first step waited for its operators: nothing was processed, nothing to clear
            return BatchStopped(Outcome.LOST, "abandoned", "patient_lost", processed=False)
        b.mfg_start = start
        return None

    def step_failure(self, p: Patient, b: Batch, step: Step) -> None:
        """A failed step: out of specification goes on to QC; otherwise the batch stops here."""
        assert step.failure is not None
        cons = step.failure.consequence
        self.deviation(b, p, "process_failure", "major", "manufacturing", f"{step.name} failed ({cons})")
        if cons == "oos":
            b.oos = True
            return
        if cons == "recollect":
            raise BatchStopped(Outcome.RECOLLECT, "failed", f"{step.name}_failure")
        self.lose(p, "manufacturing_failure")
        raise BatchStopped(Outcome.LOST, "failed", f"{step.name}_failure")
