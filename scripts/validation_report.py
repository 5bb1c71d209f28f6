"""Model validity report: run the shipped scenarios with replications, compare their KPIs with the real-world
figures of REFERENCE.md section 2 and the textbook queues with queueing theory, and write docs/validation.md.

    PYTHONPATH=src .venv/bin/python scripts/validation_report.py [--reps 10] [--out docs/validation.md]

Every KPI comes from ``celltx_mfg.analysis.kpis`` (the project's one definition) and is summarised over
replications with ``analysis.summarise`` (mean and 95% Student-t half-width). Four figures that the
reference reports but ``kpis`` does not define are computed here, from the same records, and the report
says so where it shows them (see ``extra_figures``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # the textbook-queue helpers live with their tests

from tests.validation.conftest import (  # noqa: E402
    erlang_c,
    exponential,
    fixed,
    md1_wq,
    mg1_wq,
    mmc_wq,
    t_halfwidth,
)
from tests.validation.test_queueing import _baseline, little, run_queue  # noqa: E402

from celltx_mfg import analysis  # noqa: E402
from celltx_mfg.config import load_scenario  # noqa: E402
from celltx_mfg.records import RunRecords  # noqa: E402
from celltx_mfg.simulate import simulate  # noqa: E402

SCENARIOS = [
    "baseline", "kite_like", "collect_then_queue", "conditional_release", "demand_plus_50",
    "rapid_sterility", "two_more_suites", "weekend_shifts", "us_like",
]
PROCESS_FAILURES = ("_failure", "qc_failure", "qc_failure_discard", "oos_rejected")  # suffix / names


# ------------------------------------------------------------------------------ figures not in kpis()
def extra_figures(rec: RunRecords, warmup: float, horizon: float) -> dict[str, Any]:
    """Reference-style figures over the KPI cohort (patients referred in [warmup, horizon)):

    - ``aph_to_release_p50``: median over released batches of the cohort of released - apheresis_start
      (Kite's "leukapheresis -> disposition"; disposition taken as QP release).
    - ``made_not_infused``: of cohort patients with an apheresis whose journey ended (infused or lost),
      the share lost although a product had been made (a batch with mfg_end).
    - ``not_infused``: of the same patients, the share lost for any reason.
    - ``delivery_success``: patients with a product delivered / (those + patients lost because no product
      could be made, lost_reason manufacturing_failure); patient-side losses (dropout) are not the plant's.
    - ``lots_in_spec``: of cohort batches with QC complete, the share with no failed QC result and no OOS flag.
    - ``process_failure_rate``: started batches that failed in a step or in QC (incl. OOS rejected) /
      started batches; excludes shipping excursions and expiry, which kpis counts.
    - ``hold_rejections``: cohort batches rejected because fresh material waited past its hold limit
      (rule 3) / cohort batches collected. kpis leaves them out of the failure rate (never started).
    - ``release_to_infusion_p50``: median over infused batches of the cohort of infused - released
      (shipment, clinic readiness, lymphodepletion and the infusion slot; REF 6).
    - ``remanufactured``: cohort patients with more than one attempt (kpis ``patients_remanufactured``) /
      cohort patients; ``failures_remanufactured``: of cohort patients whose first batch failed with a
      re-collection possible (not lost in that batch's stage), the share that got another attempt.
    """
    cohort = {p.coi: p for p in rec.patients if warmup <= p.referred < horizon}
    batches = [b for b in rec.batches if b.coi in cohort]
    a2r = [b.released - b.apheresis_start for b in batches if b.released is not None]
    r2i = [b.infused - b.released for b in batches if b.infused is not None and b.released is not None]
    made = {b.coi for b in batches if b.mfg_end is not None}
    delivered = {b.coi for b in batches if b.delivered is not None}
    ended = [p for p in cohort.values() if p.first_apheresis is not None and p.status in ("infused", "lost")]
    lost = [p for p in ended if p.status == "lost"]
    mf_lost = sum(1 for p in lost if p.lost_reason == "manufacturing_failure")
    failed_qc = {q.batch_no for q in rec.qc_results if q.result == "fail"}
    tested = [b for b in batches if b.qc_complete is not None]
    started = [b for b in batches if b.mfg_start is not None]
    collected = [b for b in batches if b.apheresis_end is not None]
    held = [b for b in collected if b.failure_reason == "starting_material_hold_exceeded"]
    proc_failed = [b for b in started if b.status in ("failed", "expired") and b.failure_reason
                   and (b.failure_reason.endswith("_failure") or b.failure_reason in PROCESS_FAILURES)]
    first_failed = {b.coi for b in batches if b.attempt == 1 and b.status == "failed"
                    and b.failure_reason not in ("qc_failure_discard",)}
    again = {b.coi for b in batches if b.attempt == 2}
    return {
        "remanufactured": sum(1 for p in cohort.values() if p.attempts > 1) / len(cohort) if cohort else None,
        "failures_remanufactured": len(first_failed & again) / len(first_failed) if first_failed else None,
        "aph_to_release_p50": float(np.median(a2r)) if a2r else None,
        "made_not_infused": sum(1 for p in lost if p.coi in made) / len(ended) if ended else None,
        "not_infused": len(lost) / len(ended) if ended else None,
        "delivery_success": len(delivered) / (len(delivered) + mf_lost) if delivered or mf_lost else None,
        "lots_in_spec": (sum(1 for b in tested if b.batch_no not in failed_qc and not b.oos) / len(tested)
                         if tested else None),
        "process_failure_rate": len(proc_failed) / len(started) if started else None,
        "hold_rejections": len(held) / len(collected) if collected else None,
        "release_to_infusion_p50": float(np.median(r2i)) if r2i else None,
    }


def run_scenario(name: str, reps: int) -> dict[str, Any]:
    sc, _ = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    per_run, extras, reasons, holds = [], [], Counter(), Counter()
    t0 = time.perf_counter()
    for r in range(reps):
        rec = simulate(sc, replication=r)
        kp = analysis.kpis(rec.frames(), sc.horizon_days, sc.warmup_days, rec.costs)
        per_run.append(kp)
        extras.append(extra_figures(rec, sc.warmup_days, sc.horizon_days))
        reasons.update(b.failure_reason for b in rec.batches
                       if b.status in ("failed", "expired") and sc.warmup_days <= b.apheresis_start < sc.horizon_days)
        holds.update(kp["hold_losses_by_cause"])  # what is left of hold-limit losses, by cause
        holds["reschedules"] += kp["slot_reschedules"]
    return {"name": name, "scenario": sc, "kpis": analysis.summarise(per_run), "extra": analysis.summarise(extras),
            "reasons": reasons, "holds": holds, "reps": reps, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------- formatting
def val(summary: dict[str, Any], path: str, pct: bool = False, digits: int = 1) -> str:
    node: Any = summary
    ci: Any = summary.get("ci95", {})
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
        ci = ci.get(part) if isinstance(ci, dict) else None
    if node is None:
        return "n/a"
    scale = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    s = f"{node * scale:.{digits}f}{unit}"
    if isinstance(ci, (int, float)) and not math.isnan(ci):
        s += f" ± {ci * scale:.{digits}f}"
    return s


def mean_of(summary: dict[str, Any], path: str) -> float | None:
    node: Any = summary
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def verdict(x: float | None, lo: float, hi: float) -> str:
    if x is None:
        return "n/a"
    return "inside" if lo <= x <= hi else ("below" if x < lo else "above")


# ------------------------------------------------------------------------------------ queueing table
def queueing_rows() -> list[tuple[str, str, str, str, str]]:
    """(system, measure, theory, model mean ± 99% CI, verdict) for the textbook configurations of
    tests/validation/test_queueing.py (same seeds, so the same numbers the tests see)."""
    rows = []

    def add(system: str, measure: str, theory: float, values: np.ndarray) -> None:
        m, hw = float(values.mean()), t_halfwidth(values, 0.99)
        ok = "agrees" if abs(m - theory) <= hw else "DIFFERS"
        rows.append((system, measure, f"{theory:.4f}", f"{m:.4f} ± {hw:.4f}", ok))

    q = run_queue(2, exponential(1.0), 1.4, reps=10, horizon=1500, warmup=100)
    add("M/M/2, λ=1.4/d, E[S]=1 d", "Wq (d), Erlang C", mmc_wq(2, 1.4, 1.0), q.wq)
    add("M/M/2", "P(wait), Erlang C", erlang_c(2, 1.4), q.p_wait)
    add("M/M/2", "suite utilisation λE[S]/c", 0.7, q.util)
    q = run_queue(1, fixed(1.0), 0.6, reps=10, horizon=1500, warmup=100)
    add("M/D/1, λ=0.6/d, D=1 d", "Wq (d), Pollaczek-Khinchine", md1_wq(0.6, 1.0), q.wq)
    add("M/D/1", "P(wait) = ρ", 0.6, q.p_wait)
    q = run_queue(1, exponential(0.8), 0.6, reps=10, horizon=1500, warmup=100, clearance=0.2)
    add("M/G/1: Exp(0.8 d) + 0.2 d line clearance, λ=0.6/d", "Wq (d), Pollaczek-Khinchine",
        mg1_wq(0.6, 1.0, 2 * 0.64 + 2 * 0.8 * 0.2 + 0.04), q.wq)
    add("M/G/1 with clearance", "suite utilisation incl. clearance", 0.6, q.util)
    q = run_queue(14, exponential(10.0), 1.19, reps=40, horizon=3000, warmup=300)
    add("M/M/14, λ=1.19/d, E[S]=10 d (plant scale)", "Wq (d), Erlang C", mmc_wq(14, 1.19, 10.0), q.wq)
    add("M/M/14", "suite utilisation", 1.19 * 10 / 14, q.util)
    return rows


def little_rows(reps: int = 4) -> list[tuple[str, str, str, str, str]]:
    out = []
    acc: dict[str, list[dict[str, float]]] = {"patients first apheresis -> infusion/loss": [],
                                              "suite holds (incl. line clearance)": []}
    for r in range(reps):
        sc, t1, horizon = _baseline(730.0)
        rec = simulate(sc, replication=r)
        pats = [(p.first_apheresis, p.infused if p.status == "infused" else p.lost_time if p.status == "lost" else None)
                for p in rec.patients if p.first_apheresis is not None]
        holds = [(u.start, u.end if u.end < horizon else None) for u in rec.resource_uses if u.kind == "suite"]
        for key, iv in zip(acc, (pats, holds), strict=True):
            acc[key].append(little(iv, t1, horizon - 150.0, horizon))
    for key, res in acc.items():
        L = np.array([x["L"] for x in res])
        lam = np.array([x["lam"] for x in res])
        W = np.array([x["W"] for x in res])
        gap = (L - lam * W) / L
        out.append((key, f"{L.mean():.2f}", f"{lam.mean():.3f}/d × {W.mean():.2f} d = {(lam * W).mean():.2f}",
                    f"{gap.mean():+.2%} (max {np.abs(gap).max():.2%})",
                    f"{np.mean([x['carry_in'] for x in res]):.2f} / {np.mean([x['overshoot'] for x in res]):.2f}"))
    return out


# ------------------------------------------------------------------------------------------- report
def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def us_rows(us: dict[str, Any]) -> list[list[str]]:
    """us_like against the US figures: Kite's 16 d turnaround, axi-cel's 27.0 d vein-to-vein and the
    ~11 d from release to infusion they leave (REF 6, derived)."""
    a2r = mean_of(us["extra"], "aph_to_release_p50")
    v2v = mean_of(us["kpis"], "vein_to_vein_days.p50")
    r2i = mean_of(us["extra"], "release_to_infusion_p50")
    return [
        ["Kite leukapheresis -> disposition, US", "median 16 d", f"us_like {a2r:.1f} d", verdict(a2r, 14.0, 18.0)],
        ["vein-to-vein median, US axi-cel", "27.0 d", f"us_like {v2v:.1f} d", verdict(v2v, 25.0, 29.0)],
        ["release -> infusion, US (REF 6, derived)", "about 11 d (27 d vein-to-vein - 16 d turnaround)",
         f"us_like {r2i:.1f} d", verdict(r2i, 10.0, 12.0)],
    ]


def table(header: list[str], rows: list[list[str] | tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render(results: dict[str, dict[str, Any]], qrows: list, lrows: list, reps: int, seconds: float) -> str:
    b, k = results["baseline"], results["kite_like"]
    out: list[str] = []
    w = out.append
    w("# Model validity\n")
    w(f"Generated by `scripts/validation_report.py` on {dt.date.today().isoformat()} at commit "
      f"{git_describe()}, {reps} replications per scenario ({seconds:.0f} s in all). Do not edit by hand: "
      "re-run the script. Numbers are replication means ± 95% Student-t half-widths unless stated.\n")
    w("Validation here has three layers, each backed by tests that fail when the model drifts:\n")
    w("1. **Queueing theory** (`tests/validation/test_queueing.py`): the engine configured down to textbook "
      "queues reproduces Erlang C, Pollaczek-Khinchine, Cobham's priority formula, the utilisation law and "
      "Little's law.")
    w("2. **Trace validation** (`tests/validation/test_trace.py`): hand-computed timelines of a few patients, "
      "with shift, weekend, slot-book and QC-shift rules, equal the logged ones to the second.")
    w("3. **Invariants** (`tests/test_invariants.py`): on random small plants (Hypothesis), chain of "
      "identity, segregation, line clearance, capacity, shift rules, conservation, release rules and "
      "determinism hold on every record.\n")
    w("This page adds the **face validity** check: the shipped scenarios against the real-world figures of "
      "REFERENCE.md section 2 (REF 2).\n")

    # -------------------------------------------------------------- scenario KPI table
    w("## Scenario KPIs\n")
    w("Vein-to-vein, failure rate, throughput, waits and utilisation are `analysis.kpis`. Columns marked * "
      "are computed by this script from the same records because `kpis` does not define them "
      "(definitions in `extra_figures`): *apheresis -> release* is the median over released batches "
      "(Kite's leukapheresis -> disposition, disposition taken as QP release); *made, not infused* and "
      "*not infused* are shares of apheresed patients whose journey ended; *delivery success* counts a patient "
      "as a plant failure only when no product could be made; *lots in spec* is the share of tested "
      "batches with no failed result; *process failures* are step and QC failures only; *hold-limit rejections* are collections whose fresh "
      "material waited past its hold limit (rule 3), which `kpis` leaves out of the failure rate because "
      "processing never started. *v2v* is vein-to-vein, first apheresis to infusion.\n")
    rows = []
    for name, res in results.items():
        s, e = res["kpis"], res["extra"]
        rows.append([f"`{name}`", val(s, "vein_to_vein_days.p50"), val(s, "vein_to_vein_days.p90"),
                     val(s, "referral_to_infusion_days.p50"), val(e, "aph_to_release_p50"), val(s, "manufacturing_failure_rate", pct=True),
                     val(e, "process_failure_rate", pct=True), val(e, "hold_rejections", pct=True),
                     val(e, "made_not_infused", pct=True),
                     val(e, "not_infused", pct=True), val(e, "delivery_success", pct=True),
                     val(e, "lots_in_spec", pct=True), val(s, "throughput_per_year", digits=0),
                     val(s, "wait_for_slot_days.mean"), val(s, "utilisation.suite", pct=True)])
    w(table(["scenario", "v2v p50 (d)", "v2v p90 (d)", "referral->infusion p50 (d)", "aph->release p50 (d)*", "mfg failure (kpis)",
             "process failures*", "hold-limit rejections*", "made, not infused*", "not infused*", "delivery success*", "lots in spec*",
             "infusions / yr", "slot wait (d)", "suite util."], rows))
    w("")

    # -------------------------------------------------------------- comparison with REF 2
    w("## Against the real world (REF 2)\n")
    bv = mean_of(b["kpis"], "vein_to_vein_days.p50")
    kv = mean_of(k["kpis"], "vein_to_vein_days.p50")
    ka = mean_of(k["extra"], "aph_to_release_p50")
    ba = mean_of(b["extra"], "aph_to_release_p50")
    ctq = mean_of(results["collect_then_queue"]["kpis"], "vein_to_vein_days.p50")
    comp = [
        ["vein-to-vein median, axi-cel (fresh, lentiviral-like baseline)", "30.4 d pooled; trials 25.5, real world "
         "30.9; US 27.0, EU 38.0", f"baseline {bv:.1f} d", verdict(bv, 25.5, 38.0)],
        ["vein-to-vein median, liso-cel", "35.9 d", f"baseline {bv:.1f} d", verdict(bv, 30.0, 40.0)],
        ["vein-to-vein median, tisa-cel (cryopreserved apheresis, queued)", "48.4 d; US 42.7, EU 50.5",
         f"collect_then_queue {ctq:.1f} d", verdict(ctq, 42.7, 50.5)],
        ["Kite leukapheresis -> disposition", "median 16 d US (14 d after 2024), 19 d EU",
         f"kite_like {ka:.1f} d", verdict(ka, 16.0, 19.0)],
        ["Kite apheresis -> QP release, 2018-2020", "median 25 d", f"baseline {ba:.1f} d; kite_like {ka:.1f} d",
         verdict(ba, 22.0, 28.0) + " (baseline) / " + verdict(ka, 22.0, 28.0) + " (kite_like)"],
        ["vein-to-vein, Kite-like network", "US 27.0 d axi-cel, trials 25.5 d", f"kite_like {kv:.1f} d",
         verdict(kv, 20.0, 27.0)],
        *us_rows(results["us_like"]),
        ["labour share of cost, baseline", "about half of cost of goods",
         f"{mean_of(b['kpis'], 'labour_cost_share'):.0%} (staff paid for their shifts)",
         verdict(mean_of(b["kpis"], "labour_cost_share"), 0.4, 0.6)],
    ]
    brm = mean_of(b["extra"], "remanufactured")
    bfr = mean_of(b["extra"], "failures_remanufactured")
    bh = mean_of(b["extra"], "hold_rejections")
    comp += [
        ["patients re-manufactured, baseline", "UK panel 21 of 981 (2.1%)", f"{brm:.1%} of referred patients",
         verdict(brm, 0.01, 0.05)],
        ["failures re-manufactured, baseline", "UK panel 21 of 38 (55%)",
         f"{bfr:.0%} (input: booking.remanufacture.share 0.55, less patients lost meanwhile)", verdict(bfr, 0.40, 0.70)],
        ["hold-limit rejections of fresh material, baseline", "not reported; part of the UK panel's 38 of 981 "
         "(3.9%) failures of all causes", f"{bh:.2%} of collections", verdict(bh, 0.0, 0.01)],
    ]
    for name, sc in (("baseline", b), ("kite_like", k)):
        mf = mean_of(sc["kpis"], "manufacturing_failure_rate")
        pf = mean_of(sc["extra"], "process_failure_rate")
        comp.append([f"manufacturing failure, {name}", "1-8% (axi-cel 1%, tisa-cel 7-8%, UK panel 3.9%, cilta-cel 2.9%)",
                     f"{mf:.1%} all causes (kpis); {pf:.1%} step + QC", verdict(mf, 0.01, 0.08) + " / "
                     + verdict(pf, 0.01, 0.08)])
        mni = mean_of(sc["extra"], "made_not_infused")
        ni = mean_of(sc["extra"], "not_infused")
        comp.append([f"made but not infused / total not infused, {name}", "4-23% / 8-30% (axi-cel 8% / 9%)",
                     f"{mni:.1%} / {ni:.1%}", verdict(mni, 0.04, 0.23) + " / " + verdict(ni, 0.08, 0.30)])
        ds = mean_of(sc["extra"], "delivery_success")
        lis = mean_of(sc["extra"], "lots_in_spec")
        comp.append([f"delivery success / lots in spec, {name}", "Kite 99% / Kite 96%, cilta-cel 84%",
                     f"{ds:.1%} / {lis:.1%}", verdict(ds, 0.96, 0.995) + " / " + verdict(lis, 0.84, 0.97)])
    w(table(["figure", "REF 2", "model", "verdict"], comp))
    w("\n*Verdict* compares the model's mean with the reported range (inside / below / above); a single "
      "reported median is given a band of a few days around it.\n")

    # -------------------------------------------------------------- failure breakdown
    w("### Why batches fail in the model\n")
    rows = []
    for name in ("baseline", "kite_like", "collect_then_queue"):
        r = results[name]
        total = sum(r["reasons"].values())
        top = ", ".join(f"{reason} {n / r['reps']:.1f}" for reason, n in r["reasons"].most_common(7))
        rows.append([f"`{name}`", f"{total / r['reps']:.1f}", top])
    w(table(["scenario", "failed or expired batches / replication", "by reason (per replication)"], rows))
    w("")

    # -------------------------------------------------------------- queueing theory
    w("## Queueing theory\n")
    w("The engine reduced to one queue (`tests/validation/conftest.queue_scenario`): Poisson referrals, a "
      "24/7 site collecting on referral in zero time, zero transit, FIFO queue for c suites, one open step, "
      "no operators, no failures; the wait is `mfg_start - ready` over batches ready in [warm-up, horizon - 30 d). "
      "Model: mean of replication means ± 99% Student-t half-width (10 replications of 1,400 days; 40 of 2,700 "
      "days at plant scale). The FIFO waits also equal the Kiefer-Wolfowitz recursion on the recorded ready "
      "and step times to 1e-9 in every run (tested).\n")
    w(table(["system", "measure", "theory", "model (99% CI)", "verdict"], qrows))
    w("\nLittle's law on the unmodified baseline plant (horizon stretched to 730 d, window [90, 580) d, 4 "
      "replications; entries in the window all finish before the horizon). L is the time-average number "
      "inside; the gap L - λW equals carry-in minus overshoot exactly on every run (tested):\n")
    w(table(["subsystem", "L", "λ × W", "(L - λW) / L", "carry-in / overshoot"], lrows))
    w("")

    # -------------------------------------------------------------- where the model differs
    w("## Where the model differs, and why\n")
    bmf = mean_of(b["kpis"], "manufacturing_failure_rate")
    w(f"- **Baseline vein-to-vein ({bv:.0f} d median) is longer than trial figures (25.5 d) and the US "
      "real-world median (27.0 d), nearer the EU's 38.0 d.** The baseline is a mid-size plant with weekday-only day shifts, compendial 14-day "
      "sterility and full release; a product cannot be released in less than ~1 d transit + ~11-13 d in the "
      "suite (an expansion ending on Friday evening waits for Monday) + 14 d sterility + QA. Real axi-cel runs "
      "a ~7-day process with faster release; `kite_like` shows the same engine lands in Kite's 16-19 d "
      "window once process length, sterility method and shift pattern match. Kite's earlier 25 d "
      "(2018-2020, apheresis -> QP release) lies between the two scenarios.")
    kmf = mean_of(k["kpis"], "manufacturing_failure_rate")
    w(f"- **Manufacturing failure rate** (baseline {bmf:.1%}, {verdict(bmf, 0.01, 0.08)} REF 2's 1-8%; "
      f"kite_like {kmf:.1%}, {verdict(kmf, 0.01, 0.08)}) is near the reported figures by construction: the scenario files set the step failure probabilities (baseline expansion 4% + "
      "transduction 1%, kite_like 1%) and the QC failure probabilities inside the reported range. What the "
      "model adds is the rest: QC rejections (OOS products the physician does not request are re-made) and "
      "the re-manufacture loop. The baseline's rate sits at the top of the range because QC rejections "
      "come on top of 5% step failures.")
    hd = b["holds"]
    causes = ", ".join(f"{c} {hd[c] / b['reps']:.1f}" for c in sorted(analysis.KPI_GROUP_KEYS["hold_losses_by_cause"],
                                                                    key=lambda c: -hd[c]) if hd[c])
    w(f"- **Hold-limit rejections** (rule 3: fresh material must enter processing within 48 h) are "
      f"{bh:.2%} of the baseline's collections. The slot plan books each start on a suite projected free for "
      "the batch's whole occupancy (the step template walked on the operators' calendar, line clearance "
      "included), re-estimates running batches as they go (in-process results show a step's end 2 days "
      "ahead), and moves a start whose suite will not be free before its apheresis: "
      f"{hd['reschedules'] / b['reps']:.1f} reschedules per replication. What remains has real causes, per "
      f"replication: {causes or 'none'} (KPI group `hold_losses_by_cause`). Before the slot plan the baseline "
      "rejected about 5% of collections, because the slot book reserved suites as a count per day for 14 days "
      "while 18% of suite holds ran longer. The price of planning honestly is capacity: starts can only be "
      "booked where a suite is projected clear by the start day's shift, so the baseline's slot wait is "
      "longer than before (a suite freed on a Friday waits for the next Wednesday start). It stays bounded: "
      "in years 1-4 of a four-year run the mean slot wait was 5-31 d (two seeds), no trend; a leak that kept "
      "the suite booking of material lost before the plant made it grow year on year until it was fixed. "
      "REF 2 gives no hold-limit figure; the UK panel's 38 failures in 981 patients "
      "(3.9%) are of all causes, so the remainder here is in proportion.")
    w(f"- **Re-manufacture** ({brm:.1%} of the baseline's patients, against the UK panel's 2.1%): not every "
      "failure is re-collected (the panel re-manufactured 21 of 38; `booking.remanufacture.share` 0.55), and "
      "with hold-limit rejections near zero the failures left are process and QC failures. The rate stays "
      "above the UK figure because the baseline's process fails more often (7-8% against the panel's 3.9%).")
    w("- **Made but not infused** comes only from a constant daily dropout hazard (baseline 0.2%/day, "
      "kite_like 0.4%/day, assumptions) plus manufacturing failures. With a constant hazard, total not "
      "infused can be matched to axi-cel's 9% but made-but-not-infused then stays near 5% against the "
      "reported 8%: real patients deteriorate most while their product is being made (progression despite "
      "bridging therapy), a rising hazard the model does not represent. The hazard is an input, so this is "
      "calibration, not independent validation.")
    w("- **Lots in spec** is driven by the per-test failure probabilities in the scenario files: the "
      "baseline's (~7% summed) put it between Kite's 96% and cilta-cel's 84%; kite_like's were set to "
      "Kite's 96%. Agreement is calibration. **Delivery success** is slightly optimistic in kite_like "
      "(above Kite's 99%): with a 1% step failure, two attempts and no vector shortage or poor "
      "apheresis material, almost every patient who stays eligible gets a product; the model has no cause "
      "of non-delivery other than repeated failure. Out-of-specification products are released under EU "
      "GMP Part IV 11.5 with probability `exceptional_release_probability` (0.6, from the UK panel's 13 of 38).")
    w(f"- **Tisa-cel-like queueing** (`collect_then_queue`, {ctq:.0f} d median) is shorter than tisa-cel's "
      "real 42-50 d: the scenario keeps the baseline's process and plant, so it isolates the effect of the "
      "booking rule; real tisa-cel also has a longer process and release and slot scarcity upstream of "
      "apheresis (REF 2: median 1 slot/month/centre), which the model would need as explicit inputs.")
    us = results["us_like"]
    w(f"- **US release to infusion** (`us_like`, {mean_of(us['extra'], 'release_to_infusion_p50'):.1f} d median) "
      "is there by construction: the scenario sets each centre's `clinic_readiness` (bed, chemotherapy and "
      "infusion-day scheduling once the release date is known, triangular 3-5-10 d) so that shipment, "
      "readiness, 3-5 d of lymphodepletion and the next infusion slot add up to REF 6's derived ~11 d. "
      "What is not calibrated is the rest: with QA reviewing the batch record while QC incubates, the "
      f"Kite-like plant's apheresis -> release comes to {mean_of(us['extra'], 'aph_to_release_p50'):.1f} d "
      f"and vein-to-vein to {mean_of(us['kpis'], 'vein_to_vein_days.p50'):.1f} d, against Kite's US 16 d and "
      "axi-cel's US 27.0 d.")
    w(f"- **Labour share of cost** (baseline {mean_of(b['kpis'], 'labour_cost_share'):.0%}) pays every "
      "operator, QC analyst and QA reviewer for their shifts, idle time included (`costs.labour_basis: "
      "paid`; hands-on hours only would give about half that). It stays below the published 'about half of "
      "cost of goods' because the baseline's headcount is small beside its per-batch materials and QC "
      "(REF 2's i-SHIPMENT figures) and its facility cost; QA/QC management, supervision, materials "
      "handling and batch-record staff, who are not modelled as pools, are not in it.")
    w("- **What the model does not include**: vector-lot availability, bridging therapy, apheresis product "
      "quality (low CD3 counts), repeat apheresis sessions, holidays, staff absence, equipment breakdown and "
      "the regulator's batch-specific decisions. Each would lengthen the real tails (p90) more than the "
      "medians.\n")

    w("## Engine issues found by the validation tests\n")
    w("Pinned as strict `xfail` tests so they turn red when fixed (then remove the mark):\n")
    w("- `tests/test_invariants.py::test_no_conditional_release_over_a_failed_result_in_hand`: under "
      "conditional release, a pending (not required) result that has already failed when the QP signs is "
      "ignored: the batch is released, shipped and infused, with no deviation and no recall.")
    w("- `tests/test_invariants.py::test_apheresis_day_record_requested_before_start`: a 24/7 site's apheresis "
      "day record starts at 00:00 of the day but is requested at referral (requested > start).")
    w("- `tests/validation/test_trace.py::test_batch_record_names_its_suite`: `BatchRecord.suite` is never set.")
    w("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10, help="replications per scenario")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "validation.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = {}
    for name in SCENARIOS:
        results[name] = run_scenario(name, args.reps)
        print(f"{name:22s} {results[name]['seconds']:5.1f} s", file=sys.stderr)
    qrows = queueing_rows()
    print(f"queueing done {time.perf_counter() - t0:5.1f} s", file=sys.stderr)
    lrows = little_rows()
    text = render(results, qrows, lrows, args.reps, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
