"""The bottleneck design: the unchanged plant and, for every resource kind, the plant with one more unit
of it, all on common random numbers; the marginal values and the ranking are
:mod:`celltx_mfg.bottleneck`'s.

"One more unit" is the lever a planner would turn: one more suite, incubator, freezer or person; one
more manufacturing start a day; one more apheresis chair (or infusion slot) a day *at every site*, since
a chair at one site does not serve another site's patients. Replication r of every variant uses the
unchanged plant's seed for r, so each marginal value is a paired difference with the noise both share
cancelled.

:func:`rank_levers` is the interface a capacity search uses to order its levers: scenario, text,
replications and KPI in; the ranked kinds out, each with the lever overrides that add its unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import pandas as pd

from .. import analysis
from .. import bottleneck as bn
from ..config import Scenario, ScenarioError
from ..model.capacity import KindCapacity, effective_capacity
from ..records import RunRecords
from .designs import _run_groups
from .errors import ExperimentError
from .levers import apply_overrides
from .scheduling import Execution, ReplicationGroup, Session, make_group
from .targets import check_kpi_path, kpi_skeleton

# kind -> scenario path of the one number that counts its units (per-site kinds are handled below)
_PLANT_LEVERS = {
    "suite": "resources.suites",
    "incubator": "resources.incubators",
    "closed_device": "resources.closed_devices",
    "freezer": "resources.freezers",
    "operators": "resources.operators.count",
    "qc_analysts": "resources.qc_analysts.count",
    "qa_reviewers": "resources.qa_reviewers.count",
    "manufacturing_slot": "booking.starts_per_day",
}
_SITE_LEVERS = {"apheresis": "apheresis_per_day", "infusion": "infusion_slots_per_day"}


def _current(sc: Scenario, path: str) -> int:
    node: Any = sc
    for part in path.split("."):
        node = getattr(node, part)
    return int(node)


def one_more_unit(sc: Scenario, kind: str) -> tuple[str, dict[str, Any]]:
    """The lever text and the overrides that give the plant one more unit of ``kind``."""
    if kind in _SITE_LEVERS:
        key = _SITE_LEVERS[kind]
        return f"sites.*.{key} +1", {f"sites.{s.name}.{key}": getattr(s, key) + 1 for s in sc.sites}
    if kind in _PLANT_LEVERS:
        path = _PLANT_LEVERS[kind]
        return f"{path} +1", {path: _current(sc, path) + 1}
    raise ExperimentError(f"no lever adds a unit of {kind!r}; kinds: {', '.join([*_PLANT_LEVERS, *_SITE_LEVERS])}")


@dataclass
class BottleneckResult:
    """The ranking for one scenario and KPI, and the runs behind it."""

    scenario: str
    kpi: str
    direction: bn.Direction
    replications: int
    kpi_mean: float | None  # the unchanged plant's KPI, mean of replications
    kpi_ci95: float | None
    ranking: list[bn.KindEvidence]
    binding: str | None
    measures: pd.DataFrame  # the unchanged plant's resource measures (bottleneck.resource_measures)
    run_ids: list[Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "command": "bottleneck",
            "scenario": self.scenario,
            "kpi": self.kpi,
            "direction": self.direction.value,
            "replications": self.replications,
            "kpi_value": {"mean": self.kpi_mean, "ci95": self.kpi_ci95},
            "ranking": [e.as_json() for e in self.ranking],
            "binding": self.binding,
            "binding_rule": "the kind whose one more unit improves the KPI most, with a 95% paired interval "
                            "excluding zero; null when none does",
        }


def check_kpi(scenario: Scenario, kpi: str) -> None:
    """The KPI names one number of this scenario's KPIs, before anything is simulated."""
    check_kpi_path(kpi_skeleton(scenario), kpi, scenario)


def _frames(records: list[RunRecords]) -> dict[str, pd.DataFrame]:
    """The runs' record tables stacked, with a ``run_id`` column (replication number) as stored frames have."""
    per_run = [r.frames() for r in records]
    names = per_run[0].keys() if per_run else []
    return {n: pd.concat([f[n].assign(run_id=i) for i, f in enumerate(per_run)], ignore_index=True)  # type: ignore[attr-defined]
            for n in names}


def _variants(scenario: Scenario, text: str, capacity: dict[str, KindCapacity], replications: int,
              source: str, base_dir: Path | None) -> tuple[list[tuple[str, str, dict[str, Any], str]],
                                                            list[ReplicationGroup]]:
    """(kind, lever, overrides, note) per kind and the replication group of each valid +1 what-if."""
    variants, groups = [], []
    for kind in capacity:
        lever, overrides = one_more_unit(scenario, kind)
        try:
            sc, t = apply_overrides(text, overrides, name_suffix=f"{kind}+1", source=source, base_dir=base_dir)
        except ScenarioError as e:
            variants.append((kind, lever, overrides, "invalid: " + "; ".join(f"{p}: {m}" for p, m, _ in e.problems)))
            continue
        variants.append((kind, lever, overrides, ""))
        groups.append(make_group(sc, t, replications, f"bottleneck:{kind}+1", scenario.seed, None, replications))
    return variants, groups


def _kpi_values(group: ReplicationGroup, kpi: str) -> list[float | None]:
    out: list[float | None] = []
    for _, k in group.results:
        v = analysis.value_or_none(k, kpi)
        out.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return out


def _evidence(kind: str, lever: str, overrides: dict[str, Any], note: str, measures: pd.DataFrame,
              marginal: bn.MarginalValue | None) -> bn.KindEvidence:
    m = measures.set_index("kind").loc[kind]
    return bn.KindEvidence(
        kind=kind, lever=lever, overrides=overrides, units=int(m["units"]),
        nominal_unit_days=float(m["nominal_unit_days"]), effective_unit_days=float(m["effective_unit_days"]),
        utilisation=bn._finite(m["utilisation"]), effective_utilisation=bn._finite(m["effective_utilisation"]),
        queue_days=bn._finite(m["queue_days"]), mean_wait_days=bn._finite(m["mean_wait_days"]),
        holds=bn._finite(m["holds"]), rule=str(m["rule"]), marginal=marginal, note=note,
    )


def bottleneck(
    scenario: Scenario,
    text: str,
    replications: int = 10,
    kpi: str = bn.DEFAULT_KPI,
    source: str = "<scenario>",
    base_dir: Path | None = None,
    **execution: Unpack[Execution],
) -> BottleneckResult:
    """Rank the plant's resource kinds by the marginal value of one more unit on ``kpi`` (common random
    numbers, ``replications`` pairs per kind), with effective utilisation and queue-days of the
    unchanged plant as supporting evidence; name the binding kind (:mod:`celltx_mfg.bottleneck`).

    All variants run in one session (``jobs`` / backend as every design); with ``engine`` every run is
    stored, labelled ``bottleneck:base`` or ``bottleneck:<kind>+1``."""
    if replications < 2:
        raise ExperimentError(f"a marginal value needs at least 2 paired replications, got {replications}")
    check_kpi(scenario, kpi)
    capacity = effective_capacity(scenario)
    base = make_group(scenario, text, replications, "bottleneck:base", scenario.seed, None, replications,
                      keep_records=True)
    variants, groups = _variants(scenario, text, capacity, replications, source, base_dir)
    everything = [base, *groups]
    with Session.of(execution) as session:
        _run_groups(session, everything, lambda: None)
    measures = bn.resource_measures(_frames(base.records), capacity, scenario.horizon_days, scenario.warmup_days)
    direction = bn.kpi_direction(kpi)
    base_values = _kpi_values(base, kpi)
    by_label = {g.label: g for g in groups}
    evidence = []
    for kind, lever, overrides, note in variants:
        g = by_label.get(f"bottleneck:{kind}+1")
        mv = None if g is None else bn.marginal_value(base_values, _kpi_values(g, kpi), direction)
        evidence.append(_evidence(kind, lever, overrides, note, measures, mv))
    ranked = bn.rank(evidence)
    finite = [v for v in base_values if v is not None and math.isfinite(v)]
    return BottleneckResult(
        scenario=scenario.name, kpi=kpi, direction=direction, replications=replications,
        kpi_mean=sum(finite) / len(finite) if finite else None, kpi_ci95=analysis.ci_half_width(finite),
        ranking=ranked, binding=bn.binding_kind(ranked), measures=measures,
        run_ids=[rid for g in everything for rid, _ in g.results if rid is not None],
    )


def rank_levers(scenario: Scenario, text: str, replications: int = 10, kpi: str = bn.DEFAULT_KPI,
                source: str = "<scenario>", base_dir: Path | None = None,
                **execution: Unpack[Execution]) -> list[bn.KindEvidence]:
    """The kinds ranked by what one more unit does to ``kpi`` (best first), each with its ``lever``,
    ``overrides`` and ``marginal`` value: the order a capacity search tries its levers in."""
    return bottleneck(scenario, text, replications, kpi, source, base_dir, **execution).ranking
