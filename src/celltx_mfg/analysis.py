"""KPIs of simulated runs: the one definition of every number the CLI, dashboard, gates and reports show.

Input is always ``frames``: one pandas DataFrame per record table of :mod:`celltx_mfg.records` (what
``RunRecords.frames()`` returns; frames read back from the store carry an extra ``run_id`` column and may
hold several runs). Everything here is pure: no I/O, no model, no database.

Conventions every KPI follows, so two numbers on one screen are always comparable:

* The **KPI window** is ``[warmup, horizon)`` in days from the scenario start; the warm-up lets the plant
  fill up before anything is counted.
* The **cohort** is the patients *referred* inside the window and the batches collected from them.
  Patient and batch counts, and per-patient / per-batch statistics, are over the cohort, so
  ``patients_referred == patients_infused + patients_lost + patients_in_progress``. A journey still open
  at the horizon is censored: cohort statistics of completed journeys (vein-to-vein) lean short when the
  horizon cuts long journeys off; ``patients_in_progress`` says how many.
* **Flows** (throughput, cost per infusion, utilisation, deviations) count what happened inside the
  window, whoever it happened to: they measure the plant, not the cohort.
* ``None`` / NaN in a record means "did not happen before the horizon". A statistic with nothing to
  average is ``None``, a count is 0; no KPI raises on an empty run.
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from celltx_mfg.records import HOLD_LOSS_CAUSES, RunRecords, cause_of

DAYS_PER_YEAR = 365.25
DEFAULT_TARGET_DAYS = 28.0
SEVERITIES = ("minor", "major", "critical")
FAILED_STATUSES = ("failed", "expired")
# Batch statuses whose journey goes on past the horizon (the product may still be shipped or infused).
OPEN_BATCH_STATUSES = ("in_progress", "released")
# KPI groups whose members are counts: a member missing from one run means zero there, not "unknown".
COUNT_MAPS = frozenset({"deviations", "lost_by_stage", "failed_by_reason", "hold_losses_by_cause"})
# Where a patient can be when lost (the stages model/ moves a patient through; "unknown" when not recorded).
LOST_STAGES = (
    "referred", "waiting_for_slot", "apheresis", "inbound_transit", "waiting_for_suite", "manufacturing",
    "qc_release", "outbound_transit", "awaiting_infusion", "unknown",
)
# Why a failed or expired batch failed, besides "<step>_failure" for a product step (model/manufacture.py):
# hold limit, shipper excursions, QC failure (recollect / discard), OOS rejection, recalls, expiry.
FAILURE_REASONS = (
    "starting_material_hold_exceeded", "inbound_excursion", "outbound_excursion", "qc_failure",
    "qc_failure_discard", "oos_rejected", "recalled_before_shipment", "recalled_before_infusion", "expired",
    "unknown",
)
STEP_FAILURE_SUFFIX = "_failure"
# The closed count groups and their allowed members: an absent allowed member reads as 0, any other is unknown.
KPI_GROUP_KEYS: dict[str, tuple[str, ...]] = {
    "deviations": SEVERITIES,
    "lost_by_stage": LOST_STAGES,
    "failed_by_reason": FAILURE_REASONS,
    "hold_losses_by_cause": (*HOLD_LOSS_CAUSES, "unknown"),
}
HOLD_LIMIT = "starting_material_hold_exceeded"  # the deviation kind of fresh material past its hold limit
RESCHEDULED = "rescheduled"  # activity of the manufacturing_slot record of a start moved before collection
# the record tables `kpis` reads: a reader that only needs KPIs loads just these
KPI_TABLES = ("patients", "batches", "resource_uses", "resources", "deviations")

# staff pools: paid for their shifts, busy on hands-on tasks (ResourceUse kinds, config.STAFF)
STAFF_KINDS = ("operators", "qc_analysts", "qa_reviewers")

WIP_STAGES = (
    "waiting_for_slot",
    "apheresis_and_transit",
    "waiting_for_suite",
    "manufacturing",
    "qc_and_release",
    "shipping_and_infusion_wait",
)
TURNAROUND_STAGES = (
    "slot_wait",
    "earlier_attempts",
    "collection_and_inbound",
    "suite_wait",
    "manufacturing",
    "qc_and_release",
    "outbound_and_infusion",
)
WAIT_STAGES = ("slot_wait", "suite_wait")

Frames = Mapping[str, pd.DataFrame]
_COLUMNS: dict[str, list[str]] = {name: list(cls._fields) for name, cls in RunRecords.TABLES}


# --------------------------------------------------------------------------------------------- helpers
def _table(frames: Frames, name: str) -> pd.DataFrame:
    df = frames.get(name)
    if df is None:
        return pd.DataFrame(columns=_COLUMNS[name])
    return df


def _num(df: pd.DataFrame, col: str) -> np.ndarray:
    """A column as float days, None -> NaN (store frames and record frames type columns differently)."""
    if col not in df.columns or len(df) == 0:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)


def _flag(df: pd.DataFrame, col: str) -> np.ndarray:
    return np.nan_to_num(_num(df, col), nan=0.0) != 0


def _text(df: pd.DataFrame, col: str, missing: str = "unknown") -> pd.Series:
    if col not in df.columns:
        return pd.Series([missing] * len(df), index=df.index, dtype=object)
    s = df[col].astype(object)
    return s.where(s.notna(), missing)


def _stats(values: np.ndarray, which: Sequence[str]) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    out: dict[str, float | None] = {}
    for key in which:
        if v.size == 0:
            out[key] = None
        elif key == "mean":
            out[key] = float(v.mean())
        elif key == "max":
            out[key] = float(v.max())
        else:  # "p50", "p90": numpy's linear interpolation between order statistics
            out[key] = float(np.percentile(v, float(key[1:]), method="linear"))
    return out


def _overlap(start: np.ndarray, end: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Days of [start, end) inside [lo, hi); a missing end means "still going at the horizon"."""
    end = np.where(np.isnan(end), np.inf, end)
    span = np.minimum(end, hi) - np.maximum(start, lo)
    return np.where(np.isfinite(start) & (span > 0), span, 0.0)


def _count_inside(starts: np.ndarray, ends: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """How many intervals [start, end) contain each grid time."""
    ok = np.isfinite(starts) & (ends > starts)
    s = np.sort(starts[ok])
    e = np.sort(ends[ok])
    return np.searchsorted(s, grid, side="right") - np.searchsorted(e, grid, side="right")


def _run_ids(frames: Frames) -> list[Any]:
    ids: set[Any] = set()
    for name in _COLUMNS:
        df = frames.get(name)
        if df is not None and "run_id" in df.columns:
            ids.update(df["run_id"].dropna().unique().tolist())
    return sorted(ids, key=lambda r: (str(type(r)), r))


def _split_runs(frames: Frames) -> list[tuple[Any, dict[str, pd.DataFrame]]]:
    """One (run_id, frames) pair per run; run_id is None for frames straight from ``RunRecords``."""
    ids = _run_ids(frames)
    if not ids:
        return [(None, {n: _table(frames, n) for n in _COLUMNS})]
    grouped: dict[str, dict[Any, pd.DataFrame] | None] = {}
    for name in _COLUMNS:
        df = _table(frames, name)
        grouped[name] = dict(tuple(df.groupby("run_id", sort=False))) if "run_id" in df.columns else None
    out = []
    for rid in ids:
        sub = {}
        for name in _COLUMNS:
            df = _table(frames, name)
            g = grouped[name]
            sub[name] = df if g is None else g.get(rid, df.iloc[0:0])
        out.append((rid, sub))
    return out


def _per_run(frames: Frames, one: Callable[[dict[str, pd.DataFrame]], pd.DataFrame]) -> pd.DataFrame:
    """Apply a one-run table builder to every run; a ``run_id`` column first when the frames have runs."""
    parts = []
    for rid, f in _split_runs(frames):
        df = one(f)
        if rid is not None:
            df.insert(0, "run_id", rid)
        parts.append(df)
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    return pd.concat(parts, ignore_index=True)


def _cohort(patients: pd.DataFrame, warmup: float, horizon: float) -> pd.DataFrame:
    referred = _num(patients, "referred")
    return patients[(referred >= warmup) & (referred < horizon)]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not (
        isinstance(v, (float, np.floating)) and math.isnan(v)
    )


# ------------------------------------------------------------------------------------------------ KPIs
def kpis(
    frames: Frames,
    horizon: float,
    warmup: float,
    costs: Mapping[str, float] | None = None,
    target_days: float = DEFAULT_TARGET_DAYS,
) -> dict[str, Any]:
    """Every KPI of ONE run, as a JSON-serialisable dict (plain floats, ints, None, nested dicts).

    Window W = [warmup, horizon), window years Y = (horizon - warmup) / 365.25. Cohort C = patients with
    referred in W; cohort batches B = batches whose coi is in C.

    - ``patients_referred`` = |C|; ``patients_infused`` / ``patients_lost`` / ``patients_in_progress`` =
      patients of C with that status (they add up to ``patients_referred``).
    - ``patients_remanufactured`` = patients of C with attempts > 1.
    - ``infusions_in_window`` = patients (any referral time) with infused in W.
    - ``throughput_per_year`` = infusions_in_window / Y.
    - ``batches_started`` = batches of B with mfg_start set; ``batches_failed`` = batches of B with status
      failed or expired (including any that failed before processing started).
    - ``failed_by_reason`` {failure_reason: count} over those batches ("expired" / "unknown" when the
      record gives no reason).
    - ``manufacturing_failure_rate`` = started batches of B that failed or expired / batches_started
      (None when nothing started).
    - ``vein_to_vein_days`` {mean, p50, p90, max} of infused - first_apheresis over infused patients of C
      (from the FIRST apheresis, so re-manufactured patients count their whole ordeal).
    - ``referral_to_infusion_days`` {mean, p50, p90, max} of infused - referred over the same patients:
      the turnaround the patient feels, the wait for a slot included.
    - ``on_time_share`` = share of those with vein-to-vein <= ``target_days`` (``on_time_target_days``).
    - ``manufacturing_days`` {mean, p50, p90} of mfg_end - mfg_start over batches of B with both.
    - ``wait_for_slot_days`` {mean, p90} of first_apheresis - referred over patients of C with an
      apheresis.
    - ``wait_for_suite_days`` {mean, p90} of mfg_start - ready over batches of B with both.
    - ``cost_total`` = sum(costs.values()) (None without costs); ``cost_per_infused_patient`` =
      cost_total / infusions_in_window (None without costs or infusions); ``labour_cost_share`` =
      costs["labour"] / cost_total (None without costs).
    - ``labour_hours`` {paid, hands_on}: paid = 24 x available_unit_days of the staff pools
      (:data:`STAFF_KINDS`: headcount x on-shift time in W, what the plant pays for); hands_on = 24 x
      their busy days in W (as in ``utilisation``).
    - ``wip_mean`` {in_system, <stage>...}: time-averaged work in progress over W (see
      :func:`wip_time_average`), integrated exactly, every patient whenever referred.
    - ``utilisation`` {kind: busy / available_unit_days} for every kind of ``resources`` with
      available_unit_days > 0, busy = sum over ResourceUse holds of that kind (line clearance included)
      of the days of [start, end) inside W.
    - ``deviations`` {severity: count} of deviations with time in W (minor, major, critical always there).
    - ``lost_by_stage`` {lost_stage: count} over lost patients of C ("unknown" when not recorded).
    - ``oos_released`` = batches of B flagged oos that were released; ``recalls`` = batches of B recalled.
    - ``slot_reschedules`` = manufacturing_slot records with activity ``rescheduled`` of patients of C
      (a booked start moved before collection because its suite would not be free).
    - ``hold_losses_by_cause`` {cause: count} of hold-limit deviations (``starting_material_hold_exceeded``)
      of batches of B, by the cause their detail names ("unknown" when it names none).
    Percentiles use numpy's linear method.
    """
    f = _one_run_tables(frames, horizon, warmup)
    cohort = _cohort(f["patients"], warmup, horizon)
    batches = f["batches"]
    batches = batches[batches["coi"].isin(set(cohort["coi"]))]
    counts = _patient_counts(cohort, f["patients"], warmup, horizon)
    lost = cohort[cohort["status"].to_numpy(dtype=object) == "lost"]
    return {
        "window_days": float(horizon - warmup),
        **counts,
        **_batch_outcomes(batches),
        **_turnaround(cohort, batches, target_days),
        **_cost_kpis(costs, counts["infusions_in_window"]),
        "labour_hours": _labour_hours(f["resource_uses"], f["resources"], warmup, horizon),
        "utilisation": _utilisation(f["resource_uses"], f["resources"], warmup, horizon),
        "deviations": _deviation_counts(f["deviations"], warmup, horizon),
        "lost_by_stage": _value_counts(lost, "lost_stage"),
        "oos_released": int((_flag(batches, "oos") & np.isfinite(_num(batches, "released"))).sum()),
        "recalls": int(_flag(batches, "recalled").sum()),
        "wip_mean": _wip_average(f, warmup, horizon),
        **_slot_plan_counts(f["resource_uses"], f["deviations"], set(cohort["coi"])),
    }


def _slot_plan_counts(uses: pd.DataFrame, deviations: pd.DataFrame, cohort: set[Any]) -> dict[str, Any]:
    """How the slot plan fared for the cohort: starts it moved before collection, and fresh material lost
    at the hold limit anyway, by cause."""
    moved = (_text(uses, "activity").to_numpy(dtype=object) == RESCHEDULED) & uses["coi"].isin(cohort).to_numpy()
    holds = deviations[(_text(deviations, "kind").to_numpy(dtype=object) == HOLD_LIMIT)
                       & deviations["coi"].isin(cohort).to_numpy()]
    causes = [cause_of(str(d)) or "unknown" for d in holds["detail"]]
    return {
        "slot_reschedules": int(moved.sum()),
        "hold_losses_by_cause": {c: causes.count(c) for c in dict.fromkeys(causes)},
    }


def _one_run_tables(frames: Frames, horizon: float, warmup: float) -> dict[str, pd.DataFrame]:
    runs = _run_ids(frames)
    if len(runs) > 1:
        raise ValueError(f"kpis() takes one run but the frames hold {len(runs)} runs; use kpis_by_run()")
    if not horizon > warmup:
        raise ValueError(f"horizon ({horizon}) must be greater than warmup ({warmup})")
    return {n: _table(frames, n) for n in _COLUMNS}


def _value_counts(df: pd.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(n) for k, n in _text(df, column).value_counts().items()}


def _patient_counts(cohort: pd.DataFrame, patients: pd.DataFrame, warmup: float, horizon: float) -> dict[str, Any]:
    """Where the cohort's patients are, and infusions in the window whenever they were referred."""
    status = cohort["status"].to_numpy(dtype=object)
    infused_at = _num(patients, "infused")
    n_infusions = int(((infused_at >= warmup) & (infused_at < horizon)).sum())
    return {
        "patients_referred": int(len(cohort)),
        "patients_infused": int((status == "infused").sum()),
        "patients_lost": int((status == "lost").sum()),
        "patients_in_progress": int((status == "in_progress").sum()),
        "patients_remanufactured": int((_num(cohort, "attempts") > 1).sum()),
        "infusions_in_window": n_infusions,
        "throughput_per_year": float(n_infusions / ((horizon - warmup) / DAYS_PER_YEAR)),
    }


def _batch_outcomes(batches: pd.DataFrame) -> dict[str, Any]:
    """Started and failed cohort batches; the failure rate counts only batches that started."""
    started = np.isfinite(_num(batches, "mfg_start"))
    failed = batches["status"].isin(FAILED_STATUSES).to_numpy()
    n_started = int(started.sum())
    failed_batches = batches[failed]
    reasons = _text(failed_batches, "failure_reason").where(
        (failed_batches["status"] != "expired") | failed_batches["failure_reason"].notna(), "expired"
    )
    return {
        "batches_started": n_started,
        "batches_failed": int(failed.sum()),
        "failed_by_reason": {str(k): int(n) for k, n in reasons.value_counts().items()},
        "manufacturing_failure_rate": float((failed & started).sum() / n_started) if n_started else None,
    }


def _turnaround(cohort: pd.DataFrame, batches: pd.DataFrame, target_days: float) -> dict[str, Any]:
    """Vein-to-vein from the FIRST apheresis (a re-manufactured patient counts the whole ordeal), referral
    to infusion (the slot wait too), the on-time share, manufacturing time and the waits for a slot and
    for a suite."""
    infused = cohort["status"].to_numpy(dtype=object) == "infused"
    v2v = (_num(cohort, "infused") - _num(cohort, "first_apheresis"))[infused]
    v2v = v2v[np.isfinite(v2v)]
    r2i = (_num(cohort, "infused") - _num(cohort, "referred"))[infused]
    mfg_start = _num(batches, "mfg_start")
    return {
        "vein_to_vein_days": _stats(v2v, ("mean", "p50", "p90", "max")),
        "referral_to_infusion_days": _stats(r2i, ("mean", "p50", "p90", "max")),
        "on_time_target_days": float(target_days),
        "on_time_share": float((v2v <= target_days).mean()) if v2v.size else None,
        "manufacturing_days": _stats(_num(batches, "mfg_end") - mfg_start, ("mean", "p50", "p90")),
        "wait_for_slot_days": _stats(_num(cohort, "first_apheresis") - _num(cohort, "referred"), ("mean", "p90")),
        "wait_for_suite_days": _stats(mfg_start - _num(batches, "ready"), ("mean", "p90")),
    }


def _cost_kpis(costs: Mapping[str, float] | None, n_infusions: int) -> dict[str, Any]:
    cost_total = float(sum(costs.values())) if costs else None
    per_infused = cost_total / n_infusions if cost_total is not None and n_infusions else None
    labour = float(costs.get("labour", 0.0)) if costs else None
    share = labour / cost_total if labour is not None and cost_total else None
    return {"cost_total": cost_total, "cost_per_infused_patient": per_infused, "labour_cost_share": share}


def _labour_hours(uses: pd.DataFrame, resources: pd.DataFrame, warmup: float, horizon: float) -> dict[str, float]:
    """Staff hours paid (headcount x on-shift time) and spent hands-on, inside the window."""
    avail = _available_by_kind(resources)
    busy = _busy_by_kind(uses, warmup, horizon)
    return {
        "paid": 24.0 * sum(avail.get(k, (0.0, 0.0))[1] for k in STAFF_KINDS),
        "hands_on": 24.0 * sum(busy.get(k, 0.0) for k in STAFF_KINDS),
    }


def _deviation_counts(deviations: pd.DataFrame, warmup: float, horizon: float) -> dict[str, int]:
    """Deviations in the window by severity; every severity is there, zero or not."""
    t = _num(deviations, "time")
    by_severity = {s: 0 for s in SEVERITIES}
    by_severity.update(_value_counts(deviations[(t >= warmup) & (t < horizon)], "severity"))
    return by_severity


def _available_by_kind(resources: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """kind -> (capacity, available unit-days) summed over the rows of that kind."""
    if len(resources) == 0:
        return {}
    df = pd.DataFrame(
        {
            "kind": resources["kind"].astype(str).to_numpy(),
            "capacity": _num(resources, "capacity"),
            "available": _num(resources, "available_unit_days"),
        }
    )
    g = df.groupby("kind", sort=False)[["capacity", "available"]].sum()
    return {str(k): (float(r.capacity), float(r.available)) for k, r in g.iterrows()}


def _busy_by_kind(uses: pd.DataFrame, warmup: float, horizon: float) -> dict[str, float]:
    busy = _overlap(_num(uses, "start"), _num(uses, "end"), warmup, horizon)
    if len(uses) == 0:
        return {}
    by_kind = pd.Series(busy).groupby(uses["kind"].astype(str).to_numpy()).sum()
    return {str(k): float(v) for k, v in by_kind.items()}


def _utilisation(
    uses: pd.DataFrame, resources: pd.DataFrame, warmup: float, horizon: float
) -> dict[str, float]:
    busy = _busy_by_kind(uses, warmup, horizon)
    return {
        kind: busy.get(kind, 0.0) / available
        for kind, (_, available) in _available_by_kind(resources).items()
        if available > 0
    }


def kpis_by_run(
    frames: Frames,
    horizon: float,
    warmup: float,
    costs_by_run: Mapping[Any, Mapping[str, float]] | None = None,
    target_days: float = DEFAULT_TARGET_DAYS,
) -> dict[Any, dict[str, Any]]:
    """:func:`kpis` of every run in frames that hold several (``run_id`` column); key None without one."""
    costs_by_run = costs_by_run or {}
    return {
        rid: kpis(f, horizon, warmup, costs=costs_by_run.get(rid), target_days=target_days)
        for rid, f in _split_runs(frames)
    }


# ------------------------------------------------------------------------------------- replications
def t_quantile(df: float, level: float = 0.95) -> float:
    """Two-sided Student-t multiplier for a ``level`` confidence interval with ``df`` degrees of freedom.

    scipy is imported on first use: the CLI starts without paying for it."""
    if not df >= 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _t_ppf((1.0 + level) / 2.0, float(df))


@functools.lru_cache(maxsize=1024)
def _t_ppf(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def student_t_975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (95% two-sided CI multiplier)."""
    return t_quantile(df, 0.95)


def ci_half_width(values: Sequence[float] | np.ndarray, level: float = 0.95) -> float | None:
    """t-interval half-width of the mean, t(df = n - 1) * s / sqrt(n) with s the sample standard
    deviation; None with fewer than two values (one replication says nothing about its spread)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    return float(t_quantile(x.size - 1, level) * x.std(ddof=1) / math.sqrt(x.size))


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """Mean of b - a over replications where both are numbers, with its 95% t-interval; significant
    when the interval excludes 0. Pairing on common random numbers cancels the noise both share."""
    d = np.array(
        [y - x for x, y in zip(a, b, strict=False)
         if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)],
        dtype=float,
    )
    mean = float(d.mean()) if d.size else None
    hw = ci_half_width(d)
    out: dict[str, Any] = {"difference": mean, "ci_low": None, "ci_high": None, "half_width": None,
                           "significant": None, "pairs": int(d.size)}
    if mean is not None and hw is not None:
        out.update(ci_low=mean - hw, ci_high=mean + hw, half_width=hw, significant=bool(mean - hw > 0 or mean + hw < 0))
    return out


_MISSING = object()


def _summarise_level(dicts: list[Mapping[str, Any]], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    means: dict[str, Any] = {}
    cis: dict[str, Any] = {}
    for key in keys:
        sub = f"{path}.{key}" if path else key
        values = [d.get(key, _MISSING) for d in dicts]
        if any(isinstance(v, Mapping) for v in values):
            means[key], cis[key] = _summarise_level([v if isinstance(v, Mapping) else {} for v in values], sub)
            continue
        if path in COUNT_MAPS:
            values = [0 if v is _MISSING else v for v in values]
        nums = np.array([float(v) for v in values if _is_number(v)])
        if nums.size == 0 and any(v is not None and v is not _MISSING for v in values):
            continue  # a non-numeric leaf has no mean
        means[key] = float(nums.mean()) if nums.size else None
        cis[key] = ci_half_width(nums)
    return means, cis


def summarise(per_run: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Replication summary of :func:`kpis` dicts: the same structure holding means, plus ``ci95`` and
    ``replications``.

    For every numeric leaf x over the n_x replications where it is not None: mean = sum(x) / n_x and
    ``ci95`` half-width = t(0.975, n_x - 1) * s / sqrt(n_x), s the sample standard deviation (ddof 1);
    None when n_x < 2. A member of a count group (``deviations``, ``lost_by_stage``,
    ``failed_by_reason``) missing from a run counts as 0 in that run. ``replications`` = number of dicts
    given. The result can be passed to :func:`get_path` and :func:`check_requirements` like a single
    run's KPIs (gates then test the mean).
    """
    means, cis = _summarise_level(list(per_run), "")
    out: dict[str, Any] = dict(means)
    out["ci95"] = cis
    out["replications"] = len(per_run)
    return out


# -------------------------------------------------------------------------------------- requirements
REQUIREMENT_SYNTAX = (
    "'<kpi path><op><number>' with op one of <=, >=, <, >, ==, != and a dotted path into the KPIs "
    "(e.g. 'vein_to_vein_days.p90<=28', 'patients_lost<5')"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
    "!=": operator.ne,
}
_REQUIREMENT = re.compile(
    r"^\s*(?P<path>[A-Za-z_][\w.\-]*?)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<threshold>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


class RequirementSyntaxError(ValueError):
    """A requirement that is not '<kpi path><op><number>'."""


class Requirement(NamedTuple):
    """A parsed requirement: the KPI it constrains, the comparison and the bound."""

    text: str
    path: str
    op: str
    threshold: float

    def holds(self, value: float | None) -> bool:
        """Nothing measured never meets a requirement: a gate must not pass because the run produced nothing."""
        return value is not None and bool(_OPS[self.op](value, self.threshold))


def parse_requirement(text: str) -> Requirement:
    """The one reader of requirement text, for gates, capacity plans and the command line."""
    m = _REQUIREMENT.match(text)
    if not m:
        raise RequirementSyntaxError(f"cannot parse requirement {text!r}; expected {REQUIREMENT_SYNTAX}")
    return Requirement(text, m["path"], m["op"], float(m["threshold"]))


class RequirementResult(NamedTuple):
    requirement: str
    path: str
    op: str
    threshold: float
    actual: float | None  # None when the KPI had nothing to measure (then ok is False)
    ok: bool


_EXTRAS = ("ci95", "replications")  # what summarise adds beside the KPIs


def walk_kpis(node: Mapping[str, Any], prefix: str = "", skip_extras: bool = True) -> Iterator[tuple[str, Any]]:
    """The one walk of the KPI tree: every node (groups before their members) as (dotted path, value), in
    the dict's order. The ``ci95`` mirror and the replication count are skipped unless asked for."""
    for k, v in node.items():
        if skip_extras and k in _EXTRAS:
            continue
        path = f"{prefix}.{k}" if prefix else str(k)
        yield path, v
        if isinstance(v, Mapping):
            yield from walk_kpis(v, path, skip_extras)


def _unknown_path(kpis: Mapping[str, Any], path: str, why: str) -> ValueError:
    available = [p for p, _ in walk_kpis(kpis, skip_extras=False)]
    close = difflib.get_close_matches(path, available, n=6, cutoff=0.6)
    if close:
        hint = "close matches: " + ", ".join(close)
    else:
        hint = "available: " + ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    return ValueError(f"{why} KPI path {path!r}; {hint}")


def kpi_items(kpis: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every KPI leaf as (dotted path, value), in the dict's order, for tables; the ``ci95`` mirror and
    the replication count are not KPIs and are left out."""
    return [(p, v) for p, v in walk_kpis(kpis, prefix.rstrip(".")) if not isinstance(v, Mapping)]


def numeric_kpis(kpis: Mapping[str, Any]) -> dict[str, float | None]:
    """Numeric KPI leaves by dotted path as floats (NaN -> None), for tables of means and paired
    differences; text leaves are left out."""
    out: dict[str, float | None] = {}
    for path, v in kpi_items(kpis):
        if v is None or isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[path] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def group_member_allowed(group: str, key: str, step_names: Iterable[str] | None = None) -> bool:
    """Whether ``key`` can be a member of the count group ``group`` (:data:`KPI_GROUP_KEYS`). A failure
    reason may also be ``<step>_failure``: for the scenario's ``step_names`` when given, else any step."""
    allowed = KPI_GROUP_KEYS.get(group, ())
    if key in allowed:
        return True
    if group != "failed_by_reason" or not key.endswith(STEP_FAILURE_SUFFIX):
        return False
    return step_names is None or key[: -len(STEP_FAILURE_SUFFIX)] in set(step_names)


def unknown_member_message(group: str, key: str, step_names: Iterable[str] | None = None) -> str:
    """The message for a count-group member that cannot occur, listing the allowed ones."""
    allowed = list(KPI_GROUP_KEYS.get(group, ()))
    if group == "failed_by_reason":
        steps = [f"{s}{STEP_FAILURE_SUFFIX}" for s in step_names] if step_names is not None else []
        allowed = steps + allowed if steps else allowed + [f"<step>{STEP_FAILURE_SUFFIX}"]
    close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(f'{group}.{c}' for c in close)}?" if close else ""
    return f"unknown KPI path {group + '.' + key!r}: {group} members are {', '.join(allowed)}{hint}"


def get_path(kpis: Mapping[str, Any], path: str) -> Any:
    """The KPI at a dotted path (``"vein_to_vein_days.p90"``); an allowed member missing from a count group
    (``"lost_by_stage.apheresis"`` with nobody lost there) is 0, anything else unknown is a ValueError."""
    node: Any = kpis
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        group = ".".join(parts[:i])
        if isinstance(node, Mapping) and i == len(parts) - 1 and group in COUNT_MAPS:
            if group_member_allowed(group, part):
                return 0
            raise ValueError(unknown_member_message(group, part))
        raise _unknown_path(kpis, path, "unknown")
    return node


def value_or_none(kpis: Mapping[str, Any], path: str) -> Any:
    """:func:`get_path` for display: an unknown path or a group shows as nothing instead of failing."""
    try:
        v = get_path(kpis, path)
    except ValueError:
        return None
    return None if isinstance(v, Mapping) else v


def _requirement_value(kpis: Mapping[str, Any], req: Requirement) -> float | None:
    actual = get_path(kpis, req.path)
    if isinstance(actual, Mapping):
        raise ValueError(
            f"requirement {req.text!r}: {req.path!r} is a group, not a number; pick one of: "
            + ", ".join(f"{req.path}.{k}" for k in actual)
        )
    if actual is not None and not _is_number(actual):
        if isinstance(actual, float) and math.isnan(actual):
            return None
        raise ValueError(f"requirement {req.text!r}: {req.path!r} is {actual!r}, not a number")
    return None if actual is None else float(actual)


def check_requirements(kpis: Mapping[str, Any], requirements: Iterable[str]) -> list[RequirementResult]:
    """Test each requirement '<path><op><number>' against the KPIs (of one run or of :func:`summarise`).

    A KPI that is None (nothing measured, e.g. no infusions) fails every requirement on it: a gate must
    not pass because the run produced nothing.
    """
    results = []
    for text in requirements:
        req = parse_requirement(text)
        value = _requirement_value(kpis, req)
        results.append(RequirementResult(req.text, req.path, req.op, req.threshold, value, req.holds(value)))
    return results


# ----------------------------------------------------------------------------- time series / tables
def _end_time(f: dict[str, pd.DataFrame]) -> float:
    """Last recorded time of a run: the time axis of a chart when the caller gives no horizon."""
    times = [_num(f["patients"], c) for c in ("referred", "infused", "lost_time")]
    times += [_num(f["batches"], c) for c in ("apheresis_start", "ready", "mfg_start", "mfg_end", "released")]
    times += [_num(f["resource_uses"], c) for c in ("requested", "start", "end")]
    allt = np.concatenate(times) if times else np.array([])
    allt = allt[np.isfinite(allt)]
    return float(allt.max()) if allt.size else 0.0


def infusions_over_time(frames: Frames, freq_days: float = 7, horizon: float | None = None) -> pd.DataFrame:
    """Infusions per period [period_start, period_end) from day 0 to the horizon (default: the last
    recorded time), with the running total and the period's rate per year (infusions / freq * 365.25).
    One row per run and period."""
    if not freq_days > 0:
        raise ValueError(f"freq_days must be > 0, got {freq_days}")

    def one(f: dict[str, pd.DataFrame]) -> pd.DataFrame:
        t = _num(f["patients"], "infused")
        t = t[np.isfinite(t)]
        if horizon is not None:
            n = max(1, math.ceil(horizon / freq_days))
        else:
            n = int(_end_time(f) // freq_days) + 1
        if horizon is not None:
            t = t[t < horizon]
        idx = np.floor(t / freq_days).astype(int)
        idx = idx[(idx >= 0) & (idx < n)]
        counts = np.bincount(idx, minlength=n)[:n]
        starts = np.arange(n) * float(freq_days)
        return pd.DataFrame(
            {
                "period_start": starts,
                "period_end": starts + freq_days,
                "infusions": counts.astype(int),
                "cumulative_infusions": np.cumsum(counts).astype(int),
                "rate_per_year": counts / freq_days * DAYS_PER_YEAR,
            }
        )

    return _per_run(frames, one)


def _batch_stop(f: dict[str, pd.DataFrame]) -> np.ndarray:
    """When a batch's journey ended if it stopped early (failed, expired, abandoned): its last recorded
    event (expiry for an expired product)."""
    b = f["batches"]
    cols = ("apheresis_start", "apheresis_end", "received", "ready", "mfg_start", "mfg_end", "qc_complete",
            "released", "shipped", "delivered", "infused")
    stop = np.full(len(b), np.nan)
    for c in cols:
        stop = np.fmax(stop, _num(b, c))
    for table, col in (("steps", "end"), ("qc_results", "result_time")):
        ev = f[table]
        if len(ev):
            last = pd.Series(_num(ev, col)).groupby(ev["batch_no"].to_numpy()).max()
            stop = np.fmax(stop, b["batch_no"].map(last).to_numpy(dtype=float))
    expired = (b["status"] == "expired").to_numpy()
    return np.where(expired & np.isfinite(_num(b, "expiry")), _num(b, "expiry"), stop)


def _patient_end(p: pd.DataFrame) -> np.ndarray:
    inf = _num(p, "infused")
    lost = _num(p, "lost_time")
    return np.where(np.isfinite(inf), inf, np.where(np.isfinite(lost), lost, np.inf))


Interval = tuple[np.ndarray, np.ndarray]  # [start, end) per row; an end of inf runs past the horizon
_WIP_BOUNDS = ("apheresis_start", "ready", "mfg_start", "mfg_end", "released", "infused")


def _wip_intervals(f: dict[str, pd.DataFrame]) -> tuple[Interval, dict[str, Interval]]:
    """Where each patient and batch is, as intervals: the patient in the system over [referred, infused
    or lost), each batch in its stages (see :func:`wip_over_time`). The one definition of the stages that
    the WIP chart samples and the WIP KPI integrates."""
    p, b = f["patients"], f["batches"]
    pend = _patient_end(p)
    cap = b["coi"].map(dict(zip(p["coi"], pend, strict=True))).to_numpy(dtype=float)
    cap = np.where(np.isnan(cap), np.inf, cap)
    is_open = b["status"].isin(OPEN_BATCH_STATUSES).to_numpy()
    fallback = np.where(is_open, np.inf, _batch_stop(f))
    B = np.column_stack([_num(b, c) for c in _WIP_BOUNDS]) if len(b) else np.empty((0, len(_WIP_BOUNDS)))
    # next_known[:, j] = first recorded boundary at or after j, else where the batch stopped
    next_known = np.empty_like(B)
    nxt = fallback
    for j in range(len(_WIP_BOUNDS) - 1, -1, -1):
        nxt = np.where(np.isfinite(B[:, j]), B[:, j], nxt)
        next_known[:, j] = nxt
    stages = {stage: (B[:, i], np.minimum(next_known[:, i + 1], cap)) for i, stage in enumerate(WIP_STAGES[1:])}
    return (_num(p, "referred"), pend), stages


def wip_over_time(frames: Frames, step_days: float = 1, horizon: float | None = None) -> pd.DataFrame:
    """Patients in each stage at times 0, step, 2*step ... up to the horizon (default: last recorded time).

    A patient is in the system over [referred, infused or lost). Each batch passes
    apheresis_and_transit [apheresis_start, ready) (collection, shipping, quarantine, slot day),
    waiting_for_suite [ready, mfg_start), manufacturing [mfg_start, mfg_end), qc_and_release
    [mfg_end, released), shipping_and_infusion_wait [released, infused). A batch that stopped early ends
    its open stage at its last recorded event; one still open at the horizon runs on. waiting_for_slot is
    the rest of the patient's time in the system: before the first apheresis and between attempts.
    Columns: time, in_system, then one per stage (their sum is in_system). One row per run and time.
    These are snapshots for a chart: averages over time come from :func:`wip_time_average`, which
    integrates the same intervals exactly instead of sampling them.
    """
    if not step_days > 0:
        raise ValueError(f"step_days must be > 0, got {step_days}")

    def one(f: dict[str, pd.DataFrame]) -> pd.DataFrame:
        end = horizon if horizon is not None else _end_time(f)
        grid = np.arange(0.0, end + 1e-9, float(step_days))
        (ref, pend), intervals = _wip_intervals(f)
        in_system = _count_inside(ref, pend, grid)
        batch_stages = {stage: _count_inside(s, e, grid) for stage, (s, e) in intervals.items()}
        in_batches = np.sum(list(batch_stages.values()), axis=0) if len(grid) else np.zeros(0, dtype=int)
        return pd.DataFrame(
            {
                "time": grid,
                "in_system": in_system,
                "waiting_for_slot": np.clip(in_system - in_batches, 0, None),
                **batch_stages,
            }
        )

    return _per_run(frames, one)


def _wip_average(f: dict[str, pd.DataFrame], warmup: float, horizon: float) -> dict[str, float]:
    """Time-averaged count in the system and in each stage over [warmup, horizon): the days every
    interval of :func:`_wip_intervals` spends inside the window, summed, over the window's length."""
    window = horizon - warmup
    (ref, pend), intervals = _wip_intervals(f)
    in_system = float(_overlap(ref, pend, warmup, horizon).sum()) / window
    stages = {stage: float(_overlap(s, e, warmup, horizon).sum()) / window for stage, (s, e) in intervals.items()}
    return {"in_system": in_system, "waiting_for_slot": in_system - sum(stages.values()), **stages}


def wip_time_average(frames: Frames, horizon: float, warmup: float = 0.0) -> pd.DataFrame:
    """Time-averaged work in progress over [warmup, horizon), exactly: for each stage of
    :func:`wip_over_time`, L = (1 / (horizon - warmup)) * sum over intervals of their days inside the
    window (the integral of the step function, not a mean of daily snapshots). Columns in_system,
    waiting_for_slot (in_system minus the batch stages) and one per batch stage; one row per run. The
    ``wip_mean`` KPI is this row."""
    if not horizon > warmup:
        raise ValueError(f"horizon ({horizon}) must be greater than warmup ({warmup})")
    return _per_run(frames, lambda f: pd.DataFrame([_wip_average(f, warmup, horizon)]))


def turnaround_breakdown(frames: Frames) -> pd.DataFrame:
    """Days each infused patient spent in each stage, from referral to infusion.

    With F the batch that was infused:
    slot_wait = first_apheresis - referred (a wait);
    earlier_attempts = F.apheresis_start - first_apheresis (failed attempts and re-collection; 0 when
    the first batch was infused);
    collection_and_inbound = F.ready - F.apheresis_start (collection, transit, quarantine, slot day);
    suite_wait = F.mfg_start - F.ready (a wait); manufacturing = F.mfg_end - F.mfg_start;
    qc_and_release = F.released - F.mfg_end; outbound_and_infusion = infused - F.released.
    The stages add up to ``referral_to_infusion`` = vein_to_vein + slot_wait, vein_to_vein = infused -
    first_apheresis. ``WAIT_STAGES`` names the pure waits. One row per run and infused patient.
    """

    def one(f: dict[str, pd.DataFrame]) -> pd.DataFrame:
        p, b = f["patients"], f["batches"]
        p = p[(p["status"] == "infused").to_numpy() & np.isfinite(_num(p, "infused"))]
        b = b[np.isfinite(_num(b, "infused"))]
        final = (
            pd.DataFrame(
                {
                    "coi": b["coi"].to_numpy(),
                    "batch_no": b["batch_no"].to_numpy(),
                    "pref": (b["status"] == "infused").to_numpy().astype(int),
                    "att": _num(b, "attempt"),
                    **{c: _num(b, c) for c in ("apheresis_start", "ready", "mfg_start", "mfg_end", "released")},
                }
            )
            .sort_values(["coi", "pref", "att"])
            .drop_duplicates("coi", keep="last")
            .drop(columns=["pref", "att"])
        )
        pat = pd.DataFrame(
            {
                "coi": p["coi"].to_numpy(),
                "attempts": _num(p, "attempts"),
                "referred": _num(p, "referred"),
                "first_apheresis": _num(p, "first_apheresis"),
                "infused": _num(p, "infused"),
            }
        )
        m = pat.merge(final, on="coi", how="left")
        out = m[["coi", "batch_no", "attempts", "referred", "first_apheresis", "infused"]].copy()
        out["slot_wait"] = m["first_apheresis"] - m["referred"]
        out["earlier_attempts"] = m["apheresis_start"] - m["first_apheresis"]
        out["collection_and_inbound"] = m["ready"] - m["apheresis_start"]
        out["suite_wait"] = m["mfg_start"] - m["ready"]
        out["manufacturing"] = m["mfg_end"] - m["mfg_start"]
        out["qc_and_release"] = m["released"] - m["mfg_end"]
        out["outbound_and_infusion"] = m["infused"] - m["released"]
        out["vein_to_vein"] = m["infused"] - m["first_apheresis"]
        out["referral_to_infusion"] = m["infused"] - m["referred"]
        return out.sort_values("infused", kind="stable").reset_index(drop=True)

    return _per_run(frames, one)


def _natural(s: pd.Series) -> pd.Series:
    return s.astype(str).str.replace(r"\d+", lambda m: m.group(0).zfill(9), regex=True)


def utilisation_by_unit(frames: Frames, horizon: float, warmup: float) -> pd.DataFrame:
    """Per resource unit: busy days inside [warmup, horizon) (line clearance included, and also shown
    alone), holds overlapping the window, and utilisation = busy / (available_unit_days of its kind /
    capacity), i.e. against the average unit's available time. Units never held do not appear (the
    records name only units that were used). One row per run, kind and unit."""

    def one(f: dict[str, pd.DataFrame]) -> pd.DataFrame:
        u = f["resource_uses"]
        busy = _overlap(_num(u, "start"), _num(u, "end"), warmup, horizon)
        df = pd.DataFrame(
            {
                "kind": u["kind"].astype(str).to_numpy(),
                "unit": u["unit"].astype(str).to_numpy(),
                "busy_days": busy,
                "line_clearance_days": np.where((u["activity"] == "line_clearance").to_numpy(), busy, 0.0),
                "holds": (busy > 0).astype(int),
            }
        )
        g = df.groupby(["kind", "unit"], as_index=False)[["busy_days", "line_clearance_days", "holds"]].sum()
        avail = _available_by_kind(f["resources"])
        per_unit = g["kind"].map(
            {k: (a / c if c > 0 and a > 0 else np.nan) for k, (c, a) in avail.items()}
        ).astype(float)
        g["available_days"] = per_unit
        g["utilisation"] = g["busy_days"] / per_unit
        g = g.sort_values(["kind", "unit"], key=lambda s: _natural(s) if s.name == "unit" else s)
        return g.reset_index(drop=True)

    return _per_run(frames, one)


def queue_length_over_time(frames: Frames, kind: str) -> pd.DataFrame:
    """Step function of holds of a resource kind waiting (requested <= t < start) and in use
    (start <= t < end): each row's values hold from its ``time`` until the next row's. A hold never
    started (or never ended) waits (or is in use) until the end. One series per run."""

    def one(f: dict[str, pd.DataFrame]) -> pd.DataFrame:
        u = f["resource_uses"]
        u = u[(u["kind"] == kind).to_numpy()]
        req, start, end = _num(u, "requested"), _num(u, "start"), _num(u, "end")
        times = np.concatenate([req, start, start, end])
        dq = np.concatenate([np.ones(len(u)), -np.ones(len(u)), np.zeros(len(u)), np.zeros(len(u))])
        du = np.concatenate([np.zeros(len(u)), np.zeros(len(u)), np.ones(len(u)), -np.ones(len(u))])
        ok = np.isfinite(times)
        ev = pd.DataFrame({"time": times[ok], "q": dq[ok], "u": du[ok]}).groupby("time", as_index=False).sum()
        ev = ev[(ev["q"] != 0) | (ev["u"] != 0)]
        out = pd.DataFrame(
            {
                "time": ev["time"].to_numpy(dtype=float),
                "queue_length": np.cumsum(ev["q"].to_numpy()).astype(int),
                "in_use": np.cumsum(ev["u"].to_numpy()).astype(int),
            }
        )
        if len(out) == 0 or out["time"].iloc[0] > 0:
            out = pd.concat([pd.DataFrame({"time": [0.0], "queue_length": [0], "in_use": [0]}), out],
                            ignore_index=True)
        return out

    return _per_run(frames, one)


def bottleneck_ranking(frames: Frames, horizon: float, warmup: float) -> pd.DataFrame:
    """Resource kinds ranked by utilisation (as in :func:`kpis`) and by total queue wait: the days holds
    spent between request and start inside [warmup, horizon). mean_wait_days is over holds requested in
    the window that started; holds counts holds requested in the window. Averaged over runs; rank 1 is
    the likeliest bottleneck. Sorted by utilisation, then queue wait."""
    rows = []
    for rid, f in _split_runs(frames):
        u = f["resource_uses"]
        req, start = _num(u, "requested"), _num(u, "start")
        kinds = u["kind"].astype(str).to_numpy()
        wait = _overlap(req, start, warmup, horizon)
        in_window = (req >= warmup) & (req < horizon)
        waited = start - req
        busy = _busy_by_kind(u, warmup, horizon)
        avail = _available_by_kind(f["resources"])
        for kind in list(dict.fromkeys(list(avail) + list(pd.unique(kinds)))):
            mine = kinds == kind
            capacity, available = avail.get(kind, (np.nan, np.nan))
            started = mine & in_window & np.isfinite(waited)
            rows.append(
                {
                    "run_id": rid,
                    "kind": kind,
                    "capacity": capacity,
                    "busy_unit_days": busy.get(kind, 0.0),
                    "available_unit_days": available,
                    "utilisation": busy.get(kind, 0.0) / available if available > 0 else np.nan,
                    "queue_wait_days": float(wait[mine].sum()),
                    "mean_wait_days": float(waited[started].mean()) if started.any() else np.nan,
                    "holds": int((mine & in_window).sum()),
                }
            )
    cols = ["kind", "capacity", "utilisation", "busy_unit_days", "available_unit_days", "queue_wait_days",
            "mean_wait_days", "holds"]
    if not rows:
        return pd.DataFrame(columns=cols + ["utilisation_rank", "queue_wait_rank"])
    df = pd.DataFrame(rows).groupby("kind", as_index=False, sort=False)[cols[1:]].mean()[cols]
    df["utilisation_rank"] = df["utilisation"].rank(ascending=False, method="min").astype("Int64")
    df["queue_wait_rank"] = df["queue_wait_days"].rank(ascending=False, method="min").astype("Int64")
    return df.sort_values(["utilisation", "queue_wait_days"], ascending=False, na_position="last").reset_index(
        drop=True
    )


def ecdf(values: Iterable[float]) -> pd.DataFrame:
    """Empirical CDF: sorted finite values and the share of values <= each (ties keep every step)."""
    v = np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=float)
    v = np.sort(v[np.isfinite(v)])
    return pd.DataFrame({"value": v, "share": np.arange(1, v.size + 1) / v.size if v.size else []})


def _n_runs(frames: Frames) -> int:
    return max(1, len(_run_ids(frames)))


_SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2}


def deviations_table(frames: Frames) -> pd.DataFrame:
    """Deviations grouped by severity, kind and stage: count over all runs, per_run = count / runs,
    open_at_end (never closed before the horizon), mean_days_to_close over the closed ones. Critical first,
    then by count."""
    d = _table(frames, "deviations")
    cols = ["severity", "kind", "stage", "count", "per_run", "open_at_end", "mean_days_to_close"]
    if len(d) == 0:
        return pd.DataFrame(columns=cols)
    time, closed = _num(d, "time"), _num(d, "closed")
    df = pd.DataFrame(
        {
            "severity": _text(d, "severity").to_numpy(),
            "kind": _text(d, "kind").to_numpy(),
            "stage": _text(d, "stage").to_numpy(),
            "open": np.isnan(closed).astype(int),
            "days_to_close": closed - time,
        }
    )
    g = df.groupby(["severity", "kind", "stage"], as_index=False).agg(
        count=("open", "size"), open_at_end=("open", "sum"), mean_days_to_close=("days_to_close", "mean")
    )
    g["per_run"] = g["count"] / _n_runs(frames)
    g["_order"] = g["severity"].map(_SEVERITY_ORDER).fillna(len(_SEVERITY_ORDER))
    g = g.sort_values(["_order", "count"], ascending=[True, False], kind="stable")
    return g[cols].reset_index(drop=True)


def losses_table(frames: Frames) -> pd.DataFrame:
    """Lost patients grouped by stage and reason: count over all runs, per_run, share_of_lost, and
    mean_days_referral_to_loss. Most frequent first."""
    p = _table(frames, "patients")
    p = p[(p["status"] == "lost").to_numpy()]
    cols = ["lost_stage", "lost_reason", "count", "per_run", "share_of_lost", "mean_days_referral_to_loss"]
    if len(p) == 0:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(
        {
            "lost_stage": _text(p, "lost_stage").to_numpy(),
            "lost_reason": _text(p, "lost_reason").to_numpy(),
            "days": _num(p, "lost_time") - _num(p, "referred"),
        }
    )
    g = df.groupby(["lost_stage", "lost_reason"], as_index=False).agg(
        count=("days", "size"), mean_days_referral_to_loss=("days", "mean")
    )
    g["per_run"] = g["count"] / _n_runs(frames)
    g["share_of_lost"] = g["count"] / len(p)
    return g.sort_values("count", ascending=False, kind="stable")[cols].reset_index(drop=True)


_TRACE_ORDER = {"patient": 0, "batch": 1, "resource": 2, "step": 3, "qc": 4, "deviation": 5, "release": 6,
                "shipment": 7}


def _d(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.2f}"


def _val(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _trace_rows(f: dict[str, pd.DataFrame], coi: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(time: Any, end: Any, kind: str, what: str, detail: str, batch_no: Any = None) -> None:
        rows.append({"time": _val(time), "end": _val(end), "kind": kind, "what": what, "detail": detail,
                     "batch_no": batch_no})

    mine = {name: f[name][(f[name]["coi"] == coi).to_numpy()] for name in _COLUMNS if "coi" in _COLUMNS[name]}
    for r in mine["patients"].itertuples(index=False):
        add(r.referred, None, "patient", "referred",
            f"site {r.site}; {r.product}; urgency {r.urgency}; infectious {bool(r.infectious)}")
        add(r.slot_booked, None, "patient", "slot booked", "")
        add(r.infused, None, "patient", "infused",
            f"vein-to-vein {_d(_val(r.infused) - _val(r.first_apheresis))} d; attempts {r.attempts}")
        add(r.lost_time, None, "patient", "lost", f"{r.lost_stage}: {r.lost_reason}")
    stops = _batch_stop({"batches": mine["batches"], "steps": mine["steps"], "qc_results": mine["qc_results"]})
    for r, stop in zip(mine["batches"].itertuples(index=False), stops, strict=True):
        add(r.received, None, "batch", "received (quarantine)", f"attempt {r.attempt}", r.batch_no)
        add(r.ready, None, "batch", "ready for the suite", f"slot day {_d(_val(r.slot_day))}", r.batch_no)
        add(r.qc_complete, None, "batch", "QC complete", f"oos {bool(r.oos)}", r.batch_no)
        if r.status in ("failed", "expired", "abandoned"):
            add(stop, None, "batch", str(r.status), str(r.failure_reason or ""), r.batch_no)
    for r in mine["shipments"].itertuples(index=False):
        add(r.depart, r.arrive, "shipment", f"{r.direction} {r.origin} -> {r.destination}",
            f"{r.condition}; hold limit {_d(_val(r.hold_limit_days))} d; excursion {bool(r.excursion)}",
            r.batch_no)
    for r in mine["resource_uses"].itertuples(index=False):
        add(r.start, r.end, "resource", f"{r.kind}:{r.unit}",
            f"{r.activity}; waited {_d(_val(r.start) - _val(r.requested))} d", r.batch_no)
    for r in mine["steps"].itertuples(index=False):
        add(r.start, r.end, "step", r.step,
            f"seq {r.seq}; {r.resources}; operators {r.operators}; {'open' if bool(r.open) else 'closed'}; "
            f"{r.outcome}; waited {_d(_val(r.start) - _val(r.ready))} d", r.batch_no)
    for r in mine["qc_results"].itertuples(index=False):
        add(r.sampled, r.result_time, "qc", r.test,
            f"{r.result}; set-up {_d(_val(r.start))}; "
            f"{'required' if bool(r.required_for_release) else 'not required'} for release", r.batch_no)
    for r in mine["deviations"].itertuples(index=False):
        add(r.time, r.closed, "deviation", r.kind, f"{r.severity} at {r.stage}: {r.detail}", r.batch_no)
    for r in mine["releases"].itertuples(index=False):
        add(r.time, None, "release", r.mode,
            f"signed by {r.signer_role} ({r.meaning}); pending: {r.results_pending or 'none'}", r.batch_no)
    return rows


def patient_trace(frames: Frames, coi: str, run_id: Any = None) -> pd.DataFrame:
    """Everything recorded about one chain of identity, in time order: patient milestones, batch
    milestones (a failed, expired or abandoned batch at its last recorded event), shipments, resource
    holds, processing steps, QC results (at sampling; end = result), deviations and releases.

    Columns: time, end (NaN for instants), kind, what, detail, batch_no, with run_id first when the
    frames hold runs (pass ``run_id`` to keep one). Ties in time keep the order of the journey (patient,
    batch, resource, step, qc, deviation, release, shipment: a unit is held before its step starts, a
    product released before it ships). Raises ValueError for an unknown coi.
    """
    parts = []
    for rid, f in _split_runs(frames):
        if run_id is not None and rid != run_id:
            continue
        rows = _trace_rows(f, coi)
        if rows:
            df = pd.DataFrame(rows)
            if rid is not None:
                df.insert(0, "run_id", rid)
            parts.append(df)
    if not parts:
        known = [str(c) for c in _table(frames, "patients")["coi"].dropna().unique()]
        close = difflib.get_close_matches(coi, known, n=5, cutoff=0.6)
        where = f" in run {run_id!r}" if run_id is not None else ""
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"no records for coi {coi!r}{where}{hint}")
    df = pd.concat(parts, ignore_index=True)
    df = df[np.isfinite(df["time"].to_numpy(dtype=float))].copy()
    df["_order"] = df["kind"].map(_TRACE_ORDER)
    keys = (["run_id"] if "run_id" in df.columns else []) + ["time", "_order", "end"]
    df = df.sort_values(keys, kind="stable", na_position="last").drop(columns="_order")
    return df.reset_index(drop=True)
