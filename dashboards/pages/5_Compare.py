"""Compare: two or more scenarios' KPIs side by side (means, 95% intervals, differences) and their
vein-to-vein distributions overlaid."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402

c.page_setup("Compare")
db, runs, version = c.require_runs()
keys = c.scenario_keys(runs)
names = list(keys)

st.sidebar.header("Scenarios")
chosen = st.sidebar.multiselect("Scenarios to compare (the first is the reference)", names,
                                **c.remember("compare_scenarios", "_keep_compare", names, names[:2], multi=True))
max_reps = st.sidebar.number_input("Replications per scenario (at most)", min_value=1, max_value=1000,
                                   value=c.MAX_DEFAULT_RUNS, step=1, key="compare_reps",
                                   help="The lowest-numbered replications of each scenario are used.")
target = st.sidebar.number_input("On-time target: vein-to-vein days", min_value=1.0, max_value=365.0,
                                 value=float(analysis.DEFAULT_TARGET_DAYS), step=1.0, key="compare_target")

st.title("Compare scenarios")
if len(chosen) < 2:
    st.info("Pick two or more scenarios in the sidebar.")
    st.stop()

summaries: dict[str, dict] = {}
breakdowns: dict[str, pd.DataFrame] = {}
used: dict[str, tuple[int, ...]] = {}
for name in chosen:
    ids = tuple(sorted(int(x) for x in keys[name]["id"].iloc[: int(max_reps)]))
    used[name] = ids
    summaries[name] = c.kpi_summary(db, ids, version, float(target))
    breakdowns[name] = c.analysed("turnaround_breakdown", db, ids, version)
st.caption(" · ".join(f"**{n}**: {len(ids)} run(s)" for n, ids in used.items())
           + f" · database `{c.store.display_url(db)}`. Same replication numbers share random numbers across "
           "scenarios.")

table = c.compare_table(summaries)
ref = chosen[0]
st.subheader("KPIs")
st.dataframe(
    table, hide_index=True,
    column_config={col: st.column_config.NumberColumn(format="%.3f") for col in table.columns if col != "KPI"},
)
st.caption(f"Values are per-scenario means over replications; ± is the 95% interval half-width "
           f"(analysis.summarise); Δ is the difference of means from **{ref}**.")

left, right = st.columns(2)
with left:
    st.subheader("Vein-to-vein ECDF")
    fig = go.Figure()
    for name, tb in breakdowns.items():
        e = analysis.ecdf(tb["vein_to_vein"]) if not tb.empty else pd.DataFrame({"value": [], "share": []})
        fig.add_trace(go.Scatter(x=e["value"], y=e["share"], mode="lines", line_shape="hv", name=name))
    fig.add_vline(x=target, line_dash="dash", line_color=c.WAIT_COLOUR, annotation_text=f"target {target:g} d")
    fig.update_layout(height=360, margin=dict(t=20, b=10), xaxis_title="vein-to-vein days",
                      yaxis_title="share of infused patients", yaxis_tickformat=".0%",
                      legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(fig, key="compare_ecdf")
with right:
    st.subheader("Vein-to-vein histogram")
    fig = go.Figure()
    for name, tb in breakdowns.items():
        fig.add_trace(go.Histogram(x=tb["vein_to_vein"], name=name, opacity=0.55, histnorm="probability",
                                   xbins=dict(size=1)))
    fig.update_layout(barmode="overlay", height=360, margin=dict(t=20, b=10), xaxis_title="vein-to-vein days",
                      yaxis_title="share of infused patients", yaxis_tickformat=".0%",
                      legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(fig, key="compare_hist")
