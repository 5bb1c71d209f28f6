"""What-if: start from a stored scenario, move the main levers, simulate, store, compare with the original."""

from __future__ import annotations

import copy
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402
import yaml  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis, store  # noqa: E402
from celltx_mfg.config import ScenarioError, scenario_from_dict, scenario_hash  # noqa: E402
from celltx_mfg.simulate import simulate  # noqa: E402

WEEKEND = ("sat", "sun")
WEEKDAY_ORDER = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
STERILITY = {"compendial (14 days)": 14.0, "rapid (7 days)": 7.0}
STAFF = ("operators", "qc_analysts", "qa_reviewers")


def staff_calendars(data: dict[str, Any]) -> list[str]:
    res = data.get("resources") or {}
    return list(dict.fromkeys(str(res[s]["calendar"]) for s in STAFF if isinstance(res.get(s), dict)
                              and res[s].get("calendar") in (data.get("calendars") or {})))


def weekends_on(data: dict[str, Any]) -> bool:
    cals = data.get("calendars") or {}
    names = staff_calendars(data)
    return bool(names) and all(set(WEEKEND) <= set(cals[n].get("days") or []) for n in names)


def sterility_tests(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in ((data.get("qc") or {}).get("tests") or []) if isinstance(t, dict) and t.get("sterility")]


def sterility_days(data: dict[str, Any]) -> float | None:
    for t in sterility_tests(data):
        d = t.get("duration") or {}
        if d.get("dist") == "fixed":
            return float(d.get("value"))
    return None


def apply_levers(base: dict[str, Any], levers: dict[str, Any]) -> dict[str, Any]:
    """The base scenario's mapping with the levers set (the stored text is this mapping's YAML)."""
    data = copy.deepcopy(base)
    data.setdefault("demand", {})["per_year"] = float(levers["per_year"])
    res = data.setdefault("resources", {})
    res["suites"] = int(levers["suites"])
    res["incubators"] = int(levers["incubators"])
    res.setdefault("operators", {})["count"] = int(levers["operators"])
    if levers["weekends"] != weekends_on(base):
        for name in staff_calendars(data):
            days = [d for d in data["calendars"][name].get("days", []) if d not in WEEKEND]
            if levers["weekends"]:
                days += list(WEEKEND)
            data["calendars"][name]["days"] = [d for d in WEEKDAY_ORDER if d in days]
    if levers["sterility_days"] is not None and levers["sterility_days"] != sterility_days(base):
        for t in sterility_tests(data):
            t["duration"] = {"dist": "fixed", "value": float(levers["sterility_days"])}
    data.setdefault("release", {})["policy"] = levers["policy"]
    return data


def changes(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    pairs = [
        ("demand per year", base["demand"].get("per_year"), new["demand"]["per_year"]),
        ("suites", base["resources"].get("suites"), new["resources"]["suites"]),
        ("incubators", base["resources"].get("incubators"), new["resources"]["incubators"]),
        ("operators", base["resources"]["operators"].get("count"), new["resources"]["operators"]["count"]),
        ("weekend shifts", weekends_on(base), weekends_on(new)),
        ("sterility test days", sterility_days(base), sterility_days(new)),
        ("release policy", (base.get("release") or {}).get("policy", "full"), new["release"]["policy"]),
    ]
    for label, a, b in pairs:
        if a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
            out.append(f"{label}: {a} → {b}")
    return out


c.page_setup("What-if")
db, runs, version = c.require_runs()
sel = c.sidebar_selection(runs, db, version, title="Start from")

st.title("What-if")
st.caption(f"Start from **{sel.name}** (runs {c.run_list(sel.run_ids)}): change the levers in the "
           "sidebar and press Run. Every replication is simulated, stored in the database and compared with "
           "the original.")

base_text = c.run_meta(db, sel.run_ids[0], version)["scenario_text"]
base = yaml.safe_load(base_text)
h = sel.scenario_hash[:12]  # lever widgets start from the chosen scenario's own values
sb = st.sidebar
sb.header("Levers")
ster0 = sterility_days(base)
levers = {
    "per_year": sb.number_input("Demand: referrals per year", min_value=0.0, max_value=100000.0,
                                value=float(base["demand"].get("per_year", 0)), step=25.0, key=f"wi_demand::{h}"),
    "suites": sb.number_input("Suites", min_value=0, max_value=500, value=int(base["resources"]["suites"]),
                              step=1, key=f"wi_suites::{h}"),
    "incubators": sb.number_input("Incubators", min_value=0, max_value=1000,
                                  value=int(base["resources"].get("incubators", 0)), step=1,
                                  key=f"wi_incubators::{h}"),
    "operators": sb.number_input("Operators per shift", min_value=0, max_value=500,
                                 value=int(base["resources"]["operators"]["count"]), step=1,
                                 key=f"wi_operators::{h}"),
    "weekends": sb.toggle("Weekend shifts (staff work Sat and Sun)", value=weekends_on(base),
                          key=f"wi_weekends::{h}",
                          help="Adds or removes Saturday and Sunday in the calendars of operators, QC "
                               "analysts and QA reviewers: " + ", ".join(staff_calendars(base))),
    "sterility_days": None,
    "policy": sb.radio("Release policy", ["full", "conditional"], horizontal=True,
                       index=0 if (base.get("release") or {}).get("policy", "full") == "full" else 1,
                       key=f"wi_policy::{h}",
                       help="conditional: release on the rapid results with sterility pending."),
}
if sterility_tests(base):
    options = list(STERILITY)
    default = options[1] if ster0 is not None and ster0 <= 7 else options[0]
    pick = sb.radio("Sterility test", options, index=options.index(default), key=f"wi_sterility::{h}",
                    help=f"Stored scenario: {ster0:g} days." if ster0 is not None else None)
    levers["sterility_days"] = ster0 if pick == default else STERILITY[pick]
reps = int(sb.number_input("Replications", min_value=1, max_value=100, value=min(max(sel.n, 1), c.MAX_DEFAULT_RUNS),
                           step=1, key=f"wi_reps::{h}",
                           help="Replication r uses the same random numbers as the original's replication r."))

new = apply_levers(base, levers)
diff = changes(base, new)
root = re.sub(r"-whatif-[0-9a-f]+$", "", sel.name)
new["name"] = root
fingerprint = scenario_hash(yaml.safe_dump(new, sort_keys=False))[:8]
new["name"] = f"{root}-whatif-{fingerprint}"
new["description"] = f"What-if of {sel.name}: " + ("; ".join(diff) if diff else "no change")

st.subheader("Changes")
if diff:
    st.markdown("\n".join(f"- {d}" for d in diff))
else:
    st.info("No lever differs from the stored scenario yet: change one in the sidebar.")

problem = None
scenario = None
text = ""
try:
    scenario, text = scenario_from_dict(new, source=new["name"])
except ScenarioError as e:
    problem = e.render()
if problem:
    st.error("This what-if is not a valid scenario:")
    st.code(problem, language="text")

clicked = st.button("Run", type="primary", disabled=bool(problem) or not diff, key="wi_run",
                    help=f"Simulate {reps} replication(s) of {new['name']} and store them in {db}.")
if clicked and scenario is not None:
    content = scenario_hash(text)
    mine = runs[runs["scenario_hash"] == content]
    have = {int(r["replication"]): int(r["id"]) for _, r in mine.iterrows()}
    todo = [r for r in range(reps) if r not in have]
    bar = st.progress(0.0, text=f"Simulating {new['name']} ...")
    engine = c.write_engine(db)
    t0 = time.perf_counter()
    new_ids = dict(have)
    try:
        for i, r in enumerate(todo):
            bar.progress(i / max(len(todo), 1), text=f"Replication {r + 1} of {reps}: simulating ...")
            records = simulate(scenario, replication=r)
            new_ids[r] = store.write_run(engine, scenario.name, text, records, label="what-if")
        bar.progress(1.0, text=f"Done: {len(todo)} run(s) simulated and stored in {time.perf_counter() - t0:.1f} s"
                     + (f"; {len(have)} already stored" if have else ""))
        st.session_state["whatif_result"] = {
            "base": sel.scenario, "base_ids": sel.run_ids, "name": scenario.name,
            "ids": tuple(sorted(new_ids[r] for r in range(reps))), "changes": diff,
        }
    except store.StoreError as e:
        st.error(f"The runs could not be stored: {e}")

result = st.session_state.get("whatif_result")
if result and result["base"] == sel.scenario:
    version = c.db_version(db)  # the database just changed: read the new runs
    st.subheader(f"Result: {result['name']} vs {sel.name}")
    st.success(f"Stored as scenario **{result['name']}**, runs {c.run_list(result['ids'])} "
               f"({'; '.join(result['changes'])}). Open it on any page from the sidebar's scenario list.")
    target = st.columns([1, 3])[0].number_input("On-time target: vein-to-vein days", min_value=1.0, max_value=365.0,
                             value=float(analysis.DEFAULT_TARGET_DAYS), step=1.0, key="wi_target")
    summaries = {
        f"{sel.name} (original)": c.kpi_summary(db, tuple(result["base_ids"]), version, float(target)),
        result["name"]: c.kpi_summary(db, tuple(result["ids"]), version, float(target)),
    }
    table = c.compare_table(summaries)
    st.dataframe(table, hide_index=True,
                 column_config={col: st.column_config.NumberColumn(format="%.3f")
                                for col in table.columns if col != "KPI"})
    fig = go.Figure()
    for label, ids in ((f"{sel.name} (original)", result["base_ids"]), (result["name"], result["ids"])):
        tb = c.analysed("turnaround_breakdown", db, tuple(ids), version)
        e = analysis.ecdf(tb["vein_to_vein"]) if not tb.empty else pd.DataFrame({"value": [], "share": []})
        fig.add_trace(go.Scatter(x=e["value"], y=e["share"], mode="lines", line_shape="hv", name=label))
    fig.add_vline(x=target, line_dash="dash", line_color=c.WAIT_COLOUR)
    fig.update_layout(height=340, margin=dict(t=20, b=10), xaxis_title="vein-to-vein days",
                      yaxis_title="share of infused patients", yaxis_tickformat=".0%",
                      legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(fig, key="wi_ecdf")
