"""KPIs checked against hand computations on a small hand-built run.

The run (horizon 100 d, warm-up 10 d, so the KPI window is [10, 100), 90 days):

coi  referred  1st aph  end                       attempts  cohort?
P0   5         8        infused 30                1         no (referred before warm-up)
P8   10        11       infused 38 (v2v 27)       1         yes (referred exactly at warm-up)
P1   12        15       infused 40 (v2v 25)       1         yes
P2   20        30       infused 70 (v2v 40)       2         yes (A1 failed in QC, A2 infused)
P3   25        27       lost 45 in qc_and_release 1         yes (OOS product released, then dropout)
P4   50        58       in progress               2         yes (A1 rejected at receipt, A2 in the suite)
P5   90        -        in progress               0         yes
P6   95        -        lost 97 waiting_for_slot  0         yes
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from celltx_mfg import analysis as an
from celltx_mfg.records import (
    BatchRecord,
    Deviation,
    PatientRecord,
    QCResult,
    ReleaseRecord,
    ResourceSummary,
    ResourceUse,
    RunRecords,
    Shipment,
    StepEvent,
)

HORIZON, WARMUP = 100.0, 10.0
WINDOW_YEARS = 90 / 365.25


def patient(coi, referred, first_aph, status, infused=None, lost=None, stage=None, reason=None, attempts=1):
    return PatientRecord(coi, int(coi[1:]), "siteA", "cart", "standard", False, referred, referred,
                         first_aph, infused, status, lost, stage, reason, None, attempts)


def batch(coi, attempt, status, aph, ready=None, mfg_start=None, mfg_end=None, released=None, infused=None,
          qc_complete=None, received=None, oos=False, recalled=False, mode=None, reason=None, expiry=None):
    return BatchRecord(coi, f"{coi}-A{attempt}", attempt, "cart", status, reason, ready, aph, aph + 0.5,
                       received, ready, mfg_start, mfg_end, qc_complete, released, mode,
                       None if released is None else released + 1, None if infused is None else infused - 1,
                       infused, expiry, "S1", oos, recalled)


def use(kind, unit, requested, start, end, coi=None, activity="step"):
    return ResourceUse(kind, unit, coi, None if coi is None else f"{coi}-A1", activity, requested, start, end)


def hand_run() -> RunRecords:
    r = RunRecords("hand", seed=1, replication=0, horizon=HORIZON, warmup=WARMUP)
    r.patients = [
        patient("P0", 5, 8, "infused", infused=30),
        patient("P8", 10, 11, "infused", infused=38),
        patient("P1", 12, 15, "infused", infused=40),
        patient("P2", 20, 30, "infused", infused=70, attempts=2),
        patient("P3", 25, 27, "lost", lost=45, stage="qc_and_release", reason="dropout"),
        patient("P4", 50, 58, "in_progress", attempts=2),
        patient("P5", 90, None, "in_progress", attempts=0),
        patient("P6", 95, None, "lost", lost=97, stage="waiting_for_slot", reason="dropout", attempts=0),
    ]
    r.batches = [
        batch("P0", 1, "infused", 8, ready=9, mfg_start=9, mfg_end=19, released=25, infused=30),
        batch("P8", 1, "infused", 11, ready=13, mfg_start=14, mfg_end=24, released=32, infused=38,
              qc_complete=30, received=12.5),
        batch("P1", 1, "infused", 15, ready=17, mfg_start=17, mfg_end=26, released=34, infused=40,
              recalled=True, mode="conditional"),
        batch("P2", 1, "failed", 30, ready=32, mfg_start=34, mfg_end=44, qc_complete=50, reason="low_viability"),
        batch("P2", 2, "infused", 52, ready=54, mfg_start=55, mfg_end=63, released=67, infused=70),
        batch("P3", 1, "abandoned", 27, ready=29, mfg_start=31, mfg_end=43, released=44, oos=True,
              mode="exceptional_oos"),
        batch("P4", 1, "failed", 58, received=59, reason="rejected_at_receipt"),
        batch("P4", 2, "in_progress", 70, ready=72, mfg_start=75),
    ]
    r.resources = [
        ResourceSummary("suite", 2, 180.0),
        ResourceSummary("qc_analysts", 1, 30.0),
        ResourceSummary("incubator", 4, 0.0),  # no available time: no utilisation reported
    ]
    r.resource_uses = [
        use("apheresis", "A1", 10.8, 11, 11.5, coi="P8", activity="apheresis"),
        use("suite", "S2", 4, 5, 12, coi="P0"),  # clipped to [10, 12): 2 days
        use("suite", "S1", 13, 14, 16, coi="P8", activity="activation"),  # 2 days
        use("suite", "S1", 16, 16, 16.5, activity="line_clearance"),  # 0.5 day
        use("suite", "S2", 97, 98, float("nan"), coi="P4"),  # still held at the horizon: 2 days
        use("qc_analysts", "Q1", 25, 26, 27, coi="P8", activity="qc:sterility"),
        use("qc_analysts", "Q1", 28, 28, 31, coi="P1", activity="qc:potency"),
        use("freezer", "F1", 20, 20, 21, coi="P8", activity="cryopreservation"),  # no summary: not reported
    ]
    r.steps = [
        StepEvent("P8", "P8-A1", "activation", 1, 13, 14, 16, "suite:S1", 2, True, "ok"),
        StepEvent("P8", "P8-A1", "expansion", 2, 16, 16, 23, "incubator:I1", 0, False, "ok"),
    ]
    r.qc_results = [QCResult("P8", "P8-A1", "sterility", 24, 25, 30, "pass", True)]
    r.deviations = [
        Deviation(None, None, 5, "environmental", "minor", "manufacturing", "before warm-up", 6),
        Deviation("P2", "P2-A1", 35, "step_time_limit", "major", "manufacturing", "expansion too long", 40),
        Deviation("P8", "P8-A1", 20, "label_check", "minor", "manufacturing", "label reprinted", None),
        Deviation(None, None, 99.5, "sterility_breach", "critical", "manufacturing", "grade A alarm", None),
    ]
    r.shipments = [
        Shipment("P8", "P8-A1", "inbound", "siteA", "plant", 11.5, 12.5, "2-8C", 3, False),
        Shipment("P8", "P8-A1", "outbound", "plant", "siteA", 33, 34, "<=-150C", 10, False),
    ]
    r.releases = [ReleaseRecord("P8", "P8-A1", 32, "full", "qualified_person", "released", "")]
    r.costs = {"materials": 1000.0, "qc": 600.0}
    return r


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return hand_run().frames()


@pytest.fixture(scope="module")
def k(frames) -> dict:
    return an.kpis(frames, HORIZON, WARMUP, costs=hand_run().costs)


def _plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(key, str) and _plain(v) for key, v in x.items())
    return x is None or type(x) in (int, float, str, bool)


# ------------------------------------------------------------------------------------------------ kpis
def test_patient_counts_over_the_referral_cohort(k):
    assert k["patients_referred"] == 7  # P0 referred before warm-up is out; P8 at exactly 10 is in
    assert (k["patients_infused"], k["patients_lost"], k["patients_in_progress"]) == (3, 2, 2)
    assert k["patients_remanufactured"] == 2


def test_throughput_counts_infusions_in_the_window_whoever_they_are(k):
    assert k["infusions_in_window"] == 4  # P0 (referred before warm-up) infused at 30 counts
    assert k["throughput_per_year"] == pytest.approx(4 / WINDOW_YEARS)


def test_vein_to_vein_from_first_apheresis(k):
    v = k["vein_to_vein_days"]  # P8 27, P1 25, P2 40 (from its FIRST apheresis at 30)
    assert v["mean"] == pytest.approx(92 / 3)
    assert v["p50"] == pytest.approx(27)
    assert v["p90"] == pytest.approx(27 + 0.8 * 13)  # linear: position 0.9 * 2 = 1.8
    assert v["max"] == pytest.approx(40)
    assert k["on_time_share"] == pytest.approx(2 / 3)
    assert k["on_time_target_days"] == 28.0
    assert an.kpis(hand_run().frames(), HORIZON, WARMUP, target_days=26)["on_time_share"] == pytest.approx(1 / 3)


def test_referral_to_infusion_counts_the_slot_wait(k):
    r = k["referral_to_infusion_days"]  # P8 28, P1 28, P2 50 (referred 20, infused 70)
    assert r["mean"] == pytest.approx(106 / 3)
    assert r["p50"] == pytest.approx(28)
    assert r["p90"] == pytest.approx(28 + 0.8 * 22)
    assert r["max"] == pytest.approx(50)
    assert list(k).index("referral_to_infusion_days") == list(k).index("vein_to_vein_days") + 1


def test_wip_mean_is_the_exact_time_average(k, frames):
    """Hand-integrated over [10, 100): in the system P0 20 + P8 28 + P1 28 + P2 50 + P3 20 + P4 50 + P5 10
    + P6 2 = 208 patient-days; manufacturing 9 + 10 + 9 + 10 + 8 + 12 + 25 (P4-A2 runs on) = 83; QC and
    release 6 + 8 + 8 + 6 (P2-A1 until its last event, 50) + 4 + 1 = 33."""
    w = k["wip_mean"]
    assert list(w) == ["in_system", *an.WIP_STAGES]
    assert w["in_system"] == pytest.approx(208 / 90)
    assert w["manufacturing"] == pytest.approx(83 / 90)
    assert w["qc_and_release"] == pytest.approx(33 / 90)
    assert sum(w[s] for s in an.WIP_STAGES) == pytest.approx(w["in_system"])
    # the snapshots converge on it as they get finer; one a day at midnight does not have to
    fine = an.wip_over_time(frames, step_days=0.01, horizon=HORIZON)
    fine = fine[(fine["time"] >= WARMUP) & (fine["time"] < HORIZON)]
    for stage in an.WIP_STAGES:
        assert fine[stage].mean() == pytest.approx(w[stage], abs=0.01)
    table = an.wip_time_average(frames, HORIZON, WARMUP)
    assert table.iloc[0].to_dict() == pytest.approx(w)
    with pytest.raises(ValueError, match="greater than warmup"):
        an.wip_time_average(frames, 10.0, 10.0)


def test_labour_hours_paid_and_hands_on(k):
    # qc_analysts offer 30 available days (720 h paid); hands-on [26, 27) and [28, 31): 4 days
    assert k["labour_hours"] == {"paid": pytest.approx(720.0), "hands_on": pytest.approx(96.0)}
    assert k["labour_cost_share"] == 0.0  # costs without labour
    share = an.kpis(hand_run().frames(), HORIZON, WARMUP, costs={"labour": 300.0, "qc": 100.0})["labour_cost_share"]
    assert share == pytest.approx(0.75)
    assert an.kpis(hand_run().frames(), HORIZON, WARMUP)["labour_cost_share"] is None


def test_batch_kpis(k):
    assert k["batches_started"] == 6  # P4-A1 was rejected at receipt, never started; P0-A1 not cohort
    assert k["batches_failed"] == 2  # P2-A1 and P4-A1
    assert k["failed_by_reason"] == {"low_viability": 1, "rejected_at_receipt": 1}
    assert k["manufacturing_failure_rate"] == pytest.approx(1 / 6)  # only started batches: P2-A1
    m = k["manufacturing_days"]  # P8 10, P1 9, P2A1 10, P2A2 8, P3 12 (P4-A2 unfinished)
    assert m["mean"] == pytest.approx(9.8)
    assert m["p50"] == pytest.approx(10)
    assert m["p90"] == pytest.approx(10 + 0.6 * 2)
    assert k["oos_released"] == 1 and k["recalls"] == 1


def test_an_expired_product_is_a_failure_without_a_reason():
    r = RunRecords("x", 1, 0, HORIZON, WARMUP)
    r.patients = [patient("P1", 20, 21, "lost", lost=80, stage="awaiting_infusion", reason="dropout")]
    r.batches = [batch("P1", 1, "expired", 21, ready=22, mfg_start=22, mfg_end=32, released=40, expiry=70)]
    k = an.kpis(r.frames(), HORIZON, WARMUP)
    assert k["failed_by_reason"] == {"expired": 1} and k["manufacturing_failure_rate"] == 1.0
    w = an.wip_over_time(r.frames(), horizon=HORIZON).set_index("time")
    assert w.loc[69.0, "shipping_and_infusion_wait"] == 1 and w.loc[70.0, "waiting_for_slot"] == 1


def test_waits(k):
    w = k["wait_for_slot_days"]  # P8 1, P1 3, P2 10, P3 2, P4 8 (P5, P6 never collected)
    assert w["mean"] == pytest.approx(4.8)
    assert w["p90"] == pytest.approx(8 + 0.6 * 2)
    s = k["wait_for_suite_days"]  # 1, 0, 2, 1, 2, 3
    assert s["mean"] == pytest.approx(1.5)
    assert s["p90"] == pytest.approx(2.5)


def test_cost_per_infused_patient(k, frames):
    assert k["cost_total"] == 1600.0
    assert k["cost_per_infused_patient"] == pytest.approx(400.0)
    assert an.kpis(frames, HORIZON, WARMUP)["cost_per_infused_patient"] is None
    assert an.kpis(frames, HORIZON, WARMUP, costs={})["cost_per_infused_patient"] is None


def test_utilisation_clips_to_the_window_and_counts_line_clearance(k):
    assert set(k["utilisation"]) == {"suite", "qc_analysts"}
    assert k["utilisation"]["suite"] == pytest.approx(6.5 / 180)
    assert k["utilisation"]["qc_analysts"] == pytest.approx(4 / 30)


def test_deviations_and_losses(k):
    assert k["deviations"] == {"minor": 1, "major": 1, "critical": 1}  # the one at day 5 is before warm-up
    assert k["lost_by_stage"] == {"qc_and_release": 1, "waiting_for_slot": 1}


def test_kpis_are_plain_json(k):
    assert _plain(k)
    json.dumps(k, allow_nan=False)


def test_empty_run_gives_zero_counts_and_none_statistics():
    k = an.kpis(RunRecords("empty", 1, 0, HORIZON, WARMUP).frames(), HORIZON, WARMUP, costs={"x": 5.0})
    assert k["patients_referred"] == k["patients_infused"] == k["batches_started"] == 0
    assert k["throughput_per_year"] == 0.0
    assert k["vein_to_vein_days"] == {"mean": None, "p50": None, "p90": None, "max": None}
    assert k["on_time_share"] is None and k["manufacturing_failure_rate"] is None
    assert k["cost_per_infused_patient"] is None and k["utilisation"] == {}
    assert k["deviations"] == {"minor": 0, "major": 0, "critical": 0} and k["lost_by_stage"] == {}
    assert _plain(k)
    assert an.kpis({}, HORIZON, WARMUP)["patients_referred"] == 0  # tables may be missing altogether


def test_kpis_refuses_a_bad_window(frames):
    with pytest.raises(ValueError, match="warmup"):
        an.kpis(frames, 10, 10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 120), st.sampled_from(["infused", "lost", "in_progress"])), max_size=40))
def test_cohort_conservation(rows):
    r = RunRecords("h", 1, 0, 120.0, 20.0)
    for i, (ref, status) in enumerate(rows):
        inf = ref + 1 if status == "infused" else None
        lost = ref + 1 if status == "lost" else None
        r.patients.append(patient(f"P{i}", ref, ref + 0.5, status, infused=inf, lost=lost))
    k = an.kpis(r.frames(), 120.0, 20.0)
    cohort = [s for ref, s in rows if 20 <= ref < 120]
    assert k["patients_referred"] == len(cohort)
    assert k["patients_referred"] == k["patients_infused"] + k["patients_lost"] + k["patients_in_progress"]
    assert k["patients_lost"] == cohort.count("lost")
    assert sum(k["lost_by_stage"].values()) == k["patients_lost"]


# ----------------------------------------------------------------------------------------------- runs
def _two_runs() -> dict[str, pd.DataFrame]:
    a = hand_run()
    b = hand_run()
    b.patients = [p._replace(status="lost", infused=None, lost_time=p.referred + 1) for p in b.patients]
    fa, fb = a.frames(), b.frames()
    return {n: pd.concat([fa[n].assign(run_id=1), fb[n].assign(run_id=2)], ignore_index=True) for n in fa}


def test_kpis_by_run_matches_each_run_alone(k):
    by_run = an.kpis_by_run(_two_runs(), HORIZON, WARMUP, costs_by_run={1: hand_run().costs})
    assert set(by_run) == {1, 2}
    assert by_run[1] == k
    assert by_run[2]["patients_lost"] == 7 and by_run[2]["patients_infused"] == 0
    with pytest.raises(ValueError, match="kpis_by_run"):
        an.kpis(_two_runs(), HORIZON, WARMUP)


def test_kpis_by_run_without_run_id_is_one_run(frames, k):
    assert an.kpis_by_run(frames, HORIZON, WARMUP, costs_by_run={None: hand_run().costs}) == {None: k}


# -------------------------------------------------------------------------------------------- summarise
def test_student_t_table_matches_scipy():
    for df in list(range(1, 200)) + [250, 499, 750, 1500, 10_000]:
        assert an.student_t_975(df) == pytest.approx(sps.t.ppf(0.975, df), rel=5e-5)
    with pytest.raises(ValueError):
        an.student_t_975(0)


def test_summarise_means_and_t_half_widths():
    runs = [
        {"x": 1, "g": {"a": 2.0, "b": None}, "lost_by_stage": {"dropout": 2}},
        {"x": 2, "g": {"a": 4.0, "b": None}, "lost_by_stage": {}},
        {"x": 3, "g": {"a": 6.0, "b": 5.0}, "lost_by_stage": {"dropout": 1}},
        {"x": 4, "g": {"a": 8.0, "b": None}, "lost_by_stage": {"dropout": 1}},
    ]
    s = an.summarise(runs)
    assert s["replications"] == 4
    assert s["x"] == pytest.approx(2.5)
    assert s["ci95"]["x"] == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-6)
    assert s["g"]["a"] == pytest.approx(5.0)
    assert s["ci95"]["g"]["a"] == pytest.approx(sps.t.ppf(0.975, 3) * np.std([2, 4, 6, 8], ddof=1) / 2, rel=1e-5)
    assert s["g"]["b"] == 5.0 and s["ci95"]["g"]["b"] is None  # one value: no interval
    assert s["lost_by_stage"]["dropout"] == pytest.approx(1.0)  # missing from run 2 means 0 there


def test_summarise_of_real_kpis(k):
    s = an.summarise([k, k])
    assert s["replications"] == 2
    assert s["vein_to_vein_days"]["p90"] == pytest.approx(k["vein_to_vein_days"]["p90"])
    assert s["ci95"]["vein_to_vein_days"]["p90"] == 0.0
    assert an.summarise([k])["ci95"]["patients_lost"] is None
    assert _plain(s)
    assert an.summarise([]) == {"ci95": {}, "replications": 0}


# ----------------------------------------------------------------------------------------- requirements
def test_check_requirements(k):
    res = an.check_requirements(
        k, ["vein_to_vein_days.p90<=28", "patients_lost < 5", " throughput_per_year >= 1e1 ", "recalls==1",
            "lost_by_stage.manufacturing != 0", "deviations.critical>0"]
    )
    assert [r.ok for r in res] == [False, True, True, True, False, True]
    first = res[0]
    assert (first.path, first.op, first.threshold) == ("vein_to_vein_days.p90", "<=", 28.0)
    assert first.actual == pytest.approx(37.4) and first.requirement == "vein_to_vein_days.p90<=28"
    assert res[4].actual == 0.0  # nobody lost in manufacturing: a count of zero, not an unknown path


def test_requirement_on_a_missing_statistic_fails():
    empty = an.kpis(RunRecords("e", 1, 0, HORIZON, WARMUP).frames(), HORIZON, WARMUP)
    (r,) = an.check_requirements(empty, ["vein_to_vein_days.p90<=28"])
    assert r.actual is None and r.ok is False


def test_requirement_errors(k):
    for bad in ["vein_to_vein_days.p90 =< 28", "patients_lost", "patients_lost<five", "<5", "a<=1<=2"]:
        with pytest.raises(ValueError, match="expected '<kpi path><op><number>'") as e:
            an.check_requirements(k, [bad])
        assert repr(bad) in str(e.value)
    with pytest.raises(ValueError, match="vein_to_vein_days.p90"):
        an.check_requirements(k, ["vein_to_vien_days.p90<=28"])
    with pytest.raises(ValueError, match="is a group.*vein_to_vein_days.p50"):
        an.check_requirements(k, ["vein_to_vein_days<=28"])


def test_get_path(k):
    assert an.get_path(k, "utilisation.suite") == pytest.approx(6.5 / 180)
    assert an.get_path(k, "deviations") == {"minor": 1, "major": 1, "critical": 1}
    with pytest.raises(ValueError, match="close matches: utilisation.suite"):
        an.get_path(k, "utilisation.suit")


# --------------------------------------------------------------------------------- series and tables
def test_turnaround_breakdown_adds_up(frames):
    t = an.turnaround_breakdown(frames).set_index("coi")
    assert list(t.index) == ["P0", "P8", "P1", "P2"]
    p8 = t.loc["P8"]
    assert [p8[c] for c in an.TURNAROUND_STAGES] == [1, 0, 2, 1, 10, 8, 6]
    p2 = t.loc["P2"]  # infused from its second batch
    assert p2["batch_no"] == "P2-A2"
    assert [p2[c] for c in an.TURNAROUND_STAGES] == [10, 22, 2, 1, 8, 4, 3]
    total = t[list(an.TURNAROUND_STAGES)].sum(axis=1)
    assert np.allclose(total, t["vein_to_vein"] + t["slot_wait"])
    assert np.allclose(total, t["referral_to_infusion"])


def test_wip_over_time(frames):
    w = an.wip_over_time(frames, step_days=0.5, horizon=HORIZON).set_index("time")
    assert len(w) == 201
    assert np.array_equal(w[list(an.WIP_STAGES)].sum(axis=1), w["in_system"])
    at = lambda t: {s: int(w.loc[t, s]) for s in an.WIP_STAGES if w.loc[t, s]}  # noqa: E731
    assert at(20.0) == {"waiting_for_slot": 1, "manufacturing": 2, "qc_and_release": 1}
    assert at(45.0) == {"qc_and_release": 1}  # P2-A1 until its last result at 50; P3 lost at 45
    assert at(51.0) == {"waiting_for_slot": 2}  # P2 between attempts, P4 newly referred
    assert at(58.5) == {"apheresis_and_transit": 1, "manufacturing": 1}  # P4-A1 until rejected at 59
    assert at(96.0) == {"waiting_for_slot": 2, "manufacturing": 1}
    assert at(99.0) == {"waiting_for_slot": 1, "manufacturing": 1}  # P6 lost at 97


def test_infusions_over_time(frames):
    s = an.infusions_over_time(frames, freq_days=7, horizon=HORIZON)
    assert len(s) == 15 and s["period_start"].iloc[4] == 28.0
    assert s["infusions"].tolist()[4:11] == [1, 2, 0, 0, 0, 0, 1]
    assert s["cumulative_infusions"].iloc[-1] == 4
    assert an.infusions_over_time(frames, freq_days=10)["infusions"].sum() == 4  # to the last recorded time


def test_queue_length_over_time(frames):
    q = an.queue_length_over_time(frames, "suite")
    assert q["time"].tolist() == [0, 4, 5, 12, 13, 14, 16.5, 97, 98]
    assert q["queue_length"].tolist() == [0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert q["in_use"].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 1]


def test_utilisation_by_unit(frames):
    u = an.utilisation_by_unit(frames, HORIZON, WARMUP).set_index(["kind", "unit"])
    assert u.loc[("suite", "S1"), "busy_days"] == pytest.approx(2.5)
    assert u.loc[("suite", "S1"), "line_clearance_days"] == pytest.approx(0.5)
    assert u.loc[("suite", "S1"), "utilisation"] == pytest.approx(2.5 / 90)
    assert u.loc[("suite", "S2"), "holds"] == 2
    assert math.isnan(u.loc[("freezer", "F1"), "utilisation"])


def test_bottleneck_ranking(frames):
    b = an.bottleneck_ranking(frames, HORIZON, WARMUP)
    assert b["kind"].tolist()[:2] == ["qc_analysts", "suite"]
    suite = b.set_index("kind").loc["suite"]
    assert suite["queue_wait_days"] == pytest.approx(2.0)  # [13,14) and [97,98); [4,5) is before warm-up
    assert suite["mean_wait_days"] == pytest.approx(2 / 3) and suite["holds"] == 3
    assert suite["queue_wait_rank"] == 1 and suite["utilisation_rank"] == 2
    two = an.bottleneck_ranking(_two_runs(), HORIZON, WARMUP)
    pd.testing.assert_frame_equal(two, b)  # identical runs average to the same ranking


def test_ecdf():
    e = an.ecdf([3, 1, None, float("nan"), 2, 2])
    assert e["value"].tolist() == [1, 2, 2, 3] and e["share"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert len(an.ecdf([])) == 0


def test_deviation_and_loss_tables(frames):
    d = an.deviations_table(frames)
    assert d["severity"].tolist() == ["critical", "major", "minor", "minor"]
    major = d.iloc[1]
    assert major["count"] == 1 and major["open_at_end"] == 0 and major["mean_days_to_close"] == 5
    assert d["open_at_end"].sum() == 2
    losses = an.losses_table(_two_runs())  # run 1: 2 lost, run 2: all 8 lost a day after referral
    assert losses["count"].sum() == 10 and losses["per_run"].sum() == 5
    assert losses["share_of_lost"].sum() == pytest.approx(1.0)
    assert len(an.deviations_table({})) == 0 and len(an.losses_table({})) == 0


def test_patient_trace_in_time_order(frames):
    t = an.patient_trace(frames, "P8")
    assert list(t.columns) == ["time", "end", "kind", "what", "detail", "batch_no"]
    assert t["time"].is_monotonic_increasing
    assert t["kind"].tolist() == [
        "patient", "patient", "resource", "shipment", "batch", "batch", "resource", "step", "step",
        "resource", "deviation", "qc", "resource", "batch", "release", "shipment", "patient",
    ]
    assert t["what"].tolist()[:3] == ["referred", "slot booked", "apheresis:A1"]
    assert t["what"].iloc[-1] == "infused" and "vein-to-vein 27.00 d" in t["detail"].iloc[-1]
    assert t["end"].iloc[t["what"].tolist().index("sterility")] == 30


def test_patient_trace_of_a_failed_batch_and_runs(frames):
    t = an.patient_trace(frames, "P2")
    failed = t[(t["kind"] == "batch") & (t["what"] == "failed")]
    assert failed["time"].tolist() == [50.0] and failed["detail"].tolist() == ["low_viability"]
    two = an.patient_trace(_two_runs(), "P8")
    assert two["run_id"].tolist() == [1] * 17 + [2] * 17
    run2 = an.patient_trace(_two_runs(), "P8", run_id=2)  # in run 2, P8 was lost a day after referral
    assert run2["what"].tolist()[:3] == ["referred", "slot booked", "lost"] and "infused" not in set(run2["what"])
    with pytest.raises(ValueError, match="close matches: P8"):
        an.patient_trace(frames, "P88")


def test_series_accept_runs_and_empty_frames():
    two = _two_runs()
    assert set(an.wip_over_time(two, horizon=HORIZON)["run_id"]) == {1, 2}
    assert set(an.turnaround_breakdown(two)["run_id"]) == {1}
    empty = RunRecords("e", 1, 0, HORIZON, WARMUP).frames()
    assert an.wip_over_time(empty, horizon=10)["in_system"].sum() == 0
    assert an.infusions_over_time(empty)["infusions"].sum() == 0
    assert len(an.turnaround_breakdown(empty)) == 0
    assert an.queue_length_over_time(empty, "suite")["queue_length"].tolist() == [0]
    assert len(an.utilisation_by_unit(empty, HORIZON, WARMUP)) == 0
    assert len(an.bottleneck_ranking(empty, HORIZON, WARMUP)) == 0


# ------------------------------------------------------------------- statistics and requirement text
def test_ci_half_width_is_the_t_interval_and_needs_two_values():
    x = [3.0, 5.0, 4.0, 8.0]
    expected = sps.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert an.ci_half_width(x) == pytest.approx(expected, rel=1e-12)
    assert an.ci_half_width(x, level=0.99) == pytest.approx(sps.t.ppf(0.995, 3) * np.std(x, ddof=1) / 2)
    assert an.ci_half_width([1.0]) is None and an.ci_half_width([]) is None


def test_paired_difference_with_too_few_pairs():
    assert an.paired_difference([], [])["pairs"] == 0
    one = an.paired_difference([1.0, None], [3.0, 2.0])
    assert one["difference"] == 2.0 and one["half_width"] is None and one["pairs"] == 1


def test_parse_requirement_is_the_one_reader():
    req = an.parse_requirement(" vein_to_vein_days.p90 <= 28 ")
    assert (req.path, req.op, req.threshold) == ("vein_to_vein_days.p90", "<=", 28.0)
    assert req.holds(27.5) and not req.holds(28.5) and not req.holds(None)
    with pytest.raises(an.RequirementSyntaxError, match="cannot parse"):
        an.parse_requirement("wait for slot < 2")


def test_walk_kpis_lists_groups_and_leaves_once():
    k = {"a": 1, "g": {"x": 2.0, "y": None}, "ci95": {"a": 0.1}, "replications": 3}
    assert [p for p, _ in an.walk_kpis(k)] == ["a", "g", "g.x", "g.y"]
    assert an.kpi_items(k) == [("a", 1), ("g.x", 2.0), ("g.y", None)]
    assert an.numeric_kpis({"a": 1, "t": "text", "n": float("nan")}) == {"a": 1.0, "n": None}
    assert an.value_or_none(k, "g") is None and an.value_or_none(k, "nope") is None
    assert an.value_or_none(k, "g.x") == 2.0
