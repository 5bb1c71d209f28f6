"""Experiments at scale: replications, lever sweeps, paired comparisons and capacity planning.

Module map:

* :mod:`.levers` - the lever-path language (``resources.suites``, ``sites.*.share``) and what-ifs
  made from a scenario's text (:func:`apply_overrides`);
* :mod:`.targets` - KPI paths an experiment names, checked before it runs, and precision targets;
* :mod:`.backends` - where replications run (inline, a local process pool, Ray), behind one protocol;
* :mod:`.scheduling` - :class:`Session`: one writer storing runs in replication order, whatever ``jobs``;
* :mod:`.designs` - :func:`replicate_scenario` / :func:`run_replications`, :func:`sweep`,
  :func:`compare`, :func:`plan` (one lever) and their results;
* :mod:`.capacity` - :func:`capacity_plan`: the cheapest combination of several costed levers meeting
  every requirement, guided by marginal value (:data:`Guide`, :func:`step_marginal_values`).

Statistics (t-intervals, paired differences) and the KPI tree live in :mod:`celltx_mfg.analysis`.
No printing here: callers pass a ``progress`` callback.
"""

from __future__ import annotations

from .backends import (
    BackendName,
    InlineBackend,
    LocalPoolBackend,
    RayBackend,
    ReplicationBackend,
    import_ray,
    open_backend,
    replicate,
)
from .capacity import (
    DEFAULT_BUDGET,
    Candidate,
    CapacityPlan,
    CapacitySearch,
    Guide,
    Lever,
    LeverSpec,
    MarginalValue,
    Phase,
    PlanOutcome,
    PlanStatus,
    capacity_plan,
    step_marginal_values,
)
from .designs import (
    DEFAULT_MAX_REPLICATIONS,
    Cell,
    CompareResult,
    PlanResult,
    ReplicationResult,
    SweepResult,
    compare,
    fill_replications,
    grid,
    jsonable,
    paired_difference,
    paired_rows,
    plan,
    planned_size,
    replicate_scenario,
    run_replications,
    sweep,
)
from .errors import ExperimentError, ExperimentInterrupted
from .levers import LEVERS, apply_overrides, coerce_value, resolve_lever, set_path
from .scheduling import Execution, Progress, ReplicationGroup, Session, make_group
from .targets import check_kpi_path, check_precision, flatten_kpis, half_widths, kpi_skeleton, precision_met

Backend = BackendName  # the name this Literal had before backends became a protocol

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_MAX_REPLICATIONS",
    "LEVERS",
    "Backend",
    "Candidate",
    "CapacityPlan",
    "CapacitySearch",
    "Guide",
    "Lever",
    "LeverSpec",
    "MarginalValue",
    "Phase",
    "PlanOutcome",
    "Execution",
    "BackendName",
    "Cell",
    "CompareResult",
    "ExperimentError",
    "ExperimentInterrupted",
    "InlineBackend",
    "LocalPoolBackend",
    "PlanResult",
    "PlanStatus",
    "Progress",
    "RayBackend",
    "ReplicationBackend",
    "ReplicationGroup",
    "ReplicationResult",
    "Session",
    "SweepResult",
    "apply_overrides",
    "capacity_plan",
    "check_kpi_path",
    "check_precision",
    "coerce_value",
    "compare",
    "fill_replications",
    "flatten_kpis",
    "grid",
    "half_widths",
    "import_ray",
    "jsonable",
    "kpi_skeleton",
    "make_group",
    "open_backend",
    "paired_difference",
    "paired_rows",
    "plan",
    "planned_size",
    "precision_met",
    "replicate",
    "replicate_scenario",
    "resolve_lever",
    "run_replications",
    "set_path",
    "step_marginal_values",
    "sweep",
]
