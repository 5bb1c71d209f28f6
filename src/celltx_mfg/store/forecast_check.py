"""``verify``'s check of the stored forecasts (store/forecasts.py writes them): each forecast row against
its own seal and its ledger entry, its patient and load rows along their sha256 chain to the head the
forecast row seals, and rows of no forecast.

As for runs, a changed row fails its own link (or the next row's, when its digest was recomputed), a gap
in ``row_seq`` or fewer rows than the forecast row counts is a removal, a row past the count is an
insertion; a forecast re-sealed without the key differs from its ledger entry, one with no entry was
written outside celltx, and an entry whose forecast is gone records a deletion (``_Seals.unentered``).
"""

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._common import Problem, ProblemKind
from .forecast_seals import CHAINED, Column, forecast_seal, genesis, row_body
from .ledger_check import _Seals
from .schema import FORECAST

_BODY_ERRORS = (TypeError, ValueError, OverflowError)


def _gap(first: int, end: int) -> str:
    return f"row {first}" if end == first + 1 else f"rows {first}-{end - 1}"


@dataclass
class _Walk:
    """One forecast's table walked in row order: the next row expected and the last link known good."""

    fid: int
    table: str
    columns: Sequence[Column]
    count: int
    prev: bytes | None
    problems: list[Problem]
    expected: int = 0

    def add(self, seq: int | None, kind: ProblemKind, detail: str) -> None:
        self.problems.append(Problem(None, self.table, seq, kind, f"forecast {self.fid}: {detail}"))

    def row(self, seq: int, vals: Sequence[Any], stored: Any) -> None:
        if seq >= self.count:
            self.add(seq, ProblemKind.INSERTED, f"beyond the {self.count} rows written with the forecast")
            return
        if seq > self.expected:
            self.add(self.expected, ProblemKind.REMOVED, f"{_gap(self.expected, seq)} missing")
            self.prev = None
        try:
            body = row_body(self.table, self.columns, self.fid, seq, vals)
        except _BODY_ERRORS as e:
            self.add(seq, ProblemKind.CHANGED, f"value of the wrong type ({e})")
            self.prev, self.expected = None, seq + 1
            return
        if self.prev is not None and hashlib.sha256(self.prev + body).digest() != stored:
            self.add(seq, ProblemKind.CHANGED, "digest mismatch: this row (or the one before it) was altered")
        self.prev = bytes(stored) if isinstance(stored, bytes | memoryview) else None
        self.expected = seq + 1

    def end(self) -> bytes | None:
        if self.expected < self.count:
            self.add(self.expected, ProblemKind.REMOVED, f"{_gap(self.expected, self.count)} missing")
            self.prev = None
        return self.prev


def _counts(f: Mapping[str, Any]) -> tuple[int, int] | None:
    try:
        return int(f["patient_count"]), int(f["load_count"])
    except (TypeError, ValueError):
        return None


def _check_one(conn: Connection, f: Any, seals: _Seals, problems: list[Problem]) -> None:
    fid = int(f["id"])
    label = f"forecast {fid}"
    try:
        sealed_ok = forecast_seal(fid, f) == f["digest"]
    except (TypeError, ValueError):
        sealed_ok = False
    if not sealed_ok:
        problems.append(Problem(None, "forecast", fid, ProblemKind.CHANGED,
                                f"{label} differs from what was sealed (its fields or chain head changed)"))
    seals.check(problems, "forecast", fid, f["digest"], None, label)
    counts = _counts(f)
    if counts is None:
        problems.append(Problem(None, "forecast", fid, ProblemKind.CHANGED, f"{label}: row counts unreadable"))
        counts = (0, 0)
    prev: bytes | None = genesis(fid, str(f["scenario_hash"]), str(f["state_hash"]))
    for (table, columns), count in zip(CHAINED, counts, strict=True):
        walk = _Walk(fid, table.name, columns, count, prev, problems)
        names = [c[0] for c in columns]
        q = sa.select(table.c.row_seq, *(table.c[n] for n in names), table.c.digest) \
            .where(table.c.forecast_id == fid).order_by(table.c.row_seq)
        for r in conn.execute(q):
            walk.row(int(r[0]), r[1:-1], r[-1])
        prev = walk.end()
    if prev is not None and prev.hex() != f["chain_head"]:
        problems.append(Problem(None, "forecast", fid, ProblemKind.CHAIN_HEAD,
                                f"{label}: its last row does not match the chain head sealed in the forecast row"))


def _orphans(conn: Connection, problems: list[Problem]) -> None:
    known = sa.select(FORECAST.c.id)
    for table, _cols in CHAINED:
        q = sa.select(table.c.forecast_id).where(table.c.forecast_id.not_in(known)).distinct()
        for (fid,) in conn.execute(q):
            problems.append(Problem(None, table.name, None, ProblemKind.INSERTED,
                                    f"rows for forecast {fid}, which does not exist"))


def forecast_problems(conn: Connection, seals: _Seals, tables: Iterable[str]) -> list[Problem]:
    """Everything wrong with the stored forecasts (empty when each is as written); ``tables`` are the
    store's table names, so a store whose forecast table was dropped with forecasts in the ledger is
    reported by the ledger's entries without a forecast."""
    problems: list[Problem] = []
    if FORECAST.name not in set(tables):
        return problems
    for f in conn.execute(sa.select(FORECAST).order_by(FORECAST.c.id)).mappings():
        _check_one(conn, f, seals, problems)
    _orphans(conn, problems)
    return problems
