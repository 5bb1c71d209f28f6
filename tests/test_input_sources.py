"""Where a scenario's inputs come from (issue 10): a base's referral CSV read next to the base, the
referral CSV's limits and date forms, and demand the model can always finish. Each case is handled or
refused with one clear line, never read from the wrong file, a traceback or an unbounded run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from celltx_mfg.config import load_scenario, scenario_referral_days

from .conftest import SCENARIOS
from .reliability import note

pytest_plugins = ["tests.conftest_reliability"]

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
