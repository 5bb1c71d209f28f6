"""Effective capacity: what each resource kind can really be used for in the KPI window, under its own
calendar AND the booking rules it is booked by. The denominator of effective utilisation.

The records' ``available_unit_days`` (model/summary.py) count every day a unit is open: an apheresis
chair on every clinic day. But the slot book (model/plant.py ``SlotBook._try``) books a chair only
``apheresis_lead_days`` before a start day, and one start per chair: with fresh starts Wed-Fri and a
2-day lead, chairs can be used Mon-Wed only, so dividing by every clinic day understates how full they
are. The rules here mirror the slot book's, and live beside it so that a change to one is seen in the
other:

* ``apheresis`` (slot mode): a chair-day counts when its start day (``lead`` later) offers starts, and
  no more chairs a day than starts that day (each chair booking takes one start);
* ``manufacturing_slot``: a start-day counts when chairs are open ``lead`` days before it, at most as
  many starts as chairs open that day (over every site);
* ``suite`` (slot mode with a planned occupancy): capacity is every suite-day, but a start reserves its
  suite for the planned days whether or not the batch needs them all: the bottleneck analysis counts
  the reservation as use (:data:`KindCapacity.reserve_days`);
* equipment is there around the clock, staff on their shifts, infusion slots on clinic days: as recorded.

Pure functions of the validated scenario: no SimPy, no records.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..calendar import Calendar
from ..config import Scenario
from .build import ProductPlan, _first_open, _projection


class KindCapacity(NamedTuple):
    """One resource kind's capacity in the KPI window, as recorded and as the booking rules allow."""

    kind: str
    units: int  # units (suites, people) or per-day places (chairs, starts, infusion slots)
    nominal_unit_days: float  # every open unit-day: the records' available_unit_days
    effective_unit_days: float  # the unit-days the calendars and booking rules let be used
    rule: str  # why effective differs from nominal ("" when it does not)
    reserve_days: dict[str, int] | None = None  # suites: days a start reserves, per product


def _open(cal: Calendar, day: int) -> bool:
    """The day-level test the day books use (DayBook.is_open)."""
    return cal.always or (cal.start_weekday + day) % 7 in cal.days


def _window(sc: Scenario) -> range:
    """Whole simulation days touching the KPI window, as DayBook.open_days counts them."""
    return range(math.floor(sc.warmup_days), math.ceil(sc.horizon_days))


def _chairs_open(sc: Scenario, day: int) -> int:
    return sum(s.apheresis_per_day for s in sc.sites if _open(sc.calendar(s.calendar), day))


def _apheresis(sc: Scenario) -> KindCapacity:
    units = sum(s.apheresis_per_day for s in sc.sites)
    days = _window(sc)
    nominal = float(sum(_chairs_open(sc, d) for d in days))
    if sc.booking.mode != "slot":
        return KindCapacity("apheresis", units, nominal, nominal, "")
    lead, starts = math.ceil(sc.booking.apheresis_lead_days), sc.booking.starts_per_day
    start_cal = sc.calendar(sc.booking.start_calendar)
    effective = float(sum(min(_chairs_open(sc, d), starts) for d in days if _open(start_cal, d + lead)))
    rule = (f"a chair is booked {lead} day(s) before a start day ({sc.booking.start_calendar}), "
            f"at most {starts} a day")
    return KindCapacity("apheresis", units, nominal, effective, rule)


def _starts(sc: Scenario) -> KindCapacity:
    lead, starts = math.ceil(sc.booking.apheresis_lead_days), sc.booking.starts_per_day
    start_cal = sc.calendar(sc.booking.start_calendar)
    open_days = [d for d in _window(sc) if _open(start_cal, d)]
    nominal = float(starts * len(open_days))
    effective = float(sum(min(starts, _chairs_open(sc, d - lead)) for d in open_days))
    rule = f"a start needs an apheresis chair {lead} day(s) before it"
    return KindCapacity("manufacturing_slot", starts, nominal, effective, rule)


def _reserve_days(sc: Scenario) -> dict[str, int]:
    """Whole days a booked start keeps its suite from anyone else, per product that uses one: the fixed
    ``booking.planned_suite_days`` when set, else the slot plan's own projection (step template on the
    operators' calendar, line clearance included), averaged over the sites and the start weekdays."""
    plans = {name: ProductPlan(p) for name, p in sc.products.items()}
    planned = sc.booking.planned_suite_days
    if planned is not None:
        return {name: math.ceil(planned) for name, plan in plans.items() if plan.suite_first is not None}
    plant_open = _first_open(sc.calendar(sc.resources.operators.calendar))
    projection = _projection(sc, plans, plant_open, math.ceil(sc.booking.apheresis_lead_days))
    start_cal = sc.calendar(sc.booking.start_calendar)
    weekdays = [d for d in range(7) if _open(start_cal, d)] or [0]
    out = {}
    for name in projection.products:
        spans = [projection.interval(name, site.name, d, False)[1] - d for site in sc.sites for d in weekdays]
        out[name] = math.ceil(sum(spans) / len(spans))
    return out


def _suites(sc: Scenario) -> KindCapacity:
    n = sc.resources.suites
    unit_days = float(n * (sc.horizon_days - sc.warmup_days))
    if sc.booking.mode != "slot":
        return KindCapacity("suite", n, unit_days, unit_days, "")
    reserve = _reserve_days(sc)
    if not any(reserve.values()):
        return KindCapacity("suite", n, unit_days, unit_days, "")
    shown = ", ".join(f"{d}" for d in dict.fromkeys(reserve.values()) if d)
    return KindCapacity("suite", n, unit_days, unit_days,
                        f"a start reserves its suite for {shown} planned day(s): use counts the reservation",
                        {k: v for k, v in reserve.items() if v})


def _always(kind: str, units: int, sc: Scenario) -> KindCapacity:
    unit_days = float(units * (sc.horizon_days - sc.warmup_days))
    return KindCapacity(kind, units, unit_days, unit_days, "")


def _staff(kind: str, sc: Scenario) -> KindCapacity:
    pool = getattr(sc.resources, kind)
    unit_days = pool.count * sc.calendar(pool.calendar).available_days(sc.warmup_days, sc.horizon_days)
    return KindCapacity(kind, pool.count, unit_days, unit_days, "")


def _infusion(sc: Scenario) -> KindCapacity:
    units = sum(s.infusion_slots_per_day for s in sc.sites)
    unit_days = float(sum(s.infusion_slots_per_day * sum(1 for d in _window(sc) if _open(sc.calendar(s.calendar), d))
                          for s in sc.sites))
    return KindCapacity("infusion", units, unit_days, unit_days, "")


def effective_capacity(sc: Scenario) -> dict[str, KindCapacity]:
    """Every resource kind the plant has (capacity > 0), with its nominal and effective unit-days in
    [warmup, horizon); the kinds and nominal figures are those the run records carry."""
    r = sc.resources
    kinds = [
        _suites(sc),
        _always("incubator", r.incubators, sc),
        _always("closed_device", r.closed_devices, sc),
        _always("freezer", r.freezers, sc),
        _staff("operators", sc),
        _staff("qc_analysts", sc),
        _staff("qa_reviewers", sc),
        _apheresis(sc),
        _infusion(sc),
    ]
    if sc.booking.mode == "slot":
        kinds.append(_starts(sc))
    return {k.kind: k for k in kinds if k.units > 0}
