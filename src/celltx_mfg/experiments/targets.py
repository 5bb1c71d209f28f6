"""KPI paths an experiment names (precision targets, requirements, compared KPIs), checked before hours
of replications are spent, and the precision test that ends a sequential experiment."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import analysis
from ..config import Scenario
from ..simulate import simulate
from .errors import ExperimentError

# KPI groups whose members depend on the plant (resource kinds), not on the KPI definitions; the count
# groups (loss stages, failure reasons, severities) are closed: analysis.KPI_GROUP_KEYS.
_OPEN_GROUPS = ("utilisation",)


def flatten_kpis(kpis: Mapping[str, Any]) -> dict[str, float | None]:
    """Numeric KPI leaves by dotted path (``vein_to_vein_days.p90``); the summary extras are skipped."""
    return analysis.numeric_kpis(kpis)


def kpi_skeleton(scenario: Scenario) -> dict[str, Any]:
    """The KPI structure this scenario produces (from a two-day run), to check KPI paths named in
    requirements or precision targets before hours of replications are spent."""
    short = scenario.model_copy(update={"horizon_days": 2.0, "warmup_days": 0.0})
    records = simulate(short, replication=0)
    return analysis.kpis(records.frames(), records.horizon, records.warmup, records.costs or None)


def step_names(scenario: Scenario) -> list[str]:
    """Every product step name of the scenario (a failed step gives failure reason ``<step>_failure``)."""
    return list(dict.fromkeys(s.name for product in scenario.products.values() for s in product.steps))


def check_kpi_path(skeleton: Mapping[str, Any], path: str, scenario: Scenario | None = None) -> None:
    """Raise ExperimentError unless ``path`` names a numeric KPI. Members of utilisation are accepted
    whatever they are called (they appear only when a kind has capacity); a member of a count group
    (``lost_by_stage``, ``failed_by_reason``, ``deviations``) must be one that can occur
    (analysis.KPI_GROUP_KEYS; failure reasons of ``scenario``'s steps when it is given)."""
    parts = path.split(".")
    if len(parts) == 2 and parts[0] in _OPEN_GROUPS:
        return
    if len(parts) == 2 and parts[0] in analysis.COUNT_MAPS:
        steps = step_names(scenario) if scenario is not None else None
        if not analysis.group_member_allowed(parts[0], parts[1], steps):
            raise ExperimentError(analysis.unknown_member_message(parts[0], parts[1], steps))
        return
    try:
        value = analysis.get_path(skeleton, path)
    except ValueError as e:
        raise ExperimentError(str(e)) from None
    if isinstance(value, Mapping):
        raise ExperimentError(f"KPI path {path!r} is a group; pick one of: " + ", ".join(f"{path}.{k}" for k in value))


def check_precision(scenario: Scenario, precision: Mapping[str, float] | None) -> None:
    """Every precision target names a numeric KPI and a half-width > 0."""
    if not precision:
        return
    skeleton = kpi_skeleton(scenario)
    for path, target in precision.items():
        check_kpi_path(skeleton, path, scenario)
        if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise ExperimentError(f"precision target for {path!r} must be a half-width > 0, got {target!r}")


def half_widths(per_run: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> dict[str, float | None]:
    """95% t half-width of each KPI over the replications (None with fewer than two numbers): the
    same formula as :func:`analysis.summarise`, computed only for the KPIs a precision target names."""
    out: dict[str, float | None] = {}
    for path in paths:
        values = (analysis.get_path(k, path) for k in per_run)
        xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        out[path] = analysis.ci_half_width(xs)
    return out


def precision_met(per_run: Sequence[Mapping[str, Any]], precision: Mapping[str, float]) -> bool:
    """Every named half-width is known and at most its target."""
    hw = half_widths(per_run, list(precision))
    return all((w := hw[p]) is not None and w <= target for p, target in precision.items())
