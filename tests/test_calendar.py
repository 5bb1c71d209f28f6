"""Shift calendar: when staff are next on, and how much shift time a window holds."""

from __future__ import annotations

import pytest

from celltx_mfg.calendar import Calendar

H = 1 / 24
DAY = Calendar(shifts=((8.0, 8.0),), days=frozenset(range(5)))  # Mon-Fri 08:00-16:00, day 0 = Monday


def test_inside_a_shift_starts_now() -> None:
    assert DAY.next_start(0 + 9 * H, 2 * H) == pytest.approx(9 * H)


def test_task_that_does_not_fit_waits_for_next_morning() -> None:
    # Monday 13:00, a five-hour task would end at 18:00 > 16:00: Tuesday 08:00
    assert DAY.next_start(13 * H, 5 * H) == pytest.approx(1 + 8 * H)


def test_friday_evening_waits_for_monday() -> None:
    assert DAY.next_start(4 + 17 * H, 1 * H) == pytest.approx(7 + 8 * H)


def test_task_longer_than_a_shift_starts_at_shift_start() -> None:
    assert DAY.next_start(2 + 9 * H, 3.0) == pytest.approx(3 + 8 * H)


def test_night_shift_across_midnight() -> None:
    night = Calendar(shifts=((22.0, 8.0),), days=frozenset(range(7)))
    assert night.on_shift(1 + 2 * H)  # 02:00 belongs to the shift that began at 22:00
    assert not night.on_shift(1 + 12 * H)
    assert night.next_start(1 + 3 * H, 2 * H) == pytest.approx(1 + 3 * H)


def test_available_days_counts_shift_time() -> None:
    assert DAY.available_days(0, 7) == pytest.approx(5 * 8 * H)
    assert DAY.available_days(0, 14) == pytest.approx(10 * 8 * H)
    assert Calendar.around_the_clock().available_days(3, 10) == pytest.approx(7)


def test_start_weekday_shifts_the_week() -> None:
    wed_start = Calendar(shifts=((8.0, 8.0),), days=frozenset(range(5)), start_weekday=2)
    # day 3 is a Saturday when day 0 is a Wednesday
    assert wed_start.next_start(3.0, H) == pytest.approx(5 + 8 * H)
