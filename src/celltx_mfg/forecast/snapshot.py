"""The state of a running model at its clock's reading, in the engine's form: what a plant at that moment
would know (no durations still to come, no dropout times). For the benchmark and the engine's tests,
which need a live plant without files or a database; ``celltx snapshot`` (``plantstate``) writes the
state of a *stored* run in the plant-state file format.
"""

from __future__ import annotations

from ..model.entities import Batch, Patient
from ..model.journey import Model
from .state import LivePatient, LiveStage, StartState

_STAGES = {
    "inbound_transit": LiveStage.INBOUND_TRANSIT,
    "waiting_for_suite": LiveStage.WAITING_FOR_SUITE,
    "manufacturing": LiveStage.MANUFACTURING,
    "outbound_transit": LiveStage.OUTBOUND_TRANSIT,
    "awaiting_infusion": LiveStage.AWAITING_INFUSION,
}


def run_until(model: Model, day: float) -> Model:
    """Run ``model`` (referrals started) up to ``day``; it can be run on afterwards."""
    model.env.process(model.referrals())
    model.env.run(until=day)
    return model


def state_of(model: Model) -> StartState:
    """Every patient still in progress, at its stage, with the clocks the plant knows."""
    now = model.env.now
    last: dict[str, Batch] = {}
    for b in model.batches:
        last[b.coi] = b
    done_steps: dict[str, int] = {}
    for s in model.rec.steps:
        done_steps[s.batch_no] = max(done_steps.get(s.batch_no, 0), s.seq + 1)
    results: dict[str, dict[str, bool]] = {}
    for q in model.rec.qc_results:
        results.setdefault(q.batch_no, {})[q.test] = q.result == "fail"
    live = []
    for p in model.patients:
        if p.status != "in_progress" or p.stage in ("referred", "infused"):
            continue
        cur = last.get(p.coi)
        if cur is None:
            continue
        live.append(_live(model, p, cur, now, done_steps.get(cur.batch_no, 0), results.get(cur.batch_no, {})))
    return StartState(now, tuple(live))


def _live(m: Model, p: Patient, b: Batch, now: float, done: int, results: dict[str, bool]) -> LivePatient:
    stage = _stage(p, b)
    slot = b.slot
    common = dict(
        coi=p.coi, site=p.site.name, product=p.product, urgency=p.urgency, stage=stage, referred=p.referred,
        infectious=p.infectious, attempt=b.attempt, slot_booked=p.slot_booked, first_apheresis=p.first_apheresis,
        slot_day=None if b.slot_day is None else int(b.slot_day), aph_day=None if slot is None else slot.aph_day,
        suite=b.suite or (None if slot is None else slot.suite_name), apheresis_start=b.apheresis_start,
        apheresis_end=b.apheresis_end, received=b.received, mfg_start=b.mfg_start, mfg_end=b.mfg_end,
        qc_complete=b.qc_complete, released=b.released, shipped=b.shipped, oos=b.oos,
    )
    if stage is LiveStage.MANUFACTURING:
        started = slot is not None and slot.step == done
        common.update(step=done, step_started=started, step_start=slot.step_start if started and slot else now,
                      units={k: v[0] for k, v in b.held.items()})
    if stage.at_or_after(LiveStage.QC):
        sampled = b.mfg_end if b.mfg_end is not None else now
        common.update(tests_started={t.name: sampled for t in m.sc.qc.tests}, results=dict(results))
    if stage is LiveStage.QA_RELEASE:
        common.update(review_start=b.qc_complete)
    return LivePatient(**common)  # type: ignore[arg-type]


def _stage(p: Patient, b: Batch) -> LiveStage:
    if p.stage in ("waiting_for_slot", "apheresis"):
        return LiveStage.WAITING_FOR_SLOT if b.slot_day is None and b.slot is None else LiveStage.SLOT_BOOKED
    if p.stage == "qc_release":
        if b.released is not None:
            return LiveStage.RELEASED
        return LiveStage.QA_RELEASE if b.qc_complete is not None else LiveStage.QC
    return _STAGES[p.stage]
