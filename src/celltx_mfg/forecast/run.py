"""N replications of a forecast on the experiments backends (``jobs`` worker processes), and what they
say about each live patient and the plant's load.

Replication r of a forecast uses :func:`forecast_seed` (base seed, r): the same in every forecast of the
same base seed (common random numbers across states and what-ifs), and independent of the seed of
replication r of a plain run (``replication_seed``), so a forecast from a snapshot of a simulated run
never reuses the random numbers that run's own continuation drew.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Scenario, scenario_hash
from ..experiments.backends import open_backend
from ..records import RunRecords
from .engine import ForecastModel, forecast_scenario
from .result import LOAD_WEEKS, Band, ForecastResult, LoadKind, PatientForecast, WeekLoad, band
from .state import StartState

FORECAST_KEY = zlib.crc32(b"forecast")  # the spawn key that keeps forecast streams apart from runs'
LOAD_KINDS = {LoadKind.suite: "suite", LoadKind.qc: "qc_analysts", LoadKind.qa: "qa_reviewers"}
# per state patient and replication: (release day, infusion day, lost); inf = not by the horizon
Outcomes = list[tuple[float, float, bool]]


def forecast_seed(base_seed: int, replication: int) -> int:
    """Seed of forecast replication r: a SeedSequence of (base seed, r) with the forecast's spawn key."""
    ss = np.random.SeedSequence([int(base_seed), int(replication)], spawn_key=(FORECAST_KEY,))
    return int(ss.generate_state(1, np.uint64)[0] >> 1)


def simulate_from(sc: Scenario, state: StartState, seed: int, replication: int = 0) -> ForecastModel:
    """One replication from ``state`` (``sc`` already in the forecast window: :func:`forecast_scenario`);
    the finished model, its records in ``.rec``."""
    m = ForecastModel(sc, seed, state, replication)
    m.run()
    return m


def outcomes(m: ForecastModel) -> Outcomes:
    """Each state patient's release and infusion day (inf: not by the horizon) and whether they were lost."""
    by_coi: dict[str, list[Any]] = {}
    for b in m.batches:
        by_coi.setdefault(b.coi, []).append(b)
    out: Outcomes = []
    for _, p in m.live:
        released = [b.released for b in by_coi.get(p.coi, []) if b.released is not None]
        infused = next((b.released for b in by_coi.get(p.coi, []) if b.infused is not None), None)
        rel = infused if infused is not None else (max(released) if released else math.inf)
        out.append((rel, p.infused if p.infused is not None else math.inf, p.status == "lost"))
    return out


def weekly_load(rec: RunRecords, sc: Scenario, as_of: float) -> dict[str, list[float]]:
    """Busy share of each load kind's capacity in each of the next weeks (suites: suite-days over every
    suite's days; staff: busy hours over on-shift hours)."""
    weeks = [(as_of + 7 * k, min(as_of + 7 * (k + 1), sc.horizon_days)) for k in range(LOAD_WEEKS)]
    r = sc.resources
    staff = {"qc_analysts": r.qc_analysts, "qa_reviewers": r.qa_reviewers}
    busy = {kind: [0.0] * LOAD_WEEKS for kind in LOAD_KINDS.values()}
    for u in rec.resource_uses:
        row = busy.get(u.kind)
        if row is None:
            continue
        for k, (w0, w1) in enumerate(weeks):
            row[k] += max(0.0, min(u.end, w1) - max(u.start, w0))
    out: dict[str, list[float]] = {}
    for kind, row in busy.items():
        caps = []
        for w0, w1 in weeks:
            if kind == "suite":
                caps.append(r.suites * max(0.0, w1 - w0))
            else:
                pool = staff[kind]
                caps.append(pool.count * sc.calendar(pool.calendar).available_days(w0, w1))
        out[kind] = [b / c if c > 0 else math.nan for b, c in zip(row, caps, strict=True)]
    return out


@dataclass(frozen=True)
class ForecastWork:
    """What a worker runs for one forecast replication (picklable: the state travels with it)."""

    state: StartState

    def __call__(self, sc: Scenario, replication: int, seed: int, keep_records: bool) -> Any:
        m = simulate_from(sc, self.state, seed, replication)
        return {"patients": outcomes(m), "load": weekly_load(m.rec, sc, self.state.as_of)}, None


def run_forecast(sc: Scenario, text: str, state: StartState, replications: int, horizon_days: float,
                 jobs: int = 1, seed: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> ForecastResult:
    """Simulate ``replications`` forward from ``state`` for ``horizon_days`` and summarise them."""
    base = sc.seed if seed is None else int(seed)
    fsc = forecast_scenario(sc, state.as_of, horizon_days)
    work = ForecastWork(state)
    backend = open_backend("local", max(1, min(jobs, replications)))
    per_rep: dict[int, Any] = {}
    try:
        handles = {backend.submit(fsc, r, forecast_seed(base, r), False, work=work): r for r in range(replications)}
        pending = set(handles)
        while pending:
            for h in backend.wait(pending):
                pending.discard(h)
                per_rep[handles[h]] = backend.result(h)[0]
                if progress is not None:
                    progress(len(per_rep), replications)
    except BaseException:
        backend.close(abort=True)
        raise
    backend.close()
    runs = [per_rep[r] for r in range(replications)]
    return summarise(sc, text, state, runs, horizon_days, base)


def summarise(sc: Scenario, text: str, state: StartState, runs: list[Any], horizon_days: float,
              seed: int) -> ForecastResult:
    start = dt.datetime.combine(sc.start_date, dt.time())

    def when(day: float) -> dt.datetime | None:
        return None if not math.isfinite(day) else start + dt.timedelta(days=day)

    n = len(runs)
    patients = []
    for k, lp in enumerate(state.patients):
        rows = [run["patients"][k] for run in runs]
        kept = [row for row in rows if not row[2]]
        rel = band([row[0] for row in kept])
        inf = band([row[1] for row in kept])
        booked = lp.booked_infusion_day
        p_booked = None if booked is None else sum(1 for row in rows if row[1] < booked + 1) / n
        patients.append(PatientForecast(
            lp.coi, lp.stage_label,
            Band(*(when(x) if not math.isnan(x) else None for x in rel)),
            Band(*(when(x) if not math.isnan(x) else None for x in inf)),
            p_booked, sum(1 for row in rows if row[2]) / n,
            None if booked is None else when(float(booked)),
        ))
    capacity: dict[LoadKind, Sequence[WeekLoad]] = {}
    for kind, name in LOAD_KINDS.items():
        weeks = []
        for w in range(LOAD_WEEKS):
            values = [run["load"][name][w] for run in runs if not math.isnan(run["load"][name][w])]
            if not values:
                continue
            weeks.append(WeekLoad(w + 1, start + dt.timedelta(days=state.as_of + 7 * w), Band(*band(values))))
        capacity[kind] = weeks
    return ForecastResult(
        as_of=start + dt.timedelta(days=state.as_of), replications=n, horizon_days=horizon_days,
        scenario_name=sc.name, scenario_hash=scenario_hash(text), state_hash=state.digest(), seed=seed,
        patients=patients, capacity=capacity,
    )
