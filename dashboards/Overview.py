"""Overview: the headline KPIs of the selected runs, throughput over time and work in progress by stage.

Start with ``celltx dashboard --db PATH`` (or ``streamlit run dashboards/Overview.py`` with CELLTX_DB set).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plotly.express as px  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402

db, runs, version, sel = c.run_page("Overview")

target = st.columns([1, 3])[0].number_input(
    "On-time target: vein-to-vein days", min_value=1.0, max_value=365.0,
    value=float(analysis.DEFAULT_TARGET_DAYS), step=1.0, key="target_days",
    help="A patient is on time when first apheresis to infusion takes at most this many days.",
)
k = c.kpi_summary(db, sel.run_ids, version, float(target))

row1 = st.columns(4)
c.tile(row1[0], "Throughput / year", k, "throughput_per_year",
       help="Infusions inside the KPI window, per year (flow: whoever they were).")
c.tile(row1[1], "Patients infused", k, "patients_infused", help="Patients referred in the window and infused.")
c.tile(row1[2], "Patients lost", k, "patients_lost",
       help="Patients referred in the window and lost (dropout, failed attempts, ...).")
c.tile(row1[3], f"On time (≤ {target:g} d)", k, "on_time_share", percent=True,
       help="Share of infused patients whose vein-to-vein time met the target.")
row2 = st.columns(4)
c.tile(row2[0], "Vein-to-vein p50 (days)", k, "vein_to_vein_days.p50",
       help="Median days from first apheresis to infusion.")
c.tile(row2[1], "Vein-to-vein p90 (days)", k, "vein_to_vein_days.p90",
       help="90th percentile days from first apheresis to infusion.")
c.tile(row2[2], "Referral to infusion p50 (days)", k, "referral_to_infusion_days.p50",
       help="Median days from referral to infusion: the turnaround the patient feels, the wait for a slot "
            "included (vein-to-vein starts at apheresis and cannot see it).")
c.tile(row2[3], "Referral to infusion p90 (days)", k, "referral_to_infusion_days.p90",
       help="90th percentile days from referral to infusion.")
row3 = st.columns(4)
c.tile(row3[0], "Manufacturing days (mean)", k, "manufacturing_days.mean",
       help="Mean days from the first processing step to cryopreservation.")
c.tile(row3[1], "Patients still in progress", k, "patients_in_progress",
       help="Referred in the window, neither infused nor lost at the horizon (censored).")
c.tile(row3[2], "Work in progress (mean patients)", k, "wip_mean.in_system",
       help="Patients in the system on average over the KPI window, integrated exactly over time.")
c.tile(row3[3], "Labour share of cost", k, "labour_cost_share", percent=True,
       help="Labour (staff paid for their shifts) as a share of the run's total cost.")

st.subheader("Infusions over time")
period = st.radio("Period", ["week", "month"], horizontal=True, key="overview_period")
freq = 7.0 if period == "week" else analysis.DAYS_PER_YEAR / 12
inf = c.analysed("infusions_over_time", db, sel.run_ids, version, freq_days=freq, horizon=sel.horizon)
per_period = inf.groupby("period_start", as_index=False)["infusions"].mean()  # mean over replications
per_period["date"] = c.to_dates(per_period["period_start"], sel.start).to_numpy()
fig = px.bar(per_period, x="date", y="infusions",
             labels={"infusions": f"infusions per {period}" + (" (mean of runs)" if sel.n > 1 else ""),
                     "date": ""})
warm_end = c.to_dates([sel.warmup], sel.start).iloc[0]
fig.add_vrect(x0=c.to_dates([0.0], sel.start).iloc[0], x1=warm_end, fillcolor="grey", opacity=0.12,
              line_width=0, annotation_text="warm-up (not in KPIs)", annotation_position="top left")
fig.update_layout(height=320, margin=dict(t=30, b=10))
st.plotly_chart(fig, key="infusions_chart")

st.subheader("Work in progress by stage")
wip = c.analysed("wip_over_time", db, sel.run_ids, version, step_days=1.0, horizon=sel.horizon)
stages = list(analysis.WIP_STAGES)
mean_wip = wip.groupby("time", as_index=False)[stages].mean()  # mean over replications
mean_wip["date"] = c.to_dates(mean_wip["time"], sel.start).to_numpy()
fig = go.Figure()
for stage in stages:
    fig.add_trace(go.Scatter(x=mean_wip["date"], y=mean_wip[stage], name=stage.replace("_", " "),
                             stackgroup="wip", mode="lines", line=dict(width=0.5, color=c.WIP_COLOURS[stage])))
fig.add_vline(x=warm_end, line_dash="dot", line_color="grey")
fig.update_layout(height=360, margin=dict(t=30, b=10),
                  yaxis_title="patients" + (" (mean of runs)" if sel.n > 1 else ""),
                  legend=dict(orientation="h", y=-0.15))
st.plotly_chart(fig, key="wip_chart")
st.caption("Waiting for a slot counts referred patients before their first apheresis and between attempts. "
           "The chart samples each day at midnight; the averages below integrate over time exactly.")
wip_means = {stage: c.kpi_value(k, f"wip_mean.{stage}")[0] for stage in stages}
st.dataframe([{"stage": stage.replace("_", " "), "mean patients (KPI window)": v} for stage, v in wip_means.items()],
             hide_index=True)

with st.expander("All KPIs of the selection"):
    table = c.compare_table({sel.scenario: k}, [p for p, _ in c.flatten(k)])
    st.dataframe(table, hide_index=True)
