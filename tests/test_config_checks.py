"""Each cross-field check of config.CROSS_CHECKS alone: the baseline passes it, one edit fails it with the
exact path and message the user sees.

Failing scenarios are built with ``model_copy(update=...)``, which skips validation, so a check can be
shown a scenario the full validator would refuse.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
import yaml
from pydantic import BaseModel

from celltx_mfg.config import (
    CROSS_CHECKS,
    STEP_CHECKS,
    CrossProblem,
    Scenario,
    ScenarioError,
    check_calendars,
    check_clearance_operators,
    check_conditional_tests,
    check_dedicated_suites,
    check_negative_donors_have_suites,
    check_product_mix,
    check_qc_qa_staffed,
    check_queue_needs_cryopreserved,
    check_segregation,
    check_starts_offered,
    check_step_equipment,
    check_step_operators,
    check_step_room,
    check_steps,
    check_unique_sites,
    check_urgency_order,
    check_warmup,
    has_demand,
    load_scenario,
    parse_text,
)

from .conftest import SCENARIOS

M = TypeVar("M", bound=BaseModel)
BASE: Scenario = load_scenario(SCENARIOS / "baseline.yaml")[0]
PROC = BASE.products["car_t_lenti"]
CALENDARS = "['clinic', 'day_shift', 'extended', 'plant_days']"


def edit(model: M, **changes: Any) -> M:
    return model.model_copy(update=changes)


def resources(**changes: Any) -> Scenario:
    return edit(BASE, resources=edit(BASE.resources, **changes))


def demand(**changes: Any) -> Scenario:
    return edit(BASE, demand=edit(BASE.demand, **changes))


def booking(**changes: Any) -> Scenario:
    return edit(BASE, booking=edit(BASE.booking, **changes))


def gmp(**changes: Any) -> Scenario:
    return edit(BASE, gmp=edit(BASE.gmp, **changes))


def test_baseline_passes_every_check() -> None:
    assert [p for check in CROSS_CHECKS for p in check(BASE)] == []


def test_problem_line_is_path_then_message_or_a_bare_sentence() -> None:
    assert CrossProblem("sites", "names must be unique: []").line() == "sites: names must be unique: []"
    assert CrossProblem("", "every suite is dedicated").line() == "every suite is dedicated"


def test_has_demand() -> None:
    assert has_demand(BASE)
    assert not has_demand(demand(per_year=0))
    assert has_demand(demand(per_year=0, referrals_csv="log.csv"))


def test_check_warmup() -> None:
    assert check_warmup(edit(BASE, warmup_days=364.0)) == []
    assert check_warmup(edit(BASE, warmup_days=365.0)) == [
        CrossProblem("", "warmup_days (365.0) must be < horizon_days (365.0)")
    ]


def test_check_calendars() -> None:
    assert check_calendars(BASE) == []
    sc = edit(
        resources(qa_reviewers=edit(BASE.resources.qa_reviewers, calendar="nights")),
        sites=[edit(BASE.sites[0], calendar="weekend"), *BASE.sites[1:]],
    )
    assert check_calendars(sc) == [
        CrossProblem("resources.qa_reviewers.calendar", f"unknown calendar 'nights'; defined: {CALENDARS}"),
        CrossProblem("sites.site_north.calendar", f"unknown calendar 'weekend'; defined: {CALENDARS}"),
    ]


def test_check_unique_sites() -> None:
    assert check_unique_sites(BASE) == []
    sc = edit(BASE, sites=[BASE.sites[0], BASE.sites[0]])
    assert check_unique_sites(sc) == [CrossProblem("sites", "names must be unique, repeated: ['site_north']")]


def test_check_product_mix() -> None:
    assert check_product_mix(demand(product_mix={"car_t_lenti": 1.0})) == []
    assert check_product_mix(demand(product_mix={"car_t_lenti": 1.0, "car_t_gamma": 1.0})) == [
        CrossProblem("demand.product_mix", "unknown product 'car_t_gamma'; products: ['car_t_lenti']")
    ]


def test_check_urgency_order() -> None:
    assert check_urgency_order(edit(BASE, booking=edit(BASE.booking, priority="fifo", urgency_order=[]))) == []
    assert check_urgency_order(booking(urgency_order=["urgent"])) == [
        CrossProblem("demand.urgency_mix", "class 'standard' missing from booking.urgency_order")
    ]


def test_check_dedicated_suites() -> None:
    assert check_dedicated_suites(resources(dedicated_suites=20)) == []
    assert check_dedicated_suites(resources(dedicated_suites=21)) == [
        CrossProblem("", "resources.dedicated_suites (21) > suites (20)")
    ]


def test_check_segregation() -> None:
    assert check_segregation(demand(infectious_fraction=0.0)) == []
    assert check_segregation(resources(dedicated_suites=0)) == [
        CrossProblem("", "demand.infectious_fraction > 0 needs resources.dedicated_suites >= 1 (GMP segregation)")
    ]


def test_check_negative_donors_have_suites() -> None:
    all_dedicated = resources(dedicated_suites=20)
    all_positive = edit(all_dedicated, demand=edit(BASE.demand, infectious_fraction=1.0))
    assert check_negative_donors_have_suites(all_positive) == []
    assert check_negative_donors_have_suites(resources(suites=0, dedicated_suites=0)) == []
    assert check_negative_donors_have_suites(all_dedicated) == [
        CrossProblem("", "every suite is dedicated, so infectious-marker-negative donors have none")
    ]


def test_check_step_equipment() -> None:
    no_incubators = resources(incubators=0)
    assert check_step_equipment(no_incubators, "car_t_lenti", PROC, 0) == []  # activation uses a suite
    assert check_step_equipment(edit(no_incubators, demand=edit(BASE.demand, per_year=0)), "car_t_lenti", PROC, 1) == []
    assert check_step_equipment(no_incubators, "car_t_lenti", PROC, 1) == [
        CrossProblem("products.car_t_lenti.steps.activation_culture.uses", "'incubator' but resources has 0 of them")
    ]


def test_check_step_operators() -> None:
    one_operator = resources(operators=edit(BASE.resources.operators, count=1))
    assert check_step_operators(one_operator, "car_t_lenti", PROC, 1) == []  # hands-off step
    assert check_step_operators(one_operator, "car_t_lenti", PROC, 0) == [
        CrossProblem("products.car_t_lenti.steps.activation.operators", "needs 2, only 1 on shift")
    ]


def test_check_step_room() -> None:
    separate = gmp(closed_steps_share_room=False)
    assert check_step_room(BASE, "car_t_lenti", PROC, 5) == []
    assert check_step_room(separate, "car_t_lenti", PROC, 1) == []  # the suite is held from activation
    assert check_step_room(separate, "car_t_lenti", PROC, 5) == [
        CrossProblem(
            "products.car_t_lenti.steps.cryopreservation",
            "gmp.closed_steps_share_room is false, so a closed step must run in a suite",
        )
    ]


def test_check_steps_keeps_each_steps_problems_together() -> None:
    assert STEP_CHECKS == (check_step_equipment, check_step_operators, check_step_room)
    assert check_steps(BASE) == []
    sc = resources(incubators=0, operators=edit(BASE.resources.operators, count=1))
    steps = "products.car_t_lenti.steps"
    assert check_steps(sc) == [
        CrossProblem(f"{steps}.activation.operators", "needs 2, only 1 on shift"),
        CrossProblem(f"{steps}.activation_culture.uses", "'incubator' but resources has 0 of them"),
        CrossProblem(f"{steps}.transduction.operators", "needs 2, only 1 on shift"),
        CrossProblem(f"{steps}.expansion.uses", "'incubator' but resources has 0 of them"),
        CrossProblem(f"{steps}.harvest_formulation.operators", "needs 2, only 1 on shift"),
    ]


def test_check_clearance_operators() -> None:
    assert check_clearance_operators(gmp(clearance_operators=10)) == []
    assert check_clearance_operators(gmp(clearance_operators=11)) == [
        CrossProblem("", "gmp.clearance_operators exceeds resources.operators.count")
    ]


def test_check_starts_offered() -> None:
    assert check_starts_offered(booking(starts_per_day=0, mode="collect_then_queue")) == []
    assert check_starts_offered(booking(starts_per_day=0)) == [
        CrossProblem("", "booking.starts_per_day is 0 with demand: no patient could ever start")
    ]


def test_check_qc_qa_staffed() -> None:
    no_one = resources(
        qc_analysts=edit(BASE.resources.qc_analysts, count=0), qa_reviewers=edit(BASE.resources.qa_reviewers, count=0)
    )
    assert check_qc_qa_staffed(edit(no_one, demand=edit(BASE.demand, per_year=0))) == []
    assert check_qc_qa_staffed(no_one) == [
        CrossProblem("", "resources.qc_analysts.count is 0 with demand: no batch could be tested"),
        CrossProblem("", "resources.qa_reviewers.count is 0 with demand: no batch could be released"),
    ]


def test_check_conditional_tests() -> None:
    release = BASE.release
    assert check_conditional_tests(edit(BASE, release=edit(release, conditional_after=["mycoplasma"]))) == []
    tests = [t.name for t in BASE.qc.tests]
    assert check_conditional_tests(edit(BASE, release=edit(release, conditional_after=["mycoplasma", "bet"]))) == [
        CrossProblem("release.conditional_after", f"unknown test 'bet'; tests: {tests}")
    ]


def test_check_queue_needs_cryopreserved() -> None:
    queue = booking(mode="collect_then_queue")
    assert check_queue_needs_cryopreserved(edit(queue, gmp=edit(BASE.gmp, starting_material="cryopreserved"))) == []
    assert check_queue_needs_cryopreserved(queue) == [
        CrossProblem("", "booking.mode collect_then_queue needs gmp.starting_material: cryopreserved")
    ]


def _problems(edits: dict[str, dict[str, Any]], **top: Any) -> list[tuple[str, str]]:
    data = yaml.safe_load(load_scenario(SCENARIOS / "baseline.yaml")[1])
    for section, changes in edits.items():
        data[section].update(changes)
    data.update(top)
    with pytest.raises(ScenarioError) as e:
        parse_text(yaml.safe_dump(data, sort_keys=False), "x.yaml")
    return [(loc, msg) for loc, msg, _ in e.value.problems]


def test_report_lists_problems_in_registry_order_with_their_paths() -> None:
    """End to end: the validator's report reaches ScenarioError as (path, message); a sentence has no path."""
    edits = {"booking": {"mode": "collect_then_queue"}, "resources": {"dedicated_suites": 0}}
    assert _problems(edits, warmup_days=400) == [
        ("", "warmup_days (400.0) must be < horizon_days (365.0)"),
        ("", "demand.infectious_fraction > 0 needs resources.dedicated_suites >= 1 (GMP segregation)"),
        ("", "booking.mode collect_then_queue needs gmp.starting_material: cryopreserved"),
    ]
    assert _problems({"release": {"conditional_after": ["bet"]}}) == [
        ("release.conditional_after", f"unknown test 'bet'; tests: {[t.name for t in BASE.qc.tests]}")
    ]
