"""Shipment and infusion: the outbound leg to the site, lymphodepletion, and an infusion slot booked
at the site; a recall or expiry before infusion sends the patient back for a new collection."""

from __future__ import annotations

import math

from ..config import Site
from . import rules
from .base import ModelBase, Proc
from .entities import Batch, Outcome, Patient


class Delivery(ModelBase):
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
        failed = yield from self.ship(p, b, "outbound", "plant", site.name, transit, "<=-150C",
                                      sc.gmp.shipper_hold_days, excursion)
        if failed is not None:
            return failed
        if not self.enter(p, "awaiting_infusion"):
            return Outcome.ABANDONED
        return (yield from self.infuse(p, b, site))

    def infuse(self, p: Patient, b: Batch, site: Site) -> Proc:
        """Book the site's first infusion slot after clinic readiness and lymphodepletion (both counted
        from release, when the clinic learns the product is coming); the slot goes back if infusion does
        not happen (the one place it is cancelled)."""
        env = self.env
        released = b.released
        assert released is not None  # only released batches are shipped
        ld = self.stream(f"lymphodepletion:{site.name}", site.lymphodepletion).sample()
        ready = self.stream(f"clinic_readiness:{site.name}", site.clinic_readiness).sample()
        earliest = max(env.now, released + ready + ld)
        book = self.infusion_slots[site.name]
        oh = self.open_hour[site.name]
        day = book.first_free(math.ceil(earliest - oh - 1e-9))
        book.book(day)
        alive = yield from self.wait_until(p, day + oh)
        outcome = self.at_infusion(p, b, alive)
        if outcome is not Outcome.INFUSED:
            book.cancel(day)
            return outcome
        self.record.resource_use("infusion", site.name, p.coi, b.batch_no, "infusion", released, float(day), day + 1.0)
        b.infused = p.infused = env.now
        b.status = p.status = "infused"
        p.stage = "infused"
        return Outcome.INFUSED

    def at_infusion(self, p: Patient, b: Batch, alive: bool) -> Outcome:
        """Last checks at the bedside: the patient is there, the product not recalled nor expired."""
        if not alive:
            return Outcome.ABANDONED
        if b.recalled:
            b.status, b.failure_reason = "failed", "recalled_before_infusion"
            return Outcome.RECOLLECT
        if rules.expired(b.expiry, self.env.now):
            self.deviation(b, p, "expired_before_infusion", "major", "awaiting_infusion", "product past expiry")
            b.status, b.failure_reason = "expired", "expired"
            return Outcome.RECOLLECT
        return Outcome.INFUSED
