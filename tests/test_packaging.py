"""What `pip install .` gives: the sdist is the whole project, the wheel carries the dashboard and the
example scenarios, and an installed `celltx` works from a folder that is not the repository.

The wheel is installed with --no-deps into a fresh venv that borrows this interpreter's site-packages
through a .pth file, so nothing is downloaded and nothing is installed into the developer's venv.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from celltx_mfg import __version__

ROOT = Path(__file__).resolve().parents[1]
SDIST_MUST_HOLD = ("LICENSE", "README.md", "CHANGELOG.md", "Makefile", "requirements.lock", "pyproject.toml",
                   "MANIFEST.in", "tests/conftest.py", "tests/test_packaging.py", "scenarios/baseline.yaml",
                   "dashboards/Overview.py", "dashboards/pages/6_What_if.py", "docs/cli-output.schema.json",
                   "src/celltx_mfg/cli.py")
_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "*.db",
                               "*.db-wal", "*.db-shm", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache",
                               "out")


def _env() -> dict[str, str]:
    """The child's environment without this test run's PYTHONPATH (which points into the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _sh(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_package_under_src_is_listed() -> None:
    """pyproject lists packages (two map outside src/): a new subpackage must be added there too."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    assert found <= listed
    assert {"celltx_mfg._dashboards", "celltx_mfg._scenarios"} <= listed


def test_license_file_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and wheel, built from a copy of the checkout (the checkout gets no build/ or egg-info)."""
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src-copy"
    shutil.copytree(ROOT, src, ignore=_SKIP)
    dist = base / "dist"
    dist.mkdir()
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(dist)!r}))"
    _sh([sys.executable, "-c", code], cwd=src)
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", dist, src], cwd=base)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return {"base": base, "sdist": sdist, "wheel": wheel}


def test_sdist_is_the_whole_project(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [n for n in SDIST_MUST_HOLD if n not in names]
    assert not missing, missing
    assert not [n for n in names if "__pycache__" in n or n.endswith(".db")]


def test_wheel_carries_dashboard_and_scenarios(built: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    for path in ("celltx_mfg/_dashboards/Overview.py", "celltx_mfg/_dashboards/_common.py",
                 "celltx_mfg/_dashboards/pages/1_Turnaround.py", "celltx_mfg/_scenarios/baseline.yaml",
                 "celltx_mfg/_scenarios/rapid_sterility.yaml", "celltx_mfg/resources.py"):
        assert path in names, path
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert len([n for n in names if n.startswith("celltx_mfg/_dashboards/pages/")]) == len(
        list((ROOT / "dashboards" / "pages").glob("*.py")))


def test_installed_wheel_runs_outside_the_repository(built: dict[str, Path]) -> None:
    base = built["base"]
    venv = base / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    py = venv / "bin" / "python"
    _sh([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", built["wheel"]],
        cwd=base)
    # only now borrow the dependencies: pip above must not see the developer's own celltx-mfg
    purelib = Path(_sh([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip())
    (purelib / "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    celltx = venv / "bin" / "celltx"
    work = base / "work"
    work.mkdir()

    where = _sh([py, "-c", "import celltx_mfg; print(celltx_mfg.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not the checkout

    assert _sh([celltx, "--version"], cwd=work).stdout.strip() == f"celltx {__version__}"
    _sh([celltx, "init", "d"], cwd=work)
    shipped = sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml"))
    assert sorted(p.name for p in (work / "d").glob("*.yaml")) == shipped
    again = subprocess.run([str(celltx), "init", "d"], cwd=work, env=_env(), capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr

    data = yaml.safe_load((work / "d" / "baseline.yaml").read_text())
    data.update(horizon_days=120, warmup_days=30)
    (work / "d" / "short.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    res = _sh([celltx, "run", "d/short.yaml", "-r", "1", "--db", "x.db", "--json"], cwd=work)
    assert '"command": "run"' in res.stdout and (work / "x.db").is_file()

    port = _free_port()
    proc = subprocess.Popen([str(celltx), "dashboard", "--db", "x.db", "--port", str(port)], cwd=work, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body, deadline = "", time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == "ok", (proc.poll(), proc.stdout.read().decode() if proc.poll() is not None and proc.stdout
                              else "")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
