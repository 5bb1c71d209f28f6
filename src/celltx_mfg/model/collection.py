"""Collection: a manufacturing slot and an apheresis chair booked against it, apheresis at the site,
the inbound chain-of-custody handover, receipt and quarantine until the booked start day."""

from __future__ import annotations

import math

from ..config import Site
from . import rules
from .base import INF, ModelBase, Proc
from .entities import Batch, Outcome, Patient
from .plant import DayBook
from .slotplan import SlotBooking


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
        slot, aph_day = booking
        return (yield from self.collect_booked(p, b, site, chairs, slot, aph_day))

    def collect_booked(self, p: Patient, b: Batch, site: Site, chairs: DayBook, slot: SlotBooking | None,
                       aph_day: int) -> Proc:
        """From a booked apheresis day to the plant's door: shared by a new patient's journey and a
        forecast's resumed one, so both lose and give back a booked suite the same way."""
        alive = yield from self.wait_for_apheresis(p, b, slot, aph_day)
        if not alive:
            self.cancel_collection(b, chairs, slot, aph_day)
            return Outcome.ABANDONED
        if slot is not None:
            slot.collected = True
            aph_day = slot.aph_day
        yield from self.apheresis(p, b, site, aph_day)
        outcome = yield from self.inbound(p, b, site)
        if outcome is not None:  # lost in transit or the patient gone: the booked suite is never used
            self.slotbook.release(slot, processed=False)
        return outcome

    def wait_for_apheresis(self, p: Patient, b: Batch, slot: SlotBooking | None, aph_day: int) -> Proc:
        """Wait for the chair day. In slot mode the plan confirms the booked suite first; a start it moved
        (its suite will not be free) means waiting for the new day. False when the patient drops out."""
        open_hour = self.open_hour[p.site.name]
        while True:
            day = aph_day if slot is None else slot.aph_day
            alive = yield from self.wait_until(p, max(self.env.now, day + open_hour))
            if not alive or slot is None:
                return alive
            if slot.aph_day == day and self.slotbook.confirm(slot):  # not moved while waiting, nor now
                return True

    def book_collection(self, p: Patient, b: Batch, chairs: DayBook) -> Proc:
        """Slot mode: wait for a manufacturing start (and the chair it comes with) unless the patient
        drops out first. Otherwise the site's next free chair. Returns (slot booking or None, chair day)."""
        env = self.env
        if self.sc.booking.mode != "slot":
            if chairs.calendar.always:
                aph_day = chairs.first_free(math.floor(env.now))  # a 24/7 service collects on referral
            else:
                aph_day = chairs.first_free(math.floor(env.now) + 1)
            chairs.book(aph_day)
            return None, aph_day
        slot = self.slot_request(p, b, chairs)
        req = self.slotbook.request(slot)
        if not req.triggered:
            if p.dropout_at < INF:
                yield req | env.timeout(max(0.0, p.dropout_at - env.now))
            else:
                yield req
        if not req.triggered:
            self.slotbook.cancel(slot)
            self.lose(p, "dropout", p.dropout_at)
            return None
        if p.slot_booked is None:
            p.slot_booked = env.now
        b.slot_day = float(slot.day)
        b.slot = slot
        return slot, slot.aph_day

    def slot_request(self, p: Patient, b: Batch, chairs: DayBook) -> SlotBooking:
        """What the slot book must find for this batch: its centre's chair and quota, a suite of the right
        kind (when the product uses one), and whether it may book the urgent reserve."""
        bk = self.sc.booking
        reserve = bk.urgent_reserve
        reserved_ok = reserve is not None and (
            p.urgency in reserve.classes or (b.attempt > 1 and bk.remanufacture.urgent_reserve)
        )
        plan = self.suite_plans[p.infectious] if self.uses_suite[p.product] else None
        return SlotBooking(self.env.event(), self.priority(p, b), p.product, p.site.name, chairs,
                           self.site_quotas.get(p.site.name), plan, p.infectious, reserved_ok, b)

    def cancel_collection(self, b: Batch, chairs: DayBook, slot: SlotBooking | None, aph_day: int | None) -> None:
        """The patient left before apheresis: the booked start (with its chair and suite booking) or the
        chair booking goes back."""
        if slot is not None:
            self.slotbook.cancel(slot)
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
