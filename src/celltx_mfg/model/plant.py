"""The plant's finite resources: unit pools (suites, incubators, devices, freezers), staff on shifts, and
the day books that ration manufacturing starts, apheresis chairs and infusion slots.

Nothing here knows about patients beyond an opaque priority key; the journey decides what to ask for.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Generator
from typing import Any, cast

import simpy

from ..calendar import Calendar

_tie = itertools.count()


class UnitPool:
    """Identical, individually named units handed out one per request, lowest priority key first.

    Units are exclusive: a suite handed to a batch is that batch's alone until returned, which is how
    segregation of open processing (one patient's material per BSC) is enforced by construction.
    """

    def __init__(self, env: simpy.Environment, kind: str, units: list[str]) -> None:
        self.env = env
        self.kind = kind
        self.units = list(units)
        self._free: list[str] = list(units)
        self._waiting: list[tuple[Any, int, simpy.Event]] = []

    def request(self, priority: Any = 0) -> simpy.Event:
        ev = self.env.event()
        if self._free and not self._waiting:
            ev.succeed(self._free.pop(0))
        else:
            heapq.heappush(self._waiting, (priority, next(_tie), ev))
        return ev

    def release(self, unit: str) -> None:
        while self._waiting:
            _, _, ev = heapq.heappop(self._waiting)
            if not ev.triggered:  # a cancelled request is skipped
                ev.succeed(unit)
                return
        self._free.append(unit)

    def cancel(self, ev: simpy.Event) -> None:
        """Withdraw a request (patient lost while queueing); a unit already granted is returned."""
        if ev.triggered:
            if ev.ok and ev.value is not None:
                self.release(ev.value)
        else:
            ev.fail(_Cancelled())
            ev.defused = True

    @property
    def queue_length(self) -> int:
        return sum(1 for *_, ev in self._waiting if not ev.triggered)


class _Cancelled(Exception):
    pass


class StaffPool:
    """People on a shift calendar: a task needing ``n`` of them starts only on shift and, if it fits in
    one shift, only when it can finish before the shift ends.

    Waiting tasks are served in priority order (lower first; time-critical fresh material ahead of
    routine work), strictly: a task needing two people is not overtaken by later one-person tasks.
    """

    def __init__(self, env: simpy.Environment, kind: str, count: int, calendar: Calendar) -> None:
        self.env = env
        self.kind = kind
        self.count = count
        self.calendar = calendar
        self.free = count
        self._waiting: list[tuple[Any, int, int, simpy.Event]] = []
        self._dispatch_pending = False

    def _get(self, n: int, priority: Any) -> simpy.Event:
        # Requests made at the same instant (everyone waking at the start of a shift) are pooled and
        # handed out together, by priority, once every one of them is in: not in wake-up order.
        ev = self.env.event()
        heapq.heappush(self._waiting, (priority, next(_tie), n, ev))
        if not self._dispatch_pending:
            self._dispatch_pending = True
            self.env.timeout(0).callbacks.append(self._dispatch)
        return ev

    def _dispatch(self, _: Any = None) -> None:
        self._dispatch_pending = False
        while self._waiting and self._waiting[0][2] <= self.free:
            _, _, k, ev = heapq.heappop(self._waiting)
            self.free -= k
            ev.succeed()

    def acquire(self, n: int, duration: float, priority: Any = 1) -> Generator[simpy.Event, Any, float]:
        """Wait until ``n`` people are free on shift for a task of ``duration``; returns the request time."""
        requested = self.env.now
        if n == 0:
            return requested
        while True:
            start = self.calendar.next_start(self.env.now, duration)
            if start > self.env.now:
                yield self.env.timeout(start - self.env.now)
            yield self._get(n, priority)
            if self.calendar.next_start(self.env.now, duration) == self.env.now:
                return requested
            self.release(n)  # the shift ended while we queued: hand back, wait for the next one

    def release(self, n: int) -> None:
        if n:
            self.free += n
            self._dispatch()


class DayBook:
    """Per-day capacity that is booked ahead (manufacturing starts, apheresis chairs, infusion slots).

    Days are whole simulation days; only days on the calendar offer capacity.
    """

    def __init__(self, per_day: int, calendar: Calendar) -> None:
        self.per_day = per_day
        self.calendar = calendar
        self.booked: dict[int, int] = {}
        self._open_days: dict[int, bool] = {}

    def is_open(self, day: int) -> bool:
        o = self._open_days.get(day)
        if o is None:
            o = self.calendar.always or ((self.calendar.start_weekday + day) % 7 in self.calendar.days)
            self._open_days[day] = o
        return o

    def free(self, day: int) -> bool:
        return self.per_day > 0 and self.is_open(day) and self.booked.get(day, 0) < self.per_day

    def book(self, day: int) -> None:
        self.booked[day] = self.booked.get(day, 0) + 1

    def cancel(self, day: int) -> None:
        self.booked[day] -= 1

    def first_free(self, earliest: int, limit: int = 3650) -> int:
        for d in range(earliest, earliest + limit):
            if self.free(d):
                return d
        raise RuntimeError("no free day within ten years")  # validated away: capacity > 0

    def open_days(self, t0: float, t1: float) -> int:
        return sum(1 for d in range(math.floor(t0), math.ceil(t1)) if self.is_open(d))


class SuitePlan:
    """Suites reserved ahead, day by day: a slot is a start *in a suite*, so the book only offers a day
    when a suite is free for the whole planned occupancy (the manufacturer's own capacity plan)."""

    def __init__(self, suites: int) -> None:
        self.suites = suites
        self.reserved: dict[int, int] = {}

    def free(self, day: int, days: int) -> bool:
        return all(self.reserved.get(d, 0) < self.suites for d in range(day, day + days))

    def book(self, day: int, days: int, delta: int = 1) -> None:
        for d in range(day, day + days):
            self.reserved[d] = self.reserved.get(d, 0) + delta


class SlotBook:
    """The manufacturer's slot book: a referred patient waits for a start date with a free start, a
    suite reserved for the planned occupancy and a free apheresis chair ``lead`` days before, so fresh
    material never queues at the plant.

    Requests that find nothing inside the booking horizon join a waitlist, served in priority order each
    morning and whenever capacity is freed.
    """

    def __init__(self, env: simpy.Environment, starts: DayBook, lead_days: int, horizon_days: float) -> None:
        self.env = env
        self.starts = starts
        self.lead = lead_days
        self.horizon = horizon_days
        self._waitlist: list[tuple[Any, int, simpy.Event, DayBook, SuitePlan | None, int]] = []
        env.process(self._morning_round())

    def request(self, chairs: DayBook, priority: Any, plan: SuitePlan | None = None, days: int = 0) -> simpy.Event:
        """An event whose value is (start day, apheresis day) once booked."""
        ev = self.env.event()
        if not self._waitlist and self._try(ev, chairs, plan, days):
            return ev
        heapq.heappush(self._waitlist, (priority, next(_tie), ev, chairs, plan, days))
        return ev

    def _try(self, ev: simpy.Event, chairs: DayBook, plan: SuitePlan | None, days: int) -> bool:
        first_apheresis = math.floor(self.env.now) + 1
        for d in range(first_apheresis + self.lead, math.floor(self.env.now + self.horizon) + 1):
            a = d - self.lead
            if self.starts.free(d) and chairs.free(a) and (plan is None or plan.free(d, days)):
                self.starts.book(d)
                chairs.book(a)
                if plan is not None:
                    plan.book(d, days)
                ev.succeed((d, a))
                return True
        return False

    def serve_waitlist(self) -> None:
        keep = []
        full: set[tuple[int, int, int]] = set()  # (chairs, suite plan, days) that found nothing this round
        while self._waitlist:
            item = heapq.heappop(self._waitlist)
            ev = item[2]
            if ev.triggered:
                continue
            # a failed search books nothing, so the same search for the next patient fails too: skip it
            key = (id(item[3]), id(item[4]), item[5])
            if key in full or not self._try(ev, item[3], item[4], item[5]):
                full.add(key)
                keep.append(item)
        for item in keep:
            heapq.heappush(self._waitlist, item)

    def cancel(self, ev: simpy.Event, chairs: DayBook, plan: SuitePlan | None = None, days: int = 0,
               from_day: int | None = None) -> None:
        """Give back what is not yet used: the start and chair (if still ahead) and the suite reservation
        from ``from_day`` on; or leave the waitlist."""
        if ev.triggered:
            d, a = cast(tuple[int, int], ev.value)
            today = math.floor(self.env.now)
            if d >= today:
                self.starts.cancel(d)
            if a >= today:
                chairs.cancel(a)
            if plan is not None:
                start = max(d, today if from_day is None else from_day)
                if start < d + days:
                    plan.book(start, d + days - start, -1)
            self.serve_waitlist()
        else:
            ev.fail(_Cancelled())
            ev.defused = True

    @property
    def waitlist_length(self) -> int:
        return sum(1 for it in self._waitlist if not it[2].triggered)

    def _morning_round(self) -> Generator[simpy.Event, Any, None]:
        while True:
            yield self.env.timeout(math.floor(self.env.now) + 1 - self.env.now)
            if self._waitlist:
                self.serve_waitlist()
