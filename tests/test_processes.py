"""Child processes stop with their parent (issue 10): the workers of a ``sweep --jobs 2`` and the
Streamlit server of ``celltx dashboard``, whether the parent gets SIGTERM or is killed outright."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, short_baseline_file

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

CELLTX = [sys.executable, "-c", "from celltx_mfg.cli import app; app()"]


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src)


def _ppids() -> dict[int, int]:
    """Every process id with its parent's, from /proc/<pid>/stat."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (d / "stat").read_text()
            out[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    ppids = _ppids()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in ppids.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie left to PID 1 is reaped, not serving)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------- sweep workers
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sweep_workers_die_with_their_parent(tmp_path, sig):
    scenario = short_baseline_file(tmp_path, horizon=150)
    cmd = CELLTX + ["sweep", str(scenario), "--vary", "suites=18,20", "-r", "40", "--jobs", "2", "--no-store"]
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    workers: set[int] = set()
    try:
        assert _wait_for(lambda: len(_descendants(proc.pid)) >= 2 or proc.poll() is not None, 60), \
            "the sweep's workers did not start in 60 s"
        assert proc.poll() is None, f"sweep ended early:\n{(tmp_path / 'sweep.log').read_text()[-2000:]}"
        time.sleep(0.5)  # both workers have run their initializer
        workers = {p for p in _descendants(proc.pid) if _alive(p)}
        assert len(workers) >= 2
        os.kill(proc.pid, sig)
        gone = _wait_for(lambda: not any(_alive(p) for p in workers), 10)
        left = {p for p in workers if _alive(p)}
        assert gone, f"workers {sorted(left)} outlived their parent by 10 s after {sig.name}"
        if sig == signal.SIGTERM:  # handled like Ctrl-C: a clean exit 130
            assert proc.wait(timeout=10) == 130, (tmp_path / "sweep.log").read_text()[-2000:]
    finally:
        _stop(proc)
        _kill_all({p for p in workers if _alive(p)})
        log.close()


# ----------------------------------------------------------------------------------- dashboard server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return bool(r.status == 200 and r.read().strip() == b"ok")
    except OSError:
        return False


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_dashboard_server_stops_with_its_parent(tmp_path, sig):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = CELLTX + ["dashboard", "--port", str(port), "--db", str(tmp_path / "runs.db")]
    env = dict(_env(), STREAMLIT_SERVER_FILE_WATCHER_TYPE="none")
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    children: set[int] = set()
    try:
        assert _wait_for(lambda: _healthy(url) or proc.poll() is not None, 60, step=0.3), \
            f"dashboard not healthy in 60 s:\n{(tmp_path / 'dashboard.log').read_text()[-2000:]}"
        assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()[-2000:]
        children = {p for p in _descendants(proc.pid) if _alive(p)}
        assert children, "no Streamlit child found"
        os.kill(proc.pid, sig)
        assert _wait_for(lambda: not _answers(port), 15), f"port {port} still answers 15 s after {sig.name}"
        assert _wait_for(lambda: not any(_alive(p) for p in children), 15), \
            f"Streamlit {sorted(p for p in children if _alive(p))} outlived the parent after {sig.name}"
        if sig == signal.SIGTERM:
            assert proc.wait(timeout=15) == 0, (tmp_path / "dashboard.log").read_text()[-2000:]
    finally:
        _stop(proc)
        _kill_all({p for p in children if _alive(p)})
        log.close()
