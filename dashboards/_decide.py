"""What the decision pages (Compare, What-if, Resources, Sweep) share: whether a stored scenario is whole,
paired differences of stored runs (the computation ``celltx compare`` makes), settings kept across page
switches and sweeps recognised from their cell names.

Every difference shown is ``experiments.paired_rows`` over replication r of one scenario against
replication r of the other, on the replications both have: never a difference of two independent means.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

import _common as c
from celltx_mfg import analysis
from celltx_mfg.experiments import paired_rows, planned_size


# ------------------------------------------------------------------------------------ whole or not
@dataclass(frozen=True)
class GroupState:
    """One scenario text's stored runs: distinct replications, the size its labels planned (None: not
    recorded, e.g. ``celltx run``), and whether replication numbers repeat."""

    replications: int
    planned: int | None
    repeated: bool

    @property
    def complete(self) -> bool:
        return self.planned is None or self.replications >= self.planned

    def describe(self) -> str:
        if self.complete:
            return f"{self.replications} replication(s)"
        return f"incomplete: {self.replications} of {self.planned} replications stored"


def group_state(g: pd.DataFrame) -> GroupState:
    """Whether a scenario's runs are whole: the largest group size any of its labels records."""
    sizes = [n for n in (planned_size(x if isinstance(x, str) else None) for x in g["label"]) if n]
    reps = g["replication"].astype(int)
    return GroupState(int(reps.nunique()), max(sizes) if sizes else None, bool(reps.duplicated().any()))


def first_per_replication(g: pd.DataFrame) -> pd.DataFrame:
    """One run per replication number (the first stored): a replication repeated by an old double-click
    is never counted twice."""
    return g.sort_values(["replication", "id"]).drop_duplicates("replication", keep="first")


# ------------------------------------------------------------------------------- paired differences
@c.guarded
@st.cache_data(show_spinner=False, max_entries=128)
def per_run_kpis(db: str, run_ids: tuple[int, ...], version: tuple, target_days: float) -> dict[int, dict]:
    """``analysis.kpis`` of every run, keyed by run id (what ``celltx compare`` pairs)."""
    meta = c.run_meta(db, run_ids[0], version)
    f = c.kpi_frames(db, run_ids, version)
    costs = {rid: c.run_meta(db, rid, version).get("costs") for rid in run_ids}
    return {int(k): v for k, v in
            analysis.kpis_by_run(f, meta["horizon"], meta["warmup"], costs, target_days=target_days).items()}


@dataclass(frozen=True)
class Pairing:
    """Which replications a comparison pairs: those both scenarios have, replication r with r."""

    reference: str
    scenario: str
    common: tuple[int, ...]
    n_reference: int
    n_scenario: int

    def sentence(self) -> str:
        both = f"{len(self.common)} paired replication(s)"
        if self.n_reference == self.n_scenario == len(self.common):
            return f"{both} (n = {len(self.common)} on each side)"
        return (f"{both}: {self.reference} has {self.n_reference} and {self.scenario} has {self.n_scenario}, "
                f"so only the replications both have are paired (replication r with replication r)")


def pair(reference: str, ref: Mapping[int, int], scenario: str, other: Mapping[int, int]) -> Pairing:
    """ref/other: replication -> run id."""
    common = tuple(sorted(set(ref) & set(other)))
    return Pairing(reference, scenario, common, len(ref), len(other))


def paired_table(db: str, version: tuple, names: Sequence[str], by_rep: Sequence[Mapping[int, int]],
                 target_days: float, paths: Sequence[str]) -> tuple[pd.DataFrame, list[Pairing]]:
    """Per scenario after the first: the paired difference of every KPI on the common replications.
    Long form (one row per scenario and KPI) so three or four scenarios never run off the screen."""
    frames, pairings = [], []
    ref_kpis = per_run_kpis(db, tuple(sorted(by_rep[0].values())), version, target_days)
    for j in range(1, len(names)):
        p = pair(names[0], by_rep[0], names[j], by_rep[j])
        pairings.append(p)
        if not p.common:
            continue
        other = per_run_kpis(db, tuple(sorted(by_rep[j].values())), version, target_days)
        rows = paired_rows([names[0], names[j]], [[ref_kpis[by_rep[0][r]] for r in p.common],
                                                  [other[by_rep[j][r]] for r in p.common]], list(paths))
        frames.append(pd.DataFrame(rows))
    if not frames:
        return pd.DataFrame(), pairings
    out = pd.concat(frames, ignore_index=True)
    out["n (paired)"] = out["pairs"]
    return out, pairings


def show_paired(table: pd.DataFrame, key: str) -> None:
    """The answer first: Δ and its interval, then the two means; long KPI names wrap."""
    if table.empty:
        st.warning("No replication number is stored for both scenarios: nothing can be paired.")
        return
    view = pd.DataFrame({
        "scenario": table["scenario"],
        "KPI": table["kpi"],
        "Δ (paired)": table["difference"],
        "± 95%": table["half_width"],
        "significant": table["significant"],
        "reference": table["mean_reference"],
        "scenario mean": table["mean_scenario"],
        "n (paired)": table["pairs"],
    })
    st.dataframe(view, hide_index=True, key=key, column_config={
        "scenario": st.column_config.TextColumn(width="small"),
        "KPI": st.column_config.TextColumn(width="medium"),
        "Δ (paired)": st.column_config.NumberColumn(format="%.2f", help="mean of (scenario − reference) over "
                                                    "paired replications, as `celltx compare` reports"),
        "± 95%": st.column_config.NumberColumn(format="%.2f", help="95% t-interval half-width of the paired "
                                               "difference"),
        "reference": st.column_config.NumberColumn(format="%.2f"),
        "scenario mean": st.column_config.NumberColumn(format="%.2f"),
    })


def by_replication(g: pd.DataFrame, limit: int | None = None) -> dict[int, int]:
    """Replication -> run id, one run per replication, the lowest-numbered ``limit`` replications."""
    g = first_per_replication(g)
    if limit is not None:
        g = g.iloc[:limit]
    return {int(r["replication"]): int(r["id"]) for _, r in g.iterrows()}


# ------------------------------------------------------------------------------- kept across pages
def kept(key: str, default: Any) -> Any:
    """A widget's value carried over page switches: Streamlit drops the state of widgets a page did not
    draw, so the value is copied to a plain key on change and put back before the widget is drawn."""
    store = f"_kept::{key}"
    if store in st.session_state and key not in st.session_state:
        st.session_state[key] = st.session_state[store]
    if key not in st.session_state:
        st.session_state[key] = default
    return {"key": key, "on_change": _copy, "args": (key,)}


def _copy(key: str) -> None:
    st.session_state[f"_kept::{key}"] = st.session_state[key]


def keep_now(key: str) -> None:
    """Copy a widget's current value to its kept key (for values set before the first change)."""
    if key in st.session_state:
        st.session_state[f"_kept::{key}"] = st.session_state[key]


# ---------------------------------------------------------------------------------------- sweeps
_CELL = re.compile(r"^(?P<root>.+)\[(?P<levers>[^\[\]]+)\]$")


@dataclass(frozen=True)
class SweepCell:
    key: str  # the display key of the scenario
    root: str
    levers: dict[str, str]


def sweep_cell(name: str, key: str) -> SweepCell | None:
    """A scenario ``celltx sweep`` stored: named ``<base>[lever=value,...]`` (experiments.apply_overrides)."""
    m = _CELL.match(name)
    if not m:
        return None
    levers: dict[str, str] = {}
    for part in m["levers"].split(","):
        if "=" not in part:
            return None
        k, v = part.split("=", 1)
        levers[k.strip()] = v.strip()
    return SweepCell(key, m["root"], levers)


def sweeps(keys: Mapping[str, pd.DataFrame]) -> dict[str, list[SweepCell]]:
    """Sweeps in the store: cells of one base that vary the same levers, two or more of them.
    Titled ``<base> · <lever>, <lever>``."""
    out: dict[str, list[SweepCell]] = {}
    for key, g in keys.items():
        cell = sweep_cell(str(g["scenario"].iloc[0]), key)
        if cell is not None:
            out.setdefault(f"{cell.root} · {', '.join(cell.levers)}", []).append(cell)
    return {k: v for k, v in out.items() if len(v) >= 2}


def number(v: str) -> float | str:
    try:
        return float(v)
    except ValueError:
        return v


Callback = Callable[..., None]
