"""Every command's --json output validates against docs/cli-output.schema.json, and the KPI objects keep
one shape (keys and value types) whatever the number of replications."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg.cli import app

from .conftest import ROOT, SCENARIOS

SCHEMA = json.loads((ROOT / "docs" / "cli-output.schema.json").read_text())
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A short baseline, a what-if on it, and a database of its runs."""
    d = tmp_path_factory.mktemp("schema")
    data = yaml.safe_load((SCENARIOS / "baseline.yaml").read_text())
    data.update(horizon_days=120, warmup_days=30, name="schema_small")
    small = d / "small.yaml"
    small.write_text(yaml.safe_dump(data, sort_keys=False))
    (d / "whatif.yaml").write_text("base: small.yaml\nname: schema_more_suites\nresources:\n  suites: 24\n")
    return {"small": small, "whatif": d / "whatif.yaml", "db": d / "s.db"}


def _json(args: list[str], code: int = 0) -> dict[str, Any]:
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == code, res.output
    return json.loads(res.stdout)


def _valid(obj: dict[str, Any]) -> None:
    """Valid against the whole schema and against the part naming this command (for a readable error)."""
    validator = jsonschema.Draft202012Validator
    validator.check_schema(SCHEMA)
    sub = {"$ref": f"#/$defs/{obj['command']}", "$defs": SCHEMA["$defs"]}
    errors = sorted(validator(sub).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:300]}" for e in errors[:5]]
    validator(SCHEMA).validate(obj)


def _leaf_types(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaf_types(value, f"{prefix}{key}."))
        elif value is not None:
            out[prefix + key] = type(value).__name__
    return out


def test_run_and_kpis_have_one_shape_for_any_replications(files: dict[str, Path]) -> None:
    db = str(files["db"])
    one = _json(["run", str(files["small"]), "--db", db, "-r", "1"])
    two = _json(["run", str(files["small"]), "--db", db, "-r", "2"])
    for out in (one, two):
        assert out["command"] == "run"
        _valid(out)
    k1, k2 = one["kpis"], two["kpis"]
    assert k1["ci95"] is None and k1["replications"] == 1
    assert isinstance(k2["ci95"], dict) and k2["replications"] == 2
    t1 = {k: v for k, v in _leaf_types(k1).items() if k != "replications"}
    t2 = {k: v for k, v in _leaf_types(k2).items() if k != "replications" and not k.startswith("ci95.")}
    shared = set(t1) & set(t2)
    assert {"patients_infused", "batches_started", "vein_to_vein_days.mean"} <= shared
    assert {k: t1[k] for k in shared} == {k: t2[k] for k in shared}  # counts are floats in both
    assert set(t1.values()) == {"float"}

    stored_one = _json(["kpis", "--db", db, "--run", str(one["runs"][0])])
    stored_all = _json(["kpis", "--db", db, "--scenario", "schema_small"])
    for out in (stored_one, stored_all):
        assert out["command"] == "kpis"
        _valid(out)
    assert _leaf_types(stored_one["kpis"]) == _leaf_types(k1)  # same shape; values agree to rounding
    assert stored_one["kpis"]["patients_infused"] == k1["patients_infused"] and stored_one["kpis"]["ci95"] is None
    assert stored_all["kpis"]["replications"] == 3


def test_check_json(files: dict[str, Path]) -> None:
    ok = _json(["check", str(files["small"]), "-r", "1", "--require", "patients_referred>=1"])
    bad = _json(["check", str(files["small"]), "-r", "2", "--require", "vein_to_vein_days.p90<=1"], code=1)
    assert ok["command"] == bad["command"] == "check"
    assert ok["ok"] is True and bad["ok"] is False
    _valid(ok)
    _valid(bad)


def test_sweep_compare_plan_json(files: dict[str, Path]) -> None:
    small, whatif = str(files["small"]), str(files["whatif"])
    sweep = _json(["sweep", small, "--vary", "resources.suites=18,20", "-r", "1", "--no-store"])
    precise = _json(["sweep", small, whatif, "-r", "2", "--no-store", "--precision", "patients_referred=1000",
                     "--max-replications", "3"])
    compare = _json(["compare", small, whatif, "-r", "2", "--no-store"])
    met = _json(["plan", small, "--lever", "suites", "--require", "patients_infused>=1", "--min", "18", "--max",
                 "19", "-r", "1"])
    unmet = _json(["plan", small, "--lever", "suites", "--require", "patients_lost<0", "--min", "18", "--max",
                   "18", "-r", "1"], code=1)
    levers = ["--lever", "suites:cost=400000:max=21", "--lever", "sites.*.apheresis_per_day:cost=150000",
              "--lever", "starts_per_day:max=5"]
    spent = _json(["plan", small, *levers, "--require", "patients_lost<0", "-r", "2", "--budget", "3"], code=1)
    plans = (met, unmet, spent)
    for out, command in ((sweep, "sweep"), (precise, "sweep"), (compare, "compare"), *((p, "plan") for p in plans)):
        assert out["command"] == command
        _valid(out)
    assert met["met"] is True and met["status"] == "met" and met["chosen"]["values"] == {"suites": 18}
    assert unmet["met"] is False and unmet["status"] == "not_met" and unmet["chosen"] is None
    assert spent["status"] == "budget_exhausted" and spent["evaluations"] == 3 and not spent["search_complete"]
    assert spent["levers"][1]["base"] == [1, 1, 1, 1] and spent["levers"][1]["cost_per_unit"] == 150000
    assert spent["guidance"] == []  # the budget ran out while the first step of each lever was being probed
    assert all(c["precision_met"] is True for c in precise["cells"])


def test_schema_rejects_the_old_shapes() -> None:
    """The shapes before the schema existed: no command key, no ci95/replications for one run."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert not validator.is_valid({"runs": [1], "kpis": {"patients_infused": 3}})
    assert not validator.is_valid({"command": "run", "scenario": "x", "runs": [1], "kpis": {"patients_infused": 3}})


def test_writing_commands_print_the_new_ledger_head(files: dict[str, Path], tmp_path: Path) -> None:
    """run, check, sweep, compare and plan name the store's new ledger head in "ledger_head" (null when
    they stored nothing); each write moves it on, every earlier head stays in the ledger (verify
    --expect-head passes), and a head not in it fails."""
    from celltx_mfg import store

    db = str(tmp_path / "heads.db")
    small, whatif = str(files["small"]), str(files["whatif"])
    heads = [_json(["run", small, "--db", db, "-r", "1"])["ledger_head"],
             _json(["check", small, "--db", db, "-r", "1", "--require", "patients_referred>=1"])["ledger_head"],
             _json(["sweep", small, "--db", db, "--vary", "resources.suites=18", "-r", "1"])["ledger_head"],
             _json(["compare", small, whatif, "--db", db, "-r", "2"])["ledger_head"],
             _json(["plan", small, "--db", db, "--lever", "suites", "--require", "patients_infused>=1", "--min", "18",
                    "--max", "18", "-r", "1"])["ledger_head"]]
    assert len(set(heads)) == 5 and all(isinstance(h, str) and len(h) == 64 for h in heads)
    assert heads[-1] == store.ledger_head(store.open_store(db, readonly=True))
    for head in heads:
        assert runner.invoke(app, ["verify", "--db", db, "--expect-head", head]).exit_code == 0
    assert runner.invoke(app, ["verify", "--db", db, "--expect-head", "ab" * 32]).exit_code == 1
    assert _json(["check", small, "-r", "1", "--require", "patients_referred>=1"])["ledger_head"] is None
    assert _json(["sweep", small, "--vary", "resources.suites=18", "-r", "1", "--no-store"])["ledger_head"] is None
    validator = jsonschema.Draft202012Validator(SCHEMA)
    no_head = {"command": "run", "scenario": "x", "runs": [1],
               "kpis": _json(["run", small, "--db", db, "-r", "1"])["kpis"]}
    assert not validator.is_valid(no_head) and validator.is_valid({**no_head, "ledger_head": heads[0]})
    assert not validator.is_valid({**no_head, "ledger_head": "not-a-head"})
