"""What-if: start from a stored scenario, move the main levers, simulate, store, compare with the original."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _decide as d  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402
import yaml  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis, store  # noqa: E402
from celltx_mfg.config import ScenarioError, scenario_hash  # noqa: E402
from celltx_mfg.experiments import ExperimentError, apply_overrides, fill_replications  # noqa: E402

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


def by_rep_of(db: str, content: str) -> dict[int, int]:
    """Replication -> run id of one scenario text's runs, read now (the first run of each replication)."""
    runs = store.list_runs(c.write_engine(db))
    return d.by_replication(runs[runs["scenario_hash"] == content])


LEVER_NAMES = {"demand.per_year": "demand (referrals per year)", "resources.suites": "suites",
               "resources.incubators": "incubators", "resources.operators.count": "operators per shift",
               "release.policy": "release policy"}


def invalid_sentence(overrides: dict[str, Any], problem: str) -> str:
    """The scenario check's message as a sentence naming the levers moved and what the check allows."""
    moved = [f"{LEVER_NAMES.get(k, k.split('.')[-1])} = {v}" for k, v in overrides.items()
             if not isinstance(v, (dict, list))]
    detail = " ".join(line.strip(" -") for line in problem.splitlines() if line.strip())
    detail = detail.rstrip(".")
    head = f"These levers ({', '.join(moved)}) do not make a valid scenario" if moved else \
        "These levers do not make a valid scenario"
    return f"{head}: {detail}. Change the lever named there to an allowed value; Run stays off until then."


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
policy0 = (base.get("release") or {}).get("policy", "full")
levers = {
    "per_year": sb.number_input("Demand: referrals per year", min_value=0.0, max_value=100000.0, step=25.0,
                                **d.kept(f"wi_demand::{h}", float(base["demand"].get("per_year", 0)))),
    "suites": sb.number_input("Suites", min_value=0, max_value=500, step=1,
                              **d.kept(f"wi_suites::{h}", int(base["resources"]["suites"]))),
    "incubators": sb.number_input("Incubators", min_value=0, max_value=1000, step=1,
                                  **d.kept(f"wi_incubators::{h}", int(base["resources"].get("incubators", 0)))),
    "operators": sb.number_input("Operators per shift", min_value=0, max_value=500, step=1,
                                 **d.kept(f"wi_operators::{h}", int(base["resources"]["operators"]["count"]))),
    "weekends": sb.toggle("Weekend shifts (staff work Sat and Sun)",
                          help="Adds or removes Saturday and Sunday in the calendars of operators, QC "
                               "analysts and QA reviewers: " + ", ".join(staff_calendars(base)),
                          **d.kept(f"wi_weekends::{h}", weekends_on(base))),
    "sterility_days": None,
    "policy": sb.radio("Release policy", ["full", "conditional"], horizontal=True,
                       help="conditional: release on the rapid results with sterility pending.",
                       **d.kept(f"wi_policy::{h}", policy0 if policy0 in ("full", "conditional") else "full")),
}
if sterility_tests(base):
    options = list(STERILITY)
    default = options[1] if ster0 is not None and ster0 <= 7 else options[0]
    pick = sb.radio("Sterility test", options,
                    help=f"Stored scenario: {ster0:g} days." if ster0 is not None else None,
                    **d.kept(f"wi_sterility::{h}", default))
    levers["sterility_days"] = ster0 if pick == default else STERILITY[pick]
reps = int(sb.number_input("Replications", min_value=1, max_value=100, step=1,
                           help="Replication r uses the same random numbers as the original's replication r.",
                           **d.kept(f"wi_reps::{h}", min(max(sel.n, 1), c.MAX_DEFAULT_RUNS))))

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
    st.markdown("\n".join(f"- {x}" for x in diff or [f"{k}: {v}" for k, v in overrides.items()]))
else:
    st.info("No lever differs from the stored scenario yet: change one in the sidebar.")
if problem:
    st.error(invalid_sentence(overrides, problem))
    with st.expander("The scenario check's full message"):
        st.code(problem, language="text")

pending = st.session_state.get("whatif_pending")
if pending:
    got = len(store.stored_replications(c.write_engine(db), pending["hash"]))
    if got < pending["reps"]:
        why = "you pressed Stop" if st.session_state.get("whatif_stopped") else "the page was left or reloaded"
        st.warning(f"The last run of **{pending['name']}** was interrupted ({why}) after {got} of "
                   f"{pending['reps']} replications were stored. It is listed as incomplete on every page. "
                   "Press Run with the same levers to store the missing replications (those stored are kept).")
    else:
        st.session_state.pop("whatif_pending", None)


def _stop() -> None:
    st.session_state["whatif_stopped"] = True


run_col, stop_col = st.columns([1, 6])
clicked = run_col.button("Run", type="primary", disabled=bool(problem) or not diff, key="wi_run",
                         help=f"Simulate {reps} replication(s) of {new['name']} and store them in "
                              f"{store.display_url(db)}. Pressing it again while it runs stores nothing twice.")
if clicked and scenario is not None:
    st.session_state["whatif_stopped"] = False
    content = scenario_hash(text)
    st.session_state["whatif_pending"] = {"name": scenario.name, "hash": content, "reps": reps}
    stop_col.button("Stop", key="wi_stop", on_click=_stop,
                    help="Stops after the replication being stored; what is stored stays, marked incomplete.")
    bar = st.progress(0.0, text=f"Running {new['name']}: simulating and storing {reps} replication(s) ...")
    t0 = time.perf_counter()

    def advance(done: int, planned: int) -> None:
        bar.progress(min(done / max(planned, 1), 1.0), text=f"Running: {done} of {planned} replication(s) "
                     f"simulated now ({time.perf_counter() - t0:.0f} s) ...")

    try:
        # the experiments path, as `celltx run -r N` takes it: only replications not yet stored run
        ran = fill_replications(scenario, text, reps, engine=c.write_engine(db), label="what-if", progress=advance)
        stored = by_rep_of(db, content)
        bar.progress(1.0, text=f"Done: {len(ran)} replication(s) simulated and stored in "
                     f"{time.perf_counter() - t0:.1f} s; {reps - len(ran)} were already stored")
        st.session_state.pop("whatif_pending", None)
        st.session_state["whatif_result"] = {
            "base": sel.scenario, "base_ids": sel.run_ids, "name": scenario.name, "hash": content,
            "ids": tuple(sorted(stored[r] for r in range(reps))), "changes": diff,
        }
    except store.StoreError as e:
        st.error(f"The runs could not be stored: {e}")

result = st.session_state.get("whatif_result")
if result and result["base"] == sel.scenario and problem:
    st.info("The result of the previous what-if is hidden while the levers do not make a valid scenario.")
elif result and result["base"] == sel.scenario:
    version = c.db_version(db)  # the database just changed: read the new runs
    stale = result["name"] != new["name"]
    st.subheader(f"Result: {result['name']} vs {sel.name}")
    if stale:
        st.warning("The levers were changed since this result: it shows the previous what-if "
                   f"({'; '.join(result['changes'])}). Press Run for the current levers.")
    st.success(f"Stored as scenario **{result['name']}**, runs {c.run_list(result['ids'])} "
               f"({'; '.join(result['changes'])}). Open it on any page from the sidebar's scenario list.")
    target = st.columns([1, 3])[0].number_input("On-time target: vein-to-vein days", min_value=1.0,
                                                max_value=365.0, step=1.0,
                                                **d.kept("wi_target", float(analysis.DEFAULT_TARGET_DAYS)))
    all_runs = c.runs_table(db, version)
    base_reps = d.by_replication(all_runs[all_runs["id"].isin(result["base_ids"])])
    new_reps = d.by_replication(all_runs[all_runs["id"].isin(result["ids"])])
    names = [f"{sel.name} (original)", result["name"]]
    table, pairings = d.paired_table(db, version, names, [base_reps, new_reps], float(target), c.COMPARE_PATHS)
    st.caption(pairings[0].sentence() + ". Δ is the what-if minus the original, replication by replication, "
               "on common random numbers (`celltx compare`'s paired difference).")
    d.show_paired(table, key="wi_table")
    fig = go.Figure()
    for label, ids in ((names[0], result["base_ids"]), (names[1], result["ids"])):
        tb = c.analysed("turnaround_breakdown", db, tuple(ids), version)
        e = analysis.ecdf(tb["vein_to_vein"]) if not tb.empty else pd.DataFrame({"value": [], "share": []})
        fig.add_trace(go.Scatter(x=e["value"], y=e["share"], mode="lines", line_shape="hv", name=label))
    fig.add_vline(x=target, line_dash="dash", line_color=c.WAIT_COLOUR)
    fig.update_layout(height=340, margin=dict(t=20, b=10), xaxis_title="vein-to-vein days",
                      yaxis_title="share of infused patients", yaxis_tickformat=".0%",
                      legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(fig, key="wi_ecdf")
