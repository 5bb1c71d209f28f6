"""The binding constraint: effective capacity, marginal values on common random numbers, the ranking and
`celltx bottleneck`. Four plants are built from the baseline with every resource roomy but one, so the
binding kind is known by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg import bottleneck as bn
from celltx_mfg.calendar import WEEKDAYS
from celltx_mfg.cli import app
from celltx_mfg.config import load_scenario
from celltx_mfg.experiments import ExperimentError, apply_overrides
from celltx_mfg.experiments.bottleneck import bottleneck, one_more_unit, rank_levers
from celltx_mfg.model.capacity import effective_capacity
from celltx_mfg.simulate import simulate
from tests.conftest import SCENARIOS, shrink
from tests.test_cli_schema import _valid

runner = CliRunner()

# Everything generous: no kind but the one made scarce can hold the plant back.
ROOMY = {
    "resources.suites": 60, "resources.incubators": 80, "resources.freezers": 6,
    "resources.operators.count": 30, "resources.qc_analysts.count": 16, "resources.qa_reviewers.count": 12,
    "booking.starts_per_day": 16, "sites.*.apheresis_per_day": 4, "sites.*.infusion_slots_per_day": 6,
}
# kind -> (what makes it scarce, the KPI that feels it). Chairs and suites are waited for before
# apheresis, so vein-to-vein is blind to them: their plants are judged on the wait for a slot.
SCARCE = {
    # 4 chairs a day on Mon-Wed (the 2-day lead before Wed-Fri starts) = 12 collections a week for ~13.5
    "apheresis": ({"sites.*.apheresis_per_day": 1, "demand.per_year": 700}, "wait_for_slot_days.mean"),
    # 9 general suites reserved 14 days a start = 4.5 starts a week for ~7.7 referrals
    "suite": ({"resources.suites": 10}, "wait_for_slot_days.mean"),
    # 18 hands-on QC hours a batch, ~8 batches a week, against one analyst's 80 shift hours
    "qc_analysts": ({"resources.qc_analysts.count": 1}, "vein_to_vein_days.p90"),
    # 6 review hours a batch against one reviewer's 40
    "qa_reviewers": ({"resources.qa_reviewers.count": 1}, "vein_to_vein_days.p90"),
}


def constructed(kind: str, horizon: float = 200.0, warmup: float = 40.0):
    """The baseline with every resource roomy but ``kind``, on a short horizon."""
    overrides, kpi = SCARCE[kind]
    _, text = shrink(SCENARIOS / "baseline.yaml", horizon=horizon, warmup=warmup)
    sc, text = apply_overrides(text, {**ROOMY, **overrides}, name_suffix=f"scarce_{kind}")
    return sc, text, kpi


# ------------------------------------------------------------------------------ effective capacity
def _days(sc, names: set[str]) -> int:
    first = sc.start_date.weekday()
    return sum(1 for d in range(math.floor(sc.warmup_days), math.ceil(sc.horizon_days))
               if WEEKDAYS[(first + d) % 7] in names)


def test_chairs_count_only_days_whose_start_day_offers_starts():
    """Fresh starts Wed-Fri with a 2-day lead: chairs are usable Mon-Wed, 3 of the 5 clinic days."""
    sc, _ = load_scenario(SCENARIOS / "baseline.yaml")
    cap = effective_capacity(sc)
    chairs = sum(s.apheresis_per_day for s in sc.sites)
    assert cap["apheresis"].nominal_unit_days == chairs * _days(sc, {"mon", "tue", "wed", "thu", "fri"})
    assert cap["apheresis"].effective_unit_days == chairs * _days(sc, {"mon", "tue", "wed"})
    # starts need a chair two days earlier, which Wed-Fri starts always have (4 chairs for 4 starts)
    assert cap["manufacturing_slot"].effective_unit_days == cap["manufacturing_slot"].nominal_unit_days
    assert cap["suite"].reserve_days == {"car_t_lenti": 14}


def test_the_records_nominal_capacity_is_the_models():
    sc, _ = shrink(SCENARIOS / "baseline.yaml", horizon=60, warmup=10)
    recorded = {r.kind: r.available_unit_days for r in simulate(sc, replication=0).resources}
    cap = effective_capacity(sc)
    assert set(cap) == set(recorded)
    for kind, days in recorded.items():
        assert cap[kind].nominal_unit_days == pytest.approx(days), kind


def test_a_start_is_capped_by_the_chairs_its_lead_day_has():
    sc, text = load_scenario(SCENARIOS / "baseline.yaml")
    sc, _ = apply_overrides(text, {"booking.starts_per_day": 6})
    cap = effective_capacity(sc)
    assert cap["manufacturing_slot"].effective_unit_days == pytest.approx(cap["manufacturing_slot"].nominal_unit_days
                                                                          * 4 / 6)
    assert cap["apheresis"].effective_unit_days == 4 * _days(sc, {"mon", "tue", "wed"})


def test_collect_then_queue_has_no_booking_coupling():
    sc, _ = load_scenario(SCENARIOS / "collect_then_queue.yaml")
    cap = effective_capacity(sc)
    assert "manufacturing_slot" not in cap
    assert cap["apheresis"].effective_unit_days == cap["apheresis"].nominal_unit_days
    assert cap["suite"].reserve_days is None


def test_reserved_suite_days_count_the_plan_or_the_overrun():
    batches = pd.DataFrame({"batch_no": ["a", "b", "c"], "product": ["p", "p", "p"], "slot_day": [10.0, 20.0, 30.0],
                            "mfg_start": [10.3, 20.3, math.nan]})
    uses = pd.DataFrame({"kind": ["suite", "suite", "suite"], "batch_no": ["a", "b", "b"],
                         "start": [10.3, 20.3, 40.0], "end": [21.0, 40.0, 40.1]})
    # a: planned 14 days (10..24); b: overran to 40.1; c never started; window [0, 100)
    assert bn.reserved_suite_days({"batches": batches, "resource_uses": uses}, {"p": 14}, 100, 0) == pytest.approx(
        14 + 20.1)
    assert bn.reserved_suite_days({"batches": batches, "resource_uses": uses}, {"p": 14}, 30, 15) == pytest.approx(
        9 + 10)


# -------------------------------------------------------------------------------------- ranking rule
def _evidence(kind, change, hw, util=0.5, direction=bn.Direction.LOWER):
    base = [10.0, 11.0, 12.0, 13.0]
    plus = [b + change + (hw if i % 2 else -hw) for i, b in enumerate(base)]
    return bn.KindEvidence(kind, f"{kind} +1", {}, 1, 1.0, 1.0, util, util, 0.0, None, 0.0,
                           marginal=bn.marginal_value(base, plus, direction))


def test_binding_is_the_biggest_significant_improvement_not_the_fullest():
    ranked = bn.rank([_evidence("full", 0.0, 0.5, util=0.99), _evidence("noisy", -5.0, 20.0, util=0.9),
                      _evidence("small", -1.0, 0.1, util=0.3), _evidence("big", -3.0, 0.1, util=0.2)])
    assert [e.kind for e in ranked] == ["big", "small", "full", "noisy"]
    assert bn.binding_kind(ranked) == "big"
    assert ranked[0].marginal.improvement == pytest.approx(3.0)


def test_higher_is_better_kpis_flip_the_sign():
    assert bn.kpi_direction("throughput_per_year") is bn.Direction.HIGHER
    assert bn.kpi_direction("on_time_share") is bn.Direction.HIGHER
    assert bn.kpi_direction("vein_to_vein_days.p90") is bn.Direction.LOWER
    assert bn.kpi_direction(bn.DEFAULT_KPI) is bn.Direction.LOWER
    up = _evidence("up", +2.0, 0.1, direction=bn.Direction.HIGHER)
    down = _evidence("down", -2.0, 0.1, direction=bn.Direction.HIGHER)
    assert up.marginal.improves and not down.marginal.improves
    assert bn.binding_kind(bn.rank([down, up])) == "up"


def test_no_binding_kind_when_no_extra_unit_helps():
    ranked = bn.rank([_evidence("a", 0.0, 0.0, util=0.95), _evidence("b", +4.0, 0.1)])  # b makes it worse
    assert bn.binding_kind(ranked) is None
    assert ranked[0].kind == "a"  # the rest is ordered by effective utilisation


def test_one_more_unit_is_per_site_for_chairs():
    sc, _ = load_scenario(SCENARIOS / "baseline.yaml")
    lever, overrides = one_more_unit(sc, "apheresis")
    assert lever == "sites.*.apheresis_per_day +1"
    assert overrides == {f"sites.{s.name}.apheresis_per_day": s.apheresis_per_day + 1 for s in sc.sites}
    assert one_more_unit(sc, "qc_analysts")[1] == {"resources.qc_analysts.count": 5}
    with pytest.raises(ExperimentError, match="no lever"):
        one_more_unit(sc, "bench")


# ---------------------------------------------------------------------------- constructed plants
def _check_binding(kind: str, replications: int, **kw):
    sc, text, kpi = constructed(kind, **kw)
    result = bottleneck(sc, text, replications, kpi)
    top = result.ranking[0]
    assert result.binding == kind, [(e.kind, e.marginal) for e in result.ranking]
    assert top.marginal.improves and top.marginal.improvement > 0
    # supporting evidence: the binding kind is busy and its work queues; a suite the slot book reserves
    # ahead is never queued for at the plant, its queue is the patients' wait for a slot
    assert top.effective_utilisation > 0.7
    queued = "manufacturing_slot" if kind == "suite" else kind
    assert next(e for e in result.ranking if e.kind == queued).mean_wait_days > 1.0
    return result


def test_scarce_qa_reviewers_bind():
    """The fast one of the four: one QA reviewer for ~8 batch records of 6 hours a week."""
    result = _check_binding("qa_reviewers", 4, horizon=150, warmup=30)
    # roomy kinds: one more unit changes nothing measurable
    others = [e for e in result.ranking[1:] if e.marginal is not None]
    assert not any(e.marginal.improves for e in others)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["apheresis", "suite", "qc_analysts"])
def test_scarce_kind_binds(kind):
    result = _check_binding(kind, 5)
    if kind == "apheresis":
        # chairs usable Mon-Wed only: the nominal figure (every clinic day) understates them
        top = result.ranking[0]
        assert top.effective_utilisation > 0.9 > 0.7 > top.utilisation


@pytest.mark.slow
def test_demand_plus_50_names_its_binding_kind():
    """At +50% demand the wait for a slot grows; one more unit of the binding kind shortens it. Today's
    slot book reserves a suite 14 days a start, so that is the suite; chairs and starts, booked as a
    pair, are full but neither alone adds capacity."""
    sc, text = shrink(SCENARIOS / "demand_plus_50.yaml")
    result = bottleneck(sc, text, 8, "wait_for_slot_days.mean", jobs=2)
    by_kind = {e.kind: e for e in result.ranking}
    assert result.binding in ("suite", "apheresis")
    top = by_kind[result.binding]
    assert top.marginal.improves and top.effective_utilisation > 0.8
    assert by_kind["apheresis"].effective_utilisation > by_kind["apheresis"].utilisation + 0.2
    assert not by_kind["manufacturing_slot"].marginal.improves  # chairs cap the starts at 4 a day
    # the same answer for throughput, where higher is better
    tp = bottleneck(sc, text, 8, "throughput_per_year", jobs=2)
    assert tp.direction is bn.Direction.HIGHER
    assert tp.binding == result.binding


# -------------------------------------------------------------------------------------------- CLI
def _small_file(tmp_path: Path) -> Path:
    sc, text, _ = constructed("qa_reviewers", horizon=120, warmup=20)
    p = tmp_path / "scarce_qa.yaml"
    p.write_text(text)
    return p


def test_cli_json_shape_and_stored_runs(tmp_path):
    f = _small_file(tmp_path)
    db = tmp_path / "b.db"
    r = runner.invoke(app, ["bottleneck", str(f), "-r", "3", "--json", "--db", str(db)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["scenario"].endswith("[scarce_qa_reviewers]")
    assert out["kpi"] == bn.DEFAULT_KPI and out["direction"] == "lower_is_better"
    kinds = [e["kind"] for e in out["ranking"]]
    assert set(kinds) == set(effective_capacity(load_scenario(f)[0]))
    for e in out["ranking"]:
        assert {"kind", "effective_utilisation", "queue_days", "marginal_value"} <= set(e)
        assert {"mean", "ci95"} <= set(e["marginal_value"])
    assert out["binding"] in (None, *kinds)
    assert out["binding"] == "qa_reviewers"
    assert len(out["run_ids"]) == 3 * (len(kinds) + 1)  # the unchanged plant and one what-if per kind
    _valid(out)


def test_cli_table_names_the_binding_kind(tmp_path):
    r = runner.invoke(app, ["bottleneck", str(_small_file(tmp_path)), "-r", "3", "--kpi", "vein_to_vein_days.mean"])
    assert r.exit_code == 0, r.output
    assert "binding: qa_reviewers" in r.stdout
    assert "resources.qa_reviewers.count +1" in r.stdout


def test_cli_bad_input_is_exit_2(tmp_path):
    f = _small_file(tmp_path)
    r = runner.invoke(app, ["bottleneck", str(f), "--kpi", "vein_to_vien_days.p90"])
    assert r.exit_code == 2 and "vein_to_vein_days" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["bottleneck", str(f), "--kpi", "vein_to_vein_days"])
    assert r.exit_code == 2 and "vein_to_vein_days.p90" in r.output  # a group: its members are listed
    r = runner.invoke(app, ["bottleneck", str(f), "-r", "1"])
    assert r.exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load(f.read_text()), "horizon_days": -1}))
    r = runner.invoke(app, ["bottleneck", str(bad)])
    assert r.exit_code == 2 and "horizon_days" in r.output


def test_rank_levers_gives_a_search_its_order(tmp_path):
    sc, text, kpi = constructed("qa_reviewers", horizon=120, warmup=20)
    ranked = rank_levers(sc, text, 3, kpi)
    assert ranked[0].kind == "qa_reviewers"
    assert ranked[0].overrides == {"resources.qa_reviewers.count": 2}
    sc2, _ = apply_overrides(text, ranked[0].overrides)
    assert sc2.resources.qa_reviewers.count == 2
