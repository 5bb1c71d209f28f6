"""Measure each urgency / allocation policy on demand_plus_50 and print the table of docs/policies.md.

Every policy is the shipped scenario with the booking edits shown, run on the same replications (common
random numbers), through ``simulate`` and ``analysis.kpis``. Slot waits by urgency class are the mean of
first apheresis - referral over the cohort's patients of that class.

    PYTHONPATH=src python scripts/policy_report.py [-r 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from celltx_mfg import analysis  # noqa: E402
from celltx_mfg.config import load_scenario, parse_text  # noqa: E402
from celltx_mfg.simulate import simulate  # noqa: E402

# four centres, shares 0.3 / 0.3 / 0.2 / 0.2 of ~8.5 starts a week ~ 37 a month
QUOTAS = {"site_north": 11, "site_south": 11, "site_east": 7, "site_west": 7}
POLICIES: list[tuple[str, dict[str, Any]]] = [
    ("shipped: urgency order, no reserve", {}),
    ("first come, first served", {"booking": {"priority": "fifo"}}),
    ("urgent reserve 20%, released 7 d ahead", {"booking": {"urgent_reserve": {"share": 0.2, "release_days": 7}}}),
    ("urgent reserve 30%, released 7 d ahead", {"booking": {"urgent_reserve": {"share": 0.3, "release_days": 7}}}),
    ("urgent reserve 30%, released 3 d ahead", {"booking": {"urgent_reserve": {"share": 0.3, "release_days": 3}}}),
    ("urgent reserve 30%, first come first served",
     {"booking": {"priority": "fifo", "urgent_reserve": {"share": 0.3, "release_days": 7}}}),
    ("centre quotas 11/11/7/7 a month", {"sites": [{"name": n, "slots_per_month": q} for n, q in QUOTAS.items()]}),
    ("re-manufacture every failure (share 1)", {"booking": {"remanufacture": {"share": 1.0}}}),
    ("re-manufacture ranked by urgency, no reserve",
     {"booking": {"remanufacture": {"priority": "by_urgency", "urgent_reserve": False},
                  "urgent_reserve": {"share": 0.3, "release_days": 7}}}),
]


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, list):
        by_name = {x["name"]: x for x in over}
        return [_merge(x, by_name.get(x["name"], {})) for x in base]
    return over


def measure(edits: dict[str, Any], reps: int) -> dict[str, float]:
    _, text = load_scenario(ROOT / "scenarios" / "demand_plus_50.yaml")
    sc = parse_text(yaml.safe_dump(_merge(yaml.safe_load(text), edits)))
    acc: dict[str, list[float]] = {}
    for r in range(reps):
        rec = simulate(sc, replication=r)
        k = analysis.kpis(rec.frames(), sc.horizon_days, sc.warmup_days, rec.costs)
        cohort = [p for p in rec.patients if sc.warmup_days <= p.referred < sc.horizon_days]
        for cls in ("urgent", "standard"):
            w = [p.first_apheresis - p.referred for p in cohort if p.urgency == cls and p.first_apheresis is not None]
            acc.setdefault(cls, []).append(float(np.mean(w)) if w else float("nan"))
        collections = sum(1 for b in rec.batches if b.apheresis_end is not None
                          and sc.warmup_days <= b.apheresis_end < sc.horizon_days)
        holds = sum(k["hold_losses_by_cause"].values())
        for key, v in (("infused", k["patients_infused"]), ("v2v_p50", k["vein_to_vein_days"]["p50"]),
                       ("reman", k["patients_remanufactured"] / max(1, k["patients_referred"])),
                       ("hold", holds / max(1, collections)), ("resched", k["slot_reschedules"])):
            acc.setdefault(key, []).append(float(v if v is not None else np.nan))
    return {key: float(np.nanmean(v)) for key, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--replications", type=int, default=10)
    reps = ap.parse_args().replications
    t0 = time.time()
    print("| policy on `demand_plus_50` | urgent slot wait (d) | standard slot wait (d) | urgent / standard | "
          "infused / run | v2v p50 (d) | re-manufactured | hold-limit rejections | reschedules / run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, edits in POLICIES:
        m = measure(edits, reps)
        print(f"| {name} | {m['urgent']:.1f} | {m['standard']:.1f} | {m['urgent'] / m['standard']:.2f} | "
              f"{m['infused']:.0f} | {m['v2v_p50']:.1f} | {m['reman']:.1%} | {m['hold']:.2%} | {m['resched']:.1f} |")
    print(f"\n{reps} replications per policy, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
