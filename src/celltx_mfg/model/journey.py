"""The patient's journey: referral -> slot -> apheresis -> inbound shipment -> manufacture -> QC ->
QA review and QP release -> outbound shipment -> lymphodepletion -> infusion.

One SimPy process per patient, with one attempt per batch (a failed batch sends the patient back for
re-collection while attempts remain). Records are appended to plain lists as things happen; nothing here
knows about SQL, pandas or Streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import simpy

from ..config import Scenario, Step, scenario_referral_days
from ..distributions import Exponential, Stream, Streams
from ..records import (
    Deviation,
    QCResult,
    ReleaseRecord,
    ResourceUse,
    RunRecords,
    Shipment,
    StepEvent,
)
from . import rules, summary
from .build import build_plant
from .entities import Batch, Outcome, Patient
from .plant import StaffPool, UnitPool

Proc = Generator[simpy.Event, Any, Any]
INF = math.inf
MONTH = 365.25 / 12


def _choose(weights: dict[str, float], u: float) -> str:
    total = sum(weights.values())
    acc = 0.0
    last = ""
    for k, w in weights.items():
        if w <= 0:
            continue
        acc += w / total
        last = k
        if u < acc:
            return k
    return last


class Model:
    """One replication of a scenario: build the plant, run to the horizon, hand back the records."""

    def __init__(self, sc: Scenario, seed: int, replication: int = 0) -> None:
        self.sc = sc
        self.env = simpy.Environment()
        self.streams = Streams(seed)
        self.rec = RunRecords(sc.name, seed, replication, sc.horizon_days, sc.warmup_days)
        plant = build_plant(self.env, sc)
        self.plant = plant
        # the hot paths read these on every step: plain attributes, no extra look-up through the plant
        self.suites, self.dedicated, self.pools = plant.suites, plant.dedicated, plant.pools
        self.operators, self.analysts, self.reviewers = plant.operators, plant.analysts, plant.reviewers
        self.starts, self.slotbook = plant.starts, plant.slotbook
        self.chairs, self.infusion_slots, self.open_hour = plant.chairs, plant.infusion_slots, plant.open_hour
        self.plans, self.plant_open = plant.plans, plant.plant_open
        self.suite_plans, self.reserve_days = plant.suite_plans, plant.reserve_days
        self.required_tests = rules.tests_required_for_release(sc.qc, sc.release)
        self.urgency_order = {u: i for i, u in enumerate(sc.booking.urgency_order)}
        self.open_holds: dict[tuple[str, str], tuple[str, str, str, float, float]] = {}
        self.open_until: dict[str, float] = {}  # batch -> when its last blocking deviation closes
        self.patients: list[Patient] = []
        self.batches: list[Batch] = []

    # ------------------------------------------------------------------ helpers
    def stream(self, source: str, dist: Any = None) -> Stream:
        return self.streams.get(source, dist)

    def deviation(self, b: Batch | None, p: Patient | None, kind: str, severity: str, stage: str,
                  detail: str) -> float | None:
        """Record a deviation; major and critical ones get an investigation that must close before release."""
        closed = None
        if rules.blocks_release(severity):
            closed = self.env.now + self.stream("deviation_investigation", self.sc.gmp.deviation_investigation).sample()
            if b is not None:
                self.open_until[b.batch_no] = max(closed, self.open_until.get(b.batch_no, 0.0))
        self.rec.deviations.append(
            Deviation(p.coi if p else None, b.batch_no if b else None, self.env.now, kind, severity, stage, detail, closed)
        )
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

    def staff_use(self, pool: StaffPool, n: int, b: Batch | None, activity: str, requested: float, start: float) -> None:
        for _ in range(n):
            self.rec.resource_uses.append(
                ResourceUse(pool.kind, pool.kind, b.coi if b else None, b.batch_no if b else None,
                            activity, requested, start, self.env.now)
            )

    # ------------------------------------------------------------------ referrals
    def referrals(self) -> Proc:
        d = self.sc.demand
        days = scenario_referral_days(self.sc)
        if days is not None:
            for day in sorted(days):
                if day >= self.sc.horizon_days:
                    break
                if day > self.env.now:
                    yield self.env.timeout(day - self.env.now)
                self.new_patient()
            return
        ramp = d.monthly_ramp
        top = max(ramp) if ramp else 1.0
        rate = d.per_year / 365.25 * top
        if rate <= 0:
            return
        gaps = self.stream("arrivals", Exponential(dist="exponential", mean=1.0 / rate))
        thin = self.stream("arrivals:thinning")
        while True:
            yield self.env.timeout(gaps.sample())
            if ramp:
                m = ramp[min(int(self.env.now / MONTH), len(ramp) - 1)]
                if thin.sample() * top >= m:
                    continue
            self.new_patient()

    def new_patient(self) -> None:
        sc, d = self.sc, self.sc.demand
        site_name = _choose({s.name: s.share for s in sc.sites}, self.stream("patient:site").sample())
        site = next(s for s in sc.sites if s.name == site_name)
        product = _choose(sc.product_mix, self.stream("patient:product").sample())
        urgency = _choose(d.urgency_mix, self.stream("patient:urgency").sample())
        infectious = self.stream("patient:infectious").sample() < d.infectious_fraction
        u = self.stream("patient:dropout").sample()
        dropout_at = INF
        if d.dropout_per_day > 0:
            rate = -math.log1p(-d.dropout_per_day) if d.dropout_per_day < 1 else INF
            dropout_at = self.env.now + (-math.log1p(-u) / rate if rate < INF else 0.0)
        rank = self.urgency_order.get(urgency, len(self.urgency_order)) if self.sc.booking.priority == "urgency" else 0
        p = Patient(len(self.patients) + 1, site, product, urgency, rank, infectious, self.env.now, dropout_at)
        self.patients.append(p)
        self.env.process(self.journey(p))

    # ------------------------------------------------------------------ the journey
    def journey(self, p: Patient) -> Proc:
        while True:
            p.attempts += 1
            b = Batch.for_attempt(p, p.attempts)
            self.batches.append(b)
            outcome = yield from self.attempt(p, b)
            if outcome is not Outcome.RECOLLECT:
                return
            if p.attempts >= self.sc.booking.max_attempts:
                self.lose(p, "manufacturing_failure")
                return

    def priority(self, p: Patient, b: Batch) -> tuple[int, int, float]:
        """Re-manufacture first (the patient has waited once already), then urgency class, then arrival."""
        return (0 if b.attempt > 1 else 1, p.urgency_rank, p.referred)

    def attempt(self, p: Patient, b: Batch) -> Proc:
        sc, env = self.sc, self.env
        site = p.site
        chairs = self.chairs[site.name]
        if not self.enter(p, "waiting_for_slot"):
            b.status = "abandoned"
            return Outcome.LOST
        # -- a manufacturing slot, and apheresis booked against it
        if sc.booking.mode == "slot":
            days = self.reserve_days[p.product]
            plan = self.suite_plans[p.infectious] if days else None
            req = self.slotbook.request(chairs, self.priority(p, b), plan, days)
            if not req.triggered:
                if p.dropout_at < INF:
                    yield req | env.timeout(max(0.0, p.dropout_at - env.now))
                else:
                    yield req
            if not req.triggered:
                self.slotbook.cancel(req, chairs)
                self.lose(p, "dropout", p.dropout_at)
                b.status = "abandoned"
                return Outcome.LOST
            start_day, aph_day = req.value
            if p.slot_booked is None:
                p.slot_booked = env.now
            b.slot_day = float(start_day)
            b.plan, b.plan_end = plan, start_day + days
        else:
            req = None
            if chairs.calendar.always:
                aph_day = chairs.first_free(math.floor(env.now))  # a 24/7 service collects on referral
            else:
                aph_day = chairs.first_free(math.floor(env.now) + 1)
            chairs.book(aph_day)
        aph_time = max(env.now, aph_day + self.open_hour[site.name])
        alive = yield from self.wait_until(p, aph_time)
        if not alive:
            if req is not None:
                self.slotbook.cancel(req, chairs, b.plan, self.reserve_days[p.product])
                b.plan = None
            else:
                chairs.cancel(aph_day)
            b.status = "abandoned"
            return Outcome.LOST
        # -- apheresis
        p.stage = "apheresis"
        b.apheresis_start = env.now
        if p.first_apheresis is None:
            p.first_apheresis = env.now
        booked_at = p.slot_booked if p.slot_booked is not None else p.referred
        self.rec.resource_uses.append(
            ResourceUse("apheresis", site.name, p.coi, b.batch_no, "apheresis", min(booked_at, float(aph_day)),
                        float(aph_day), aph_day + 1.0)
        )
        if b.slot_day is not None:
            self.rec.resource_uses.append(
                ResourceUse("manufacturing_slot", "slot", p.coi, b.batch_no, "start", booked_at, b.slot_day, b.slot_day + 1)
            )
        yield env.timeout(self.stream(f"apheresis:{site.name}", site.apheresis_duration).sample())
        b.apheresis_end = env.now
        # -- inbound chain-of-custody handover
        if not self.enter(p, "inbound_transit"):
            b.status = "abandoned"
            return Outcome.LOST
        transit = self.stream(f"inbound:{site.name}", site.inbound_transit).sample()
        fresh = sc.gmp.starting_material == "fresh"
        hold = sc.gmp.fresh_hold_limit_hours / 24 if fresh else sc.gmp.shipper_hold_days
        self.rec.shipments.append(
            Shipment(p.coi, b.batch_no, "inbound", site.name, "plant", env.now, env.now + transit,
                     "2-8C" if fresh else "<=-150C", hold, (not fresh) and rules.shipper_excursion(sc.gmp, transit))
        )
        yield env.timeout(transit)
        b.received = env.now
        if not fresh and rules.shipper_excursion(sc.gmp, transit):
            return self.excursion(p, b, "inbound", transit)
        # -- receipt, quarantine, acceptance; wait for the booked start day
        if not self.enter(p, "waiting_for_suite"):
            b.status = "abandoned"
            return Outcome.LOST
        if b.slot_day is not None and b.slot_day + self.plant_open > env.now:
            yield env.timeout(b.slot_day + self.plant_open - env.now)
        b.ready = env.now
        outcome = yield from self.manufacture(p, b)
        if outcome is not Outcome.MADE:
            return outcome
        outcome = yield from self.test_and_release(p, b)
        if outcome is not Outcome.RELEASED:
            return outcome
        return (yield from self.deliver(p, b))

    def excursion(self, p: Patient, b: Batch, leg: str, transit: float) -> Outcome:
        """A shipment longer than the shipper's validated hold left its temperature range: the material
        is lost and the patient needs a new collection (rule 12)."""
        self.deviation(b, p, "shipper_hold_exceeded", "critical", f"{leg}_transit",
                       f"{leg} transit {transit:.2f} d > shipper hold {self.sc.gmp.shipper_hold_days:g} d")
        b.status, b.failure_reason = "failed", f"{leg}_excursion"
        return Outcome.RECOLLECT

    # ------------------------------------------------------------------ manufacturing
    def pool_for(self, p: Patient, kind: str) -> UnitPool:
        if kind == "suite":
            return self.dedicated if p.infectious else self.suites
        return self.pools[kind]

    def end_reservation(self, b: Batch) -> None:
        """The suite is back (or never needed): give the rest of its reservation to the slot book."""
        if b.plan is not None:
            tomorrow = math.floor(self.env.now) + 1
            if b.plan_end > tomorrow:
                b.plan.book(tomorrow, b.plan_end - tomorrow, -1)
            b.plan = None
            self.slotbook.serve_waitlist()

    def release_held(self, p: Patient, b: Batch, kinds: list[str], processed: bool = True) -> None:
        for kind in kinds:
            unit, requested, start, first = b.held.pop(kind)
            self.open_holds.pop((kind, unit), None)
            self.rec.resource_uses.append(
                ResourceUse(kind, unit, b.coi, b.batch_no, first, requested, start, self.env.now)
            )
            pool = self.pool_for(p, kind)
            if kind == "suite" and processed:
                self.env.process(self.line_clearance(pool, unit, b, p.infectious))
            else:
                pool.release(unit)
            if kind == "suite":
                self.end_reservation(b)

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
        self.rec.resource_uses.append(
            ResourceUse("suite", unit, b.coi, b.batch_no, "line_clearance", released, released, self.env.now)
        )
        pool.release(unit)

    def abandon(self, p: Patient, b: Batch, status: str, reason: str | None, processed: bool = True) -> None:
        self.release_held(p, b, list(b.held), processed)
        self.end_reservation(b)
        b.status = status
        b.failure_reason = reason

    def manufacture(self, p: Patient, b: Batch) -> Proc:
        env, sc = self.env, self.sc
        proc = sc.products[p.product]
        plan = self.plans[p.product]
        prio = self.priority(p, b)
        fresh = sc.gmp.starting_material == "fresh" and sc.gmp.on_hold_exceeded == "recollect"
        deadline = b.apheresis_end + sc.gmp.fresh_hold_limit_hours / 24.0
        for i, step in enumerate(proc.steps):
            ready = env.now
            for kind in plan.acquire[i]:
                pool = self.pool_for(p, kind)
                ev = pool.request(prio)
                if not ev.triggered:
                    if i == 0 and fresh:
                        # QA rejects fresh material whose hold limit passes while it waits (rule 3)
                        yield ev | env.timeout(max(0.0, deadline - env.now))
                        if not ev.triggered:
                            pool.cancel(ev)
                            dev = rules.starting_material_hold(sc.gmp, b.apheresis_end, env.now + 1e-6)
                            self.deviation(b, p, dev.kind, dev.severity, "waiting_for_suite",  # type: ignore[union-attr]
                                           f"{dev.detail} waiting for a {kind}")  # type: ignore[union-attr]
                            self.abandon(p, b, "failed", "starting_material_hold_exceeded", processed=False)
                            return Outcome.RECOLLECT
                    else:
                        yield ev
                unit = ev.value
                b.held[kind] = [unit, ready, env.now, step.name]
                if kind == "suite":
                    b.suite = unit
                self.open_holds[(kind, unit)] = (b.coi, b.batch_no, step.name, ready, env.now)
            dur = self.stream(f"step:{p.product}:{step.name}", step.duration).sample()
            # fresh starting material is on the clock: its first step goes ahead of routine work
            urgent = i == 0 and sc.gmp.starting_material == "fresh"
            if step.operators:
                yield from self.operators.acquire(step.operators, dur, (0 if urgent else 1, *prio))
            start = env.now
            if i == 0:
                dev = rules.starting_material_hold(sc.gmp, b.apheresis_end, start)
                if dev is not None:
                    self.deviation(b, p, dev.kind, dev.severity, "waiting_for_suite", dev.detail)
                    if sc.gmp.on_hold_exceeded == "recollect":
                        self.operators.release(step.operators)
                        self.abandon(p, b, "failed", "starting_material_hold_exceeded", processed=False)
                        return Outcome.RECOLLECT
                b.mfg_start = start
                if not self.enter(p, "manufacturing"):
                    self.operators.release(step.operators)
                    self.abandon(p, b, "abandoned", "patient_lost")
                    return Outcome.LOST
            yield env.timeout(dur)
            if step.operators:
                self.operators.release(step.operators)
                self.staff_use(self.operators, step.operators, b, step.name, ready, start)
            failed = bool(step.failure) and self.stream(f"fail:{p.product}:{step.name}").sample() < step.failure.probability
            units = ";".join(f"{k}:{v[0]}" for k, v in b.held.items())
            self.rec.steps.append(
                StepEvent(p.coi, b.batch_no, step.name, i, ready, start, env.now, units, step.operators, step.open,
                          "failed" if failed else "ok")
            )
            dev = rules.step_time_limit(step, dur)
            if dev is not None:
                self.deviation(b, p, dev.kind, dev.severity, "manufacturing", dev.detail)
            if failed:
                outcome = self.step_failure(p, b, step)
                if outcome is not None:
                    return outcome
            self.release_held(p, b, plan.release[i])
            if i + 1 < len(proc.steps) and env.now >= p.dropout_at:
                self.abandon(p, b, "abandoned", "patient_lost")
                self.lose(p, "dropout", p.dropout_at)
                return Outcome.LOST
        b.mfg_end = env.now
        b.expiry = env.now + sc.gmp.shelf_life_days
        self.end_reservation(b)
        return Outcome.MADE

    def step_failure(self, p: Patient, b: Batch, step: Step) -> Outcome | None:
        cons = step.failure.consequence  # type: ignore[union-attr]
        self.deviation(b, p, "process_failure", "major", "manufacturing", f"{step.name} failed ({cons})")
        if cons == "oos":
            b.oos = True
            return None
        self.abandon(p, b, "failed", f"{step.name}_failure")
        if cons == "recollect":
            return Outcome.RECOLLECT
        self.lose(p, "manufacturing_failure")
        return Outcome.LOST

    # ------------------------------------------------------------------ QC and release
    def _analyst_done(self, b: Batch, test: str, sampled: float, start: float) -> None:
        self.analysts.release(1)
        self.staff_use(self.analysts, 1, b, f"qc:{test}", sampled, start)

    def qc_test(self, p: Patient, b: Batch, t: Any) -> Proc:
        env = self.env
        sampled = env.now
        hands = t.hands_on_hours / 24.0
        dur = self.stream(f"qc:{t.name}", t.duration).sample()
        yield from self.analysts.acquire(1, hands)
        start = env.now
        if dur > hands:
            # the analyst goes back to the pool when set-up ends; the assay runs on without waking us
            env.timeout(hands).callbacks.append(lambda _: self._analyst_done(b, t.name, sampled, start))
            yield env.timeout(dur)
        else:
            yield env.timeout(hands)
            self._analyst_done(b, t.name, sampled, start)
        failed = self.stream(f"qcfail:{t.name}").sample() < t.failure_probability
        required = t.name in self.required_tests
        self.rec.qc_results.append(
            QCResult(b.coi, b.batch_no, t.name, sampled, start, env.now, "fail" if failed else "pass", required)
        )
        if failed and b.released is not None:
            # released on conditional terms: a late positive means notice to the clinic and a recall (rule 10)
            b.recalled = True
            self.deviation(b, p, f"late_{t.name}_failure", "critical", "post_release",
                           f"{t.name} failed after conditional release; clinic notified, recall opened")
        return failed

    def qc_verdict(self, p: Patient, b: Batch, tests: dict[str, Any], handled: set[str]) -> Outcome | None:
        """Act on every failed result in hand not yet acted on: a deviation each, then the gravest
        consequence; an out-of-specification product follows the OOS policy (rule 11). None: go on."""
        consequences = set()
        for name, (t, ev) in tests.items():
            if name in handled or not ev.triggered:
                continue
            handled.add(name)
            if ev.value:
                sev = "critical" if t.sterility else "major"
                self.deviation(b, p, f"oos_{name}", sev, "qc_release", f"{name} out of specification")
                consequences.add(t.consequence)
        if "discard" in consequences:
            b.status, b.failure_reason = "failed", "qc_failure_discard"
            self.lose(p, "manufacturing_failure")
            return Outcome.LOST
        if "recollect" in consequences:
            b.status, b.failure_reason = "failed", "qc_failure"
            return Outcome.RECOLLECT
        if ("oos" in consequences or b.oos) and b.release_mode != "exceptional_oos":
            b.oos = True
            if self.sc.gmp.oos_policy == "exceptional_release" and (
                self.stream("exceptional_release").sample() < self.sc.gmp.exceptional_release_probability
            ):
                b.release_mode = "exceptional_oos"
                self.deviation(b, p, "exceptional_release", "minor", "qc_release",
                               "OOS product supplied at physician's request; risk assessment and authority notice on file")
            else:
                b.status, b.failure_reason = "failed", "oos_rejected"
                return Outcome.RECOLLECT
        return None

    def test_and_release(self, p: Patient, b: Batch) -> Proc:
        env, sc = self.env, self.sc
        p.stage = "qc_release"
        tests = {t.name: (t, env.process(self.qc_test(p, b, t))) for t in sc.qc.tests}
        needed = [ev for name, (_, ev) in tests.items() if name in self.required_tests]
        if needed:
            yield env.all_of(needed)
        b.qc_complete = env.now
        handled: set[str] = set()
        outcome = self.qc_verdict(p, b, tests, handled)
        if outcome is not None:
            return outcome
        while True:
            # major/critical deviations must be closed before the QP may release (rule 9)
            closes = self.open_until.get(b.batch_no, 0.0)
            if closes > env.now:
                yield env.timeout(closes - env.now)
            hands = sc.release.qa_review_hours / 24.0
            elapsed = self.stream("qa_review", sc.release.qa_review_elapsed).sample()
            requested = env.now
            yield from self.reviewers.acquire(1, hands)
            start = env.now
            yield env.timeout(hands)
            self.reviewers.release(1)
            self.staff_use(self.reviewers, 1, b, "qa_review", requested, start)
            if elapsed > env.now - requested:
                yield env.timeout(elapsed - (env.now - requested))
            if not self.enter(p, "qc_release"):
                b.status = "abandoned"
                return Outcome.LOST
            if rules.expired(b.expiry, env.now):
                self.deviation(b, p, "expired_before_release", "major", "qc_release", "shelf life ended before release")
                b.status, b.failure_reason = "expired", "expired"
                return Outcome.RECOLLECT
            # a result that came in during review, even one the policy would not wait for, is in hand: the
            # QP cannot sign over a known failure (rule 10); a new deviation means another review once closed
            outcome = self.qc_verdict(p, b, tests, handled)
            if outcome is not None:
                return outcome
            if self.open_until.get(b.batch_no, 0.0) <= env.now:
                break
        b.released = env.now
        b.release_mode = b.release_mode or ("conditional" if sc.release.policy == "conditional" else "full")
        pending = sorted(n for n, (_, ev) in tests.items() if not ev.triggered)
        self.rec.releases.append(
            ReleaseRecord(b.coi, b.batch_no, env.now, b.release_mode, "qualified_person", "released", ";".join(pending))
        )
        b.status = "released"
        return Outcome.RELEASED

    # ------------------------------------------------------------------ shipment and infusion
    def deliver(self, p: Patient, b: Batch) -> Proc:
        env, sc = self.env, self.sc
        site = p.site
        if b.recalled:
            b.status, b.failure_reason = "failed", "recalled_before_shipment"
            return Outcome.RECOLLECT
        p.stage = "outbound_transit"
        transit = self.stream(f"outbound:{site.name}", site.outbound_transit).sample()
        excursion = rules.shipper_excursion(sc.gmp, transit)
        b.shipped = env.now
        self.rec.shipments.append(
            Shipment(p.coi, b.batch_no, "outbound", "plant", site.name, env.now, env.now + transit, "<=-150C",
                     sc.gmp.shipper_hold_days, excursion)
        )
        yield env.timeout(transit)
        b.delivered = env.now
        if excursion:
            return self.excursion(p, b, "outbound", transit)
        if not self.enter(p, "awaiting_infusion"):
            b.status = "abandoned"
            return Outcome.LOST
        ld = self.stream(f"lymphodepletion:{site.name}", site.lymphodepletion).sample()
        earliest = max(env.now, b.released + ld)
        book = self.infusion_slots[site.name]
        oh = self.open_hour[site.name]
        day = book.first_free(math.ceil(earliest - oh - 1e-9))
        book.book(day)
        when = day + oh
        alive = yield from self.wait_until(p, when)
        if not alive:
            book.cancel(day)
            b.status = "abandoned"
            return Outcome.LOST
        if b.recalled:
            book.cancel(day)
            b.status, b.failure_reason = "failed", "recalled_before_infusion"
            return Outcome.RECOLLECT
        if rules.expired(b.expiry, env.now):
            book.cancel(day)
            self.deviation(b, p, "expired_before_infusion", "major", "awaiting_infusion", "product past expiry")
            b.status, b.failure_reason = "expired", "expired"
            return Outcome.RECOLLECT
        self.rec.resource_uses.append(
            ResourceUse("infusion", site.name, p.coi, b.batch_no, "infusion", b.released, float(day), day + 1.0)
        )
        b.infused = p.infused = env.now
        b.status = p.status = "infused"
        p.stage = "infused"
        return Outcome.INFUSED

    # ------------------------------------------------------------------ run
    def run(self) -> RunRecords:
        self.env.process(self.referrals())
        self.env.run(until=self.sc.horizon_days)
        return self.finish()

    def finish(self) -> RunRecords:
        """Close the books at the horizon: open holds, patient and batch records, capacity and costs."""
        return summary.finish(self)
