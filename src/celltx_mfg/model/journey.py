"""The patient's journey: referral -> slot -> apheresis -> inbound shipment -> manufacture -> QC ->
QA review and QP release -> outbound shipment -> lymphodepletion -> infusion.

One SimPy process per patient, with one attempt per batch (a failed batch sends the patient back for
re-collection while attempts remain). The stages live in their own modules (collection, manufacture,
release, delivery) as mixins over ``base.ModelBase``; this module adds referrals and the attempt loop.
Records are appended to plain lists as things happen; nothing here knows about SQL, pandas or Streamlit.
"""

from __future__ import annotations

import gc
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import Referral, scenario_referrals
from ..distributions import Exponential
from ..records import RunRecords
from . import summary
from .base import INF, ModelBase, Proc
from .collection import Collection
from .delivery import Delivery
from .entities import Batch, Outcome, Patient
from .manufacture import Manufacture
from .release import Release

__all__ = ["Model", "ModelBase", "Outcome", "Batch", "Patient"]

MONTH = 365.25 / 12
YOUNG_COLLECTION_EVERY = 10_000  # net allocations between young collections while a run is going (CPython: 700)
_collector_lock = threading.Lock()
_collector_runs = 0  # runs going in this process (threads), and the threshold before the first began
_collector_saved: tuple[int, ...] = ()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A run allocates events, generators and records by the hundred thousand, nearly all freed at once by
    reference counting, yet the cyclic collector's default rescans the survivors every 700 allocations:
    about a tenth of a baseline run. During a run young collections are rarer, not stopped (cycles are
    still freed on long horizons); the setting is put back when the last run in the process ends, and a
    collector switched off by threshold 0 stays off."""
    global _collector_runs, _collector_saved
    with _collector_lock:
        if _collector_runs == 0:
            _collector_saved = gc.get_threshold()
            if _collector_saved[0]:
                gc.set_threshold(max(_collector_saved[0], YOUNG_COLLECTION_EVERY), *_collector_saved[1:])
        _collector_runs += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_runs -= 1
            if _collector_runs == 0:
                gc.set_threshold(*_collector_saved)


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


class Model(Collection, Manufacture, Release, Delivery):
    """One replication of a scenario: build the plant, run to the horizon, hand back the records."""

    # ------------------------------------------------------------------ referrals
    def referrals(self) -> Proc:
        """Referrals inside the demand window: a replayed log in day order, or Poisson arrivals (thinned
        by the monthly ramp). Drawn arrivals outside the window are skipped, not shifted, so the
        arrival times inside it are the ones the same seed draws without a window."""
        d = self.sc.demand
        first = d.first_referral_day
        last = INF if d.last_referral_day is None else d.last_referral_day
        log = scenario_referrals(self.sc)
        if log is not None:
            for ref in sorted(log, key=lambda r: r.day):
                if ref.day >= self.sc.horizon_days or ref.day > last:
                    break
                if ref.day < first:
                    continue
                if ref.day > self.env.now:
                    yield self.env.timeout(ref.day - self.env.now)
                self.new_patient(ref)
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
            if self.env.now > last:
                return
            if ramp:
                m = ramp[min(int(self.env.now / MONTH), len(ramp) - 1)]
                if thin.sample() * top >= m:
                    continue
            if self.env.now >= first:
                self.new_patient()

    def new_patient(self, ref: Referral | None = None) -> None:
        """A referred patient; a logged referral's site, product and urgency replace the drawn ones (the
        draws are still made, so every other referral keeps its random numbers)."""
        sc, d = self.sc, self.sc.demand
        site_name = _choose({s.name: s.share for s in sc.sites}, self.stream("patient:site").sample())
        product = _choose(sc.product_mix, self.stream("patient:product").sample())
        urgency = _choose(d.urgency_mix, self.stream("patient:urgency").sample())
        if ref is not None:
            site_name, product, urgency = ref.site or site_name, ref.product or product, ref.urgency or urgency
        site = next(s for s in sc.sites if s.name == site_name)
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
        """Attempts until one ends the journey; only a failed batch with attempts left goes round again."""
        while True:
            p.attempts += 1
            b = Batch.for_attempt(p, p.attempts)
            self.batches.append(b)
            outcome = yield from self.attempt(p, b)
            if outcome is Outcome.ABANDONED:
                b.status = "abandoned"
            if outcome is not Outcome.RECOLLECT:
                return
            if p.attempts >= self.sc.booking.max_attempts or not self.remanufactured():
                self.lose(p, "manufacturing_failure")
                return

    def remanufactured(self) -> bool:
        """Whether a failed batch's patient gets another collection: not all do (too ill for a second
        apheresis, bridging or a different therapy chosen); the scenario states the share."""
        share = self.sc.booking.remanufacture.share
        return share >= 1.0 or self.stream("remanufacture").sample() < share

    def attempt(self, p: Patient, b: Batch) -> Proc:
        """One batch through the stages; the first stage that does not go on ends the attempt."""
        outcome = yield from self.collect(p, b)
        if outcome is not None:
            return outcome
        outcome = yield from self.manufacture(p, b)
        if outcome is not Outcome.MADE:
            return outcome
        outcome = yield from self.test_and_release(p, b)
        if outcome is not Outcome.RELEASED:
            return outcome
        return (yield from self.deliver(p, b))

    # ------------------------------------------------------------------ run
    def run(self) -> RunRecords:
        self.env.process(self.referrals())
        with _fewer_collections():
            self.env.run(until=self.sc.horizon_days)
        return self.finish()

    def finish(self) -> RunRecords:
        """Close the books at the horizon: open holds, patient and batch records, capacity and costs."""
        return summary.finish(self)
