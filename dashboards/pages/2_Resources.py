"""Resources: the bottleneck (effective utilisation, queue-days, and on request the marginal value of one more
unit), utilisation per kind and per unit, and queues over time."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402
from celltx_mfg import bottleneck as bn  # noqa: E402
from celltx_mfg.config import ScenarioError, parse_text  # noqa: E402
from celltx_mfg.experiments import ExperimentError  # noqa: E402
from celltx_mfg.experiments import bottleneck as design  # noqa: E402
from celltx_mfg.model.capacity import effective_capacity  # noqa: E402

db, runs, version, sel = c.run_page("Resources")

k = c.kpi_summary(db, sel.run_ids, version, analysis.DEFAULT_TARGET_DAYS)


@st.cache_data(show_spinner=False, max_entries=64)
def measures(db: str, run_ids: tuple[int, ...], version: tuple) -> pd.DataFrame:
    """``bottleneck.resource_measures`` of the stored runs against the effective capacity of their scenario."""
    meta = c.run_meta(db, run_ids[0], version)
    scenario = parse_text(meta["scenario_text"], str(meta.get("scenario_name", "stored scenario")))
    return bn.resource_measures(c.frames(db, run_ids, version), effective_capacity(scenario), float(meta["horizon"]),
                                float(meta["warmup"]))


ranking = measures(db, sel.run_ids, version)

st.subheader("Bottleneck")
marginal = st.session_state.get("bottleneck_result")
if marginal is not None and marginal["key"] != (sel.scenario_hash, sel.run_ids):
    marginal = None
top = bn.headline(ranking)
if marginal is not None and marginal["binding"] is not None:
    b = marginal["binding"]
    st.markdown(f"Binding constraint: **{b['kind']}**: {b['lever']} changes {marginal['kpi']} by "
                f"{c.fmt(b['mean'], 2)} ± {c.fmt(b['ci95'], 2)} ({marginal['replications']} paired "
                f"replications), effective utilisation {c.fmt(b['effective_utilisation'], 1, percent=True)}.")
elif marginal is not None:
    st.markdown(f"No binding constraint on {marginal['kpi']}: no single extra unit changes it significantly at "
                f"{marginal['replications']} replications.")
if top is not None:
    st.markdown(f"Fullest: **{top['kind']}** at {c.fmt(top['effective_utilisation'], 1, percent=True)} of what "
                f"its calendar and the booking rules let it be used for ({c.fmt(top['utilisation'], 1, percent=True)}"
                f" of every open day), {c.fmt(top['queue_days'])} queue-days in the KPI window"
                + (" (mean of runs)." if sel.n > 1 else "."))
table = ranking.copy()
if marginal is not None:
    mv = {e["kind"]: e for e in marginal["ranking"]}
    table["marginal_value"] = table["kind"].map(lambda x: mv.get(x, {}).get("mean"))
    table["ci95"] = table["kind"].map(lambda x: mv.get(x, {}).get("ci95"))
    table["improves"] = table["kind"].map(lambda x: mv.get(x, {}).get("improves"))
    order = {e["kind"]: i for i, e in enumerate(marginal["ranking"])}
    table = table.sort_values("kind", key=lambda s: s.map(order)).reset_index(drop=True)
st.dataframe(
    table, hide_index=True,
    column_order=["kind", "effective_utilisation", "utilisation", "queue_days", "mean_wait_days", "holds",
                  "marginal_value", "ci95", "improves", "units", "busy_unit_days", "effective_unit_days",
                  "nominal_unit_days", "rule"],
    column_config={
        "effective_utilisation": st.column_config.ProgressColumn(
            "effective utilisation", format="percent", min_value=0.0, max_value=1.0,
            help="Busy (suites: reserved) unit-days over what the calendar and booking rules allow"),
        "utilisation": st.column_config.ProgressColumn("utilisation (every open day)", format="percent",
                                                       min_value=0.0, max_value=1.0),
        "queue_days": st.column_config.NumberColumn("queue-days", format="%.1f"),
        "mean_wait_days": st.column_config.NumberColumn("mean wait per hold (days)", format="%.2f"),
        "marginal_value": st.column_config.NumberColumn("change in KPI from +1 unit", format="%.3f"),
        "ci95": st.column_config.NumberColumn("± 95%", format="%.3f"),
        "busy_unit_days": st.column_config.NumberColumn(format="%.1f"),
        "effective_unit_days": st.column_config.NumberColumn(format="%.1f"),
        "nominal_unit_days": st.column_config.NumberColumn(format="%.1f"),
    },
)
with st.expander("Marginal value of one more unit (runs the what-ifs)"):
    st.caption("For every kind: the plant with one more unit (a chair or infusion slot a day at every site), "
               "on the same random numbers as the unchanged plant; the binding kind is the one whose extra unit "
               "improves the KPI most, significantly. The same as `celltx bottleneck FILE -r N --kpi KPI` on "
               "this scenario; nothing is stored.")
    m1, m2 = st.columns(2)
    kpi = m1.text_input("Target KPI", value=bn.DEFAULT_KPI, key="bn_kpi")
    reps = int(m2.number_input("Paired replications per kind", min_value=2, max_value=100,
                               value=max(2, min(sel.n, c.MAX_DEFAULT_RUNS)), step=1, key="bn_reps"))
    if st.button("Compute marginal values", key="bn_run"):
        text = c.run_meta(db, sel.run_ids[0], version)["scenario_text"]
        try:
            with st.spinner(f"Simulating {reps} replication(s) of the plant and of one more unit of each kind ..."):
                result = design.bottleneck(parse_text(text, sel.name), text, reps, kpi.strip())
        except (ExperimentError, ScenarioError) as e:
            st.error(e.render() if isinstance(e, ScenarioError) else str(e))
        else:
            out = result.as_json()
            binding = next((e for e in out["ranking"] if e["kind"] == result.binding), None)
            st.session_state["bottleneck_result"] = {
                "key": (sel.scenario_hash, sel.run_ids), "kpi": result.kpi, "replications": reps,
                "ranking": [{"kind": e["kind"], **(e["marginal_value"] or {})} for e in out["ranking"]],
                "binding": None if binding is None else {
                    "kind": binding["kind"], "lever": binding["lever"],
                    "effective_utilisation": binding["effective_utilisation"], **binding["marginal_value"]},
            }
            st.rerun()

st.subheader("Utilisation per kind")
util = k.get("utilisation") or {}
ci = (k.get("ci95") or {}).get("utilisation") or {}
ud = pd.DataFrame({"kind": list(util), "utilisation": [util[x] for x in util],
                   "ci95": [ci.get(x) for x in util]}).sort_values("utilisation", ascending=False)
if ud.empty:
    st.info("No resource availability recorded for these runs.")
else:
    fig = go.Figure(go.Bar(
        x=ud["kind"], y=ud["utilisation"],
        error_y=dict(type="data", array=ud["ci95"].fillna(0).to_numpy(), visible=bool(ud["ci95"].notna().any())),
        marker_color=["#d62728" if u >= 0.85 else "#1f77b4" for u in ud["utilisation"]],
        hovertemplate="%{x}: %{y:.1%}<extra></extra>",
    ))
    fig.add_hline(y=0.85, line_dash="dot", line_color="grey", annotation_text="85%")
    fig.update_layout(height=320, margin=dict(t=20, b=10), yaxis_tickformat=".0%", yaxis_title="utilisation")
    st.plotly_chart(fig, key="util_kind")
    st.caption("Busy time (line clearance included) over available time in the KPI window; staff against "
               "their shifts. Error bars: 95% interval over replications.")

st.subheader("Utilisation per unit")
units = c.analysed("utilisation_by_unit", db, sel.run_ids, version, horizon=sel.horizon, warmup=sel.warmup)
kinds = [x for x in dict.fromkeys(units["kind"]) if x] if not units.empty else []
if kinds:
    default = kinds.index("suite") if "suite" in kinds else 0
    kind = st.selectbox("Resource kind", kinds, index=default, key="unit_kind")
    mine = units[units["kind"] == kind]
    per_unit = mine.groupby("unit", as_index=False, sort=False)[
        ["busy_days", "line_clearance_days", "utilisation"]].mean()  # mean over replications
    per_unit["processing_days"] = per_unit["busy_days"] - per_unit["line_clearance_days"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=per_unit["unit"], y=per_unit["processing_days"], name="held for batches",
                         marker_color="#1f77b4"))
    fig.add_trace(go.Bar(x=per_unit["unit"], y=per_unit["line_clearance_days"], name="line clearance",
                         marker_color="#7f7f7f"))
    fig.update_layout(barmode="stack", height=320, margin=dict(t=20, b=10), yaxis_title="busy days in window",
                      xaxis_type="category", legend=dict(orientation="h", y=1.1))
    st.plotly_chart(fig, key="util_unit")
    st.dataframe(per_unit[["unit", "busy_days", "line_clearance_days", "utilisation"]], hide_index=True,
                 column_config={"utilisation": st.column_config.ProgressColumn(
                     "utilisation", format="percent", min_value=0.0, max_value=1.0)})

st.subheader("Queue length over time")
all_kinds = sorted(set(units["kind"])) if not units.empty else []
if all_kinds:
    qc1, qc2 = st.columns(2)
    qkind = qc1.selectbox("Resource kind", all_kinds,
                          index=all_kinds.index("suite") if "suite" in all_kinds else 0, key="queue_kind")
    qrun = qc2.selectbox("Run", list(sel.run_ids), key="queue_run",
                         help="Queues of one replication (several overlaid would hide the steps).")
    q = c.analysed("queue_length_over_time", db, sel.run_ids, version, kind=qkind)
    if "run_id" in q.columns:
        q = q[q["run_id"] == int(qrun)].copy()
    q["date"] = c.to_dates(q["time"], sel.start).to_numpy()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=q["date"], y=q["queue_length"], name="waiting", mode="lines", line_shape="hv",
                             line=dict(color=c.WAIT_COLOUR)))
    fig.add_trace(go.Scatter(x=q["date"], y=q["in_use"], name="in use", mode="lines", line_shape="hv",
                             line=dict(color="#1f77b4", width=1)))
    fig.update_layout(height=320, margin=dict(t=20, b=10), yaxis_title=f"{qkind} holds",
                      legend=dict(orientation="h", y=1.1))
    st.plotly_chart(fig, key="queue_chart")
