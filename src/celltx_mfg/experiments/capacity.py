"""Capacity plans over several levers with costs: the cheapest combination meeting every requirement.

"What should I add?" has no single-lever answer when the constraint that binds moves as capacity is
added: at +50% demand more suites help only once apheresis chairs can feed them. A plan therefore turns
several levers at once, each with a cost per unit added, and looks for the cheapest combination whose
replication means meet every requirement.

Nothing here assumes that more capacity never hurts (vein-to-vein p90 at +50% demand is worse at 35 suites
than at 27): a candidate is accepted only on its own replications, and every candidate runs the same
replication seeds as the others (common random numbers), so two candidates differ by their levers and
not by luck. The search, bounded by an evaluation budget:

1. **ascent**, guided by marginal value: at the current candidate, one step of each lever is tried
   (:func:`step_marginal_values`, the seam a ranking from elsewhere can replace: any :data:`Guide`);
   the lever improving the violated requirements most per unit cost is followed with doubling strides
   while the shortfall keeps falling. When no single step helps, each lever alone at its bound and all
   of them together are tried before giving up;
2. **refinement**, once a candidate meets: each lever is stepped back down (largest stride first), and
   a step of each lever is traded for cheaper steps of another that helped somewhere, while a cheaper
   candidate still meets.

The outcome says which way it ended (:class:`PlanOutcome`); every candidate tried is in the evidence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, Unpack

import pandas as pd

from .. import analysis
from ..config import Scenario, ScenarioError
from .errors import ExperimentError, ExperimentInterrupted
from .levers import apply_overrides, coerce_value, get_values, resolve_lever
from .scheduling import Execution, Session, make_group
from .targets import check_kpi_path, kpi_skeleton

Number = int | float
DEFAULT_BUDGET = 40
LEVER_OPTIONS = ("cost", "min", "max", "step")
LEVER_FORM = ("LEVER[:cost=PER_UNIT][:min=V][:max=V][:step=V] (e.g. suites:cost=400000:max=40 or "
              "sites.*.apheresis_per_day:cost=150000)")


class PlanStatus(StrEnum):
    """What one candidate tried in a capacity plan came to."""

    MEETS = "meets"
    FAILS = "fails"
    INVALID = "invalid"  # the scenario rules reject the values


class PlanOutcome(StrEnum):
    """How a capacity search ended."""

    MET = "met"  # a candidate met every requirement on its own replications; the cheapest is chosen
    NOT_MET = "not_met"  # none did, and the levers reached their bounds or no step improved anything
    BUDGET_EXHAUSTED = "budget_exhausted"  # the evaluation budget ran out before any candidate met
    INTERRUPTED = "interrupted"  # Ctrl-C: the partial result of ExperimentInterrupted (never printed)


class Phase(StrEnum):
    """Why a candidate was tried (the evidence says how the search got there)."""

    START = "start"
    PROBE = "probe"  # one step of one lever, to measure its marginal value
    LINE = "line"  # following the chosen lever with doubling strides
    STALL = "stall"  # no single step helped: a lever (or all) at its bound
    TRIM = "trim"  # a lever stepped back down from a plan that meets
    SWAP = "swap"  # a unit of one lever traded for cheaper units of another


# ------------------------------------------------------------------------------------------- levers
@dataclass(frozen=True)
class LeverSpec:
    """A lever as asked for on the command line: ``suites:cost=400000:max=40``. No cost: a free lever."""

    name: str
    cost: float = 0.0
    lo: Number | None = None
    hi: Number | None = None
    step: Number = 1

    @classmethod
    def parse(cls, text: str) -> LeverSpec:
        name, *options = (part.strip() for part in text.split(":"))
        if not name:
            raise ExperimentError(f"lever {text!r}: no lever name; expected {LEVER_FORM}")
        found: dict[str, Number] = {}
        for option in options:
            key, sep, raw = option.partition("=")
            value = coerce_value(raw) if sep else None
            if key not in LEVER_OPTIONS or key in found:
                why = f"{key!r} is given twice" if key in found else f"unknown option {key!r}"
                raise ExperimentError(f"lever {text!r}: {why}; options: {', '.join(LEVER_OPTIONS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ExperimentError(f"lever {text!r}: {key} needs a number, got {raw.strip()!r}")
            found[key] = value
        spec = cls(name, float(found.get("cost", 0.0)), found.get("min"), found.get("max"), found.get("step", 1))
        if spec.cost < 0 or spec.step <= 0:
            raise ExperimentError(f"lever {text!r}: cost must be >= 0 and step > 0")
        return spec


@dataclass(frozen=True)
class Lever:
    """A lever resolved on the scenario: the values it may take (``lo + k * step`` up to ``hi``), what it
    is today (one value per item a ``*`` path names) and what each unit added costs (one removed below
    today's value saves it)."""

    name: str
    path: str
    base: tuple[Number, ...]
    lo: Number
    hi: Number
    step: Number
    unit_cost: float

    @property
    def n_steps(self) -> int:
        return int(math.floor((self.hi - self.lo) / self.step + 1e-9))

    def at(self, k: int) -> Number:
        value = self.lo + k * self.step
        return value if isinstance(value, int) else round(value, 10)

    def cost(self, value: Number) -> float:
        """Cost of setting every item the path names to ``value``, against today's plant."""
        return self.unit_cost * sum(value - b for b in self.base)

    @property
    def step_cost(self) -> float:
        return self.unit_cost * self.step * len(self.base)

    def describe(self) -> str:
        price = f"{self.unit_cost:,.0f} per unit" if self.unit_cost else "free"
        items = f" x {len(self.base)} items" if len(self.base) > 1 else ""
        return f"{self.name} ({self.path}{items}): {self.lo}..{self.hi} step {self.step}, {price}"


def _numbers(values: list[Any], name: str) -> tuple[Number, ...]:
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ExperimentError(f"lever {name!r}: a plan needs a number there, the scenario has {values!r}")
    return tuple(values)


def resolve_levers(scenario: Scenario, specs: Sequence[LeverSpec]) -> list[Lever]:
    """Each spec on this scenario: path, today's values, range (default: from today's value up to twice
    it, at least one step) and step, checked before anything is simulated."""
    if not specs:
        raise ExperimentError("plan needs at least one --lever")
    data = scenario.model_dump(by_alias=True, mode="json")
    levers: list[Lever] = []
    for spec in specs:
        path = resolve_lever(spec.name)
        if any(lv.path == path for lv in levers):
            raise ExperimentError(f"lever {spec.name!r} ({path}) is given twice")
        base = _numbers(get_values(data, path), spec.name)
        if spec.lo is None and len(set(base)) > 1:
            raise ExperimentError(f"lever {spec.name!r}: the items it names differ today {list(base)}; give "
                                  f":min= to set them all from one value")
        lo = base[0] if spec.lo is None else spec.lo
        hi = spec.hi if spec.hi is not None else max(lo + spec.step, 2 * max(base))
        if lo > hi:
            raise ExperimentError(f"lever {spec.name!r}: min ({lo}) must be <= max ({hi})")
        levers.append(Lever(spec.name, path, base, lo, hi, spec.step, spec.cost))
    return levers


# --------------------------------------------------------------------------------------- candidates
Position = tuple[int, ...]  # steps above each lever's lower bound


@dataclass(eq=False)  # a candidate is itself: compared by identity, not field by field
class Candidate:
    """One combination of lever values, run on the plan's replication seeds, and what it came to.
    ``shortfall`` is the normalised distance to meeting every requirement (0 when it meets; infinite
    when the scenario rules reject it): the sum over unmet requirements of |mean - bound| / |bound|."""

    id: int
    position: Position
    values: dict[str, Number]
    cost: float
    phase: Phase
    status: PlanStatus
    shortfall: float
    checks: list[analysis.RequirementResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    per_run: list[dict[str, Any]] = field(default_factory=list)
    scenario: Scenario | None = None  # the what-if run (None: the rules reject the values)
    text: str = ""
    note: str = ""

    @property
    def meets(self) -> bool:
        return self.status is PlanStatus.MEETS

    @property
    def steps(self) -> int:
        return sum(self.position)

    def rank(self) -> tuple[float, int, Position]:
        """Cheapest first; between equal costs (free levers) the fewest steps above the lower bounds."""
        return round(self.cost, 6), self.steps, self.position


def _unmet(c: Candidate) -> set[str]:
    return {chk.requirement for chk in c.checks if not chk.ok}


def _scale(threshold: float) -> float:
    return abs(threshold) if threshold else 1.0


def shortfall(checks: Sequence[analysis.RequirementResult]) -> float:
    """Sum over unmet requirements of how far the mean is from its bound, relative to the bound (a KPI
    that measured nothing counts 1); strictly positive whenever a requirement is unmet."""
    total = 0.0
    for c in checks:
        if not c.ok:
            total += 1.0 if c.actual is None else max(abs(c.actual - c.threshold) / _scale(c.threshold), 1e-9)
    return total


# ---------------------------------------------------------------------------------- marginal value
class MarginalValue(NamedTuple):
    """What one more step of a lever is worth at a candidate: the improvement of the requirements the
    candidate violates (normalised like :func:`shortfall`; > 0 is better), its 95% paired half-width
    on common random numbers, and the step's cost."""

    lever: str
    improvement: float | None
    ci95: float | None
    step_cost: float
    probe: int | None = None  # the candidate one step up, when the guide ran one

    @property
    def per_cost(self) -> float | None:
        """Improvement per unit of cost (None for a free lever or an unknown improvement)."""
        if self.improvement is None or not self.step_cost:
            return None
        return self.improvement / self.step_cost


# The seam for guidance: given a candidate and the search (whose ``probe`` runs lever values on the
# plan's common random numbers), the marginal value of each lever. The default is
# :func:`step_marginal_values`; a resource-kind ranking from elsewhere can be passed as ``guide=``.
Guide = Callable[[Candidate, "CapacitySearch"], Sequence[MarginalValue]]

_DIRECTION = {"<=": 1, "<": 1, ">=": -1, ">": -1}  # +1: lower is better


def _score(run: Mapping[str, Any], checks: Sequence[analysis.RequirementResult]) -> float | None:
    """One replication's weighted sum of the KPIs behind ``checks``, oriented so lower is better."""
    total = 0.0
    for c in checks:
        v = analysis.value_or_none(run, c.path)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        total += _DIRECTION[c.op] * float(v) / _scale(c.threshold)
    return total


def paired_improvement(at: Candidate, other: Candidate) -> tuple[float | None, float | None]:
    """(mean, 95% half-width) over paired replications of how much ``other`` improves the requirements
    ``at`` violates; without comparable replications, the fall in shortfall and no interval."""
    violated = [c for c in at.checks if not c.ok and c.op in _DIRECTION]
    if violated and at.per_run and other.per_run:
        a = [_score(r, violated) for r in at.per_run]
        b = [_score(r, violated) for r in other.per_run]
        d = analysis.paired_difference(b, a)  # mean of a - b: the drop in the oriented score
        if d["difference"] is not None:
            return d["difference"], d["half_width"]
    if math.isinf(other.shortfall):
        return None, None
    return at.shortfall - other.shortfall, None


def step_marginal_values(candidate: Candidate, search: CapacitySearch) -> list[MarginalValue]:
    """The default guide: one step up of every lever that can still rise, run together on common random
    numbers, each compared with ``candidate`` replication by replication."""
    movable = [i for i, lv in enumerate(search.levers) if candidate.position[i] < lv.n_steps]
    probes = search.probe([search.moved(candidate.position, i, 1) for i in movable], Phase.PROBE)
    out = []
    for i, probe in zip(movable, probes, strict=True):
        mean, hw = paired_improvement(candidate, probe)
        out.append(MarginalValue(search.levers[i].name, mean, hw, search.levers[i].step_cost, probe.id))
    return out


def ranked(values: Sequence[MarginalValue]) -> list[MarginalValue]:
    """Levers that improve, best first: free ones by improvement, then by improvement per unit cost."""
    def key(v: MarginalValue) -> tuple[bool, float]:
        worth = v.per_cost if v.step_cost else v.improvement
        return bool(v.step_cost), -(worth or 0.0)

    return sorted((v for v in values if v.improvement is not None and v.improvement > 0), key=key)


# ------------------------------------------------------------------------------------------- search
class _BudgetSpent(Exception):
    """The evaluation budget is used up."""


@dataclass
class _Base:
    scenario: Scenario
    text: str
    source: str
    base_dir: Path | None


class CapacitySearch:
    """The state of one capacity search on one session: candidates tried (each once), the cheapest that
    meets so far, and the guidance taken."""

    def __init__(self, base: _Base, levers: Sequence[Lever], requirements: Sequence[str], replications: int,
                 budget: int, session: Session, guide: Guide) -> None:
        self.base, self.levers, self.requirements = base, list(levers), list(requirements)
        self.replications, self.budget, self.session, self.guide = replications, budget, session, guide
        self.tried: dict[Position, Candidate] = {}
        self.simulated = 0
        self.best: Candidate | None = None
        self.guidance: list[tuple[int, list[MarginalValue]]] = []
        self.reason = ""

    # ------------------------------------------------------------------------------ evaluation
    def moved(self, position: Position, i: int, delta: int) -> Position:
        """``position`` with lever i moved by ``delta`` steps, kept inside its bounds."""
        k = min(max(position[i] + delta, 0), self.levers[i].n_steps)
        return (*position[:i], k, *position[i + 1:])

    def values(self, position: Position) -> dict[str, Number]:
        return {lv.name: lv.at(k) for lv, k in zip(self.levers, position, strict=True)}

    def probe(self, positions: Sequence[Position], phase: Phase) -> list[Candidate]:
        """The candidates at these positions: tried ones from memory, new ones simulated together (one
        session pass). Raises :class:`_BudgetSpent`, after running what the budget allows, when it ends."""
        new = list(dict.fromkeys(p for p in positions if p not in self.tried))
        prepared = [self._prepare(p, phase) for p in new]
        runnable = [c for c in prepared if c.scenario is not None]
        allowed = runnable[: max(0, self.budget - self.simulated)]
        self._simulate(allowed)
        for c in prepared:
            if c.scenario is None or c in allowed:
                self._record(c)
        if len(allowed) < len(runnable):
            raise _BudgetSpent
        return [self.tried[p] for p in positions]

    def _prepare(self, position: Position, phase: Phase) -> Candidate:
        values = self.values(position)
        cost = sum(lv.cost(values[lv.name]) for lv in self.levers)
        c = Candidate(0, position, values, cost, phase, PlanStatus.INVALID, math.inf)
        overrides = {lv.path: values[lv.name] for lv in self.levers}
        shown = ",".join(f"{k}={v}" for k, v in values.items())
        try:
            c.scenario, c.text = apply_overrides(self.base.text, overrides, name_suffix=shown,
                                                 source=self.base.source, base_dir=self.base.base_dir)
        except ScenarioError as e:
            c.note = "; ".join(f"{p}: {m}" for p, m, _ in e.problems)
        return c

    def _simulate(self, candidates: Sequence[Candidate]) -> None:
        groups = [make_group(c.scenario, c.text, self.replications, c.scenario.name, self.base.scenario.seed,
                             None, self.replications) for c in candidates if c.scenario is not None]
        if groups:
            self.session.run(groups)
        for c, g in zip(candidates, groups, strict=True):
            self.simulated += 1
            c.per_run = [k for _, k in g.results]
            c.summary = analysis.summarise(c.per_run)
            try:
                c.checks = analysis.check_requirements(c.summary, self.requirements)
            except ValueError as e:  # a member of an open group this plant never produced
                raise ExperimentError(str(e)) from None
            c.status = PlanStatus.MEETS if all(x.ok for x in c.checks) else PlanStatus.FAILS
            c.shortfall = shortfall(c.checks)

    def _record(self, c: Candidate) -> None:
        c.id = len(self.tried) + 1
        self.tried[c.position] = c
        if c.meets and (self.best is None or c.rank() < self.best.rank()):
            self.best = c

    # ---------------------------------------------------------------------------------- ascent
    def ascend(self) -> None:
        """From every lever at its lower bound, follow the best marginal value until a candidate meets."""
        x = self.probe([tuple(0 for _ in self.levers)], Phase.START)[0]
        while self.best is None:
            if all(k >= lv.n_steps for k, lv in zip(x.position, self.levers, strict=True)):
                self.reason = f"every lever is at its bound (#{x.id}) and no candidate tried meets"
                return
            values = list(self.guide(x, self))
            self.guidance.append((x.id, values))
            if self.best is not None:
                return
            nxt = self._follow(x, values) or self._unstall(x)
            if nxt is None:
                self.reason = (f"no lever, one step or up to its bound, alone or all together, improves the unmet "
                               f"requirements beyond #{x.id}")
                return
            x = nxt

    def _follow(self, x: Candidate, values: Sequence[MarginalValue]) -> Candidate | None:
        """Walk the best-ranked lever whose first step lowers the shortfall; None if none does."""
        names = [lv.name for lv in self.levers]
        for mv in ranked(values):
            if mv.lever not in names:
                raise ExperimentError(f"the guide named lever {mv.lever!r}; the plan's levers are {', '.join(names)}")
            y = self._line(x, names.index(mv.lever))
            if y is not None:
                return y
        return None

    def _line(self, x: Candidate, i: int) -> Candidate | None:
        """Strides 1, 2, 4, ... along lever i while the shortfall falls without a requirement newly
        unmet; a stride that fails that test is halved and tried again from the last good candidate (so
        a narrow band that meets, between too little and too much, is not jumped over). Returns the last
        good candidate (or one that meets); None when the first step was not good."""
        here, stride = x, 1
        while here.position[i] < self.levers[i].n_steps:
            nxt = self.probe([self.moved(here.position, i, stride)], Phase.LINE)[0]
            if nxt.meets:
                return nxt
            if nxt.shortfall < here.shortfall and (math.isinf(here.shortfall) or _unmet(nxt) <= _unmet(here)):
                here, stride = nxt, stride * 2
            elif stride > 1:
                stride //= 2
            else:
                break
        return None if here is x else here

    def _unstall(self, x: Candidate) -> Candidate | None:
        """No single step helps: each lever alone at its bound, and all at theirs; the one lowering the
        shortfall most per unit cost (a free one first), None when none lowers it."""
        tops = [self.moved(x.position, i, lv.n_steps) for i, lv in enumerate(self.levers) if x.position[i] < lv.n_steps]
        if len(tops) > 1:
            tops.append(tuple(lv.n_steps for lv in self.levers))
        better = [c for c in self.probe(tops, Phase.STALL) if c.shortfall < x.shortfall]
        if not better:
            return None
        if self.best is not None:
            return self.best
        return max(better, key=lambda c: (x.shortfall - c.shortfall) / max(c.cost - x.cost, 1e-9))

    # ------------------------------------------------------------------------------ refinement
    def refine(self) -> None:
        """From the cheapest plan that meets: trim it, then trade units while a trade finds a cheaper one
        (and trim that one step at a time)."""
        if self.best is None:
            return
        self._trim(long_strides=True)
        while True:
            before = self.best
            self._swap()
            if self.best is before:
                return
            self._trim(long_strides=False)

    def _trim(self, long_strides: bool) -> None:
        """Each lever (dearest step first) stepped back down, halving the stride when a step fails; long
        strides first after an ascent that may have overshot."""
        order = sorted(range(len(self.levers)), key=lambda i: -self.levers[i].step_cost)
        for i in order:
            assert self.best is not None
            stride = 1 << max(0, self.best.position[i].bit_length() - 1) if long_strides else 1
            while stride >= 1:
                best = self.best
                assert best is not None
                if best.position[i] - stride < 0:
                    stride //= 2
                    continue
                self.probe([self.moved(best.position, i, -stride)], Phase.TRIM)
                if self.best is best:
                    stride //= 2

    def _helpful(self) -> set[str]:
        """Levers whose next step improved something at least once in the guidance taken."""
        return {mv.lever for _, values in self.guidance for mv in values if (mv.improvement or 0) > 0}

    def _swaps(self, best: Candidate) -> list[Position]:
        """One step less of a lever for one more step (or as many as stay cheaper) of another, cheapest
        first; only into levers that helped somewhere (the budget is not spent on a lever that never
        moved the requirements)."""
        out = []
        helpful = self._helpful()
        for a, b in itertools.permutations(range(len(self.levers)), 2):
            room = self.levers[b].n_steps - best.position[b]
            if best.position[a] == 0 or room == 0 or self.levers[b].name not in helpful:
                continue
            down = self.moved(best.position, a, -1)
            for k in sorted({1, room}):
                pos = self.moved(down, b, k)
                if self._cost(pos) < best.cost - 1e-6:
                    out.append(pos)
        return sorted(dict.fromkeys(out), key=self._cost)

    def _swap(self) -> None:
        best = self.best
        assert best is not None
        for pos in self._swaps(best):
            self.probe([pos], Phase.SWAP)
            if self.best is not best:
                return

    def _cost(self, position: Position) -> float:
        return sum(lv.cost(lv.at(k)) for lv, k in zip(self.levers, position, strict=True))


# ------------------------------------------------------------------------------------------- result
@dataclass
class CapacityPlan:
    """The cheapest candidate meeting every requirement (None if none did), how the search ended, and
    the evidence: every candidate tried, in order, with its lever values, cost and requirement means."""

    scenario: str
    levers: list[Lever]
    requirements: list[str]
    replications: int
    budget: int
    outcome: PlanOutcome
    reason: str
    chosen: Candidate | None
    candidates: list[Candidate]
    guidance: list[tuple[int, list[MarginalValue]]]
    search_complete: bool
    seed: int

    @property
    def met(self) -> bool:
        return self.outcome is PlanOutcome.MET

    @property
    def evaluations(self) -> int:
        """Candidates simulated (those the scenario rules reject cost nothing)."""
        return sum(1 for c in self.candidates if c.status is not PlanStatus.INVALID)

    @property
    def single_lever_best(self) -> Candidate | None:
        """The cheapest candidate that met with only one lever off its lower bound (what turning one
        lever alone would have bought), for comparison with the plan chosen."""
        single = [c for c in self.candidates if c.meets and sum(1 for k in c.position if k) <= 1]
        return min(single, key=Candidate.rank, default=None)

    @property
    def evidence(self) -> pd.DataFrame:
        """One row per candidate: id, phase, lever values, cost, status, replications, then per
        requirement R: "R" (mean), "R ci95" (half-width) and "R ok"; and a note."""
        rows = []
        for c in self.candidates:
            row: dict[str, Any] = {"candidate": c.id, "phase": str(c.phase), **c.values, "cost": c.cost,
                                   "status": str(c.status), "replications": len(c.per_run)}
            for chk in c.checks:
                row[chk.requirement] = chk.actual
                row[f"{chk.requirement} ci95"] = analysis.value_or_none(c.summary.get("ci95", {}), chk.path)
                row[f"{chk.requirement} ok"] = chk.ok
            row["note"] = c.note
            rows.append(row)
        return pd.DataFrame(rows)


def check_requirements_paths(scenario: Scenario, requirements: Sequence[str]) -> None:
    """Every requirement parses and names a numeric KPI of this scenario, before anything runs."""
    if not requirements:
        raise ExperimentError("plan needs at least one requirement, e.g. 'vein_to_vein_days.p90<=28'")
    skeleton = kpi_skeleton(scenario)
    for text in requirements:
        try:
            req = analysis.parse_requirement(text)
        except analysis.RequirementSyntaxError as e:
            raise ExperimentError(str(e)) from None
        check_kpi_path(skeleton, req.path, scenario)


def _outcome(search: CapacitySearch, spent: bool, interrupted: bool) -> tuple[PlanOutcome, str]:
    if interrupted:
        return PlanOutcome.INTERRUPTED, f"interrupted after {search.simulated} candidate(s)"
    if search.best is not None:
        why = "the evaluation budget ended the search for cheaper combinations" if spent else (
            "no cheaper candidate tried (each lever one step down, steps traded between levers) meets")
        return PlanOutcome.MET, why
    if spent:
        return PlanOutcome.BUDGET_EXHAUSTED, f"the evaluation budget ({search.budget}) ran out before any candidate met"
    return PlanOutcome.NOT_MET, search.reason


def capacity_plan(
    scenario: Scenario,
    text: str,
    levers: Sequence[LeverSpec | str],
    requirements: Sequence[str],
    replications: int = 10,
    budget: int = DEFAULT_BUDGET,
    source: str = "<scenario>",
    base_dir: Path | None = None,
    guide: Guide | None = None,
    **execution: Unpack[Execution],
) -> CapacityPlan:
    """The cheapest combination of lever values whose replication means meet every requirement, found
    within ``budget`` candidates of ``replications`` runs each (see the module docstring for the search).
    Levers are :class:`LeverSpec` or their text (``"suites:cost=400000:max=40"``); ``guide`` replaces
    :func:`step_marginal_values`. Every candidate runs the scenario's replication seeds."""
    specs = [s if isinstance(s, LeverSpec) else LeverSpec.parse(s) for s in levers]
    resolved = resolve_levers(scenario, specs)
    check_requirements_paths(scenario, requirements)
    if budget < 1:
        raise ExperimentError(f"the evaluation budget must be >= 1, got {budget}")
    base = _Base(scenario, text, source, base_dir)
    with Session.of(execution) as session:
        search = CapacitySearch(base, resolved, requirements, replications, budget, session,
                                guide or step_marginal_values)

        def result(spent: bool, interrupted: bool = False) -> CapacityPlan:
            outcome, reason = _outcome(search, spent, interrupted)
            return CapacityPlan(scenario.name, resolved, list(requirements), replications, budget, outcome, reason,
                                search.best, sorted(search.tried.values(), key=lambda c: c.id), search.guidance,
                                not spent, scenario.seed)

        try:
            search.ascend()
            search.refine()
        except _BudgetSpent:
            return result(True)
        except KeyboardInterrupt:
            raise ExperimentInterrupted(result(True, interrupted=True), session.finished, session.finished,
                                        session.stored_run_ids) from None
    return result(False)
