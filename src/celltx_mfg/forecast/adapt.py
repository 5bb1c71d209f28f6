"""A plant state read from files (``celltx_mfg.plantstate``: calendar datetimes, rows per kind) in the
engine's form (:class:`.state.StartState`, simulation days from the scenario's ``start_date``).

Written against the plant-state rows of ``plantstate.model`` (patients, slots, batches, steps, units_held,
qc_tests, out_of_service); the rows are read by attribute so this module needs nothing else of that
package. Validation (units that exist, steps of the process, tests of the panel) is the reader's.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from ..config import Scenario
from .state import LivePatient, LiveStage, OutOfService, StartState

# plant-state stage -> engine stage (the reader's "apheresis" is collected again from the booked chair day)
STAGES = {
    "waiting_for_slot": LiveStage.WAITING_FOR_SLOT,
    "slot_booked": LiveStage.SLOT_BOOKED,
    "apheresis": LiveStage.SLOT_BOOKED,
    "inbound_transit": LiveStage.INBOUND_TRANSIT,
    "waiting_for_suite": LiveStage.WAITING_FOR_SUITE,
    "manufacturing": LiveStage.MANUFACTURING,
    "qc": LiveStage.QC,
    "awaiting_release": LiveStage.QA_RELEASE,
    "released": LiveStage.RELEASED,
    "outbound_transit": LiveStage.OUTBOUND_TRANSIT,
    "awaiting_infusion": LiveStage.AWAITING_INFUSION,
}


def start_state(ps: Any, sc: Scenario) -> StartState:
    """The engine's view of plant state ``ps`` against scenario ``sc``."""
    origin = dt.datetime.combine(sc.start_date, dt.time())

    def day(t: dt.datetime | None) -> float | None:
        return None if t is None else (t - origin).total_seconds() / 86400.0

    patients = tuple(_patient(ps, p, sc, day) for p in ps.patients)
    oos = tuple(OutOfService(str(o.kind), o.unit, day(o.until) or 0.0) for o in ps.out_of_service)
    return StartState(day(ps.as_of) or 0.0, patients, oos)


def _patient(ps: Any, p: Any, sc: Scenario, day: Any) -> LivePatient:
    slot, b = ps.slot_of(p.coi), ps.batch_of(p.coi)
    step = ps.step_of(b.batch_no) if b is not None else None
    names = [s.name for s in sc.products[p.product].steps]
    fields: dict[str, Any] = dict(
        coi=p.coi, site=p.site, product=p.product, urgency=p.urgency, stage=STAGES[str(p.stage)],
        referred=day(p.referred), infectious=bool(p.infectious), attempt=int(p.attempt), label=str(p.stage),
    )
    booked = getattr(p, "booked_infusion", None)
    if booked is not None:
        fields["booked_infusion_day"] = math.floor(day(booked))
    if slot is not None:
        fields.update(slot_booked=day(slot.booked), slot_day=math.floor(day(slot.start)),
                      aph_day=math.floor(day(slot.apheresis)), suite=slot.suite)
    if b is not None:
        fields.update(apheresis_start=day(b.apheresis_start), first_apheresis=day(b.apheresis_start),
                      apheresis_end=day(b.apheresis_end), received=day(b.received), mfg_start=day(b.mfg_start),
                      mfg_end=day(b.mfg_end), released=day(b.released), shipped=day(b.shipped), oos=bool(b.oos),
                      review_start=day(b.qa_review_start))
        fields["units"] = {str(u.kind): u.unit for u in ps.units_of(b.batch_no)}
        tests = ps.tests_of(b.batch_no)
        fields["tests_started"] = {t.test: day(t.sampled) for t in tests}
        fields["results"] = {t.test: str(t.result) == "fail" for t in tests if t.result is not None}
    if step is not None:
        fields.update(step=names.index(step.step), step_started=step.started is not None,
                      step_start=day(step.started) if step.started is not None else day(step.ready))
    return LivePatient(**fields)
