"""Wall time of a three-lever capacity plan: `celltx plan` on the shipped +50% demand scenario.

The plan turns suites (400,000 each), apheresis chairs at every site (150,000 per chair, four sites) and
the starts booked per day (free) to bring the slot-wait p90 to 40 days or less, at 10 replications per
candidate on 2 worker processes. Wall time includes starting the workers, as a planner pays it. The
search is deterministic for a given seed, so the candidates tried and the plan chosen repeat exactly;
only the time depends on the machine.

    PYTHONPATH=src python benchmarks/bench_plan.py [--replications 10] [--jobs 2] [--budget 40]
        [--lever suites:cost=400000 ...] [--require 'wait_for_slot_days.p90<=40']
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from celltx_mfg import experiments as ex  # noqa: E402
from celltx_mfg.config import load_scenario  # noqa: E402

LEVERS = ["suites:cost=400000", "sites.*.apheresis_per_day:cost=150000", "booking.starts_per_day"]
REQUIRE = ["wait_for_slot_days.p90<=40"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "demand_plus_50.yaml"))
    ap.add_argument("--replications", type=int, default=10, help="replications per candidate")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--budget", type=int, default=ex.DEFAULT_BUDGET, help="most candidates to simulate")
    ap.add_argument("--lever", action="append", help=f"lever spec (repeat; default {' '.join(LEVERS)})")
    ap.add_argument("--require", action="append", help=f"requirement (repeat; default {REQUIRE[0]})")
    args = ap.parse_args()

    path = Path(args.scenario)
    sc, text = load_scenario(path)
    levers, require = args.lever or LEVERS, args.require or REQUIRE
    print(f"plan on {sc.name}: levers {', '.join(levers)}; require {', '.join(require)}; "
          f"{args.replications} replications per candidate, jobs={args.jobs}, budget {args.budget}; "
          f"cpus={os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    result = ex.capacity_plan(sc, text, levers, require, replications=args.replications, budget=args.budget,
                              source=str(path), base_dir=path.parent, jobs=args.jobs)
    wall = time.perf_counter() - t0
    runs = sum(len(c.per_run) for c in result.candidates)
    print(f"status: {result.outcome} ({result.reason})")
    if result.chosen is not None:
        c = result.chosen
        shown = ", ".join(f"{k}={v}" for k, v in c.values.items())
        means = ", ".join(f"{chk.requirement}: {chk.actual:.1f}" for chk in c.checks if chk.actual is not None)
        print(f"chosen: {shown} (candidate #{c.id}), cost {c.cost:,.0f}; {means}")
    single = result.single_lever_best
    if single is not None:
        print(f"cheapest single-lever candidate that met: {single.values}, cost {single.cost:,.0f}")
    print(f"evaluations: {result.evaluations} candidates, {runs} runs")
    print(f"wall time: {wall:.1f} s on {args.jobs} job(s) ({runs / wall:.2f} runs/s); "
          f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
