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
    (tmp_path / "ref.csv").write_text("date\n2027-01-04\n2027-01-06T12:00:00\n")
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


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return tmp_path / name


def test_what_if_changes_a_distribution_family(tmp_path: Path) -> None:
    """A mapping with another `dist` replaces the base's distribution whole; the same `dist` merges."""
    (tmp_path / "baseline.yaml").write_text((SCENARIOS / "baseline.yaml").read_text())
    what_if = {"base": "baseline.yaml", "name": "fixed_clearance",
               "gmp": {"line_clearance": {"dist": "fixed", "value": 0.05}}}
    sc, text = load_scenario(_write(tmp_path, what_if, "w.yaml"))
    assert sc.gmp.line_clearance.dist == "fixed" and sc.gmp.line_clearance.mean() == 0.05
    assert "low" not in yaml.safe_load(text)["gmp"]["line_clearance"]
    what_if["gmp"] = {"line_clearance": {"dist": "triangular", "high": 0.1}}  # same family: low, mode kept
    sc, _ = load_scenario(_write(tmp_path, what_if, "w.yaml"))
    lc = sc.gmp.line_clearance
    assert (lc.low, lc.mode, lc.high) == (0.035, 0.05, 0.1)


def test_referral_log_names_site_product_urgency(tmp_path: Path) -> None:
    from celltx_mfg.config import Referral, scenario_referrals

    d = _base()
    d["demand"]["referrals_csv"] = "ref.csv"
    (tmp_path / "ref.csv").write_text("day,site,product,urgency\n1,site_east,car_t_lenti,urgent\n2,,,\n")
    sc, _ = load_scenario(_write(tmp_path, d))
    assert scenario_referrals(sc) == [Referral(1.0, "site_east", "car_t_lenti", "urgent"), Referral(2.0)]
    for bad, needle in (("day,site\n1,site_nowhere\n", "unknown site 'site_nowhere'; the scenario's: site_north"),
                        ("day,urgency\n1,critical\n", "line 2: unknown urgency 'critical'"),
                        ("day,Site\n1,site_east\n", "unknown column(s) ['Site']; allowed: day, date, site"),
                        ("day,note\n1,first\n", "unknown column(s) ['note']")):
        (tmp_path / "ref.csv").write_text(bad)
        with pytest.raises(ScenarioError) as e:
            load_scenario(tmp_path / "s.yaml")
        assert needle in e.value.render() and e.value.problems[0][0] == "demand.referrals_csv"


def test_referral_log_columns_reach_the_patients(tmp_path: Path) -> None:
    """Every patient of a logged referral has the site, product and urgency its row names."""
    from celltx_mfg.simulate import simulate

    d = _base()
    d.update(horizon_days=30, warmup_days=0)
    d["demand"] = {**d["demand"], "per_year": 0, "referrals_csv": "ref.csv", "dropout_per_day": 0.0}
    rows = [(i * 0.5, ["site_north", "site_east"][i % 2], ["standard", "urgent"][i % 3 == 0]) for i in range(30)]
    (tmp_path / "ref.csv").write_text("day,site,urgency\n" + "".join(f"{t},{s},{u}\n" for t, s, u in rows))
    sc, _ = load_scenario(_write(tmp_path, d))
    rec = simulate(sc)
    got = [(p.referred, p.site, p.urgency) for p in rec.patients]
    assert got == [(float(t), s, u) for t, s, u in rows]


def test_demand_window(tmp_path: Path) -> None:
    """No referral outside [first_referral_day, last_referral_day]; inside it, the same arrival times as
    without a window (drawn arrivals are skipped, not shifted)."""
    from celltx_mfg.simulate import simulate

    d = _base()
    d.update(horizon_days=200, warmup_days=0)
    plain = [p.referred for p in simulate(parse_text(yaml.safe_dump(d))).patients]
    d["demand"].update(first_referral_day=40, last_referral_day=120.5)
    windowed = [p.referred for p in simulate(parse_text(yaml.safe_dump(d))).patients]
    assert windowed == [t for t in plain if 40 <= t <= 120.5] and len(windowed) > 50
    d["demand"].update(first_referral_day=50, last_referral_day=10)
    assert ("demand.last_referral_day", "10 is before demand.first_referral_day (50)") in _problems(d)
