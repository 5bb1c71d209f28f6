"""Capacity plans over several costed levers: experiments/capacity.py and `celltx plan --lever ... --lever ...`.

The fast tests use the deterministic plant of test_experiments (referrals from a CSV, fixed step times,
no failures). There S suites offer S / planned_suite_days starts a day and the booking offers
``starts_per_day``: at two referrals a day and 10 planned suite-days the slot queue stays flat exactly
when S >= 20 AND starts_per_day >= 2, so the cheapest plan is known by construction: suites alone
cannot meet a slot-wait requirement while one start a day is booked, and starts alone cannot while
there are 12 suites.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from celltx_mfg import experiments as ex
from celltx_mfg.cli import app
from celltx_mfg.config import load_scenario, parse_text
from celltx_mfg.distributions import replication_seed
from celltx_mfg.experiments.capacity import MarginalValue, ranked, resolve_levers

from .conftest import SCENARIOS
from .test_experiments import deterministic_text, referrals_csv

WAIT = "wait_for_slot_days.mean<=2"
LEVERS = ["suites:cost=400000:max=30", "booking.starts_per_day:max=4", "operators:cost=95000"]


@pytest.fixture(scope="module")
def two_a_day(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two referrals a day, 12 suites (1.2 starts a day), ONE start a day booked, 20 operators."""
    csv = referrals_csv(tmp_path_factory.mktemp("cap") / "two.csv", 2)
    data = yaml.safe_load(deterministic_text(csv, planned_suite_days=10, horizon=150))
    data["booking"]["starts_per_day"] = 1
    return yaml.safe_dump(data, sort_keys=False)


def _plan(text: str, levers: list[Any], requirements: list[str], **kw: Any) -> ex.CapacityPlan:
    return ex.capacity_plan(parse_text(text), text, levers, requirements, replications=kw.pop("replications", 1), **kw)


def _at(result: ex.CapacityPlan, **values: Any) -> ex.Candidate:
    return next(c for c in result.candidates if all(c.values[k] == v for k, v in values.items()))


# ------------------------------------------------------------------------------------------- levers
def test_lever_spec_reads_cost_bounds_and_step() -> None:
    spec = ex.LeverSpec.parse("sites.*.apheresis_per_day:cost=150000:max=3:step=1")
    assert spec == ex.LeverSpec("sites.*.apheresis_per_day", 150000.0, None, 3, 1)
    assert ex.LeverSpec.parse("suites") == ex.LeverSpec("suites")  # no cost: a free lever
    assert ex.LeverSpec.parse(" suites : min=18 : cost=4e5 ").lo == 18


@pytest.mark.parametrize(("text", "words"), [
    ("suites:price=4", ["unknown option 'price'", "cost, min, max, step"]),
    ("suites:cost=4:cost=5", ["'cost' is given twice"]),
    ("suites:cost=lots", ["cost needs a number", "'lots'"]),
    ("suites:max", ["max needs a number"]),
    ("suites:cost=-1", ["cost must be >= 0"]),
    ("suites:step=0", ["step > 0"]),
    (":cost=4", ["no lever name"]),
])
def test_lever_spec_rejects_bad_options(text: str, words: list[str]) -> None:
    with pytest.raises(ex.ExperimentError) as e:
        ex.LeverSpec.parse(text)
    for w in words:
        assert w in str(e.value)


def test_levers_resolve_today_value_range_and_cost_per_item() -> None:
    sc, _ = load_scenario(SCENARIOS / "baseline.yaml")
    suites, chairs, ops = resolve_levers(sc, [ex.LeverSpec.parse(t) for t in (
        "suites:cost=400000", "sites.*.apheresis_per_day:cost=150000:max=3", "operators:min=8:max=12:step=2")])
    assert (suites.path, suites.base, suites.lo, suites.hi, suites.n_steps) == ("resources.suites", (20,), 20, 40, 20)
    assert suites.cost(22) == 800000 and suites.cost(19) == -400000  # a unit removed saves its cost
    assert chairs.base == (1, 1, 1, 1) and chairs.step_cost == 600000  # one more chair at each of 4 sites
    assert chairs.cost(3) == 4 * 2 * 150000
    assert [ops.at(k) for k in range(ops.n_steps + 1)] == [8, 10, 12] and ops.step_cost == 0


@pytest.mark.parametrize(("levers", "words"), [
    (["sites.*.share"], ["differ today", ":min="]),
    (["booking.mode"], ["needs a number", "'slot'"]),
    (["suites", "resources.suites:cost=1"], ["given twice"]),
    (["suites:min=30:max=25"], ["min (30) must be <= max (25)"]),
    (["resources.suite"], ["unknown key 'suite'", "suites"]),
    ([], ["at least one --lever"]),
])
def test_levers_are_checked_before_anything_runs(levers: list[str], words: list[str]) -> None:
    sc, _ = load_scenario(SCENARIOS / "baseline.yaml")
    with pytest.raises(ex.ExperimentError) as e:
        resolve_levers(sc, [ex.LeverSpec.parse(t) for t in levers])
    for w in words:
        assert w in str(e.value)


def test_ranking_puts_free_levers_first_then_value_per_cost() -> None:
    values = [MarginalValue("suites", 0.4, None, 400000), MarginalValue("chairs", 0.3, None, 150000),
              MarginalValue("starts", 0.01, None, 0), MarginalValue("ops", 0.0, None, 95000),
              MarginalValue("qc", None, None, 1), MarginalValue("qa", -0.2, None, 1)]
    assert [v.lever for v in ranked(values)] == ["starts", "chairs", "suites"]  # no gain: not a way up


# ---------------------------------------------------------------------------------------- searches
def test_three_levers_meet_what_suites_alone_cannot_at_the_known_cheapest_cost(two_a_day: str) -> None:
    """Done-when of issue 9: suites alone cannot meet the requirement; the three-lever plan meets it with
    20 suites and 2 starts a day (operators untouched), cheaper than any single-lever candidate that
    met, and every one-step-cheaper neighbour was tried and failed."""
    suites_alone = _plan(two_a_day, ["suites:cost=400000:max=30"], [WAIT])
    assert suites_alone.outcome is ex.PlanOutcome.NOT_MET and suites_alone.chosen is None
    assert "up to its bound" in suites_alone.reason
    assert _at(suites_alone, suites=30).status is ex.PlanStatus.FAILS  # 30 suites were tried

    result = _plan(two_a_day, LEVERS, [WAIT])
    assert result.outcome is ex.PlanOutcome.MET and result.search_complete
    assert result.chosen is not None and result.chosen.values == {"suites": 20, "booking.starts_per_day": 2,
                                                                   "operators": 20}
    assert result.chosen.cost == 8 * 400000
    single = [c for c in result.candidates if c.meets and sum(1 for k in c.position if k) == 1]
    assert all(c.cost > result.chosen.cost for c in single)
    for cheaper in ({"suites": 19, "booking.starts_per_day": 2}, {"suites": 20, "booking.starts_per_day": 1}):
        assert _at(result, operators=20, **cheaper).status is ex.PlanStatus.FAILS
    assert result.evaluations == len(result.candidates) <= 25
    assert len({c.position for c in result.candidates}) == len(result.candidates)  # each tried once
    assert all(len(c.per_run) == 1 for c in result.candidates)
    first = result.guidance[0][1]  # at the start only a second start a day helps
    assert [mv.lever for mv in ranked(first)] == ["booking.starts_per_day"]


def test_a_band_between_too_little_and_too_much_is_not_jumped_over(tmp_path: Path) -> None:
    """Slot wait falls with suites, utilisation too: 'wait <= 2 and utilisation >= 0.85' holds at 20
    suites only (0.88 at 20, 0.838 at 21). Galloping 12, 13, 15, 19, 27, 40 fails everywhere (what the
    one-lever plan did before); the halved strides find 20, accepted on its own replication."""
    text = deterministic_text(referrals_csv(tmp_path / "r.csv", 2), planned_suite_days=10, horizon=150)
    result = ex.plan(parse_text(text), text, "suites", [WAIT, "utilisation.suite>=0.85"], lo=12, hi=40,
                     replications=1)
    assert result.value == 20
    ev = result.evidence.set_index("value")["status"]
    assert ev[19] == ev[21] == ev[27] == "fails" and ev[20] == "meets"
    assert list(ev[ev == "meets"].index) == [20]


def test_every_candidate_runs_the_same_replication_seeds(two_a_day: str, tmp_path: Path) -> None:
    from celltx_mfg.store import list_runs, open_store

    engine = open_store(str(tmp_path / "plan.db"))
    result = _plan(two_a_day, ["suites:cost=400000:min=19:max=21", "booking.starts_per_day:max=2"], [WAIT],
                   replications=2, engine=engine, jobs=2)
    runs = list_runs(engine)
    assert len(runs) == 2 * result.evaluations
    seeds = {(int(r.replication), int(r.seed)) for r in runs.itertuples()}
    assert seeds == {(r, replication_seed(7, r)) for r in (0, 1)}  # common random numbers across candidates
    assert set(runs["scenario"]) == {c.scenario.name for c in result.candidates if c.scenario is not None}


def test_budget_ends_the_search_with_a_clear_status(two_a_day: str) -> None:
    early = _plan(two_a_day, LEVERS, [WAIT], budget=5)
    assert early.outcome is ex.PlanOutcome.BUDGET_EXHAUSTED and early.evaluations == 5 and not early.search_complete
    assert "budget (5)" in early.reason
    late = _plan(two_a_day, LEVERS, [WAIT], budget=12)  # meets at #11, no room to look for cheaper
    assert late.outcome is ex.PlanOutcome.MET and not late.search_complete
    assert late.chosen is not None and late.chosen.cost > 8 * 400000 and "budget ended" in late.reason


def test_values_the_rules_reject_are_evidence_and_cost_no_budget(two_a_day: str) -> None:
    result = _plan(two_a_day, ["operators:min=0:max=2", "booking.starts_per_day:max=2"], [WAIT], budget=6)
    invalid = [c for c in result.candidates if c.status is ex.PlanStatus.INVALID]
    assert invalid and all("operators" in c.note and math.isinf(c.shortfall) for c in invalid)
    assert result.evaluations == len(result.candidates) - len(invalid)


def test_a_guide_from_elsewhere_steers_the_search(two_a_day: str) -> None:
    """The seam: a guide that ranks suites first and runs nothing itself. The search follows it, finds
    suites alone stall, tries each lever at its bound, and still ends at the cheapest plan."""
    calls: list[dict[str, Any]] = []

    def suites_first(candidate: ex.Candidate, search: ex.CapacitySearch) -> list[MarginalValue]:
        calls.append(candidate.values)
        return [MarginalValue("suites", 1.0, None, search.levers[0].step_cost)]

    result = _plan(two_a_day, LEVERS[:2], [WAIT], guide=suites_first)
    assert calls and calls[0] == {"suites": 12, "booking.starts_per_day": 1}
    assert not any(c.phase is ex.Phase.PROBE for c in result.candidates)
    assert any(c.phase is ex.Phase.STALL for c in result.candidates)
    assert result.chosen is not None and result.chosen.values == {"suites": 20, "booking.starts_per_day": 2}


def test_interrupt_returns_the_candidates_finished(two_a_day: str) -> None:
    def progress(done: int, total: int) -> None:
        if done == 3:  # inside the first probes, after the start candidate
            raise KeyboardInterrupt

    with pytest.raises(ex.ExperimentInterrupted) as e:
        _plan(two_a_day, LEVERS, [WAIT], progress=progress)
    partial = e.value.partial
    assert isinstance(partial, ex.CapacityPlan) and partial.outcome is ex.PlanOutcome.INTERRUPTED
    assert [c.phase for c in partial.candidates] == [ex.Phase.START] and not partial.met


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suites_max=st.integers(14, 26), starts_max=st.integers(1, 3), wait=st.sampled_from([1.0, 2.0, 10.0, 30.0]),
       budget=st.integers(1, 14))
def test_what_a_plan_reports_holds_whatever_the_bounds(two_a_day: str, suites_max: int, starts_max: int,
                                                       wait: float, budget: int) -> None:
    result = _plan(two_a_day, [f"suites:cost=400000:max={suites_max}", f"booking.starts_per_day:max={starts_max}"],
                   [f"wait_for_slot_days.mean<={wait}"], budget=budget)
    assert result.evaluations <= budget
    meeting = [c for c in result.candidates if c.meets]
    assert result.met == bool(meeting)
    if result.chosen is not None:
        assert result.chosen.meets and result.chosen.checks[0].actual <= wait  # on its own replication
        assert result.chosen.rank() == min(c.rank() for c in meeting)
    elif result.outcome is ex.PlanOutcome.NOT_MET:
        assert result.search_complete and result.reason
    else:
        assert result.outcome is ex.PlanOutcome.BUDGET_EXHAUSTED and result.evaluations == budget


@pytest.mark.slow
def test_demand_plus_50_needs_chairs_and_suites_together() -> None:
    """The shipped +50% demand: 40 suites alone leave the slot-wait p90 far above 40 days (apheresis
    binds), while a mix of chairs and suites meets it on its own replications."""
    sc, text = load_scenario(SCENARIOS / "demand_plus_50.yaml")
    req = ["wait_for_slot_days.p90<=40"]
    kw: dict[str, Any] = {"replications": 3, "source": str(SCENARIOS / "demand_plus_50.yaml"), "base_dir": SCENARIOS,
                          "jobs": 2}
    alone = ex.capacity_plan(sc, text, ["suites:cost=400000:max=40"], req, budget=12, **kw)
    assert not alone.met and _at(alone, suites=40).checks[0].actual > 45
    result = ex.capacity_plan(sc, text, ["suites:cost=400000:max=40", "sites.*.apheresis_per_day:cost=150000",
                                         "booking.starts_per_day"], req, budget=30, **kw)
    assert result.met and result.chosen is not None
    assert result.chosen.values["sites.*.apheresis_per_day"] == 2 and result.chosen.values["suites"] > 20
    single = [c for c in result.candidates if c.meets and sum(1 for k in c.position if k) == 1]
    assert all(c.cost > result.chosen.cost for c in single)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_plan_prints_levers_evidence_and_the_plan(two_a_day: str, tmp_path: Path) -> None:
    f = tmp_path / "two.yaml"
    f.write_text(two_a_day)
    res = CliRunner().invoke(app, ["plan", str(f), *(a for lv in LEVERS[:2] for a in ("--lever", lv)),
                                   "--require", WAIT, "-r", "1"])
    assert res.exit_code == 0, res.output
    assert "suites (resources.suites): 12..30 step 1, 400,000 per unit" in res.stdout
    assert "booking.starts_per_day (booking.starts_per_day): 1..4 step 1, free" in res.stdout
    assert "cheapest plan found: suites=20, booking.starts_per_day=2" in res.stdout
    assert "cost 3,200,000" in res.stdout and "marginal value of one step" in res.stdout

    out = CliRunner().invoke(app, ["plan", str(f), "--lever", "suites:cost=400000:max=30", "--require", WAIT,
                                   "-r", "1", "--json"])
    assert out.exit_code == 1
    obj = json.loads(out.stdout)
    assert obj["status"] == "not_met" and obj["chosen"] is None and obj["levers"][0]["max"] == 30


@pytest.mark.parametrize(("args", "words"), [
    (["--lever", "suites:costs=4"], ["--lever", "unknown option 'costs'"]),
    (["--lever", "suites:max=x"], ["--lever", "max needs a number"]),
    (["--lever", "booking.mode"], ["needs a number", "'slot'"]),
    (["--lever", "suites", "--budget", "0"], ["--budget"]),
])
def test_cli_plan_bad_levers_exit_2(two_a_day: str, tmp_path: Path, args: list[str], words: list[str]) -> None:
    f = tmp_path / "two.yaml"
    f.write_text(two_a_day)
    res = CliRunner().invoke(app, ["plan", str(f), *args, "--require", WAIT, "-r", "1"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output
