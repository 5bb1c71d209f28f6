"""Deviations & losses: GMP deviations by kind, severity and stage; lost patients by stage and reason."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.express as px  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402

SEVERITY_COLOURS = {"minor": "#ffbf00", "major": "#ff7f0e", "critical": "#d62728"}

db, runs, version, sel = c.run_page("Deviations & losses")

k = c.kpi_summary(db, sel.run_ids, version, analysis.DEFAULT_TARGET_DAYS)
cols = st.columns(5)
c.tile(cols[0], "Critical deviations", k, "deviations.critical", help="In the KPI window.")
c.tile(cols[1], "Major deviations", k, "deviations.major", help="In the KPI window.")
c.tile(cols[2], "Minor deviations", k, "deviations.minor", help="In the KPI window.")
c.tile(cols[3], "Patients lost", k, "patients_lost", help="Referred in the KPI window and lost.")
c.tile(cols[4], "OOS product released", k, "oos_released",
       help="Out-of-specification batches supplied under exceptional release.")
st.caption("Tiles: KPI window (kpis). Charts and tables below: the whole run of every selected replication "
           "(deviations_table, losses_table); per_run = count / replications.")

st.header("Deviations")
dt_ = c.analysed("deviations_table", db, sel.run_ids, version)
if dt_.empty:
    st.info("No deviations recorded in the selected runs.")
else:
    order = {"severity": [s for s in ("critical", "major", "minor") if s in set(dt_["severity"])]}
    left, right = st.columns(2)
    with left:
        fig = px.bar(dt_, x="per_run", y="kind", color="severity", orientation="h",
                     color_discrete_map=SEVERITY_COLOURS, category_orders=order,
                     labels={"per_run": "deviations per run", "kind": ""}, title="By kind and severity")
        fig.update_layout(height=380, margin=dict(t=40, b=10), yaxis={"categoryorder": "total ascending"})
        st.plotly_chart(fig, key="dev_kind")
    with right:
        fig = px.bar(dt_, x="stage", y="per_run", color="severity", color_discrete_map=SEVERITY_COLOURS,
                     category_orders=order, labels={"per_run": "deviations per run", "stage": ""},
                     title="By stage and severity")
        fig.update_layout(height=380, margin=dict(t=40, b=10), xaxis={"categoryorder": "total descending"})
        st.plotly_chart(fig, key="dev_stage")
    st.dataframe(dt_, hide_index=True, column_config={
        "per_run": st.column_config.NumberColumn(format="%.2f"),
        "mean_days_to_close": st.column_config.NumberColumn("mean days to close", format="%.1f"),
    })

st.header("Losses")
lt = c.analysed("losses_table", db, sel.run_ids, version)
if lt.empty:
    st.info("No patient was lost in the selected runs.")
else:
    fig = px.bar(lt, x="lost_stage", y="per_run", color="lost_reason",
                 labels={"per_run": "patients lost per run", "lost_stage": "stage when lost",
                         "lost_reason": "reason"})
    fig.update_layout(height=360, margin=dict(t=20, b=10), xaxis={"categoryorder": "total descending"})
    st.plotly_chart(fig, key="loss_chart")
    st.dataframe(lt, hide_index=True, column_config={
        "per_run": st.column_config.NumberColumn(format="%.2f"),
        "share_of_lost": st.column_config.ProgressColumn("share of lost", format="percent", min_value=0.0,
                                                          max_value=1.0),
        "mean_days_referral_to_loss": st.column_config.NumberColumn("mean days referral → loss", format="%.1f"),
    })
