"""The binding constraint, named and measured: per resource kind, how full it is against what its
calendar and booking rules let it be used for, how long work queued for it, and what one more unit of it
would change in the target KPI. Pure: frames and numbers in, a ranking out (the runs that produce the
numbers are :mod:`celltx_mfg.experiments.bottleneck`).

How "binding" is decided
------------------------
The binding kind is the one whose extra unit improves the target KPI most, *significantly*: its marginal
value (KPI with one more unit minus KPI of the unchanged plant, paired replication by replication on
common random numbers) has a 95% t-interval that excludes zero on the improving side. Lower is better for
durations, losses, costs and counts; higher for throughput, infusions and the on-time share
(:func:`kpi_direction`). When no extra unit helps significantly there is no binding kind (``None``): the
plant is limited by demand, by two resources that are only ever added together, or the replications are
too few to tell.

Effective utilisation and queue-days are the supporting evidence and order the rest of the ranking: a
kind whose extra unit does nothing measurable is ranked by how full it is. A kind can be full and still
not binding (a co-binding pair: apheresis chairs and starts are booked together, so one more of either
alone adds nothing while the other stays where it is). And a kind can bind with no queue of its own: in
slot mode a suite is reserved when the start is booked, so nobody queues for it at the plant; its queue
is the patients' wait for a slot (the queue-days of ``manufacturing_slot`` and ``apheresis``, whose holds
run from the booking to the booked day).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import analysis
from .model.capacity import KindCapacity

# The KPI the marginal values are measured on unless the caller names one: the turnaround a patient feels,
# which (unlike vein-to-vein) sees the wait for a manufacturing slot.
DEFAULT_KPI = "referral_to_infusion_days.p90"
# KPI roots where more is better; every other KPI (days, losses, costs, counts) is better lower.
HIGHER_IS_BETTER = frozenset({"throughput_per_year", "patients_infused", "infusions_in_window", "on_time_share"})


class Direction(StrEnum):
    """Which way the target KPI improves."""

    LOWER = "lower_is_better"
    HIGHER = "higher_is_better"


def kpi_direction(path: str) -> Direction:
    """Higher is better for throughput, infusions and the on-time share; lower for everything else."""
    return Direction.HIGHER if path.split(".")[0] in HIGHER_IS_BETTER else Direction.LOWER


class MarginalValue(NamedTuple):
    """KPI with one more unit minus KPI of the unchanged plant, over paired replications."""

    mean: float | None  # mean change of the KPI (its own sign: negative = lower)
    ci95: float | None  # 95% t half-width of that mean
    improvement: float | None  # the change in the improving direction (positive = better)
    significant: bool | None  # the interval excludes 0
    pairs: int

    @property
    def improves(self) -> bool:
        """Significantly better with the extra unit."""
        return bool(self.significant) and (self.improvement or 0.0) > 0


def marginal_value(base: Sequence[float | None], plus_one: Sequence[float | None],
                   direction: Direction) -> MarginalValue:
    """The paired difference (analysis.paired_difference) of plus-one against base, signed for ``direction``."""
    d = analysis.paired_difference(base, plus_one)
    mean = d["difference"]
    improvement = None if mean is None else (-mean if direction is Direction.LOWER else mean)
    return MarginalValue(mean, d["half_width"], improvement, d["significant"], d["pairs"])


@dataclass
class KindEvidence:
    """Everything the ranking says about one resource kind."""

    kind: str
    lever: str  # what "one more unit" is, in lever paths
    overrides: dict[str, Any]  # the what-if's lever values (apply_overrides)
    units: int
    nominal_unit_days: float
    effective_unit_days: float
    utilisation: float | None  # busy / nominal (as analysis.kpis)
    effective_utilisation: float | None  # busy (or reserved) / effective
    queue_days: float | None  # days holds of this kind spent queued inside the window (mean of runs)
    mean_wait_days: float | None  # per hold requested in the window that started
    holds: float | None
    rule: str = ""
    marginal: MarginalValue | None = None
    note: str = ""  # why there is no marginal value (an invalid what-if)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        mv = self.marginal
        return {
            "kind": self.kind,
            "lever": self.lever,
            "overrides": self.overrides,
            "units": self.units,
            "nominal_unit_days": self.nominal_unit_days,
            "effective_unit_days": self.effective_unit_days,
            "utilisation": self.utilisation,
            "effective_utilisation": self.effective_utilisation,
            "queue_days": self.queue_days,
            "mean_wait_days": self.mean_wait_days,
            "holds": self.holds,
            "effective_rule": self.rule,
            "marginal_value": None if mv is None else {
                "mean": mv.mean, "ci95": mv.ci95, "improvement": mv.improvement,
                "significant": mv.significant, "improves": mv.improves, "pairs": mv.pairs,
            },
            "note": self.note,
        }


# ----------------------------------------------------------------------------------- measured use
def _n_runs(frames: analysis.Frames) -> int:
    for df in frames.values():
        if "run_id" in df.columns and len(df):
            return int(df["run_id"].nunique())
    return 1


def _clip(start: np.ndarray, end: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.minimum(end, hi) - np.maximum(start, lo), 0.0, None)


def reserved_suite_days(frames: analysis.Frames, reserve_days: Mapping[str, int], horizon: float,
                        warmup: float) -> float:
    """Suite-days the slot book kept from anyone else inside the window, per run: each started batch
    holds its suite from its booked start day for the planned days, or to the end of its real suite use
    (line clearance included) when that ran longer."""
    batches = frames.get("batches")
    uses = frames.get("resource_uses")
    if batches is None or uses is None or len(batches) == 0:
        return 0.0
    keys = ["run_id", "batch_no"] if "run_id" in batches.columns else ["batch_no"]
    suite = uses[uses["kind"].astype(str) == "suite"]
    ends = suite.assign(end=pd.to_numeric(suite["end"], errors="coerce")).groupby(keys)["end"].max()
    b = batches[np.isfinite(pd.to_numeric(batches["mfg_start"], errors="coerce").to_numpy(dtype=float))]
    b = b.join(ends.rename("suite_end"), on=keys)
    start = pd.to_numeric(b["slot_day"], errors="coerce").fillna(pd.to_numeric(b["mfg_start"], errors="coerce"))
    planned = start + b["product"].astype(str).map(dict(reserve_days)).fillna(0.0)
    end = np.fmax(planned.to_numpy(dtype=float), pd.to_numeric(b["suite_end"], errors="coerce").to_numpy(dtype=float))
    held = _clip(start.to_numpy(dtype=float), end, warmup, horizon)
    return float(np.nansum(held)) / _n_runs(frames)


def _finite(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def resource_measures(frames: analysis.Frames, capacity: Mapping[str, KindCapacity], horizon: float,
                      warmup: float) -> pd.DataFrame:
    """Per kind (mean over the runs in ``frames``): units, nominal and effective unit-days, busy
    unit-days, utilisation against each, queue-days, mean wait per hold and holds.

    busy = days of holds inside [warmup, horizon) (analysis.bottleneck_ranking); for suites under a
    planned reservation, the reserved days (:func:`reserved_suite_days`). effective_utilisation = busy /
    effective unit-days; utilisation = busy of the holds / nominal unit-days (as analysis.kpis)."""
    ranked = analysis.bottleneck_ranking(frames, horizon, warmup).set_index("kind")
    rows = []
    for kind, cap in capacity.items():
        have = kind in ranked.index
        r = ranked.loc[kind] if have else None
        busy = float(r["busy_unit_days"]) if r is not None else 0.0
        if cap.reserve_days:
            busy = max(busy, reserved_suite_days(frames, cap.reserve_days, horizon, warmup))
        rows.append({
            "kind": kind,
            "units": cap.units,
            "nominal_unit_days": cap.nominal_unit_days,
            "effective_unit_days": cap.effective_unit_days,
            "busy_unit_days": busy,
            "utilisation": _finite(r["utilisation"]) if r is not None else 0.0,
            "effective_utilisation": busy / cap.effective_unit_days if cap.effective_unit_days > 0 else None,
            "queue_days": float(r["queue_wait_days"]) if r is not None else 0.0,
            "mean_wait_days": _finite(r["mean_wait_days"]) if r is not None else None,
            "holds": float(r["holds"]) if r is not None else 0.0,
            "rule": cap.rule,
        })
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values(["effective_utilisation", "queue_days"], ascending=False, na_position="last").reset_index(
        drop=True)


# --------------------------------------------------------------------------------------- ranking
def _order(e: KindEvidence) -> tuple[int, float, float, float]:
    """Significant improvers first, biggest first; then by effective utilisation, then queue-days."""
    mv = e.marginal
    improves = mv is not None and mv.improves
    return (0 if improves else 1, -(mv.improvement or 0.0) if improves and mv else 0.0,
            -(e.effective_utilisation if e.effective_utilisation is not None else -1.0),
            -(e.queue_days or 0.0))


def rank(evidence: Sequence[KindEvidence]) -> list[KindEvidence]:
    """The ranking: see the module docstring for the rule."""
    return sorted(evidence, key=_order)


def binding_kind(ranked: Sequence[KindEvidence]) -> str | None:
    """The kind whose extra unit improves the KPI most, significantly; None when none does."""
    if ranked and ranked[0].marginal is not None and ranked[0].marginal.improves:
        return ranked[0].kind
    return None


def headline(measures: pd.DataFrame) -> dict[str, Any] | None:
    """The fullest kind by effective utilisation (the evidence there is without extra runs)."""
    if measures.empty or measures["effective_utilisation"].isna().all():
        return None
    top = measures.sort_values(["effective_utilisation", "queue_days"], ascending=False, na_position="last").iloc[0]
    return {k: top[k] for k in ("kind", "effective_utilisation", "utilisation", "queue_days", "mean_wait_days")}
