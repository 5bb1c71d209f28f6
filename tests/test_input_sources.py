"""Where a scenario's inputs come from (issue 10): a base's referral CSV read next to the base, the
referral CSV's limits and date forms, and demand the model can always finish. Each case is handled or
refused with one clear line, never read from the wrong file, a traceback or an unbounded run."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg.cli import app
from celltx_mfg.config import MAX_REFERRAL_CSV_BYTES, ScenarioError, load_scenario, scenario_referral_days

from .conftest import SCENARIOS
from .reliability import note

pytest_plugins = ["tests.conftest_reliability"]

runner = CliRunner()
BASE: dict[str, Any] = yaml.safe_load((SCENARIOS / "baseline.yaml").read_text())


def small(**demand: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d.update(name="small", horizon_days=60, warmup_days=10)
    d["demand"] = {**d["demand"], **demand}
    return d


def test_base_referral_csv_is_read_next_to_the_base(tmp_path: Path) -> None:
    """A what-if in folder `Y/` whose base in `X/` names `referrals_csv: r.csv` reads `X/r.csv` (before:
    silently `Y/r.csv`); a CSV the what-if names itself is still read next to the what-if."""
    x, y = tmp_path / "X", tmp_path / "Y"
    x.mkdir(), y.mkdir()
    (x / "r.csv").write_text("day\n1\n2\n")
    (y / "r.csv").write_text("day\n5\n")
    (x / "base.yaml").write_text(yaml.safe_dump(small(per_year=0, referrals_csv="r.csv")))
    (y / "whatif.yaml").write_text(yaml.safe_dump({"base": "../X/base.yaml", "name": "w"}))
    sc, text = load_scenario(y / "whatif.yaml")
    note(f"days {scenario_referral_days(sc)}; stored path {sc.demand.referrals_csv}")
    assert scenario_referral_days(sc) == [1.0, 2.0]
    assert sc.demand.referrals_csv == "../X/r.csv"
    (y / "own.yaml").write_text(yaml.safe_dump({"base": "../X/base.yaml", "demand": {"referrals_csv": "r.csv"}}))
    assert scenario_referral_days(load_scenario(y / "own.yaml")[0]) == [5.0]


def csv_scenario(folder: Path, csv_text: str | bytes) -> Path:
    csv_path = folder / "r.csv"
    csv_path.write_bytes(csv_text if isinstance(csv_text, bytes) else csv_text.encode())
    (folder / "s.yaml").write_text(yaml.safe_dump(small(per_year=0, referrals_csv="r.csv")))
    return folder / "s.yaml"


def validate(path: Path) -> Any:
    return runner.invoke(app, ["validate", str(path)])


def test_referral_date_with_a_time_zone_is_a_clear_error(tmp_path: Path) -> None:
    """A referral date-time with a time zone (`2027-01-05T10:00:00Z`) is refused in one line naming the
    row and saying why (before: TypeError traceback comparing aware and naive date-times)."""
    r = validate(csv_scenario(tmp_path, "date\n2027-01-04\n2027-01-05T10:00:00Z\n"))
    note(f"exit {r.exit_code}: {r.output.strip().splitlines()[-1]}")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "line 3" in r.output and "time zone" in r.output and "demand.referrals_csv" in r.output


def test_referral_csv_row_limit(tmp_path: Path) -> None:
    """A referral log of more than 1,000,000 rows is refused at once with one line saying the limit."""
    t0 = time.perf_counter()
    r = validate(csv_scenario(tmp_path, "day\n" + "1\n" * 1_000_001))
    took = time.perf_counter() - t0
    note(f"exit {r.exit_code} in {took:.1f} s: {r.output.strip().splitlines()[-1]}")
    assert r.exit_code == 2 and "1,000,000 rows" in r.output and took < 20


def test_referral_csv_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A referral log larger than the limit (64 MB; lowered here to 1 kB so the test stays small) is
    refused after reading at most one byte past the limit, never read whole (before: /dev/zero-like or huge
    files ran out of memory)."""
    import celltx_mfg.config as config

    monkeypatch.setattr(config, "MAX_REFERRAL_CSV_BYTES", 1000)
    path = csv_scenario(tmp_path, "day\n" + "1\n" * 600)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    note(e.value.render().splitlines()[-1])
    assert "more than 1,000 bytes" in e.value.render() and e.value.problems[0][0] == "demand.referrals_csv"
    assert config.MAX_REFERRAL_CSV_BYTES == 1000 and MAX_REFERRAL_CSV_BYTES == 64_000_000


@pytest.mark.parametrize("port", ["99999", "0", "-5"])
def test_dashboard_port_out_of_range_is_exit_2(port: str) -> None:
    """`celltx dashboard --port 99999` exits 2 naming `--port` and its range before starting Streamlit
    (before: Streamlit's traceback)."""
    r = runner.invoke(app, ["dashboard", "--db", ":memory:", "--port", port])
    note(f"exit {r.exit_code}: {' '.join(r.output.split())[:200]}")
    assert r.exit_code == 2 and "--port" in r.output and "Traceback" not in r.output and "dashboard on" not in r.output
