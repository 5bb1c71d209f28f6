"""Is a plant state one a plant could be in? Two layers, each reporting every problem at once:

* ``check_consistency``: the state alone. Every batch, slot, step, unit and test belongs to a live
  patient; the patient's stage has the rows it needs (a batch in manufacturing has its step); a unit is
  held by one batch at a time (no two patients' open steps in one suite); nothing that has happened is
  after ``as_of``; a batch's times run in the journey's order.
* ``check_against``: the state and the scenario it will run under. Sites, products, urgency classes,
  units (by the plant's names), steps of the product's process, tests of the QC panel.

Each check is a small function adding to one ``Problems``; a new rule is one function in a list.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from ..config import Scenario
from .errors import MISSING, Problems
from .model import (
    COLLECTED,
    MADE,
    ROW_TYPES,
    STAGE_ORDER,
    BatchState,
    PlantState,
    Stage,
    UnitKind,
)

# Times that are plans or limits, so may lie after as_of; every other time is something that happened.
FUTURE_ALLOWED = {
    "slots": {"apheresis", "start"},
    "patients": {"booked_infusion"},
    "batches": {"hold_until", "expiry"},
    "out_of_service": {"until"},
}
BATCH_ORDER = ("apheresis_start", "apheresis_end", "received", "mfg_start", "mfg_end", "released", "shipped",
               "delivered")
# what a batch must have reached for each stage (the field that must be set), from collection on
STAGE_NEEDS = {
    Stage.inbound_transit: "apheresis_end",
    Stage.waiting_for_suite: "received",
    Stage.qc: "mfg_end",
    Stage.awaiting_release: "mfg_end",
    Stage.released: "released",
    Stage.outbound_transit: "shipped",
    Stage.awaiting_infusion: "delivered",
}


class _Ctx:
    """The state and its problems; a row read from a file is named by its file and line."""

    def __init__(self, state: PlantState) -> None:
        self.state = state
        self.problems = Problems()

    def at(self, kind: str, row: Any) -> str:
        where = self.state.sources.get(id(row))
        if where is not None:
            return where
        key = getattr(row, "coi", None) or getattr(row, "batch_no", None) or getattr(row, "unit", "")
        return f"{kind} {key}"

    def add(self, kind: str, row: Any, field: str | None, message: str, value: Any = MISSING) -> None:
        self.problems.add(self.at(kind, row), field, message, value)


# ---------------------------------------------------------------------------------------------- the state alone
def _unique_keys(c: _Ctx) -> None:
    for kind, key in (("patients", "coi"), ("batches", "batch_no"), ("slots", "coi"), ("steps", "batch_no")):
        seen: set[str] = set()
        for r in getattr(c.state, kind):
            k = getattr(r, key)
            if k in seen:
                c.add(kind, r, key, f"given twice: one row per {key} in {kind}", k)
            seen.add(k)
    seen_t: set[tuple[str, str]] = set()
    for t in c.state.qc_tests:
        if (t.batch_no, t.test) in seen_t:
            c.add("qc_tests", t, "test", f"the batch's {t.test} given twice", t.test)
        seen_t.add((t.batch_no, t.test))


def _belongs_to_patient(c: _Ctx) -> None:
    """A batch with no patient cannot be forecast: its chain of identity leads nowhere."""
    s = c.state
    cois = {p.coi for p in s.patients}
    for b in s.batches:
        if b.coi not in cois:
            c.add("batches", b, "coi", "a batch with no patient: no row in patients has this coi", b.coi)
        elif not b.batch_no.strip():
            c.add("batches", b, "batch_no", "empty batch number")
    for sl in s.slots:
        if sl.coi not in cois:
            c.add("slots", sl, "coi", "a slot with no patient: no row in patients has this coi", sl.coi)
    batches = {b.batch_no for b in s.batches}
    for kind in ("steps", "units_held", "qc_tests"):
        for r in getattr(s, kind):
            if r.batch_no not in batches:
                c.add(kind, r, "batch_no", "a batch with no patient: no row in batches has this batch number",
                      r.batch_no)


def _attempts_agree(c: _Ctx) -> None:
    s = c.state
    for b in s.batches:
        p = s.patient(b.coi)
        if p is not None and b.attempt != p.attempt:
            c.add("batches", b, "attempt", f"the patient's attempt is {p.attempt}; a live batch is the patient's "
                  "current attempt", b.attempt)
    for sl in s.slots:
        live = s.batch_of(sl.coi)
        if live is not None and live.batch_no != sl.batch_no:
            c.add("slots", sl, "batch_no", f"the patient's batch is {live.batch_no}", sl.batch_no)


def _stage_rows(c: _Ctx) -> None:
    """Each stage has the rows it needs, and no rows of a later stage."""
    s = c.state
    for p in s.patients:
        b = s.batch_of(p.coi)
        order = STAGE_ORDER[p.stage]
        if p.stage is Stage.waiting_for_slot:
            if s.slot_of(p.coi) is not None:
                c.add("patients", p, "stage", "waiting_for_slot but the patient has a booked slot: stage slot_booked",
                      p.stage.value)
        elif p.stage is Stage.slot_booked and s.slot_of(p.coi) is None:
            c.add("patients", p, "stage", "slot_booked needs the patient's row in slots", p.stage.value)
        if order < STAGE_ORDER[Stage.apheresis]:
            if b is not None:
                c.add("patients", p, "stage", f"{p.stage.value} but the patient has a batch in batches ({b.batch_no}): "
                      "collected patients are at apheresis or later", p.stage.value)
            continue
        if b is None:
            c.add("patients", p, "stage", f"{p.stage.value} needs the patient's batch in batches", p.stage.value)
            continue
        _batch_fits_stage(c, p.stage, b)


def _batch_fits_stage(c: _Ctx, stage: Stage, b: BatchState) -> None:
    s = c.state
    need = STAGE_NEEDS.get(stage)
    if need is not None and getattr(b, need) is None:
        c.add("batches", b, need, f"required for a patient at stage {stage.value}")
    step = s.step_of(b.batch_no)
    if stage is Stage.manufacturing and step is None:
        c.add("batches", b, None, "a batch in manufacturing needs its current step in steps")
    if stage is not Stage.manufacturing and step is not None:
        c.add("steps", step, "batch_no", f"the patient is at stage {stage.value}, not manufacturing", step.batch_no)
    if stage in MADE and s.units_of(b.batch_no):
        u = s.units_of(b.batch_no)[0]
        c.add("units_held", u, "batch_no", f"a batch at stage {stage.value} holds no manufacturing unit",
              u.batch_no)
    if stage not in MADE and s.tests_of(b.batch_no):
        t = s.tests_of(b.batch_no)[0]
        c.add("qc_tests", t, "batch_no", f"QC tests start when the batch is made; the patient is at stage "
              f"{stage.value}", t.batch_no)
    if stage in (Stage.qc, Stage.awaiting_release) and b.released is not None:
        c.add("batches", b, "released", f"the patient is at stage {stage.value}: a released batch is at stage "
              "released or later", b.released)
    if stage not in COLLECTED and b.apheresis_end is not None:
        c.add("batches", b, "apheresis_end", "the patient is still at apheresis", b.apheresis_end)


def _one_batch_per_unit(c: _Ctx) -> None:
    """Suites and equipment are exclusive: two patients' batches in one suite at once is a mix-up (rule 5)."""
    holders: dict[tuple[UnitKind, str], list[Any]] = defaultdict(list)
    for u in c.state.units_held:
        holders[(u.kind, u.unit)].append(u)
    for (kind, unit), rows in holders.items():
        cois = {_coi_of(c.state, r.batch_no) for r in rows}
        if len(rows) > 1 and len(cois) > 1:
            names = ", ".join(sorted(str(x) for x in cois))
            what = "two patients' open steps in one suite" if kind is UnitKind.suite else f"one {kind.value} held twice"
            c.add("units_held", rows[1], "unit", f"{what}: {kind.value} {unit} is held by {names}; one batch at "
                  "a time (segregation, GMP rule 5)", unit)
        elif len(rows) > 1:
            c.add("units_held", rows[1], "unit", f"{kind.value} {unit} given twice for one batch", unit)
    for u in c.state.units_held:
        for o in c.state.out_of_service:
            if (o.kind, o.unit) == (u.kind, u.unit) and (o.since is None or o.since <= c.state.as_of):
                c.add("units_held", u, "unit", f"{u.kind.value} {u.unit} is out of service until "
                      f"{o.until.isoformat()}", u.unit)


def _coi_of(state: PlantState, batch_no: str) -> str | None:
    b = state._by("batches", "batch_no").get(batch_no)
    return None if b is None else b.coi


def _nothing_after_as_of(c: _Ctx) -> None:
    """What has happened happened by ``as_of``: a start (or any event) after it is in the future."""
    as_of = c.state.as_of
    for kind in ROW_TYPES:
        allowed = FUTURE_ALLOWED.get(kind, set())
        for r in getattr(c.state, kind):
            for f in fields(r):
                v = getattr(r, f.name)
                if isinstance(v, dt.datetime) and f.name not in allowed and v > as_of:
                    c.add(kind, r, f.name, f"in the future: after as_of {as_of.isoformat()}", v.isoformat())


def _times_in_order(c: _Ctx) -> None:
    for b in c.state.batches:
        last: tuple[str, dt.datetime] | None = None
        for f in BATCH_ORDER:
            v = getattr(b, f)
            if v is None:
                continue
            if last is not None and v < last[1]:
                c.add("batches", b, f, f"before {last[0]} ({last[1].isoformat()})", v.isoformat())
            last = (f, v)
        if b.release_mode is not None and b.released is None:
            c.add("batches", b, "release_mode", "given but the batch is not released", b.release_mode.value)
    for st in c.state.steps:
        if st.started is not None and st.started < st.ready:
            c.add("steps", st, "started", f"before ready ({st.ready.isoformat()})", st.started.isoformat())
    for t in c.state.qc_tests:
        if t.started is not None and t.started < t.sampled:
            c.add("qc_tests", t, "started", f"before sampled ({t.sampled.isoformat()})", t.started.isoformat())
        if (t.result is None) != (t.result_time is None):
            c.add("qc_tests", t, "result" if t.result is None else "result_time",
                  "result and result_time go together: both empty (pending) or both given")
        if t.result_time is not None and t.result_time < (t.started or t.sampled):
            c.add("qc_tests", t, "result_time", "before the test started", t.result_time.isoformat())
    for o in c.state.out_of_service:
        if o.since is not None and o.until < o.since:
            c.add("out_of_service", o, "until", f"before since ({o.since.isoformat()})", o.until.isoformat())


CONSISTENCY: tuple[Callable[[_Ctx], None], ...] = (
    _unique_keys, _belongs_to_patient, _attempts_agree, _stage_rows, _one_batch_per_unit, _nothing_after_as_of,
    _times_in_order,
)


def check_consistency(state: PlantState, path: str) -> None:
    """Every problem of the state on its own at once (StateError); see the module's docstring."""
    c = _Ctx(state)
    for check in CONSISTENCY:
        check(c)
    c.problems.raise_if_any(path)


# ---------------------------------------------------------------------------------------------- with the scenario
def unit_names(sc: Scenario) -> dict[UnitKind, list[str]]:
    """The plant's units by kind, named as the model names them (model/build.py): general suites S1..,
    dedicated suites SD1.., incubators I1.., closed devices C1.., freezers F1.."""
    r = sc.resources
    return {
        UnitKind.suite: [f"S{i + 1}" for i in range(r.suites - r.dedicated_suites)]
        + [f"SD{i + 1}" for i in range(r.dedicated_suites)],
        UnitKind.incubator: [f"I{i + 1}" for i in range(r.incubators)],
        UnitKind.closed_device: [f"C{i + 1}" for i in range(r.closed_devices)],
        UnitKind.freezer: [f"F{i + 1}" for i in range(r.freezers)],
    }


def _some(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def _names_known(c: _Ctx, sc: Scenario) -> None:
    sites = [s.name for s in sc.sites]
    products = list(sc.products)
    urgencies = list(dict.fromkeys([*sc.demand.urgency_mix, *sc.booking.urgency_order]))
    for p in c.state.patients:
        for field, value, allowed in (("site", p.site, sites), ("product", p.product, products),
                                      ("urgency", p.urgency, urgencies)):
            if value not in allowed:
                c.add("patients", p, field, f"unknown {field}; the scenario's: {_some(allowed)}", value)
        if p.attempt > sc.booking.max_attempts:
            c.add("patients", p, "attempt", f"more than booking.max_attempts ({sc.booking.max_attempts})", p.attempt)


def _units_exist(c: _Ctx, sc: Scenario) -> None:
    names = unit_names(sc)
    dedicated = {f"SD{i + 1}" for i in range(sc.resources.dedicated_suites)}
    for kind in ("units_held", "out_of_service"):
        for u in getattr(c.state, kind):
            if u.unit not in names[u.kind]:
                c.add(kind, u, "unit", f"a unit that does not exist: the scenario's {u.kind.value} units are "
                      f"{_some(names[u.kind])}", u.unit)
    for u in c.state.units_held:
        p = c.state.patient(_coi_of(c.state, u.batch_no) or "")
        if u.kind is UnitKind.suite and p is not None and u.unit in names[u.kind] and sc.resources.dedicated_suites:
            if p.infectious != (u.unit in dedicated):
                want = "a dedicated suite (SD..)" if p.infectious else "a general suite (S..)"
                c.add("units_held", u, "unit", f"the patient is {'' if p.infectious else 'not '}infectious-marker "
                      f"positive: {want} (GMP rule 4)", u.unit)
    for sl in c.state.slots:
        if sl.suite is not None and sl.suite not in names[UnitKind.suite]:
            c.add("slots", sl, "suite", f"a unit that does not exist: the scenario's suites are "
                  f"{_some(names[UnitKind.suite])}", sl.suite)


def _steps_known(c: _Ctx, sc: Scenario) -> None:
    for st in c.state.steps:
        p = c.state.patient(_coi_of(c.state, st.batch_no) or "")
        if p is None or p.product not in sc.products:
            continue
        steps = [s.name for s in sc.products[p.product].steps]
        if st.step not in steps:
            c.add("steps", st, "step", f"not a step of {p.product}'s process: {_some(steps)}", st.step)


def _tests_known(c: _Ctx, sc: Scenario) -> None:
    panel = [t.name for t in sc.qc.tests]
    for t in c.state.qc_tests:
        if t.test not in panel:
            c.add("qc_tests", t, "test", f"a QC result for an unknown test: the QC panel has {_some(panel)}", t.test)


AGAINST_SCENARIO: tuple[Callable[[_Ctx, Scenario], None], ...] = (
    _names_known, _units_exist, _steps_known, _tests_known,
)


def check_against(state: PlantState, sc: Scenario, path: str) -> None:
    """Every problem of the state under the scenario at once (StateError)."""
    c = _Ctx(state)
    for check in AGAINST_SCENARIO:
        check(c, sc)
    c.problems.raise_if_any(path)
