"""Shared fixtures: small, fast versions of the shipped scenarios."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from celltx_mfg.config import Scenario, load_scenario, parse_text

os.environ.setdefault("STREAMLIT_GLOBAL_LOG_LEVEL", "error")  # AppTest runs pages without a server: quiet

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"


def shrink(path: Path, horizon: float = 240.0, warmup: float = 60.0, **top: object) -> tuple[Scenario, str]:
    """The scenario with a shorter horizon: same plant, same rules, a fraction of the run time."""
    _, text = load_scenario(path)
    data = yaml.safe_load(text)
    data["horizon_days"] = horizon
    data["warmup_days"] = warmup
    data.update(top)
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_text(text, str(path)), text


def short_baseline_file(folder: Path, horizon: float, warmup: float = 30.0) -> Path:
    """A short baseline (same plant) written as a standalone scenario file, for CLI tests."""
    data = yaml.safe_load((SCENARIOS / "baseline.yaml").read_text())
    data.update(horizon_days=horizon, warmup_days=warmup, name="baseline_small")
    p = folder / "small.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.fixture(scope="session", autouse=True)
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test seals with a key file of its own session (CELLTX_KEY_FILE, inherited by the `celltx`
    processes tests start): tests never create or read a key in the user's home."""
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    before = os.environ.get("CELLTX_KEY_FILE")
    os.environ["CELLTX_KEY_FILE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("CELLTX_KEY_FILE", None)
    else:
        os.environ["CELLTX_KEY_FILE"] = before


@pytest.fixture(scope="session")
def baseline_small() -> tuple[Scenario, str]:
    return shrink(SCENARIOS / "baseline.yaml")

from tests.pgserver import pg_server, pg_url  # noqa: E402,F401  (PostgreSQL fixtures)


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: 256k, 1m) mounted at ``folder/tiny`` for a full-disk test (root
    only); skips where mounting is not allowed, and always unmounts."""
    mnt = folder / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests must not leave threads or child processes behind: one that outlives the session can keep
    the interpreter from exiting (a CI run passed every test and then never ended). Fail, naming them."""
    import multiprocessing
    import threading

    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    children = [p.name for p in multiprocessing.active_children()]
    if threads or children:
        session.config.get_terminal_writer().line(
            f"\ntests left behind threads {threads} and child processes {children}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread or child process left behind can keep the interpreter from exiting after the last test
    (CI then times out with every test passed and no clue). Two minutes after the session, print every
    thread's stack and exit non-zero instead."""
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)
