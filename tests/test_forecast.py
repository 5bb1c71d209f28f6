"""The forecast engine: started from a plant state, it is the model; from an empty plant it is a plain run."""

from __future__ import annotations

import json
import math

import pytest

from celltx_mfg.config import load_scenario
from celltx_mfg.distributions import replication_seed
from celltx_mfg.forecast.engine import forecast_scenario
from celltx_mfg.forecast.run import forecast_seed, run_forecast, simulate_from
from celltx_mfg.forecast.snapshot import run_until, state_of
from celltx_mfg.forecast.state import LiveStage, StartState
from celltx_mfg.model.journey import Model
from celltx_mfg.simulate import simulate

SCENARIO = "scenarios/baseline.yaml"


@pytest.fixture(scope="module")
def baseline() -> tuple:
    return load_scenario(SCENARIO)


def test_empty_plant_at_day_zero_is_a_plain_run(baseline: tuple) -> None:
    """Exact, not only in distribution: every record of the same seed is the same."""
    sc, _ = baseline
    plain = simulate(sc, seed=123)
    fc = simulate_from(forecast_scenario(sc, 0.0, sc.horizon_days), StartState(0.0), 123).rec
    assert fc.batches == plain.batches
    assert fc.steps == plain.steps
    assert fc.resource_uses == plain.resource_uses
    assert fc.qc_results == plain.qc_results
    assert len(fc.patients) == len(plain.patients) > 100


def test_forecast_seeds_are_not_the_runs_seeds() -> None:
    seeds = {forecast_seed(20271, r) for r in range(50)}
    assert len(seeds) == 50
    assert not seeds & {replication_seed(20271, r) for r in range(50)}
    assert forecast_seed(20271, 3) == forecast_seed(20271, 3)


def test_forecast_from_a_live_plant(baseline: tuple) -> None:
    """Every live patient is reported, by its coi, with ordered quantiles after as_of."""
    sc, text = baseline
    state = state_of(run_until(Model(sc, 7), 150.0))
    stages = {p.stage for p in state.patients}
    assert {LiveStage.MANUFACTURING, LiveStage.QC, LiveStage.SLOT_BOOKED} <= stages
    result = run_forecast(sc, text, state, replications=8, horizon_days=120, jobs=1)
    doc = json.loads(result.to_json())
    assert doc["command"] == "forecast" and doc["replications"] == 8
    assert sorted(p["coi"] for p in doc["patients"]) == sorted(p.coi for p in state.patients)
    for p in result.patients:
        assert 0.0 <= p.p_lost <= 1.0
        qs = [q for q in (p.release.p10, p.release.p50, p.release.p90) if q is not None]
        assert qs == sorted(qs)
        assert all(q >= result.as_of for q in qs) or p.stage in ("released", "outbound_transit", "awaiting_infusion")
    assert set(doc["capacity"]["resources"]) == {"suite", "qc_analysts", "qa_reviewers"}
    suite = doc["capacity"]["resources"]["suite"]
    assert len(suite) == 8 and all(0.0 <= w["p10"] <= w["p50"] <= w["p90"] <= 1.0 for w in suite)
    # patients at risk come first
    flags = [p["at_risk"] for p in doc["patients"]]
    assert flags == sorted(flags, reverse=True)


def test_jobs_do_not_change_the_forecast(baseline: tuple) -> None:
    sc, text = baseline
    state = state_of(run_until(Model(sc, 11), 120.0))
    one = run_forecast(sc, text, state, replications=4, horizon_days=60, jobs=1)
    two = run_forecast(sc, text, state, replications=4, horizon_days=60, jobs=2)
    assert one.to_json() == two.to_json()


@pytest.mark.slow
def test_empty_plant_forecast_matches_plain_runs_in_distribution(baseline: tuple) -> None:
    """Through the forecast's own seeds: infused counts of forecast and plain replications agree."""
    sc, _ = baseline
    fsc = forecast_scenario(sc, 0.0, sc.horizon_days)
    fc = [sum(p.infused is not None for p in simulate_from(fsc, StartState(0.0), forecast_seed(sc.seed, r)).patients)
          for r in range(12)]
    plain = [sum(p.status == "infused" for p in simulate(sc, replication=r).patients) for r in range(12)]
    mean_f, mean_p = sum(fc) / len(fc), sum(plain) / len(plain)
    sd = math.sqrt(sum((x - mean_p) ** 2 for x in plain + fc) / (len(plain) + len(fc) - 1))
    assert abs(mean_f - mean_p) < 3 * sd * math.sqrt(2 / len(fc))


def test_cli_forecast_bad_paths_exit_2(tmp_path: object) -> None:
    from typer.testing import CliRunner

    from celltx_mfg.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["forecast", "/no/such/state", "--scenario", SCENARIO])
    assert missing.exit_code == 2 and "no such plant-state" in missing.output
    bad_scenario = runner.invoke(app, ["forecast", str(tmp_path), "--scenario", "/no/such.yaml"])
    assert bad_scenario.exit_code == 2 and "Traceback" not in bad_scenario.output
