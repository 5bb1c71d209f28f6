"""Property tests: random small valid scenarios through the real engine, and GMP / bookkeeping invariants
checked on the records it writes.

Each example is a whole plant drawn by Hypothesis (suites and dedicated suites, infectious donors,
demand, step and test durations, shift calendars with and without weekends, a start date on any
weekday, release policy, failure probabilities and consequences, booking mode, fresh or cryopreserved
material). Horizons are at most 200 days and demand at most 150 patients a year so an example runs in
milliseconds. Every invariant is checked against the scenario, independently of the engine's helpers
(shift windows are recomputed here from the calendar spec).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celltx_mfg import analysis
from celltx_mfg.config import Scenario, scenario_from_dict
from celltx_mfg.records import RunRecords
from celltx_mfg.simulate import simulate

EPS = 1e-9
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
PATIENT_STATUSES = {"infused", "lost", "in_progress"}
DAY_BOOKS = ("apheresis", "infusion", "manufacturing_slot")  # whole booked days, see test_apheresis_day_record
BATCH_STATUSES = {"infused", "released", "failed", "expired", "in_progress", "abandoned"}


# --------------------------------------------------------------------------------------- strategies
def _fixed(v: float) -> dict[str, Any]:
    return {"dist": "fixed", "value": round(v, 4)}


@st.composite
def durations(draw: st.DrawFn, lo: float, hi: float) -> dict[str, Any]:
    kind = draw(st.sampled_from(["fixed", "triangular", "exponential", "uniform"]))
    a = draw(st.floats(lo, hi))
    if kind == "fixed":
        return _fixed(a)
    if kind == "exponential":
        return {"dist": "exponential", "mean": round(a, 4)}
    b = draw(st.floats(lo, hi))
    low, high = sorted((round(a, 4), round(b, 4)))
    if kind == "uniform":
        return {"dist": "uniform", "low": low, "high": high}
    return {"dist": "triangular", "low": low, "mode": round((low + high) / 2, 4), "high": high}


@st.composite
def calendars(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["always", "weekdays", "all_week", "random_days"]))
    if kind == "always":
        return {"shifts": [{"start_hour": 0, "hours": 24}], "days": DAYS}
    if kind == "weekdays":
        days = DAYS[:5]
    elif kind == "all_week":
        days = DAYS
    else:
        days = sorted(draw(st.sets(st.sampled_from(DAYS), min_size=2, max_size=6)), key=DAYS.index)
    start = draw(st.integers(5, 10))
    hours = draw(st.integers(6, 10))
    shifts = [{"start_hour": start, "hours": hours}]
    if draw(st.booleans()):  # a second (late) shift, possibly running past midnight
        second = start + hours + draw(st.integers(0, 2))
        if second < 24:
            shifts.append({"start_hour": second, "hours": min(draw(st.integers(4, 8)), start + 24 - second)})
    return {"shifts": shifts, "days": days}


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    horizon = draw(st.integers(60, 200))
    infectious = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3]))
    dedicated = draw(st.integers(1, 2)) if infectious > 0 else draw(st.integers(0, 1))
    suites = dedicated + draw(st.integers(1, 3))
    mode = draw(st.sampled_from(["slot", "collect_then_queue"]))
    material = "cryopreserved" if mode == "collect_then_queue" else draw(st.sampled_from(["fresh", "cryopreserved"]))
    cals = {"ops": draw(calendars()), "qc": draw(calendars()), "qa": draw(calendars()),
            "clinic": draw(calendars()), "starts": draw(calendars())}
    step_ops = draw(st.integers(0, 2))
    clear_ops = draw(st.integers(0, 1))
    operators = max(step_ops, clear_ops, 1) + draw(st.integers(0, 2))
    freezers = draw(st.integers(0, 1))

    def failure() -> dict[str, Any] | None:
        p = draw(st.sampled_from([0.0, 0.05, 0.3]))
        return None if p == 0 else {"probability": p,
                                    "consequence": draw(st.sampled_from(["recollect", "discard", "oos"]))}

    products = {}
    for k in range(draw(st.integers(1, 2))):
        steps = [
            {"name": "activation", "duration": draw(durations(0.05, 0.3)), "open": True, "uses": ["suite"],
             "hold_until": {"suite": "harvest"}, "operators": step_ops},
            {"name": "expansion", "duration": draw(durations(1.0, 9.0)), "uses": ["incubator"],
             "min_days": 1.0, "max_days": 8.0, "failure": failure()},
            {"name": "harvest", "duration": draw(durations(0.05, 0.4)), "open": True, "operators": step_ops,
             "failure": failure()},
        ]
        if freezers:
            steps.append({"name": "cryopreservation", "duration": draw(durations(0.05, 0.2)), "uses": ["freezer"],
                          "operators": min(1, operators)})
        products[f"prod{k}"] = {"steps": [{kk: v for kk, v in s.items() if v is not None} for s in steps]}

    def test(name: str, lo: float, hi: float, sterility: bool = False) -> dict[str, Any]:
        return {"name": name, "duration": draw(durations(lo, hi)), "hands_on_hours": draw(st.sampled_from([0, 1, 3])),
                "failure_probability": draw(st.sampled_from([0.0, 0.02, 0.2])),
                "consequence": draw(st.sampled_from(["recollect", "discard", "oos"])), "sterility": sterility}

    sites = []
    for i in range(draw(st.integers(1, 2))):
        sites.append({
            "name": f"site{i}", "share": 1.0, "apheresis_per_day": draw(st.integers(1, 3)),
            "apheresis_duration": draw(durations(0.1, 0.3)), "inbound_transit": draw(durations(0.2, 2.0)),
            "outbound_transit": draw(durations(0.5, 2.0)), "infusion_slots_per_day": draw(st.integers(1, 2)),
            "lymphodepletion": draw(durations(2.0, 5.0)), "calendar": "clinic",
        })
    urgency = draw(st.booleans())
    return {
        "name": "hypothesis",
        "start_date": (dt.date(2027, 1, 4) + dt.timedelta(days=draw(st.integers(0, 6)))).isoformat(),
        "horizon_days": horizon,
        "warmup_days": draw(st.integers(0, horizon // 3)),
        "seed": draw(st.integers(0, 2**31)),
        "demand": {
            "per_year": draw(st.integers(20, 150)),
            "dropout_per_day": draw(st.sampled_from([0.0, 0.002, 0.02])),
            "infectious_fraction": infectious,
            "urgency_mix": {"urgent": 0.3, "standard": 0.7} if urgency else {"standard": 1.0},
            "product_mix": {p: 1.0 for p in products},
        },
        "sites": sites,
        "booking": {
            "mode": mode, "starts_per_day": draw(st.integers(1, 3)), "start_calendar": "starts",
            "horizon_days": draw(st.sampled_from([14, 56])),
            "priority": "urgency" if urgency else "fifo", "urgency_order": ["urgent", "standard"],
            "apheresis_lead_days": draw(st.sampled_from([0, 1, 2])), "max_attempts": draw(st.integers(1, 3)),
        },
        "calendars": cals,
        "resources": {
            "suites": suites, "dedicated_suites": dedicated, "incubators": draw(st.integers(1, 4)),
            "freezers": freezers,
            "operators": {"count": operators, "calendar": "ops"},
            "qc_analysts": {"count": draw(st.integers(1, 2)), "calendar": "qc"},
            "qa_reviewers": {"count": draw(st.integers(1, 2)), "calendar": "qa"},
        },
        "products": products,
        "qc": {"tests": [test("sterility", 1.0, 14.0, sterility=True), test("endotoxin", 0.1, 0.5),
                         test("potency", 0.5, 3.0)]},
        "release": {"policy": draw(st.sampled_from(["full", "conditional"])),
                    "qa_review_hours": draw(st.sampled_from([2, 6])),
                    "qa_review_elapsed": draw(durations(0.5, 3.0))},
        "gmp": {
            "line_clearance": _fixed(draw(st.floats(0.02, 0.1))),
            "clearance_operators": clear_ops,
            "infectious_decontamination": _fixed(0.03),
            "fresh_hold_limit_hours": draw(st.sampled_from([24, 48, 72])),
            "on_hold_exceeded": draw(st.sampled_from(["recollect", "qa_accept"])),
            "starting_material": material,
            "oos_policy": draw(st.sampled_from(["reject", "exceptional_release"])),
            "deviation_investigation": draw(durations(0.5, 5.0)),
            "shelf_life_days": draw(st.sampled_from([20, 365])),
            "shipper_hold_days": draw(st.sampled_from([1.8, 10])),
        },
    }


# ------------------------------------------------------------------------------------------- checks
def _windows(spec: Any, start_weekday: int, t: float) -> list[tuple[float, float]]:
    """Shift windows (start, end) in days beginning on the day of t or the day before (night shifts)."""
    out = []
    for day in (math.floor(t) - 1, math.floor(t)):
        if DAYS[(start_weekday + day) % 7] in spec.days:
            out.extend((day + s.start_hour / 24, day + (s.start_hour + s.hours) / 24) for s in spec.shifts)
    return out


def _max_concurrent(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(e, -1) for s, e in intervals if e - s > EPS] + [(s, +1) for s, e in intervals if e - s > EPS])
    n = peak = 0
    for _, d in events:  # at equal times an end (-1) sorts before a start (+1)
        n += d
        peak = max(peak, n)
    return peak


def _overlaps(intervals: list[tuple[float, float, Any]]) -> list[tuple[Any, Any]]:
    """Pairs of positive-length intervals that overlap by more than EPS (sorted sweep)."""
    bad = []
    iv = sorted((s, e, tag) for s, e, tag in intervals if e - s > EPS)
    for (_, e0, t0), (s1, _, t1) in itertools.pairwise(iv):
        if s1 < e0 - EPS:
            bad.append((t0, t1))
    return bad


def check_invariants(sc: Scenario, rec: RunRecords) -> None:
    h = sc.horizon_days
    patients = {p.coi: p for p in rec.patients}
    batches = {b.batch_no: b for b in rec.batches}
    assert len(patients) == len(rec.patients) and len(batches) == len(rec.batches), "duplicate ids"
    by_patient: dict[str, list] = defaultdict(list)
    for b in rec.batches:
        by_patient[b.coi].append(b)

    # -- chain of identity: every record names its batch and the batch's donor
    for b in rec.batches:
        assert b.coi in patients, f"batch {b.batch_no} of unknown donor"
        assert b.batch_no == f"{b.coi}-A{b.attempt}"
    for table in ("steps", "resource_uses", "qc_results", "deviations", "shipments", "releases"):
        for r in getattr(rec, table):
            if r.batch_no is None:
                assert table in ("resource_uses", "deviations") and r.coi is None, (table, r)
                continue
            assert r.batch_no in batches, f"{table}: {r.batch_no} names no batch"
            assert r.coi == batches[r.batch_no].coi and r.batch_no.startswith(r.coi + "-"), (table, r)

    # -- conservation and final states
    assert {p.status for p in rec.patients} <= PATIENT_STATUSES
    for p in rec.patients:
        bs = sorted(by_patient[p.coi], key=lambda b: b.attempt)
        assert p.attempts == len(bs) and [b.attempt for b in bs] == list(range(1, len(bs) + 1))
        assert len(bs) <= sc.booking.max_attempts
        assert all(b.status in BATCH_STATUSES for b in bs)
        assert all(b.status in ("failed", "expired") for b in bs[:-1]), f"{p.coi}: an earlier attempt did not fail"
        for b in bs:
            if b.status in ("failed", "expired"):
                assert b.failure_reason, b
        if p.status == "infused":
            assert p.infused is not None and bs[-1].status == "infused" and bs[-1].infused == p.infused
            assert p.lost_time is None
        elif p.status == "lost":
            assert p.lost_time is not None and p.lost_reason and p.infused is None
            assert not any(b.status in ("in_progress", "released", "infused") for b in bs), (p, bs[-1])
            assert p.lost_time >= p.referred - EPS
        else:
            assert p.infused is None and p.lost_time is None and p.stage_at_horizon
            assert bs == [] or bs[-1].status in ("in_progress", "released"), (p, bs[-1])
    k = analysis.kpis(rec.frames(), h, sc.warmup_days, rec.costs)
    assert k["patients_referred"] == k["patients_infused"] + k["patients_lost"] + k["patients_in_progress"]
    cohort = [p for p in rec.patients if sc.warmup_days <= p.referred < h]
    assert k["patients_referred"] == len(cohort)

    # -- time order along each batch; nothing infused before release
    chain = ("apheresis_start", "apheresis_end", "received", "ready", "mfg_start", "mfg_end", "qc_complete",
             "released", "shipped", "delivered", "infused")
    for b in rec.batches:
        times = [(f, getattr(b, f)) for f in chain if getattr(b, f) is not None]
        for (f0, t0), (f1, t1) in itertools.pairwise(times):
            assert t0 <= t1 + EPS, f"{b.batch_no}: {f0}={t0} after {f1}={t1}"
        if b.infused is not None:
            assert b.released is not None and b.released <= b.infused and b.status == "infused"
        if b.slot_day is not None and b.ready is not None:
            assert b.ready >= b.slot_day - EPS
        if b.status in ("released", "infused"):
            assert b.released is not None

    # -- release only on the required results, never on a known failure (rule 10, 11)
    tests = {t.name: t for t in sc.qc.tests}
    if sc.release.policy == "full":
        required = set(tests)
    else:
        required = set(sc.release.conditional_after or [n for n, t in tests.items() if not t.sterility])
    results: dict[str, dict[str, Any]] = defaultdict(dict)
    for q in rec.qc_results:
        assert q.required_for_release == (q.test in required), q
        assert q.sampled - EPS <= q.start <= q.result_time + EPS
        results[q.batch_no][q.test] = q
    releases = {r.batch_no: r for r in rec.releases}
    for b in rec.batches:
        if b.released is None:
            assert b.batch_no not in releases
            continue
        r = releases[b.batch_no]
        assert abs(r.time - b.released) < EPS and r.mode == b.release_mode and r.signer_role == "qualified_person"
        for name in required:
            q = results[b.batch_no].get(name)
            assert q is not None and q.result_time <= b.released + EPS, f"{b.batch_no} released before {name}"
        if sc.release.policy == "full":
            assert r.results_pending == ""
        # (a failed NOT-required result already in hand at release is the bug pinned in
        # test_no_conditional_release_over_a_failed_result_in_hand; only required ones are checked here)
        failed_known = [q for q in results[b.batch_no].values() if q.result == "fail" and q.test in required]
        if failed_known or b.oos:
            assert b.release_mode == "exceptional_oos", f"{b.batch_no} released {b.release_mode} with OOS"
            assert all(tests[q.test].consequence == "oos" for q in failed_known)
        # a major/critical deviation raised before release must be closed before release (rule 9)
        for d in rec.deviations:
            if d.batch_no == b.batch_no and d.severity in ("major", "critical") and d.time <= b.released:
                assert d.closed is not None and d.closed <= b.released + EPS, (b.batch_no, d)

    # -- starting-material hold (rule 3) and expiry (rule 12)
    first_start = {}
    for s in rec.steps:
        first_start[s.batch_no] = min(first_start.get(s.batch_no, math.inf), s.start)
    limit = sc.gmp.fresh_hold_limit_hours / 24
    for b in rec.batches:
        if b.batch_no in first_start and sc.gmp.starting_material == "fresh":
            held = first_start[b.batch_no] - b.apheresis_end
            if sc.gmp.on_hold_exceeded == "recollect":
                assert held <= limit + 1e-7, f"{b.batch_no}: fresh material processed after {held * 24:.1f} h"
            elif held > limit + 1e-7:
                assert any(d.batch_no == b.batch_no and d.kind == "starting_material_hold_exceeded"
                           for d in rec.deviations), b.batch_no
        for f in ("shipped", "infused"):
            if getattr(b, f) is not None:
                assert b.expiry is not None and getattr(b, f) <= b.expiry + EPS, f"{b.batch_no} {f} past expiry"
    outbound = {x.batch_no: x for x in rec.shipments if x.direction == "outbound"}
    for b in rec.batches:
        if b.shipped is not None:
            assert b.batch_no in outbound and abs(outbound[b.batch_no].depart - b.shipped) < EPS
        if b.infused is not None:
            assert not outbound[b.batch_no].excursion, f"{b.batch_no} infused after a shipper excursion"

    # -- deviations name existing batches
    for d in rec.deviations:
        assert d.severity in ("minor", "major", "critical")
        if d.batch_no is not None:
            assert d.batch_no in batches and batches[d.batch_no].coi == d.coi

    # -- units: exclusive use, capacity, segregation
    r = sc.resources
    general = {f"S{i + 1}" for i in range(r.suites - r.dedicated_suites)}
    dedicated = {f"SD{i + 1}" for i in range(r.dedicated_suites)}
    names = {"suite": general | dedicated, "incubator": {f"I{i + 1}" for i in range(r.incubators)},
             "freezer": {f"F{i + 1}" for i in range(r.freezers)},
             "closed_device": {f"C{i + 1}" for i in range(r.closed_devices)}}
    per_unit: dict[tuple[str, str], list] = defaultdict(list)
    for u in rec.resource_uses:
        assert u.start <= u.end + EPS and u.end <= h + EPS or u.kind in DAY_BOOKS, u
        if u.kind not in DAY_BOOKS:  # day-book records span the booked day [day, day + 1)
            assert u.requested <= u.start + EPS, u
        if u.kind in names:
            assert u.unit in names[u.kind], f"unknown unit {u}"
            per_unit[(u.kind, u.unit)].append(u)
            if u.kind == "suite":
                infectious = patients[u.coi].infectious
                assert (u.unit in dedicated) == infectious, f"donor infectious={infectious} in suite {u.unit}"
    for (kind, unit), uses in per_unit.items():
        bad = _overlaps([(u.start, u.end, (u.batch_no, u.activity)) for u in uses])
        assert not bad, f"{kind} {unit} held twice at once: {bad[:3]}"
    # open steps: one donor per suite at any time
    open_by_suite: dict[str, list] = defaultdict(list)
    for s in rec.steps:
        assert s.start >= s.ready - EPS and s.end >= s.start - EPS
        if s.open:
            held = dict(x.split(":") for x in s.resources.split(";") if x)
            assert "suite" in held, f"open step without a suite: {s}"
            open_by_suite[held["suite"]].append((s.start, s.end, s.coi))
    for unit, iv in open_by_suite.items():
        bad = [(a, b) for a, b in _overlaps(iv) if a != b]
        assert not bad, f"suite {unit}: two donors' open steps at once {bad[:3]}"
    # line clearance after every processed batch before the next one (fixed clearance + decontamination)
    processed = {(s.batch_no, x.split(":")[1]) for s in rec.steps for x in s.resources.split(";") if x.startswith("suite:")}
    clearance = sc.gmp.line_clearance.mean()
    for (kind, unit), uses in per_unit.items():
        if kind != "suite":
            continue
        holds = sorted((u for u in uses if u.activity != "line_clearance"), key=lambda u: u.start)
        for prev, nxt in itertools.pairwise(holds):
            if (prev.batch_no, unit) in processed:
                need = clearance + (sc.gmp.infectious_decontamination.mean() if patients[prev.coi].infectious else 0.0)
                assert nxt.start - prev.end >= need - 1e-7, f"{unit}: {nxt.batch_no} {nxt.start - prev.end:.4f} d after {prev.batch_no}, clearance {need:.4f}"
    # staff: never more busy than on shift, tasks start on shift and fit in it
    pools = {"operators": r.operators, "qc_analysts": r.qc_analysts, "qa_reviewers": r.qa_reviewers}
    weekday = sc.start_date.weekday()
    for kind, pool in pools.items():
        uses = [u for u in rec.resource_uses if u.kind == kind]
        assert _max_concurrent([(u.start, u.end) for u in uses]) <= pool.count, f"{kind} over capacity"
        spec = sc.calendars[pool.calendar]
        if len(spec.days) == 7 and sum(s.hours for s in spec.shifts) >= 24:
            continue
        longest = max(s.hours for s in spec.shifts) / 24
        for u in uses:
            need = min(u.end - u.start, longest)
            if u.end >= h - EPS:
                continue  # cut by the horizon: the recorded end is not the task's
            ok = any(ws - EPS <= u.start < we + EPS and u.start + need <= we + 1e-7
                     for ws, we in _windows(spec, weekday, u.start))
            assert ok, f"{kind} task {u.activity} at {u.start:.4f} ({u.end - u.start:.4f} d) not inside a shift"


def _records_equal(a: RunRecords, b: RunRecords) -> bool:
    return all(getattr(a, n) == getattr(b, n) for n, _ in RunRecords.TABLES) and a.costs == b.costs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=scenarios())
def test_invariants_hold_on_random_plants(data: dict[str, Any]) -> None:
    sc, _ = scenario_from_dict(data)
    rec = simulate(sc, seed=sc.seed)
    check_invariants(sc, rec)
    # same seed -> identical records; another seed -> different ones (when anybody was referred)
    again = simulate(sc, seed=sc.seed)
    assert _records_equal(rec, again)
    if rec.patients:
        other = simulate(sc, seed=sc.seed + 1)
        assert not _records_equal(rec, other)


# ------------------------------------------------------------------- engine bugs pinned by examples
def _small_plant(**over: Any) -> dict[str, Any]:
    """One 24/7 site collecting on referral, one suite, one open step, ample 24/7 staff."""
    always = {"shifts": [{"start_hour": 0, "hours": 24}], "days": DAYS}
    data: dict[str, Any] = {
        "name": "pinned", "horizon_days": 60, "seed": 3,
        "demand": {"per_year": 60},
        "sites": [{"name": "s", "apheresis_per_day": 10, "apheresis_duration": _fixed(0.25),
                   "inbound_transit": _fixed(1.0), "outbound_transit": _fixed(1.0), "infusion_slots_per_day": 10,
                   "lymphodepletion": _fixed(3.0), "calendar": "always"}],
        "booking": {"mode": "collect_then_queue", "start_calendar": "always", "max_attempts": 1},
        "calendars": {"always": always},
        "resources": {"suites": 1, "operators": {"count": 1, "calendar": "always"},
                      "qc_analysts": {"count": 5, "calendar": "always"},
                      "qa_reviewers": {"count": 5, "calendar": "always"}},
        "products": {"p": {"steps": [{"name": "process", "duration": _fixed(0.5), "open": True, "uses": ["suite"]}]}},
        "qc": {"tests": [{"name": "endotoxin", "duration": _fixed(0.1), "hands_on_hours": 1}]},
        "gmp": {"starting_material": "cryopreserved"},
    }
    data.update(over)
    return data


def test_no_conditional_release_over_a_failed_result_in_hand() -> None:
    # sterility (pending under conditional release) fails 0.5 d after sampling; QA takes 3 d, so the QP
    # signs with the positive result in hand. GMP (REF 3 rules 10-11): no release; the model releases
    # and ships it, and since the failure came before release it is not even recorded as a recall.
    data = _small_plant(
        qc={"tests": [{"name": "sterility", "duration": _fixed(0.5), "hands_on_hours": 1, "failure_probability": 1.0,
                       "consequence": "recollect", "sterility": True},
                      {"name": "endotoxin", "duration": _fixed(0.1), "hands_on_hours": 1}]},
        release={"policy": "conditional", "qa_review_elapsed": _fixed(3.0)},
    )
    sc, _ = scenario_from_dict(data)
    rec = simulate(sc)
    failed = {q.batch_no: q.result_time for q in rec.qc_results if q.result == "fail"}
    assert failed  # the example does exercise the rule
    bad = [b.batch_no for b in rec.batches
           if b.released is not None and b.batch_no in failed and failed[b.batch_no] <= b.released]
    assert bad == [], f"released with a failed sterility result in hand: {bad[:3]}"


def test_apheresis_day_record_requested_before_start() -> None:
    sc, _ = scenario_from_dict(_small_plant())
    rec = simulate(sc)
    aph = [u for u in rec.resource_uses if u.kind == "apheresis"]
    assert aph
    late = [u for u in aph if u.requested > u.start + EPS]
    assert late == [], f"{len(late)} of {len(aph)} apheresis records requested after they start, e.g. {late[0]}"
