"""The manufacturer's slot plan: each suite a calendar of booked batches, the occupancy a booking is
expected to take (walked through the step template on the operators' calendar, line clearance included),
and the booking rules a start must pass (starts per day and per month, a centre's monthly quota, the
urgent reserve).

A start is booked only on a suite projected free for the batch's whole planned occupancy. The projection
of a running batch is re-estimated as it goes (each step start, each morning, and when the next patient
on its suite is about to be collected); when it overruns into a later booking whose apheresis is not
yet collected, that start is moved to the next feasible day before anything is collected (a reschedule).
Material already collected keeps its start and is marked as having lost its suite late.

Nothing here knows about patients beyond an opaque priority key and the booking's own fields.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from ..calendar import Calendar
from ..distributions import Distribution
from .plant import DayBook

EPS = 1e-9
RESCHEDULE_LIMIT_DAYS = 3650  # a moved start ignores the booking horizon: the patient keeps priority
_tie = itertools.count()
_QUANTILE_DRAWS = 4001
NEVER = 1e7  # days: a projection past this is "not free again" (scenario horizons are at most 36,500 days)
LATE_QUANTILE = 0.95  # an overdue step is assumed to end at this quantile of its duration


_PLANNING: dict[tuple[Distribution, float], float] = {}


def planning_duration(dist: Distribution, q: float) -> float:
    """The ``q`` quantile of a duration, the figure a planner books against. Estimated from a fixed
    sample of the distribution on its own generator, so it never touches a run's random streams; kept,
    as every replication of a scenario asks again."""
    try:
        return _PLANNING[(dist, q)]
    except KeyError:
        pass
    except TypeError:  # an unhashable distribution (empirical values): computed each time
        return _quantile(dist, q)
    if len(_PLANNING) > 10_000:
        _PLANNING.clear()
    value = _PLANNING[(dist, q)] = _quantile(dist, q)
    return value


def _quantile(dist: Distribution, q: float) -> float:
    with np.errstate(all="ignore"):
        value = float(np.quantile(dist.draw(np.random.default_rng(20270104), _QUANTILE_DRAWS), q))
    return value if math.isfinite(value) else math.inf  # durations near 1e308 overflow: never done


class _Cancelled(Exception):
    pass


# ----------------------------------------------------------------------------------- suite calendars
class SuiteBooking:
    """One batch's planned time in one suite: from when it may take the suite to when the suite is
    projected clear again (line clearance done)."""

    __slots__ = ("calendar", "start", "end", "slot")

    def __init__(self, calendar: SuiteCalendar, start: float, end: float, slot: SlotBooking) -> None:
        self.calendar = calendar
        self.start = start
        self.end = end
        self.slot = slot


class SuiteCalendar:
    """One suite's planned batches, sorted by start and never overlapping."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.starts: list[float] = []
        self.items: list[SuiteBooking] = []

    def slack(self, start: float, end: float) -> float | None:
        """Idle time left before ``start`` when [start, end) fits between the bookings, None when it does
        not fit (the plan never books a start on a suite projected busy)."""
        i = bisect.bisect_right(self.starts, start)
        if i < len(self.items) and self.items[i].start < end - EPS:
            return None
        if i == 0:
            return math.inf
        prev_end = self.items[i - 1].end
        return None if prev_end > start + EPS else start - prev_end

    def add(self, b: SuiteBooking) -> None:
        i = bisect.bisect_right(self.starts, b.start)
        self.starts.insert(i, b.start)
        self.items.insert(i, b)

    def index(self, b: SuiteBooking) -> int:
        i = bisect.bisect_left(self.starts, b.start)
        while self.items[i] is not b:
            i += 1
        return i

    def pop(self, i: int) -> SuiteBooking:
        del self.starts[i]
        return self.items.pop(i)

    def remove(self, b: SuiteBooking) -> None:
        self.pop(self.index(b))

    def prune(self, now: float) -> None:
        """Forget finished batches at the front: they no longer constrain anything."""
        while self.items and self.items[0].slot.done and self.items[0].end <= now:
            self.pop(0)

    def running(self, now: float) -> list[SuiteBooking]:
        """Bookings whose planned start has come and whose batch has not given the suite back."""
        out = []
        for b in self.items:
            if b.start > now:
                break
            if not b.slot.done:
                out.append(b)
        return out


class SuitePlan:
    """The calendars of one pool of interchangeable suites (general, or dedicated to infectious donors)."""

    def __init__(self, names: list[str]) -> None:
        self.calendars = [SuiteCalendar(n) for n in names]

    def has_room(self, lo: float, hi: float, length: float) -> bool:
        """Whether some suite has a free stretch of ``length`` days starting in [lo, hi]: a cheap necessary
        condition that spares a search of every day when the plan is full."""
        for c in self.calendars:
            items = c.items
            if not items or items[-1].end <= hi:
                return True
            first = items[0].start
            if first - lo >= length and first >= lo + length:
                return True
            a_end = items[0].end  # bookings never overlap: their ends rise, so stop at one ending after hi
            for k in range(1, len(items)):
                if a_end > hi:
                    break
                b = items[k]
                if b.start - (a_end if a_end > lo else lo) >= length:
                    return True
                a_end = b.end
        return False

    def find(self, start: float, end: float, free_now: Callable[[str], bool] | None = None,
             upto: int | None = None) -> SuiteCalendar | None:
        """The suite projected free for [start, end) that leaves the least idle time before it (best fit
        keeps long free stretches for later bookings); ``free_now`` also asks the suite to be empty now;
        ``upto`` leaves the suites after the first ``upto`` out (an urgent reserve).
        (SuiteCalendar.slack inlined: this runs for every day a booking search tries.)"""
        best, best_gap = None, math.inf
        after, before = start + EPS, end - EPS
        for c in self.calendars if upto is None else self.calendars[:upto]:
            items = c.items
            if not items:
                gap = math.inf
            elif items[-1].end <= after:  # after everything booked: the usual case, no search
                gap = start - items[-1].end
            else:
                i = bisect.bisect_right(c.starts, start)
                if i < len(items) and items[i].start < before:
                    continue
                if i == 0:
                    gap = math.inf
                else:
                    prev_end = items[i - 1].end
                    if prev_end > after:
                        continue
                    gap = start - prev_end
            if free_now is not None and not free_now(c.name):
                continue
            if best is None or gap < best_gap:
                best, best_gap = c, gap
                if gap <= 0:
                    break  # no idle time at all: nothing fits better
        return best


# --------------------------------------------------------------------------------- the projection
@dataclass(frozen=True)
class ProductTiming:
    """A product's step template as the planner sees it: planning durations, operators per step, and the
    steps from taking the suite (``first``) to giving it back (``last``)."""

    durations: tuple[float, ...]
    operators: tuple[int, ...]
    first: int
    last: int
    late: tuple[float, ...] = ()  # a late duration per step: what an overdue step is assumed to take
    follows: tuple[bool, ...] = ()  # per step: the next step starts the moment it ends (no staff, no units)


class SuiteProjection:
    """Expected suite occupancy from the step template: each step at its planning duration, a staffed step
    started only when it fits in an operators' shift, then line clearance on shift. Weekly calendars make
    the projection of a booking depend only on the product, centre, donor class and start weekday, so
    those are computed once each."""

    def __init__(self, cal: Calendar, plant_open: float, lead: int, products: dict[str, ProductTiming],
                 arrival: dict[str, float], clearance: tuple[float, float, int],
                 fixed_days: float | None = None, notice: float = 0.0) -> None:
        self.cal = cal
        self.plant_open = plant_open
        self.lead = lead
        self.products = products
        self.arrival = arrival  # site -> material at the plant, days after the apheresis day's 00:00
        self.clearance, self.decontamination, self.clearance_operators = clearance
        self.fixed_days = fixed_days
        self.notice = notice  # days ahead a running step's end becomes known (in-process monitoring)
        self._cache: dict[tuple[str, str, bool, int], tuple[float, float]] = {}
        self._bounds: dict[tuple[str, str, bool], tuple[float, float, float]] = {}
        self._weeks: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
        # no booking is shorter than this: its suite steps end to end, then line clearance
        spans = [sum(t.durations[t.first:t.last + 1]) for t in products.values()]
        self.min_span = fixed_days if fixed_days is not None else min(spans, default=0.0) + self.clearance

    def interval(self, product: str, site: str, day: int, infectious: bool) -> tuple[float, float]:
        """[may take the suite, projected clear) of a batch booked to start on ``day``."""
        key = (product, site, infectious, day % 7)
        off = self._cache.get(key)
        if off is None:
            off = self._offsets(product, site, day, infectious)
            self._cache[key] = off
        return day + off[0], day + off[1]

    def _offsets(self, product: str, site: str, day: int, infectious: bool) -> tuple[float, float]:
        start = day + self.plant_open
        if self.fixed_days is not None:
            return self.plant_open, self.plant_open + self.fixed_days
        timing = self.products[product]
        t = max(start, day - self.lead + self.arrival[site])
        t = self._walk(timing, 0, timing.first, t)
        if timing.first > 0:
            start = t
        end = self.clear_after(self._walk(timing, timing.first, timing.last + 1, t), infectious)
        return start - day, end - day

    def offsets(self, product: str, site: str, infectious: bool) -> list[tuple[float, float]]:
        """The occupancy offsets from the start day for each weekday (``day % 7``)."""
        key = (product, site, infectious)
        week = self._weeks.get(key)
        if week is None:
            for d in range(7):
                self.interval(product, site, d, infectious)
            week = self._weeks[key] = [self._cache[(product, site, infectious, d)] for d in range(7)]
        return week

    def bounds(self, product: str, site: str, infectious: bool) -> tuple[float, float, float]:
        """(least and greatest start offset from the start day, shortest occupancy) over the weekdays."""
        key = (product, site, infectious)
        b = self._bounds.get(key)
        if b is None:
            spans = [self.interval(product, site, d, infectious) for d in range(7)]
            offsets = [s - d for d, (s, _) in enumerate(spans)]
            b = (min(offsets), max(offsets), min(e - s for s, e in spans))
            self._bounds[key] = b
        return b

    def _walk(self, timing: ProductTiming, i0: int, i1: int, t: float) -> float:
        for i in range(i0, i1):
            d = timing.durations[i]
            if t + d > NEVER:  # beyond any horizon: the suite is not planned free again
                return math.inf
            if timing.operators[i]:
                t = self.cal.next_start(t, d)
            t += d
        return t

    def clear_after(self, released: float, infectious: bool) -> float:
        """When a suite given back at ``released`` is projected clear for the next donor."""
        d = self.clearance + (self.decontamination if infectious else 0.0)
        if released + d > NEVER:
            return math.inf
        if self.clearance_operators:
            released = self.cal.next_start(released, d)
        return released + d

    def next_review(self, slot: SlotBooking, now: float) -> float:
        """When the re-estimate of a running batch can next change: once its step's end is known (inside the
        notice), when its next step was due to start; before that, when the step is due against the plan
        or its end comes inside the notice; once overdue, each morning."""
        if slot.step < 0:
            return now + EPS
        if slot.step_end - self.notice <= now:
            timing = self.products[slot.product]
            t, i = max(now, slot.step_end), slot.step + 1
            if i <= timing.last and timing.operators[i] and t < NEVER:
                t = self.cal.next_start(t, timing.durations[i])
            return max(now + EPS, t)
        planned = slot.step_start + self.products[slot.product].durations[slot.step]
        return max(now + EPS, min(planned, slot.step_end) - self.notice)

    def starts_next_at_once(self, slot: SlotBooking) -> bool:
        """The step after the current one begins when it ends (or the suite is given back then), so a
        review at its end would learn nothing the next step's start does not report."""
        timing = self.products[slot.product]
        return slot.step >= timing.last or (bool(timing.follows) and timing.follows[slot.step])

    def first_review(self, slot: SlotBooking) -> float:
        """A step just begun is first reviewed at its end if that is known at once, else when it is due
        against the plan or its end comes inside the notice."""
        if slot.step_end - self.notice <= slot.step_start:
            return slot.step_end
        planned = slot.step_start + self.products[slot.product].durations[slot.step]
        return min(planned, slot.step_end) - self.notice

    def remaining(self, slot: SlotBooking, now: float) -> float:
        """Re-estimate of a running batch's clear time: its current step ends when it will, once that is
        within the notice; before then no earlier than planned nor within the notice, and once overdue
        against the plan, late (so one overrun moves the next start once, not day by day). The rest of
        its steps as planned."""
        timing = self.products[slot.product]
        if slot.step < 0:
            t, i = now, 0
        elif slot.step_end - now <= self.notice:  # in-process results show when the step will end
            t, i = max(now, slot.step_end), slot.step + 1
        else:  # only that it will not end within the notice; once overdue, assume a late end
            planned = slot.step_start + timing.durations[slot.step]
            if now + self.notice > planned and timing.late:
                planned = slot.step_start + timing.late[slot.step]
            t, i = max(now + self.notice, planned), slot.step + 1
        if slot.estimate[0] != (i, t):  # the same state walks to the same end: keep the last one
            slot.estimate = ((i, t), self.clear_after(self._walk(timing, i, timing.last + 1, t), slot.infectious))
        return slot.estimate[1]


# ------------------------------------------------------------------------------------ booking rules
class MonthBook:
    """Starts booked per calendar month against a quota (a plant's monthly plan, or a centre's allocation)."""

    def __init__(self, quota: int, start_date: dt.date) -> None:
        self.quota = quota
        self.start_date = start_date
        self.booked: dict[int, int] = {}
        self._month: dict[int, int] = {}

    def month(self, day: int) -> int:
        m = self._month.get(day)
        if m is None:
            d = self.start_date + dt.timedelta(days=day)
            m = d.year * 12 + d.month - 1
            self._month[day] = m
        return m

    def free(self, day: int) -> bool:
        return self.booked.get(self.month(day), 0) < self.quota

    def book(self, day: int) -> None:
        m = self.month(day)
        self.booked[m] = self.booked.get(m, 0) + 1

    def cancel(self, day: int) -> None:
        self.booked[self.month(day)] -= 1


class UrgentReserve:
    """A share of the plant's starts held back for urgent patients: of each day's starts and of the suites
    (whichever binds, that is the share of each week's starts), the reserved ones are open to other
    patients only for starts at most ``release_days`` away (an unused reserved start is then released)."""

    def __init__(self, share: float, release_days: float) -> None:
        self.share = share
        self.release_days = release_days

    def held(self, day: int, today: int, reserved_ok: bool) -> bool:
        """Whether the reserve is closed to this booking."""
        return not reserved_ok and day - today > self.release_days

    def open_part(self, n: int) -> int:
        """How many of ``n`` starts or suites stay open while the reserve is held (half rounds up)."""
        return n - math.floor(self.share * n + 0.5)


# ----------------------------------------------------------------------------------- the slot book
class SlotBooking:
    """A patient's booked start: the start day, the apheresis day ``lead`` days before it, the suite
    booking, and what the plan needs to know about the batch as it goes."""

    __slots__ = (
        "event", "priority", "product", "site", "chairs", "quota", "plan", "infectious", "reserved_ok", "day",
        "aph_day", "suite", "collected", "lost_late", "step", "step_start", "step_end", "review_at", "done",
        "reschedules", "owner", "estimate",
    )

    def __init__(self, event: simpy.Event, priority: Any, product: str, site: str, chairs: DayBook,
                 quota: MonthBook | None, plan: SuitePlan | None, infectious: bool, reserved_ok: bool,
                 owner: Any = None) -> None:
        self.owner = owner  # opaque to the plan: handed back with a reschedule
        self.event = event
        self.priority = priority
        self.product = product
        self.site = site
        self.chairs = chairs
        self.quota = quota
        self.plan = plan
        self.infectious = infectious
        self.reserved_ok = reserved_ok  # may book starts of the urgent reserve
        self.day = -1  # start day, once booked
        self.aph_day = -1
        self.suite: SuiteBooking | None = None
        self.collected = False  # apheresis has begun: the start can no longer be moved
        self.lost_late = False  # the suite was found busy after collection
        self.step = -1  # last step begun, when, and when it will end
        self.step_start = self.step_end = self.review_at = 0.0
        self.estimate: tuple[tuple[int, float], float] = ((-2, 0.0), 0.0)  # (step, from), projected clear
        self.done = False  # the batch has given its suite back (or never will need it)
        self.reschedules = 0

    @property
    def suite_name(self) -> str | None:
        return None if self.suite is None else self.suite.calendar.name


Rescheduled = Callable[[SlotBooking, int], None]
SearchKey = tuple[int, int, str, bool, bool]


def _search_key(slot: SlotBooking) -> SearchKey:
    """What a booking search depends on besides the day range: requests with the same key find the same
    days (the chair book and centre quota by identity, the product, the donor class, the reserve)."""
    return (id(slot.chairs), id(slot.quota), slot.product, slot.infectious, slot.reserved_ok)


class SlotBook:
    """The manufacturer's slot book: a referred patient waits for a start date that passes every booking
    rule, with a suite projected free for the batch's planned occupancy and a free apheresis chair ``lead``
    days before, so fresh material never queues at the plant.

    Requests that find nothing inside the booking horizon join a waitlist, served in priority order each
    morning and whenever capacity is freed.
    """

    def __init__(self, env: simpy.Environment, starts: DayBook, lead_days: int, horizon_days: float,
                 projection: SuiteProjection | None = None, month: MonthBook | None = None,
                 reserve: UrgentReserve | None = None) -> None:
        self.env = env
        self.starts = starts
        self.lead = lead_days
        self.horizon = horizon_days
        self.projection = projection
        self.month = month
        self.reserve = reserve
        self.plans: list[SuitePlan] = []
        self.on_reschedule: Rescheduled | None = None
        # the waitlist, one priority queue per search (see _search_key); a cancelled request stays in its
        # queue until it reaches the head. _live counts the requests still waiting, _stale those cancelled
        # since the last serve: a serve forgets them, so until then they still count as a waitlist.
        self._queues: dict[SearchKey, list[tuple[Any, int, SlotBooking]]] = {}
        self._live = 0
        self._stale = 0
        self._reviews: dict[int, list[tuple[float, SlotBooking]]] = {}  # morning -> batches to review
        self._queued = False  # patients joined the waitlist since it was last served
        env.process(self._morning_round())

    # ------------------------------------------------------------------ booking
    def request(self, slot: SlotBooking) -> simpy.Event:
        """The slot's event succeeds (with the slot) once a start is booked."""
        if slot.plan is not None and slot.plan not in self.plans:
            self.plans.append(slot.plan)
        today = math.floor(self.env.now)
        if not self._has_waitlist() and self._search(slot, today + 1 + self.lead,
                                                     math.floor(self.env.now + self.horizon)):
            slot.event.succeed(slot)
            return slot.event
        key = _search_key(slot)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = []
        heapq.heappush(queue, (slot.priority, next(_tie), slot))
        self._live += 1
        self._queued = True
        return slot.event

    def place(self, slot: SlotBooking, day: int, suite: str | None = None) -> None:
        """Book ``slot`` on ``day`` as a plant's plan already has it (a forecast starting from a state),
        whatever the booking rules would offer now: its start and chair days, and its suite booking on
        ``suite`` when that suite is projected free for it, else on the best-fitting free one, else on
        none (the batch then asks for any suite when it is ready). The slot's event has succeeded."""
        cal: SuiteCalendar | None = None
        s = e = 0.0
        if slot.plan is not None and self.projection is not None:
            if slot.plan not in self.plans:
                self.plans.append(slot.plan)
            s, e = self.projection.interval(slot.product, slot.site, day, slot.infectious)
            e = max(e, self.env.now + EPS)
            named = next((c for c in slot.plan.calendars if c.name == suite), None)
            cal = named if named is not None and named.slack(s, e) is not None else slot.plan.find(s, e)
        self._place(slot, day, cal, s, e)
        slot.event.succeed(slot)

    def _has_waitlist(self) -> bool:
        """Whether anyone waits, counting requests cancelled since the last serve (it forgets them)."""
        return self._live + self._stale > 0

    def _search(self, slot: SlotBooking, first: int, last: int) -> bool:
        """Book the first day in [first, last] that passes every rule; False (nothing booked) if none.
        (DayBook.free inlined for the start and chair books: a waitlist serve tries every day in the
        booking horizon, and most days fail there.)"""
        today = math.floor(self.env.now)
        starts, chairs, quota, month, reserve = self.starts, slot.chairs, slot.quota, self.month, self.reserve
        lead = self.lead
        if starts.per_day <= 0 or chairs.per_day <= 0:
            return False
        plan = slot.plan
        offsets: list[tuple[float, float]] = []
        n = n_open = 0
        if plan is not None:
            assert self.projection is not None
            lo, hi, length = self.projection.bounds(slot.product, slot.site, slot.infectious)
            if not plan.has_room(first + lo - 1e-6, last + hi + 1e-6, length - 1e-6):
                return False
            offsets = self.projection.offsets(slot.product, slot.site, slot.infectious)
            n = n_open = len(plan.calendars)
        starts_open = starts.per_day
        if reserve is not None:
            n_open, starts_open = reserve.open_part(n), reserve.open_part(starts.per_day)
        s_week, s_booked, s_cap = starts.week, starts.booked, starts.per_day
        c_week, c_booked, c_cap = chairs.week, chairs.booked, chairs.per_day
        for d in range(first, last + 1):
            if not s_week[d % 7] or s_booked.get(d, 0) >= s_cap:
                continue
            if not c_week[(d - lead) % 7] or c_booked.get(d - lead, 0) >= c_cap:
                continue
            if (quota is not None and not quota.free(d)) or (month is not None and not month.free(d)):
                continue
            held = reserve is not None and reserve.held(d, today, slot.reserved_ok)
            if held and s_booked.get(d, 0) >= starts_open:
                continue
            if plan is None:
                self._place(slot, d, None, 0.0, 0.0)
                return True
            off = offsets[d % 7]
            s, e = d + off[0], d + off[1]  # = projection.interval(...), its weekly offsets read once
            cal = plan.find(s, e, upto=n_open if held else n)
            if cal is not None:
                self._place(slot, d, cal, s, e)
                return True
        return False

    def _place(self, slot: SlotBooking, d: int, cal: SuiteCalendar | None, s: float, e: float) -> None:
        self._place_days(slot, d)
        if cal is not None:
            cal.prune(self.env.now)
            slot.suite = SuiteBooking(cal, s, e, slot)
            cal.add(slot.suite)

    def _place_days(self, slot: SlotBooking, d: int) -> None:
        """Book the start day ``d`` and its chair day, and count them in the months' quotas."""
        slot.day, slot.aph_day = d, d - self.lead
        self.starts.book(d)
        slot.chairs.book(slot.aph_day)
        for book in (slot.quota, self.month):
            if book is not None:
                book.book(d)

    def _unplace_days(self, slot: SlotBooking) -> None:
        """Give back the start and chair days still ahead, and their months' counts."""
        today = math.floor(self.env.now)
        if slot.day >= today:
            self.starts.cancel(slot.day)
            for book in (slot.quota, self.month):
                if book is not None:
                    book.cancel(slot.day)
        if slot.aph_day >= today:
            slot.chairs.cancel(slot.aph_day)

    def _unplace(self, slot: SlotBooking) -> None:
        """Give back what the booking holds and has not used: the start and chair (if still ahead), the
        month's counts, the suite booking."""
        self._unplace_days(slot)
        if slot.suite is not None:
            cal = slot.suite.calendar
            if slot.suite in cal.items:
                cal.remove(slot.suite)
            slot.suite = None

    def serve_waitlist(self) -> None:
        """Offer what is free to the waitlist in priority order. A failed search books nothing, so the same
        search for the next patient fails too: its queue waits for the next serve. A booking only takes
        capacity, so the same search starts again from the day it booked. With one queue per search, a
        serve costs a step per booking or failed search, not per patient waiting."""
        self._queued = False
        self._stale = 0
        today = math.floor(self.env.now)
        first, last = today + 1 + self.lead, math.floor(self.env.now + self.horizon)
        booked: dict[SearchKey, int] = {}  # the day the same search last booked
        open_queues = [(key, queue) for key, queue in self._queues.items() if queue]
        while open_queues:
            best = -1
            head: tuple[Any, int, SlotBooking] | None = None
            for n, (_, queue) in enumerate(open_queues):
                while queue and queue[0][2].event.triggered:  # cancelled while waiting
                    heapq.heappop(queue)
                if queue and (head is None or queue[0] < head):
                    best, head = n, queue[0]
            if head is None:
                return
            key, queue = open_queues[best]
            slot = head[2]
            if self._search(slot, booked.get(key, first), last):
                heapq.heappop(queue)
                self._live -= 1
                booked[key] = slot.day
                slot.event.succeed(slot)
            else:
                del open_queues[best]

    def cancel(self, slot: SlotBooking) -> None:
        """The patient left before apheresis: give the booking back, or leave the waitlist."""
        if slot.event.triggered:
            self._unplace(slot)
            slot.done = True
            self.serve_waitlist()
        else:
            slot.event.fail(_Cancelled())
            slot.event.defused = True
            self._live -= 1
            self._stale += 1

    @property
    def waitlist_length(self) -> int:
        return self._live

    # ------------------------------------------------------------------ re-planning
    def confirm(self, slot: SlotBooking) -> bool:
        """Before collection: re-estimate the batches running on the booked suite. False when that moved
        this start (the patient waits for the new apheresis day)."""
        if slot.suite is None:
            return True
        day = slot.day
        self._refresh(slot.suite.calendar)
        return slot.day == day

    def started(self, slot: SlotBooking, step: int, t: float, end: float) -> None:
        """A step of the booked batch has begun (to end at ``end``, which the plan sees only within its
        notice). Its projection is re-estimated at the next review once anything new can be known: the
        step overdue against the plan, or its end inside the notice."""
        slot.step, slot.step_start, slot.step_end = step, t, end
        if slot.suite is not None and not slot.done and self.projection is not None:
            review = self.projection.first_review(slot)
            if review < end or not self.projection.starts_next_at_once(slot):  # else its successor reports
                self._review_at(slot, review)

    def suite_for(self, slot: SlotBooking, free_now: Callable[[str], bool]) -> str | None:
        """The suite a batch ready for processing asks for: its booked one, or, when that is still busy
        (lost late), another suite free now and projected free for the batch's occupancy, or else an empty
        suite whose next starts are not yet collected (they are moved, as any overrun would move them)."""
        sb = slot.suite
        if sb is None:
            return None
        if free_now(sb.calendar.name) or slot.plan is None or self.projection is None:
            return sb.calendar.name
        now = self.env.now
        cal = sb.calendar
        end = self.projection.remaining(slot, now)
        other = slot.plan.find(now, end, free_now) or self._bumpable(slot.plan, now, end, free_now)
        if other is None:
            return cal.name  # nothing free: wait for the booked suite
        cal.remove(sb)
        sb.calendar, sb.start, sb.end = other, now, end
        other.add(sb)
        self._resolve(sb)  # later starts on that suite not yet collected move (before their collection)
        return other.name

    @staticmethod
    def _bumpable(plan: SuitePlan, now: float, end: float, free_now: Callable[[str], bool]) -> SuiteCalendar | None:
        """An empty suite whose bookings overlapping [now, end) are all still uncollected, so collected
        material can take it and only starts not yet collected move; the one booked again latest."""
        best, best_next = None, -math.inf
        for c in plan.calendars:
            if not free_now(c.name) or c.slack(now, now + EPS) is None:
                continue
            i = bisect.bisect_right(c.starts, now)
            overlapped = c.items[i:bisect.bisect_left(c.starts, end, lo=i)]
            if any(b.slot.collected for b in overlapped):
                continue
            nxt = c.items[i].start if i < len(c.items) else math.inf
            if nxt > best_next:
                best, best_next = c, nxt
        return best

    def release(self, slot: SlotBooking | None, processed: bool) -> None:
        """The batch gave its suite back (or stopped without it): the suite is projected clear after line
        clearance (processed) or now; what is left of the booking goes back to the plan."""
        if slot is None or slot.done:
            return
        slot.done = True
        sb = slot.suite
        if sb is not None and self.projection is not None:
            now = self.env.now
            end = self.projection.clear_after(now, slot.infectious) if processed else now
            if sb.start >= end:
                sb.calendar.remove(sb)
                slot.suite = None
            elif end > sb.end:
                self._extend(sb, end)
            else:
                sb.end = end
                if not self._queued and not self._opens_room(sb):
                    return  # nothing the waitlist could use: the last serve's answer stands
        self.serve_waitlist()

    def _opens_room(self, sb: SuiteBooking) -> bool:
        """Whether the time after a shortened booking, up to the next one on its suite, could hold a batch."""
        cal = sb.calendar
        i = cal.index(sb)
        if i + 1 >= len(cal.items):
            return True
        assert self.projection is not None
        return cal.items[i + 1].start - sb.end >= self.projection.min_span - EPS

    def _review_at(self, slot: SlotBooking, t: float) -> None:
        """Put the batch on the review of the first morning at or after ``t``."""
        slot.review_at = t
        if t > NEVER:
            return  # nothing new can be known inside any horizon
        day = math.ceil(t)
        due = self._reviews.get(day)
        if due is None:
            self._reviews[day] = [(t, slot)]
        else:
            due.append((t, slot))

    def _review(self, slot: SlotBooking) -> None:
        """Re-estimate one running batch, and review it again when anything new can be known about it."""
        assert self.projection is not None and slot.suite is not None
        now = self.env.now
        self._extend(slot.suite, self.projection.remaining(slot, now))
        self._review_at(slot, self.projection.next_review(slot, now))

    def _refresh(self, cal: SuiteCalendar) -> None:
        """Re-estimate the batches running on one suite (before collecting the next patient booked there)."""
        assert self.projection is not None
        now = self.env.now
        for sb in cal.running(now):
            if sb.slot.step < 0 or now >= sb.slot.review_at:  # else nothing new is known about it yet
                self._extend(sb, self.projection.remaining(sb.slot, now))

    def _morning_reviews(self) -> None:
        due = self._reviews.pop(math.floor(self.env.now), None)
        for t, slot in due or ():
            if t == slot.review_at and not slot.done and slot.suite is not None:  # not superseded
                self._review(slot)

    def _extend(self, sb: SuiteBooking, end: float) -> None:
        if end > sb.end + EPS:
            sb.end = end
            self._resolve(sb)

    def _resolve(self, sb: SuiteBooking) -> None:
        """Clear the bookings after ``sb`` that its projection now overlaps: a start not yet collected is
        moved to the next feasible day; collected material keeps its start, pushed after ``sb`` (its
        suite is lost late, and its own successors are cleared the same way)."""
        cal = sb.calendar
        i, end = cal.index(sb), sb.end
        chain: list[SuiteBooking] = []
        moved: list[SlotBooking] = []
        while i + 1 < len(cal.items) and cal.items[i + 1].start < end - EPS:
            nxt = cal.pop(i + 1)
            if nxt.slot.collected:
                nxt.slot.lost_late = True
                nxt.start, nxt.end = end, end + (nxt.end - nxt.start)
                end = nxt.end
                chain.append(nxt)
            else:
                nxt.slot.suite = None
                moved.append(nxt.slot)
        for b in chain:
            cal.add(b)
        for slot in sorted(moved, key=lambda s: s.priority):
            self._reschedule(slot)

    def _reschedule(self, slot: SlotBooking) -> None:
        """Move a start whose suite will not be free to the next feasible day, before its collection."""
        old = slot.day
        self._unplace(slot)
        first = max(old, math.floor(self.env.now) + 1 + self.lead)
        if not self._search(slot, first, first + RESCHEDULE_LIMIT_DAYS):
            raise RuntimeError("no feasible start within ten years")  # validated away: capacity > 0
        if slot.day != old:
            slot.reschedules += 1
            if self.on_reschedule is not None:
                self.on_reschedule(slot, old)

    def _morning_round(self) -> Generator[simpy.Event, Any, None]:
        """Each morning the planner reviews the running batches' projections, forgets finished ones, and
        offers what is free to the waitlist."""
        while True:
            yield self.env.timeout(math.floor(self.env.now) + 1 - self.env.now)
            self._morning_reviews()
            if self._has_waitlist():
                self.serve_waitlist()
