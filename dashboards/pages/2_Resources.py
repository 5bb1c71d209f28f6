"""Resources: utilisation per kind and per unit, queues over time, and the bottleneck ranking."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402

db, runs, version, sel = c.run_page("Resources")

k = c.kpi_summary(db, sel.run_ids, version, analysis.DEFAULT_TARGET_DAYS)
ranking = c.analysed("bottleneck_ranking", db, sel.run_ids, version, horizon=sel.horizon, warmup=sel.warmup)

st.subheader("Bottleneck ranking")
if not ranking.empty:
    top = ranking.iloc[0]
    st.markdown(f"Likeliest bottleneck: **{top['kind']}** at {c.fmt(top['utilisation'], 1, percent=True)} "
                f"utilisation, {c.fmt(top['queue_wait_days'])} days of queueing in the KPI window"
                + (" (mean of runs)." if sel.n > 1 else "."))
st.dataframe(
    ranking, hide_index=True,
    column_order=["kind", "utilisation_rank", "queue_wait_rank", "utilisation", "queue_wait_days",
                  "mean_wait_days", "holds", "capacity", "busy_unit_days", "available_unit_days"],
    column_config={
        "utilisation": st.column_config.ProgressColumn("utilisation", format="percent", min_value=0.0,
                                                       max_value=1.0),
        "queue_wait_days": st.column_config.NumberColumn("queue wait (days)", format="%.1f"),
        "mean_wait_days": st.column_config.NumberColumn("mean wait per hold (days)", format="%.2f"),
        "busy_unit_days": st.column_config.NumberColumn(format="%.1f"),
        "available_unit_days": st.column_config.NumberColumn(format="%.1f"),
    },
)

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
