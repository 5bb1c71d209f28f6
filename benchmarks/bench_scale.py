"""Time and memory of one 5-year run as the plant grows from 500 to 4,000 patients a year.

The baseline (about 400 referrals a year) is scaled through experiments.apply_overrides: demand, suites
(and the dedicated suite), incubators, freezers, manufacturing starts, apheresis chairs and infusion slots
at every site, operators, QC analysts and QA reviewers all grow in proportion, so every size is the same
plant at a different scale rather than an overloaded one. Each size runs in its own subprocess so its
peak resident memory (``ru_maxrss``, interpreter and imports included) is its own.

    PYTHONPATH=src python benchmarks/bench_scale.py [--years 5] [--sizes 500 1000 2000 4000] [--profile 4000]

Target (issue 4): 4,000 patients a year for 5 years in < 60 s and < 2 GiB. ``--profile N`` runs size N
under cProfile and prints the engine functions that dominate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from celltx_mfg import experiments as ex  # noqa: E402
from celltx_mfg.config import load_scenario  # noqa: E402

_CHILD = r"""
import cProfile, io, json, pstats, resource, sys, time
from celltx_mfg.config import parse_text
from celltx_mfg.simulate import simulate
from celltx_mfg import analysis
text = open(sys.argv[1]).read()
profile = sys.argv[2] == "1"
sc = parse_text(text)
prof = cProfile.Profile() if profile else None
t0 = time.perf_counter()
if prof: prof.enable()
records = simulate(sc, replication=0)
if prof: prof.disable()
t1 = time.perf_counter()
k = analysis.kpis(records.frames(), records.horizon, records.warmup, records.costs or None)
t2 = time.perf_counter()
out = {
    "simulate_s": t1 - t0, "kpis_s": t2 - t1, "events": records.events,
    "patients": len(records.patients), "batches": len(records.batches),
    "resource_uses": len(records.resource_uses), "infused": k["patients_infused"],
    "v2v_mean": k["vein_to_vein_days"]["mean"], "wait_for_slot": k["wait_for_slot_days"]["mean"],
    "suite_util": k["utilisation"].get("suite"),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}
if prof:
    s = io.StringIO()
    st = pstats.Stats(prof, stream=s)
    st.sort_stats("tottime").print_stats(15)
    st.sort_stats("cumulative").print_stats(25)
    out["profile"] = s.getvalue()
print(json.dumps(out))
"""


def scaled(text: str, per_year: float, years: float) -> tuple[Any, str]:
    """The baseline at ``per_year`` referrals a year: every capacity scaled by the same factor."""
    data = yaml.safe_load(text)
    f = per_year / float(data["demand"]["per_year"])
    up = lambda x: max(1, math.ceil(x * f))  # noqa: E731
    r, b = data["resources"], data["booking"]
    overrides: dict[str, Any] = {
        "demand.per_year": per_year,
        "horizon_days": round(365.25 * years, 2),
        "resources.suites": up(r["suites"]),
        "resources.dedicated_suites": up(r.get("dedicated_suites", 0)) if r.get("dedicated_suites") else 0,
        "resources.incubators": up(r.get("incubators", 0)) if r.get("incubators") else 0,
        "resources.freezers": up(r.get("freezers", 0)) if r.get("freezers") else 0,
        "resources.operators.count": up(r["operators"]["count"]),
        "resources.qc_analysts.count": up(r["qc_analysts"]["count"]),
        "resources.qa_reviewers.count": up(r["qa_reviewers"]["count"]),
        "booking.starts_per_day": up(b.get("starts_per_day", 1)),
    }
    for site in data["sites"]:
        overrides[f"sites.{site['name']}.apheresis_per_day"] = up(site["apheresis_per_day"])
        overrides[f"sites.{site['name']}.infusion_slots_per_day"] = up(site["infusion_slots_per_day"])
    return ex.apply_overrides(text, overrides, name_suffix=f"{per_year:g}/yr x {years:g} y")


def measure(text: str, profile: bool = False) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        out = subprocess.run([sys.executable, "-c", _CHILD, f.name, "1" if profile else "0"],
                             capture_output=True, text=True, env=env, check=True)
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


_STORE_CHILD = r"""
import json, resource, sys, tempfile, time
from celltx_mfg.config import parse_text
from celltx_mfg.records import RecordSpool
from celltx_mfg.simulate import simulate
from celltx_mfg.store import open_store, write_run
text, stream = open(sys.argv[1]).read(), sys.argv[2] == "1"
sc = parse_text(text)
with tempfile.TemporaryDirectory() as d:
    spool = RecordSpool(d) if stream else None
    t0 = time.perf_counter()
    records = simulate(sc, replication=0, spool=spool)
    t1 = time.perf_counter()
    engine = open_store(d + "/runs.db")
    write_run(engine, sc.name, text, records)
    t2 = time.perf_counter()
    rows = sum(records.count(name) for name, _ in records.TABLES)
    engine.dispose()
print(json.dumps({"simulate_s": t1 - t0, "store_s": t2 - t1, "rows": rows, "patients": len(records.patients),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_stored(text: str, stream: bool) -> dict[str, Any]:
    """One run simulated and stored in a fresh SQLite file, in a subprocess of its own (peak RSS)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        out = subprocess.run([sys.executable, "-c", _STORE_CHILD, f.name, "1" if stream else "0"],
                             capture_output=True, text=True, env=env, check=True)
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def horizons(text: str, per_year: float, years: list[float]) -> None:
    """Peak memory and time of simulate + write_run as the horizon grows, records held vs streamed."""
    print(f"{per_year:g} patients a year, simulated and stored (SQLite); records held in memory vs streamed")
    print(f"{'years':>5} {'mode':<8} {'rows':>10} {'sim s':>7} {'store s':>7} {'s/year':>7} {'peak MiB':>9}")
    for y in years:
        _, t = scaled(text, per_year, y)
        for stream in (False, True):
            r = measure_stored(t, stream)
            total = r["simulate_s"] + r["store_s"]
            print(f"{y:>5g} {'streamed' if stream else 'held':<8} {r['rows']:>10,} {r['simulate_s']:>7.1f} "
                  f"{r['store_s']:>7.1f} {total / y:>7.1f} {r['peak_rss_mib']:>9.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--horizons", type=float, nargs="*", default=None,
                    help="years: simulate and store one run per horizon, held vs streamed (peak RSS, time)")
    ap.add_argument("--per-year", type=float, default=40000, help="plant size for --horizons")
    ap.add_argument("--years", type=float, default=5.0)
    ap.add_argument("--sizes", type=float, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--profile", type=float, default=None, help="profile this size instead of the table")
    args = ap.parse_args()
    _, text = load_scenario(ROOT / "scenarios" / "baseline.yaml")
    if args.horizons:
        horizons(text, args.per_year, args.horizons)
        return

    if args.profile:
        sc, t = scaled(text, args.profile, args.years)
        res = measure(t, profile=True)
        print(f"{sc.name}: simulate {res['simulate_s']:.1f} s under cProfile")
        print(res["profile"])
        return

    print(f"one {args.years:g}-year run per size, baseline scaled in proportion; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    hdr = (f"{'per year':>8} {'suites':>6} {'patients':>8} {'events':>9} {'simulate s':>10} {'kpis s':>7} "
           f"{'peak MiB':>8} {'events/s':>9} {'infused':>7} {'v2v d':>6} {'slot wait d':>11} {'suite util':>10}")
    print(hdr)
    rows = []
    for size in args.sizes:
        sc, t = scaled(text, size, args.years)
        res = measure(t)
        rows.append((size, res))
        print(f"{size:>8g} {sc.resources.suites:>6} {res['patients']:>8} {res['events']:>9} "
              f"{res['simulate_s']:>10.1f} {res['kpis_s']:>7.2f} {res['peak_rss_mib']:>8.0f} "
              f"{res['events'] / res['simulate_s']:>9.0f} {res['infused']:>7} {res['v2v_mean'] or 0:>6.1f} "
              f"{res['wait_for_slot'] or 0:>11.1f} {res['suite_util'] or 0:>10.2f}", flush=True)
    if len(rows) > 1:
        (s0, r0), (s1, r1) = rows[0], rows[-1]
        growth = math.log(r1["simulate_s"] / r0["simulate_s"]) / math.log(s1 / s0)
        print(f"time grows as size^{growth:.2f} from {s0:g} to {s1:g} patients a year")
    big = dict(rows).get(4000.0)
    if big is not None:
        total = big["simulate_s"] + big["kpis_s"]
        ok = total < 60 and big["peak_rss_mib"] < 2048
        print(f"target 4,000/yr x {args.years:g} y: {total:.1f} s (< 60), {big['peak_rss_mib']:.0f} MiB (< 2048): "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
