"""Where replications run: in this process, in a local process pool, or as Ray tasks.

Workers only simulate and compute KPIs (and pack the records when the parent will store them); the
scheduler in :mod:`.scheduling` talks to every backend through :class:`ReplicationBackend`, so it
neither knows nor cares where a replication ran.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from multiprocessing import connection as mp_connection
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from .. import analysis
from ..config import Scenario
from ..records import RunRecords
from ..simulate import simulate
from .errors import ExperimentError

BackendName = Literal["local", "ray"]
# What a worker sends back: the run's KPIs and, when the parent stores runs, its packed records.
Outcome = tuple[dict[str, Any], dict[str, Any] | None]
# Other work a replication may be (a forecast from a plant state): called in the worker instead of a plain
# run, with the same arguments; it must be picklable (a module-level function or a dataclass instance).
Work = Callable[[Scenario, int, int, bool], Any]
_STOP_TIMEOUT_S = 5.0  # how long an aborted pool waits for its stopped workers to exit


class ReplicationBackend(Protocol):
    """What the scheduler needs of a place to run replications. Handles are opaque to it."""

    def submit(self, scenario: Scenario, replication: int, seed: int, keep_records: bool,
               work: Work | None = None) -> Any:
        """Start one replication (``work`` instead of a plain run, when given); returns a handle."""

    def wait(self, handles: set[Any]) -> list[Any]:
        """Block until at least one of ``handles`` has finished; return those that have."""

    def result(self, handle: Any) -> Outcome:
        """The outcome of a finished replication (a worker's exception is raised here)."""

    def cancel(self, handle: Any) -> None:
        """Drop a replication whose result is no longer wanted (best effort)."""

    def close(self, abort: bool = False) -> None:
        """Release the workers; ``abort`` stops running replications instead of waiting for them."""


# ------------------------------------------------------------------------------------------ workers
def pack(records: RunRecords) -> dict[str, Any]:
    """Records as plain tuples for the trip to the writer: pickling named tuples one by one costs
    about four times as much, which on a small machine makes the parent the bottleneck."""
    out = {f.name: getattr(records, f.name) for f in fields(records) if f.name != "spool"}
    for name, _ in RunRecords.TABLES:
        out[name] = [tuple(r) for r in records.rows(name)]
    return out


def unpack(packed: dict[str, Any]) -> RunRecords:
    data = dict(packed)
    for name, cls in RunRecords.TABLES:
        data[name] = [cls._make(r) for r in data[name]]
    return RunRecords(**data)


def replicate(scenario: Scenario, replication: int, seed: int, keep_records: bool,
              work: Work | None = None) -> Outcome:
    """One replication in a worker: KPIs always, the records only when the parent will store them
    (shipping a plant-year of records costs more than computing its KPIs); ``work`` runs instead when given."""
    if work is not None:
        return cast(Outcome, work(scenario, replication, seed, keep_records))
    records = simulate(scenario, seed=seed, replication=replication)
    k = analysis.kpis(records.frames(), records.horizon, records.warmup, records.costs or None)
    return k, (pack(records) if keep_records else None)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCH_INTERVAL_S = 1.0  # how often a worker checks that the process that started the pool is alive


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (even by SIGKILL). False where
    that is not available (other platforms, no libc): the caller then relies on a watchdog."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused): treat as gone
        return False
    return True


def _watch_parent(owner: int, ppid: int) -> None:
    """The watchdog thread of a worker: exit at once when the pool's owner is gone (our parent changed,
    i.e. we were re-parented, or the owner no longer exists), whatever the worker is doing."""
    while True:
        time.sleep(_WATCH_INTERVAL_S)
        if os.getppid() != ppid or not _alive(owner):
            os._exit(1)


def _worker_start(owner: int | None = None) -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and keeps what finished.

    A worker must not outlive the process that owns the pool (``owner``), even one killed by SIGKILL:
    on Linux the kernel sends it SIGTERM when its parent dies, and everywhere a daemon thread (started
    here, after the fork) exits the worker within about a second of the owner going away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the owner's handler
    ppid = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    if owner is not None:
        if os.getppid() != ppid or not _alive(owner):  # died before the death signal was armed
            os._exit(1)
        threading.Thread(target=_watch_parent, args=(owner, ppid), name="celltx-parent-watch",
                         daemon=True).start()


# ------------------------------------------------------------------------------------------- inline
class InlineBackend:
    """jobs=1: run each replication in this process, when the scheduler asks for a result."""

    def __init__(self) -> None:
        self._queue: dict[int, tuple[Any, ...]] = {}
        self._next = 0

    def submit(self, scenario: Scenario, replication: int, seed: int, keep_records: bool,
               work: Work | None = None) -> int:
        self._next += 1
        self._queue[self._next] = (scenario, replication, seed, keep_records, work)
        return self._next

    def wait(self, handles: set[Any]) -> list[Any]:
        h = min(handles)
        self._queue[h] = ("done", replicate(*self._queue[h]))
        return [h]

    def result(self, handle: Any) -> Outcome:
        return self._queue.pop(handle)[1]

    def cancel(self, handle: Any) -> None:
        self._queue.pop(handle, None)

    def close(self, abort: bool = False) -> None:
        self._queue.clear()


# ------------------------------------------------------------------------------------- process pool
@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Workers need only this package; without this, multiprocessing re-runs the parent's main script in
    every worker (a notebook, a Streamlit page or a script with no ``__main__`` guard would run again)."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        if main is not None and "__file__" in saved:
            delattr(main, "__file__")
        if main is not None and "__spec__" in saved:
            main.__spec__ = None  # multiprocessing reads it unguarded
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _start_context() -> Any:
    """A single-threaded parent forks its workers, which start at once with the model already imported;
    a parent with threads (Ray, a UI) would hand a forked child locks held by threads that do not exist
    there, so it uses a forkserver that imported the model once (spawn, which pays the import in every
    worker, only where neither exists)."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    """SIGTERM to a process running a pool is treated as Ctrl-C: whatever handles SIGINT now (the
    default raises KeyboardInterrupt; a run's storing transaction defers it) handles it, so the
    workers are stopped, finished runs are kept and the command exits 130."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


class WorkerCrashed(ExperimentError):
    """A worker process died (killed, out of memory) before it sent back its replication."""


def _worker_main(conn: Connection, owner: int) -> None:
    """A worker's life: take a replication, send back its outcome (or the exception it raised), until
    the parent says stop or goes away. One pipe of its own, read only by the parent: a worker stopped
    half-way through sending leaves nothing shared in a broken state."""
    _worker_start(owner)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            reply: tuple[bool, Any] = (True, replicate(*task))
        except Exception as e:  # the parent raises it where the scheduler asks for the result
            reply = (False, _portable(e))
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
        except Exception as e:  # an unpicklable result
            conn.send((False, _portable(e)))


def _portable(e: Exception) -> Exception:
    """The exception itself when it survives pickling, else its text with the worker's traceback."""
    import pickle
    import traceback

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return ExperimentError("".join(traceback.format_exception(e)).strip())


@dataclass(eq=False)
class _Worker:
    process: Any
    conn: Connection
    task: int | None = None  # the handle it is running


class LocalPoolBackend:
    """``jobs`` worker processes, each with a pipe of its own, driven from the caller's thread.

    No executor threads and no queues shared between workers: a pool stopped half-way (Ctrl-C, a
    worker killed) has nothing left that the interpreter must join at exit, which a shared result queue
    with a half-written message would block for ever. Workers start when the first replication is
    submitted and are daemons, so the parent's exit always ends them."""

    def __init__(self, jobs: int) -> None:
        self._ctx = _start_context()
        self._jobs = jobs
        self._workers: list[_Worker] = []
        self._queued: dict[int, tuple[Any, ...]] = {}  # handle -> task, in submission order
        self._done: dict[int, tuple[bool, Any]] = {}
        self._cancelled: set[int] = set()
        self._next = 0
        self._sigterm_previous: Any = None
        self._sigterm_installed = False
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, OSError):
                self._sigterm_previous = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
                self._sigterm_installed = True

    def submit(self, scenario: Scenario, replication: int, seed: int, keep_records: bool,
               work: Work | None = None) -> int:
        self._next += 1
        self._queued[self._next] = (scenario, replication, seed, keep_records, work)
        self._dispatch()
        return self._next

    def _dispatch(self) -> None:
        """Hand queued replications to idle workers, starting workers up to ``jobs``."""
        while self._queued:
            idle = next((w for w in self._workers if w.task is None), None)
            if idle is None:
                if len(self._workers) >= self._jobs:
                    return
                idle = self._start_worker()
            handle = next(iter(self._queued))
            task = self._queued.pop(handle)
            idle.conn.send(task)
            idle.task = handle

    def _start_worker(self) -> _Worker:
        ours, theirs = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(theirs, os.getpid()), daemon=True,
                                    name=f"celltx-worker-{len(self._workers) + 1}")
        with _main_script_hidden():
            process.start()
        theirs.close()  # the worker's end lives in the worker: its death is an end of file here
        worker = _Worker(process, ours)
        self._workers.append(worker)
        return worker

    def wait(self, handles: set[Any]) -> list[Any]:
        while not any(h in self._done for h in handles):
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                raise ExperimentError("internal: waiting for replications that no worker is running")
            ready = mp_connection.wait([w.conn for w in busy])
            for w in busy:
                if w.conn in ready:
                    self._receive(w)
            self._dispatch()
        return [h for h in handles if h in self._done]

    def _receive(self, w: _Worker) -> None:
        handle, w.task = w.task, None
        assert handle is not None
        try:
            reply = w.conn.recv()
        except (EOFError, OSError):
            self._retire(w)
            code = w.process.exitcode
            reply = (False, WorkerCrashed(f"a worker process died while running a replication (exit code {code})"))
        if handle in self._cancelled:
            self._cancelled.discard(handle)
        else:
            self._done[handle] = reply

    def _retire(self, w: _Worker) -> None:
        w.conn.close()
        w.process.join(_STOP_TIMEOUT_S)
        self._workers.remove(w)

    def result(self, handle: Any) -> Outcome:
        ok, value = self._done.pop(handle)
        if not ok:
            raise value
        return cast(Outcome, value)

    def cancel(self, handle: Any) -> None:
        """Queued: dropped. Running: its outcome is thrown away when it arrives."""
        if self._queued.pop(handle, None) is None and self._done.pop(handle, None) is None:
            if any(w.task == handle for w in self._workers):
                self._cancelled.add(handle)

    def close(self, abort: bool = False) -> None:
        """Idle workers are told to stop; busy ones (an abort, or replications nobody wants any more)
        are stopped with SIGTERM, then SIGKILL if they do not go within a few seconds."""
        self._queued.clear()
        for w in self._workers:
            if w.task is None and not abort:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send(None)
            else:
                with contextlib.suppress(OSError, ValueError):
                    w.process.terminate()
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(_STOP_TIMEOUT_S)
            w.conn.close()
        self._workers.clear()
        self._done.clear()
        self._cancelled.clear()
        if self._sigterm_installed:
            self._sigterm_installed = False
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGTERM, self._sigterm_previous)


# ---------------------------------------------------------------------------------------------- Ray
_RAY_INSTALL = "pip install 'celltx-mfg[ray]'"
_LOOPBACK = "127.0.0.1"


def import_ray() -> Any:
    """Ray is an optional extra (``pip install celltx-mfg[ray]``)."""
    try:
        import ray
    except ImportError as e:
        raise ExperimentError(f"--backend ray needs Ray ({_RAY_INSTALL}): {e}") from None
    return ray


def _client_missing(e: BaseException | None = None) -> ExperimentError:
    why = f" ({e})" if e else ""
    return ExperimentError(f"--ray-address ray://... needs the Ray client, which is not installed{why}: "
                           f"{_RAY_INSTALL} (the extra includes ray[client])")


def check_ray_client() -> None:
    """A ``ray://`` address goes through the Ray client, which needs gRPC: plain ``ray`` lacks it and
    fails deep inside ``ray.init``; ``ray[client]`` (in our extra) adds it."""
    try:
        import grpc  # noqa: F401
        import ray.util.client  # noqa: F401
    except ImportError as e:
        raise _client_missing(e) from None


class RayBackend:
    """Ray tasks on a local Ray (started here, stopped at the end) or on a cluster (``ray_address``:
    ``auto`` on a cluster node, ``ray://head:10001`` from outside). On a cluster the package source is
    shipped with the tasks so every node runs the driver's model version. A local Ray is this machine's
    alone: its node address is the loopback, and it has no dashboard."""

    def __init__(self, jobs: int, address: str | None) -> None:
        ray = import_ray()
        if address and address.startswith("ray://"):
            check_ray_client()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            self._init(jobs, address)
        self._task = ray.remote(num_cpus=1, max_retries=0)(replicate)
        self._refs: dict[int, Any] = {}

    def _init(self, jobs: int, address: str | None) -> None:
        try:
            if address:
                package = str(Path(__file__).resolve().parents[1])
                self._ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                               runtime_env={"py_modules": [package]})
            else:
                self._ray.init(num_cpus=max(1, jobs), include_dashboard=False, ignore_reinit_error=True,
                               log_to_driver=False, _node_ip_address=_LOOPBACK)
        except ImportError as e:  # a part of the client missing that the check above did not see
            if address and address.startswith("ray://"):
                raise _client_missing(e) from None
            raise ExperimentError(f"--backend ray: Ray is incomplete ({_RAY_INSTALL}): {e}") from None
        except (ConnectionError, TimeoutError) as e:
            where = address or "a local Ray"
            raise ExperimentError(f"--backend ray: cannot connect to {where}: {e}") from None
        self._started = True

    def _scenario_ref(self, scenario: Scenario) -> Any:
        """One copy of each scenario in the object store, however many replications use it."""
        key = id(scenario)
        if key not in self._refs:
            self._refs[key] = (scenario, self._ray.put(scenario))
        return self._refs[key][1]

    def submit(self, scenario: Scenario, replication: int, seed: int, keep_records: bool,
               work: Work | None = None) -> Any:
        return self._task.remote(self._scenario_ref(scenario), replication, seed, keep_records, work)

    def wait(self, handles: set[Any]) -> list[Any]:
        ready, _ = self._ray.wait(list(handles), num_returns=1)
        return list(ready)

    def result(self, handle: Any) -> Outcome:
        return self._ray.get(handle)

    def cancel(self, handle: Any) -> None:
        with contextlib.suppress(Exception):
            self._ray.cancel(handle, force=True)

    def close(self, abort: bool = False) -> None:
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


def open_backend(name: BackendName, jobs: int, ray_address: str | None = None) -> ReplicationBackend:
    """The backend for ``name`` and ``jobs``: Ray when asked, else inline for one job, else a pool."""
    if name == "ray":
        return RayBackend(jobs, ray_address)
    if jobs == 1:
        return InlineBackend()
    return LocalPoolBackend(jobs)
