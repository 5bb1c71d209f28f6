"""``simulate(scenario, seed)``: one replication in, records out. No database, no UI."""

from __future__ import annotations

from typing import Any

from .config import STAFF, Scenario
from .distributions import replication_seed
from .model.journey import Model
from .records import RecordSpool, RunRecords, StreamingRecorder

CHUNK_ROWS = 50_000  # rows per table a streaming replication holds before handing them to its spool


def simulate(scenario: Scenario, seed: int | None = None, replication: int = 0, *,
             spool: RecordSpool | None = None, chunk_rows: int = CHUNK_ROWS) -> RunRecords:
    """Run one replication. ``seed`` defaults to the seed the scenario derives for ``replication``, so
    replication r of any two scenarios with the same base seed shares its random numbers.

    With ``spool`` the records the model emits while it runs go to it in chunks of ``chunk_rows`` (the
    memory a run holds stays flat as the horizon grows); the returned records point at it
    (``RunRecords.spool``) and ``write_run`` stores spooled and in-memory rows as one run, with the
    same rows and digests as without a spool."""
    run_seed = replication_seed(scenario.seed, replication) if seed is None else int(seed)
    model = Model(scenario, run_seed, replication)
    if spool is None:
        return model.run()
    return _streamed(model, spool, chunk_rows)


def _hands_on_labour(scenario: Scenario) -> bool:
    """The run's labour cost sums staff busy time over its resource uses (costs.labour_basis)."""
    return scenario.costs is not None and scenario.costs.labour_basis != "paid"


def _streamed(model: Model, spool: RecordSpool, chunk_rows: int) -> RunRecords:
    """Run ``model`` with a recorder that spools as it goes. At the horizon every gathered row goes to
    the spool before the summary runs; the summary's own rows (holds still open at the horizon) stay in
    memory, after the spooled ones. A hands-on labour cost reads the staff resource uses: those alone
    are kept for it, in their order, so the cost is the same sum as without a spool."""
    rec = model.rec
    keep_staff = _hands_on_labour(model.sc)

    def keep(table: str, row: Any) -> bool:
        return table == "resource_uses" and row.kind in STAFF

    recorder = StreamingRecorder(rec, spool, chunk_rows, keep if keep_staff else None)
    model.record = recorder
    rec.spool = spool
    full_finish = model.finish

    def finish() -> RunRecords:
        recorder.flush()  # every streamed table now empty, all its rows spooled in order
        staff = recorder.kept["resource_uses"]
        n = len(staff)
        rec.resource_uses = staff  # what a hands-on cost reads; the summary appends its open holds here
        out = full_finish()
        rec.resource_uses = staff[n:]  # the open holds: the in-memory rows after the spooled ones
        recorder.kept.clear()
        return out

    model.finish = finish  # type: ignore[method-assign]
    return model.run()
