"""The Ray backend's options, with a stand-in ``ray`` module (Ray is an optional extra, not installed in
the test environment): a local Ray binds to the loopback and has no dashboard; a ``ray://`` address
without the Ray client is a one-line ExperimentError naming what to install, also through the CLI (exit
2, no traceback); Ray missing altogether is an ExperimentError too."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from celltx_mfg.cli import app
from celltx_mfg.experiments import ExperimentError
from celltx_mfg.experiments.backends import RayBackend, open_backend

from .conftest import SCENARIOS, shrink


class _Ref:
    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args


class FakeRay(types.ModuleType):
    """Enough of Ray's API for RayBackend: tasks run when their result is asked for."""

    def __init__(self, init_error: BaseException | None = None) -> None:
        super().__init__("ray")
        self.inits: list[dict[str, Any]] = []
        self.on = False
        self.init_error = init_error

    def is_initialized(self) -> bool:
        return self.on

    def init(self, address: str | None = None, **kw: Any) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits.append({"address": address, **kw})
        self.on = True

    def remote(self, **_opts: Any) -> Any:
        return lambda fn: types.SimpleNamespace(remote=lambda *a: _Ref(fn, a))

    def put(self, x: Any) -> Any:
        return x

    def wait(self, refs: list[Any], num_returns: int = 1) -> tuple[list[Any], list[Any]]:
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: _Ref) -> Any:
        return ref.fn(*ref.args)

    def cancel(self, ref: Any, force: bool = False) -> None:
        pass

    def shutdown(self) -> None:
        self.on = False


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> FakeRay:
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    for name in ("ray.util", "ray.util.client", "grpc"):  # the Ray client is not installed
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    return ray


def _with_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ray.util", "ray.util.client", "grpc"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))


def test_local_ray_binds_to_loopback(fake_ray: FakeRay) -> None:
    backend = open_backend("ray", 3)
    assert len(fake_ray.inits) == 1
    kw = fake_ray.inits[0]
    assert kw["address"] is None and kw["_node_ip_address"] == "127.0.0.1"
    assert kw["include_dashboard"] is False and kw["num_cpus"] == 3
    backend.close()
    assert not fake_ray.on


def test_ray_address_without_client_names_the_install(fake_ray: FakeRay) -> None:
    with pytest.raises(ExperimentError) as exc:
        RayBackend(2, "ray://h:10001")
    msg = str(exc.value)
    assert "pip install 'celltx-mfg[ray]'" in msg and "ray[client]" in msg and "\n" not in msg
    assert fake_ray.inits == []


def test_ray_address_with_client_ships_the_package(fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_client(monkeypatch)
    RayBackend(2, "ray://h:10001").close()
    kw = fake_ray.inits[0]
    assert kw["address"] == "ray://h:10001" and "_node_ip_address" not in kw
    assert Path(kw["runtime_env"]["py_modules"][0]).name == "celltx_mfg"


@pytest.mark.parametrize(("error", "words"), [
    (ModuleNotFoundError("No module named 'grpc'"), "celltx-mfg[ray]"),
    (ConnectionError("could not reach h:10001"), "cannot connect to ray://h:10001"),
])
def test_errors_inside_ray_init_become_experiment_errors(monkeypatch: pytest.MonkeyPatch, error: Exception,
                                                         words: str) -> None:
    monkeypatch.setitem(sys.modules, "ray", FakeRay(init_error=error))
    _with_client(monkeypatch)
    with pytest.raises(ExperimentError, match=words.replace("[", r"\[").replace("]", r"\]")):
        RayBackend(2, "ray://h:10001")


def test_ray_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # type: ignore[arg-type]
    with pytest.raises(ExperimentError, match=r"needs Ray \(pip install 'celltx-mfg\[ray\]'\)"):
        open_backend("ray", 2)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(shrink(SCENARIOS / "baseline.yaml", horizon=90, warmup=20)[1])
    return p


def test_cli_ray_address_without_client_is_one_line_exit_2(fake_ray: FakeRay, small: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["sweep", str(small), "--vary", "suites=8,12", "-r", "1", "--db",
                                   str(tmp_path / "r.db"), "--backend", "ray", "--ray-address", "ray://h:10001"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "celltx-mfg[ray]" in lines[0] and "ray[client]" in lines[0]


def test_cli_sweep_on_local_fake_ray(fake_ray: FakeRay, small: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["sweep", str(small), "--vary", "suites=8,12", "-r", "1", "--db",
                                   str(tmp_path / "r.db"), "--backend", "ray", "--jobs", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert fake_ray.inits[0]["_node_ip_address"] == "127.0.0.1"
