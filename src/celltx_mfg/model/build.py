"""The plant built once from the scenario: every unit pool, staff pool and day book a replication uses,
and the per-product step plans. Built in the same order every run, so a seed meets the same plant."""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from ..calendar import Calendar
from ..config import Process, Scenario
from .plant import DayBook, StaffPool, UnitPool
from .slotplan import (
    LATE_QUANTILE,
    MonthBook,
    ProductTiming,
    SlotBook,
    SuitePlan,
    SuiteProjection,
    UrgentReserve,
    planning_duration,
)


class ProductPlan:
    """Per-product precomputation: which resources each step acquires and which it returns."""

    def __init__(self, proc: Process) -> None:
        names = [s.name for s in proc.steps]
        self.acquire: list[list[str]] = [[] for _ in proc.steps]
        self.release: list[list[str]] = [[] for _ in proc.steps]
        until: dict[str, int] = {}  # kind -> index of the last step that keeps it
        for i, s in enumerate(proc.steps):
            for kind in s.uses:
                if until.get(kind, -1) < i:
                    self.acquire[i].append(kind)
                    until[kind] = i
                if kind in s.hold_until:
                    until[kind] = max(until[kind], names.index(s.hold_until[kind]))
            self.release[i] = [k for k, last in until.items() if last == i]
        # the steps that hold the suite, from taking it to giving it back
        self.suite_first = next((i for i, a in enumerate(self.acquire) if "suite" in a), None)
        self.suite_last = max((i for i, r in enumerate(self.release) if "suite" in r), default=len(proc.steps) - 1)


@dataclass(eq=False)
class Plant:
    """Everything finite a batch or a patient can wait for, by name."""

    suites: UnitPool  # general suites
    dedicated: UnitPool  # suites kept for infectious-marker-positive donors
    pools: dict[str, UnitPool]  # incubator, closed_device, freezer
    operators: StaffPool
    analysts: StaffPool
    reviewers: StaffPool
    starts: DayBook  # manufacturing starts per day
    slotbook: SlotBook
    chairs: dict[str, DayBook]  # apheresis chairs per site
    infusion_slots: dict[str, DayBook]
    open_hour: dict[str, float]  # site opening, fraction of a day
    plans: dict[str, ProductPlan]
    plant_open: float  # operators' first shift hour, fraction of a day
    suite_plans: dict[bool, SuitePlan]  # keyed by "infectious donor"
    uses_suite: dict[str, bool]  # per product: does a booked start reserve a suite
    site_quotas: dict[str, MonthBook]  # centres with a monthly slot allocation


def _first_open(cal: Calendar) -> float:
    return 0.0 if cal.always else min(h for h, _ in cal.shifts) / 24.0


def _units(env: simpy.Environment, kind: str, prefix: str, n: int) -> UnitPool:
    return UnitPool(env, kind, [f"{prefix}{i + 1}" for i in range(n)])


def _projection(sc: Scenario, plans: dict[str, ProductPlan], plant_open: float, lead: int) -> SuiteProjection:
    """The planner's view of a booking's suite occupancy: every duration at the plan quantile."""
    q = sc.booking.plan_quantile
    timings = {
        name: ProductTiming(
            tuple(planning_duration(s.duration, q) for s in sc.products[name].steps),
            tuple(s.operators for s in sc.products[name].steps),
            plan.suite_first, plan.suite_last,
            tuple(planning_duration(s.duration, max(q, LATE_QUANTILE)) for s in sc.products[name].steps),
            tuple(i + 1 < len(plan.acquire) and not plan.acquire[i + 1] and not sc.products[name].steps[i + 1].operators
                  for i in range(len(plan.acquire))),
        )
        for name, plan in plans.items() if plan.suite_first is not None
    }
    arrival = {
        s.name: _first_open(sc.calendar(s.calendar)) + planning_duration(s.apheresis_duration, q)
        + planning_duration(s.inbound_transit, q)
        for s in sc.sites
    }
    gmp = sc.gmp
    clearance = (planning_duration(gmp.line_clearance, q), planning_duration(gmp.infectious_decontamination, q),
                 gmp.clearance_operators)
    return SuiteProjection(sc.calendar(sc.resources.operators.calendar), plant_open, lead, timings, arrival, clearance,
                           sc.booking.planned_suite_days, sc.booking.progress_notice_days)


def build_plant(env: simpy.Environment, sc: Scenario) -> Plant:
    """The scenario's resources as live SimPy-side objects."""
    r = sc.resources
    general = r.suites - r.dedicated_suites
    suites = _units(env, "suite", "S", general)
    dedicated = _units(env, "suite", "SD", r.dedicated_suites)
    pools = {
        "incubator": _units(env, "incubator", "I", r.incubators),
        "closed_device": _units(env, "closed_device", "C", r.closed_devices),
        "freezer": _units(env, "freezer", "F", r.freezers),
    }
    operators = StaffPool(env, "operators", r.operators.count, sc.calendar(r.operators.calendar))
    analysts = StaffPool(env, "qc_analysts", r.qc_analysts.count, sc.calendar(r.qc_analysts.calendar))
    reviewers = StaffPool(env, "qa_reviewers", r.qa_reviewers.count, sc.calendar(r.qa_reviewers.calendar))
    b = sc.booking
    starts = DayBook(b.starts_per_day, sc.calendar(b.start_calendar))
    lead = math.ceil(b.apheresis_lead_days)
    plant_open = _first_open(operators.calendar)
    plans = {name: ProductPlan(p) for name, p in sc.products.items()}
    projection = _projection(sc, plans, plant_open, lead)
    month = None if b.starts_per_month is None else MonthBook(b.starts_per_month, sc.start_date)
    reserve = None if b.urgent_reserve is None else UrgentReserve(b.urgent_reserve.share, b.urgent_reserve.release_days)
    slotbook = SlotBook(env, starts, lead, b.horizon_days, projection, month, reserve)
    chairs: dict[str, DayBook] = {}
    infusion_slots: dict[str, DayBook] = {}
    open_hour: dict[str, float] = {}
    for s in sc.sites:
        cal = sc.calendar(s.calendar)
        chairs[s.name] = DayBook(s.apheresis_per_day, cal)
        infusion_slots[s.name] = DayBook(s.infusion_slots_per_day, cal)
        open_hour[s.name] = _first_open(cal)
    quotas = {s.name: MonthBook(s.slots_per_month, sc.start_date) for s in sc.sites if s.slots_per_month is not None}
    return Plant(
        suites, dedicated, pools, operators, analysts, reviewers, starts, slotbook, chairs, infusion_slots,
        open_hour, plans, plant_open, {False: SuitePlan(suites.units), True: SuitePlan(dedicated.units)},
        {name: plan.suite_first is not None for name, plan in plans.items()}, quotas,
    )
