"""End of a run: what is still held at the horizon, the patient and batch records, the capacity each
resource offered inside the KPI window, and the run's costs. Read-only on the model; no SimPy events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import STAFF
from ..records import PatientRecord, ResourceSummary, ResourceUse, RunRecords

if TYPE_CHECKING:
    from .journey import Model


def finish(m: Model) -> RunRecords:
    """Turn the model's end state into records; runs once after the horizon, never inside a process."""
    sc, rec = m.sc, m.rec
    h, w = sc.horizon_days, sc.warmup_days
    for (kind, unit), (coi, batch_no, activity, requested, start) in sorted(m.open_holds.items()):
        rec.resource_uses.append(ResourceUse(kind, unit, coi, batch_no, activity, requested, start, h))
    for p in m.patients:
        rec.patients.append(
            PatientRecord(p.coi, p.no, p.site.name, p.product, p.urgency, p.infectious, p.referred, p.slot_booked,
                          p.first_apheresis, p.infused, p.status, p.lost_time, p.lost_stage, p.lost_reason,
                          p.stage if p.status == "in_progress" else None, p.attempts)
        )
    rec.batches = [b.record() for b in m.batches]
    r = sc.resources
    window = h - w
    summ = [
        ResourceSummary("suite", r.suites, r.suites * window),
        ResourceSummary("incubator", r.incubators, r.incubators * window),
        ResourceSummary("closed_device", r.closed_devices, r.closed_devices * window),
        ResourceSummary("freezer", r.freezers, r.freezers * window),
    ]
    for pool in (m.operators, m.analysts, m.reviewers):
        summ.append(ResourceSummary(pool.kind, pool.count, pool.count * pool.calendar.available_days(w, h)))
    summ.append(ResourceSummary("apheresis", sum(s.apheresis_per_day for s in sc.sites),
                                float(sum(b.per_day * b.open_days(w, h) for b in m.chairs.values()))))
    summ.append(ResourceSummary("infusion", sum(s.infusion_slots_per_day for s in sc.sites),
                                float(sum(b.per_day * b.open_days(w, h) for b in m.infusion_slots.values()))))
    if sc.booking.mode == "slot":
        summ.append(ResourceSummary("manufacturing_slot", m.starts.per_day,
                                    float(m.starts.per_day * m.starts.open_days(w, h))))
    rec.resources = [s for s in summ if s.capacity > 0]
    rec.costs = costs(m)
    rec.events = next(m.env._eid)  # SimPy's own event counter
    return rec

def costs(m: Model) -> dict[str, float]:
    """Cost components inside the KPI window; empty when the scenario states no costs. Labour is paid
    for the staff pools' shifts (headcount x on-shift hours; idle time on shift is paid too) unless
    ``costs.labour_basis`` is hands_on, which counts only the hours staff are busy on a task."""
    c = m.sc.costs
    if c is None:
        return {}
    h, w = m.sc.horizon_days, m.sc.warmup_days
    materials = sum(m.sc.products[b.product].materials_cost for b in m.batches
                    if b.mfg_start is not None and w <= b.mfg_start < h)
    qc_unit = c.qc_per_batch or m.sc.qc.cost_per_batch
    qc = qc_unit * sum(1 for b in m.batches if b.mfg_end is not None and w <= b.mfg_end < h)
    if c.labour_basis == "paid":
        staff_days = sum(pool.count * pool.calendar.available_days(w, h)
                         for pool in (m.operators, m.analysts, m.reviewers))
    else:
        staff_days = sum(max(0.0, min(u.end, h) - max(u.start, w)) for u in m.rec.resource_uses
                         if u.kind in STAFF)
    return {
        "materials": float(materials),
        "qc": float(qc),
        "labour": float(c.labour_per_hour * 24.0 * staff_days),
        "facility": float(c.facility_per_day * (h - w)),
    }
