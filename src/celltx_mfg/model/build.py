"""The plant built once from the scenario: every unit pool, staff pool and day book a replication uses,
and the per-product step plans. Built in the same order every run, so a seed meets the same plant."""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from ..calendar import Calendar
from ..config import Process, Scenario
from .plant import DayBook, SlotBook, StaffPool, SuitePlan, UnitPool


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
        # planned suite occupancy: mean time of the steps that hold the suite
        first = next((i for i, a in enumerate(self.acquire) if "suite" in a), None)
        last = next((i for i, r in enumerate(self.release) if "suite" in r), len(proc.steps) - 1)
        self.suite_days = 0.0 if first is None else sum(s.duration.mean() for s in proc.steps[first : last + 1])


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
    reserve_days: dict[str, int]  # suite days a slot reserves, per product


def _first_open(cal: Calendar) -> float:
    return 0.0 if cal.always else min(h for h, _ in cal.shifts) / 24.0


def _units(env: simpy.Environment, kind: str, prefix: str, n: int) -> UnitPool:
    return UnitPool(env, kind, [f"{prefix}{i + 1}" for i in range(n)])


def _reserve_days(sc: Scenario, plans: dict[str, ProductPlan]) -> dict[str, int]:
    """A slot reserves the suite for the planned occupancy plus line clearance and a day's margin."""
    clearance = sc.gmp.line_clearance.mean()
    planned = sc.booking.planned_suite_days
    return {
        name: (0 if plan.suite_days == 0 else math.ceil(planned or plan.suite_days + clearance + 1))
        for name, plan in plans.items()
    }


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
    starts = DayBook(sc.booking.starts_per_day, sc.calendar(sc.booking.start_calendar))
    slotbook = SlotBook(env, starts, math.ceil(sc.booking.apheresis_lead_days), sc.booking.horizon_days)
    chairs: dict[str, DayBook] = {}
    infusion_slots: dict[str, DayBook] = {}
    open_hour: dict[str, float] = {}
    for s in sc.sites:
        cal = sc.calendar(s.calendar)
        chairs[s.name] = DayBook(s.apheresis_per_day, cal)
        infusion_slots[s.name] = DayBook(s.infusion_slots_per_day, cal)
        open_hour[s.name] = _first_open(cal)
    plans = {name: ProductPlan(p) for name, p in sc.products.items()}
    return Plant(
        suites, dedicated, pools, operators, analysts, reviewers, starts, slotbook, chairs, infusion_slots,
        open_hour, plans, _first_open(operators.calendar),
        {False: SuitePlan(general), True: SuitePlan(r.dedicated_suites)}, _reserve_days(sc, plans),
    )
