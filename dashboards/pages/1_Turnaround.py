"""Turnaround: how long patients wait from apheresis (and from referral) to infusion, and which stage the
days go to."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.express as px  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402

db, runs, version, sel = c.run_page("Turnaround")

target = st.columns([1, 3])[0].number_input("On-time target: vein-to-vein days", min_value=1.0, max_value=365.0,
                         value=float(analysis.DEFAULT_TARGET_DAYS), step=1.0, key="turnaround_target")
k = c.kpi_summary(db, sel.run_ids, version, float(target))
tb = c.analysed("turnaround_breakdown", db, sel.run_ids, version)

cols = st.columns(4)
c.tile(cols[0], "Vein-to-vein p50 (days)", k, "vein_to_vein_days.p50")
c.tile(cols[1], "Vein-to-vein p90 (days)", k, "vein_to_vein_days.p90")
c.tile(cols[2], "Referral to infusion p50 (days)", k, "referral_to_infusion_days.p50",
       help="The turnaround the patient feels: vein-to-vein plus the wait for a slot.")
c.tile(cols[3], "Referral to infusion p90 (days)", k, "referral_to_infusion_days.p90")
cols = st.columns(4)
c.tile(cols[0], f"On time (≤ {target:g} d)", k, "on_time_share", percent=True)
c.tile(cols[1], "Wait for a slot (mean days)", k, "wait_for_slot_days.mean")
st.caption("Tiles: KPI cohort (patients referred in the KPI window). Charts: every infused patient of the "
           "selected runs, from turnaround_breakdown.")

if tb.empty:
    st.info("No patient of the selected runs was infused before the horizon: nothing to break down.")
    st.stop()

TURNAROUNDS = {  # radio label -> (turnaround_breakdown column, axis label)
    "vein-to-vein (from first apheresis)": ("vein_to_vein", "vein-to-vein days"),
    "referral to infusion (slot wait included)": ("referral_to_infusion", "referral-to-infusion days"),
}
shown_as = st.radio("Turnaround measured", list(TURNAROUNDS), horizontal=True, key="turnaround_measure",
                    help="The on-time target line applies to vein-to-vein.")
col, label = TURNAROUNDS[shown_as]
left, right = st.columns(2)
with left:
    st.subheader("Distribution")
    fig = px.histogram(tb, x=col, nbins=40, labels={col: label})
    if col == "vein_to_vein":
        fig.add_vline(x=target, line_dash="dash", line_color=c.WAIT_COLOUR, annotation_text=f"target {target:g} d")
    fig.update_layout(height=340, margin=dict(t=30, b=10), yaxis_title="patients", bargap=0.05)
    st.plotly_chart(fig, key="v2v_hist")
with right:
    st.subheader("Share infused within x days (ECDF)")
    e = analysis.ecdf(tb[col])
    fig = go.Figure(go.Scatter(x=e["value"], y=e["share"], mode="lines", line_shape="hv", name=label))
    if col == "vein_to_vein":
        fig.add_vline(x=target, line_dash="dash", line_color=c.WAIT_COLOUR, annotation_text=f"target {target:g} d")
    fig.update_layout(height=340, margin=dict(t=30, b=10), xaxis_title=label,
                      yaxis_title="share of infused patients", yaxis_tickformat=".0%")
    st.plotly_chart(fig, key="v2v_ecdf")

st.subheader("Where the days went: referral to infusion")
stages = list(analysis.TURNAROUND_STAGES)
means = tb[stages].mean()  # average of turnaround_breakdown's per-patient stage days
fig = go.Figure()
for stage in stages:
    wait = stage in analysis.WAIT_STAGES
    fig.add_trace(go.Bar(
        y=["average infused patient"], x=[means[stage]], orientation="h",
        name=f"{stage.replace('_', ' ')}{' (wait)' if wait else ''}",
        marker=dict(color=c.STAGE_COLOURS[stage], pattern_shape="/" if wait else ""),
        hovertemplate=f"{stage}: %{{x:.1f}} days<extra></extra>",
    ))
fig.update_layout(barmode="stack", height=220, margin=dict(t=10, b=10), xaxis_title="days",
                  legend=dict(orientation="h", y=-0.45))
st.plotly_chart(fig, key="breakdown_bar")
worst = max(stages, key=lambda s: means[s] if s in analysis.WAIT_STAGES else -1)
st.markdown(
    f"Pure waits ({', '.join(analysis.WAIT_STAGES)}) are hatched. The largest wait is **{worst.replace('_', ' ')}**"
    f" at {means[worst]:.1f} days on average out of {tb['referral_to_infusion'].mean():.1f} days from referral"
    " to infusion."
)

SPREAD_SAMPLE = 3000  # patients drawn for the spread chart: a box of every patient of 100 runs is megabytes
shown = tb if len(tb) <= SPREAD_SAMPLE else tb.sample(SPREAD_SAMPLE, random_state=0)
long = shown.melt(id_vars=["coi"], value_vars=stages, var_name="stage", value_name="days")
fig = px.box(long, x="days", y="stage", color="stage", color_discrete_map=c.STAGE_COLOURS, points=False,
             category_orders={"stage": stages})
fig.update_layout(height=360, margin=dict(t=10, b=10), showlegend=False)
st.plotly_chart(fig, key="breakdown_box")
st.caption("Spread of each stage over infused patients (box: quartiles and median; whiskers: minimum to maximum)"
           + (f"; a random sample of {SPREAD_SAMPLE:,} of {len(tb):,} patients." if len(shown) < len(tb) else "."))

with st.expander("Per-patient breakdown (turnaround_breakdown)"):
    st.dataframe(tb, hide_index=True)
