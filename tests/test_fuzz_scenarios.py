"""Bad scenario files against the loader, `celltx validate` and `celltx run` (GitHub issue 5).

The rule for every file, however broken: `validate` and `run` exit 2 with a message that names the file,
print no traceback, and write nothing to the database (no db file, or one with zero runs). A file that is
odd but valid may be accepted: then `run` must succeed and leave one whole, verifiable run.

Each attempt runs in a forked child with a time and memory limit, so a file that makes the loader or the
model hang or eat memory fails its case instead of the test session. Cases that once exposed a defect keep
a note of how they failed before the fix; the session's report lists every case (docs/reliability.md).
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import signal
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import celltx_mfg.analysis  # noqa: F401 - imported once here, not in every forked child
import celltx_mfg.simulate  # noqa: F401
import celltx_mfg.store  # noqa: F401
from celltx_mfg.cli import app
from celltx_mfg.config import MAX_FILE_BYTES, ScenarioError, load_scenario

from .conftest import SCENARIOS
from .reliability import note, store_problems

pytest_plugins = ["tests.conftest_reliability"]

runner = CliRunner()
BASELINE_TEXT = (SCENARIOS / "baseline.yaml").read_text(encoding="utf-8")
# a short horizon keeps an accepted run well under a second; the plant and rules are the baseline's
SHORT_TEXT = BASELINE_TEXT.replace("horizon_days: 365", "horizon_days: 120").replace(
    "warmup_days: 90", "warmup_days: 30")
BASE: dict[str, Any] = yaml.safe_load(SHORT_TEXT)
STEPS = ("products", "car_t_lenti", "steps")
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                   HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------- helpers

def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def isolated(fn: Callable[[], dict[str, Any]], timeout: float, extra_memory: int = 1_500_000_000) -> dict[str, Any]:
    """Run ``fn`` in a forked child with a wall-clock limit and an address-space limit ``extra_memory``
    above this process; returns its result, or {"crash": how} when it hung, ran out of memory or died."""
    rfd, wfd = os.pipe()
    limit = _vm_size() + extra_memory
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(rfd)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                out = fn()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out = {"crash": f"exception in the test child: {type(e).__name__}: {str(e)[:300]}"}
            os.write(wfd, json.dumps(out, default=str).encode())
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(wfd)
    t0 = time.monotonic()
    chunks = []
    os.set_blocking(rfd, False)
    status = None
    while True:
        try:
            while chunk := os.read(rfd, 1 << 16):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > timeout + 5:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.005)
    try:
        while chunk := os.read(rfd, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    os.close(rfd)
    elapsed = time.monotonic() - t0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        how = "hung (killed after the time limit)" if sig in (signal.SIGALRM, signal.SIGKILL) else f"died of signal {sig}"
        return {"crash": f"{how}, {elapsed:.1f} s", "elapsed": elapsed}
    try:
        out = json.loads(b"".join(chunks))
    except ValueError:
        return {"crash": f"child exited {os.WEXITSTATUS(status)} without a result", "elapsed": elapsed}
    out["elapsed"] = elapsed
    return out


def _invoke(args: list[str]) -> dict[str, Any]:
    r = runner.invoke(app, args)
    exc = r.exception
    leak = None if exc is None or isinstance(exc, SystemExit) else f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"code": r.exit_code, "out": r.output[-6000:], "leak": leak}


def attempt(path: Path, db: Path, timeout: float = 30.0) -> dict[str, Any]:
    """`celltx validate FILE` and `celltx run FILE --db DB -r 1 --json`, in a limited child."""
    return isolated(lambda: {"validate": _invoke(["validate", str(path)]),
                             "run": _invoke(["run", str(path), "--db", str(db), "--json", "-r", "1"])}, timeout)


def judge(o: dict[str, Any], path: Path, db: Path, must_refuse: bool = False, needles: tuple[str, ...] = ()) -> str:
    """Check an attempt against the rule; returns 'refused' or 'accepted' for the log."""
    assert "crash" not in o, f"{path.name}: {o['crash']}"
    v, r = o["validate"], o["run"]
    for what, res in (("validate", v), ("run", r)):
        assert res["leak"] is None, f"{what} {path.name}: uncaught {res['leak']}\n{res['out'][-2000:]}"
        assert "Traceback" not in res["out"], f"{what} {path.name}: traceback printed\n{res['out'][-2000:]}"
    if v["code"] == 2:
        assert r["code"] == 2, f"validate refused {path.name} but run exited {r['code']}: {r['out'][-1500:]}"
        for what, res in (("validate", v), ("run", r)):
            assert str(path) in res["out"], f"{what}: the message does not name the file:\n{res['out'][-1500:]}"
            assert len(res["out"].splitlines()) <= 40, f"{what}: more than one screen"
            for n in needles:
                assert n in res["out"], f"{what}: {n!r} not in the message:\n{res['out'][-1500:]}"
        runs, _ = store_problems(db)
        assert runs == 0, f"a refused file wrote {runs} run(s) to {db}"
        return "refused"
    assert not must_refuse, f"{path.name} was accepted (validate exit {v['code']}), it must be refused:\n{v['out'][-800:]}"
    assert v["code"] == 0, f"validate exited {v['code']}: {v['out'][-1500:]}"
    assert r["code"] == 0, f"accepted by validate, but run exited {r['code']}:\n{r['out'][-1500:]}"
    out = json.loads(r["out"].strip().splitlines()[-1])
    assert len(out["runs"]) == 1
    runs, problems = store_problems(db)
    assert runs == 1 and problems == [], problems
    return "accepted"


def _set(d: Any, path: tuple, value: Any) -> Any:
    d = copy.deepcopy(d)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return out
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_paths(v, prefix + (k,)))
    return out


def _get(d: Any, path: tuple) -> Any:
    for k in path:
        d = d[k]
    return d


ALL_PATHS = _paths(BASE)
NUMERIC_PATHS = [p for p in ALL_PATHS if isinstance(_get(BASE, p), (int, float)) and not isinstance(_get(BASE, p), bool)]


def _write(tmp: Path, name: str, content: str | bytes | dict) -> Path:
    p = tmp / name
    if isinstance(content, dict):
        p.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def _laughs(levels: int) -> str:
    """The 'billion laughs': each level is a list of ten aliases of the level before (10**levels strings)."""
    lines = ["name: laughs", "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def _nested_blocks(depth: int) -> str:
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "b: 1\n"


# ------------------------------------------------------------------------------------ named bad files

def step(i: int, **kv: Any) -> Callable[[dict], dict]:
    def f(d: dict) -> dict:
        d = copy.deepcopy(d)
        d["products"]["car_t_lenti"]["steps"][i].update(kv)
        return d
    return f


def at(path: tuple, value: Any) -> Callable[[dict], dict]:
    return lambda d: _set(d, path, value)


def both(*fs: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def f(d: dict) -> dict:
        for g in fs:
            d = g(d)
        return d
    return f


def _drop(path: tuple) -> Callable[[dict], dict]:
    def f(d: dict) -> dict:
        d = copy.deepcopy(d)
        cur = d
        for k in path[:-1]:
            cur = cur[k]
        del cur[path[-1]]
        return d
    return f


# id -> (content: text, bytes or a mutation of the short baseline; words the message must contain)
REFUSED: dict[str, tuple[Any, tuple[str, ...]]] = {
    # malformed files
    "tab-indentation": (SHORT_TEXT.replace("\n  per_year: 400", "\n\tper_year: 400"), ("not valid YAML", "line")),
    "tab-after-colon-in-flow": ("name: x\nhorizon_days:\t[1,\t2\n", ("not valid YAML",)),
    "deep-nesting-flow-20k": ("[" * 20_000 + "]" * 20_000, ("nested too deeply",)),
    "deep-nesting-block-3000": (_nested_blocks(3000), ("not valid YAML",)),
    "random-bytes": (bytes(range(256)) * 8, ("not UTF-8",)),
    "latin-1-text": (SHORT_TEXT.replace("name: baseline", "name: bäseline").encode("latin-1"), ("not UTF-8",)),
    "utf-16-text": (SHORT_TEXT.encode("utf-16"), ("not UTF-8",)),
    "nul-byte": (SHORT_TEXT.replace("seed: 20271", "seed: 20271\x00"), ("not valid YAML",)),
    "empty-file": ("", ("mapping",)),
    "only-a-comment": ("# nothing here\n", ("mapping",)),
    "top-level-scalar": ("42\n", ("mapping",)),
    "top-level-list": ("- name: x\n- name: y\n", ("mapping",)),
    "python-object-tag": ("!!python/object/apply:os.system ['echo pwned']\n", ("not valid YAML",)),
    "unclosed-quote": (SHORT_TEXT.replace("name: baseline", "name: 'baseline"), ("not valid YAML",)),
    "missing-base-file": ("base: no_such_file.yaml\nname: what-if\n", ("base",)),
    # wrong types
    "horizon-is-a-list": (at(("horizon_days",), [1, 2]), ("horizon_days",)),
    "sites-is-a-mapping": (at(("sites",), {"a": 1}), ("sites",)),
    "demand-is-text": (at(("demand",), "lots"), ("demand",)),
    "steps-is-text": (at(STEPS, "activation"), ("steps",)),
    "unknown-weekday": (at(("calendars", "day_shift", "days"), ["funday"]), ("calendars.day_shift.days",)),
    "duration-without-dist": (step(3, duration={"value": 8}), ("duration",)),
    # huge numbers
    "horizon-1e308": (at(("horizon_days",), 1e308), ("horizon_days",)),
    "replications-10**100": (at(("replications",), 10**100), ("replications",)),
    "warmup-.inf": (at(("warmup_days",), math.inf), ("warmup_days",)),
    # zero capacity with demand
    "zero-incubators": (at(("resources", "incubators"), 0), ("incubator",)),
    "zero-suites": (both(at(("resources", "suites"), 0), at(("resources", "dedicated_suites"), 0)), ("suite",)),
    "zero-freezers": (at(("resources", "freezers"), 0), ("freezer",)),
    "zero-qc-analysts": (at(("resources", "qc_analysts", "count"), 0), ("qc_analysts",)),
    "zero-qa-reviewers": (at(("resources", "qa_reviewers", "count"), 0), ("qa_reviewers",)),
    "zero-starts-per-day": (at(("booking", "starts_per_day"), 0), ("starts_per_day",)),
    "zero-operators-open-steps": (at(("resources", "operators", "count"), 0), ("operators",)),
    "step-uses-closed-device-none-exist": (step(1, uses=["closed_device"], hold_until={}), ("closed_device",)),
    # durations
    "negative-duration": (step(3, duration={"dist": "fixed", "value": -1}), ("steps.3.duration",)),
    "nan-duration": (step(3, duration={"dist": "fixed", "value": math.nan}), ("steps.3.duration",)),
    "nan-triangular-mode": (step(3, duration={"dist": "triangular", "low": 7, "mode": math.nan, "high": 9}),
                            ("steps.3.duration",)),
    "uniform-low-above-high": (step(3, duration={"dist": "uniform", "low": 9, "high": 7}), ("steps.3.duration",)),
    "negative-transit": (at(("sites", 0, "inbound_transit"), {"dist": "lognormal", "mean": -1, "sd": 0.2}),
                         ("sites.0.inbound_transit",)),
    "negative-horizon": (at(("horizon_days",), -5), ("horizon_days",)),
    # probabilities outside [0, 1]
    "failure-probability-1.5": (step(3, failure={"probability": 1.5, "consequence": "recollect"}), ("probability",)),
    "failure-probability-negative": (step(3, failure={"probability": -0.1, "consequence": "discard"}), ("probability",)),
    "failure-probability-nan": (step(3, failure={"probability": math.nan, "consequence": "oos"}), ("probability",)),
    "qc-failure-probability-2": (at(("qc", "tests", 0, "failure_probability"), 2), ("failure_probability",)),
    "dropout-1.5": (at(("demand", "dropout_per_day"), 1.5), ("dropout_per_day",)),
    "infectious-fraction-negative": (at(("demand", "infectious_fraction"), -0.5), ("infectious_fraction",)),
    "exceptional-release-7": (at(("gmp", "exceptional_release_probability"), 7), ("exceptional_release_probability",)),
    # empty or impossible processes
    "empty-process": (at(STEPS, []), ("steps",)),
    "no-products": (at(("products",), {}), ("products",)),
    "hold-until-itself": (step(0, hold_until={"suite": "activation"}), ("later step",)),
    "hold-until-backwards": (step(4, uses=["suite"], hold_until={"suite": "activation"}), ("later step",)),
    "hold-until-unknown-step": (step(0, hold_until={"suite": "nowhere"}), ("unknown step",)),
    "hold-until-resource-not-used": (step(1, hold_until={"freezer": "expansion"}), ("not in uses",)),
    "operators-above-shift": (step(0, operators=11), ("needs 11",)),
    "clearance-operators-above-shift": (at(("gmp", "clearance_operators"), 11), ("clearance_operators",)),
    "open-step-without-suite": (both(step(0, uses=[], hold_until={})), ("must use a suite",)),
}


def _content(tmp: Path, spec: Any) -> Path:
    if callable(spec):
        return _write(tmp, "case.yaml", spec(BASE))
    return _write(tmp, "case.yaml", spec)


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_file_refused(case: str, tmp_path: Path) -> None:
    """Refused by `validate` and `run`: exit 2, the file named, no traceback, nothing in the database."""
    spec, needles = REFUSED[case]
    path = _content(tmp_path, spec)
    db = tmp_path / "out.db"
    o = attempt(path, db, timeout=20)
    judge(o, path, db, must_refuse=True, needles=needles)
    first = o["validate"]["out"].strip().splitlines()
    note(f"exit 2 in {o['elapsed']:.2f} s: " + " ".join(first[1:3])[:160])


# valid but odd: refused or a whole run, either is fine
ODD: dict[str, Any] = {
    "no-demand-no-suites": both(at(("demand", "per_year"), 0), at(("demand", "infectious_fraction"), 0),
                                at(("resources", "suites"), 0), at(("resources", "dedicated_suites"), 0)),
    "every-expansion-fails": step(3, failure={"probability": 1.0, "consequence": "recollect"}),
    "every-patient-drops-out": at(("demand", "dropout_per_day"), 1.0),
    "expansion-takes-1e308-days": step(3, duration={"dist": "fixed", "value": 1e308}),
    "horizon-0.001-days": both(at(("horizon_days",), 0.001), at(("warmup_days",), 0)),
    "duplicate-key-last-wins": SHORT_TEXT.replace("  suites: 20", "  suites: 20\n  suites: 19"),
    "utf8-byte-order-mark": "\ufeff" + SHORT_TEXT,
    "unicode-names": SHORT_TEXT.replace("site_north", "Zürich – 北 ☃"),
    "seed-10**30": at(("seed",), 10**30),
    "start-date-9999-12-31": at(("start_date",), "9999-12-31"),
    "ramp-to-zero": at(("demand", "monthly_ramp"), [1.0, 0.0]),
    "a-billion-starts-a-day": at(("booking", "starts_per_day"), 10**9),
    "a-million-operators": at(("resources", "operators", "count"), 10**6),
    "single-value-empirical": step(3, duration={"dist": "empirical", "values": [8]}),
    "yaml-anchors-reused": SHORT_TEXT.replace("inbound_transit: {dist: lognormal, mean: 1.0, sd: 0.25}",
                                              "inbound_transit: &leg {dist: lognormal, mean: 1.0, sd: 0.25}", 1)
                                     .replace("outbound_transit: {dist: lognormal, mean: 1.5, sd: 0.4}",
                                              "outbound_transit: *leg", 1),
}


@pytest.mark.parametrize("case", list(ODD))
def test_odd_but_valid_file_runs_whole_or_is_refused(case: str, tmp_path: Path) -> None:
    """Valid-but-odd scenarios: if accepted, `run` succeeds and stores one whole, verifiable run; if
    refused, by the rule for bad files."""
    path = _content(tmp_path, ODD[case])
    db = tmp_path / "out.db"
    o = attempt(path, db)
    verdict = judge(o, path, db)
    if verdict == "accepted":
        k = json.loads(o["run"]["out"].strip().splitlines()[-1])["kpis"]
        note(f"accepted, whole run in {o['elapsed']:.2f} s: {k['patients_referred']} referred, "
             f"{k['patients_infused']} infused, {k['patients_in_progress']} in progress")
    else:
        note("refused: " + " ".join(o["validate"]["out"].strip().splitlines()[1:2])[:160])


# ----------------------------------------------------------------- cases that were bugs, now fixed

# id -> (content, time limit in s, how it failed before the fix)
KNOWN: dict[str, tuple[Any, float, str]] = {
    "billion-laughs-9-levels": (
        _laughs(9), 1.0,
        "a 400-byte alias bomb hangs the loader: ScenarioError renders each bad value with repr(), "
        "which expands 10**9 aliased strings (config._short)"),
    "duration-.inf": (
        step(3, duration={"dist": "fixed", "value": math.inf}), 10.0,
        "an infinite step duration is accepted (Field(ge=0) lets inf through)"),
    "triangular-high-.inf": (
        step(3, duration={"dist": "triangular", "low": 7, "mode": 8, "high": math.inf}), 10.0,
        "accepted; the draws are NaN, SimPy schedules events at NaN so the run quietly stops after ~11 "
        "patients, and the store then refuses the NaN times: exit 2 after the run"),
    "demand-per-year-.inf": (
        at(("demand", "per_year"), math.inf), 10.0,
        "accepted; simulate raises TypeError (a traceback) building Exponential(mean=0)"),
    "booking-horizon-.inf": (
        at(("booking", "horizon_days"), math.inf), 10.0,
        "accepted; simulate raises OverflowError (a traceback): int(inf) in SlotBook"),
    "apheresis-lead-.inf": (
        at(("booking", "apheresis_lead_days"), math.inf), 10.0,
        "accepted; simulate raises OverflowError (a traceback): math.ceil(inf)"),
    "planned-suite-days-1e9": (
        at(("booking", "planned_suite_days"), 1e9), 1.0,
        "accepted; the first booking loops over 10**9 days (SuitePlan.free): the run hangs"),
    "suites-10**100": (
        at(("resources", "suites"), 10**100), 1.0,
        "accepted; the model builds a list of 10**100 suite names: hangs until out of memory"),
    "demand-1e308-a-year": (
        at(("demand", "per_year"), 1e308), 1.0,
        "accepted; 1e308 referrals a year: the run never finishes"),
    "apheresis-chairs-10**19": (
        at(("sites", 0, "apheresis_per_day"), 10**19), 10.0,
        "accepted and simulated, then the store refuses the capacity (> SQLite INTEGER): exit 2 after the run"),
    "lognormal-sd-over-mean-1e200": (
        at(("sites", 0, "inbound_transit"), {"dist": "lognormal", "mean": 1e-100, "sd": 1e100}), 10.0,
        "accepted; LogNormal.draw raises OverflowError ((sd/mean)**2): a traceback"),
    "invalid-date-2027-02-30": (
        SHORT_TEXT.replace("start_date: 2027-01-04", "start_date: 2027-02-30"), 10.0,
        "PyYAML's timestamp constructor raises ValueError, which config._yaml does not catch: a traceback"),
    "integer-with-5000-digits": (
        SHORT_TEXT.replace("seed: 20271", "seed: " + "9" * 5000), 10.0,
        "PyYAML raises ValueError (int max str digits), which config._yaml does not catch: a traceback"),
}


@pytest.mark.parametrize("case", [pytest.param(c)
                                  for c in KNOWN])
def test_known_bad_file_refused(case: str, tmp_path: Path) -> None:
    """Must be refused (exit 2, file named, no traceback, nothing stored) within the time limit, or, if
    accepted, run whole."""
    spec, limit, why = KNOWN[case]
    path = _content(tmp_path, spec)
    db = tmp_path / "out.db"
    o = attempt(path, db, timeout=limit)
    if "crash" in o:
        note(f"today: {o['crash']}")
    else:
        v, r = o["validate"], o["run"]
        note(f"today: validate exit {v['code']}, run exit {r['code']}"
             + (f", uncaught {(r['leak'] or v['leak'])[:120]}" if (r["leak"] or v["leak"]) else "")
             + (f": {r['out'].strip().splitlines()[-1][:120]}" if r["out"].strip() and r["code"] else ""))
        if v["code"] == 0 and r["code"] == 0:
            k = json.loads(r["out"].strip().splitlines()[-1])["kpis"]
            note(f"run accepted: {k['patients_referred']} patients referred in 120 days (baseline ~130)")
    judge(o, path, db, must_refuse=case not in ("apheresis-chairs-10**19",))


# -------------------------------------------------------------------------------------- size limits

def test_100_mb_file_refused_quickly_without_reading_it(tmp_path: Path) -> None:
    """A 100 MB file is refused from its size: in well under a second, with almost no memory, and by
    `run` before any database is created."""
    big = tmp_path / "huge.yaml"
    with open(big, "wb") as f:
        f.write(SHORT_TEXT.encode())
        f.truncate(100 * 1024 * 1024)  # sparse: the size is real, the disk is not filled
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ScenarioError) as e:
        load_scenario(big)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1_000_000, (elapsed, peak)
    assert f"at most {MAX_FILE_BYTES:,}" in e.value.render() and str(big) in e.value.render()
    db = tmp_path / "out.db"
    judge(attempt(big, db, timeout=10), big, db, must_refuse=True, needles=("bytes",))
    note(f"loader refused in {elapsed * 1000:.1f} ms, peak traced memory {peak / 1024:.0f} KiB")


def test_100_mb_base_file_refused_quickly(tmp_path: Path) -> None:
    """A what-if whose `base:` is a 100 MB file is refused like the 100 MB file itself, naming the
    what-if, within a second and without reading the base into memory."""
    big = tmp_path / "huge.yaml"
    with open(big, "wb") as f:
        f.write(b"name: big\nnotes: ")
        f.write(b"a" * (100 * 1024 * 1024))  # real content: a 100 MB scalar
    path = _write(tmp_path, "what_if.yaml", "base: huge.yaml\nname: what-if\n")

    def load() -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            load_scenario(path)
            return {"result": "accepted"}
        except ScenarioError as e:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return {"result": e.render()[:300], "seconds": time.perf_counter() - t0, "maxrss_kb": peak}

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    o = isolated(load, timeout=1.5, extra_memory=1_000_000_000)
    if "crash" in o:
        note(f"today: {o['crash']}")
    else:
        note(f"today: {o['result'][:150]}; {o['seconds']:.1f} s, max RSS {o['maxrss_kb'] / 1024:.0f} MB")
    assert "crash" not in o, o["crash"]
    assert o["seconds"] < 1.0 and o["maxrss_kb"] - before < 50_000, o
    assert str(path) in o["result"]
    big.unlink()


def test_endless_stream_refused(tmp_path: Path) -> None:
    """A scenario 'file' that never ends (here /dev/zero, as a FIFO or a wrong `--` argument would be) is
    refused after MAX_FILE_BYTES, not read until memory runs out."""
    db = tmp_path / "out.db"
    o = attempt(Path("/dev/zero"), db, timeout=1.5)
    note(f"today: {o.get('crash') or o['validate']['out'][-200:]}")
    judge(o, Path("/dev/zero"), db, must_refuse=True)


# ----------------------------------------------------------------------------------------- fuzzing

def _check_refused(tmp: Path, content: str | bytes, name: str = "fuzz.yaml") -> dict[str, Any]:
    path = _write(tmp, name, content)
    db = tmp / "fuzz.db"
    if db.exists():
        db.unlink()
    o = attempt(path, db, timeout=20)
    judge(o, path, db, must_refuse=True)
    return o


_fuzz_dirs: dict[str, Path] = {}


def _fuzz_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    if name not in _fuzz_dirs:
        _fuzz_dirs[name] = tmp_path_factory.mktemp(name)
    return _fuzz_dirs[name]


def _random_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _check_refused(_fuzz_dir(tmp_path_factory, "text"), text)


def _random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    _check_refused(_fuzz_dir(tmp_path_factory, "bytes"), data)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                         st.text(max_size=10), st.sampled_from(["fixed", "suite", "mon", "2027-01-04", ".inf"]))
yaml_docs = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=8), st.sampled_from(["name", "horizon_days", "demand", "sites", "steps"])), c,
    max_size=4), max_leaves=20)


@st.composite
def yaml_with_aliases(draw: st.DrawFn) -> str:
    """A random document, with some subtrees shared so that the dump carries anchors and aliases."""
    shared = draw(yaml_docs)
    doc = draw(st.dictionaries(st.text(max_size=8), st.one_of(yaml_docs, st.just(shared)), max_size=6))
    if draw(st.booleans()):
        doc["name"] = draw(st.text(min_size=1, max_size=8))
    return yaml.safe_dump(doc)


def _random_yaml(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    _check_refused(_fuzz_dir(tmp_path_factory, "yaml"), text)


EDIT_CHARS = ["\t", ":", "-", " ", "\n", "{", "[", "&a ", "*a", "'", '"', "#", "!", "%", "\x00", "\u00e9", "9" * 40]


@st.composite
def baseline_text_edits(draw: st.DrawFn) -> bytes:
    """The baseline file with a few characters inserted, deleted or replaced, sometimes a raw byte."""
    text = SHORT_TEXT
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        s = draw(st.sampled_from(EDIT_CHARS) | st.text(min_size=1, max_size=3))
        if op == "insert":
            text = text[:i] + s + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        else:
            text = text[:i] + s + text[i + len(s):]
    data = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:
        j = draw(st.integers(0, len(data)))
        data = data[:j] + bytes([draw(st.integers(0x80, 0xFF))]) + data[j:]
    return data


def _text_edit(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    tmp = _fuzz_dir(tmp_path_factory, "edits")
    path = _write(tmp, "edit.yaml", data)
    db = tmp / "edit.db"
    if db.exists():
        db.unlink()
    _tally[judge(attempt(path, db), path, db)] += 1


wrong_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 60), st.floats(-3, 400), st.just(math.nan),
              st.text(max_size=6), st.sampled_from(["", "fixed", "suite", "incubator", "mon", "2027-01-04",
                                                    "day_shift", "activation", "recollect", "slot"])),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, dict]:
    """The short baseline with a value replaced by one of the wrong type or range, a key deleted, or an
    unknown key added, at a random path."""
    path = draw(st.sampled_from(ALL_PATHS))
    op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    d = copy.deepcopy(BASE)
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    if op == "replace":
        parent[path[-1]] = draw(wrong_values)
    elif op == "delete":
        del parent[path[-1]]
    else:
        target = parent[path[-1]]
        if isinstance(target, dict):
            target[draw(st.text(min_size=1, max_size=6))] = draw(wrong_values)
        else:
            parent[path[-1]] = draw(wrong_values)
    return f"{op} {'.'.join(map(str, path))}", d


def _mutation(tmp_path_factory: pytest.TempPathFactory, m: tuple[str, dict]) -> None:
    tmp = _fuzz_dir(tmp_path_factory, "mutations")
    desc, data = m
    try:
        text = yaml.safe_dump(data, sort_keys=False)
    except yaml.YAMLError:
        return
    path = _write(tmp, "mutated.yaml", text)
    db = tmp / "mutated.db"
    if db.exists():
        db.unlink()
    _tally[judge(attempt(path, db), path, db)] += 1


_tally: dict[str, int] = {"refused": 0, "accepted": 0}


def _fuzz_tests(n: int, slow: bool) -> dict[str, Any]:
    """The fuzz properties with ``n`` examples each (a slow variant runs ten times more)."""
    s = settings(max_examples=n, **FUZZ)
    mark = pytest.mark.slow if slow else (lambda f: f)

    def counted(fn: Callable, what: str) -> Callable:
        def body(tmp_path_factory: pytest.TempPathFactory, **kw: Any) -> None:
            _tally.update(refused=0, accepted=0)
            calls = [0]

            @s
            @given(**{k: v for k, v in kw.items()})
            def prop(**drawn: Any) -> None:
                calls[0] += 1
                fn(tmp_path_factory, *drawn.values())

            prop()
            if _tally["refused"] or _tally["accepted"]:
                note(f"{calls[0]} examples of {what}: {_tally['refused']} refused, "
                     f"{_tally['accepted']} accepted and run whole")
            else:
                note(f"{calls[0]} examples of {what}: all refused (exit 2, file named, no traceback, nothing stored)")
        return body

    def t_text(tmp_path_factory: pytest.TempPathFactory) -> None:
        """Random text: refused (exit 2, file named, no traceback, nothing stored)."""
        counted(_random_text, "random text")(tmp_path_factory, text=st.text(max_size=300))

    def t_bytes(tmp_path_factory: pytest.TempPathFactory) -> None:
        """Random bytes: refused (exit 2, file named, no traceback, nothing stored)."""
        counted(_random_bytes, "random bytes")(tmp_path_factory, data=st.binary(max_size=300))

    def t_yaml(tmp_path_factory: pytest.TempPathFactory) -> None:
        """Random YAML documents with anchors and aliases: refused (exit 2, file named, nothing stored)."""
        counted(_random_yaml, "random YAML with aliases")(tmp_path_factory, text=yaml_with_aliases())

    def t_edits(tmp_path_factory: pytest.TempPathFactory) -> None:
        """Character-level edits of the baseline file (tabs, colons, anchors, NUL, stray bytes): refused
        by the rule, or accepted and run whole."""
        counted(_text_edit, "baseline text edits")(tmp_path_factory, data=baseline_text_edits())

    def t_mut(tmp_path_factory: pytest.TempPathFactory) -> None:
        """Wrong types, deleted keys and unknown keys at random paths of the baseline: refused by the
        rule, or accepted and run whole."""
        counted(_mutation, "mutations at random paths")(tmp_path_factory, m=mutations())

    sfx = "_many" if slow else ""
    return {f"test_fuzz_random_text{sfx}": mark(t_text), f"test_fuzz_random_bytes{sfx}": mark(t_bytes),
            f"test_fuzz_random_yaml{sfx}": mark(t_yaml), f"test_fuzz_baseline_text_edits{sfx}": mark(t_edits),
            f"test_fuzz_wrong_types_at_random_paths{sfx}": mark(t_mut)}


globals().update(_fuzz_tests(15, slow=False))
globals().update(_fuzz_tests(150, slow=True))


EXTREMES = [math.inf, -math.inf, 1e308, -1e308, 10**100, 10**19, 2**63, 1e-300, -0.0]


@settings(max_examples=30, derandomize=True, **FUZZ)
@given(path=st.sampled_from(NUMERIC_PATHS), value=st.sampled_from(EXTREMES))
@example(path=("demand", "per_year"), value=math.inf)
def test_fuzz_extreme_numbers_at_numeric_fields(tmp_path_factory: pytest.TempPathFactory, path: tuple,
                                                value: Any) -> None:
    """inf, 1e308, 10**100, 10**19, 2**63, 1e-300 and -0.0 in every numeric field of the baseline: refused
    by the rule, or accepted and run whole, within 10 s."""
    tmp = _fuzz_dir(tmp_path_factory, "extremes")
    p = _write(tmp, "extreme.yaml", _set(BASE, path, value))
    db = tmp / "extreme.db"
    if db.exists():
        db.unlink()
    o = attempt(p, db, timeout=10)
    try:
        judge(o, p, db)
    except AssertionError as e:
        note(f"first failure: {'.'.join(map(str, path))} = {value!r}: {str(e).splitlines()[0][:160]}")
        raise
