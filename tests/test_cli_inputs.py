"""Inputs that mislead (issue 10): misspelt KPI paths, repeated run ids and out-of-range numbers are
exit 2 with a message, before anything is simulated; valid input behaves as before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg import analysis
from celltx_mfg.cli import app
from celltx_mfg.cli_common import cap_jobs

from .conftest import short_baseline_file

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_baseline_file(tmp_path_factory.mktemp("sc"), horizon=60, warmup=10)


def _bad(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in result.output, (n, result.output)


# ------------------------------------------------------------------------------------- KPI paths
def test_get_path_absent_count_member_reads_zero_only_when_allowed() -> None:
    k = {"lost_by_stage": {}, "failed_by_reason": {}, "deviations": {"minor": 1}}
    assert analysis.get_path(k, "lost_by_stage.manufacturing") == 0
    assert analysis.get_path(k, "failed_by_reason.expired") == 0
    assert analysis.get_path(k, "failed_by_reason.transduction_failure") == 0
    with pytest.raises(ValueError, match="manufacturing"):
        analysis.get_path(k, "lost_by_stage.manufacturng")
    with pytest.raises(ValueError, match="oos_rejected"):
        analysis.get_path(k, "failed_by_reason.oos")
    with pytest.raises(ValueError, match="minor, major, critical"):
        analysis.get_path(k, "deviations.severe")


def test_check_require_typo_in_count_group_is_exit_2_listing_allowed(small: Path) -> None:
    r = runner.invoke(app, ["check", str(small), "-r", "1", "--require", "lost_by_stage.manufacturng<=0"])
    _bad(r, "lost_by_stage.manufacturing", "waiting_for_suite")
    r = runner.invoke(app, ["check", str(small), "-r", "1", "--require", "failed_by_reason.oos<=0"])
    _bad(r, "oos_rejected", "expired")


def test_check_require_unknown_top_level_path_suggests(small: Path) -> None:
    r = runner.invoke(app, ["check", str(small), "-r", "1", "--require", "patients_lsot<=3"])
    _bad(r, "patients_lost")


def test_check_require_allowed_absent_member_still_passes(small: Path) -> None:
    r = runner.invoke(app, ["check", str(small), "-r", "1", "--require", "failed_by_reason.oos_rejected>=0"])
    assert r.exit_code == 0, r.output


def test_sweep_unknown_kpi_is_exit_2(small: Path) -> None:
    r = runner.invoke(app, ["sweep", str(small), "--vary", "suites=2", "-r", "1", "--no-store", "--kpi", "nokpi"])
    _bad(r, "--kpi", "nokpi")


def test_compare_unknown_kpi_is_exit_2(small: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(small.read_text())
    data["name"] = "what_if"
    other = tmp_path / "what_if.yaml"
    other.write_text(yaml.safe_dump(data))
    r = runner.invoke(app, ["compare", str(small), str(other), "-r", "2", "--no-store", "--kpi",
                            "lost_by_stage.nowhere"])
    _bad(r, "lost_by_stage")


def test_plan_unknown_requirement_path_is_exit_2(small: Path) -> None:
    r = runner.invoke(app, ["plan", str(small), "--lever", "suites", "--require", "failed_by_reason.typo<=0",
                            "-r", "1"])
    _bad(r, "failed_by_reason")


# ------------------------------------------------------------------------------ run ids and bounds
@pytest.fixture(scope="module")
def stored(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("db") / "runs.db"
    r = runner.invoke(app, ["run", str(small), "--db", str(db), "-r", "2", "--json"])
    assert r.exit_code == 0, r.output
    return db


def test_kpis_repeated_run_id_counts_once(stored: Path) -> None:
    one = runner.invoke(app, ["kpis", "--db", str(stored), "--run", "1", "--json"])
    twice = runner.invoke(app, ["kpis", "--db", str(stored), "--run", "1", "--run", "1", "--json"])
    assert one.exit_code == twice.exit_code == 0, twice.output
    out = json.loads(twice.stdout)
    assert out["runs"] == [1]
    assert out["kpis"]["replications"] == 1
    assert out == json.loads(one.stdout)
    both = json.loads(runner.invoke(app, ["kpis", "--db", str(stored), "--run", "2", "--run", "1", "--run", "2",
                                          "--json"]).stdout)
    assert both["runs"] == [2, 1]


@pytest.mark.parametrize("cmd", ["kpis", "export", "verify"])
def test_huge_run_id_is_exit_2(stored: Path, tmp_path: Path, cmd: str) -> None:
    extra = ["--out", str(tmp_path / "x")] if cmd == "export" else []
    _bad(runner.invoke(app, [cmd, "--db", str(stored), "--run", "99999999999999999999", *extra]), "--run")


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_seed_out_of_range_is_exit_2(small: Path, seed: str) -> None:
    _bad(runner.invoke(app, ["run", str(small), "--db", ":memory:", "--seed", seed]),
         "--seed")


def test_seed_bounds_accept_edges(small: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", str(small), "--db", str(tmp_path / "s.db"), "--seed", str(2**63 - 1), "--json"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("argv", [
    ["run", "{f}", "-r", "10001"],
    ["check", "{f}", "-r", "10001", "--require", "patients_lost>=0"],
    ["sweep", "{f}", "--vary", "suites=2", "-r", "10001"],
    ["compare", "{f}", "{f}", "-r", "10001"],
    ["plan", "{f}", "--lever", "suites", "--require", "patients_lost>=0", "-r", "10001"],
    ["bottleneck", "{f}", "-r", "10001"],
])
def test_replications_above_scenario_cap_is_exit_2(small: Path, argv: list[str]) -> None:
    _bad(runner.invoke(app, [a.format(f=small) for a in argv]), "10000")


def test_jobs_capped_at_tasks_with_a_note(small: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", str(small), "--db", str(tmp_path / "j.db"), "-r", "1", "--jobs", "64", "--json"])
    assert r.exit_code == 0, r.output
    assert "capped at 1" in r.stderr
    json.loads(r.stdout)


def test_cap_jobs_rules() -> None:
    assert cap_jobs(1, 5) == 1
    assert cap_jobs(8, 3, "ray") == 3
    assert cap_jobs(10**6, 10**9, "local") == (os.cpu_count() or 1)
    assert cap_jobs(500, 10**9, "ray") == 500  # a Ray cluster is not this machine
