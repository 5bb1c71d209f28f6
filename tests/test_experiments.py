"""Experiments: levers, parallel determinism, common random numbers, interval coverage, capacity search,
sequential precision, Ctrl-C, and the `sweep` / `compare` / `plan` commands.

Two purpose-built plants keep every run well under 0.1 s:

* ``tiny``: the baseline plant shrunk to 150 days and 150 referrals a year (stochastic, realistic).
* ``deterministic``: one clinic, one referral at 12:00 every day (from a referrals CSV), fixed step
  times, staff round the clock, no failures. Booking reserves a suite for ``planned_suite_days`` per
  start, so S suites offer S / planned_suite_days starts a day: with one referral a day the queue for
  slots grows without bound exactly when S < planned_suite_days. The smallest suite count that keeps
  the slot wait flat is therefore known in advance.
"""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from celltx_mfg import analysis
from celltx_mfg import experiments as ex
from celltx_mfg.cli_common import DB_OPTION
from celltx_mfg.cli_experiments import register
from celltx_mfg.config import ScenarioError, load_scenario, parse_text

from .conftest import SCENARIOS

TINY = {"horizon_days": 150, "warmup_days": 30, "demand.per_year": 150}


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, str]:
    _, text = load_scenario(SCENARIOS / "baseline.yaml")
    return ex.apply_overrides(text, TINY, name_suffix="")


def deterministic_text(csv: Path, planned_suite_days: float = 10, suites: int = 12, horizon: float = 200) -> str:
    always = {"shifts": [{"start_hour": 0, "hours": 24}], "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
    fixed = lambda v: {"dist": "fixed", "value": v}  # noqa: E731
    data = {
        "name": "deterministic_plant",
        "horizon_days": horizon,
        "warmup_days": 50,
        "seed": 7,
        "demand": {"referrals_csv": str(csv)},
        "sites": [{
            "name": "clinic_a", "apheresis_per_day": 4, "apheresis_duration": fixed(0.2),
            "inbound_transit": fixed(0.5), "outbound_transit": fixed(1), "infusion_slots_per_day": 4,
            "lymphodepletion": fixed(3), "calendar": "always",
        }],
        "booking": {"mode": "slot", "starts_per_day": 3, "start_calendar": "always", "horizon_days": 150,
                    "apheresis_lead_days": 1, "planned_suite_days": planned_suite_days, "max_attempts": 1},
        "calendars": {"always": always},
        "resources": {
            "suites": suites, "incubators": 0,
            "operators": {"count": 20, "calendar": "always"},
            "qc_analysts": {"count": 10, "calendar": "always"},
            "qa_reviewers": {"count": 10, "calendar": "always"},
        },
        "products": {"car_t": {"steps": [
            {"name": "activation", "duration": fixed(0.1), "open": True, "uses": ["suite"],
             "hold_until": {"suite": "harvest"}, "operators": 1},
            {"name": "expansion", "duration": fixed(8.5)},
            {"name": "harvest", "duration": fixed(0.1), "open": True, "operators": 1},
        ]}},
        "qc": {"tests": [{"name": "sterility", "duration": fixed(1), "hands_on_hours": 0.5, "sterility": True}]},
        "release": {"qa_review_hours": 1, "qa_review_elapsed": fixed(0.5)},
        "gmp": {"line_clearance": fixed(0.1)},
    }
    return yaml.safe_dump(data, sort_keys=False)


def referrals_csv(path: Path, per_day: int) -> Path:
    """``per_day`` referrals every day, evenly spaced (the first half a gap after midnight)."""
    path.write_text("day\n" + "".join(f"{d + (i + 0.5) / per_day:.4f}\n" for d in range(400) for i in range(per_day)))
    return path


@pytest.fixture(scope="module")
def daily_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return referrals_csv(tmp_path_factory.mktemp("referrals") / "daily.csv", 1)


def _no_ids(results: list[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [k for _, k in results]


# ------------------------------------------------------------------------------------------- levers
def test_levers_set_paths_rename_and_validate(tiny: tuple[Any, str]) -> None:
    _, text = tiny
    sc, new_text = ex.apply_overrides(text, {"suites": "4", "demand.per_year": "300", "operators": 12})
    assert sc.name == "baseline[suites=4,demand.per_year=300,operators=12]"
    assert (sc.resources.suites, sc.demand.per_year, sc.resources.operators.count) == (4, 300, 12)
    assert isinstance(yaml.safe_load(new_text)["resources"]["suites"], int)
    assert parse_text(new_text).resources.suites == 4  # the stored text reproduces the cell

    sc, _ = ex.apply_overrides(text, {"sites.*.apheresis_per_day": 3, "sites.site_east.share": "0.5",
                                      "products.car_t_lenti.steps.expansion.duration": "{dist: fixed, value: 8}",
                                      "booking.max_attempts": 3, "gmp.oos_policy": "reject"})
    assert [s.apheresis_per_day for s in sc.sites] == [3, 3, 3, 3]
    assert next(s for s in sc.sites if s.name == "site_east").share == 0.5
    assert sc.products["car_t_lenti"].steps[3].duration.mean() == 8
    assert sc.booking.max_attempts == 3 and sc.gmp.oos_policy == "reject"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"resources.suite": 4}, ["'resources.suite'", "suites", "dedicated_suites", "incubators"]),
        ({"sites.nowhere.share": 1}, ["nowhere", "site_north", "site_west"]),
        ({"resources.suites.count": 4}, ["single value"]),
        ({"suitez": 4}, ["unknown lever", "suites", "qc_analysts"]),
    ],
)
def test_unknown_lever_paths_name_the_path_and_valid_keys(tiny: tuple[Any, str], overrides: dict[str, Any],
                                                         words: list[str]) -> None:
    with pytest.raises(ex.ExperimentError) as e:
        ex.apply_overrides(tiny[1], overrides)
    for w in words:
        assert w in str(e.value)


def test_invalid_lever_value_is_a_scenario_error(tiny: tuple[Any, str]) -> None:
    with pytest.raises(ScenarioError) as e:
        ex.apply_overrides(tiny[1], {"suites": 0})
    assert "suites" in e.value.render()


def test_coerce_value() -> None:
    assert ex.coerce_value("4") == 4 and isinstance(ex.coerce_value("4"), int)
    assert ex.coerce_value("2.5") == 2.5
    assert ex.coerce_value("true") is True and ex.coerce_value("False") is False
    assert ex.coerce_value("fifo") == "fifo"
    assert ex.coerce_value("[1, 2]") == [1, 2]
    assert ex.coerce_value(7) == 7


# ------------------------------------------------------------------------- determinism and CRN
def test_sweep_is_identical_for_one_and_two_jobs_and_shares_random_numbers(tiny: tuple[Any, str]) -> None:
    sc, text = tiny
    cells = ex.grid(sc, text, {"suites": ["8", "12"], "demand.per_year": [120, 150]})
    assert [c.name for c in cells] == [
        "baseline[suites=8,demand.per_year=120]", "baseline[suites=8,demand.per_year=150]",
        "baseline[suites=12,demand.per_year=120]", "baseline[suites=12,demand.per_year=150]",
    ]
    one = ex.sweep(cells, replications=3, jobs=1)
    two = ex.sweep(cells, replications=3, jobs=2)
    assert [_no_ids(r) for r in one.runs] == [_no_ids(r) for r in two.runs]
    assert one.table.equals(two.table)
    assert list(one.table["replications"]) == [3, 3, 3, 3]
    # common random numbers: at equal demand, replication r sees the same referrals whatever the suites
    for r in range(3):
        assert one.runs[0][r][1]["patients_referred"] == one.runs[2][r][1]["patients_referred"]
        assert one.runs[1][r][1]["patients_referred"] == one.runs[3][r][1]["patients_referred"]
    # ... and different replications are different samples
    assert len({one.runs[1][r][1]["patients_referred"] for r in range(3)}) > 1
    # the table is the summary: mean and half-width of each KPI per cell
    k = [x["vein_to_vein_days"]["mean"] for _, x in one.runs[3]]
    row = one.table.iloc[3]
    assert row["vein_to_vein_days.mean"] == pytest.approx(np.mean(k))
    assert row["vein_to_vein_days.mean.ci95"] == pytest.approx(
        analysis.student_t_975(2) * np.std(k, ddof=1) / math.sqrt(3))


def test_runs_are_stored_in_replication_order_with_cell_labels(tiny: tuple[Any, str], tmp_path: Path) -> None:
    from celltx_mfg.store import list_runs, load_frames, open_store

    sc, text = tiny
    cells = ex.grid(sc, text, {"suites": [8, 12]})
    frames = []
    for jobs in (1, 2):
        engine = open_store(str(tmp_path / f"jobs{jobs}.db"))
        result = ex.sweep(cells, replications=2, jobs=jobs, engine=engine)
        runs = list_runs(engine)
        assert list(runs["id"]) == [rid for cell in result.runs for rid, _ in cell]
        assert list(runs["label"]) == [c.name for c in cells for _ in range(2)]
        assert list(runs["replication"]) == [0, 1, 0, 1]
        frames.append(load_frames(engine, list(runs["id"])))
        engine.dispose()
    for name in frames[0]:
        assert frames[0][name].equals(frames[1][name]), name


@pytest.mark.slow  # starting a local Ray takes several seconds
@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray is an optional extra (pip install 'celltx-mfg[ray]') and is not installed")
def test_ray_backend_matches_local(tiny: tuple[Any, str]) -> None:
    sc, text = tiny
    cells = ex.grid(sc, text, {"suites": [8, 12]})
    local = ex.sweep(cells, replications=2, jobs=1)
    ray = ex.sweep(cells, replications=2, jobs=2, backend="ray")
    assert [_no_ids(r) for r in local.runs] == [_no_ids(r) for r in ray.runs]


# ------------------------------------------------------------------------------------ statistics
def test_interval_coverage_of_a_known_mean(daily_csv: Path) -> None:
    """Poisson referrals at 365.25 a year: the cohort referred in a 20-day window has mean exactly 20.
    40 intervals from independent base seeds, 4 replications each, must cover 20 about 95% of the time
    (>= 34 of 40: P(fewer) < 0.4% for a true 95% interval) and be about as wide as theory says."""
    data = yaml.safe_load(deterministic_text(daily_csv, horizon=25))
    data["warmup_days"] = 5
    data["demand"] = {"per_year": 365.25}
    true_mean, n = 20.0, 4
    covered, widths = 0, []
    for i in range(40):
        data["seed"] = 1000 + i
        sc = parse_text(yaml.safe_dump(data))
        per_run = _no_ids(ex.run_replications(sc, yaml.safe_dump(data), n))
        mean = np.mean([k["patients_referred"] for k in per_run])
        hw = ex.half_widths(per_run, ["patients_referred"])["patients_referred"]
        assert hw == pytest.approx(analysis.summarise(per_run)["ci95"]["patients_referred"])
        covered += abs(mean - true_mean) <= hw
        widths.append(hw)
    assert covered >= 34, f"only {covered} of 40 intervals cover the true mean"
    c4 = math.sqrt(2 / (n - 1)) * math.gamma(n / 2) / math.gamma((n - 1) / 2)
    expected = analysis.student_t_975(n - 1) * c4 * math.sqrt(true_mean) / math.sqrt(n)
    assert np.mean(widths) == pytest.approx(expected, rel=0.2)


def test_paired_difference_interval() -> None:
    a = [10.0, 12.0, 11.0, 13.0]
    b = [11.0, 13.5, 12.0, 14.5]
    d = np.array(b) - np.array(a)
    res = ex.paired_difference(a, b)
    hw = analysis.student_t_975(3) * d.std(ddof=1) / 2
    assert res["difference"] == pytest.approx(1.25)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((1.25 - hw, 1.25 + hw))
    assert res["significant"] is True and res["pairs"] == 4
    assert ex.paired_difference([1.0, 2.0, 3.0], [1.5, 1.5, 3.0])["significant"] is False
    assert ex.paired_difference([1.0, None, 2.0], [2.0, 5.0, None])["pairs"] == 1


def test_compare_pairs_on_common_random_numbers(tiny: tuple[Any, str]) -> None:
    sc, text = tiny
    fewer = ex.apply_overrides(text, {"suites": 6})
    result = ex.compare([(sc, text), fewer], replications=4)
    rows = result.table.set_index("kpi")
    # same referrals replication by replication: the difference is exactly zero, not noise
    assert rows.loc["patients_referred", "difference"] == 0
    assert not rows.loc["patients_referred", "significant"]
    # 6 suites instead of 20 keep suites far busier, every replication
    util = rows.loc["utilisation.suite"]
    assert util["difference"] > 0 and util["significant"]
    per_a = [k["utilisation"]["suite"] for _, k in result.runs[0]]
    per_b = [k["utilisation"]["suite"] for _, k in result.runs[1]]
    assert util["difference"] == pytest.approx(np.mean(np.array(per_b) - np.array(per_a)))


# ------------------------------------------------------------------------------------------ plan
@pytest.mark.parametrize(("per_day", "planned_suite_days", "lo"), [(1, 9, 5), (1, 10, 5), (2, 10, 12)])
def test_plan_finds_the_known_smallest_suite_count(tmp_path: Path, per_day: int, planned_suite_days: int,
                                                   lo: int) -> None:
    """S suites offer S / planned_suite_days starts a day (the suite is physically busy 8.8 days, less
    than the plan): the slot queue stays flat iff S >= referrals a day x planned suite-days. (A start
    ``lo`` near the answer keeps hopelessly overloaded plants, slow to simulate, out of the test.)"""
    text = deterministic_text(referrals_csv(tmp_path / "r.csv", per_day), planned_suite_days=planned_suite_days,
                              horizon=150)
    answer = per_day * planned_suite_days
    result = ex.plan(parse_text(text), text, "suites", ["wait_for_slot_days.mean<=2"], lo=lo, hi=40,
                     replications=1)
    assert result.value == answer
    ev = result.evidence.set_index("value")
    assert ev.loc[answer, "status"] == "meets"
    assert ev.loc[answer - 1, "status"] == "fails"  # the value just below was tried and failed
    assert all((ev.index >= answer) == (ev["status"] == "meets"))
    assert len(ev) <= 9  # doubling strides, then trimmed back: not a scan of the range


def test_plan_reports_no_value_when_range_is_too_small(daily_csv: Path) -> None:
    text = deterministic_text(daily_csv)
    result = ex.plan(parse_text(text), text, "suites", ["wait_for_slot_days.mean<=2"], lo=6, hi=8, replications=1)
    assert result.value is None
    assert set(result.evidence["status"]) == {"fails"} and set(result.evidence["value"]) == {6, 7, 8}


def test_plan_rejects_bad_requirements(daily_csv: Path) -> None:
    text = deterministic_text(daily_csv)
    with pytest.raises(ex.ExperimentError, match="cannot parse requirement"):
        ex.plan(parse_text(text), text, "suites", ["wait for slot < 2"])
    with pytest.raises(ex.ExperimentError, match="wait_for_slot_days"):
        ex.plan(parse_text(text), text, "suites", ["wait_for_slot.mean<=2"])


# ------------------------------------------------------------------------------ sequential precision
def test_precision_stops_at_the_first_replication_count_meeting_the_target(tiny: tuple[Any, str]) -> None:
    sc, text = tiny
    target = {"vein_to_vein_days.mean": 0.3}
    one = ex.run_replications(sc, text, 5, precision=target, max_replications=40)
    two = ex.run_replications(sc, text, 5, jobs=2, precision=target, max_replications=40)
    assert _no_ids(one) == _no_ids(two)  # the stopping point does not depend on jobs
    n = len(one)
    assert 5 < n < 40
    hw = lambda m: ex.half_widths(_no_ids(one)[:m], list(target))["vein_to_vein_days.mean"]  # noqa: E731
    assert hw(n) <= 0.3 and all(hw(m) > 0.3 for m in range(5, n))
    assert _no_ids(one) == _no_ids(ex.run_replications(sc, text, n))  # the same runs as a fixed-N experiment
    capped = ex.run_replications(sc, text, 2, precision={"vein_to_vein_days.mean": 1e-6}, max_replications=5)
    assert len(capped) == 5
    with pytest.raises(ex.ExperimentError, match="vein_to_vein"):
        ex.run_replications(sc, text, 2, precision={"vein_to_vein.mean": 1.0})


# ------------------------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("jobs", [1, 2])
def test_interrupt_keeps_finished_runs_and_stops_the_pool(tiny: tuple[Any, str], tmp_path: Path, jobs: int) -> None:
    from celltx_mfg.store import list_runs, open_store

    sc, text = tiny
    engine = open_store(str(tmp_path / "stop.db"))

    def progress(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(ex.ExperimentInterrupted) as e:
        ex.run_replications(sc, text, 8, jobs=jobs, engine=engine, progress=progress)
    stored = list(list_runs(engine)["id"])
    assert stored == e.value.stored_run_ids and len(stored) >= 2
    assert [rid for rid, _ in e.value.partial][:2] == stored[:2]
    assert e.value.finished >= 2 and "interrupted after" in str(e.value)
    assert multiprocessing.active_children() == []  # the pool's workers are gone
    engine.dispose()


# ------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def cli(tmp_path: Path, tiny: tuple[Any, str]) -> tuple[typer.Typer, Path, Path]:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, like the real celltx app
        pass

    register(app)
    a = tmp_path / "a.yaml"
    a.write_text(tiny[1])
    b = tmp_path / "b.yaml"
    b.write_text("base: a.yaml\nname: fewer_suites\nresources: {suites: 6}\n")
    return app, a, b


def test_default_db_is_the_store_default() -> None:
    """Every command's --db default (one shared option) is the store's default database."""
    from celltx_mfg import store

    assert DB_OPTION.default == store.DEFAULT_DB


def test_cli_sweep_json_and_store(cli: tuple[typer.Typer, Path, Path], tmp_path: Path) -> None:
    app, a, _ = cli
    db = tmp_path / "runs.db"
    res = CliRunner().invoke(app, ["sweep", str(a), "--vary", "suites=8,12", "-r", "2", "--db", str(db), "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["command"] == "sweep" and obj["levers"] == ["suites"]
    assert [c["name"] for c in obj["cells"]] == ["baseline[suites=8]", "baseline[suites=12]"]
    assert [c["levers"] for c in obj["cells"]] == [{"suites": 8}, {"suites": 12}]
    assert all(c["replications"] == 2 and len(c["run_ids"]) == 2 for c in obj["cells"])
    assert obj["cells"][0]["kpis"]["vein_to_vein_days"]["mean"] > 0
    assert "vein_to_vein_days" in obj["cells"][0]["ci95"]
    assert res.stderr == ""  # silent with --json
    # without --json: a table on stdout
    res = CliRunner().invoke(app, ["sweep", str(a), "--vary", "suites=8", "-r", "2", "--no-store"])
    assert res.exit_code == 0 and "vein_to_vein_days.mean" in res.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--vary", "suites"], ["--vary", "LEVER=V1,V2"]),
        (["--vary", "suites=4,,6"], ["--vary", "LEVER=V1,V2"]),
        (["--vary", "suitez=4,6"], ["unknown lever", "suites"]),
        (["--vary", "resources.suite=4"], ["resources.suite", "valid keys"]),
        (["--precision", "vein_to_vein_days.mean"], ["--precision", "KPI=HALFWIDTH"]),
        (["--vary", "suites=0"], ["suites"]),
    ],
)
def test_cli_bad_options_exit_2(cli: tuple[typer.Typer, Path, Path], args: list[str], words: list[str]) -> None:
    app, a, _ = cli
    res = CliRunner().invoke(app, ["sweep", str(a), "-r", "2", "--no-store", *args])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    for w in words:
        assert w in res.output


def test_cli_bad_file_exit_2_with_render(cli: tuple[typer.Typer, Path, Path], tmp_path: Path) -> None:
    app, _, _ = cli
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhorizon_days: -3\n")
    for cmd in (["sweep", str(bad)], ["compare", str(bad), str(bad)], ["plan", str(bad), "--lever", "suites",
                                                                         "--require", "patients_lost<=1"]):
        res = CliRunner().invoke(app, cmd)
        assert res.exit_code == 2, res.output
        assert "horizon_days" in res.stderr and "problem" in res.stderr and "Traceback" not in res.output


def test_cli_compare_json(cli: tuple[typer.Typer, Path, Path]) -> None:
    app, a, b = cli
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "-r", "3", "--no-store", "--json"])
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert obj["reference"] == "baseline" and obj["scenarios"] == ["fewer_suites"]
    rows = {r["kpi"]: r for r in obj["differences"]}
    assert rows["utilisation.suite"]["significant"] is True
    assert rows["patients_referred"]["difference"] == 0
    assert set(obj["summaries"]) == {"baseline", "fewer_suites"}


def test_cli_plan_exit_codes(cli: tuple[typer.Typer, Path, Path], daily_csv: Path, tmp_path: Path) -> None:
    app, _, _ = cli
    f = tmp_path / "det.yaml"
    f.write_text(deterministic_text(daily_csv, horizon=150))
    ok = CliRunner().invoke(app, ["plan", str(f), "--lever", "suites", "--require", "wait_for_slot_days.mean<=2",
                                  "--min", "6", "--max", "20", "-r", "1", "--json"])
    assert ok.exit_code == 0, ok.output
    obj = json.loads(ok.stdout)
    assert obj["chosen"]["values"] == {"suites": 10} and obj["met"] is True
    assert obj["levers"][0]["path"] == "resources.suites" and obj["levers"][0]["cost_per_unit"] == 0
    assert {r["values"]["suites"] for r in obj["candidates"]} >= {9, 10}
    none = CliRunner().invoke(app, ["plan", str(f), "--lever", "suites", "--require", "wait_for_slot_days.mean<=2",
                                    "--min", "7", "--max", "8", "-r", "1"])
    assert none.exit_code == 1
    assert "not_met" in none.stderr and "at its bound" in none.stderr
    assert "fails" in none.stdout and "7..8" in none.stdout  # the evidence table and the lever's range
    bad = CliRunner().invoke(app, ["plan", str(f), "--lever", "suites", "--require", "wait_for_slot_days.mean=<2"])
    assert bad.exit_code == 2 and "--require" in bad.output


def test_replicate_scenario_stores_the_same_runs_and_ids_for_any_jobs(tiny: tuple[Any, str], tmp_path: Path) -> None:
    from celltx_mfg.store import list_runs, open_store

    sc, text = tiny
    results = []
    for jobs in (1, 2):
        db = str(tmp_path / f"r{jobs}.db")
        res = ex.replicate_scenario(sc, text, 3, db=db, jobs=jobs, label="check", seed=5)
        assert res.run_ids == [1, 2, 3]
        assert list(list_runs(open_store(db))["label"]) == ["check"] * 3
        results.append(res)
    assert results[0].per_run == results[1].per_run
    assert results[0].summary == analysis.summarise(results[0].per_run)
    assert _no_ids(ex.run_replications(sc, text, 3, seed=5)) == results[0].per_run


def test_backends_follow_the_protocol() -> None:
    for cls in (ex.InlineBackend, ex.LocalPoolBackend, ex.RayBackend):
        for method in ("submit", "wait", "result", "cancel", "close"):
            assert callable(getattr(cls, method))
    backend = ex.open_backend("local", 1)
    assert isinstance(backend, ex.InlineBackend)
    backend.close()


def test_fill_replications_stores_each_replication_once_and_records_the_group_size(tiny, tmp_path):
    """A What-if pressed twice (or resumed after an interruption) never stores replication r twice."""
    from celltx_mfg import store

    sc, text = tiny
    engine = store.open_store(str(tmp_path / "fill.db"))
    assert ex.fill_replications(sc, text, 2, engine=engine, label="what-if") == [0, 1]
    assert ex.fill_replications(sc, text, 2, engine=engine, label="what-if") == []  # a second click: nothing
    assert ex.fill_replications(sc, text, 3, engine=engine, label="what-if") == [2]  # only the missing one
    runs = store.list_runs(engine)
    assert sorted(runs["replication"]) == [0, 1, 2]
    assert [ex.planned_size(x) for x in runs["label"]] == [2, 2, 3]
    assert ex.planned_size("what-if") is None and ex.planned_size(None) is None
    assert store.stored_replications(engine, runs["scenario_hash"].iloc[0]) == [0, 1, 2]
    engine.dispose()
