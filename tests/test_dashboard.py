"""The Streamlit dashboard, page by page, with Streamlit's AppTest on a small real database.

Each page is run headless on runs that ``simulate`` produced and ``store.write_run`` stored; what the page
shows is checked against the analysis functions applied to the same runs read back from the store, so a
page that computed its own numbers (or showed the wrong runs) would fail.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from celltx_mfg import analysis as an
from celltx_mfg import bottleneck as bn
from celltx_mfg import store
from celltx_mfg.config import parse_text
from celltx_mfg.experiments.bottleneck import bottleneck
from celltx_mfg.model.capacity import effective_capacity
from celltx_mfg.simulate import simulate

from .conftest import SCENARIOS, shrink

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboards" / "Overview.py"
PAGES = sorted(p.relative_to(APP.parent).as_posix() for p in (APP.parent / "pages").glob("*.py"))
TIMEOUT = 120


def build_db(path: Path) -> dict[str, list[int]]:
    """baseline (2 replications) then rapid_sterility (1): short horizons, real runs."""
    engine = store.open_store(str(path))
    ids: dict[str, list[int]] = {}
    for name, reps in (("baseline", 2), ("rapid_sterility", 1)):
        sc, text = shrink(SCENARIOS / f"{name}.yaml", horizon=150, warmup=40)
        ids[name] = [write_one(engine, sc, text, r) for r in range(reps)]
    engine.dispose()
    return ids


def write_one(engine, sc, text, r):
    return store.write_run(engine, sc.name, text, simulate(sc, replication=r))


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> tuple[Path, dict[str, list[int]]]:
    path = tmp_path_factory.mktemp("dash") / "runs.db"
    return path, build_db(path)


def expected(db: Path, ids: list[int]) -> tuple[dict, dict, dict]:
    """Frames, per-run meta and KPIs computed straight from the store and analysis (no dashboard code)."""
    engine = store.open_store(str(db), readonly=True)
    frames = store.load_frames(engine, ids)
    metas = {rid: store.load_run_meta(engine, rid) for rid in ids}
    engine.dispose()
    return frames, metas, {rid: m["costs"] for rid, m in metas.items()}


def app(monkeypatch, db: Path, page: str | None = None, scenario: str | None = None) -> AppTest:
    monkeypatch.setenv("CELLTX_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    if scenario is not None:
        at.sidebar.selectbox(key="sel_scenario").select(scenario).run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def number(text: str) -> float:
    """The number a tile shows ('1,234.5' or '41.2%')."""
    t = text.replace(",", "").strip()
    return float(t[:-1]) / 100 if t.endswith("%") else float(t)


def plotted(arr) -> np.ndarray:
    """A plotly figure array as numbers (plotly writes numeric arrays as base64 typed arrays)."""
    if isinstance(arr, dict) and "bdata" in arr:
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=np.dtype(arr["dtype"]))
    return np.asarray(arr, dtype=float)


def tile(at: AppTest, label_start: str):
    found = [m for m in at.metric if m.label.startswith(label_start)]
    assert len(found) == 1, [m.label for m in at.metric]
    return found[0]


def test_every_page_renders_without_exceptions(monkeypatch, small_db):
    db, _ = small_db
    at = app(monkeypatch, db)
    assert at.title[0].value == "Overview"
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        assert len(at.sidebar.selectbox) + len(at.sidebar.multiselect) >= 1, page  # the run selector


def test_overview_tiles_equal_kpis_of_one_run(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, scenario="rapid_sterility")
    assert at.sidebar.multiselect(key="sel_runs::rapid_sterility").value == ids["rapid_sterility"]
    frames, metas, costs = expected(db, ids["rapid_sterility"])
    meta = metas[ids["rapid_sterility"][0]]
    k = an.kpis(frames, meta["horizon"], meta["warmup"], meta["costs"])
    assert k["patients_infused"] > 0
    assert number(tile(at, "Patients infused").value) == k["patients_infused"]
    assert number(tile(at, "Patients lost").value) == k["patients_lost"]
    assert number(tile(at, "Throughput / year").value) == pytest.approx(k["throughput_per_year"], abs=0.05)
    assert number(tile(at, "Vein-to-vein p50").value) == pytest.approx(k["vein_to_vein_days"]["p50"], abs=0.05)
    assert number(tile(at, "Vein-to-vein p90").value) == pytest.approx(k["vein_to_vein_days"]["p90"], abs=0.05)
    assert number(tile(at, "Manufacturing days").value) == pytest.approx(k["manufacturing_days"]["mean"], abs=0.05)
    r2i = k["referral_to_infusion_days"]
    assert number(tile(at, "Referral to infusion p50").value) == pytest.approx(r2i["p50"], abs=0.05)
    assert number(tile(at, "Referral to infusion p90").value) == pytest.approx(r2i["p90"], abs=0.05)
    assert r2i["p50"] > k["vein_to_vein_days"]["p50"]  # the slot wait is in it
    assert number(tile(at, "Work in progress").value) == pytest.approx(k["wip_mean"]["in_system"], abs=0.05)
    assert tile(at, "Patients infused").delta in (None, "")  # one run: no interval

    # the user's target reaches kpis(target_days=...)
    p90 = k["vein_to_vein_days"]["p90"]
    at.number_input(key="target_days").set_value(float(round(p90))).run()
    k2 = an.kpis(frames, meta["horizon"], meta["warmup"], meta["costs"], target_days=float(round(p90)))
    assert k2["on_time_share"] != k["on_time_share"]
    assert number(tile(at, "On time").value) == pytest.approx(k2["on_time_share"], abs=0.0005)

    # throughput chart: infusions per week from infusions_over_time
    inf = an.infusions_over_time(frames, 7.0, horizon=meta["horizon"])
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert list(plotted(spec["data"][0]["y"])) == inf["infusions"].tolist()


def test_overview_with_replications_shows_mean_and_interval(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, scenario="baseline")
    frames, metas, costs = expected(db, ids["baseline"])
    meta = metas[ids["baseline"][0]]
    per_run = an.kpis_by_run(frames, meta["horizon"], meta["warmup"], costs)
    s = an.summarise(list(per_run.values()))
    assert s["replications"] == 2
    t = tile(at, "Patients infused")
    assert number(t.value) == pytest.approx(s["patients_infused"], abs=0.05)
    assert t.delta.startswith(f"± {s['ci95']['patients_infused']:,.1f}")
    assert "n=2" in t.delta
    # dropping a replication shows that run's own KPIs
    at.sidebar.multiselect(key="sel_runs::baseline").unselect(ids["baseline"][1]).run()
    assert number(tile(at, "Patients infused").value) == per_run[ids["baseline"][0]]["patients_infused"]


def test_selection_survives_page_switches(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, scenario="baseline")
    at.sidebar.multiselect(key="sel_runs::baseline").unselect(ids["baseline"][0]).run()
    for page in PAGES:
        at.switch_page(page).run()
        if page.endswith("Compare.py"):
            continue
        assert at.sidebar.selectbox(key="sel_scenario").value == "baseline", page
        assert at.sidebar.multiselect(key="sel_runs::baseline").value == [ids["baseline"][1]], page


def test_turnaround_page_shows_turnaround_breakdown(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/1_Turnaround.py", scenario="baseline")
    frames, metas, costs = expected(db, ids["baseline"])
    tb = an.turnaround_breakdown(frames)
    shown = at.dataframe[-1].value
    assert len(shown) == len(tb) > 0
    assert shown["vein_to_vein"].tolist() == pytest.approx(tb["vein_to_vein"].tolist())
    s = an.summarise(list(an.kpis_by_run(frames, metas[ids["baseline"][0]]["horizon"],
                                         metas[ids["baseline"][0]]["warmup"], costs).values()))
    assert number(tile(at, "Vein-to-vein p90").value) == pytest.approx(s["vein_to_vein_days"]["p90"], abs=0.05)
    assert number(tile(at, "Referral to infusion p90").value) == pytest.approx(
        s["referral_to_infusion_days"]["p90"], abs=0.05)
    at.radio(key="turnaround_measure").set_value(at.radio(key="turnaround_measure").options[1]).run()
    hist = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert sorted(plotted(hist["x"])) == pytest.approx(sorted(tb["referral_to_infusion"].tolist()))
    # the stacked breakdown has one bar per stage, waits first-class
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    names = {tr.get("name") for ch in charts for tr in ch["data"]}
    for stage in an.TURNAROUND_STAGES:
        assert any(n and n.startswith(stage.replace("_", " ")) for n in names), stage


def test_resources_page_shows_bottleneck_ranking(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/2_Resources.py", scenario="baseline")
    frames, metas, _ = expected(db, ids["baseline"])
    meta = metas[ids["baseline"][0]]
    capacity = effective_capacity(parse_text(meta["scenario_text"]))
    ranking = bn.resource_measures(frames, capacity, meta["horizon"], meta["warmup"])
    shown = at.dataframe[0].value
    assert shown["kind"].tolist() == ranking["kind"].tolist()
    assert shown["effective_utilisation"].tolist() == pytest.approx(ranking["effective_utilisation"].tolist(),
                                                                     nan_ok=True)
    assert shown["utilisation"].tolist() == pytest.approx(ranking["utilisation"].tolist(), nan_ok=True)
    # chairs: against the days the booking rules let them be used (Mon-Wed), not every clinic day
    aph = shown[shown["kind"] == "apheresis"].iloc[0]
    assert aph["effective_utilisation"] > aph["utilisation"]
    top = bn.headline(ranking)
    assert any(f"Fullest: **{top['kind']}**" in m.value for m in at.markdown)
    # queue chart for another kind
    at.selectbox(key="queue_kind").select("operators").run()
    assert not at.exception


@pytest.mark.slow
def test_resources_page_computes_marginal_values_like_the_cli(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/2_Resources.py", scenario="baseline")
    at.number_input(key="bn_reps").set_value(2).run()
    at.text_input(key="bn_kpi").input("wait_for_slot_days.mean").run()
    at.button(key="bn_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    meta = expected(db, ids["baseline"])[1][ids["baseline"][0]]
    result = bottleneck(parse_text(meta["scenario_text"]), meta["scenario_text"], 2, "wait_for_slot_days.mean")
    shown = at.dataframe[0].value
    assert shown["kind"].tolist() == [e.kind for e in result.ranking]
    assert shown["marginal_value"].tolist() == pytest.approx([e.marginal.mean for e in result.ranking], nan_ok=True)


def test_batch_gantt_marks_failed_batches_and_clearances(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/3_Batch_Gantt.py", scenario="baseline")
    rid = ids["baseline"][0]
    frames, metas, _ = expected(db, [rid])
    meta = metas[rid]
    day0 = yaml.safe_load(meta["scenario_text"])["start_date"]
    at.slider(key="gantt_window").set_range(day0, day0 + dt.timedelta(days=meta["horizon"])).run()
    assert not at.exception
    u = frames["resource_uses"]
    u = u[u["kind"].isin(["suite", "incubator"])]
    shown = at.dataframe[0].value
    assert len(shown) == len(u)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {tr["name"] for tr in spec["data"]}
    assert "line clearance" in traces and "batch" in traces
    failed = set(frames["batches"].loc[frames["batches"]["status"].isin(an.FAILED_STATUSES), "batch_no"])
    held_failed = failed & set(u["batch_no"])
    assert held_failed, "the test run should hold a failed batch in a suite or incubator"
    assert "failed batch" in traces
    failed_rows = [tr for tr in spec["data"] if tr["name"] == "failed batch"]
    assert all(tr["marker"]["pattern"]["shape"] == "x" for tr in failed_rows)
    assert set(shown.loc[shown["batch_status"].isin(an.FAILED_STATUSES), "batch_no"]) == held_failed


def test_patient_trace_page_shows_patient_trace(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/4_Patient_trace.py", scenario="baseline")
    rid = ids["baseline"][0]
    frames, _, _ = expected(db, ids["baseline"])
    infused = frames["patients"][(frames["patients"]["run_id"] == rid) & (frames["patients"]["status"] == "infused")]
    coi = infused["coi"].iloc[3]
    at.selectbox(key="trace_coi").select(coi).run()
    assert not at.exception
    trace = an.patient_trace(frames, coi, run_id=rid)
    shown = at.dataframe[-1].value
    assert shown["what"].tolist() == trace["what"].tolist()
    assert shown["time"].tolist() == pytest.approx(trace["time"].tolist())
    assert shown["time"].is_monotonic_increasing
    assert at.metric[0].value == "infused"


def test_compare_page_puts_scenarios_side_by_side(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/5_Compare.py")
    at.sidebar.multiselect(key="compare_scenarios").set_value(["baseline", "rapid_sterility"]).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("KPI")
    f_b, m_b, c_b = expected(db, ids["baseline"])
    f_r, m_r, c_r = expected(db, ids["rapid_sterility"])
    mb = m_b[ids["baseline"][0]]
    sb = an.summarise(list(an.kpis_by_run(f_b, mb["horizon"], mb["warmup"], c_b).values()))
    mr = m_r[ids["rapid_sterility"][0]]
    kr = an.kpis(f_r, mr["horizon"], mr["warmup"], mr["costs"])
    assert table.loc["patients_infused", "baseline"] == pytest.approx(sb["patients_infused"])
    assert table.loc["patients_infused", "baseline ± 95%"] == pytest.approx(sb["ci95"]["patients_infused"])
    assert table.loc["vein_to_vein_days.p50", "rapid_sterility"] == pytest.approx(kr["vein_to_vein_days"]["p50"])
    assert table.loc["vein_to_vein_days.p50", "Δ rapid_sterility − baseline"] == pytest.approx(
        kr["vein_to_vein_days"]["p50"] - sb["vein_to_vein_days"]["p50"])
    # rapid sterility shortens vein-to-vein: the comparison must show it
    assert table.loc["vein_to_vein_days.p50", "Δ rapid_sterility − baseline"] < 0
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert {tr["name"] for tr in charts[0]["data"]} == {"baseline", "rapid_sterility"}


def test_deviations_page_shows_tables(monkeypatch, small_db):
    db, ids = small_db
    at = app(monkeypatch, db, page="pages/7_Deviations_and_losses.py", scenario="baseline")
    frames, _, _ = expected(db, ids["baseline"])
    dev, loss = an.deviations_table(frames), an.losses_table(frames)
    assert len(dev) > 0
    shown_dev, shown_loss = at.dataframe[0].value, at.dataframe[1].value
    assert shown_dev[["severity", "kind", "stage", "count"]].values.tolist() == \
        dev[["severity", "kind", "stage", "count"]].values.tolist()
    assert shown_loss["count"].sum() == loss["count"].sum() > 0


def test_what_if_validates_runs_stores_and_compares(monkeypatch, tmp_path):
    db = tmp_path / "whatif.db"
    ids = build_db(db)
    at = app(monkeypatch, db, page="pages/6_What_if.py", scenario="baseline")
    suites = next(w for w in at.sidebar.number_input if w.label == "Suites")
    # an invalid plant: rendered with ScenarioError.render(), Run disabled
    suites.set_value(0).run()
    assert at.error and "These levers (suites = 0) do not make a valid scenario" in at.error[0].value
    assert "suite" in at.error[0].value.split(":", 1)[1]
    assert re.search(r"\d+ problem\(s\)", at.code[0].value) and "suite" in at.code[0].value
    assert at.button(key="wi_run").disabled
    # a valid change: rapid sterility
    suites = next(w for w in at.sidebar.number_input if w.label == "Suites")
    suites.set_value(20).run()
    ster = next(r for r in at.sidebar.radio if r.label == "Sterility test")
    ster.set_value("rapid (7 days)").run()
    assert "sterility test days: 14.0 → 7.0" in at.markdown[-1].value or any(
        "sterility test days" in m.value for m in at.markdown)
    at.button(key="wi_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    engine = store.open_store(str(db), readonly=True)
    runs = store.list_runs(engine)
    new = runs[runs["scenario"].str.startswith("baseline-whatif-")]
    assert len(new) == 2 and set(new["replication"]) == {0, 1} and set(new["label"]) == {"what-if of 2"}
    text = store.load_run_meta(engine, int(new["id"].iloc[0]))["scenario_text"]
    assert "value: 7.0" in text
    new_ids = sorted(int(x) for x in new["id"])
    frames = store.load_frames(engine, new_ids)
    meta = store.load_run_meta(engine, new_ids[0])
    engine.dispose()
    s = an.summarise(list(an.kpis_by_run(frames, meta["horizon"], meta["warmup"]).values()))
    table = at.dataframe[0].value.set_index("KPI")
    name = str(new["scenario"].iloc[0])
    assert table.loc["patients_infused", "scenario mean"] == pytest.approx(s["patients_infused"])
    assert table.loc["vein_to_vein_days.p50", "Δ (paired)"] < 0
    assert (table["n (paired)"] == 2).all()
    assert any("2 paired replication(s) (n = 2 on each side)" in cap.value for cap in at.caption)
    assert any(name in m.value for m in at.success)
    # running again adds nothing: the replications are already stored
    at.button(key="wi_run").click().run()
    again = store.list_runs(store.open_store(str(db), readonly=True))
    assert len(again) == len(runs)
    assert set(ids["baseline"]) < set(again["id"])


@pytest.mark.parametrize("page", [None, *PAGES])
def test_missing_database_shows_how_to_create_one(monkeypatch, tmp_path, page):
    db = tmp_path / "nothing-here.db"
    monkeypatch.setenv("CELLTX_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    if page:
        at.switch_page(page).run()
    assert not at.exception
    assert "No database" in at.warning[0].value
    assert f"celltx run scenarios/baseline.yaml --db {db}" in at.code[0].value
    assert not db.exists()  # looking must not create it


def test_empty_database_shows_how_to_fill_it(monkeypatch, tmp_path):
    db = tmp_path / "empty.db"
    store.open_store(str(db)).dispose()
    monkeypatch.setenv("CELLTX_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "holds no runs" in at.warning[0].value
    assert "celltx run scenarios/baseline.yaml" in at.code[0].value
