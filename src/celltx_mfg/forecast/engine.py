"""The model started from a plant state: every live patient placed at its stage with its clocks, then run
forward with the scenario's rules, capacities and future demand from ``as_of``.

``ForecastModel`` is the journey model (``model.journey.Model``) with a clock that starts at ``as_of`` and
the stage methods overridden for the batches of the state only: each override looks the batch up in the
state and, for any other batch (every future patient, every later attempt), is the model's own method.
A state's patient goes through the same journey generator as any other; it skips the stages it has
passed, finishes the one it is in, and goes on exactly as the model would.

A step under way (a manufacturing step, a transit leg, a QC test, a QA review) has been running for some
time ``e`` at ``as_of``. Its remaining time is drawn from the step's own duration conditioned on lasting
longer than ``e`` (``D - e`` given ``D > e``), by drawing ``D`` until it exceeds ``e``. A step already past
every duration the scenario allows (no draw in :data:`RESIDUAL_TRIES` exceeds ``e``) ends at ``as_of``: it
is overdue, and the scenario says nothing about how much longer it takes. docs/forecast-method.md has the
whole method.

Every draw a state's batch makes comes from streams of its own (``resume:...``, ``state:...``), so future
referrals see the same random numbers whatever the state holds (common random numbers across states and
what-ifs), and an empty state at day 0 is exactly a plain run of the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ..config import Scenario, Site
from ..distributions import Stream
from ..model import rules
from ..model.base import Proc
from ..model.build import ProductPlan
from ..model.entities import Batch, Outcome, Patient
from ..model.journey import Model, _fewer_collections
from ..model.plant import UnitPool
from ..model.slotplan import SlotBooking, SuiteBooking
from ..records import RunRecords
from . import state as st

S = st.LiveStage
RESIDUAL_TRIES = 4096  # draws of a duration before a step in progress is taken as overdue
OUT_OF_SERVICE_PRIORITY = (-1, -1, -math.inf)  # ahead of every batch's request for the unit


def forecast_scenario(sc: Scenario, as_of: float, horizon_days: float) -> Scenario:
    """The scenario with its window moved to the forecast's: from ``as_of`` (the KPI window's start,
    like a warm-up) to ``as_of + horizon_days``. Demand and rules are the scenario's own."""
    return sc.model_copy(update={"horizon_days": as_of + horizon_days, "warmup_days": as_of})


class ForecastModel(Model):
    """One replication from a plant state (``sc`` already moved to the forecast window)."""

    def __init__(self, sc: Scenario, seed: int, state: st.StartState, replication: int = 0) -> None:
        super().__init__(sc, seed, replication, start_time=state.as_of)
        self.state = state
        self.resume: dict[str, st.LivePatient] = {}  # batch_no of a state's batch -> its state
        self.live: list[tuple[st.LivePatient, Patient]] = []  # in the state's order
        self._reviewed: set[str] = set()  # state batches whose review under way has been finished
        self._rename = bool(state.patients)

    # ------------------------------------------------------------------ run
    def run(self) -> RunRecords:
        for o in self.state.out_of_service:
            self.env.process(self.out_of_service(o))
        # furthest along first: running batches take their suites in the plan before later bookings do
        for lp in sorted(self.state.patients, key=lambda lp: -lp.stage.order):
            self.place(lp)
        self.live.sort(key=lambda pair: self.state.patients.index(pair[0]))
        self.env.process(self.referrals())
        with _fewer_collections():
            self.env.run(until=self.sc.horizon_days)
        return self.finish()

    def place(self, lp: st.LivePatient) -> None:
        """A state's patient as the model's patient, its journey started at its stage."""
        site = self.site(lp.site)
        u = self.stream("state:dropout").sample()
        rate = self.sc.demand.dropout_per_day
        dropout_at = math.inf
        if rate > 0:
            hazard = -math.log1p(-rate) if rate < 1 else math.inf
            dropout_at = self.env.now + (-math.log1p(-u) / hazard if hazard < math.inf else 0.0)
        order = self.urgency_order
        rank = order.get(lp.urgency, len(order)) if self.sc.booking.priority == "urgency" else 0
        p = Patient(len(self.patients) + 1, site, lp.product, lp.urgency, rank, lp.infectious, lp.referred, dropout_at)
        p.coi = lp.coi
        p.attempts = lp.attempt - 1
        p.slot_booked = lp.slot_booked
        p.first_apheresis = lp.first_apheresis if lp.first_apheresis is not None else lp.apheresis_start
        self.patients.append(p)
        self.resume[f"{lp.coi}-A{lp.attempt}"] = lp
        self.live.append((lp, p))
        self.env.process(self.journey(p))

    def site(self, name: str) -> Site:
        return next(s for s in self.sc.sites if s.name == name)

    def new_patient(self, ref: Any = None) -> None:
        """A future referral; numbered after the state's patients, its chain-of-identity id marked as the
        forecast's own so it can never be taken for a patient of the state."""
        super().new_patient(ref)
        if self._rename:
            p = self.patients[-1]
            p.coi = f"FORECAST-{p.no:06d}"

    def residual(self, source: str, dist: Any, elapsed: float) -> float:
        """Remaining time of a step of duration ``dist`` that has run ``elapsed`` days: ``D - elapsed``
        given ``D > elapsed``; 0 when no draw exceeds it (overdue)."""
        s = self.stream(f"resume:{source}", dist)
        if elapsed <= 0:
            return s.sample()
        for _ in range(RESIDUAL_TRIES):
            d = s.sample()
            if d > elapsed:
                return d - elapsed
        return 0.0

    def chance(self, source: str) -> Stream:
        return self.stream(f"resume:{source}")

    # ------------------------------------------------------------------ out of service
    def out_of_service(self, o: st.OutOfService) -> Proc:
        """The unit is taken before any batch can ask for it and given back at ``until``; a suite is also
        blocked in the slot plan, so no start is booked on it meanwhile."""
        pool = self.unit_pool(o.kind, o.unit)
        block = self.block_suite(o) if o.kind == "suite" else None
        ev = pool.request(OUT_OF_SERVICE_PRIORITY, o.unit)
        if not ev.triggered:
            yield ev
        if o.until > self.env.now:
            yield self.env.timeout(o.until - self.env.now)
        pool.release(o.unit)
        if block is not None:
            block.done = True

    def unit_pool(self, kind: str, unit: str) -> UnitPool:
        if kind == "suite":
            return self.dedicated if unit in self.dedicated.units else self.suites
        return self.pools[kind]

    def block_suite(self, o: st.OutOfService) -> SlotBooking | None:
        for plan in self.suite_plans.values():
            cal = next((c for c in plan.calendars if c.name == o.unit), None)
            if cal is None:
                continue
            chairs = next(iter(self.chairs.values()))
            dummy = SlotBooking(self.env.event(), OUT_OF_SERVICE_PRIORITY, "", "", chairs, None, plan, False, False)
            dummy.collected = True
            cal.add(SuiteBooking(cal, self.env.now, o.until, dummy))
            return dummy
        return None

    # ------------------------------------------------------------------ collection
    def collect(self, p: Patient, b: Batch) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or lp.stage is S.WAITING_FOR_SLOT:
            return (yield from super().collect(p, b))
        restore_batch(lp, b, self.sc)
        if lp.stage is S.SLOT_BOOKED:
            return (yield from self.from_booking(p, b, lp))
        if lp.stage.at_or_after(S.QC):
            return None  # past manufacture: the suite is back, nothing booked
        self.book_as_is(p, b, lp, collected=True)
        if lp.stage is S.INBOUND_TRANSIT:
            return (yield from self.inbound_resumed(p, b, lp))
        if lp.stage is S.WAITING_FOR_SUITE:
            return (yield from self.to_suite(p, b))
        return None  # manufacturing: run_step finishes the step under way

    def book_as_is(self, p: Patient, b: Batch, lp: st.LivePatient, collected: bool) -> SlotBooking | None:
        """The batch's start as the state has it booked: in the slot plan (slot mode), or its chair day."""
        chairs = self.chairs[p.site.name]
        lead = self.slotbook.lead
        day = lp.slot_day
        if day is None:
            known = lp.mfg_start if lp.mfg_start is not None else lp.step_start
            day = math.floor(known) if known is not None else None
        if self.sc.booking.mode != "slot":
            if not collected:
                aph = lp.aph_day if lp.aph_day is not None else chairs.first_free(math.floor(self.env.now) + 1)
                chairs.book(aph)
                b.slot_day = None
            return None
        if day is None:
            day = math.floor(self.env.now) + 1 + lead
        slot = self.slot_request(p, b, chairs)
        self.slotbook.place(slot, day, lp.suite or lp.units.get("suite"))
        slot.collected = collected
        if lp.aph_day is not None and not collected:
            slot.aph_day = lp.aph_day
        if p.slot_booked is None:
            p.slot_booked = self.env.now
        b.slot_day, b.slot = float(day), slot
        return slot

    def from_booking(self, p: Patient, b: Batch, lp: st.LivePatient) -> Proc:
        """Booked, not collected: the rest of ``Collection.collect`` from the booking on."""
        site = p.site
        chairs = self.chairs[site.name]
        if not self.enter(p, "waiting_for_slot"):
            return Outcome.ABANDONED
        slot = self.book_as_is(p, b, lp, collected=False)
        aph_day = slot.aph_day if slot is not None else lp.aph_day
        if aph_day is None:  # collect_then_queue: the chair day book_as_is booked
            aph_day = max(d for d, n in chairs.booked.items() if n > 0)
        return (yield from self.collect_booked(p, b, site, chairs, slot, aph_day))

    def inbound_resumed(self, p: Patient, b: Batch, lp: st.LivePatient) -> Proc:
        """Material on its way: the rest of the leg, its whole length judged against the shipper's hold."""
        sc, site = self.sc, p.site
        if not self.enter(p, "inbound_transit"):
            self.slotbook.release(b.slot, processed=False)
            return Outcome.ABANDONED
        left = lp.apheresis_end if lp.apheresis_end is not None else self.env.now
        elapsed = max(0.0, self.env.now - left)
        remaining = self.residual(f"inbound:{site.name}", site.inbound_transit, elapsed)
        fresh = sc.gmp.starting_material == "fresh"
        hold = sc.gmp.fresh_hold_limit_hours / 24 if fresh else sc.gmp.shipper_hold_days
        excursion = (not fresh) and rules.shipper_excursion(sc.gmp, elapsed + remaining)
        failed = yield from self.ship(p, b, "inbound", site.name, "plant", remaining, "2-8C" if fresh else "<=-150C",
                                      hold, excursion)
        if failed is not None:
            self.slotbook.release(b.slot, processed=False)
            return failed
        outcome = yield from self.to_suite(p, b)
        if outcome is not None:
            self.slotbook.release(b.slot, processed=False)
        return outcome

    def to_suite(self, p: Patient, b: Batch) -> Proc:
        """Received: wait for the booked start day (the tail of ``Collection.inbound``)."""
        env = self.env
        if not self.enter(p, "waiting_for_suite"):
            return Outcome.ABANDONED
        if b.slot_day is not None and b.slot_day + self.plant_open > env.now:
            yield env.timeout(b.slot_day + self.plant_open - env.now)
        b.ready = env.now
        return None

    # ------------------------------------------------------------------ manufacture
    def manufacture(self, p: Patient, b: Batch) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or not lp.stage.at_or_after(S.QC):
            if b.apheresis_end is None:  # a state's batch in manufacture that did not say when it was collected
                b.apheresis_end = lp.mfg_start if lp is not None and lp.mfg_start is not None else self.env.now
            return (yield from super().manufacture(p, b))
        if b.mfg_end is None:
            b.mfg_end = self.env.now
        b.expiry = b.mfg_end + self.sc.gmp.shelf_life_days
        return Outcome.MADE

    def run_step(self, p: Patient, b: Batch, i: int, step: Any, plan: ProductPlan, prio: Any,
                 deadline: float | None) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or lp.stage is not S.MANUFACTURING or lp.step is None or i > lp.step:
            return (yield from super().run_step(p, b, i, step, plan, prio, deadline))
        if i != lp.step:
            return None
        if lp.step_started:
            yield from self.finish_step(p, b, i, step, plan, prio, lp)
            return None
        if i > 0:
            p.stage = "manufacturing"
        yield from self.take_units(p, b, i, plan, prio, lp, carried_only=True)
        return (yield from super().run_step(p, b, i, step, plan, prio, deadline))

    def take_units(self, p: Patient, b: Batch, i: int, plan: ProductPlan, prio: Any, lp: st.LivePatient,
                   carried_only: bool = False) -> Proc:
        """Seize the units the state says the batch holds at step ``i`` (by name; any free one of the
        kind when the state names none); ``carried_only``: only those taken by earlier steps."""
        start = lp.step_start if lp.step_start is not None else self.env.now
        steps = self.sc.products[p.product].steps
        for kind, first in held_during(plan, i):
            if carried_only and first == i:
                continue
            pool = self.pool_for(p, kind)
            ev = pool.request(prio, lp.units.get(kind))
            if not ev.triggered:
                yield ev
            unit = str(ev.value)
            since = b.mfg_start if b.mfg_start is not None and first == 0 else start
            b.held[kind] = [unit, since, since, steps[first].name]
            if kind == "suite":
                b.suite = unit
            self.open_holds[(kind, unit)] = (b.coi, b.batch_no, steps[first].name, since, since)

    def finish_step(self, p: Patient, b: Batch, i: int, step: Any, plan: ProductPlan, prio: Any,
                    lp: st.LivePatient) -> Proc:
        """The step under way: its units and operators held since it started, the rest of its time, then
        everything ``Manufacture.run_step`` does at a step's end (record, time limit, failure, units back)."""
        env = self.env
        start = lp.step_start if lp.step_start is not None else env.now
        p.stage = "manufacturing"
        b.mfg_start = lp.mfg_start if lp.mfg_start is not None else (start if i == 0 else b.mfg_start)
        yield from self.take_units(p, b, i, plan, prio, lp)
        taken = min(step.operators, self.operators.free)
        self.operators.free -= taken
        elapsed = max(0.0, env.now - start)
        total = elapsed + self.residual(f"step:{p.product}:{step.name}", step.duration, elapsed)
        if b.slot is not None:
            self.slotbook.started(b.slot, i, start, start + total)
        if start + total > env.now:
            yield env.timeout(start + total - env.now)
        if taken:
            self.operators.release(taken)
            self.staff_use(self.operators, taken, b, step.name, start, start)
        failure = step.failure
        failed = failure is not None and self.chance(f"fail:{p.product}:{step.name}").sample() < failure.probability
        units = ";".join(f"{k}:{v[0]}" for k, v in b.held.items())
        self.record.step(p.coi, b.batch_no, step.name, i, start, start, env.now, units, step.operators, step.open,
                         "failed" if failed else "ok")
        dev = rules.step_time_limit(step, total)
        if dev is not None:
            self.deviation(b, p, dev.kind, dev.severity, "manufacturing", dev.detail)
        if failed:
            self.step_failure(p, b, step)
        self.release_held(p, b, plan.release[i])

    # ------------------------------------------------------------------ QC and release
    def qc_test(self, p: Patient, b: Batch, t: Any) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or not lp.stage.at_or_after(S.QC) or t.name not in (*lp.results, *lp.tests_started):
            return (yield from super().qc_test(p, b, t))
        if t.name in lp.results:
            return lp.results[t.name]  # a result in hand
        sampled = lp.tests_started[t.name]
        elapsed = max(0.0, self.env.now - sampled)
        remaining = self.residual(f"qc:{t.name}", t.duration, elapsed)
        if remaining > 0:
            yield self.env.timeout(remaining)
        failed = self.chance(f"qcfail:{t.name}").sample() < t.failure_probability
        self.record.qc_result(b.coi, b.batch_no, t.name, sampled, sampled, self.env.now, "fail" if failed else "pass",
                              t.name in self.required_tests)
        return failed

    def qa_review(self, b: Batch) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or lp.stage is not S.QA_RELEASE or b.batch_no in self._reviewed or not (
            lp.review_done or lp.review_start is not None
        ):
            return (yield from super().qa_review(b))
        self._reviewed.add(b.batch_no)  # the review under way counts once; a re-review is a new one
        if lp.review_done or lp.review_start is None:
            return None
        elapsed = max(0.0, self.env.now - lp.review_start)
        remaining = self.residual("qa_review", self.sc.release.qa_review_elapsed, elapsed)
        if remaining > 0:
            yield self.env.timeout(remaining)
        return None

    def test_and_release(self, p: Patient, b: Batch) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or not lp.stage.at_or_after(S.RELEASED):
            outcome = yield from super().test_and_release(p, b)
            if lp is not None and lp.qc_complete is not None and b.qc_complete is not None:
                b.qc_complete = min(b.qc_complete, lp.qc_complete)
            return outcome
        b.released = lp.released if lp.released is not None else self.env.now
        b.release_mode = b.release_mode or ("conditional" if self.sc.release.policy == "conditional" else "full")
        b.status = "released"
        return Outcome.RELEASED

    # ------------------------------------------------------------------ delivery
    def deliver(self, p: Patient, b: Batch) -> Proc:
        lp = self.resume.get(b.batch_no)
        if lp is None or not lp.stage.at_or_after(S.OUTBOUND_TRANSIT):
            return (yield from super().deliver(p, b))
        site = p.site
        if lp.stage is S.OUTBOUND_TRANSIT:
            p.stage = "outbound_transit"
            b.shipped = lp.shipped if lp.shipped is not None else self.env.now
            elapsed = max(0.0, self.env.now - b.shipped)
            remaining = self.residual(f"outbound:{site.name}", site.outbound_transit, elapsed)
            excursion = rules.shipper_excursion(self.sc.gmp, elapsed + remaining)
            failed = yield from self.ship(p, b, "outbound", "plant", site.name, remaining, "<=-150C",
                                          self.sc.gmp.shipper_hold_days, excursion)
            if failed is not None:
                return failed
        if not self.enter(p, "awaiting_infusion"):
            return Outcome.ABANDONED
        return (yield from self.infuse(p, b, site))

    def infuse(self, p: Patient, b: Batch, site: Site) -> Proc:
        """A product at the site whose infusion the clinic has booked is infused that day (or the first
        slot after it, when that day is gone or full); any other goes the model's way."""
        lp = self.resume.get(b.batch_no)
        booked = None if lp is None else lp.booked_infusion_day
        if lp is None or booked is None or not lp.stage.at_or_after(S.OUTBOUND_TRANSIT):
            return (yield from super().infuse(p, b, site))
        env = self.env
        book = self.infusion_slots[site.name]
        oh = self.open_hour[site.name]
        day = book.first_free(max(booked, math.ceil(env.now - oh - 1e-9)))
        book.book(day)
        alive = yield from self.wait_until(p, day + oh)
        outcome = self.at_infusion(p, b, alive)
        if outcome is not Outcome.INFUSED:
            book.cancel(day)
            return outcome
        released = b.released if b.released is not None else env.now
        self.record.resource_use("infusion", site.name, p.coi, b.batch_no, "infusion", released, float(day), day + 1.0)
        b.infused = p.infused = env.now
        b.status = p.status = "infused"
        p.stage = "infused"
        return Outcome.INFUSED


def restore_batch(lp: st.LivePatient, b: Batch, sc: Scenario) -> None:
    """The state's clocks on the model's batch record."""
    b.slot_day = None if lp.slot_day is None else float(lp.slot_day)
    b.apheresis_start, b.apheresis_end, b.received = lp.apheresis_start, lp.apheresis_end, lp.received
    b.mfg_start, b.mfg_end, b.qc_complete = lp.mfg_start, lp.mfg_end, lp.qc_complete
    b.released, b.shipped, b.oos = lp.released, lp.shipped, lp.oos
    b.suite = lp.suite or lp.units.get("suite")
    if lp.mfg_end is not None:
        b.expiry = lp.mfg_end + sc.gmp.shelf_life_days


def held_during(plan: ProductPlan, i: int) -> Iterator[tuple[str, int]]:
    """(kind, index of the step that took it) for every unit a batch holds while step ``i`` runs."""
    for j in range(i + 1):
        for kind in plan.acquire[j]:
            back = next((k for k in range(j, len(plan.release)) if kind in plan.release[k]), len(plan.release))
            if back >= i:
                yield kind, j
