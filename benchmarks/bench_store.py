"""How much the GMP batch log costs: write_run (digests, constraints, one transaction) against a bare
sqlite3 executemany of the same step-event tuples, both measured in this run on this machine; the share of
write_run spent on the keyed seals (loading the key, the QP signature of every release row, the ledger
entry), timed around those calls inside the same write_run, also for a run in which every batch is
released; then write and verify rates on SQLite and on a throw-away PostgreSQL server side by side
(skipped, with the reason, where no server can be started).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_store.py [--steps 1000000] [--backend-steps 200000]

Without CELLTX_KEY_FILE the benchmark seals with a key file in a temporary folder (not ~/.config).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.pgserver: the same throw-away server the tests use

from celltx_mfg import store  # noqa: E402
from celltx_mfg.records import (  # noqa: E402
    BatchRecord,
    PatientRecord,
    QCResult,
    ReleaseRecord,
    ResourceUse,
    RunRecords,
    StepEvent,
)

STEPS = ("thaw_and_wash", "selection", "activation", "transduction", "expansion", "harvest_formulation",
         "cryopreservation")


def synthetic_run(n_steps: int, seed: int = 7, released: int = 2000) -> RunRecords:
    """Plant-shaped records: batches of seven steps each; the first ``released`` batches also get a
    patient, a QC panel and a release (the QP signs each)."""
    rng = random.Random(seed)
    rec = RunRecords("bench", seed, 0, 3650.0, 365.0, costs={"materials": 1.0e8})
    n_batches = max(1, -(-n_steps // len(STEPS)))
    for b in range(n_batches):
        coi = f"COI-{b + 1:07d}"
        bno = f"{coi}-A1"
        t0 = b * 3650.0 / n_batches
        t = t0
        for i in range(len(STEPS)):
            if len(rec.steps) >= n_steps:
                break
            wait = rng.random() * 0.2
            dur = 8.0 if STEPS[i] == "expansion" else 0.1 + rng.random() * 0.3
            rec.steps.append(StepEvent(coi, bno, STEPS[i], i, t, t + wait, t + wait + dur,
                                       f"suite:S{1 + b % 4}", 2, i % 2 == 0, "ok"))
            t += wait + dur
        if b < released:  # a few thousand rows of the other tables
            rec.patients.append(PatientRecord(coi, b + 1, "Site-A", "axi-cel", "standard", False, t0 - 6, t0 - 5,
                                              t0 - 1, t + 10, "infused", None, None, None, None, 1))
            rec.batches.append(BatchRecord(coi, bno, 1, "axi-cel", "infused", None, t0, t0 - 1, t0 - 0.8, t0 - 0.3,
                                           t0, t0 + 0.1, t, t + 7, t + 7.5, "full", t + 8, t + 9, t + 10, t + 365,
                                           "S1", False, False))
            rec.resource_uses.append(ResourceUse("suite", "S1", coi, bno, "line_clearance", t, t, t + 0.08))
            for test in ("sterility", "mycoplasma", "endotoxin"):
                rec.qc_results.append(QCResult(coi, bno, test, t, t + 0.1, t + 3, "pass", True))
            rec.releases.append(ReleaseRecord(coi, bno, t + 7.5, "full", "qualified_person", "released", ""))
    return rec


def raw_baseline(path: Path, rows: list[tuple]) -> tuple[float, float]:
    """Wall and CPU seconds of a plain executemany of (run_id, row_seq, *fields) into a bare table
    (no key, no constraint, no digest), with the store's settings."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    cols = ", ".join(["run_id", "row_seq", *(f'"{f}"' for f in StepEvent._fields)])
    con.execute(f"CREATE TABLE steps ({cols})")
    t, c = time.perf_counter(), time.process_time()
    con.execute("BEGIN IMMEDIATE")
    con.executemany(f"INSERT INTO steps VALUES ({', '.join('?' * (len(StepEvent._fields) + 2))})", rows)
    con.commit()
    elapsed = time.perf_counter() - t, time.process_time() - c
    con.close()
    return elapsed


class KeyedTimer:
    """Times the keyed-seal calls of write_run (key loading, release signing, the ledger entry) while a
    real write_run runs: the wrapped functions are the store's own, called as usual."""

    NAMES = ("signing_keys", "sign_releases", "append")

    def __init__(self) -> None:
        from celltx_mfg.store import write

        self.module, self.spent, self.saved = write, 0.0, {}

    def __enter__(self) -> KeyedTimer:
        from celltx_mfg.store import keys

        keys._cache.clear()  # the key file is read from disk, as by a fresh process
        for name in self.NAMES:
            self.saved[name] = fn = getattr(self.module, name)
            setattr(self.module, name, self._timed(fn))
        return self

    def _timed(self, fn):  # noqa: ANN001, ANN202
        def inner(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t
        return inner

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(self.module, name, fn)


def keyed_share(path: Path, rec: RunRecords) -> tuple[float, float]:
    """write_run's wall seconds for ``rec`` and the seconds of it spent on the keyed seals."""
    engine = store.open_store(str(path))
    try:
        with KeyedTimer() as timer:
            t = time.perf_counter()
            store.write_run(engine, "bench", "name: bench\n", rec)
            total = time.perf_counter() - t
        return total, timer.spent
    finally:
        engine.dispose()


def write_and_verify(url: str, rec: RunRecords) -> tuple[float, float]:
    """Seconds to write one run whole and to verify it, on the store at ``url``."""
    engine = store.open_store(url)
    try:
        t = time.perf_counter()
        run_id = store.write_run(engine, "bench", "name: bench\n", rec)
        write = time.perf_counter() - t
        t = time.perf_counter()
        problems = store.verify(engine, run_id)
        check = time.perf_counter() - t
        assert not problems
        return write, check
    finally:
        engine.dispose()


def backends(n_steps: int) -> None:
    """Write and verify rates of the same run on SQLite and PostgreSQL, measured in this run."""
    from tests.pgserver import PgUnavailable, throwaway_server

    rec = synthetic_run(n_steps)
    rows = sum(len(getattr(rec, n)) for n, _ in RunRecords.TABLES)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        results["sqlite"] = write_and_verify(str(Path(d) / "b.db"), rec)
    try:
        with throwaway_server() as server:
            results["postgresql"] = write_and_verify(server.create_db(), rec)
    except PgUnavailable as e:
        print(f"postgresql: skipped ({e})")
    print(f"backends, {rows:,} rows in one run:")
    for name, (write, check) in results.items():
        print(f"  {name:<10} write_run {write:6.2f} s {rows / write:>9,.0f} rows/s   "
              f"verify {check:6.2f} s {rows / check:>9,.0f} rows/s")
    if len(results) == 2:
        (ws, vs), (wp, vp) = results["sqlite"], results["postgresql"]
        print(f"  postgresql / sqlite time: write {wp / ws:.2f}x, verify {vp / vs:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--backend-steps", type=int, default=200_000)
    args = ap.parse_args()
    rec = synthetic_run(args.steps)
    others = sum(len(getattr(rec, n)) for n, _ in RunRecords.TABLES) - len(rec.steps)
    with tempfile.TemporaryDirectory() as d:
        rows = [(1, i, *r) for i, r in enumerate(rec.steps)]
        gc.disable()
        base = raw_baseline(Path(d) / "bare.db", rows)
        gc.enable()
        del rows
        engine = store.open_store(str(Path(d) / "celltx.db"))
        with KeyedTimer() as timer:
            t, c = time.perf_counter(), time.process_time()
            run_id = store.write_run(engine, "bench", "name: bench\n", rec)
            write = time.perf_counter() - t, time.process_time() - c
        keyed = timer.spent
        t = time.perf_counter()
        problems = store.verify(engine, run_id)
        check = time.perf_counter() - t
        t = time.perf_counter()
        frames = store.load_frames(engine, [run_id])
        load = time.perf_counter() - t
        assert not problems and len(frames["steps"]) == len(rec.steps)
        size = sum(p.stat().st_size for p in Path(d).glob("celltx.db*"))
    n = len(rec.steps)
    print(f"step events: {n:,}  other rows: {others:,}   (wall s / CPU s of this process; the machine is shared)")
    print(f"raw sqlite3 executemany, bare table : {base[0]:6.2f} / {base[1]:5.2f} s  "
          f"{n / base[0]:>9,.0f} rows/s wall")
    print(f"write_run (digests, checks, 1 txn)  : {write[0]:6.2f} / {write[1]:5.2f} s  "
          f"{(n + others) / write[0]:>9,.0f} rows/s wall")
    print(f"ratio write_run / raw               : {write[0] / base[0]:6.2f} wall, {write[1] / base[1]:.2f} CPU")
    print(f"keyed seals inside that write_run   : {keyed:6.3f} s = {100 * keyed / write[0]:.2f}% of write_run "
          f"({len(rec.releases):,} QP signatures, 1 ledger entry, key loaded from its file)")
    print(f"verify                              : {check:6.2f} s  {(n + others) / check:>10,.0f} rows/s")
    print(f"load_frames                         : {load:6.2f} s")
    print(f"database size                       : {size / 1e6:6.0f} MB")
    every = synthetic_run(args.backend_steps, released=args.backend_steps)
    with tempfile.TemporaryDirectory() as d:
        total, keyed = keyed_share(Path(d) / "released.db", every)
    print(f"every batch released ({len(every.steps):,} steps, {len(every.releases):,} QP signatures): keyed seals "
          f"{keyed:.3f} s of write_run {total:.2f} s = {100 * keyed / total:.2f}%")
    backends(args.backend_steps)


if __name__ == "__main__":
    if not os.environ.get("CELLTX_KEY_FILE"):
        os.environ["CELLTX_KEY_FILE"] = str(Path(tempfile.mkdtemp(prefix="celltx-bench-")) / "keys.json")
    main()
