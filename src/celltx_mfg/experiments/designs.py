"""Experiment designs: replications of one scenario, lever sweeps, paired comparisons, capacity plans.

One replication of a plant year says little: vein-to-vein time and losses swing with who was referred
when. Every question a planner asks ("is a 19th suite worth it?", "how many QC analysts keep p90 under
28 days?") is therefore answered with N replications per scenario, on **common random numbers**:
replication r of every scenario uses the same run seed, so the same patients arrive on the same days and
the same batches fail. Differences between scenarios are then driven by the lever, not by luck, and paired
intervals are far narrower than independent ones.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import pandas as pd

from .. import analysis
from ..config import Scenario
from .capacity import DEFAULT_BUDGET, CapacityPlan, LeverSpec, Number, capacity_plan
from .errors import ExperimentError, ExperimentInterrupted
from .levers import apply_overrides, coerce_value, resolve_lever
from .scheduling import Execution, ReplicationGroup, Session, make_group
from .targets import check_kpi_path, check_precision, flatten_kpis, kpi_skeleton

DEFAULT_MAX_REPLICATIONS = 200
Runs = list[tuple[Any, dict[str, Any]]]  # [(run id or None, KPIs)] in replication order


def _run_groups(session: Session, groups: Sequence[ReplicationGroup], partial: Callable[[], Any]) -> None:
    """Run the groups; Ctrl-C becomes :class:`ExperimentInterrupted` carrying ``partial()``, the result
    of what finished."""
    try:
        session.run(groups)
    except KeyboardInterrupt:
        planned = sum(g.planned() for g in groups)
        raise ExperimentInterrupted(partial(), session.finished, planned, session.stored_run_ids) from None


# ------------------------------------------------------------------------------------- replications
@dataclass
class ReplicationResult:
    """Replications 0..N-1 of one scenario: the stored run ids (None when not stored), each run's KPIs
    and the replication summary (means, ``ci95``, ``replications``)."""

    scenario: Scenario
    runs: Runs
    summary: dict[str, Any]
    precision_met: bool | None

    @property
    def run_ids(self) -> list[Any]:
        return [rid for rid, _ in self.runs]

    @property
    def per_run(self) -> list[dict[str, Any]]:
        return [k for _, k in self.runs]


def replicate_scenario(
    scenario: Scenario,
    text: str,
    replications: int,
    *,
    db: str | None = None,
    seed: int | None = None,
    label: str | None = None,
    precision: Mapping[str, float] | None = None,
    max_replications: int = DEFAULT_MAX_REPLICATIONS,
    first: int = 0,
    **execution: Unpack[Execution],
) -> ReplicationResult:
    """THE replication path: simulate, store every run whole, compute KPIs and their summary.

    Replication r uses ``replication_seed(seed or scenario.seed, r)`` whatever ``jobs`` or backend, and
    runs are stored in replication order by one writer, so results and run ids are the same for jobs=1,
    jobs=8 or a Ray cluster. ``engine`` (an open store) or ``db`` (a path or URL, opened here) says where
    to store; neither: nothing is stored. ``progress(done, planned)`` is called as runs finish (None:
    quiet). With ``precision`` ({KPI path: 95% half-width}), ``replications`` is the first batch and more
    are added until every named half-width is at most its target (or ``max_replications``). ``first``
    numbers the replications from there (a what-if adding replications to those already stored)."""
    if execution.get("engine") is None and db is not None:
        from ..store import open_store

        execution["engine"] = open_store(db)
    check_precision(scenario, precision)
    g = make_group(scenario, text, replications, label, seed, precision, max_replications, first)
    with Session.of(execution) as session:
        _run_groups(session, [g], lambda: g.results)
    return ReplicationResult(scenario, g.results, analysis.summarise([k for _, k in g.results]), g.met)


_GROUP_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
WHOLE_LABEL = "{label} of {n}"  # a run's label names the size of the group it belongs to
_WHOLE_RE = re.compile(r"^(?P<label>.*) of (?P<n>[0-9]+)$")


def planned_size(label: str | None) -> int | None:
    """The group size a run's label records (``"what-if of 8"`` -> 8), None when it records none."""
    m = _WHOLE_RE.match(label or "")
    return int(m["n"]) if m else None


def _group_lock(engine: Any, content_hash: str) -> threading.Lock:
    key = (str(getattr(engine, "url", id(engine))), content_hash)
    with _LOCKS_GUARD:
        return _GROUP_LOCKS.setdefault(key, threading.Lock())


def _missing_ranges(stored: Sequence[int], n: int) -> list[tuple[int, int]]:
    """Replications 0..n-1 not stored yet, as (first, count) runs of consecutive numbers."""
    have = set(stored)
    out: list[tuple[int, int]] = []
    for r in range(n):
        if r in have:
            continue
        if out and out[-1][0] + out[-1][1] == r:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((r, 1))
    return out


def fill_replications(
    scenario: Scenario,
    text: str,
    replications: int,
    *,
    label: str,
    **execution: Unpack[Execution],
) -> list[int]:
    """Make replications 0..N-1 of one scenario text stored, each exactly once; returns the replications
    simulated now.

    Idempotent: what is already stored is read from the store just before running (under a lock per
    database and scenario text, so two requests at once, such as a double-click, cannot both store
    replication r), and only the missing replications run, through :func:`replicate_scenario`. Every run
    is labelled ``"<label> of N"``: a group with fewer than N distinct replications stored was
    interrupted, and readers (``planned_size``) can say so instead of showing it as complete."""
    from ..config import scenario_hash
    from ..store import stored_replications

    engine = execution.pop("engine", None)
    if engine is None:
        raise ExperimentError("fill_replications stores runs: pass engine= (an open store)")
    content = scenario_hash(text)
    with _group_lock(engine, content):
        todo = _missing_ranges(stored_replications(engine, content), replications)
        whole = WHOLE_LABEL.format(label=label, n=replications)
        done: list[int] = []
        for first, count in todo:
            replicate_scenario(scenario, text, count, label=whole, first=first, **{**execution, "engine": engine})
            done.extend(range(first, first + count))
        return done


def run_replications(
    scenario: Scenario,
    text: str,
    replications: int,
    label: str | None = None,
    precision: Mapping[str, float] | None = None,
    max_replications: int = DEFAULT_MAX_REPLICATIONS,
    seed: int | None = None,
    **execution: Unpack[Execution],
) -> Runs:
    """Replications 0..N-1 of one scenario -> [(run_id or None, kpis)] in replication order: the
    :func:`replicate_scenario` runs, for callers that want just the list."""
    return replicate_scenario(scenario, text, replications, seed=seed, label=label, precision=precision,
                              max_replications=max_replications, **execution).runs


# -------------------------------------------------------------------------------------------- sweep
@dataclass(frozen=True)
class Cell:
    """One scenario of a sweep: a grid point (``levers`` = the values set) or a what-if file."""

    name: str
    scenario: Scenario
    text: str
    levers: dict[str, Any]


def grid(
    scenario: Scenario,
    text: str,
    vary: Mapping[str, Sequence[Any]],
    source: str = "<scenario>",
    base_dir: Path | None = None,
) -> list[Cell]:
    """Every combination of the lever values (the first lever varies slowest)."""
    if not vary:
        return [Cell(scenario.name, scenario, text, {})]
    for lever, values in vary.items():
        resolve_lever(lever)
        if not values:
            raise ExperimentError(f"lever {lever!r} has no values to vary over")
    cells = []
    for combo in itertools.product(*[[coerce_value(v) for v in vs] for vs in vary.values()]):
        overrides = dict(zip(vary, combo, strict=True))
        sc, t = apply_overrides(text, overrides, source=source, base_dir=base_dir)
        cells.append(Cell(sc.name, sc, t, overrides))
    return cells


@dataclass
class SweepResult:
    """Per cell: the runs, the replication summary (means, ``ci95``) and whether precision was met."""

    cells: list[Cell]
    runs: list[Runs]
    summaries: list[dict[str, Any]]
    precision_met: list[bool | None]

    @classmethod
    def of(cls, cells: Sequence[Cell], groups: Sequence[ReplicationGroup]) -> SweepResult:
        return cls(
            cells=list(cells),
            runs=[g.results for g in groups],
            summaries=[analysis.summarise([k for _, k in g.results]) for g in groups],
            precision_met=[g.met for g in groups],
        )

    def _lever_names(self) -> list[str]:
        names: list[str] = []
        for c in self.cells:
            names.extend(k for k in c.levers if k not in names)
        return names

    @property
    def table(self) -> pd.DataFrame:
        """One row per cell: lever values, replications, then each KPI's mean and ``<kpi>.ci95``."""
        rows = []
        lever_names = self._lever_names()
        for cell, summary, met in zip(self.cells, self.summaries, self.precision_met, strict=True):
            row: dict[str, Any] = {"cell": cell.name}
            row.update({k: cell.levers.get(k) for k in lever_names})
            row["replications"] = summary.get("replications", 0)
            row["precision_met"] = met
            ci = flatten_kpis(summary.get("ci95", {}))
            for path, mean in flatten_kpis(summary).items():
                row[path] = mean
                row[f"{path}.ci95"] = ci.get(path)
            rows.append(row)
        return pd.DataFrame(rows)


def sweep(
    cells: Sequence[Cell],
    replications: int = 30,
    precision: Mapping[str, float] | None = None,
    max_replications: int = DEFAULT_MAX_REPLICATIONS,
    **execution: Unpack[Execution],
) -> SweepResult:
    """N replications of every cell on common random numbers (replication r shares its seed in every
    cell, so cell differences are lever effects). Runs are stored with label = cell name."""
    if not cells:
        raise ExperimentError("a sweep needs at least one cell")
    if precision:
        check_precision(cells[0].scenario, precision)
    groups = [make_group(c.scenario, c.text, replications, c.name, None, precision, max_replications) for c in cells]
    with Session.of(execution) as session:
        _run_groups(session, groups, lambda: SweepResult.of(cells, groups))
    return SweepResult.of(cells, groups)


# ------------------------------------------------------------------------------------------ compare
@dataclass
class CompareResult:
    """Paired differences (scenario - reference) per KPI, replication by replication."""

    names: list[str]
    runs: list[Runs]
    summaries: list[dict[str, Any]]
    table: pd.DataFrame
    seed: int


paired_difference = analysis.paired_difference


def _values(flat: Sequence[Mapping[str, float | None]], path: str) -> list[float | None]:
    """One KPI over the replications; a count-group member missing from a run is 0 there."""
    missing = 0.0 if path.split(".")[0] in analysis.COUNT_MAPS else None
    return [f.get(path, missing) for f in flat]


def _mean(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def _difference_rows(names: Sequence[str], groups: Sequence[ReplicationGroup],
                     kpi_paths: Sequence[str] | None) -> list[dict[str, Any]]:
    return paired_rows(names, [[k for _, k in g.results] for g in groups], kpi_paths)


def paired_rows(names: Sequence[str], per_run: Sequence[Sequence[Mapping[str, Any]]],
                kpi_paths: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every scenario after the first against the first, KPI by KPI: means and the paired difference of
    replication r with replication r (``per_run[i][r]`` = scenario i's KPIs of replication r; the
    caller lines them up). The one computation behind ``celltx compare`` and the dashboard's."""
    flat = [[flatten_kpis(k) for k in runs] for runs in per_run]
    rows = []
    for j in range(1, len(per_run)):
        paths = list(kpi_paths) if kpi_paths else list(dict.fromkeys([*flat[0][0], *flat[j][0]]))
        for path in paths:
            a, b = _values(flat[0], path), _values(flat[j], path)
            rows.append({"reference": names[0], "scenario": names[j], "kpi": path, "mean_reference": _mean(a),
                         "mean_scenario": _mean(b), **paired_difference(a, b)})
    return rows


def compare(
    scenarios: Sequence[tuple[Scenario, str]],
    replications: int = 30,
    kpi_paths: Sequence[str] | None = None,
    **execution: Unpack[Execution],
) -> CompareResult:
    """Every scenario after the first against the first, on common random numbers: all of them run
    replication r with the first scenario's seed for r, so the pairs differ only by the change made."""
    if len(scenarios) < 2:
        raise ExperimentError("compare needs at least two scenarios: a reference and a what-if")
    names = [sc.name for sc, _ in scenarios]
    if len(set(names)) != len(names):
        raise ExperimentError(f"scenario names must differ to be compared: {names}")
    base_seed = scenarios[0][0].seed
    if kpi_paths:
        skeleton = kpi_skeleton(scenarios[0][0])
        for p in kpi_paths:
            check_kpi_path(skeleton, p)  # what-ifs may name other steps: any '<step>_failure' is accepted
    groups = [make_group(sc, text, replications, sc.name, base_seed, None, replications) for sc, text in scenarios]
    with Session.of(execution) as session:
        _run_groups(session, groups, lambda: [g.results for g in groups])
    summaries = [analysis.summarise([k for _, k in g.results]) for g in groups]
    table = pd.DataFrame(_difference_rows(names, groups, kpi_paths))
    return CompareResult(names, [g.results for g in groups], summaries, table, base_seed)


# --------------------------------------------------------------------------------------------- plan
@dataclass
class PlanResult:
    """One lever's capacity plan (:func:`plan`): the smallest value meeting every requirement that the
    search found (None if none it tried did) and the evidence, one row per value tried (``value``,
    ``status``, requirement means); ``search`` is the whole :class:`CapacityPlan`."""

    lever: str
    path: str
    requirements: list[str]
    value: Number | None
    evidence: pd.DataFrame
    summaries: dict[Number, dict[str, Any]]
    lo: int
    hi: int
    search: CapacityPlan


def plan(
    scenario: Scenario,
    text: str,
    lever: str,
    requirements: Sequence[str],
    lo: int = 1,
    hi: int = 40,
    replications: int = 10,
    source: str = "<scenario>",
    base_dir: Path | None = None,
    budget: int = DEFAULT_BUDGET,
    **execution: Unpack[Execution],
) -> PlanResult:
    """Smallest integer value of one free ``lever`` in [lo, hi] whose replication means meet every
    requirement: :func:`capacity_plan` with that one lever. A value is accepted only on its own
    replications (no monotonicity assumed), and the value one step below the answer has been tried and
    failed. A value the scenario rules reject (e.g. fewer operators than an open step needs) counts as
    failing, with the reason in the evidence."""
    if lo > hi:
        raise ExperimentError(f"--min ({lo}) must be <= --max ({hi})")
    found = capacity_plan(scenario, text, [LeverSpec(lever, lo=lo, hi=hi)], requirements, replications, budget,
                          source, base_dir, **execution)
    rows = found.evidence.rename(columns={lever: "value"}).drop(columns=["candidate", "phase", "cost"])
    rows = rows.sort_values("value", kind="stable").reset_index(drop=True)
    value = found.chosen.values[lever] if found.chosen is not None else None
    summaries = {c.values[lever]: c.summary for c in found.candidates if c.summary}
    return PlanResult(lever, found.levers[0].path, list(requirements), value, rows, summaries, lo, hi, found)


# --------------------------------------------------------------------------------------------- JSON
def jsonable(x: Any) -> Any:
    """Plain JSON values (NaN -> null, numpy scalars -> numbers) for ``--json`` output."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, pd.DataFrame):
        return [jsonable(r) for r in x.to_dict(orient="records")]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if x is None or isinstance(x, (int, str)):
        return x
    return str(x)
