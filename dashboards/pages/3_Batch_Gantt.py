"""Batch Gantt: which batch held which suite and incubator when, line clearances and failed batches."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.express as px  # noqa: E402
import streamlit as st  # noqa: E402

import _common as c  # noqa: E402
from celltx_mfg import analysis  # noqa: E402

KINDS = ("suite", "incubator", "closed_device")
COLOURS = {"batch": "#1f77b4", "failed batch": "#d62728", "abandoned batch": "#ff7f0e",
           "line clearance": "#7f7f7f"}
PATTERNS = {"batch": "", "failed batch": "x", "abandoned batch": "/", "line clearance": "."}


@st.cache_data(show_spinner=False, max_entries=32)
def gantt_rows(db: str, run_ids: tuple[int, ...], version: tuple, run_id: int) -> pd.DataFrame:
    """Equipment holds of one run (from resource_uses) with the held batch's status: drawing data only."""
    f = c.frames(db, run_ids, version)
    u = f["resource_uses"]
    u = u[(u["run_id"] == run_id) & u["kind"].isin(KINDS)].copy()
    b = f["batches"]
    b = b[b["run_id"] == run_id]
    status = dict(zip(b["batch_no"], b["status"], strict=True))
    u["batch_status"] = u["batch_no"].map(status).fillna("-")
    u["category"] = np.select(
        [u["activity"] == "line_clearance", u["batch_status"].isin(analysis.FAILED_STATUSES),
         u["batch_status"] == "abandoned"],
        ["line clearance", "failed batch", "abandoned batch"], default="batch")
    u["end"] = u["end"].astype(float)
    return u[["kind", "unit", "coi", "batch_no", "activity", "requested", "start", "end", "batch_status",
              "category"]]


def _natural(unit: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", unit))


db, runs, version, sel = c.run_page("Batch Gantt")

top = st.columns([1, 2, 2])
run_id = top[0].selectbox("Run", list(sel.run_ids), key="gantt_run")
rows = gantt_rows(db, sel.run_ids, version, int(run_id))
kinds = [k for k in KINDS if k in set(rows["kind"])]
if rows.empty:
    st.info("This run recorded no suite or incubator holds.")
    st.stop()
shown_kinds = top[1].multiselect("Equipment", kinds, default=kinds, key="gantt_kinds")
first = sel.start
last = sel.start + dt.timedelta(days=float(sel.horizon))
default_from = sel.start + dt.timedelta(days=float(sel.warmup))
default_to = min(last, default_from + dt.timedelta(days=90))
window = top[2].slider("Date range", min_value=first, max_value=last, value=(default_from, default_to),
                       format="DD MMM YYYY", key="gantt_window")
lo = (window[0] - sel.start).days
hi = (window[1] - sel.start).days + 1

end = rows["end"].fillna(float(sel.horizon))  # a hold still open at the horizon is drawn to it
view = rows[rows["kind"].isin(shown_kinds) & (rows["start"] < hi) & (end > lo)].copy()
view["end"] = end[view.index].clip(upper=float(sel.horizon))
if view.empty:
    st.info("No holds in this date range.")
    st.stop()
view["from"] = c.to_dates(view["start"], sel.start).to_numpy()
view["to"] = c.to_dates(view["end"], sel.start).to_numpy()
view["days"] = (view["end"] - view["start"]).round(2)
view["batch_no"] = view["batch_no"].fillna("-")
units = sorted(set(view["unit"]), key=lambda u: (KINDS.index(view.loc[view["unit"] == u, "kind"].iloc[0]),
                                                  _natural(str(u))))
fig = px.timeline(
    view, x_start="from", x_end="to", y="unit", color="category", pattern_shape="category",
    color_discrete_map=COLOURS, pattern_shape_map=PATTERNS,
    category_orders={"unit": units, "category": list(COLOURS)},
    hover_data={"batch_no": True, "activity": True, "batch_status": True, "days": True, "unit": False,
                "category": False, "from": "|%d %b %Y %H:%M", "to": "|%d %b %Y %H:%M"},
)
fig.update_xaxes(range=[pd.Timestamp(window[0]), pd.Timestamp(window[1]) + pd.Timedelta(days=1)])
fig.update_layout(height=max(360, 18 * len(units) + 120), margin=dict(t=20, b=10), yaxis_title="",
                  legend=dict(orientation="h", y=1.04, title=""), bargap=0.15)
st.plotly_chart(fig, key="gantt_chart")

counts = view.drop_duplicates(["batch_no", "category"]).groupby("category").size()
st.caption(
    f"{int(counts.get('batch', 0))} batches, {int(counts.get('failed batch', 0))} failed "
    f"(red, crossed), {int(counts.get('abandoned batch', 0))} abandoned and "
    f"{int((view['category'] == 'line clearance').sum())} line clearances (grey, dotted) in this range."
)
with st.expander("Holds in range"):
    st.dataframe(view[["kind", "unit", "batch_no", "activity", "batch_status", "start", "end", "days"]],
                 hide_index=True)
