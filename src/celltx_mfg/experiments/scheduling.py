"""The scheduler: replications of several scenarios on one backend, stored by ONE writer in order.

Workers only simulate; the parent stores the runs in group order and, within a group, in replication
order, so SQLite is never written concurrently and the results (and run ids) are the same whatever
``jobs`` or backend. A group with precision targets grows one replication at a time (decided on the
runs in replication order) until its half-widths are small enough.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ..config import Scenario
from ..distributions import replication_seed
from ..records import RunRecords
from .backends import BackendName, InlineBackend, Outcome, ReplicationBackend, open_backend, unpack
from .errors import ExperimentError
from .targets import precision_met

# progress(replications finished, replications planned so far); "planned" grows in sequential mode.
Progress = Callable[[int, int], None]


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


@dataclass
class ReplicationGroup:
    """The replications of one scenario (a sweep cell, a compared scenario, a planned lever value)."""

    scenario: Scenario
    text: str
    label: str | None
    seed: int
    n_min: int
    n_max: int
    precision: dict[str, float] | None
    first: int = 0  # replication number of the group's first run (a what-if adding to stored ones)
    keep_records: bool = False  # also keep each run's records in ``records`` (analysis beyond the KPIs)
    results: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    records: list[RunRecords] = field(default_factory=list)
    buffer: dict[int, Outcome] = field(default_factory=dict)
    submitted: int = 0
    done: bool = False
    met: bool | None = None

    def planned(self) -> int:
        n = len(self.results)
        if self.done:
            return n
        return self.n_min if n < self.n_min else min(n + 1, self.n_max)

    def wants_more(self, jobs: int) -> bool:
        """Another replication may be submitted: below the first batch, or (sequential) not yet at the
        cap and fewer than ``jobs`` ahead of what has been stored."""
        ahead = self.submitted - len(self.results)
        return self.submitted < self.n_min or bool(self.precision and self.submitted < self.n_max and ahead < jobs)

    def settle(self) -> None:
        """After a run is stored: done when the precision targets are met or the cap is reached."""
        n = len(self.results)
        if self.precision and n >= self.n_min and precision_met([r[1] for r in self.results], self.precision):
            self.done, self.met = True, True
        elif n >= self.n_max:
            self.done, self.met = True, (None if not self.precision else False)


def make_group(
    scenario: Scenario,
    text: str,
    replications: int,
    label: str | None,
    seed: int | None,
    precision: Mapping[str, float] | None,
    max_replications: int,
    first: int = 0,
    keep_records: bool = False,
) -> ReplicationGroup:
    """A group of ``replications`` (with precision: at least that many, at most ``max_replications``);
    ``keep_records`` keeps every run's records in memory (``group.records``, replication order) for
    analysis that needs more than the KPIs, stored or not."""
    if replications < 1:
        raise ExperimentError(f"replications must be >= 1, got {replications}")
    if precision:
        if max_replications < 2:
            raise ExperimentError("max_replications must be >= 2 when precision targets are set")
        n_min, n_max = max(2, min(replications, max_replications)), max_replications
    else:
        n_min = n_max = replications
    return ReplicationGroup(
        scenario=scenario,
        text=text,
        label=label,
        seed=scenario.seed if seed is None else int(seed),
        n_min=n_min,
        n_max=n_max,
        precision=dict(precision) if precision else None,
        first=first,
        keep_records=keep_records,
    )


class _Pass:
    """One :meth:`Session.run`: the groups, the replications in flight and the first unfinished group
    (the only one whose runs may be stored now)."""

    def __init__(self, session: Session, groups: Sequence[ReplicationGroup], backend: ReplicationBackend) -> None:
        self.session = session
        self.groups = groups
        self.backend = backend
        self.keep = session.engine is not None
        jobs = session.jobs
        # Bounded look-ahead: results waiting for an earlier replication are held in memory.
        self.cap = 1 if isinstance(backend, InlineBackend) else 2 * jobs + (0 if self.keep else 4 * jobs)
        self.in_flight: dict[Any, tuple[int, int]] = {}
        self.head = 0

    def drive(self) -> None:
        while True:
            self._fill()
            if not self.in_flight:
                return
            self._collect()
            self._consume()

    def _next_task(self) -> tuple[int, int] | None:
        buffered = sum(len(g.buffer) for g in self.groups)
        for gi in range(self.head, len(self.groups)):
            g = self.groups[gi]
            if g.done:
                continue
            if gi != self.head and len(self.in_flight) + buffered >= self.cap:
                return None
            if g.wants_more(self.session.jobs):
                return gi, g.first + g.submitted
        return None

    def _fill(self) -> None:
        while len(self.in_flight) < self.cap and (task := self._next_task()) is not None:
            gi, rep = task
            g = self.groups[gi]
            g.submitted += 1
            handle = self.backend.submit(g.scenario, rep, replication_seed(g.seed, rep), self.keep or g.keep_records)
            self.in_flight[handle] = (gi, rep)

    def _collect(self) -> None:
        for h in self.backend.wait(set(self.in_flight)):
            gi, rep = self.in_flight.pop(h)
            outcome = self.backend.result(h)
            if not self.groups[gi].done:
                self.groups[gi].buffer[rep] = outcome

    def _consume(self) -> None:
        """Store what is next in replication order, group after group."""
        while self.head < len(self.groups):
            g = self.groups[self.head]
            self._store_ready(g)
            if not g.done:
                return
            self.head += 1

    def _store_ready(self, g: ReplicationGroup) -> None:
        while not g.done and g.first + len(g.results) in g.buffer:
            k, records = g.buffer.pop(g.first + len(g.results))
            if g.keep_records and records is not None:
                g.records.append(unpack(records))
            with _sigint_deferred():
                g.results.append((self.session.store(g, records), k))
                self.session.finished += 1
            g.settle()
            if g.done:
                self._drop(g)
            self.session.report(self.groups)

    def _drop(self, g: ReplicationGroup) -> None:
        """A finished group wants nothing more: its buffered and running replications are dropped."""
        g.buffer.clear()
        for h, (gi, _) in list(self.in_flight.items()):
            if self.groups[gi] is g:
                self.backend.cancel(h)
                del self.in_flight[h]

    def cancel_all(self) -> None:
        for h in self.in_flight:
            self.backend.cancel(h)


class Execution(TypedDict, total=False):
    """Where and how replications run: any mix gives the same results and run ids. Every design takes
    these as keyword arguments (``jobs=2, backend="ray", engine=..., progress=..., ray_address=...``)."""

    jobs: int
    backend: BackendName
    engine: Any  # an open store, or None: nothing stored
    progress: Progress | None
    ray_address: str | None


class Session:
    """One backend (process pool or Ray) kept alive across every scenario of an experiment, so a
    sweep or a capacity search pays the worker start-up once."""

    def __init__(
        self,
        jobs: int = 1,
        backend: BackendName = "local",
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
        self._pool: ReplicationBackend | None = None

    @classmethod
    def of(cls, execution: Execution) -> Session:
        return cls(execution.get("jobs", 1), execution.get("backend", "local"), execution.get("engine"),
                   execution.get("progress"), execution.get("ray_address"))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(abort=exc_type is not None)

    def _backend(self) -> ReplicationBackend:
        if self._pool is None:
            self._pool = open_backend(self.backend, self.jobs, self.ray_address)
        return self._pool

    def close(self, abort: bool = False) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close(abort=abort)

    def store(self, g: ReplicationGroup, records: dict[str, Any] | None) -> Any:
        """Write one run (its own transaction); call inside ``_sigint_deferred``."""
        if self.engine is None or records is None:
            return None
        from ..store import write_run

        run_id = write_run(self.engine, g.scenario.name, g.text, unpack(records), label=g.label)
        self.stored_run_ids.append(run_id)
        return run_id

    def report(self, groups: Sequence[ReplicationGroup]) -> None:
        if self.progress is not None:
            self.progress(self.finished, self.planned_before + sum(g.planned() for g in groups))

    def run(self, groups: Sequence[ReplicationGroup]) -> None:
        """Run every group to its end (fixed N, or until its precision targets are met), storing runs in
        group order and, within a group, in replication order. On Ctrl-C the workers are stopped and
        what finished is stored before the interrupt goes on."""
        scheduler = _Pass(self, groups, self._backend())
        try:
            self.report(groups)
            scheduler.drive()
        except BaseException as e:
            scheduler.cancel_all()
            self.close(abort=True)
            if isinstance(e, KeyboardInterrupt):
                self._flush(groups)
            raise
        self.planned_before += sum(g.planned() for g in groups)

    def _flush(self, groups: Sequence[ReplicationGroup]) -> None:
        """After Ctrl-C: replications that finished but were waiting for an earlier one are stored too."""
        with contextlib.suppress(KeyboardInterrupt):
            for g in groups:
                for rep in sorted(g.buffer):
                    k, records = g.buffer.pop(rep)
                    with _sigint_deferred():
                        run_id = self.store(g, records)
                        if rep == len(g.results):
                            g.results.append((run_id, k))
                            self.finished += 1
