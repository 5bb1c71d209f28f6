"""A scenario: pydantic models, YAML loading and validation.

This is the only module that knows the file format. Everything downstream receives a validated
``Scenario`` whose numbers are all in days (unless the field name says hours) and whose cross-references
(sites, products, resources, tests, calendars) are known to resolve.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import hashlib
import io
import itertools
import math
import os
import reprlib
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .calendar import WEEKDAYS, Calendar
from .distributions import Distribution, fixed

DEFAULT_START_DATE = dt.date(2027, 1, 4)  # a Monday: day 0 of every scenario that does not set start_date
STAFF = ("operators", "qc_analysts", "qa_reviewers")
# Bounds that keep sums finite: a relative share (of a site, product or urgency class) and a cost (per
# hour, day, batch or unit) of at most these, summed over anything a scenario file can hold and multiplied
# by a century of days, stays far below float overflow (1e308 shares summed to inf before).
MAX_SHARE = 1e9
MAX_COST = 1e12

Equipment = Literal["suite", "incubator", "closed_device", "freezer"]
Consequence = Literal["recollect", "discard", "oos"]


def _repeated(names: list[str]) -> set[str]:
    """Names given more than once: sites, steps and QC tests are all referred to by name. One pass over
    the names: validation stays linear in the size of the file."""
    return {n for n, k in Counter(names).items() if k > 1}


def _some(names: Sequence[str], limit: int = 10) -> str:
    """At most ``limit`` names for a message, and how many there are: a problem line stays one line when a
    scenario lists thousands of steps, sites or calendars."""
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class Shift(_Model):
    start_hour: float = Field(ge=0, lt=24, description="hour of day the shift starts")
    hours: float = Field(gt=0, le=24, description="length of the shift in hours")


class CalendarSpec(_Model):
    """Working pattern of a staff pool (or a clinic): shifts repeated on the listed weekdays."""

    shifts: list[Shift] = Field(min_length=1)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self) -> CalendarSpec:
        spans = sorted((s.start_hour, s.start_hour + s.hours) for s in self.shifts)
        for (_, a1), (b0, _) in itertools.pairwise(spans):
            if b0 < a1:
                raise ValueError(f"shifts overlap: one ends at hour {a1}, the next starts at {b0}")
        if spans[-1][1] - spans[0][0] > 24:
            raise ValueError("shifts of one day span more than 24 hours")
        return self

    def build(self, start_weekday: int) -> Calendar:
        if len(self.days) == 7 and sum(s.hours for s in self.shifts) >= 24:
            return Calendar.around_the_clock()
        return Calendar(
            shifts=tuple((s.start_hour, s.hours) for s in self.shifts),
            days=frozenset(WEEKDAYS.index(d) for d in self.days),
            start_weekday=start_weekday,
        )


class StaffPool(_Model):
    count: int = Field(ge=0, le=1_000_000_000, description="people on each shift")
    calendar: str = Field(description="name of a calendar under `calendars`")


class Site(_Model):
    """A treating centre: collects cells, receives the product, infuses."""

    name: str = Field(min_length=1)
    share: float = Field(default=1.0, gt=0, le=MAX_SHARE, description="relative share of referrals")
    apheresis_per_day: int = Field(ge=1, le=1_000_000_000, description="apheresis chairs/sessions per working day")
    apheresis_duration: Distribution = Field(
        default_factory=lambda: fixed(0.25), description="collection session length (days)"
    )
    inbound_transit: Distribution = Field(description="apheresis end -> receipt at the plant (days)")
    outbound_transit: Distribution = Field(description="release -> product at the site (days)")
    infusion_slots_per_day: int = Field(ge=1, le=1_000_000_000)
    lymphodepletion: Distribution = Field(
        default_factory=lambda: fixed(4.0), description="lymphodepletion lead before infusion (days)"
    )
    clinic_readiness: Distribution = Field(
        default_factory=lambda: fixed(0.0),
        description="release -> the clinic can start lymphodepletion: bed, chemotherapy and infusion "
        "scheduling once the release date is known (days)",
    )
    calendar: str = Field(default="clinic", description="working days of the site's clinic")
    slots_per_month: int | None = Field(
        default=None, ge=1, le=1_000_000_000,
        description="manufacturing starts allocated to this centre per calendar month (slot booking)",
    )


MIN_REFERRALS_PER_YEAR = 0.001  # one referral in a thousand years
MAX_REFERRALS_PER_YEAR = 1_000_000


class Demand(_Model):
    per_year: float = Field(default=0, ge=0, le=MAX_REFERRALS_PER_YEAR,
                            description="Poisson referral rate: 0, or at least 0.001 a year")
    monthly_ramp: list[float] | None = Field(
        default=None,
        description="multipliers of per_year for months 1, 2, ...; the last value holds afterwards",
    )
    referrals_csv: str | None = Field(
        default=None,
        description="CSV with a `day` or `date` column instead, and optionally `site`, `product` and "
        "`urgency` columns (a blank cell is drawn from the mix)",
    )
    referrals_log: str | None = Field(
        default=None, max_length=64_000_000,
        description="the referral CSV's content, stored with each run (filled in from referrals_csv when a "
        "scenario file is loaded, so the scenario hash covers it and a run is reproduced from the database); "
        "when given, it is replayed and referrals_csv only says where it came from",
    )
    first_referral_day: float = Field(default=0.0, ge=0, description="no referral before this day")
    last_referral_day: float | None = Field(default=None, ge=0, description="no referral after this day")
    product_mix: dict[str, float] = Field(default_factory=dict, description="product -> share")
    urgency_mix: dict[str, float] = Field(
        default_factory=lambda: {"standard": 1.0}, description="urgency class -> share"
    )
    dropout_per_day: float = Field(
        default=0.0, ge=0, le=1, description="daily hazard of becoming ineligible or dying before infusion"
    )
    infectious_fraction: float = Field(
        default=0.0, ge=0, le=1, description="share of donors positive for an infectious marker"
    )

    @field_validator("monthly_ramp")
    @classmethod
    def _ramp(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            if not v:
                raise ValueError("monthly_ramp must list at least one multiplier")
            if any((not math.isfinite(x)) or x < 0 or x > 1000 for x in v):
                raise ValueError("monthly_ramp multipliers must be between 0 and 1000")
        return v

    @model_validator(mode="after")
    def _peak_rate(self) -> Demand:
        """The ramp multiplies per_year: 1e6 a year at a ramp of 1000 is a billion referrals a year, a
        run that never ends, so the peak rate has the same bound as per_year itself."""
        peak = self.per_year * max(self.monthly_ramp or [1.0])
        if peak > MAX_REFERRALS_PER_YEAR:
            raise ValueError(f"demand.monthly_ramp: per_year x the largest multiplier is {peak:,.0f} referrals a "
                             f"year; at most {MAX_REFERRALS_PER_YEAR:,} are allowed")
        if 0 < peak < MIN_REFERRALS_PER_YEAR:
            # a denormal rate makes the mean gap between referrals infinite: nothing a planner means
            raise ValueError(f"demand.per_year: per_year x the largest monthly_ramp multiplier is {peak:g} referrals "
                             f"a year; allowed: 0 (no Poisson referrals) or at least {MIN_REFERRALS_PER_YEAR:g}")
        return self

    @field_validator("product_mix", "urgency_mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        if any((not math.isfinite(x)) or x < 0 or x > MAX_SHARE for x in v.values()):
            raise ValueError(f"shares must be between 0 and {MAX_SHARE:g}")
        if v and sum(v.values()) <= 0:
            raise ValueError("shares must not all be zero")
        return v


class Referral(NamedTuple):
    """One referral replayed from a CSV log: its day, and the site, product and urgency it names (None:
    drawn from the scenario's mix like a Poisson referral)."""

    day: float
    site: str | None = None
    product: str | None = None
    urgency: str | None = None


class UrgentReserve(_Model):
    """Capacity held back for urgent patients, as manufacturers run it: a share of each week's starts
    that only the listed classes may book, released to everyone ``release_days`` before the start."""

    share: float = Field(gt=0, le=1, description="share of each week's starts reserved for the listed classes")
    release_days: float = Field(
        default=7, ge=0, le=365, description="days before the start at which an unused reserved start is released"
    )
    classes: list[str] = Field(default_factory=lambda: ["urgent"], min_length=1,
                               description="urgency classes that may book reserved starts")


class Remanufacture(_Model):
    """What a patient whose batch failed gets: whether a new collection is tried at all, and its place in
    the slot book."""

    share: float = Field(
        default=1.0, ge=0, le=1,
        description="share of failed batches (attempts left) whose patient is re-collected and re-manufactured",
    )
    priority: Literal["first", "by_urgency"] = Field(
        default="first",
        description="first: ahead of every first attempt; by_urgency: ranked like a first attempt",
    )
    urgent_reserve: bool = Field(default=True, description="may book starts of booking.urgent_reserve")


class Booking(_Model):
    """How patients get a manufacturing start."""

    mode: Literal["slot", "collect_then_queue"] = Field(
        default="slot",
        description="slot: wait for a reserved start, collect against it; "
        "collect_then_queue: collect at once, cryopreserve at site, queue at the plant",
    )
    starts_per_day: int = Field(
        default=1, ge=0, le=1_000_000_000, description="manufacturing starts offered per working day"
    )
    start_calendar: str = Field(default="plant_days", description="calendar whose days offer starts")
    horizon_days: float = Field(default=56, gt=0, le=3650, description="how far ahead a slot may be booked")
    priority: Literal["fifo", "urgency"] = "fifo"
    urgency_order: list[str] = Field(default_factory=lambda: ["urgent", "standard"])
    apheresis_lead_days: float = Field(
        default=1.0, ge=0, le=365, description="planned days from apheresis to the booked start"
    )
    max_attempts: int = Field(default=2, ge=1, le=100, description="manufacturing attempts per patient")
    planned_suite_days: float | None = Field(
        default=None, gt=0, le=3650,
        description="fixed days a suite is reserved per booked start (default: projected from the step "
        "template on the operators' calendar, line clearance included)",
    )
    plan_quantile: float = Field(
        default=0.5, gt=0, lt=1,
        description="quantile of each step's duration the suite plan projects with (a planner's margin)",
    )
    progress_notice_days: float = Field(
        default=0.0, ge=0, le=365,
        description="days before a running step ends that the plan knows when (in-process monitoring)",
    )
    starts_per_month: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="manufacturing starts offered per calendar month"
    )
    urgent_reserve: UrgentReserve | None = Field(
        default=None, description="a share of each week's starts held back for urgent patients"
    )
    remanufacture: Remanufacture = Field(default_factory=Remanufacture)


class Resources(_Model):
    suites: int = Field(ge=0, le=100_000, description="grade B cleanroom suites, each with one grade A BSC")
    dedicated_suites: int = Field(
        default=0, ge=0, le=100_000, description="suites reserved for infectious-marker-positive donors"
    )
    incubators: int = Field(default=0, ge=0, le=100_000)
    closed_devices: int = Field(default=0, ge=0, le=100_000, description="closed automated systems (e.g. Prodigy)")
    freezers: int = Field(default=0, ge=0, le=100_000, description="controlled-rate freezers")
    operators: StaffPool
    qc_analysts: StaffPool
    qa_reviewers: StaffPool


class Failure(_Model):
    probability: float = Field(ge=0, le=1)
    consequence: Consequence = Field(
        description="recollect: new apheresis and re-manufacture; discard: batch lost; "
        "oos: product out of specification (handled by gmp.oos_policy)"
    )


class Step(_Model):
    name: str = Field(min_length=1)
    duration: Distribution
    open: bool = Field(default=False, description="open processing: needs the suite's BSC, one batch at a time")
    uses: list[Equipment] = Field(default_factory=list)
    hold_until: dict[Equipment, str] = Field(
        default_factory=dict, description="keep a resource past this step until the named later step ends"
    )
    operators: int = Field(default=0, ge=0, description="operators hands-on for the whole step (wait for shift)")
    min_days: float | None = Field(default=None, ge=0, description="validated minimum duration")
    max_days: float | None = Field(default=None, ge=0, description="validated maximum duration")
    failure: Failure | None = None


class Process(_Model):
    """One product's manufacturing template."""

    _held: dict[str, list[bool]] = PrivateAttr(default_factory=dict)

    steps: list[Step] = Field(min_length=1)
    materials_cost: float = Field(default=0.0, ge=0, le=MAX_COST)

    @model_validator(mode="after")
    def _references(self) -> Process:
        """Steps refer to each other by name (hold_until), so names must be unique and references resolve."""
        names = [s.name for s in self.steps]
        dup = _repeated(names)
        if dup:
            raise ValueError(f"step names must be unique, repeated: {_some(sorted(dup))}")
        index = {n: i for i, n in enumerate(names)}
        for i in range(len(self.steps)):
            _check_step(self, index, i)
        return self

    def held_from_before(self, i: int, res: Equipment) -> bool:
        """True when an earlier step keeps ``res`` until step i or later (worked out once per resource)."""
        flags = self._held.get(res)
        if flags is None:
            flags = self._held[res] = _held_flags(self.steps, res)
        return flags[i]


def _check_step(proc: Process, index: dict[str, int], i: int) -> None:
    """Raise on the first problem of step i: its holds, its suite when open, its validated duration range."""
    s = proc.steps[i]
    for res, until in s.hold_until.items():
        _check_hold(proc.steps, index, i, res, until)
    if s.open and "suite" not in s.uses and not proc.held_from_before(i, "suite"):
        raise ValueError(f"step {s.name!r} is open and must use a suite (grade A BSC in grade B)")
    if s.min_days is not None and s.max_days is not None and s.max_days < s.min_days:
        raise ValueError(f"step {s.name!r}: max_days < min_days")


def _check_hold(steps: list[Step], index: dict[str, int], i: int, res: Equipment, until: str) -> None:
    """A resource held past step i is kept until a later step ends, so that step must exist, come later
    and the resource must have been taken by step i."""
    s = steps[i]
    if until not in index:
        raise ValueError(f"step {s.name!r}: hold_until.{res} names unknown step {until!r}; "
                         f"steps: {_some(list(index))}")
    if index[until] <= i:
        raise ValueError(f"step {s.name!r}: hold_until.{res} must name a later step, got {until!r}")
    if res not in s.uses:
        raise ValueError(f"step {s.name!r}: hold_until.{res} but {res!r} is not in uses")


def _held_flags(steps: list[Step], res: Equipment) -> list[bool]:
    """For every step: does an earlier step keep ``res`` until it or later? One pass, carrying the
    furthest step any earlier hold reaches (step names are unique by then)."""
    index = {s.name: i for i, s in enumerate(steps)}
    flags, reach = [], -1
    for i, step in enumerate(steps):
        flags.append(reach >= i)
        until = step.hold_until.get(res)
        if until is not None and until in index:
            reach = max(reach, index[until])
    return flags


class QCTest(_Model):
    name: str = Field(min_length=1)
    duration: Distribution = Field(description="sample to result (days)")
    hands_on_hours: float = Field(default=1.0, ge=0, description="analyst time to set the test up")
    failure_probability: float = Field(default=0.0, ge=0, le=1)
    consequence: Consequence = "oos"
    sterility: bool = Field(default=False, description="may be pending at conditional release")


class QC(_Model):
    tests: list[QCTest] = Field(min_length=1)
    cost_per_batch: float = Field(default=0.0, ge=0, le=MAX_COST)

    @model_validator(mode="after")
    def _unique(self) -> QC:
        dup = _repeated([t.name for t in self.tests])
        if dup:
            raise ValueError(f"QC test names must be unique, repeated: {_some(sorted(dup))}")
        return self


class Release(_Model):
    policy: Literal["full", "conditional"] = Field(
        default="full", description="full: all results in; conditional: release with sterility pending"
    )
    conditional_after: list[str] | None = Field(
        default=None, description="tests needed for conditional release (default: all non-sterility tests)"
    )
    qa_review_hours: float = Field(default=8.0, gt=0, description="reviewer hands-on time per batch record")
    qa_review_elapsed: Distribution = Field(
        default_factory=lambda: fixed(1.0), description="elapsed days of QA review / QP release"
    )
    qa_review_during_qc: bool = Field(
        default=False,
        description="QA reviews the batch record from the end of manufacture, while QC tests incubate; "
        "the QP still certifies only once the results the release policy needs are in",
    )


class GMP(_Model):
    line_clearance: Distribution = Field(
        default_factory=lambda: fixed(0.0625), description="clearance + cleaning + verification (days)"
    )
    clearance_operators: int = Field(default=1, ge=0)
    infectious_decontamination: Distribution = Field(default_factory=lambda: fixed(0.03))
    fresh_hold_limit_hours: float = Field(default=48, gt=0)
    on_hold_exceeded: Literal["recollect", "qa_accept"] = "recollect"
    starting_material: Literal["fresh", "cryopreserved"] = "fresh"
    closed_steps_share_room: bool = True
    oos_policy: Literal["reject", "exceptional_release"] = "reject"
    exceptional_release_probability: float = Field(
        default=0.5, ge=0, le=1, description="share of OOS products a physician requests under 11.5"
    )
    deviation_investigation: Distribution = Field(
        default_factory=lambda: fixed(5.0), description="closure time of a major/critical deviation"
    )
    shelf_life_days: float = Field(default=365, gt=0)
    shipper_hold_days: float = Field(default=10, gt=0)


class Costs(_Model):
    qc_per_batch: float = Field(default=0.0, ge=0, le=MAX_COST)
    labour_per_hour: float = Field(default=0.0, ge=0, le=MAX_COST)
    labour_basis: Literal["paid", "hands_on"] = Field(
        default="paid",
        description="paid: every operator, QC analyst and QA reviewer is paid for each shift on their "
        "calendar (headcount x shift hours); hands_on: only the hours they are busy on a task",
    )
    facility_per_day: float = Field(default=0.0, ge=0, le=MAX_COST)


class Scenario(_Model):
    _referrals: list[Referral] | None = PrivateAttr(default=None)

    name: str = Field(min_length=1)
    description: str = ""
    start_date: dt.date = Field(default=DEFAULT_START_DATE)
    horizon_days: float = Field(gt=0, le=36500)
    warmup_days: float = Field(default=0, ge=0)
    seed: int = Field(default=1, ge=0)
    replications: int = Field(default=1, ge=1, le=10000)
    demand: Demand
    sites: list[Site] = Field(min_length=1)
    booking: Booking = Field(default_factory=Booking)
    calendars: dict[str, CalendarSpec]
    resources: Resources
    products: dict[str, Process] = Field(min_length=1)
    qc: QC
    release: Release = Field(default_factory=Release)
    gmp: GMP = Field(default_factory=GMP)
    costs: Costs | None = None

    @model_validator(mode="after")
    def _cross(self) -> Scenario:
        """Run every check in CROSS_CHECKS and report all their problems at once, in registry order."""
        lines = [problem.line() for check in CROSS_CHECKS for problem in check(self)]
        if lines:
            raise ValueError(_CROSS + "\n".join(lines))
        return self

    def calendar(self, name: str) -> Calendar:
        return self.calendars[name].build(self.start_date.weekday())

    @property
    def product_mix(self) -> dict[str, float]:
        return self.demand.product_mix or {p: 1.0 for p in self.products}


class CrossProblem(NamedTuple):
    """One cross-field problem. ``path`` is the field at fault; it is empty when the message is a sentence
    about several fields (then the problem is reported at the scenario itself)."""

    path: str
    message: str

    def line(self) -> str:
        """The problem as one line of the cross-reference report (parse_scenario splits it back)."""
        return f"{self.path}: {self.message}" if self.path else self.message


CrossCheck = Callable[[Scenario], list[CrossProblem]]
StepCheck = Callable[[Scenario, str, Process, int], list[CrossProblem]]


def has_demand(sc: Scenario) -> bool:
    """Capacity rules only bite when patients arrive: a scenario with no demand may leave resources at 0."""
    return sc.demand.per_year > 0 or sc.demand.referrals_csv is not None or sc.demand.referrals_log is not None


def check_demand_window(sc: Scenario) -> list[CrossProblem]:
    """The demand window runs forward: its last referral day is not before its first."""
    d = sc.demand
    if d.last_referral_day is not None and d.last_referral_day < d.first_referral_day:
        return [CrossProblem("demand.last_referral_day",
                             f"{d.last_referral_day:g} is before demand.first_referral_day ({d.first_referral_day:g})")]
    return []


def check_warmup(sc: Scenario) -> list[CrossProblem]:
    """The warm-up is cut from the statistics, so it must leave part of the horizon to measure."""
    if sc.warmup_days >= sc.horizon_days:
        return [CrossProblem("", f"warmup_days ({sc.warmup_days}) must be < horizon_days ({sc.horizon_days})")]
    return []


def _calendar_references(sc: Scenario) -> list[tuple[str, str]]:
    """(field path, calendar name) of every field that names a calendar."""
    staff = [(f"resources.{pool}.calendar", getattr(sc.resources, pool).calendar) for pool in STAFF]
    booking = [("booking.start_calendar", sc.booking.start_calendar)]
    return staff + booking + [(f"sites.{s.name}.calendar", s.calendar) for s in sc.sites]


def check_calendars(sc: Scenario) -> list[CrossProblem]:
    """Staff pools, booking starts and clinics work to calendars that must be defined under `calendars`."""
    cals = set(sc.calendars)
    defined = _some(sorted(cals))
    return [
        CrossProblem(where, f"unknown calendar {name!r}; defined: {defined}")
        for where, name in _calendar_references(sc)
        if name not in cals
    ]


def check_unique_sites(sc: Scenario) -> list[CrossProblem]:
    """Sites are referred to by name in records and in what-if merges."""
    dup = _repeated([s.name for s in sc.sites])
    return [CrossProblem("sites", f"names must be unique, repeated: {_some(sorted(dup))}")] if dup else []


def check_product_mix(sc: Scenario) -> list[CrossProblem]:
    """Every product a referral may need must have a manufacturing process."""
    products = _some(sorted(sc.products))
    return [
        CrossProblem("demand.product_mix", f"unknown product {p!r}; products: {products}")
        for p in sc.product_mix
        if p not in sc.products
    ]


def check_urgency_order(sc: Scenario) -> list[CrossProblem]:
    """Booking by urgency must know where each urgency class ranks."""
    if sc.booking.priority != "urgency":
        return []
    ranked = set(sc.booking.urgency_order)
    return [
        CrossProblem("demand.urgency_mix", f"class {u!r} missing from booking.urgency_order")
        for u in sc.demand.urgency_mix
        if u not in ranked
    ]


def check_dedicated_suites(sc: Scenario) -> list[CrossProblem]:
    """Dedicated suites are a subset of the suites."""
    r = sc.resources
    if r.dedicated_suites > r.suites:
        return [CrossProblem("", f"resources.dedicated_suites ({r.dedicated_suites}) > suites ({r.suites})")]
    return []


def check_segregation(sc: Scenario) -> list[CrossProblem]:
    """GMP segregation: infectious-marker-positive donors are processed only in a dedicated suite."""
    if sc.demand.infectious_fraction > 0 and sc.resources.dedicated_suites == 0:
        return [
            CrossProblem("", "demand.infectious_fraction > 0 needs resources.dedicated_suites >= 1 (GMP segregation)")
        ]
    return []


def check_negative_donors_have_suites(sc: Scenario) -> list[CrossProblem]:
    """Marker-negative donors may not use a dedicated suite, so at least one suite must stay general."""
    r = sc.resources
    if sc.demand.infectious_fraction < 1 and r.suites - r.dedicated_suites == 0 and r.suites > 0:
        return [CrossProblem("", "every suite is dedicated, so infectious-marker-negative donors have none")]
    return []


def _equipment_counts(r: Resources) -> dict[Equipment, int]:
    return {"suite": r.suites, "incubator": r.incubators, "closed_device": r.closed_devices, "freezer": r.freezers}


def check_step_equipment(sc: Scenario, pname: str, proc: Process, i: int) -> list[CrossProblem]:
    """A step that uses equipment the plant has none of would hold its batch for ever."""
    if not has_demand(sc):
        return []
    step, counts = proc.steps[i], _equipment_counts(sc.resources)
    return [
        CrossProblem(f"products.{pname}.steps.{step.name}.uses", f"{res!r} but resources has 0 of them")
        for res in step.uses
        if counts[res] == 0
    ]


def check_step_operators(sc: Scenario, pname: str, proc: Process, i: int) -> list[CrossProblem]:
    """A step needing more operators than a shift has could never start."""
    step, on_shift = proc.steps[i], sc.resources.operators.count
    if step.operators > on_shift and has_demand(sc):
        where = f"products.{pname}.steps.{step.name}.operators"
        return [CrossProblem(where, f"needs {step.operators}, only {on_shift} on shift")]
    return []


def check_step_room(sc: Scenario, pname: str, proc: Process, i: int) -> list[CrossProblem]:
    """When closed steps may not share a room, a closed step with equipment must run in (or keep) a suite."""
    step = proc.steps[i]
    if sc.gmp.closed_steps_share_room or step.open or not step.uses or "suite" in step.uses:
        return []
    if proc.held_from_before(i, "suite"):
        return []
    return [
        CrossProblem(
            f"products.{pname}.steps.{step.name}",
            "gmp.closed_steps_share_room is false, so a closed step must run in a suite",
        )
    ]


STEP_CHECKS: tuple[StepCheck, ...] = (check_step_equipment, check_step_operators, check_step_room)


def check_steps(sc: Scenario) -> list[CrossProblem]:
    """Every STEP_CHECKS rule on every step of every product; the problems of one step stay together."""
    return [
        problem
        for pname, proc in sc.products.items()
        for i in range(len(proc.steps))
        for step_check in STEP_CHECKS
        for problem in step_check(sc, pname, proc, i)
    ]


def check_clearance_operators(sc: Scenario) -> list[CrossProblem]:
    """Line clearance needs its operators on shift together."""
    if has_demand(sc) and sc.gmp.clearance_operators > sc.resources.operators.count:
        return [CrossProblem("", "gmp.clearance_operators exceeds resources.operators.count")]
    return []


def check_starts_offered(sc: Scenario) -> list[CrossProblem]:
    """Slot booking with no starts offered would leave every patient waiting."""
    b = sc.booking
    if has_demand(sc) and b.mode == "slot" and b.starts_per_day == 0:
        return [CrossProblem("", "booking.starts_per_day is 0 with demand: no patient could ever start")]
    return []


def check_qc_qa_staffed(sc: Scenario) -> list[CrossProblem]:
    """Without QC analysts no batch is tested, without QA reviewers none is released."""
    if not has_demand(sc):
        return []
    r, problems = sc.resources, []
    if r.qc_analysts.count == 0:
        problems.append(CrossProblem("", "resources.qc_analysts.count is 0 with demand: no batch could be tested"))
    if r.qa_reviewers.count == 0:
        problems.append(CrossProblem("", "resources.qa_reviewers.count is 0 with demand: no batch could be released"))
    return problems


def check_conditional_tests(sc: Scenario) -> list[CrossProblem]:
    """Conditional release waits for named QC tests, which must exist."""
    tests = [t.name for t in sc.qc.tests]
    known, shown = set(tests), _some(tests)
    return [
        CrossProblem("release.conditional_after", f"unknown test {t!r}; tests: {shown}")
        for t in sc.release.conditional_after or []
        if t not in known
    ]


def check_queue_needs_cryopreserved(sc: Scenario) -> list[CrossProblem]:
    """Collect-then-queue holds the apheresis material for weeks, beyond any fresh hold limit."""
    if sc.booking.mode == "collect_then_queue" and sc.gmp.starting_material != "cryopreserved":
        return [CrossProblem("", "booking.mode collect_then_queue needs gmp.starting_material: cryopreserved")]
    return []


def check_reserve_classes(sc: Scenario) -> list[CrossProblem]:
    """The urgent reserve is held for urgency classes that referrals can have."""
    r = sc.booking.urgent_reserve
    if r is None:
        return []
    known = sorted(sc.demand.urgency_mix)
    return [
        CrossProblem("booking.urgent_reserve.classes", f"unknown urgency class {c!r}; demand.urgency_mix has {known}")
        for c in r.classes
        if c not in sc.demand.urgency_mix
    ]


def check_slot_rules_need_slots(sc: Scenario) -> list[CrossProblem]:
    """Monthly quotas and the urgent reserve ration booked starts, which only slot booking has."""
    if sc.booking.mode == "slot":
        return []
    b, why = sc.booking, "needs booking.mode: slot (collect_then_queue books no starts)"
    fields = [("booking.starts_per_month", b.starts_per_month), ("booking.urgent_reserve", b.urgent_reserve)]
    fields += [(f"sites.{s.name}.slots_per_month", s.slots_per_month) for s in sc.sites]
    return [CrossProblem(where, why) for where, value in fields if value is not None]


CROSS_CHECKS: tuple[CrossCheck, ...] = (
    check_warmup,
    check_demand_window,
    check_calendars,
    check_unique_sites,
    check_product_mix,
    check_urgency_order,
    check_dedicated_suites,
    check_segregation,
    check_negative_donors_have_suites,
    check_steps,
    check_clearance_operators,
    check_starts_offered,
    check_qc_qa_staffed,
    check_conditional_tests,
    check_queue_needs_cryopreserved,
    check_reserve_classes,
    check_slot_rules_need_slots,
)
"""Cross-field rules in the order their problems are reported; a new rule is one function added here."""


Problem = tuple[str, str, Any]  # (field path, message, bad value or _MISSING), as ScenarioError lists them


class ScenarioError(Exception):
    """A scenario file that cannot be used; ``problems`` lists (field path, message, bad value)."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self, limit: int = 30) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s)"]
        for loc, msg, val in self.problems[:limit]:
            shown = "" if val is _MISSING else f" (got {_short(val)})"
            lines.append(f"  - {loc or '<file>'}: {msg}{shown}")
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


_MISSING = object()
_CROSS = "cross-reference problems:\n"
_REFERRALS = "demand.referrals_csv"
MAX_FILE_BYTES = 5_000_000


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 6
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60


def _short(v: Any) -> str:
    s = _REPR.repr(v)  # bounded: an alias bomb expands to 10**9 items under plain repr()
    return s if len(s) <= 60 else s[:57] + "..."


def _allowed(err: ErrorDetails) -> str:
    """Turn pydantic's message into one that says what is allowed."""
    t, msg, ctx = err["type"], err["msg"], err.get("ctx") or {}
    if t == "extra_forbidden":
        return "unknown key (check spelling)"
    if t == "missing":
        return "required field is missing"
    if t == "union_tag_invalid" or t == "union_tag_not_found":
        return f"`dist` must be one of: {', '.join(_dist_names())}"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    return msg


def _dist_names() -> tuple[str, ...]:
    from .distributions import DIST_NAMES

    return DIST_NAMES


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    cur = data
    for k in loc:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return cur


def parse_scenario(data: Any, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a parsed mapping; raise ScenarioError listing every problem at once."""
    if not isinstance(data, dict):
        raise ScenarioError(source, [("", f"top level must be a mapping of keys, got {type(data).__name__}", _MISSING)])
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(source, [p for err in e.errors() for p in _problems_of(err, data)]) from None
    if sc.demand.referrals_log is not None:
        label = Path(sc.demand.referrals_csv or "referrals_log")
        sc._referrals = referrals_of(_csv_rows(sc.demand.referrals_log, label, source), label, source,
                                     sc.start_date, referral_names(sc))
    elif sc.demand.referrals_csv is not None:
        csv_path = Path(sc.demand.referrals_csv)
        if not csv_path.is_absolute() and base_dir is not None:
            csv_path = base_dir / csv_path
        _refuse_special(csv_path, source, _REFERRALS)
        sc._referrals = load_referrals(csv_path, source, sc.start_date, referral_names(sc))
    return sc


def _problems_of(err: ErrorDetails, data: dict[str, Any]) -> list[Problem]:
    """One pydantic error as problems a user can act on: the field path as written in the file (without
    pydantic's discriminator tag, e.g. duration.fixed.value -> duration.value), what is allowed and the
    value found. The cross-field report is one error to pydantic but one problem per line to the user."""
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc if p not in _dist_names() or p == loc[-1])
    msg = _allowed(err).removeprefix("Value error, ")
    if msg.startswith(_CROSS):
        return [_cross_problem(line, path) for line in msg[len(_CROSS) :].splitlines()]
    return [(path, msg, _value_at(data, loc) if err["type"] != "missing" else _MISSING)]


def _cross_problem(line: str, path: str) -> Problem:
    """A line of the cross-field report back into (field path, message); a sentence stays whole at ``path``."""
    where, _, what = line.partition(": ")
    if " " in where or not what:  # a sentence, not a field path
        where, what = path, line
    return (where, what, _MISSING)


REFERRAL_TIME_COLUMNS = ("day", "date")
REFERRAL_NAME_COLUMNS = ("site", "product", "urgency")


def referral_names(sc: Scenario) -> dict[str, list[str]]:
    """What each name column of a referral log may say: the scenario's sites, products and urgency
    classes (those of the mix and of the booking order)."""
    urgencies = list(dict.fromkeys([*sc.demand.urgency_mix, *sc.booking.urgency_order]))
    return {"site": [x.name for x in sc.sites], "product": list(sc.products), "urgency": urgencies}


def load_referrals(path: Path, source: str, start: dt.date = DEFAULT_START_DATE,
                   names: dict[str, list[str]] | None = None) -> list[Referral]:
    """Referrals from a CSV with a `day` column (days from the start date) or a `date` column (ISO
    dates or date-times, converted to days from ``start``): a plant's own referral log replayed. `site`,
    `product` and `urgency` columns, when present, say who each referral is (checked against ``names``);
    any other column is an error, so a misspelt one is not silently ignored."""
    return referrals_of(_csv_rows(referral_csv_text(path, source), path, source), path, source, start, names)


def referrals_of(rows: list[dict[str, str]], path: Path, source: str, start: dt.date = DEFAULT_START_DATE,
                 names: dict[str, list[str]] | None = None) -> list[Referral]:
    """The referrals of a CSV's rows (``path`` names the CSV in errors); see :func:`load_referrals`."""
    cols = set(rows[0]) if rows else set()
    if "day" not in cols and "date" not in cols:
        raise ScenarioError(
            source, [(_REFERRALS, f"{path} needs a `day` or `date` column, has {sorted(map(str, cols))}", _MISSING)]
        )
    allowed = REFERRAL_TIME_COLUMNS + REFERRAL_NAME_COLUMNS
    unknown = sorted("<cells beyond the header>" if c is None else str(c) for c in cols if c not in allowed)
    if unknown:
        raise ScenarioError(source, [(_REFERRALS, f"{path}: unknown column(s) {unknown}; allowed: "
                                      f"{', '.join(allowed)}", _MISSING)])
    origin = dt.datetime.combine(start, dt.time())
    out = []
    for i, r in enumerate(rows, start=2):
        at = f"{path} line {i}"
        day = _referral_day(r, cols, origin, source, at)
        if day is not None:
            out.append(Referral(day, *(_referral_name(r, c, names, source, at) for c in REFERRAL_NAME_COLUMNS)))
    return out


MAX_REFERRAL_CSV_BYTES = 64_000_000
MAX_REFERRAL_ROWS = 1_000_000


def referral_csv_text(path: Path, source: str) -> str:
    """The CSV's text, refused at once past MAX_REFERRAL_CSV_BYTES: a log that large is not a plant's
    referrals, and reading it whole would exhaust memory before saying so."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_REFERRAL_CSV_BYTES + 1)
        if len(raw) > MAX_REFERRAL_CSV_BYTES:
            raise ScenarioError(source, [(_REFERRALS, f"{path} is more than {MAX_REFERRAL_CSV_BYTES:,} bytes, "
                                          "the most a referral log may be", _MISSING)])
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(source, [(_REFERRALS, f"cannot read {path}: {e}", _MISSING)]) from None


def _csv_rows(text: str, path: Path, source: str) -> list[dict[str, str]]:
    """The rows of a referral CSV's text, refused past MAX_REFERRAL_ROWS."""
    try:
        rows = list(itertools.islice(csv.DictReader(io.StringIO(text, newline="")), MAX_REFERRAL_ROWS + 1))
    except csv.Error as e:
        raise ScenarioError(source, [(_REFERRALS, f"cannot read {path}: {e}", _MISSING)]) from None
    if len(rows) > MAX_REFERRAL_ROWS:
        raise ScenarioError(source, [(_REFERRALS, f"{path} has more than {MAX_REFERRAL_ROWS:,} rows, the most "
                                      "a referral log may have", _MISSING)])
    return rows


def _referral_name(row: dict[str, str], column: str, names: dict[str, list[str]] | None, source: str,
                   at: str) -> str | None:
    """The row's site, product or urgency (None when blank or absent), one the scenario knows."""
    v = (row.get(column) or "").strip()
    if not v:
        return None
    if names is not None and v not in names[column]:
        raise ScenarioError(source, [(_REFERRALS, f"{at}: unknown {column} {v!r}; the scenario's: "
                                      f"{', '.join(names[column])}", _MISSING)])
    return v


def _referral_day(row: dict[str, str], cols: set[str], origin: dt.datetime, source: str, at: str) -> float | None:
    """Days from the start of one referral row, or None for a row with neither value; ``at`` names the row
    in the error, which stops the load (a referral log with a bad row is not replayed in part)."""
    try:
        v = _row_days(row, cols, origin)
    except ValueError as e:
        bad = row.get("day") if "day" in cols and row.get("day") not in (None, "") else row.get("date")
        what = ("a time zone (Z, +01:00) is not allowed: give the plant's local date-time"
                if "time zone" in str(e) else "not a number of days or an ISO date")
        raise ScenarioError(source, [(_REFERRALS, f"{at}: {what}", bad)]) from None
    if v is not None and (not math.isfinite(v) or v < 0):
        raise ScenarioError(source, [(_REFERRALS, f"{at}: referral before the start date or not finite", v)])
    return v


def _row_days(row: dict[str, str], cols: set[str], origin: dt.datetime) -> float | None:
    """A `day` value wins over a `date` value in the same row."""
    if "day" in cols and row.get("day") not in (None, ""):
        return float(row["day"])
    if "date" in cols and row.get("date") not in (None, ""):
        when = dt.datetime.fromisoformat(row["date"].strip())
        if when.tzinfo is not None:  # the model's clock is the plant's local time, with no zone
            raise ValueError("a date-time with a time zone")
        return (when - origin).total_seconds() / 86400.0
    return None


def scenario_referrals(sc: Scenario) -> list[Referral] | None:
    """The referral log the scenario replays, or None when referrals are drawn (Poisson)."""
    return sc._referrals


def scenario_referral_days(sc: Scenario) -> list[float] | None:
    return None if sc._referrals is None else [r.day for r in sc._referrals]


def load_scenario(path: str | Path) -> tuple[Scenario, str]:
    """Read and validate a scenario file; returns the scenario and the file's text (stored with every run)."""
    p = Path(path)
    src = str(path)
    text = _read_scenario_text(p, src)
    data = _yaml(text, src)
    if isinstance(data, dict) and "base" in data:
        data = _resolve_base(data, p, [p.resolve()])
        text = yaml.safe_dump(data, sort_keys=False)
    sc = parse_scenario(data, src, p.parent)
    if sc.demand.referrals_csv is not None and sc.demand.referrals_log is None:
        data = {**data, "demand": {**data["demand"], "referrals_log": _csv_text_of(sc, p.parent, src)}}
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        sc = parse_scenario(data, src, p.parent)
    return sc, text


def _csv_text_of(sc: Scenario, folder: Path, source: str) -> str:
    """The referral CSV's content, stored in the scenario text so its hash covers the log replayed."""
    csv_path = Path(sc.demand.referrals_csv or "")
    return referral_csv_text(csv_path if csv_path.is_absolute() else folder / csv_path, source)


def _file_problem(src: str, msg: str) -> ScenarioError:
    return ScenarioError(src, [("", msg, _MISSING)])


def _read_scenario_text(p: Path, src: str) -> str:
    """The file's text, refused early when it is not a readable UTF-8 file within MAX_FILE_BYTES."""
    try:
        size = p.stat().st_size
    except OSError as e:
        raise _file_problem(src, f"cannot read file: {e.strerror or e}") from None
    if p.is_dir():
        raise _file_problem(src, "is a directory, expected a YAML scenario file")
    if size > MAX_FILE_BYTES:
        raise _file_problem(src, f"file is {size:,} bytes; a scenario may be at most {MAX_FILE_BYTES:,}")
    try:
        raw = _read_capped(p)
        if len(raw) > MAX_FILE_BYTES:
            raise _file_problem(src, f"more than {MAX_FILE_BYTES:,} bytes, the most a scenario may be")
        return raw.decode("utf-8")
    except OSError as e:
        raise _file_problem(src, f"cannot read file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise _file_problem(src, f"not UTF-8 text (byte {e.start}): save the file as UTF-8") from None


_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _special_kind(mode: int) -> str | None:
    """What a file is when it is a FIFO, device or socket: reading a FIFO waits for a writer for ever and
    a device such as /dev/zero never ends, so none of them is read as a scenario, base or CSV."""
    return next((what for test, what in _SPECIAL if test(mode)), None)


def _refuse_special(path: Path, source: str, field: str) -> None:
    """A FIFO or device named by ``field`` is a problem at that field (before anything opens it)."""
    try:
        what = _special_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return  # missing or unreadable: the reader says so
    if what:
        raise ScenarioError(source, [(field, f"{path} is {what}, not a regular file", _MISSING)])


def _read_capped(path: Path) -> bytes:
    """At most one byte more than MAX_FILE_BYTES: stat() says 0 for pipes and devices, so only reading
    tells a file is too large. Opened without blocking and checked on the open file: a FIFO or device is
    refused (an OSError saying what it is), never waited on."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        what = _special_kind(os.fstat(f.fileno()).st_mode)
        if what:
            raise OSError(errno.EINVAL, f"it is {what}, not a regular file")
        return f.read(MAX_FILE_BYTES + 1)


def _resolve_base(data: dict[str, Any], path: Path, seen: list[Path]) -> dict[str, Any]:
    """A what-if names its ``base`` scenario and states only what differs; the stored text is the merged
    whole, so every run can be reproduced from the database alone."""
    base_ref = data["base"]
    src = str(path)
    if not isinstance(base_ref, str):
        raise ScenarioError(src, [("base", "must be the path of a scenario file", base_ref)])
    base_path = (path.parent / base_ref).resolve()
    if base_path in seen:
        chain = " -> ".join(str(x.name) for x in seen + [base_path])
        raise ScenarioError(src, [("base", f"circular base chain: {chain}", base_ref)])
    base = _yaml(_read_base_text(base_path, src, base_ref), str(base_path))
    if not isinstance(base, dict):
        raise ScenarioError(str(base_path), [("", "top level must be a mapping of keys", _MISSING)])
    if "base" in base:
        base = _resolve_base(base, base_path, seen + [base_path])
    over = {k: v for k, v in data.items() if k != "base"}
    return _merge(_rebased_paths(base, base_path.parent, path.parent), over)


def _rebased_paths(base: dict[str, Any], base_dir: Path, here: Path) -> dict[str, Any]:
    """A base's relative ``demand.referrals_csv`` names a file next to the base, wherever the what-if
    is: rewritten relative to the what-if's folder (not made absolute, so the merged text, and the
    scenario hash, stay the same when the whole tree is moved)."""
    demand = base.get("demand")
    if not isinstance(demand, dict):
        return base
    ref = demand.get("referrals_csv")
    if not isinstance(ref, str) or Path(ref).is_absolute():
        return base
    moved = os.path.relpath((base_dir / ref).resolve(), here.resolve())
    return {**base, "demand": {**demand, "referrals_csv": Path(moved).as_posix()}}


def _read_base_text(base_path: Path, src: str, base_ref: str) -> str:
    """The base file's text; its problems are reported at the what-if's ``base`` key."""
    try:
        raw = _read_capped(base_path)
        if len(raw) > MAX_FILE_BYTES:
            raise ScenarioError(src, [("base", f"{base_path} is more than {MAX_FILE_BYTES:,} bytes", base_ref)])
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(src, [("base", f"cannot read base scenario {base_path}: {e}", base_ref)]) from None


def _merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key; lists of named items (sites, steps, tests) merge by ``name``; anything
    else is replaced. A distribution given with a different ``dist`` replaces the base's whole (a
    triangular's low/mode/high mean nothing to a fixed value); with the same ``dist`` it merges."""
    if _new_family(base, over):
        return over
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for k, v in over.items():
            merged[k] = _merge(base[k], v) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(over, list) and _all_named(base + over):
        return _merge_named(base, over)
    return over


def _new_family(base: Any, over: Any) -> bool:
    """True when ``over`` is a distribution of another family than ``base``."""
    return isinstance(base, dict) and isinstance(over, dict) and "dist" in over and over["dist"] != base.get("dist")


def _all_named(items: list[Any]) -> bool:
    return all(isinstance(x, dict) and "name" in x for x in items)


def _merge_named(base: list[dict[str, Any]], over: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An item of ``over`` merges into the base item of the same name, or is appended after the base's."""
    out = [dict(x) for x in base]
    index = {x["name"]: i for i, x in enumerate(out)}
    for item in over:
        if item["name"] in index:
            out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
        else:
            out.append(item)
    return out


def _yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ScenarioError(source, [("", f"not valid YAML: {where}{problem}", _MISSING)]) from None
    except RecursionError:
        raise ScenarioError(source, [("", "not valid YAML: nested too deeply", _MISSING)]) from None
    except (ValueError, OverflowError) as e:  # PyYAML's constructors: 2027-02-30, a 5000-digit integer
        raise ScenarioError(source, [("", f"not valid YAML: {e}", _MISSING)]) from None


def parse_text(text: str, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    return parse_scenario(_yaml(text, source), source, base_dir)


def scenario_hash(text: str) -> str:
    """Content hash of a scenario file: runs of the same text share it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scenario_from_dict(data: dict[str, Any], source: str = "<scenario>") -> tuple[Scenario, str]:
    """Build a scenario from a mapping (what-if edits, tests); the text stored is its YAML dump."""
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_text(text, source), text
