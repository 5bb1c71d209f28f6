"""The local process pool: each worker has a pipe of its own, so stopping a pool half-way (Ctrl-C, a
worker killed) leaves no thread or queue the interpreter would have to join at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from celltx_mfg import experiments as ex
from celltx_mfg.experiments.backends import LocalPoolBackend, WorkerCrashed

from .conftest import ROOT


def _busy_worker(pool: LocalPoolBackend, handle: int) -> int:
    return next(w.process.pid for w in pool._workers if w.task == handle)


def test_results_come_back_in_any_order_and_match_inline(baseline_small) -> None:
    sc, _ = baseline_small
    inline = ex.InlineBackend()
    pool = LocalPoolBackend(2)
    try:
        handles = [pool.submit(sc, rep, 100 + rep, False) for rep in range(3)]  # one waits in the queue
        got: dict[int, object] = {}
        while len(got) < 3:
            for h in pool.wait(set(handles) - set(got)):
                got[h] = pool.result(h)
        for rep, h in enumerate(handles):
            ih = inline.submit(sc, rep, 100 + rep, False)
            inline.wait({ih})
            assert got[h] == inline.result(ih)
    finally:
        pool.close()
    assert not [p for p in __import__("multiprocessing").active_children() if p.name.startswith("celltx-worker")]


def test_a_killed_worker_is_an_error_not_a_hang(baseline_small) -> None:
    sc, _ = baseline_small
    pool = LocalPoolBackend(1)
    threads = threading.active_count()
    try:
        h = pool.submit(sc, 0, 1, True)
        os.kill(_busy_worker(pool, h), signal.SIGKILL)
        assert pool.wait({h}) == [h]
        with pytest.raises(WorkerCrashed, match="died"):
            pool.result(h)
        h2 = pool.submit(sc, 1, 2, False)  # a new worker takes over
        pool.wait({h2})
        assert pool.result(h2)[0]["patients_referred"] > 0
    finally:
        pool.close(abort=True)
    assert threading.active_count() == threads  # the pool runs no threads of its own


def test_cancelled_work_is_dropped(baseline_small) -> None:
    sc, _ = baseline_small
    pool = LocalPoolBackend(1)
    try:
        running = pool.submit(sc, 0, 1, False)
        queued = pool.submit(sc, 1, 2, False)
        pool.cancel(queued)
        pool.cancel(running)
        last = pool.submit(sc, 2, 3, False)
        assert pool.wait({last}) == [last]
        assert pool.result(last)[0]["patients_referred"] > 0
        with pytest.raises(KeyError):
            pool.result(running)
    finally:
        pool.close()


def test_an_aborted_pool_lets_the_interpreter_exit_at_once(tmp_path) -> None:
    """The regression behind a CI run that passed every test and then never exited: the process that
    aborted a pool mid-replication must end promptly, with the workers gone."""
    script = tmp_path / "abort.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "src")!r})
        sys.path.insert(0, {str(ROOT)!r})
        from tests.conftest import shrink, SCENARIOS
        from celltx_mfg.experiments.backends import LocalPoolBackend
        sc, _ = shrink(SCENARIOS / "baseline.yaml", horizon=2000.0)
        pool = LocalPoolBackend(2)
        for rep in range(4):
            pool.submit(sc, rep, rep, True)
        import time; time.sleep(1.0)
        pool.close(abort=True)
        print("closed", flush=True)
    """))
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "closed" in out.stdout
    assert time.monotonic() - start < 30
