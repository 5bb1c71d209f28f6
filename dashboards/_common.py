"""Shared parts of the dashboard pages: the database, cached loaders, the run selector, formatting.

Every number a page shows comes from :mod:`celltx_mfg.analysis` (through :func:`analysed` or
:func:`kpi_summary`); this module only loads, caches, selects and formats.

A database the dashboard cannot read (damaged, another application's, written by a newer celltx-mfg) gives
every page the same friendly page naming the problem and what to do, never a stack trace: the loaders
below are the pages' only way to the store, and each turns a ``StoreError`` into that page.

The database is the ``CELLTX_DB`` environment variable (set by ``celltx dashboard --db PATH``), else
``--db PATH`` after the script (``streamlit run dashboards/Overview.py -- --db PATH``), else
``celltx.db``. Cached results are keyed on the database, the run ids and the database files'
modification times, so a run written by another process (or by the What-if page) shows up on the next
interaction without a stale cache.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pandas as pd
import streamlit as st
import yaml

from celltx_mfg import analysis, store
from celltx_mfg.config import DEFAULT_START_DATE
from celltx_mfg.store import DEFAULT_DB

MAX_DEFAULT_RUNS = 10  # replications selected by default (more can be added in the sidebar)
CREATE_HINT = "celltx run scenarios/baseline.yaml --db {db}"
WAIT_COLOUR = "#d62728"
STAGE_COLOURS = {
    # waits in warm colours, processing in cool ones: a planner's eye goes to the red
    "slot_wait": "#d62728",
    "suite_wait": "#ff7f0e",
    "earlier_attempts": "#9467bd",
    "collection_and_inbound": "#8c564b",
    "manufacturing": "#1f77b4",
    "qc_and_release": "#17becf",
    "outbound_and_infusion": "#2ca02c",
}
WIP_COLOURS = {
    "waiting_for_slot": "#d62728",
    "apheresis_and_transit": "#8c564b",
    "waiting_for_suite": "#ff7f0e",
    "manufacturing": "#1f77b4",
    "qc_and_release": "#17becf",
    "shipping_and_infusion_wait": "#2ca02c",
}


# ------------------------------------------------------------------------------------------- database
def db_path() -> str:
    """CELLTX_DB, else ``--db`` given after the script on the command line, else ``celltx.db``."""
    env = os.environ.get("CELLTX_DB")
    if env:
        return env
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--db="):
            return a.split("=", 1)[1]
    return DEFAULT_DB


def _sqlite_file(db: str) -> Path | None:
    """The SQLite file behind a path or sqlite:/// URL; None for other databases (or in-memory)."""
    if "://" not in db:
        return Path(db).expanduser()
    if db.startswith("sqlite:///"):
        rest = db[len("sqlite:///"):].split("?", 1)[0]
        if rest.startswith("file:"):
            rest = rest[len("file:"):]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def db_version(db: str) -> tuple:
    """Changes whenever the database changes: modification time and size of the file and its WAL.

    Part of every cache key, so cached frames and KPIs are dropped when a run is written. Non-SQLite
    databases have no file to watch: their version is constant (use "Reload data" in the sidebar).
    """
    f = _sqlite_file(db)
    if f is None:
        return ("url", st.session_state.get("_reload", 0))
    out: list[Any] = []
    for p in (f, f.with_name(f.name + "-wal")):
        try:
            s = p.stat()
            out.append((s.st_mtime_ns, s.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


@st.cache_resource(show_spinner=False)
def read_engine(db: str) -> Any:
    """A read-only engine for SQLite files (the dashboard never writes there by accident)."""
    return store.open_store(db, readonly=_sqlite_file(db) is not None and "://" not in db)


@st.cache_resource(show_spinner=False)
def write_engine(db: str) -> Any:
    """A writable engine: only the What-if page writes (new runs, through ``store.write_run``)."""
    return store.open_store(db)


def stop_unreadable(db: str, error: Exception) -> NoReturn:
    """The page for a database that cannot be read: what is wrong with it and what to do, then stop."""
    shown = store.display_url(db)
    st.title("celltx-mfg dashboard")
    st.error(f"The database `{shown}` cannot be read: {error}")
    st.markdown("If the file is damaged, check it and restore it from a backup; if it is another application's "
                "database, or was written by a newer celltx-mfg, start the dashboard on a celltx store:")
    st.code(f"celltx verify --db {shown}\ncelltx dashboard --db OTHER.db", language="bash")
    st.stop()


T = TypeVar("T")


def guarded(load: Callable[..., T]) -> Callable[..., T]:
    """``load`` as pages call it: a ``StoreError`` shows :func:`stop_unreadable` instead of a stack trace."""
    @functools.wraps(load)
    def call(*args: Any, **kwargs: Any) -> T:
        try:
            return load(*args, **kwargs)
        except store.StoreError as e:
            stop_unreadable(db_path(), e)

    return call


@st.cache_data(show_spinner=False, max_entries=8)
def _runs_table(db: str, version: tuple) -> pd.DataFrame:
    return store.list_runs(read_engine(db))


@st.cache_data(show_spinner="Loading runs from the database…", max_entries=6)
def _frames(db: str, run_ids: tuple[int, ...], version: tuple) -> dict[str, pd.DataFrame]:
    """The record tables of just these runs (``run_id`` column); nothing else is read."""
    return store.load_frames(read_engine(db), list(run_ids))


@st.cache_data(show_spinner="Loading runs from the database…", max_entries=12)
def _kpi_frames(db: str, run_ids: tuple[int, ...], version: tuple) -> dict[str, pd.DataFrame]:
    """Only the tables ``analysis.kpis`` reads: comparing many runs need not load every step and test."""
    return store.load_frames(read_engine(db), list(run_ids), tables=analysis.KPI_TABLES)


@st.cache_data(show_spinner=False, max_entries=2048)
def _run_meta(db: str, run_id: int, version: tuple) -> dict[str, Any]:
    return store.load_run_meta(read_engine(db), int(run_id))


runs_table, frames, kpi_frames, run_meta = (guarded(f) for f in (_runs_table, _frames, _kpi_frames, _run_meta))


# analysis functions that read only the KPI tables: computed without loading steps, tests and shipments
_KPI_TABLES_ENOUGH = {"turnaround_breakdown"}


@guarded
@st.cache_data(show_spinner=False, max_entries=256)
def analysed(fn: str, db: str, run_ids: tuple[int, ...], version: tuple, **kwargs: Any) -> Any:
    """``analysis.<fn>(frames of run_ids, **kwargs)``, cached per database state, runs and arguments."""
    load = _kpi_frames if fn in _KPI_TABLES_ENOUGH else _frames
    return getattr(analysis, fn)(load(db, run_ids, version), **kwargs)


@guarded
@st.cache_data(show_spinner=False, max_entries=256)
def kpi_summary(db: str, run_ids: tuple[int, ...], version: tuple, target_days: float) -> dict[str, Any]:
    """KPIs of the runs: ``analysis.kpis`` of one run, ``analysis.summarise`` of several (with ci95)."""
    meta = _run_meta(db, run_ids[0], version)
    f = _kpi_frames(db, run_ids, version)
    costs = {rid: _run_meta(db, rid, version).get("costs") for rid in run_ids}
    per_run = analysis.kpis_by_run(f, meta["horizon"], meta["warmup"], costs, target_days=target_days)
    values = list(per_run.values())
    if len(values) == 1:
        return values[0]
    return analysis.summarise(values)


@guarded
@st.cache_data(show_spinner=False, max_entries=64)
def scenario_start(db: str, run_id: int, version: tuple) -> dt.date:
    """Day 0 of a stored run (its scenario's start_date), for date axes."""
    text = _run_meta(db, run_id, version).get("scenario_text") or ""
    try:
        data = yaml.safe_load(text) or {}
        value = data.get("start_date")
        if isinstance(value, dt.date):
            return value
        if value:
            return dt.date.fromisoformat(str(value))
    except (yaml.YAMLError, ValueError, AttributeError):
        pass
    return DEFAULT_START_DATE


def to_dates(days: Any, start: dt.date) -> Any:
    """Simulation days -> timestamps (day 0 = the scenario's start date)."""
    base = pd.Timestamp(start)
    return base + pd.to_timedelta(pd.Series(days, dtype=float) if not isinstance(days, pd.Series)
                                  else days.astype(float), unit="D")


# -------------------------------------------------------------------------------------- empty database
def _stop_with_setup_help(db: str, why: str) -> None:
    st.title("celltx-mfg dashboard")
    st.warning(why)
    st.markdown("Create a database by simulating the baseline scenario, then start the dashboard on it:")
    shown = store.display_url(db)
    st.code(f"{CREATE_HINT.format(db=shown)}\ncelltx dashboard --db {shown}", language="bash")
    st.caption("Any scenario file works, e.g. scenarios/rapid_sterility.yaml; every run is stored whole.")
    st.stop()


def require_runs() -> tuple[str, pd.DataFrame, tuple]:
    """The database, its runs and version; a friendly setup page (and stop) when there is nothing."""
    db = db_path()
    f = _sqlite_file(db)
    if f is not None and not f.exists():
        _stop_with_setup_help(db, f"No database at `{db}` yet.")
    version = db_version(db)
    runs = runs_table(db, version)  # a database that cannot be read shows stop_unreadable
    if runs.empty:
        _stop_with_setup_help(db, f"The database `{store.display_url(db)}` holds no runs yet.")
    return db, runs, version


# ------------------------------------------------------------------------------------------ selection
@dataclass(frozen=True)
class Selection:
    db: str
    version: tuple
    scenario: str  # display key (name, plus a short hash when a name has several texts)
    name: str
    scenario_hash: str
    run_ids: tuple[int, ...]
    horizon: float
    warmup: float
    start: dt.date

    @property
    def n(self) -> int:
        return len(self.run_ids)


INCOMPLETE = "incomplete"


def _incomplete(g: pd.DataFrame) -> tuple[int, int] | None:
    """(stored, planned) replications of a group its labels say was cut short (What-if left mid-run)."""
    from celltx_mfg.experiments import planned_size

    sizes = [n for n in (planned_size(x if isinstance(x, str) else None) for x in g["label"]) if n]
    stored = int(g["replication"].nunique())
    return (stored, max(sizes)) if sizes and stored < max(sizes) else None


def scenario_keys(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Display key -> that scenario text's runs (sorted by replication), newest complete scenario first;
    scenarios stored incomplete (a what-if interrupted) come last, marked ``(incomplete k of N)``."""
    hashes_per_name = runs.groupby("scenario")["scenario_hash"].nunique()
    out: list[tuple[bool, int, str, pd.DataFrame]] = []
    for (name, h), g in runs.groupby(["scenario", "scenario_hash"], sort=False):
        key = str(name) if hashes_per_name[name] == 1 else f"{name} · {str(h)[:8]}"
        cut = _incomplete(g)
        if cut is not None:
            key += f" ({INCOMPLETE} {cut[0]} of {cut[1]})"
        out.append((cut is not None, int(g["id"].max()), key, g.sort_values(["replication", "id"])))
    out.sort(key=lambda t: (t[0], -t[1]))
    return {k: g for _, _, k, g in out}


def remember(widget_key: str, keep_key: str, valid: Sequence[Any], default: Any, multi: bool = False) -> dict:
    """Carry a widget's choice over page switches and reruns.

    Streamlit forgets the state of widgets a page did not draw, so the choice is kept under a plain key,
    put back into the widget's key before the widget is drawn, and copied back by its on_change callback
    (which runs before the script, so a user's change is never overwritten). Returns the keyword arguments
    for the widget call.
    """
    if keep_key in st.session_state:
        kept = st.session_state[keep_key]
        if multi:
            kept = [v for v in kept if v in valid]
            value = kept if kept or st.session_state.get(keep_key + "::explicit") else default
        else:
            value = kept if kept in valid else default
    else:
        value = default
    st.session_state[widget_key] = value
    st.session_state[keep_key] = value
    return {"key": widget_key, "on_change": _save_choice, "args": (widget_key, keep_key)}


def _save_choice(widget_key: str, keep_key: str) -> None:
    st.session_state[keep_key] = st.session_state[widget_key]
    st.session_state[keep_key + "::explicit"] = True


def _run_label(row: pd.Series) -> str:
    label = f" · {row['label']}" if isinstance(row.get("label"), str) and row.get("label") else ""
    return f"run {int(row['id'])} (rep {int(row['replication'])}){label}"


def sidebar_selection(runs: pd.DataFrame, db: str, version: tuple, multi: bool = True,
                      title: str = "Runs") -> Selection:
    """Sidebar: scenario, then its replications (all up to MAX_DEFAULT_RUNS by default)."""
    keys = scenario_keys(runs)
    names = list(keys)
    sb = st.sidebar
    sb.header(title)
    scenario = sb.selectbox("Scenario", names, help="Scenarios stored in the database (newest first).",
                            **remember("sel_scenario", "_keep_scenario", names, names[0]))
    g = keys[scenario]
    labels = {int(r["id"]): _run_label(r) for _, r in g.iterrows()}
    ids = list(labels)
    chosen = sb.multiselect(
        "Replications", ids, format_func=labels.get,
        help="Runs of this scenario; KPIs are averaged over them with 95% intervals.",
        **remember(f"sel_runs::{scenario}", f"_keep_runs::{scenario}", ids, ids[:MAX_DEFAULT_RUNS], multi=True),
    )
    if len(ids) > MAX_DEFAULT_RUNS and len(chosen) <= MAX_DEFAULT_RUNS:
        sb.caption(f"{len(chosen)} of {len(ids)} replications selected; add more above.")
    if not chosen:
        st.info("Select at least one replication in the sidebar.")
        st.stop()
    if st.sidebar.button("Reload data", help="Re-read the database (new runs appear on their own)."):
        st.session_state["_reload"] = st.session_state.get("_reload", 0) + 1
        st.cache_data.clear()
    run_ids = tuple(sorted(int(x) for x in chosen))
    meta = run_meta(db, run_ids[0], version)
    return Selection(
        db=db, version=version, scenario=scenario, name=str(g["scenario"].iloc[0]),
        scenario_hash=str(g["scenario_hash"].iloc[0]), run_ids=run_ids,
        horizon=float(meta["horizon"]), warmup=float(meta["warmup"]),
        start=scenario_start(db, run_ids[0], version),
    )


def page_setup(title: str, icon: str = "🧬") -> None:
    st.set_page_config(page_title=f"{title} · celltx", page_icon=icon, layout="wide")


def run_list(ids: Sequence[int]) -> str:
    """'3, 4, 7' or, for a contiguous block, '11-20'."""
    ids = sorted(ids)
    if len(ids) > 2 and ids[-1] - ids[0] == len(ids) - 1:
        return f"{ids[0]}-{ids[-1]}"
    return ", ".join(map(str, ids[:8])) + (f", ... ({len(ids)} runs)" if len(ids) > 8 else "")


def caption_selection(sel: Selection) -> None:
    st.caption(
        f"Scenario **{sel.name}** · {sel.n} replication(s) (runs {run_list(sel.run_ids)}) · "
        f"KPI window days {sel.warmup:g}-{sel.horizon:g} from {sel.start:%d %b %Y} · "
        f"database `{store.display_url(sel.db)}`"
    )


def run_page(title: str) -> tuple[str, pd.DataFrame, tuple, Selection]:
    """The head of every page that shows one selection of runs: page config, the friendly stop when there
    are no runs, the sidebar selector, the title and the caption naming what is shown."""
    page_setup(title)
    db, runs, version = require_runs()
    sel = sidebar_selection(runs, db, version)
    st.title(title)
    caption_selection(sel)
    return db, runs, version, sel


# ----------------------------------------------------------------------------------------- formatting
def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt(v: Any, digits: int = 1, percent: bool = False) -> str:
    """A KPI for a tile or table: '-' when nothing was measured; counts without decimals."""
    if is_missing(v):
        return "–"
    if percent:
        return f"{100 * float(v):.{digits}f}%"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{float(v):,.{digits}f}"


def kpi_value(kpis: Mapping[str, Any], path: str) -> tuple[Any, Any]:
    """(value, 95% half-width or None) of a dotted KPI path in kpis() or summarise() output."""
    ci = kpis.get("ci95")
    return analysis.get_path(kpis, path), analysis.value_or_none(ci, path) if ci else None


def tile(col: Any, label: str, kpis: Mapping[str, Any], path: str, digits: int = 1, percent: bool = False,
         help: str | None = None) -> None:
    """A metric tile; with replications the 95% interval half-width shows under the value."""
    value, half = kpi_value(kpis, path)
    delta = None
    if not is_missing(half):
        delta = f"± {fmt(half, digits, percent)} (95% CI, n={kpis.get('replications')})"
    col.metric(label, fmt(value, digits, percent), delta=delta, delta_color="off", delta_arrow="off",
               help=help, border=True)


flatten = analysis.kpi_items  # one walk of the KPI tree, shared with the CLI


COMPARE_PATHS = (
    "throughput_per_year", "patients_referred", "patients_infused", "patients_lost", "patients_in_progress",
    "vein_to_vein_days.p50", "vein_to_vein_days.p90", "vein_to_vein_days.mean",
    "referral_to_infusion_days.p50", "referral_to_infusion_days.p90", "on_time_share",
    "manufacturing_days.mean", "wait_for_slot_days.mean", "wait_for_suite_days.mean",
    "manufacturing_failure_rate", "batches_started", "batches_failed", "cost_per_infused_patient",
    "oos_released", "recalls", "deviations.major", "deviations.critical",
)


def compare_table(summaries: Mapping[str, Mapping[str, Any]], paths: Iterable[str] = COMPARE_PATHS) -> pd.DataFrame:
    """KPIs side by side: per scenario the value and its 95% half-width, and each later scenario's
    difference from the first (the reference). Values come straight from kpis()/summarise()."""
    names = list(summaries)
    rows = []
    for path in paths:
        row: dict[str, Any] = {"KPI": path}
        ref = None
        for i, name in enumerate(names):
            try:
                value, half = kpi_value(summaries[name], path)
            except ValueError:
                value, half = None, None
            row[name] = None if is_missing(value) else float(value)
            row[f"{name} ± 95%"] = None if is_missing(half) else float(half)
            if i == 0:
                ref = row[name]
            else:
                row[f"Δ {name} − {names[0]}"] = (
                    None if row[name] is None or ref is None else row[name] - ref
                )
        rows.append(row)
    return pd.DataFrame(rows)
