"""Forecast speed: 200 replications of a 120-day forecast from a baseline plant state with about 60 live
patients, on 2 jobs (target: under 20 s on the 2-core reference machine).

The state is the baseline's own plant at a day in its first year (``forecast.snapshot``), the day with the
live-patient count nearest 60 among a few candidates; the figure printed is wall time of ``run_forecast``.

    PYTHONPATH=src python benchmarks/bench_forecast.py [--replications 200] [--jobs 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from celltx_mfg.config import load_scenario
from celltx_mfg.forecast.run import run_forecast
from celltx_mfg.forecast.snapshot import run_until, state_of
from celltx_mfg.model.journey import Model

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 20.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replications", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--horizon-days", type=float, default=120.0)
    args = ap.parse_args()
    sc, text = load_scenario(ROOT / "scenarios" / "baseline.yaml")
    states = [state_of(run_until(Model(sc, seed), day)) for seed in (1, 2, 3) for day in (150.0, 200.0, 250.0)]
    state = min(states, key=lambda s: abs(len(s.patients) - 60))
    t0 = time.perf_counter()
    result = run_forecast(sc, text, state, args.replications, args.horizon_days, jobs=args.jobs)
    elapsed = time.perf_counter() - t0
    at_risk = sum(p.at_risk for p in result.patients)
    print(f"forecast: {args.replications} replications x {args.horizon_days:g} days from {len(state.patients)} "
          f"live patients (as of day {state.as_of:g}) on {args.jobs} jobs: {elapsed:.1f} s "
          f"(target < {TARGET_S:g} s: {'met' if elapsed < TARGET_S else 'NOT met'}); {at_risk} at risk")


if __name__ == "__main__":
    main()
