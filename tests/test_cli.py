"""Every CLI command end to end, on real files and a real SQLite database; bad input -> exit 2, one
screen, no traceback."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from celltx_mfg.cli import app

from .conftest import SCENARIOS, short_baseline_file

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_baseline_file(tmp_path_factory.mktemp("sc"), horizon=150)


def _ok(result) -> None:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def _bad(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 40, "one screen"
    for n in needles:
        assert n in result.output, (n, result.output)


def _db_dump(db: Path) -> list:
    """Every row of every table except wall-clock timestamps of the run."""
    con = sqlite3.connect(db)
    out = []
    for (name,) in con.execute("select name from sqlite_master where type='table' order by name"):
        cols = [r[1] for r in con.execute(f"pragma table_info({name})")]
        clock = {"started", "finished", "created", "package_version"}
        if name == "run":  # the run row's own digest covers its wall-clock times
            clock |= {"digest", "chain_head"}
        if name == "ledger":  # an entry's time, and the seals over it and over the run's times
            clock |= {"time", "digest", "head"}
        keep = [c for c in cols if c not in clock]
        sel = ",".join(f'"{c}"' for c in keep)
        rows = con.execute(f'select {sel} from "{name}"').fetchall()
        out.append((name, sorted(rows, key=repr)))
    con.close()
    return out


def test_run_json_shape_and_store(small: Path, tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    r = runner.invoke(app, ["run", str(small), "--db", str(db), "--json"])
    _ok(r)
    out = json.loads(r.stdout)
    assert out["scenario"] == "baseline_small" and len(out["runs"]) == 1
    k = out["kpis"]
    for key in ("patients_referred", "patients_infused", "patients_lost", "batches_started", "batches_failed",
                "throughput_per_year", "cost_per_infused_patient", "utilisation"):
        assert key in k
    assert set(k["vein_to_vein_days"]) >= {"mean", "p50", "p90", "max"}
    assert set(k["referral_to_infusion_days"]) == {"mean", "p50", "p90", "max"}
    assert k["referral_to_infusion_days"]["mean"] >= k["vein_to_vein_days"]["mean"]  # the slot wait too
    assert set(k["labour_hours"]) == {"paid", "hands_on"} and k["labour_hours"]["paid"] > k["labour_hours"]["hands_on"]
    assert set(k["manufacturing_days"]) >= {"mean", "p50", "p90"}
    assert set(k["wait_for_slot_days"]) >= {"mean", "p90"} and set(k["wait_for_suite_days"]) >= {"mean", "p90"}
    assert k["patients_referred"] == k["patients_infused"] + k["patients_lost"] + k["patients_in_progress"]
    # the stored run gives the same KPIs
    r2 = runner.invoke(app, ["kpis", "--db", str(db), "--run", str(out["runs"][0]), "--json"])
    _ok(r2)
    assert json.loads(r2.stdout)["kpis"] == k


def test_replications_give_intervals(small: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", str(small), "--db", str(tmp_path / "r.db"), "-r", "3", "--json"])
    _ok(r)
    out = json.loads(r.stdout)
    assert len(out["runs"]) == 3
    assert out["kpis"]["ci95"]["vein_to_vein_days"]["mean"] is not None


def test_same_seed_same_database_different_seed_different(small: Path, tmp_path: Path) -> None:
    dbs = []
    for name, seed in (("x", 5), ("y", 5), ("z", 6)):
        db = tmp_path / f"{name}.db"
        _ok(runner.invoke(app, ["run", str(small), "--db", str(db), "--seed", str(seed), "--json"]))
        dbs.append(_db_dump(db))
    assert dbs[0] == dbs[1]
    assert dbs[0] != dbs[2]


def test_table_output(small: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", str(small), "--db", str(tmp_path / "t.db")])
    _ok(r)
    assert "vein_to_vein_days.p90" in r.output and "patients_infused" in r.output


def test_validate(small: Path, tmp_path: Path) -> None:
    _ok(runner.invoke(app, ["validate", str(small)]))
    data = yaml.safe_load(small.read_text())
    cases = {
        "missing.yaml": (lambda d: d.pop("qc"), ["qc", "required field is missing"]),
        "type.yaml": (lambda d: d["resources"].__setitem__("suites", "many"), ["resources.suites", "'many'"]),
        "unknown.yaml": (lambda d: d.__setitem__("horizon_dayz", 3), ["horizon_dayz", "unknown key"]),
        "negative.yaml": (
            lambda d: d["products"]["car_t_lenti"]["steps"][3].__setitem__("duration", {"dist": "fixed", "value": -1}),
            ["products.car_t_lenti.steps.3.duration.value", "greater than or equal to 0"],
        ),
        "dist.yaml": (
            lambda d: d["sites"][0].__setitem__("inbound_transit", {"dist": "weibul", "k": 1}),
            ["sites.0.inbound_transit", "fixed, exponential"],
        ),
    }
    for fname, (mutate, needles) in cases.items():
        d = yaml.safe_load(yaml.safe_dump(data))
        mutate(d)
        p = tmp_path / fname
        p.write_text(yaml.safe_dump(d))
        _bad(runner.invoke(app, ["validate", str(p)]), fname, *needles)
        db = tmp_path / f"{fname}.db"
        _bad(runner.invoke(app, ["run", str(p), "--db", str(db)]), *needles)
        assert not db.exists() or _count_runs(db) == 0, "nothing written for a bad file"
    _bad(runner.invoke(app, ["validate", str(tmp_path / "nowhere.yaml")]), "cannot read")
    _bad(runner.invoke(app, ["run", str(tmp_path)]), "directory")


def _count_runs(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("select count(*) from run").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_check_gate(small: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["check", str(small), "--require", "patients_referred>=1", "--require", "vein_to_vein_days.p90<=1000"])
    _ok(r)
    assert r.output.count("PASS") == 2
    r = runner.invoke(app, ["check", str(small), "--require", "vein_to_vein_days.p90<=1"])
    assert r.exit_code == 1 and "FAIL" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["check", str(small), "--require", "referral_to_infusion_days.p90<=1000",
                            "--require", "referral_to_infusion_days.p50<=1"])
    assert r.exit_code == 1 and "PASS  referral_to_infusion_days.p90<=1000" in r.output
    assert "FAIL  referral_to_infusion_days.p50<=1" in r.output
    _bad(runner.invoke(app, ["check", str(small), "--require", "vein_to_vein_days.p90 about 3"]), "--require")
    _bad(runner.invoke(app, ["check", str(small), "--require", "vein_to_vien_days.p90<=3"]), "vein_to_vein_days")


def test_export_and_kpis_errors(small: Path, tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    _ok(runner.invoke(app, ["run", str(small), "--db", str(db)]))
    for fmt in ("csv", "parquet"):
        out = tmp_path / fmt
        _ok(runner.invoke(app, ["export", "--db", str(db), "--format", fmt, "--out", str(out)]))
        files = {p.stem for p in out.iterdir()}
        assert {"patient", "batch", "step_event", "qc_test", "deviation"} <= files or len(files) >= 9
    _bad(runner.invoke(app, ["export", "--db", str(db), "--format", "xlsx"]), "'xlsx' is not one of", "'parquet'")
    _bad(runner.invoke(app, ["kpis", "--db", str(tmp_path / "none.db")]), "does not exist")
    _bad(runner.invoke(app, ["kpis", "--db", str(db), "--run", "999"]), "999")
    coi = sqlite3.connect(db).execute("select coi from batch where status='infused' limit 1").fetchone()[0]
    target = tmp_path / "one.csv"
    _ok(runner.invoke(app, ["export", "--db", str(db), "--batch", coi, "--out", str(target)]))
    text = target.read_text()
    assert coi in text and "release" in text.lower()


def test_verify(small: Path, tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    _ok(runner.invoke(app, ["run", str(small), "--db", str(db)]))
    _ok(runner.invoke(app, ["verify", "--db", str(db)]))
    con = sqlite3.connect(db)
    trig = [r[0] for r in con.execute("select name from sqlite_master where type='trigger' and tbl_name='step_event'")]
    for t in trig:
        con.execute(f"drop trigger {t}")
    con.execute("update step_event set \"end\" = \"end\" + 1 where row_seq = 5")
    con.commit()
    con.close()
    r = runner.invoke(app, ["verify", "--db", str(db)])
    assert r.exit_code == 1 and "step_event" in r.output


def test_unwritable_database(small: Path, tmp_path: Path) -> None:
    _bad(runner.invoke(app, ["run", str(small), "--db", str(tmp_path)]), "database")


def test_run_stores_the_same_runs_for_any_jobs(tmp_path: Path) -> None:
    """`celltx run --jobs 2` goes through the one replication path: same runs, same KPIs as one job."""
    from .test_golden import db_digest

    outs = []
    for jobs in (1, 2):
        db = tmp_path / f"j{jobs}.db"
        res = CliRunner().invoke(app, ["run", str(SCENARIOS / "baseline.yaml"), "--db", str(db), "-r", "3",
                                       "--jobs", str(jobs), "--json"])
        assert res.exit_code == 0, res.output
        outs.append((json.loads(res.stdout), db_digest(db)))
    (one, d1), (two, d2) = outs
    assert one.pop("ledger_head") != two.pop("ledger_head")  # each store's own ledger: entry times differ
    assert one == two and one["runs"] == [1, 2, 3]
    assert d1 == d2


def test_check_takes_jobs_and_refuses_a_bad_requirement_before_simulating(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    res = CliRunner().invoke(app, ["check", str(SCENARIOS / "baseline.yaml"), "--require", "vein_to_vein_days.p90<=",
                                   "--db", str(db), "-r", "2", "--jobs", "2"])
    assert res.exit_code == 2 and "--require" in res.output
    assert not db.exists(), "a malformed requirement must be refused before anything is simulated or stored"
    res = CliRunner().invoke(app, ["check", str(SCENARIOS / "baseline.yaml"), "--require",
                                   "patients_referred>=1", "-r", "2", "--jobs", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True


def test_run_refuses_an_unknown_backend(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", str(SCENARIOS / "baseline.yaml"), "--db", str(tmp_path / "b.db"),
                                   "--backend", "threads"])
    assert res.exit_code == 2 and "'threads' is not one of" in res.output and "'ray'" in res.output

