"""The plant's finite resources: unit pools (suites, incubators, devices, freezers), staff on shifts, and
the day books that ration manufacturing starts, apheresis chairs and infusion slots (the slot plan that
books suites is model/slotplan.py).

Nothing here knows about patients beyond an opaque priority key; the journey decides what to ask for.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Generator
from typing import Any

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
        self._named: dict[str, list[tuple[Any, int, simpy.Event]]] = {}  # waiting for one named unit

    def request(self, priority: Any = 0, unit: str | None = None) -> simpy.Event:
        """Any free unit, or the named ``unit`` (a suite the slot plan booked for this batch)."""
        ev = self.env.event()
        if unit is not None:
            if unit in self._free:
                self._free.remove(unit)
                ev.succeed(unit)
            else:
                heapq.heappush(self._named.setdefault(unit, []), (priority, next(_tie), ev))
        elif self._free and not self._waiting:
            ev.succeed(self._free.pop(0))
        else:
            heapq.heappush(self._waiting, (priority, next(_tie), ev))
        return ev

    def is_free(self, unit: str) -> bool:
        return unit in self._free

    def release(self, unit: str) -> None:
        for queue in (self._named.get(unit), self._waiting):
            while queue:
                _, _, ev = heapq.heappop(queue)
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
        waiting = itertools.chain(self._waiting, *self._named.values())
        return sum(1 for *_, ev in waiting if not ev.triggered)


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
        self._dispatch_cb = self._dispatch  # bound once: a pooled hand-out is scheduled for most requests

    def _get(self, n: int, priority: Any) -> simpy.Event:
        # Requests made at the same instant (everyone waking at the start of a shift) are pooled and
        # handed out together, by priority, once every one of them is in: not in wake-up order.
        ev = self.env.event()
        heapq.heappush(self._waiting, (priority, next(_tie), n, ev))
        if not self._dispatch_pending:
            self._dispatch_pending = True
            self.env.timeout(0).callbacks.append(self._dispatch_cb)
        return ev

    def _dispatch(self, _: Any = None) -> None:
        self._dispatch_pending = False
        while self._waiting and self._waiting[0][2] <= self.free:
            _, _, k, ev = heapq.heappop(self._waiting)
            self.free -= k
            ev.succeed()

    def acquire(self, n: int, duration: float, priority: Any = 1) -> Generator[simpy.Event, Any, float]:
        """Wait until ``n`` people are free on shift for a task of ``duration``; returns the request time."""
        env, calendar = self.env, self.calendar
        requested = env.now
        if n == 0:
            return requested
        while True:
            start = calendar.next_start(env.now, duration)
            if start > env.now:
                yield env.timeout(start - env.now)
            asked = env.now  # a start that fits the shift
            yield self._get(n, priority)
            if env.now == asked or calendar.next_start(env.now, duration) == env.now:
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
        # open or not by day % 7 (the calendar repeats weekly): booking searches ask for every day they try
        self.week = tuple(calendar.always or (calendar.start_weekday + k) % 7 in calendar.days for k in range(7))
        self._full_before = 0  # every day before this one is closed or fully booked

    def is_open(self, day: int) -> bool:
        return self.week[day % 7]

    def free(self, day: int) -> bool:
        return self.week[day % 7] and self.per_day > 0 and self.booked.get(day, 0) < self.per_day

    def book(self, day: int) -> None:
        self.booked[day] = self.booked.get(day, 0) + 1

    def cancel(self, day: int) -> None:
        self.booked[day] -= 1
        self._full_before = min(self._full_before, day)

    def first_free(self, earliest: int) -> int:
        """The first day from ``earliest`` with capacity left. Overloaded books (demand far above the
        chairs, e.g. collect_then_queue at 20,000 referrals a year) fill years ahead: the search starts
        after the days known to be full, so it costs no more as the book grows, and there is always a
        later day (capacity per day and an open day a week are validated)."""
        start = max(earliest, self._full_before)
        d = start
        while not self.free(d):
            d += 1
            if d - start > 7 * (len(self.booked) + 2):
                raise RuntimeError("booking calendar has no open day")  # validated away
        if earliest <= self._full_before:
            self._full_before = d
        return d

    def open_days(self, t0: float, t1: float) -> int:
        return sum(1 for d in range(math.floor(t0), math.ceil(t1)) if self.is_open(d))
