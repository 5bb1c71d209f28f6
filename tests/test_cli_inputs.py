"""Inputs that mislead (issue 10): misspelt KPI paths, repeated run ids and out-of-range numbers are
exit 2 with a message, before anything is simulated; valid input behaves as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg import analysis
from celltx_mfg.cli import app

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
