"""Experiments at scale: replications, lever sweeps, paired comparisons and capacity planning.

One replication of a plant year says little: vein-to-vein time and losses swing with who was referred
when. Every question a planner asks ("is a 19th suite worth it?", "how many QC analysts keep p90 under
28 days?") is therefore answered with N replications per scenario, on **common random numbers**:
replication r of every scenario uses the same run seed, so the same patients arrive on the same days and
the same batches fail. Differences between scenarios are then driven by the lever, not by luck, and paired
intervals are far narrower than independent ones.

Workers (a local process pool or Ray tasks) only simulate and compute KPIs; ONE writer in the parent
stores the runs, in replication order, so SQLite is never written concurrently and the results (and run
ids) are the same whatever ``jobs`` or backend. No printing here: callers pass a ``progress`` callback.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import re
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel

from . import analysis
from .config import Scenario, ScenarioError, parse_text
from .distributions import replication_seed
from .records import RunRecords
from .simulate import simulate

# Short names for the capacity levers planners turn most; any dotted scenario path works as well.
LEVERS: dict[str, str] = {
    "suites": "resources.suites",
    "incubators": "resources.incubators",
    "operators": "resources.operators.count",
    "qc_analysts": "resources.qc_analysts.count",
    "qa_reviewers": "resources.qa_reviewers.count",
    "starts_per_day": "booking.starts_per_day",
    "demand": "demand.per_year",
}
DEFAULT_MAX_REPLICATIONS = 200
Backend = Literal["local", "ray"]
# progress(replications finished, replications planned so far); "planned" grows in sequential mode.
Progress = Callable[[int, int], None]
_REQUIREMENT_PATH = re.compile(
    r"^\s*(?P<path>[A-Za-z_][\w.\-]*?)\s*(?:<=|>=|==|!=|<|>)\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$"
)
# KPI groups whose members depend on the plant (resource kinds, loss stages), not on the KPI definitions.
_OPEN_GROUPS = ("utilisation", "lost_by_stage", "deviations")


class ExperimentError(ValueError):
    """An experiment that cannot be set up (unknown lever path, bad precision target, bad range)."""


class ExperimentInterrupted(KeyboardInterrupt):
    """Ctrl-C during an experiment. Runs that finished are stored (each in its own transaction);
    ``partial`` holds the result of what finished, ``stored_run_ids`` every run id written."""

    def __init__(self, partial: Any, finished: int, planned: int, stored_run_ids: list[Any]) -> None:
        self.partial = partial
        self.finished = finished
        self.planned = planned
        self.stored_run_ids = stored_run_ids
        super().__init__(str(self))

    def __str__(self) -> str:
        stored = f"; {len(self.stored_run_ids)} run(s) stored" if self.stored_run_ids else ""
        return f"interrupted after {self.finished} of {self.planned} planned replications{stored}"


# ------------------------------------------------------------------------------------------- levers
def resolve_lever(name: str) -> str:
    """Short lever name -> scenario path; a dotted path or a top-level scenario key passes through."""
    name = name.strip()
    if name in LEVERS:
        return LEVERS[name]
    if "." in name or name in Scenario.model_fields:
        return name
    raise ExperimentError(
        f"unknown lever {name!r}; short names: {', '.join(LEVERS)}; or give a dotted scenario path "
        "such as demand.per_year or sites.site_north.apheresis_per_day"
    )


def coerce_value(value: Any) -> Any:
    """Text from the command line -> the YAML value it means: '4' -> 4, '2.5' -> 2.5, 'true' -> True,
    '{dist: fixed, value: 14}' -> a mapping; anything else stays text."""
    if not isinstance(value, str):
        return value
    s = value.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s[:1] in "{[":
        try:
            return yaml.safe_load(s)
        except yaml.YAMLError as e:
            raise ExperimentError(f"value {s!r} is not valid YAML: {e}") from None
    return s


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X, Annotated[X, ...] -> X; a union of several models stays as it is."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_fields(tp: Any) -> dict[str, Any] | None:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {(f.alias or name): f.annotation for name, f in tp.model_fields.items()}
    return None


def _container_item(tp: Any, kind: type) -> Any:
    tp = _unwrap(tp)
    if typing.get_origin(tp) is kind:
        args = typing.get_args(tp)
        return args[-1] if args else None
    return None


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted path. List items (sites, steps, tests) are addressed by ``name`` or
    index, ``*`` means every item; keys the scenario model knows may be added even if the file left
    them at their defaults."""
    parts = path.split(".")
    if not all(parts):
        raise ExperimentError(f"lever path {path!r} has an empty part")
    targets: list[tuple[Any, Any, str]] = [(data, Scenario, "")]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        following: list[tuple[Any, Any, str]] = []
        for node, tp, where in targets:
            here = f"{where}.{part}" if where else part
            if isinstance(node, list):
                item_tp = _container_item(tp, list)
                names = [x.get("name") for x in node if isinstance(x, dict) and "name" in x]
                if part == "*":
                    idxs = list(range(len(node)))
                elif part.isdigit() and int(part) < len(node):
                    idxs = [int(part)]
                else:
                    idxs = [j for j, x in enumerate(node) if isinstance(x, dict) and x.get("name") == part]
                if not idxs:
                    valid = ", ".join(map(str, names)) if names else f"indices 0..{len(node) - 1}"
                    raise ExperimentError(
                        f"lever path {path!r}: no item {part!r} in {where or 'the scenario'}; "
                        f"valid there: {valid} (or an index, or * for all)"
                    )
                for j in idxs:
                    if last:
                        node[j] = value
                    else:
                        following.append((node[j], item_tp, here))
            elif isinstance(node, dict):
                fields = _model_fields(tp)
                map_item = _container_item(tp, dict)
                keys = list(node) if part == "*" else [part]
                known = set(node) | set(fields or {})
                if part != "*" and part not in known and map_item is None:
                    raise ExperimentError(
                        f"lever path {path!r}: unknown key {part!r} in {where or 'the scenario'}; "
                        f"valid keys there: {', '.join(sorted(map(str, known)))}"
                    )
                for key in keys:
                    if last:
                        node[key] = value
                        continue
                    child = node.get(key)
                    if child is None:
                        child = node[key] = {}
                    child_tp = fields.get(key) if fields else map_item
                    following.append((child, child_tp, f"{where}.{key}" if where else str(key)))
            else:
                raise ExperimentError(
                    f"lever path {path!r}: {where} is a single value ({node!r}), it has no key {part!r}"
                )
        targets = following
    return None


def _fmt_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    return str(v)


def apply_overrides(
    scenario_text: str,
    overrides: Mapping[str, Any],
    name_suffix: str | None = None,
    source: str = "<scenario>",
    base_dir: Path | None = None,
) -> tuple[Scenario, str]:
    """A what-if made from a scenario's text by setting lever values, validated like a file.

    Keys are lever short names or dotted paths; values may be command-line text ("4"). The scenario is
    renamed ``<name>[<suffix>]`` (default suffix ``lever=value,...`` as given) so stored runs say which
    cell they belong to. An invalid result raises :class:`ScenarioError` naming the field."""
    try:
        data = yaml.safe_load(scenario_text)
    except yaml.YAMLError as e:
        raise ScenarioError(source, [("", f"not valid YAML: {e}", None)]) from None
    if not isinstance(data, dict):
        raise ScenarioError(source, [("", "top level must be a mapping of keys", None)])
    if not overrides and name_suffix is None:
        return parse_text(scenario_text, source, base_dir), scenario_text
    shown = []
    for key, raw in overrides.items():
        value = coerce_value(raw)
        _set_path(data, resolve_lever(key), value)
        shown.append(f"{key}={_fmt_value(value)}")
    suffix = name_suffix if name_suffix is not None else ",".join(shown)
    if suffix:
        data["name"] = f"{data.get('name', 'scenario')}[{suffix}]"
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return parse_text(text, source, base_dir), text


# --------------------------------------------------------------------------------------- KPI paths
def flatten_kpis(kpis: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Numeric KPI leaves by dotted path (``vein_to_vein_days.p90``); the summary extras are skipped."""
    out: dict[str, float | None] = {}
    for k, v in kpis.items():
        if not prefix and k in ("ci95", "replications"):
            continue
        p = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_kpis(v, p + "."))
        elif v is None or isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[p] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def kpi_skeleton(scenario: Scenario) -> dict[str, Any]:
    """The KPI structure this scenario produces (from a two-day run), to check KPI paths named in
    requirements or precision targets before hours of replications are spent."""
    short = scenario.model_copy(update={"horizon_days": 2.0, "warmup_days": 0.0})
    records = simulate(short, replication=0)
    return analysis.kpis(records.frames(), records.horizon, records.warmup, records.costs or None)


def check_kpi_path(skeleton: Mapping[str, Any], path: str) -> None:
    """Raise ExperimentError unless ``path`` names a numeric KPI (members of utilisation / loss-stage
    groups are accepted whatever they are called: they appear only when something happens)."""
    parts = path.split(".")
    if len(parts) == 2 and parts[0] in _OPEN_GROUPS:
        return
    try:
        value = analysis.get_path(skeleton, path)
    except ValueError as e:
        raise ExperimentError(str(e)) from None
    if isinstance(value, Mapping):
        raise ExperimentError(f"KPI path {path!r} is a group; pick one of: " + ", ".join(f"{path}.{k}" for k in value))


def half_widths(per_run: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> dict[str, float | None]:
    """95% t half-width of each KPI over the replications (None with fewer than two numbers): the
    same formula as :func:`analysis.summarise`, computed only for the KPIs a precision target names."""
    out: dict[str, float | None] = {}
    for path in paths:
        xs = []
        for k in per_run:
            v = analysis.get_path(k, path)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                xs.append(float(v))
        out[path] = (
            float(analysis.student_t_975(len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs)))
            if len(xs) >= 2
            else None
        )
    return out


def _precision_met(per_run: Sequence[Mapping[str, Any]], precision: Mapping[str, float]) -> bool:
    hw = half_widths(per_run, list(precision))
    return all(hw[p] is not None and hw[p] <= target for p, target in precision.items())  # type: ignore[operator]


# ------------------------------------------------------------------------------------------ workers
def _pack(records: RunRecords) -> dict[str, Any]:
    """Records as plain tuples for the trip to the writer: pickling named tuples one by one costs
    about four times as much, which on a small machine makes the parent the bottleneck."""
    out = {f.name: getattr(records, f.name) for f in fields(records)}
    for name, _ in RunRecords.TABLES:
        out[name] = [tuple(r) for r in out[name]]
    return out


def _unpack(packed: dict[str, Any]) -> RunRecords:
    data = dict(packed)
    for name, cls in RunRecords.TABLES:
        data[name] = [cls._make(r) for r in data[name]]
    return RunRecords(**data)


def _replicate(
    scenario: Scenario, replication: int, seed: int, keep_records: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One replication in a worker: KPIs always, the records only when the parent will store them
    (shipping a plant-year of records costs more than computing its KPIs)."""
    records = simulate(scenario, seed=seed, replication=replication)
    k = analysis.kpis(records.frames(), records.horizon, records.warmup, records.costs or None)
    return k, (_pack(records) if keep_records else None)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and keeps what finished."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Inline:
    """jobs=1: run each replication in this process, when the scheduler asks for a result."""

    def __init__(self) -> None:
        self._queue: dict[int, tuple[Any, ...]] = {}
        self._next = 0

    def submit(self, *args: Any) -> int:
        self._next += 1
        self._queue[self._next] = args
        return self._next

    def wait(self, handles: set[Any]) -> list[Any]:
        h = min(handles)
        self._queue[h] = ("done", _replicate(*self._queue[h]))
        return [h]

    def result(self, h: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return self._queue.pop(h)[1]  # type: ignore[no-any-return]

    def cancel(self, h: Any) -> None:
        self._queue.pop(h, None)

    def close(self, abort: bool = False) -> None:
        self._queue.clear()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Workers need only this package; without this, multiprocessing re-runs the parent's main script in
    every worker (a notebook, a Streamlit page or a script with no ``__main__`` guard would run again)."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        if "__file__" in saved:
            delattr(main, "__file__")
        if "__spec__" in saved:
            main.__spec__ = None  # type: ignore[union-attr]  (multiprocessing reads it unguarded)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


class _LocalPool:
    """A process pool. A single-threaded parent forks its workers, which start at once with the model
    already imported; a parent with threads (Ray, a UI) would hand a forked child locks held by threads
    that do not exist there, so it uses a forkserver that imported the model once (spawn, which pays
    the import in every worker, only where neither exists)."""

    def __init__(self, jobs: int) -> None:
        methods = mp.get_all_start_methods()
        if "fork" in methods and threading.active_count() == 1:
            ctx = mp.get_context("fork")
        elif "forkserver" in methods:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["celltx_mfg.experiments"])
        else:
            ctx = mp.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_ignore_sigint)

    def submit(self, *args: Any) -> Future:
        with _main_script_hidden():  # workers may be started here
            return self._pool.submit(_replicate, *args)

    def wait(self, handles: set[Any]) -> list[Any]:
        done, _ = futures_wait(handles, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, h: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return h.result()  # type: ignore[no-any-return]

    def cancel(self, h: Any) -> None:
        h.cancel()

    def close(self, abort: bool = False) -> None:
        if not abort:
            self._pool.shutdown(wait=True)
            return
        # Ctrl-C: queued work is dropped and running replications are stopped, not waited for.
        processes = dict(getattr(self._pool, "_processes", None) or {})
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in processes.values():
            if p.is_alive():
                p.terminate()
        for p in processes.values():
            p.join(timeout=5)


def import_ray() -> Any:
    """Ray is an optional extra (``pip install celltx-mfg[ray]``)."""
    try:
        import ray
    except ImportError as e:
        raise ExperimentError(
            f"--backend ray needs Ray (pip install 'celltx-mfg[ray]'): {e}"
        ) from None
    return ray


class _RayPool:
    """Ray tasks on a local Ray (started here, stopped at the end) or on a cluster (``ray_address``:
    ``auto`` on a cluster node, ``ray://head:10001`` from outside). On a cluster the package source is
    shipped with the tasks so every node runs the driver's model version."""

    def __init__(self, jobs: int, address: str | None) -> None:
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                package = str(Path(__file__).resolve().parent)
                ray.init(
                    address=address,
                    ignore_reinit_error=True,
                    log_to_driver=False,
                    runtime_env={"py_modules": [package]},
                )
            else:
                ray.init(num_cpus=max(1, jobs), include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
            self._started = True
        self._task = ray.remote(num_cpus=1, max_retries=0)(_replicate)
        self._refs: dict[int, Any] = {}

    def _scenario_ref(self, scenario: Scenario) -> Any:
        key = id(scenario)
        if key not in self._refs:
            self._refs[key] = (scenario, self._ray.put(scenario))
        return self._refs[key][1]

    def submit(self, scenario: Scenario, *args: Any) -> Any:
        return self._task.remote(self._scenario_ref(scenario), *args)

    def wait(self, handles: set[Any]) -> list[Any]:
        ready, _ = self._ray.wait(list(handles), num_returns=1)
        return list(ready)

    def result(self, h: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return self._ray.get(h)  # type: ignore[no-any-return]

    def cancel(self, h: Any) -> None:
        with contextlib.suppress(Exception):
            self._ray.cancel(h, force=True)

    def close(self, abort: bool = False) -> None:
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """A run is stored whole or not at all: Ctrl-C during its transaction takes effect just after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------- scheduler
@dataclass
class _Group:
    """The replications of one scenario (a sweep cell, a compared scenario, a planned lever value)."""

    scenario: Scenario
    text: str
    label: str | None
    seed: int
    n_min: int
    n_max: int
    precision: dict[str, float] | None
    results: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    buffer: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=dict)
    submitted: int = 0
    done: bool = False
    met: bool | None = None

    def planned(self) -> int:
        n = len(self.results)
        if self.done:
            return n
        return self.n_min if n < self.n_min else min(n + 1, self.n_max)


class Session:
    """One backend (process pool or Ray) kept alive across every scenario of an experiment, so a
    sweep or a capacity search pays the worker start-up once."""

    def __init__(
        self,
        jobs: int = 1,
        backend: Backend = "local",
        engine: Any = None,
        progress: Progress | None = None,
        ray_address: str | None = None,
    ) -> None:
        if jobs < 1:
            raise ExperimentError(f"jobs must be >= 1, got {jobs}")
        if backend not in ("local", "ray"):
            raise ExperimentError(f"backend must be 'local' or 'ray', got {backend!r}")
        self.jobs = jobs
        self.backend = backend
        self.engine = engine
        self.progress = progress
        self.ray_address = ray_address
        self.finished = 0  # replications consumed over the session (progress across scenarios)
        self.planned_before = 0
        self.stored_run_ids: list[Any] = []
        self._pool: Any = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(abort=exc_type is not None)

    def _backend(self) -> Any:
        if self._pool is None:
            if self.backend == "ray":
                self._pool = _RayPool(self.jobs, self.ray_address)
            elif self.jobs == 1:
                self._pool = _Inline()
            else:
                self._pool = _LocalPool(self.jobs)
        return self._pool

    def close(self, abort: bool = False) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close(abort=abort)

    def _store(self, g: _Group, records: dict[str, Any] | None) -> Any:
        """Write one run (its own transaction); call inside ``_sigint_deferred``."""
        if self.engine is None or records is None:
            return None
        from .store import write_run

        run_id = write_run(self.engine, g.scenario.name, g.text, _unpack(records), label=g.label)
        self.stored_run_ids.append(run_id)
        return run_id

    def _report(self, groups: Sequence[_Group]) -> None:
        if self.progress is not None:
            self.progress(self.finished, self.planned_before + sum(g.planned() for g in groups))

    def run(self, groups: Sequence[_Group]) -> None:
        """Run every group to its end (fixed N, or until its precision targets are met), storing runs in
        group order and, within a group, in replication order."""
        pool = self._backend()
        keep = self.engine is not None
        inline = isinstance(pool, _Inline)
        cap = 1 if inline else 2 * self.jobs + (0 if keep else 4 * self.jobs)
        in_flight: dict[Any, tuple[int, int]] = {}
        head = 0  # first group not finished: the only one whose runs may be written now

        def next_task() -> tuple[int, int] | None:
            buffered = sum(len(g.buffer) for g in groups)
            for gi in range(head, len(groups)):
                g = groups[gi]
                if g.done:
                    continue
                if gi != head and len(in_flight) + buffered >= cap:
                    return None
                ahead = g.submitted - len(g.results)
                if g.submitted < g.n_min or (g.precision and g.submitted < g.n_max and ahead < self.jobs):
                    return gi, g.submitted
            return None

        def consume() -> None:
            nonlocal head
            while head < len(groups):
                g = groups[head]
                while not g.done and len(g.results) in g.buffer:
                    k, records = g.buffer.pop(len(g.results))
                    with _sigint_deferred():
                        g.results.append((self._store(g, records), k))
                        self.finished += 1
                    n = len(g.results)
                    if g.precision and n >= g.n_min and _precision_met([r[1] for r in g.results], g.precision):
                        g.done, g.met = True, True
                    elif n >= g.n_max:
                        g.done, g.met = True, (None if not g.precision else False)
                    if g.done:
                        g.buffer.clear()
                        for h, (gi, _) in list(in_flight.items()):
                            if groups[gi] is g:
                                pool.cancel(h)
                                del in_flight[h]
                    self._report(groups)
                if not g.done:
                    return
                head += 1

        try:
            self._report(groups)
            while True:
                while len(in_flight) < cap and (task := next_task()) is not None:
                    gi, rep = task
                    g = groups[gi]
                    g.submitted += 1
                    seed = replication_seed(g.seed, rep)
                    in_flight[pool.submit(g.scenario, rep, seed, keep)] = (gi, rep)
                if not in_flight:
                    break
                for h in pool.wait(set(in_flight)):
                    gi, rep = in_flight.pop(h)
                    result = pool.result(h)
                    if not groups[gi].done:
                        groups[gi].buffer[rep] = result
                consume()
        except KeyboardInterrupt:
            for h in in_flight:
                pool.cancel(h)
            self.close(abort=True)
            self._flush(groups)
            raise
        except BaseException:
            for h in in_flight:
                pool.cancel(h)
            self.close(abort=True)
            raise
        self.planned_before += sum(g.planned() for g in groups)

    def _flush(self, groups: Sequence[_Group]) -> None:
        """After Ctrl-C: replications that finished but were waiting for an earlier one are stored too."""
        with contextlib.suppress(KeyboardInterrupt):
            for g in groups:
                for rep in sorted(g.buffer):
                    k, records = g.buffer.pop(rep)
                    with _sigint_deferred():
                        run_id = self._store(g, records)
                        if rep == len(g.results):
                            g.results.append((run_id, k))
                            self.finished += 1


def _group(
    scenario: Scenario,
    text: str,
    replications: int,
    label: str | None,
    seed: int | None,
    precision: Mapping[str, float] | None,
    max_replications: int,
) -> _Group:
    if replications < 1:
        raise ExperimentError(f"replications must be >= 1, got {replications}")
    if precision:
        if max_replications < 2:
            raise ExperimentError("max_replications must be >= 2 when precision targets are set")
        n_min, n_max = max(2, min(replications, max_replications)), max_replications
    else:
        n_min = n_max = replications
    return _Group(
        scenario=scenario,
        text=text,
        label=label,
        seed=scenario.seed if seed is None else int(seed),
        n_min=n_min,
        n_max=n_max,
        precision=dict(precision) if precision else None,
    )


def _check_precision(scenario: Scenario, precision: Mapping[str, float] | None) -> None:
    if not precision:
        return
    skeleton = kpi_skeleton(scenario)
    for path, target in precision.items():
        check_kpi_path(skeleton, path)
        if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
            raise ExperimentError(f"precision target for {path!r} must be a half-width > 0, got {target!r}")


def run_replications(
    scenario: Scenario,
    text: str,
    replications: int,
    jobs: int = 1,
    backend: Backend = "local",
    engine: Any = None,
    label: str | None = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    precision: Mapping[str, float] | None = None,
    max_replications: int = DEFAULT_MAX_REPLICATIONS,
    seed: int | None = None,
) -> list[tuple[Any, dict[str, Any]]]:
    """Replications 0..N-1 of one scenario -> [(run_id or None, kpis)] in replication order.

    Replication r uses ``replication_seed(seed or scenario.seed, r)`` whatever ``jobs`` or backend,
    so the list is identical for jobs=1, jobs=8 or a Ray cluster. With ``precision`` ({KPI path:
    95% half-width}), ``replications`` is the first batch and more are added until every named
    half-width is at most its target (or ``max_replications``): the stopping point is decided on the
    runs in replication order, so it too does not depend on ``jobs``."""
    _check_precision(scenario, precision)
    g = _group(scenario, text, replications, label, seed, precision, max_replications)
    with Session(jobs, backend, engine, progress, ray_address) as session:
        try:
            session.run([g])
        except KeyboardInterrupt:
            raise ExperimentInterrupted(g.results, session.finished, g.planned(), session.stored_run_ids) from None
    return g.results


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
        overrides = dict(zip(vary, combo))
        sc, t = apply_overrides(text, overrides, source=source, base_dir=base_dir)
        cells.append(Cell(sc.name, sc, t, overrides))
    return cells


@dataclass
class SweepResult:
    """Per cell: the runs, the replication summary (means, ``ci95``) and whether precision was met."""

    cells: list[Cell]
    runs: list[list[tuple[Any, dict[str, Any]]]]
    summaries: list[dict[str, Any]]
    precision_met: list[bool | None]

    @property
    def table(self) -> pd.DataFrame:
        """One row per cell: lever values, replications, then each KPI's mean and ``<kpi>.ci95``."""
        rows = []
        lever_names: list[str] = []
        for c in self.cells:
            lever_names.extend(k for k in c.levers if k not in lever_names)
        for cell, summary, met in zip(self.cells, self.summaries, self.precision_met):
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
    jobs: int = 1,
    backend: Backend = "local",
    engine: Any = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    precision: Mapping[str, float] | None = None,
    max_replications: int = DEFAULT_MAX_REPLICATIONS,
) -> SweepResult:
    """N replications of every cell on common random numbers (replication r shares its seed in every
    cell, so cell differences are lever effects). Runs are stored with label = cell name."""
    if not cells:
        raise ExperimentError("a sweep needs at least one cell")
    if precision:
        _check_precision(cells[0].scenario, precision)
    groups = [
        _group(c.scenario, c.text, replications, c.name, None, precision, max_replications) for c in cells
    ]

    def result() -> SweepResult:
        return SweepResult(
            cells=list(cells),
            runs=[g.results for g in groups],
            summaries=[analysis.summarise([k for _, k in g.results]) for g in groups],
            precision_met=[g.met for g in groups],
        )

    with Session(jobs, backend, engine, progress, ray_address) as session:
        try:
            session.run(groups)
        except KeyboardInterrupt:
            raise ExperimentInterrupted(
                result(), session.finished, sum(g.planned() for g in groups), session.stored_run_ids
            ) from None
    return result()


# ------------------------------------------------------------------------------------------ compare
@dataclass
class CompareResult:
    """Paired differences (scenario - reference) per KPI, replication by replication."""

    names: list[str]
    runs: list[list[tuple[Any, dict[str, Any]]]]
    summaries: list[dict[str, Any]]
    table: pd.DataFrame
    seed: int


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """Mean of b - a over replications where both are numbers, with its 95% t-interval; significant
    when the interval excludes 0. Pairing on common random numbers cancels the noise both share."""
    d = np.array(
        [y - x for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)],
        dtype=float,
    )
    n = int(d.size)
    if n == 0:
        return {"difference": None, "ci_low": None, "ci_high": None, "half_width": None, "significant": None, "pairs": 0}
    mean = float(d.mean())
    if n < 2:
        return {"difference": mean, "ci_low": None, "ci_high": None, "half_width": None, "significant": None, "pairs": 1}
    hw = float(analysis.student_t_975(n - 1) * d.std(ddof=1) / math.sqrt(n))
    return {
        "difference": mean,
        "ci_low": mean - hw,
        "ci_high": mean + hw,
        "half_width": hw,
        "significant": bool(mean - hw > 0 or mean + hw < 0),
        "pairs": n,
    }


def compare(
    scenarios: Sequence[tuple[Scenario, str]],
    replications: int = 30,
    jobs: int = 1,
    backend: Backend = "local",
    engine: Any = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    kpi_paths: Sequence[str] | None = None,
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
            check_kpi_path(skeleton, p)
    groups = [_group(sc, text, replications, sc.name, base_seed, None, replications) for sc, text in scenarios]
    with Session(jobs, backend, engine, progress, ray_address) as session:
        try:
            session.run(groups)
        except KeyboardInterrupt:
            raise ExperimentInterrupted(
                [g.results for g in groups], session.finished, sum(g.planned() for g in groups),
                session.stored_run_ids,
            ) from None
    flat = [[flatten_kpis(k) for _, k in g.results] for g in groups]
    summaries = [analysis.summarise([k for _, k in g.results]) for g in groups]
    rows = []
    for j in range(1, len(groups)):
        paths = list(kpi_paths) if kpi_paths else list(dict.fromkeys([*flat[0][0], *flat[j][0]]))
        for path in paths:
            a = [f.get(path, 0.0 if path.split(".")[0] in analysis.COUNT_MAPS else None) for f in flat[0]]
            b = [f.get(path, 0.0 if path.split(".")[0] in analysis.COUNT_MAPS else None) for f in flat[j]]
            av = [x for x in a if x is not None]
            bv = [x for x in b if x is not None]
            rows.append(
                {
                    "reference": names[0],
                    "scenario": names[j],
                    "kpi": path,
                    "mean_reference": float(np.mean(av)) if av else None,
                    "mean_scenario": float(np.mean(bv)) if bv else None,
                    **paired_difference(a, b),
                }
            )
    return CompareResult(names, [g.results for g in groups], summaries, pd.DataFrame(rows), base_seed)


# --------------------------------------------------------------------------------------------- plan
@dataclass
class PlanResult:
    """The smallest lever value meeting every requirement (None if none in range) and the evidence:
    every value tried, its replication means and whether each requirement held."""

    lever: str
    path: str
    requirements: list[str]
    value: int | None
    evidence: pd.DataFrame
    summaries: dict[int, dict[str, Any]]
    lo: int
    hi: int


def plan(
    scenario: Scenario,
    text: str,
    lever: str,
    requirements: Sequence[str],
    lo: int = 1,
    hi: int = 40,
    replications: int = 10,
    jobs: int = 1,
    backend: Backend = "local",
    engine: Any = None,
    progress: Progress | None = None,
    ray_address: str | None = None,
    source: str = "<scenario>",
    base_dir: Path | None = None,
) -> PlanResult:
    """Smallest integer value of ``lever`` in [lo, hi] whose replication means meet every requirement.

    Assumes more of the lever never hurts (monotone): gallop up from ``lo`` (lo, lo+1, lo+3, lo+7, ...)
    to the first value that meets, then bisect between it and the last that failed. Every value runs
    the same replication seeds (common random numbers), so neighbouring values are compared on the
    same patients. A value the scenario rules reject (e.g. fewer operators than an open step needs)
    counts as failing, with the reason in the evidence."""
    path = resolve_lever(lever)
    if not requirements:
        raise ExperimentError("plan needs at least one requirement, e.g. 'vein_to_vein_days.p90<=28'")
    if lo > hi:
        raise ExperimentError(f"--min ({lo}) must be <= --max ({hi})")
    skeleton = kpi_skeleton(scenario)
    for req in requirements:
        m = _REQUIREMENT_PATH.match(req)
        if m is None:
            raise ExperimentError(f"cannot parse requirement {req!r}; expected {analysis.REQUIREMENT_SYNTAX}")
        check_kpi_path(skeleton, m["path"])

    tried: dict[int, dict[str, Any]] = {}
    summaries: dict[int, dict[str, Any]] = {}

    def evaluate(session: Session, value: int) -> bool:
        row: dict[str, Any] = {"value": value}
        try:
            sc, t = apply_overrides(text, {lever: value}, source=source, base_dir=base_dir)
        except ScenarioError as e:
            row.update(status="invalid", replications=0, note="; ".join(f"{p}: {m}" for p, m, _ in e.problems))
            tried[value] = row
            return False
        g = _group(sc, t, replications, sc.name, scenario.seed, None, replications)
        session.run([g])
        summary = analysis.summarise([k for _, k in g.results])
        summaries[value] = summary
        try:
            checks = analysis.check_requirements(summary, requirements)
        except ValueError as e:  # a member of an open group this plant never produced
            raise ExperimentError(str(e)) from None
        ok = all(c.ok for c in checks)
        row.update(status="meets" if ok else "fails", replications=len(g.results), note="")
        for c in checks:
            hw = _ci_of(summary, c.path)
            row[c.requirement] = c.actual
            row[f"{c.requirement} ci95"] = hw
            row[f"{c.requirement} ok"] = c.ok
        tried[value] = row
        return ok

    found: int | None = None
    with Session(jobs, backend, engine, progress, ray_address) as session:
        try:
            if evaluate(session, lo):
                found = lo
            else:
                last_fail, step, first_ok = lo, 1, None
                while last_fail < hi:
                    v = min(last_fail + step, hi)
                    if evaluate(session, v):
                        first_ok = v
                        break
                    last_fail, step = v, step * 2
                if first_ok is not None:
                    while first_ok - last_fail > 1:
                        mid = (last_fail + first_ok) // 2
                        if evaluate(session, mid):
                            first_ok = mid
                        else:
                            last_fail = mid
                    found = first_ok
        except KeyboardInterrupt:
            partial = PlanResult(lever, path, list(requirements), None, _evidence(tried), summaries, lo, hi)
            raise ExperimentInterrupted(partial, session.finished, session.finished, session.stored_run_ids) from None
    return PlanResult(lever, path, list(requirements), found, _evidence(tried), summaries, lo, hi)


def _ci_of(summary: Mapping[str, Any], path: str) -> float | None:
    try:
        v = analysis.get_path(summary.get("ci95", {}), path)
    except ValueError:
        return None
    return None if isinstance(v, Mapping) else v


def _evidence(tried: Mapping[int, dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([tried[v] for v in sorted(tried)])


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
