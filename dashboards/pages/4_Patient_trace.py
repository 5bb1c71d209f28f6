"""Patient trace: one chain of identity's whole journey, in time order (analysis.patient_trace)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402

KIND_COLOURS = {"patient": "#2ca02c", "batch": "#9467bd", "resource": "#1f77b4", "step": "#17becf",
                "qc": "#bcbd22", "deviation": "#d62728", "release": "#e377c2", "shipment": "#8c564b"}


@st.cache_data(show_spinner=False, max_entries=32)
def patients_of(db: str, run_ids: tuple[int, ...], version: tuple, run_id: int) -> pd.DataFrame:
    p = c.frames(db, run_ids, version)["patients"]
    return p[p["run_id"] == run_id].drop(columns="run_id").reset_index(drop=True)


db, runs, version, sel = c.run_page("Patient trace")

top = st.columns([1, 1, 3])
run_id = int(top[0].selectbox("Run", list(sel.run_ids), key="trace_run"))
patients = patients_of(db, sel.run_ids, version, run_id)
if patients.empty:
    st.info("This run has no patients.")
    st.stop()
statuses = ["all"] + sorted(set(patients["status"]))
status = top[1].selectbox("Status", statuses, key="trace_status")
pool = patients if status == "all" else patients[patients["status"] == status]
labels = {r.coi: f"{r.coi} · {r.status} · {r.site}" for r in pool.itertuples(index=False)}
coi = top[2].selectbox("Chain-of-identity id (type to search)", list(labels), format_func=labels.get,
                       key="trace_coi")
if coi is None:
    st.stop()

trace = c.analysed("patient_trace", db, sel.run_ids, version, coi=coi, run_id=run_id)
if "run_id" in trace.columns:
    trace = trace.drop(columns="run_id")
trace.insert(0, "date", c.to_dates(trace["time"], sel.start).dt.strftime("%a %d %b %Y %H:%M").to_numpy())

record = patients[patients["coi"] == coi].iloc[0]
cols = st.columns(4)
cols[0].metric("Status", str(record["status"]))
cols[1].metric("Site", str(record["site"]))
cols[2].metric("Attempts", int(record["attempts"]))
cols[3].metric("Urgency", str(record["urgency"]))

spans = trace[trace["end"].notna() & (trace["end"] > trace["time"])].copy()
if not spans.empty:
    spans["from"] = c.to_dates(spans["time"], sel.start).to_numpy()
    spans["to"] = c.to_dates(spans["end"], sel.start).to_numpy()
    spans["row"] = spans["kind"] + ": " + spans["what"].astype(str)
    fig = px.timeline(spans, x_start="from", x_end="to", y="row", color="kind", color_discrete_map=KIND_COLOURS,
                      hover_data={"detail": True, "batch_no": True, "row": False})
    instants = trace[trace["end"].isna() & trace["kind"].isin(["patient", "batch", "release"])]
    for r in instants.itertuples(index=False):
        fig.add_vline(x=c.to_dates([r.time], sel.start).iloc[0], line_dash="dot", line_width=1,
                      line_color=KIND_COLOURS.get(r.kind, "grey"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(300, 22 * spans["row"].nunique() + 120), margin=dict(t=20, b=10), yaxis_title="",
                      legend=dict(orientation="h", y=1.05, title=""))
    st.plotly_chart(fig, key="trace_chart")
    st.caption("Bars: holds, steps, tests, shipments, open deviations. Dotted lines: patient, batch and release "
               "milestones.")

st.subheader(f"Journey of {coi}")
st.dataframe(trace, hide_index=True, column_config={
    "time": st.column_config.NumberColumn("day", format="%.2f"),
    "end": st.column_config.NumberColumn("end day", format="%.2f"),
})
