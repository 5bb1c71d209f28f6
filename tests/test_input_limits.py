"""Input that `celltx validate` accepts, taken to its limits (issue 10): the schema's longest horizon,
FIFOs and devices where a file is expected, multi-megabyte scenarios, names full of rich markup and
terminal escape codes, and shares and costs as large as a float allows. Each is either handled (exit 0,
finite output, linear time) or refused with a clear exit 2, never a crash, a hang or a misleading print.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from celltx_mfg.cli import app
from celltx_mfg.config import ScenarioError, load_scenario, parse_scenario

from .conftest import SCENARIOS
from .reliability import note

pytest_plugins = ["tests.conftest_reliability"]

runner = CliRunner()
CELLTX = str(Path(sys.executable).parent / "celltx")
BASE: dict[str, Any] = yaml.safe_load((SCENARIOS / "baseline.yaml").read_text())
MAX_HORIZON = 36_500  # config.Scenario.horizon_days le=


def scenario_file(folder: Path, name: str = "small", horizon: float = 60, warmup: float = 10, **top: Any) -> Path:
    d = copy.deepcopy(BASE)
    d.update(name=name, horizon_days=horizon, warmup_days=warmup)
    d.update(top)
    p = folder / f"{hashlib.sha256(name.encode()).hexdigest()[:12]}.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    return p


# -------------------------------------------------------------------------------- longest horizon
def fits(cal: Any, s: float, duration: float) -> bool:
    """``s`` is in one of the calendar's working windows and a task of ``duration`` (at most the longest
    shift) started then ends inside it, allowing for float spacing at that time."""
    need, tol = min(duration, cal.longest), 1e-12 + s * 1e-15
    for day in (math.floor(s) - 1, math.floor(s)):
        for ws, we in cal._windows_of_day(day):
            if ws <= s <= we + tol and s + need <= we + tol:
                return True
    return False


CALENDARS = {f"{p.stem}.{name}": (p, name) for p in sorted(SCENARIOS.glob("*.yaml"))
             for name in load_scenario(p)[0].calendars}


@pytest.mark.parametrize("which", sorted(CALENDARS))
def test_calendar_finds_windows_up_to_the_longest_horizon(which: str) -> None:
    """Every calendar of the shipped scenarios finds a working window for tasks of any length on every
    tenth day up to day 36,500 (the schema's maximum horizon), at any time of day; before, arithmetic below
    float spacing failed past day 32,768 ("no working window in two weeks")."""
    path, name = CALENDARS[which]
    cal = load_scenario(path)[0].calendar(name)
    longest = cal.longest
    checked = 0
    for day in range(0, MAX_HORIZON + 1, 10):
        for frac in (0.0, 7 / 24, 8 / 24, 0.5, 23 / 24):
            for duration in (0.0, 0.1, longest, 2 * longest):
                t = day + frac
                s = cal.next_start(t, duration)
                assert t <= s < t + 15 and fits(cal, s, duration), (t, duration, s)
                checked += 1
    note(f"{checked:,} asks answered, days 0-{MAX_HORIZON:,}")


@settings(max_examples=300, deadline=None)
@given(t=st.floats(min_value=30_000, max_value=MAX_HORIZON), duration=st.floats(min_value=0, max_value=1))
def test_calendar_next_start_property_far_out(t: float, duration: float) -> None:
    """Any time between day 30,000 and 36,500 and any task up to a day long: the day-shift calendar finds
    a start at or after it, on shift, within two weeks."""
    cal = load_scenario(SCENARIOS / "baseline.yaml")[0].calendar("day_shift")
    s = cal.next_start(t, duration)
    assert t <= s < t + 15 and fits(cal, s, duration)


def test_century_horizon_runs(tmp_path: Path) -> None:
    """`celltx run` of a scenario with the maximum horizon (36,500 days, one referral a year): exit 0 with
    KPIs."""
    demand = dict(BASE["demand"], per_year=1)
    demand.pop("monthly_ramp", None)
    f = scenario_file(tmp_path, "century", horizon=MAX_HORIZON, warmup=0, demand=demand)
    t0 = time.monotonic()
    r = runner.invoke(app, ["run", str(f), "--db", str(tmp_path / "c.db"), "--json"])
    assert r.exit_code == 0, r.output[-2000:]
    kpis = json.loads(r.stdout)["kpis"]
    note(f"{time.monotonic() - t0:.1f} s, {kpis['patients_referred']:.0f} referred, "
         f"{kpis['patients_infused']:.0f} infused")


# ----------------------------------------------------------------------------- FIFOs and devices
def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CELLTX, "validate", str(path)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("where", ["scenario", "base", "referrals_csv"])
def test_fifo_is_refused_not_read(where: str, tmp_path: Path) -> None:
    """A FIFO named as the scenario file, as a what-if's `base`, or as `demand.referrals_csv`: `celltx
    validate` (a real process, 30 s limit) exits 2 at once naming the field and saying it is a FIFO,
    instead of waiting for a writer for ever."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    if where == "scenario":
        target = fifo
    elif where == "base":
        target = tmp_path / "what_if.yaml"
        target.write_text("base: pipe.yaml\nname: what_if\n")
    else:
        target = scenario_file(tmp_path, "csv", demand=dict(BASE["demand"], referrals_csv=str(fifo)))
    p = _validate(target)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "FIFO" in p.stderr and "Traceback" not in p.stderr, p.stderr
    if where != "scenario":
        assert ("base" if where == "base" else "demand.referrals_csv") in p.stderr
    note(" ".join(p.stderr.split())[:200])


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_as_scenario_is_refused(device: str) -> None:
    """A device as the scenario file (/dev/zero never ends, /dev/null is empty): exit 2 saying it is a
    device, not a regular file."""
    p = _validate(Path(device))
    assert p.returncode == 2 and "character device" in p.stderr, p.stderr
    note(" ".join(p.stderr.split())[:200])


# ------------------------------------------------------------------------------ large scenarios
def _big(kind: str, n: int) -> dict[str, Any]:
    """The baseline with ``n`` steps (the product's steps repeated, holds renamed along), sites or QC tests."""
    d = copy.deepcopy(BASE)
    if kind == "steps":
        proc = next(iter(d["products"].values()))
        orig, steps = proc["steps"], []
        for k in range(n // len(proc["steps"])):
            for s in orig:
                s = copy.deepcopy(s)
                s["name"] = f"{s['name']}_{k}"
                if "hold_until" in s:
                    s["hold_until"] = {r: f"{u}_{k}" for r, u in s["hold_until"].items()}
                steps.append(s)
        proc["steps"] = steps
    elif kind == "sites":
        d["sites"] = [dict(copy.deepcopy(BASE["sites"][0]), name=f"site_{i}") for i in range(n)]
    else:
        d["qc"]["tests"] = [dict(copy.deepcopy(BASE["qc"]["tests"][1]), name=f"test_{i}") for i in range(n)]
    return d


@pytest.mark.parametrize("kind", ["steps", "sites", "qc_tests"])
def test_validation_time_is_linear_in_size(kind: str) -> None:
    """Validating (after YAML parsing) a scenario with 8,000 steps, or 20,000 sites or QC tests, takes well
    under 3 s: before, the step checks scanned every step for every step's holds (cubic: a 4.8 MB scenario
    took 206 s), and names were counted by a list scan per name (quadratic)."""
    big = 8_000 if kind == "steps" else 20_000
    times = {}
    for n in (big // 4, big):
        data = _big(kind, n)
        t0 = time.process_time()
        sc = parse_scenario(data, f"<{kind}>")
        times[n] = time.process_time() - t0
        assert sc.name == BASE["name"]
    note(f"{kind}: {big // 4:,} in {times[big // 4]:.2f} s, {big:,} in {times[big]:.2f} s")
    assert times[big] < 3.0


@pytest.mark.slow
def test_a_five_megabyte_scenario_validates(tmp_path: Path) -> None:
    """`celltx validate` of a 4.8 MB scenario (a product of some 23,000 steps): exit 0 within a minute,
    the time going to YAML parsing."""
    f = tmp_path / "big.yaml"
    text = yaml.safe_dump(_big("steps", 23_000), sort_keys=False)
    f.write_text(text)
    t0 = time.monotonic()
    p = subprocess.run([CELLTX, "validate", str(f)], capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-2000:]
    note(f"{len(text) / 1e6:.1f} MB validated in {took:.1f} s")
    assert took < 60


# ----------------------------------------------------------------------------------------- names
NAME = "a[/]b [bold]x[/bold] \x1b[31mred\x1b]0;title\x07"
SHOWN = "a[/]b [bold]x[/bold] \\x1b[31mred\\x1b]0;title\\x07"


@pytest.mark.parametrize("cmd", ["run", "check", "compare", "plan", "sweep", "validate"])
def test_markup_and_escape_codes_in_a_name_are_printed_as_text(cmd: str, tmp_path: Path) -> None:
    """A scenario named with rich markup and terminal escape codes: every command that prints the name
    exits as usual (`check`: 1, its requirement not met), shows the markup as written (not interpreted, no crash after storing) and the control
    characters escaped, never sent raw to the terminal."""
    f = scenario_file(tmp_path, NAME)
    other = scenario_file(tmp_path, "plain")
    db = str(tmp_path / "n.db")
    args = {
        "run": ["run", str(f), "--db", db],
        "check": ["check", str(f), "--require", "patients_infused>=1e9"],  # fails: the name is printed
        "compare": ["compare", str(other), str(f), "-r", "2", "--no-store"],
        "plan": ["plan", str(f), "--lever", "suites", "--min", "2", "--max", "2", "-r", "1",
                 "--require", "patients_infused>=0"],
        "sweep": ["sweep", str(f), "-r", "1", "--no-store"],
        "validate": ["validate", str(f)],
    }[cmd]
    r = runner.invoke(app, args)
    assert r.exit_code == (1 if cmd == "check" else 0), r.output[-3000:]
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert SHOWN in r.output, r.output[-3000:]
    assert "\x1b" not in r.output and "\x07" not in r.output
    note(f"{cmd}: exit {r.exit_code}, name shown as {SHOWN!r}")


def test_printable_keeps_text_and_escapes_controls() -> None:
    """The one rule for what reaches a terminal: printable text (any script) unchanged, lines kept, every
    control or invisible character shown as its escape."""
    from celltx_mfg.cli_common import printable

    assert printable("Zürich 北京 ok [/]") == "Zürich 北京 ok [/]"
    assert printable("a\nb\tc") == "a\nb\tc"
    assert printable("\x1b[2J\x07\x00\u202e\u200b") == "\\x1b[2J\\x07\\x00\\u202e\\u200b"


# -------------------------------------------------------------------------------- shares and costs
def _edited(path: str, value: float) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    if path == "sites.0.share":
        d["sites"][0]["share"] = value
    elif path == "demand.product_mix":
        d["demand"]["product_mix"] = {next(iter(d["products"])): value}
    elif path == "demand.urgency_mix":
        d["demand"]["urgency_mix"] = {"standard": value}
    elif path.startswith("costs."):
        d["costs"] = {path.split(".")[1]: value}
    elif path == "qc.cost_per_batch":
        d["qc"]["cost_per_batch"] = value
    else:
        next(iter(d["products"].values()))["materials_cost"] = value
    return d


SHARE_AND_COST_FIELDS = ["sites.0.share", "demand.product_mix", "demand.urgency_mix", "costs.labour_per_hour",
                         "costs.facility_per_day", "costs.qc_per_batch", "qc.cost_per_batch", "materials_cost"]


@pytest.mark.parametrize("path", SHARE_AND_COST_FIELDS)
def test_huge_shares_and_costs_are_refused(path: str) -> None:
    """A share or cost of 1e308 (finite, but sums of two overflow to inf: every patient sent to the last
    site, costs printed as `Infinity`, invalid JSON) is a validation problem at its field."""
    with pytest.raises(ScenarioError) as e:
        parse_scenario(_edited(path, 1e308))
    where = [loc for loc, _, _ in e.value.problems]
    assert any(loc.endswith(path.split(".")[-1]) or loc.startswith(path) for loc in where), where
    note(e.value.render().splitlines()[1].strip()[:160])


def test_largest_allowed_shares_and_costs_give_finite_json(tmp_path: Path) -> None:
    """Shares of 1e9 and costs of 1e12 (the bounds) run, and the JSON printed is finite (no Infinity)."""
    d = copy.deepcopy(BASE)
    for s in d["sites"]:
        s["share"] = 1e9
    d["costs"] = {"labour_per_hour": 1e12, "facility_per_day": 1e12, "qc_per_batch": 1e12}
    d["qc"]["cost_per_batch"] = 1e12
    next(iter(d["products"].values()))["materials_cost"] = 1e12
    d.update(name="dear", horizon_days=60, warmup_days=10)
    f = tmp_path / "dear.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    r = runner.invoke(app, ["run", str(f), "--db", str(tmp_path / "d.db"), "--json"])
    assert r.exit_code == 0, r.output[-2000:]

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the JSON")

    kpis = json.loads(r.stdout, parse_constant=refuse)["kpis"]
    note(f"cost_per_infused_patient {kpis.get('cost_per_infused_patient')!r}")
