"""The suite-level slot plan and the booking rules (model/slotplan.py).

- A hypothesis property test drives the slot book itself with random bookings, overruns, cancellations
  and releases: no start is ever booked on a suite projected busy, and a suite's bookings never overlap.
- Small plants through the real engine: an overrun moves a start before its collection (a reschedule,
  recorded and counted), a centre with 2 slots a month gets 2 starts a month, a re-manufacture share
  of 0 re-collects nobody, and, on ``demand_plus_50``, an urgent reserve halves urgent patients' wait.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simpy
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celltx_mfg import analysis
from celltx_mfg.calendar import Calendar
from celltx_mfg.config import ScenarioError, load_scenario, parse_text, scenario_from_dict
from celltx_mfg.model import slotplan
from celltx_mfg.model.plant import DayBook
from celltx_mfg.model.slotplan import (
    MonthBook,
    ProductTiming,
    SlotBook,
    SlotBooking,
    SuitePlan,
    SuiteProjection,
)
from celltx_mfg.simulate import simulate

from .validation.conftest import ALWAYS, WEEKDAYS, fixed

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-9


# ------------------------------------------------------------------------------- the plan, alone
def _book(env: simpy.Environment, suites: int, lead: int = 1) -> tuple[SlotBook, SuitePlan, DayBook]:
    """A slot book over ``suites`` suites for a one-step product (its duration set per booking), 24/7."""
    cal = Calendar.around_the_clock()
    projection = SuiteProjection(cal, 0.0, lead, {}, {"site": 0.0}, (0.05, 0.0, 0), None, 1.0)
    book = SlotBook(env, DayBook(100, cal), lead, 30, projection)
    return book, SuitePlan([f"S{i + 1}" for i in range(suites)]), DayBook(100, cal)


def _check_calendars(plan: SuitePlan) -> None:
    for cal in plan.calendars:
        assert cal.starts == [b.start for b in cal.items]
        for a, b in zip(cal.items, cal.items[1:], strict=False):
            assert a.start <= b.start and a.end <= b.start + EPS, f"{cal.name}: {a.start}-{a.end} overlaps {b.start}"


ops = st.lists(
    st.tuples(st.sampled_from(["book", "overrun", "cancel", "release", "wait"]), st.floats(1.0, 9.0),
              st.integers(0, 10_000)),
    min_size=5, max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, suites=st.integers(1, 4))
def test_the_plan_never_books_a_start_on_a_suite_projected_busy(ops: list[tuple[str, float, int]],
                                                                 suites: int) -> None:
    env = simpy.Environment()
    book, plan, chairs = _book(env, suites)
    placed: list[SlotBooking] = []
    checked = 0
    real_place = book._place

    def place(slot: SlotBooking, d: int, cal: Any, s: float, e: float) -> None:
        nonlocal checked
        assert cal is not None and cal.slack(s, e) is not None, f"day {d}: suite {cal.name} projected busy"
        for other in cal.items:  # the plain definition: no booking of that suite overlaps [s, e)
            assert other.end <= s + EPS or other.start >= e - EPS
        checked += 1
        real_place(slot, d, cal, s, e)

    book._place = place  # type: ignore[method-assign]
    for kind, x, pick in ops:
        live = [s for s in placed if not s.done]
        if kind == "book":
            timing = ProductTiming((x,), (0,), 0, 0)
            assert book.projection is not None
            book.projection.products[f"p{x}"] = timing
            slot = SlotBooking(env.event(), (1, 0, env.now), f"p{x}", "site", chairs, None, plan, False, False)
            book.request(slot)
            placed.append(slot)
        elif kind == "overrun" and live:
            slot = live[pick % len(live)]
            if slot.event.triggered and slot.suite is not None:
                slot.collected = slot.collected or pick % 2 == 0
                book.started(slot, 0, max(env.now, slot.suite.start), max(env.now, slot.suite.start) + x * 1.5)
                book._refresh(slot.suite.calendar)
        elif kind == "cancel" and live:
            slot = live[pick % len(live)]
            if not slot.collected:
                book.cancel(slot)
        elif kind == "release" and live:
            book.release(live[pick % len(live)], processed=pick % 3 != 0)
        else:
            env.run(until=env.now + x)
        _check_calendars(plan)
    assert checked >= sum(1 for s in placed if s.event.triggered) - 1 or not placed


def test_an_overrun_moves_the_next_start_on_that_suite() -> None:
    """One suite: a batch booked after a running one is moved when the running one's projection grows
    into it, before its collection; the move is reported to the model."""
    env = simpy.Environment()
    book, plan, chairs = _book(env, 1)
    assert book.projection is not None
    book.projection.products["p"] = ProductTiming((5.0,), (0,), 0, 0, (7.0,))  # planned 5 d, late 7 d
    moved: list[tuple[int, int]] = []
    book.on_reschedule = lambda slot, old: moved.append((old, slot.day))
    first = SlotBooking(env.event(), (1, 0, 0.0), "p", "site", chairs, None, plan, False, False)
    second = SlotBooking(env.event(), (1, 0, 0.1), "p", "site", chairs, None, plan, False, False)
    book.request(first)
    book.request(second)
    assert (first.day, second.day) == (2, 8)  # 5 d + clearance -> the suite is clear on day 7.05
    env.run(until=first.day)
    first.collected = True
    book.started(first, 0, env.now, env.now + 9.0)  # the step will run 9 d, known 1 d ahead
    env.run(until=first.day + 4.5)  # day 6.5: not yet overdue (planned end 7, notice 1)
    assert moved == []
    env.run(until=first.day + 5.5)  # day 7 review: overdue, its end unknown -> assumed late (7 d)
    assert moved == [(8, 10)]  # clear at 2 + 7 + 0.05: the next start is day 10
    # day 9: past the late end too, it will still not end within the notice -> clear after day 10;
    # day 10: the real end (day 11) is inside the notice -> clear at 11.05, the start goes to day 12
    env.run(until=first.day + 8.5)
    assert moved == [(8, 10), (10, 11), (11, 12)] and second.day == 12 and second.reschedules == 3
    assert second.aph_day == 11 and not second.collected
    _check_calendars(plan)


def test_monthly_quota_counts_calendar_months() -> None:
    q = MonthBook(2, dt.date(2027, 1, 4))  # day 27 is 31 January, day 28 is 1 February
    for day in (0, 27):
        assert q.free(day)
        q.book(day)
    assert not q.free(5) and q.free(28)
    q.cancel(27)
    assert q.free(5)


def test_planning_duration_is_the_quantile_and_leaves_run_streams_alone() -> None:
    from celltx_mfg.distributions import Triangular

    tri = Triangular(dist="triangular", low=7, mode=8, high=10.5)
    # triangular CDF above the mode: 1 - (high - x)^2 / ((high - low)(high - mode))
    assert slotplan.planning_duration(tri, 0.9) == pytest.approx(10.5 - math.sqrt(0.1 * 3.5 * 2.5), abs=0.05)
    assert slotplan.planning_duration(fixed_dist(3.0), 0.5) == 3.0


def fixed_dist(v: float) -> Any:
    from celltx_mfg.distributions import fixed as fx

    return fx(v)


# --------------------------------------------------------------------------- through the engine
def _plant(csv: Path, **booking: Any) -> dict[str, Any]:
    """Two suites, weekday clinic, 24/7 plant staff; expansion uniform 4-10 d planned at its 20th
    percentile, so projections often grow while a batch runs."""
    return {
        "name": "overrun_plant", "horizon_days": 240, "warmup_days": 0, "seed": 3,
        "demand": {"referrals_csv": str(csv)},
        "sites": [{"name": "clinic", "apheresis_per_day": 2, "apheresis_duration": fixed(0.25),
                   "inbound_transit": fixed(0.5), "outbound_transit": fixed(1.0), "infusion_slots_per_day": 5,
                   "lymphodepletion": fixed(3.0), "calendar": "clinic"}],
        "booking": {"mode": "slot", "starts_per_day": 2, "start_calendar": "always", "horizon_days": 60,
                    "priority": "fifo", "apheresis_lead_days": 1, "max_attempts": 2, "plan_quantile": 0.2,
                    "progress_notice_days": 3, **booking},
        "calendars": {"always": ALWAYS, "clinic": {"shifts": [{"start_hour": 8, "hours": 9}], "days": WEEKDAYS}},
        "resources": {"suites": 2, "incubators": 4, "operators": {"count": 10, "calendar": "always"},
                      "qc_analysts": {"count": 5, "calendar": "always"},
                      "qa_reviewers": {"count": 5, "calendar": "always"}},
        "products": {"cart": {"steps": [
            {"name": "activation", "duration": fixed(0.2), "open": True, "uses": ["suite"],
             "hold_until": {"suite": "harvest"}, "operators": 1},
            {"name": "expansion", "duration": {"dist": "uniform", "low": 4, "high": 10}, "uses": ["incubator"]},
            {"name": "harvest", "duration": fixed(0.2), "open": True, "operators": 1},
        ]}},
        "qc": {"tests": [{"name": "endotoxin", "duration": fixed(0.25), "hands_on_hours": 1}]},
        "release": {"policy": "full", "qa_review_hours": 2, "qa_review_elapsed": fixed(0.5)},
        "gmp": {"line_clearance": fixed(0.05), "clearance_operators": 1, "starting_material": "fresh",
                "fresh_hold_limit_hours": 48},
    }


def _referrals(path: Path, days: list[float]) -> Path:
    path.write_text("day\n" + "".join(f"{d}\n" for d in days), encoding="utf-8")
    return path


def test_an_overrun_reschedules_a_start_before_collection(tmp_path: Path) -> None:
    csv = _referrals(tmp_path / "r.csv", [i * 3.1 for i in range(45)])
    sc = scenario_from_dict(_plant(csv))[0]
    rec = simulate(sc)
    moves = [u for u in rec.resource_uses if u.kind == "manufacturing_slot" and u.activity == "rescheduled"]
    assert len(moves) >= 3, "expansions longer than planned must move later starts"
    batches = {b.batch_no: b for b in rec.batches}
    for u in moves:
        b = batches[u.batch_no]
        assert u.start == u.end  # the start given up, no occupancy
        assert b.slot_day is not None and b.slot_day > u.start  # moved later, the batch has its new day
        if b.apheresis_start is not None:
            assert b.apheresis_start > u.requested  # moved before it was collected
    holds = [d for d in rec.deviations if d.kind == "starting_material_hold_exceeded"]
    assert not holds, [d.detail for d in holds]  # nothing collected and then discarded
    k = analysis.kpis(rec.frames(), sc.horizon_days, sc.warmup_days)
    assert k["slot_reschedules"] == len({(u.batch_no, u.requested, u.start) for u in moves})
    assert k["hold_losses_by_cause"] == {}


def test_hold_losses_are_reported_by_cause(tmp_path: Path) -> None:
    """Courier delays longer than the hold: the loss is there, named transit_delay, counted by cause."""
    csv = _referrals(tmp_path / "r.csv", [i * 5.0 for i in range(20)])
    d = _plant(csv)
    d["sites"][0]["inbound_transit"] = {"dist": "uniform", "low": 0.5, "high": 3.5}
    sc = scenario_from_dict(d)[0]
    rec = simulate(sc)
    holds = [x for x in rec.deviations if x.kind == "starting_material_hold_exceeded"]
    assert holds and all(x.detail.endswith("; cause: transit_delay") for x in holds)
    k = analysis.kpis(rec.frames(), sc.horizon_days, sc.warmup_days)
    cohort_holds = sum(1 for x in holds if x.coi is not None)
    assert k["hold_losses_by_cause"] == {"transit_delay": cohort_holds}
    assert analysis.get_path(k, "hold_losses_by_cause.suite_lost_late") == 0  # a closed count group


def test_a_centre_with_two_slots_a_month_gets_two_starts_a_month(tmp_path: Path) -> None:
    csv = _referrals(tmp_path / "r.csv", [i * 1.0 for i in range(30)])
    d = _plant(csv)
    d["sites"][0]["slots_per_month"] = 2
    d["resources"]["suites"] = 6
    sc = scenario_from_dict(d)[0]
    rec = simulate(sc)
    start = sc.start_date
    by_month = Counter((start + dt.timedelta(days=int(b.slot_day))).strftime("%Y-%m")
                       for b in rec.batches if b.slot_day is not None)
    assert by_month and max(by_month.values()) == 2 and len(by_month) >= 6


def test_remanufacture_share_zero_recollects_nobody(tmp_path: Path) -> None:
    csv = _referrals(tmp_path / "r.csv", [i * 3.0 for i in range(40)])
    d = _plant(csv)
    d["products"]["cart"]["steps"][1]["failure"] = {"probability": 0.5, "consequence": "recollect"}
    everyone = simulate(scenario_from_dict(d)[0])
    d["booking"]["remanufacture"] = {"share": 0.0}
    nobody = simulate(scenario_from_dict(d)[0])
    assert max(p.attempts for p in everyone.patients) == 2
    assert max(p.attempts for p in nobody.patients) == 1
    failed = [p for p in nobody.patients if p.status == "lost" and p.lost_reason == "manufacturing_failure"]
    assert len(failed) >= 10


def _demand_plus_50(**booking: Any) -> Any:
    _, text = load_scenario(ROOT / "scenarios" / "demand_plus_50.yaml")
    data = yaml.safe_load(text)
    data["booking"].update(booking)
    return parse_text(yaml.safe_dump(data))


def test_urgent_reserve_halves_urgent_patients_slot_wait_at_plus_50() -> None:
    sc = _demand_plus_50(urgent_reserve={"share": 0.3, "release_days": 7})
    waits: dict[str, list[float]] = {"urgent": [], "standard": []}
    for r in range(4):
        rec = simulate(sc, replication=r)
        for p in rec.patients:
            if sc.warmup_days <= p.referred < sc.horizon_days and p.first_apheresis is not None:
                waits[p.urgency].append(p.first_apheresis - p.referred)
    urgent, standard = np.mean(waits["urgent"]), np.mean(waits["standard"])
    assert urgent < 0.5 * standard, (urgent, standard)


def test_reserve_and_quota_rules_are_validated() -> None:
    _, text = load_scenario(ROOT / "scenarios" / "baseline.yaml")
    data = yaml.safe_load(text)
    data["booking"]["urgent_reserve"] = {"share": 0.3, "classes": ["critical"]}
    data["booking"]["remanufacture"] = {"share": 1.5, "priority": "last"}
    with pytest.raises(ScenarioError) as e:
        parse_text(yaml.safe_dump(data), "b.yaml")
    problems = {p[0]: p[1] for p in e.value.problems}
    assert "less than or equal to 1" in problems["booking.remanufacture.share"]
    assert "'first' or 'by_urgency'" in problems["booking.remanufacture.priority"]
    data["booking"]["remanufacture"] = {"share": 0.5}
    with pytest.raises(ScenarioError) as e:
        parse_text(yaml.safe_dump(data), "b.yaml")
    assert e.value.problems == [("booking.urgent_reserve.classes",
                                 "unknown urgency class 'critical'; demand.urgency_mix has ['standard', 'urgent']",
                                 e.value.problems[0][2])]
    _, text = load_scenario(ROOT / "scenarios" / "collect_then_queue.yaml")
    queue = yaml.safe_load(text)
    queue["sites"][0]["slots_per_month"] = 2
    with pytest.raises(ScenarioError) as e:
        parse_text(yaml.safe_dump(queue), "q.yaml")
    name = queue["sites"][0]["name"]
    assert (f"sites.{name}.slots_per_month", "needs booking.mode: slot (collect_then_queue books no starts)",
            e.value.problems[0][2]) in e.value.problems
