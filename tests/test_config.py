"""Scenario validation: every problem at once, with its field path, the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from celltx_mfg.config import ScenarioError, load_scenario, parse_text

from .conftest import SCENARIOS


def _base() -> dict:
    return yaml.safe_load(load_scenario(SCENARIOS / "baseline.yaml")[1])


def _problems(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ScenarioError) as e:
        parse_text(yaml.safe_dump(data), "x.yaml")
    return [(loc, msg) for loc, msg, _ in e.value.problems]


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_validate(path: Path) -> None:
    sc, text = load_scenario(path)
    assert sc.name and text


def test_what_if_inherits_and_merges_by_name() -> None:
    sc, text = load_scenario(SCENARIOS / "rapid_sterility.yaml")
    tests = {t.name: t for t in sc.qc.tests}
    assert tests["sterility"].duration.mean() == 7
    assert tests["sterility"].sterility and tests["sterility"].hands_on_hours == 2  # other fields kept
    assert len(tests) == 7
    assert "base:" not in text and "rapid_sterility" in text  # stored text is the merged whole


def test_all_errors_reported_at_once_with_paths() -> None:
    d = _base()
    d["horizon_days"] = "long"
    d["resources"]["suites"] = -1
    d["demand"]["dropout_per_day"] = 1.5
    d["sites"][0]["inbound_transit"] = {"dist": "weibull", "k": 1}
    d["products"]["car_t_lenti"]["steps"][0]["duration"] = {"dist": "fixed", "value": -2}
    d["resource"] = 3  # typo of a top-level key
    probs = dict(_problems(d))
    assert "horizon_days" in probs
    assert "resources.suites" in probs
    assert "demand.dropout_per_day" in probs
    assert any(k.startswith("sites.0.inbound_transit") and "dist" in v for k, v in probs.items())
    assert "products.car_t_lenti.steps.0.duration.value" in probs
    assert probs["resource"].startswith("unknown key")


def test_missing_field_named() -> None:
    d = _base()
    del d["qc"]
    assert ("qc", "required field is missing") in _problems(d)


def test_cross_reference_errors_each_with_its_path() -> None:
    d = _base()
    d["resources"]["operators"]["calendar"] = "nights"
    d["booking"]["start_calendar"] = "never"
    d["demand"]["product_mix"] = {"car_t_gamma": 1.0}
    probs = dict(_problems(d))
    assert "unknown calendar 'nights'" in probs["resources.operators.calendar"]
    assert "unknown calendar 'never'" in probs["booking.start_calendar"]
    assert "car_t_gamma" in probs["demand.product_mix"]


def test_hold_until_must_name_a_later_step() -> None:
    d = _base()
    d["products"]["car_t_lenti"]["steps"][0]["hold_until"] = {"suite": "nowhere"}
    msgs = " ".join(m for _, m in _problems(d))
    assert "unknown step 'nowhere'" in msgs


def test_open_step_needs_suite() -> None:
    d = _base()
    step = d["products"]["car_t_lenti"]["steps"][0]
    step["uses"] = []
    step.pop("hold_until")
    msgs = " ".join(m for _, m in _problems(d))
    assert "must use a suite" in msgs


def test_zero_capacity_with_demand_is_an_error() -> None:
    d = _base()
    d["resources"]["incubators"] = 0
    msgs = " ".join(m for _, m in _problems(d))
    assert "'incubator' but resources has 0" in msgs


def test_infectious_donors_need_a_dedicated_suite() -> None:
    d = _base()
    d["resources"]["dedicated_suites"] = 0
    assert any("dedicated_suites" in m for _, m in _problems(d))


def test_unreadable_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"name: \xff\xfe\x00")
    with pytest.raises(ScenarioError, match="not UTF-8"):
        load_scenario(tmp_path / "bin.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML: line"):
        load_scenario(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(tmp_path / "list.yaml")


def test_circular_base(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nname: b\n")
    with pytest.raises(ScenarioError, match="circular"):
        load_scenario(tmp_path / "a.yaml")


def test_referrals_from_csv_days_and_dates(tmp_path: Path) -> None:
    from celltx_mfg.config import scenario_referral_days

    d = _base()
    (tmp_path / "ref.csv").write_text("date,note\n2027-01-04,first\n2027-01-06T12:00:00,second\n")
    d["demand"]["referrals_csv"] = "ref.csv"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    sc, _ = load_scenario(tmp_path / "s.yaml")
    assert scenario_referral_days(sc) == [0.0, 2.5]
    (tmp_path / "ref.csv").write_text("day\n3\nsoon\n")
    with pytest.raises(ScenarioError, match="line 3"):
        load_scenario(tmp_path / "s.yaml")
    (tmp_path / "ref.csv").write_text("when\n3\n")
    with pytest.raises(ScenarioError, match="`day` or `date`"):
        load_scenario(tmp_path / "s.yaml")
