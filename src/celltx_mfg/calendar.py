"""Shifts and working days: "when are the staff next on?".

Simulation time is in days from the scenario's start date at 00:00. A calendar is a set of shifts
(start hour, length in hours) repeated on given weekdays. A shift may run past midnight (a night
shift); it then belongs to the weekday it starts on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# "Fits in the shift" allows for rounding: 1e-12 days, or more far out in time, where neighbouring floats
# are further apart (at day 36,500, the schema's longest horizon, 7e-12 days). Relative part: about five
# units in the last place of t; up to day 985 it is the 1e-12 of old, so results there are unchanged.
_FIT_TOLERANCE = 1e-12
_FIT_RELATIVE = 1e-15


def _fit_tolerance(t: float) -> float:
    return max(_FIT_TOLERANCE, abs(t) * _FIT_RELATIVE)


@dataclass(frozen=True)
class Calendar:
    """Working windows of a staffed resource; ``always`` means no shift rule (24/7 cover)."""

    shifts: tuple[tuple[float, float], ...]  # (start hour, hours)
    days: frozenset[int]  # weekday numbers, mon=0
    start_weekday: int = 0  # weekday of simulation day 0
    always: bool = False

    @classmethod
    def around_the_clock(cls) -> Calendar:
        return cls(shifts=((0.0, 24.0),), days=frozenset(range(7)), always=True)

    _cache: dict[int, tuple[tuple[float, float], ...]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    _last: list[float] = field(default_factory=lambda: [0.0, -1.0], compare=False, hash=False, repr=False)

    @cached_property
    def longest(self) -> float:
        """Longest shift, in days."""
        return max(h for _, h in self.shifts) / 24.0

    def _windows_of_day(self, day: int) -> tuple[tuple[float, float], ...]:
        """On-shift windows (start, end) in days that begin on simulation day ``day`` (memoised: staff
        look this up for every task)."""
        w = self._cache.get(day)
        if w is None:
            if (self.start_weekday + day) % 7 not in self.days:
                w = ()
            else:
                w = tuple((day + s / 24.0, day + (s + h) / 24.0) for s, h in self.shifts)
            self._cache[day] = w
        return w

    def next_start(self, t: float, duration: float = 0.0) -> float:
        """Earliest time >= t at which a task of ``duration`` days can start on shift.

        A task that fits in one shift must fit in what is left of the shift it starts in (nobody starts
        a six-hour open process an hour before going home); a task longer than any shift starts at the
        beginning of a shift.
        """
        if self.always:
            return t
        need = duration if duration < self.longest else self.longest
        tol = abs(t + 15.0) * _FIT_RELATIVE  # = _fit_tolerance(t + 15.0), inlined (staff ask this for every task):
        if tol < _FIT_TOLERANCE:  # the windows looked at end within fifteen days of t
            tol = _FIT_TOLERANCE
        ws, we = self._last  # most asks fall in the shift found last time
        if ws <= t and t + need <= we + tol and t < we + tol:
            return t
        day = math.floor(t) - 1  # a night shift from yesterday may still be running
        cache = self._cache
        for d in range(day, day + 15):
            windows = cache.get(d)
            if windows is None:
                windows = self._windows_of_day(d)
            for ws, we in windows:
                start = ws if ws > t else t
                if start + need <= we + tol and start < we + tol:
                    self._last[0], self._last[1] = ws, we
                    return start
        raise ValueError("calendar has no working window in two weeks")  # validated away in config

    def on_shift(self, t: float) -> bool:
        if self.always:
            return True
        for d in (math.floor(t) - 1, math.floor(t)):
            for ws, we in self._windows_of_day(d):
                if ws <= t < we:
                    return True
        return False

    def available_days(self, t0: float, t1: float) -> float:
        """On-shift time in [t0, t1], in days: the denominator of a staff pool's utilisation."""
        if self.always:
            return max(0.0, t1 - t0)
        total = 0.0
        for d in range(math.floor(t0) - 1, math.ceil(t1) + 1):
            for ws, we in self._windows_of_day(d):
                total += max(0.0, min(we, t1) - max(ws, t0))
        return total
