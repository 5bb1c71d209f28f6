"""Replications per second of a sweep: one process, two worker processes, and Ray with two workers.

The sweep is 40 one-year replications of the baseline (4 cells x 10 replications over the suites
lever). Wall time includes starting the workers (a forkserver and its children; a local Ray), because a
planner pays for that on every command. Ratios are to jobs=1, measured in this one run; the script
also checks that every backend returned exactly the same KPIs.

    PYTHONPATH=src python benchmarks/bench_parallel.py [--replications 10] [--db runs.db]

Targets (issue 4): 2 jobs >= 1.8x, Ray (2 workers) >= 1.6x. On a 2-core machine the parent shares a
core with the workers, so the ratio also shows what the single writer costs when ``--db`` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from celltx_mfg import experiments as ex  # noqa: E402
from celltx_mfg.config import load_scenario  # noqa: E402


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, to tell a slow backend from a busy machine."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _run(cells: list[ex.Cell], reps: int, jobs: int, backend: str, db: str | None) -> tuple[float, Any]:
    engine = None
    if db:
        from celltx_mfg.store import open_store

        engine = open_store(db)
    t0 = time.perf_counter()
    result = ex.sweep(cells, replications=reps, jobs=jobs, backend=backend, engine=engine)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    if engine is not None:
        engine.dispose()
    return elapsed, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replications", type=int, default=10, help="replications per cell (4 cells)")
    ap.add_argument("--db", action="store_true", help="also store every run in a fresh SQLite file")
    args = ap.parse_args()

    sc, text = load_scenario(ROOT / "scenarios" / "baseline.yaml")
    cells = ex.grid(sc, text, {"suites": [17, 18, 20, 22]})
    total = len(cells) * args.replications
    print(f"sweep: {len(cells)} cells x {args.replications} replications = {total} one-year baseline runs"
          f"{' (stored in SQLite)' if args.db else ''}; cpus={os.cpu_count()}, "
          f"load average before: {os.getloadavg()[0]:.2f}")

    plans: list[tuple[str, int, str]] = [("jobs=1", 1, "local"), ("jobs=2", 2, "local")]
    if importlib.util.find_spec("ray") is not None:
        plans.append(("ray x2", 2, "ray"))
    else:
        print("ray: not installed (pip install 'celltx-mfg[ray]'), skipped")

    rows = []
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, jobs, backend in plans:
            times, loads = [], []
            for attempt in ("cold", "warm"):
                db = str(Path(tmp) / f"{backend}{jobs}{attempt}.db") if args.db else None
                if backend == "ray" and attempt == "warm":
                    # a Ray that is already up (as on a cluster): start it, warm its workers, then time
                    import ray

                    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
                    _run(cells[:1], 2, jobs, backend, None)
                busy0, total0 = _cpu_jiffies()
                elapsed, result = _run(cells, args.replications, jobs, backend, db)
                busy1, total1 = _cpu_jiffies()
                machine = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
                times.append(elapsed)
                loads.append(machine)
                kpis = [[k for _, k in runs] for runs in result.runs]
                if reference is None:
                    reference = kpis
                if kpis != reference:
                    print(f"{name} {attempt}: KPIs DIFFER from jobs=1")
            if backend == "ray":
                import ray

                ray.shutdown()
            rows.append((name, *times, *loads))

    cold1, warm1 = total / rows[0][1], total / rows[0][2]
    print("cold = the command as a planner runs it (worker / Ray start-up included);")
    print("warm = workers already up (forkserver running; Ray already initialised and warmed)")
    print("busy cores = whole-machine CPU in use during the run (ours and anyone else's), of "
          f"{os.cpu_count()}")
    print(f"{'backend':<8} {'cold s':>7} {'reps/s':>7} {'ratio':>6} {'busy':>5}   "
          f"{'warm s':>7} {'reps/s':>7} {'ratio':>6} {'busy':>5}")
    for name, cold, warm, busy_cold, busy_warm in rows:
        print(f"{name:<8} {cold:>7.2f} {total / cold:>7.2f} {total / cold / cold1:>6.2f} {busy_cold:>5.2f}   "
              f"{warm:>7.2f} {total / warm:>7.2f} {total / warm / warm1:>6.2f} {busy_warm:>5.2f}")
    print(f"every backend returned identical KPIs: {'yes' if reference is not None else '-'} "
          "(a difference would be printed above)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
