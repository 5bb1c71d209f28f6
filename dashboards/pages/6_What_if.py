"""What-if: start from a stored scenario, move the main levers, simulate, store, compare with the original."""

from __future__ import annotations

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
from celltx_mfg.config import ScenarioError, scenario_hash  # noqa: E402
from celltx_mfg.experiments import ExperimentError, apply_overrides, replicate_scenario  # noqa: E402

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


def lever_overrides(base: dict[str, Any], levers: dict[str, Any]) -> dict[str, Any]:
    """The levers as lever paths (`experiments.apply_overrides`, as `celltx sweep --vary` uses them):
    only what differs from the stored scenario, so an unchanged lever leaves its text untouched."""
    res = base.get("resources") or {}
    current = {
        "demand.per_year": float((base.get("demand") or {}).get("per_year", 0)),
        "resources.suites": int(res.get("suites", 0)),
        "resources.incubators": int(res.get("incubators", 0)),
        "resources.operators.count": int((res.get("operators") or {}).get("count", 0)),
        "release.policy": (base.get("release") or {}).get("policy", "full"),
    }
    wanted = {
        "demand.per_year": float(levers["per_year"]),
        "resources.suites": int(levers["suites"]),
        "resources.incubators": int(levers["incubators"]),
        "resources.operators.count": int(levers["operators"]),
        "release.policy": levers["policy"],
    }
    out: dict[str, Any] = {k: v for k, v in wanted.items() if v != current[k]}
    if levers["weekends"] != weekends_on(base):
        for name in staff_calendars(base):
            days = [d for d in base["calendars"][name].get("days", []) if d not in WEEKEND]
            days += list(WEEKEND) if levers["weekends"] else []
            out[f"calendars.{name}.days"] = [d for d in WEEKDAY_ORDER if d in days]
    if levers["sterility_days"] is not None and levers["sterility_days"] != sterility_days(base):
        for t in sterility_tests(base):
            out[f"qc.tests.{t['name']}.duration"] = {"dist": "fixed", "value": float(levers["sterility_days"])}
    return out


def what_if(base_text: str, base_name: str, overrides: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """The what-if scenario, its stored text and its mapping, named after the base and a fingerprint of
    its content, so the same levers on the same scenario always land in the same stored scenario."""
    root = re.sub(r"-whatif-[0-9a-f]+$", "", base_name)
    _, plain = apply_overrides(base_text, {**overrides, "name": root}, name_suffix="")
    name = f"{root}-whatif-{scenario_hash(plain)[:8]}"
    diff = changes(yaml.safe_load(base_text), yaml.safe_load(plain))
    described = {**overrides, "name": name,
                 "description": f"What-if of {base_name}: " + ("; ".join(diff) if diff else "no change")}
    scenario, text = apply_overrides(base_text, described, name_suffix="", source=name)
    return scenario, text, yaml.safe_load(text)


def stored_prefix(runs: pd.DataFrame, content: str) -> dict[int, int]:
    """Replication -> run id of the what-if's runs already stored, 0, 1, ... without a gap."""
    mine = runs[runs["scenario_hash"] == content]
    have = {int(r["replication"]): int(r["id"]) for _, r in mine.iterrows()}
    prefix: dict[int, int] = {}
    while len(prefix) in have:
        prefix[len(prefix)] = have[len(prefix)]
    return prefix


def _lever_values(data: dict[str, Any]) -> list[tuple[str, Any]]:
    res = data.get("resources") or {}
    return [
        ("demand per year", (data.get("demand") or {}).get("per_year")),
        ("suites", res.get("suites")),
        ("incubators", res.get("incubators")),
        ("operators", (res.get("operators") or {}).get("count")),
        ("weekend shifts", weekends_on(data)),
        ("sterility test days", sterility_days(data)),
        ("release policy", (data.get("release") or {}).get("policy", "full")),
    ]


def changes(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What the planner changed, in words, for the page and the what-if's description."""
    out = []
    for (label, a), (_, b) in zip(_lever_values(base), _lever_values(new), strict=True):
        if a != b and not (isinstance(a, int | float) and isinstance(b, int | float) and float(a) == float(b)):
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

overrides = lever_overrides(base, levers)
problem = None
scenario = None
text = ""
new: dict[str, Any] = {"name": sel.name}
diff: list[str] = []
try:
    scenario, text, new = what_if(base_text, sel.name, overrides)
    diff = changes(base, new)
except (ScenarioError, ExperimentError) as e:
    problem = e.render() if isinstance(e, ScenarioError) else str(e)

st.subheader("Changes")
if diff or problem:
    st.markdown("\n".join(f"- {d}" for d in diff or [f"{k}: {v}" for k, v in overrides.items()]))
else:
    st.info("No lever differs from the stored scenario yet: change one in the sidebar.")
if problem:
    st.error("This what-if is not a valid scenario:")
    st.code(problem, language="text")

clicked = st.button("Run", type="primary", disabled=bool(problem) or not diff, key="wi_run",
                    help=f"Simulate {reps} replication(s) of {new['name']} and store them in {store.display_url(db)}.")
if clicked and scenario is not None:
    have = stored_prefix(runs, scenario_hash(text))
    todo = max(0, reps - len(have))
    bar = st.progress(0.0, text=f"Simulating {new['name']} ...")
    t0 = time.perf_counter()

    def advance(done: int, planned: int) -> None:
        bar.progress(done / max(planned, 1), text=f"Replication {len(have) + done} of {reps} stored ...")

    try:
        ids = dict(have)
        if todo:  # the one replication path, as `celltx run` and the experiment commands take it
            result = replicate_scenario(scenario, text, todo, engine=c.write_engine(db), label="what-if",
                                        progress=advance, first=len(have))
            ids.update({len(have) + k: rid for k, rid in enumerate(result.run_ids)})
        bar.progress(1.0, text=f"Done: {todo} run(s) simulated and stored in {time.perf_counter() - t0:.1f} s"
                     + (f"; {len(have)} already stored" if have else ""))
        st.session_state["whatif_result"] = {
            "base": sel.scenario, "base_ids": sel.run_ids, "name": scenario.name,
            "ids": tuple(sorted(ids[r] for r in range(reps))), "changes": diff,
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
