"""Collection: a manufacturing slot and an apheresis chair booked against it, apheresis at the site,
the inbound chain-of-custody handover, receipt and quarantine until the booked start day."""

from __future__ import annotations

import math
from typing import cast

from ..config import Site
from . import rules
from .base import INF, ModelBase, Proc
from .entities import Batch, Outcome, Patient
from .plant import DayBook


class Collection(ModelBase):
    def collect(self, p: Patient, b: Batch) -> Proc:
        """From the waiting list to material ready for the suite; ``None`` means go on to manufacture."""
        site = p.site
        chairs = self.chairs[site.name]
        if not self.enter(p, "waiting_for_slot"):
            return Outcome.ABANDONED
        booking = yield from self.book_collection(p, b, chairs)
        if booking is None:
            return Outcome.ABANDONED
        req, aph_day = booking
        alive = yield from self.wait_until(p, max(self.env.now, aph_day + self.open_hour[site.name]))
        if not alive:
            self.cancel_collection(p, b, chairs, req, aph_day)
            return Outcome.ABANDONED
        yield from self.apheresis(p, b, site, aph_day)
        return (yield from self.inbound(p, b, site))

    def book_collection(self, p: Patient, b: Batch, chairs: DayBook) -> Proc:
        """Slot mode: wait for a manufacturing start (and the chair it comes with) unless the patient
        drops out first. Otherwise the site's next free chair. Returns (slot request or None, chair day)."""
        env = self.env
        if self.sc.booking.mode != "slot":
            if chairs.calendar.always:
                aph_day = chairs.first_free(math.floor(env.now))  # a 24/7 service collects on referral
            else:
                aph_day = chairs.first_free(math.floor(env.now) + 1)
            chairs.book(aph_day)
            return None, aph_day
        days = self.reserve_days[p.product]
        plan = self.suite_plans[p.infectious] if days else None
        req = self.slotbook.request(chairs, self.priority(p, b), plan, days)
        if not req.triggered:
            if p.dropout_at < INF:
                yield req | env.timeout(max(0.0, p.dropout_at - env.now))
            else:
                yield req
        if not req.triggered:
            self.cancel_collection(p, b, chairs, req, None)
            self.lose(p, "dropout", p.dropout_at)
            return None
        start_day, aph_day = cast(tuple[int, int], req.value)  # (manufacturing start, chair day)
        if p.slot_booked is None:
            p.slot_booked = env.now
        b.slot_day = float(start_day)
        b.plan, b.plan_end = plan, start_day + days
        return req, aph_day

    def cancel_collection(self, p: Patient, b: Batch, chairs: DayBook, req: object, aph_day: int | None) -> None:
        """The patient left before apheresis: the slot request (and its start, chair and suite days still
        ahead) or the chair booking goes back."""
        if req is not None:
            self.slotbook.cancel(req, chairs, b.plan, self.reserve_days[p.product])  # type: ignore[arg-type]
            b.plan = None
        elif aph_day is not None:
            chairs.cancel(aph_day)

    def apheresis(self, p: Patient, b: Batch, site: Site, aph_day: int) -> Proc:
        env = self.env
        p.stage = "apheresis"
        b.apheresis_start = env.now
        if p.first_apheresis is None:
            p.first_apheresis = env.now
        booked_at = p.slot_booked if p.slot_booked is not None else p.referred
        self.record.resource_use("apheresis", site.name, p.coi, b.batch_no, "apheresis", min(booked_at, float(aph_day)),
                                 float(aph_day), aph_day + 1.0)
        if b.slot_day is not None:
            self.record.resource_use("manufacturing_slot", "slot", p.coi, b.batch_no, "start", booked_at, b.slot_day,
                                     b.slot_day + 1)
        yield env.timeout(self.stream(f"apheresis:{site.name}", site.apheresis_duration).sample())
        b.apheresis_end = env.now

    def inbound(self, p: Patient, b: Batch, site: Site) -> Proc:
        """Chain-of-custody handover to the plant; fresh material travels cold on its hold clock."""
        env, sc = self.env, self.sc
        if not self.enter(p, "inbound_transit"):
            return Outcome.ABANDONED
        transit = self.stream(f"inbound:{site.name}", site.inbound_transit).sample()
        fresh = sc.gmp.starting_material == "fresh"
        hold = sc.gmp.fresh_hold_limit_hours / 24 if fresh else sc.gmp.shipper_hold_days
        excursion = (not fresh) and rules.shipper_excursion(sc.gmp, transit)
        failed = yield from self.ship(p, b, "inbound", site.name, "plant", transit, "2-8C" if fresh else "<=-150C",
                                      hold, excursion)
        if failed is not None:
            return failed
        # receipt, quarantine, acceptance; wait for the booked start day
        if not self.enter(p, "waiting_for_suite"):
            return Outcome.ABANDONED
        if b.slot_day is not None and b.slot_day + self.plant_open > env.now:
            yield env.timeout(b.slot_day + self.plant_open - env.now)
        b.ready = env.now
        return None
