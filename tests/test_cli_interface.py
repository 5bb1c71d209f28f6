"""The command line's surface: --version, shell completion, choices listed in --help, exit codes in the
help epilog, and `celltx init`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from celltx_mfg import __version__
from celltx_mfg.cli import app
from celltx_mfg.resources import dashboard_app, example_scenarios

from .conftest import ROOT, SCENARIOS

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;]*m")


WIDE = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def _flat(text: str) -> str:
    return " ".join(ANSI.sub("", text).split())


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env=WIDE)
    assert res.exit_code == 0, res.output
    return _flat(res.output)


def test_version_flag() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"celltx {__version__}"
    assert runner.invoke(app, ["version"]).stdout.strip() == __version__


def test_shell_completion_is_enabled() -> None:
    text = _help()
    assert "--install-completion" in text and "--show-completion" in text


def test_exit_codes_in_the_app_help() -> None:
    text = _help()
    for code in ("0 success", "1 a requirement", "2 bad input", "130 interrupted"):
        assert code in text, code


@pytest.mark.parametrize("command", ["run", "check", "sweep", "compare", "plan", "bottleneck"])
def test_backend_choices_are_listed_and_checked(command: str) -> None:
    assert "local|ray" in _help(command)


def test_unknown_backend_and_format_exit_2() -> None:
    res = runner.invoke(app, ["sweep", str(SCENARIOS / "baseline.yaml"), "--backend", "threads", "--no-store"],
                        env=WIDE)
    assert res.exit_code == 2 and "'threads' is not one of 'local', 'ray'" in _flat(res.output)
    assert "csv|parquet" in _help("export")
    res = runner.invoke(app, ["export", "--format", "xlsx"], env=WIDE)
    assert res.exit_code == 2 and "'xlsx' is not one of 'csv', 'parquet'" in _flat(res.output)


def test_resources_found_from_the_checkout() -> None:
    assert dashboard_app().name == "Overview.py" and (dashboard_app().parent / "pages").is_dir()
    names = [p.name for p in example_scenarios()]
    assert names[0] == "baseline.yaml" and sorted(names) == sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    assert dashboard_app().read_bytes() == (ROOT / "dashboards" / "Overview.py").read_bytes()


def test_init_writes_the_examples_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "new" / "scenarios"
    res = runner.invoke(app, ["init", str(target)])
    assert res.exit_code == 0, res.output
    shipped = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    assert sorted(p.name for p in target.iterdir()) == shipped
    assert (target / "baseline.yaml").read_text() == (SCENARIOS / "baseline.yaml").read_text()
    # the what-ifs name their base relative to themselves: the copied set validates as it is
    assert runner.invoke(app, ["validate", *(str(target / n) for n in shipped)]).exit_code == 0

    (target / "baseline.yaml").write_text("# edited\n")
    res = runner.invoke(app, ["init", str(target)])
    assert res.exit_code == 2 and "--force" in res.output and "baseline.yaml" in res.output
    assert (target / "baseline.yaml").read_text() == "# edited\n"
    res = runner.invoke(app, ["init", str(target), "--force"])
    assert res.exit_code == 0, res.output
    assert (target / "baseline.yaml").read_text() == (SCENARIOS / "baseline.yaml").read_text()


def test_init_refuses_a_file_as_folder(tmp_path: Path) -> None:
    f = tmp_path / "plain"
    f.write_text("x")
    res = runner.invoke(app, ["init", str(f)])
    assert res.exit_code == 2 and "not a folder" in res.output
