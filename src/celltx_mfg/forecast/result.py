"""The forecast's result: what N replications from one plant state say about every live patient and the
load on the plant, as typed values, and the one JSON form the CLI prints and the store keeps.

Quantiles are of calendar datetimes. A release (or infusion) date's quantiles are taken over the
replications in which the patient was *not lost*; one not yet released by the forecast's horizon counts
as later than any date, so a quantile that falls among those is ``None`` ("after the horizon"). The
chance of losing the patient is ``p_lost``, apart: a date interval conditioned on the patient being
treated is what a clinic plans with, and the risk of not being treated at all is a separate figure.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

QUANTILES = (0.1, 0.5, 0.9)
LOAD_WEEKS = 8  # the capacity load is reported over the next eight weeks
AT_RISK_P_LOST = 0.10  # a patient lost in at least this share of replications is at risk
AT_RISK_P_BOOKED = 0.80  # ... or infused by the booked date in fewer than this share


class LoadKind(StrEnum):
    """The resources whose load the forecast reports (suites, the QC lab, QA review)."""

    suite = "suite"
    qc = "qc_analysts"
    qa = "qa_reviewers"


@dataclass(frozen=True, slots=True)
class Band:
    """p10 / p50 / p90 of one figure across replications; ``None`` is a datetime after the horizon."""

    p10: Any
    p50: Any
    p90: Any

    def as_json(self) -> dict[str, Any]:
        return {"p10": _json_value(self.p10), "p50": _json_value(self.p50), "p90": _json_value(self.p90)}


@dataclass(frozen=True, slots=True)
class PatientForecast:
    """One live patient of the state, by the state's chain-of-identity id."""

    coi: str
    stage: str  # the patient's stage in the state, as the state names it
    release: Band  # datetimes (or None: after the horizon)
    infusion: Band
    p_infused_by_booked_date: float | None  # None: the clinic has booked no infusion date
    p_lost: float
    booked_infusion: dt.datetime | None = None

    @property
    def risk(self) -> float:
        """How far this patient is from a safe forecast: the larger of the chance of losing them and the
        chance of missing the booked infusion date."""
        miss = 0.0 if self.p_infused_by_booked_date is None else 1.0 - self.p_infused_by_booked_date
        return max(self.p_lost, miss)

    @property
    def at_risk(self) -> bool:
        booked_miss = self.p_infused_by_booked_date is not None and self.p_infused_by_booked_date < AT_RISK_P_BOOKED
        return self.p_lost >= AT_RISK_P_LOST or booked_miss

    def as_json(self) -> dict[str, Any]:
        return {
            "coi": self.coi,
            "stage": self.stage,
            "release": self.release.as_json(),
            "infusion": self.infusion.as_json(),
            "p_infused_by_booked_date": self.p_infused_by_booked_date,
            "p_lost": self.p_lost,
            "booked_infusion": _json_value(self.booked_infusion),
            "at_risk": self.at_risk,
        }


@dataclass(frozen=True, slots=True)
class WeekLoad:
    """One week's utilisation of one resource (busy share of what it offered), with its band."""

    week: int  # 1 = the week starting at as_of
    start: dt.datetime
    utilisation: Band  # floats in [0, 1]

    def as_json(self) -> dict[str, Any]:
        return {"week": self.week, "start": _json_value(self.start), **self.utilisation.as_json()}


@dataclass(frozen=True)
class ForecastResult:
    """Everything a forecast says, in the state's terms (its coi values, calendar datetimes)."""

    as_of: dt.datetime
    replications: int
    horizon_days: float
    scenario_name: str
    scenario_hash: str
    state_hash: str
    seed: int
    patients: Sequence[PatientForecast]
    capacity: dict[LoadKind, Sequence[WeekLoad]] = field(default_factory=dict)

    def ranked(self) -> list[PatientForecast]:
        """Patients at risk first (most at risk first), then the rest by p50 release date."""
        def key(p: PatientForecast) -> tuple[int, float, float]:
            rel = p.release.p50
            return (0 if p.at_risk else 1, -p.risk, rel.timestamp() if isinstance(rel, dt.datetime) else math.inf)

        return sorted(self.patients, key=key)

    def as_json(self) -> dict[str, Any]:
        return {
            "command": "forecast",
            "as_of": _json_value(self.as_of),
            "replications": self.replications,
            "horizon_days": self.horizon_days,
            "scenario": {"name": self.scenario_name, "hash": self.scenario_hash},
            "state_hash": self.state_hash,
            "seed": self.seed,
            "patients": [p.as_json() for p in self.ranked()],
            "capacity": {
                "measure": "utilisation",
                "weeks": LOAD_WEEKS,
                "resources": {kind.value: [w.as_json() for w in weeks] for kind, weeks in self.capacity.items()},
            },
        }

    def to_json(self) -> str:
        """The forecast as the issue's JSON: ``{"command": "forecast", "as_of", "replications",
        "patients": [...], "capacity": {...}}`` (patients at risk first)."""
        return json.dumps(self.as_json(), indent=2, allow_nan=False)


def _json_value(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.isoformat(timespec="minutes")
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def band(values: Sequence[float], qs: tuple[float, float, float] = QUANTILES) -> tuple[float, float, float]:
    """The p10/p50/p90 of ``values`` (``inf`` allowed: a quantile among them is ``inf``), by the inverted
    empirical distribution (a value that happened, never an interpolation between a date and never)."""
    if not values:
        return (math.nan, math.nan, math.nan)
    xs = sorted(values)
    n = len(xs)
    out = []
    for q in qs:
        k = max(0, min(n - 1, math.ceil(q * n) - 1))
        out.append(xs[k])
    return (out[0], out[1], out[2])
