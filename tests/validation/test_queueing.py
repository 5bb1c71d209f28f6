"""The model configured down to textbook queues, compared with queueing theory.

Each system is the full engine (referral -> 24/7 collection -> zero transit -> FIFO queue for the suite
pool -> one open step -> QC / QA / shipment tail) with every other constraint switched off, so the suite
pool is an M/G/c queue (see ``conftest.queue_scenario``). The wait in queue of a batch is
``mfg_start - ready``.

Statistics: R independent replications (common base seed, replication index r); per replication the
mean over batches whose ``ready`` falls in [warm-up, horizon - tail) (all of which must have started
before the horizon, so nothing is censored). The theoretical value must lie inside the 99% Student-t
confidence interval of the replication means, and that interval must be narrow (relative half-width
below a stated bound) so the comparison has the power to catch a wrong queue discipline, a lost server
or a mis-timed release.

Exact (non-statistical) checks complement them: a FIFO c-server queue obeys the Kiefer-Wolfowitz
recursion, so given the recorded ready times and step durations the waits are determined; the model's
waits must equal it to rounding.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from celltx_mfg import analysis
from celltx_mfg.config import Scenario, scenario_from_dict
from celltx_mfg.simulate import simulate

from .conftest import (
    build,
    erlang_c,
    exponential,
    fixed,
    md1_wq,
    mg1_wq,
    mmc_wq,
    queue_scenario,
    t_halfwidth,
)

TAIL = 30.0  # arrivals in the last TAIL days are not counted (they could still be waiting at the horizon)


@dataclass
class QueueRun:
    wq: np.ndarray  # per replication: mean wait in queue
    p_wait: np.ndarray  # per replication: share of batches that waited
    util: np.ndarray  # per replication: suite busy time / (c x window), from ResourceUse
    util_kpi: np.ndarray  # the same from analysis.kpis (the project's KPI definition)
    n: int  # batches counted over all replications
    kw_error: float  # largest |model wait - Kiefer-Wolfowitz wait| over all batches


def kiefer_wolfowitz(ready: np.ndarray, service: np.ndarray, servers: int) -> np.ndarray:
    """Waits of a FIFO c-server queue from arrival times and service times (ties in arrival order)."""
    free = [0.0] * servers  # times the servers become free
    heapq.heapify(free)
    waits = np.empty(len(ready))
    for i, (a, s) in enumerate(zip(ready, service, strict=True)):
        f = heapq.heappop(free)
        start = max(a, f)
        waits[i] = start - a
        heapq.heappush(free, start + s)
    return waits


def run_queue(servers: int, service: dict, lam: float, reps: int, horizon: float, warmup: float,
              clearance: float = 0.0, seed: int = 2027, extra: dict | None = None) -> QueueRun:
    wq, pw, util, util_kpi = [], [], [], []
    n, kw_err = 0, 0.0
    for r in range(reps):
        data = queue_scenario(servers, service, lam, horizon, warmup, seed=seed)
        data["gmp"]["line_clearance"] = fixed(clearance)
        if extra:
            for k, v in extra.items():
                data[k].update(v)
        rec = simulate(build(data), replication=r)
        batches = sorted(rec.batches, key=lambda b: (b.ready, b.coi))
        counted = [b for b in batches if warmup <= b.ready < horizon - TAIL]
        assert counted and all(b.mfg_start is not None for b in counted), "a counted batch never started"
        w = np.array([b.mfg_start - b.ready for b in counted])
        wq.append(w.mean())
        pw.append(float((w > 1e-9).mean()))
        n += len(w)
        # suite busy time inside the window [warmup, horizon), line clearance included
        busy = sum(max(0.0, min(u.end, horizon) - max(u.start, warmup)) for u in rec.resource_uses if u.kind == "suite")
        util.append(busy / (servers * (horizon - warmup)))
        util_kpi.append(analysis.kpis(rec.frames(), horizon, warmup)["utilisation"]["suite"])
        if extra is None:  # FIFO: the waits are determined by the ready times and the service times
            dur = {s.batch_no: s.end - s.start for s in rec.steps}
            started = []
            for b in batches:  # up to the first batch whose service had not ended by the horizon
                if b.batch_no not in dur:
                    break
                started.append(b)
            kw = kiefer_wolfowitz(np.array([b.ready for b in started]),
                                  np.array([dur[b.batch_no] + clearance for b in started]), servers)
            model = np.array([b.mfg_start - b.ready for b in started])
            kw_err = max(kw_err, float(np.abs(kw - model).max()))
    return QueueRun(np.array(wq), np.array(pw), np.array(util), np.array(util_kpi), n, kw_err)


def assert_in_ci(values: np.ndarray, theory: float, max_rel_halfwidth: float, what: str) -> None:
    mean, hw = float(values.mean()), t_halfwidth(values, 0.99)
    assert hw / theory < max_rel_halfwidth, f"{what}: CI too wide to test anything ({hw:.4f} vs {theory:.4f})"
    assert abs(mean - theory) <= hw, f"{what}: model {mean:.4f} +- {hw:.4f} (99% CI) vs theory {theory:.4f}"


# ------------------------------------------------------------------------------------------ M/M/2
MMC = dict(servers=2, lam=1.4, mean=1.0)  # rho = 0.7


@pytest.fixture(scope="module")
def mmc() -> QueueRun:
    return run_queue(MMC["servers"], exponential(MMC["mean"]), MMC["lam"], reps=10, horizon=1500, warmup=100)


def test_mmc_wait_matches_erlang_c(mmc: QueueRun) -> None:
    theory = mmc_wq(MMC["servers"], MMC["lam"], MMC["mean"])  # 0.9608 d
    assert_in_ci(mmc.wq, theory, 0.20, "M/M/2 Wq")


def test_mmc_probability_of_waiting_is_erlang_c(mmc: QueueRun) -> None:
    theory = erlang_c(MMC["servers"], MMC["lam"] * MMC["mean"])  # 0.5765
    assert_in_ci(mmc.p_wait, theory, 0.10, "M/M/2 P(wait)")


def test_mmc_utilisation_is_lambda_service_over_servers(mmc: QueueRun) -> None:
    theory = MMC["lam"] * MMC["mean"] / MMC["servers"]  # 0.70
    assert_in_ci(mmc.util, theory, 0.05, "M/M/2 utilisation")
    # the KPI module's definition (busy unit-days / available unit-days) is the same number
    np.testing.assert_allclose(mmc.util_kpi, mmc.util, rtol=1e-9)


def test_mmc_is_fifo_kiefer_wolfowitz(mmc: QueueRun) -> None:
    assert mmc.kw_error < 1e-9


# ------------------------------------------------------------------------------------------ M/D/1
MD1 = dict(lam=0.6, d=1.0)  # rho = 0.6


@pytest.fixture(scope="module")
def md1() -> QueueRun:
    return run_queue(1, fixed(MD1["d"]), MD1["lam"], reps=10, horizon=1500, warmup=100)


def test_md1_wait_matches_pollaczek_khinchine(md1: QueueRun) -> None:
    theory = md1_wq(MD1["lam"], MD1["d"])  # 0.75 d
    assert_in_ci(md1.wq, theory, 0.15, "M/D/1 Wq")


def test_md1_probability_of_waiting_is_rho(md1: QueueRun) -> None:
    assert_in_ci(md1.p_wait, MD1["lam"] * MD1["d"], 0.08, "M/D/1 P(wait)")
    assert md1.kw_error < 1e-9  # single server FIFO: Lindley's recursion exactly


def test_md1_utilisation(md1: QueueRun) -> None:
    assert_in_ci(md1.util, MD1["lam"] * MD1["d"], 0.05, "M/D/1 utilisation")


# ------------------------------------------------------- M/G/1: line clearance is part of the service
MG1 = dict(lam=0.6, mean=0.8, clearance=0.2)  # the suite is held for S + clearance: E = 1.0, rho = 0.6


@pytest.fixture(scope="module")
def mg1_clearance() -> QueueRun:
    return run_queue(1, exponential(MG1["mean"]), MG1["lam"], reps=10, horizon=1500, warmup=100,
                     clearance=MG1["clearance"])


def test_line_clearance_extends_service_pollaczek_khinchine(mg1_clearance: QueueRun) -> None:
    m, d = MG1["mean"], MG1["clearance"]
    mean, second = m + d, 2 * m * m + 2 * m * d + d * d  # E[(S+d)^2] for S ~ Exp(mean m): 1.64
    theory = mg1_wq(MG1["lam"], mean, second)  # 1.23 d; without clearance (M/M/1) it would be 0.74 d
    assert_in_ci(mg1_clearance.wq, theory, 0.20, "M/G/1 (exp + clearance) Wq")
    assert_in_ci(mg1_clearance.util, MG1["lam"] * mean, 0.05, "M/G/1 utilisation incl. clearance")
    assert mg1_clearance.kw_error < 1e-9


# --------------------------------------------------- M/M/1 with two non-preemptive priority classes
PRIO = dict(lam=0.7, mean=1.0, urgent=0.3)  # 30% urgent


def test_urgency_priority_matches_cobham() -> None:
    """Urgent batches go first in the suite queue (booking.priority: urgency). Non-preemptive priority
    M/G/1 (Cobham): W_k = W0 / ((1 - s_{k-1}) (1 - s_k)), W0 = sum_i lam_i E[S_i^2] / 2, s_k the load
    of classes 1..k."""
    lam, m, share = PRIO["lam"], PRIO["mean"], PRIO["urgent"]
    extra = {"demand": {"urgency_mix": {"urgent": share, "standard": 1 - share}},
             "booking": {"priority": "urgency", "urgency_order": ["urgent", "standard"]}}
    reps, horizon, warmup = 10, 1500, 100
    per_class: dict[str, list[float]] = {"urgent": [], "standard": []}
    for r in range(reps):
        data = queue_scenario(1, exponential(m), lam, horizon, warmup, seed=99)
        for k, v in extra.items():
            data[k].update(v)
        rec = simulate(build(data), replication=r)
        urg = {p.coi: p.urgency for p in rec.patients}
        for cls in per_class:
            w = [b.mfg_start - b.ready for b in rec.batches
                 if urg[b.coi] == cls and warmup <= b.ready < horizon - TAIL]
            per_class[cls].append(float(np.mean(w)))
    w0 = lam * 2 * m * m / 2  # exponential: E[S^2] = 2 m^2
    s1, s2 = lam * share * m, lam * m
    theory = {"urgent": w0 / (1 - s1), "standard": w0 / ((1 - s1) * (1 - s2))}  # 0.886, 2.953 d
    assert_in_ci(np.array(per_class["urgent"]), theory["urgent"], 0.15, "urgent Wq")
    assert_in_ci(np.array(per_class["standard"]), theory["standard"], 0.20, "standard Wq")


# --------------------------------------------- realistic scale (slow): 14 suites, 10-day occupancy
@pytest.mark.slow
def test_mmc_realistic_scale_erlang_c() -> None:
    c, mean, lam = 14, 10.0, 1.19  # rho = 0.85, ~435 batches a year
    q = run_queue(c, exponential(mean), lam, reps=40, horizon=3000, warmup=300)
    theory = mmc_wq(c, lam, mean)
    assert_in_ci(q.wq, theory, 0.25, "M/M/14 Wq")
    assert_in_ci(q.util, lam * mean / c, 0.03, "M/M/14 utilisation")
    assert q.kw_error < 1e-9


@pytest.mark.slow
def test_md1_high_load_pollaczek_khinchine() -> None:
    q = run_queue(1, fixed(1.0), 0.85, reps=20, horizon=4000, warmup=300)
    assert_in_ci(q.wq, md1_wq(0.85, 1.0), 0.20, "M/D/1 rho=0.85 Wq")


# ------------------------------------------------------------------- Little's law on the full baseline
def _baseline(horizon: float) -> tuple[Scenario, float, float]:
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "scenarios" / "baseline.yaml").read_text())
    data["horizon_days"] = horizon
    sc, _ = scenario_from_dict(data)
    return sc, sc.warmup_days, horizon


def little(intervals: list[tuple[float, float | None]], t1: float, t2: float, horizon: float) -> dict[str, float]:
    """Little's law over the window [t1, t2) for sojourns [a, d) (d None = still inside at the horizon).

    L = time-average number inside over the window (area of the clipped sojourns / window length);
    lam = entries in the window per day; W = mean full sojourn of those entries (d must be known: the
    caller picks t2 early enough). The identity L (t2 - t1) = sum W_i - overshoot + carry_in holds on
    every sample path; carry_in (sojourns begun before t1) and overshoot (parts after t2 of sojourns begun
    inside) are the edge effects, equal in expectation in steady state.
    """
    area = carry_in = overshoot = 0.0
    sojourns = []
    for a, d in intervals:
        end = horizon if d is None else d
        inside = max(0.0, min(end, t2) - max(a, t1))
        area += inside
        if a < t1:
            carry_in += inside
        elif a < t2:
            assert d is not None, "an entry inside the window is still inside at the horizon: move t2 earlier"
            sojourns.append(d - a)
            overshoot += max(0.0, d - t2)
    span = t2 - t1
    lam = len(sojourns) / span
    w = float(np.mean(sojourns))
    return {"L": area / span, "lam": lam, "W": w, "lamW": lam * w, "carry_in": carry_in / span,
            "overshoot": overshoot / span}


def test_littles_law_full_baseline() -> None:
    """Two subsystems of the unmodified baseline plant, horizon stretched to two years so the window is
    long compared with a journey: (a) patients between first apheresis and infusion or loss; (b) batches
    holding a suite (its ResourceUse, line clearance included). Over 4 replications the relative gap
    (L - lam W) / L must be within the 99% CI of zero and small; the gap must equal the edge-effect terms
    (carry-in minus overshoot) to rounding, so nothing in the records is double-counted or lost."""
    reps, tail = 4, 150.0
    gaps = {"patients": [], "suites": []}
    for r in range(reps):
        sc, t1, horizon = _baseline(730.0)
        rec = simulate(sc, replication=r)
        t2 = horizon - tail
        pats = []
        for p in rec.patients:
            if p.first_apheresis is None:
                continue
            d = p.infused if p.status == "infused" else p.lost_time if p.status == "lost" else None
            assert d is None or d >= p.first_apheresis
            pats.append((p.first_apheresis, d))
        holds = [(u.start, u.end if u.end < horizon else None) for u in rec.resource_uses if u.kind == "suite"]
        # a hold and its clearance are consecutive records of one unit: one "visit" each, both counted
        for name, iv in (("patients", pats), ("suites", holds)):
            res = little(iv, t1, t2, horizon)
            assert math.isclose(res["L"] - res["lamW"], res["carry_in"] - res["overshoot"], abs_tol=1e-9)
            gaps[name].append((res["L"] - res["lamW"]) / res["L"])
    for name, g in gaps.items():
        g = np.array(g)
        hw = t_halfwidth(g, 0.99)
        assert abs(g.mean()) <= max(hw, 0.01), f"{name}: Little's law gap {g.mean():+.3%} +- {hw:.3%}"
        assert np.abs(g).max() < 0.08, f"{name}: a replication's Little's law gap is {np.abs(g).max():.1%}"
