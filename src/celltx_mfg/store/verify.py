"""Integrity check of the batch log: recompute every record chain, run seal and release signature.

Each row is checked against the stored digest of the row before it, so a finding names the row itself:
a changed row fails its own link (or, if its digest was recomputed too, the next row's), a gap in
``row_seq`` or a short table is a removal, a row past the count recorded in the run row (or for a run
that does not exist) is an insertion. It works whether or not the append-only triggers are in place.
"""

import hashlib
import json
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ._common import Problem, ProblemKind, _reading
from .hashing import _correction_body, _genesis, _record_hex, _run_seal
from .read import _run_rows
from .schema import _SPECS, CORRECTION, RUN, SCENARIO, _Spec

_BODY_ERRORS = (TypeError, ValueError, struct.error, UnicodeError)


def _gap(first: int, end: int) -> str:
    return f"row {first}" if end == first + 1 else f"rows {first}-{end - 1}"


@dataclass
class _TableCheck:
    """The walk along one run's table: the next row_seq expected and the last link known good."""

    spec: _Spec
    rid: int
    count: int
    prev: bytes | None
    rec: defaultdict[str, Any]
    problems: list[Problem]
    expected: int = 0
    batch_i: int | None = field(init=False)

    def __post_init__(self) -> None:
        self.batch_i = self.spec.batch_idx

    def add(self, seq: int | None, kind: ProblemKind, detail: str) -> None:
        self.problems.append(Problem(self.rid, self.spec.name, seq, kind, detail))

    def row(self, seq: int, vals: Sequence[Any], stored: Any) -> None:
        if seq >= self.count:
            self.add(seq, ProblemKind.INSERTED, f"beyond the {self.count} rows written with the run")
            return
        if seq > self.expected:
            self.add(self.expected, ProblemKind.REMOVED, f"{_gap(self.expected, seq)} missing")
            self.prev = None
        try:
            body = self.spec.body(vals, self.rid, seq)
        except _BODY_ERRORS as e:
            self.add(seq, ProblemKind.CHANGED, f"value of the wrong type ({e})")
            self.prev, self.expected = None, seq + 1
            return
        if self.batch_i is not None and vals[self.batch_i] is not None:
            self.rec[vals[self.batch_i]].update(body)
        if self.prev is not None and hashlib.sha256(self.prev + body).digest() != stored:
            self.add(seq, ProblemKind.CHANGED, "digest mismatch: this row (or the one before it) was altered")
        if self.spec.name == "release":
            self._signature(seq, vals)
        self.prev = stored if isinstance(stored, bytes) else None
        self.expected = seq + 1

    def _signature(self, seq: int, vals: Sequence[Any]) -> None:
        batch_no, signed = vals[self.spec.fields.index("batch_no")], vals[-1]
        if _record_hex(self.rec, batch_no) != signed:
            self.add(seq, ProblemKind.SIGNATURE,
                     f"release of {batch_no} invalid: its batch record changed after signing")

    def end(self) -> bytes | None:
        if self.expected < self.count:
            self.add(self.expected, ProblemKind.REMOVED, f"{_gap(self.expected, self.count)} missing")
            self.prev = None
        return self.prev


def _verify_table(conn: Connection, spec: _Spec, rid: int, count: int, prev: bytes | None,
                  rec: defaultdict[str, Any], problems: list[Problem]) -> bytes | None:
    """Check one table's links; returns the last good link (None when it is unknown)."""
    check = _TableCheck(spec, rid, count, prev, rec, problems)
    for row in _run_rows(conn, spec, ["row_seq", *spec.fields, "digest"], rid):
        check.row(row[0], row[1:-1], row[-1])
    return check.end()


def _verify_corrections(conn: Connection, rid: int, chain_head: str | None, problems: list[Problem]) -> None:
    c = CORRECTION
    rows = conn.execute(sa.select(c).where(c.c.run_id == rid).order_by(c.c.id)).mappings().all()
    try:
        prev: bytes | None = bytes.fromhex(chain_head or "")
    except ValueError:
        prev = None
    for row in rows:
        body = _correction_body(rid, row["table_name"], row["row_seq"], row["reason"], row["new_values_json"],
                                row["time"], row["actor"])
        if prev is not None and hashlib.sha256(prev + body).digest() != row["digest"]:
            problems.append(Problem(rid, "correction", int(row["id"]), ProblemKind.CHANGED,
                                    "correction digest mismatch: this correction (or the one before it) "
                                    "was altered or removed"))
        prev = row["digest"] if isinstance(row["digest"], bytes) else None


def _row_counts(run: Mapping[str, Any], rid: int, problems: list[Problem]) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(run["row_counts"]).items()}
    except (TypeError, ValueError, AttributeError):
        problems.append(Problem(rid, "run", None, ProblemKind.CHANGED, "row counts unreadable"))
        return {}


def _verify_run(conn: Connection, run: Mapping[str, Any], problems: list[Problem]) -> None:
    rid = int(run["id"])
    content_hash = run["content_hash"]
    if hashlib.sha256(str(run["text"]).encode()).hexdigest() != content_hash:
        problems.append(Problem(rid, "scenario", None, ProblemKind.CHANGED,
                                f"scenario {run['scenario_id']} text no longer matches its hash"))
    if run["digest"] != _run_seal(rid, content_hash, run):
        problems.append(Problem(rid, "run", None, ProblemKind.CHANGED, "run row differs from what was sealed"))
    counts = _row_counts(run, rid, problems)
    prev: bytes | None = _genesis(rid, content_hash)
    rec: defaultdict[str, Any] = defaultdict(hashlib.sha256)
    for spec in _SPECS:
        prev = _verify_table(conn, spec, rid, counts.get(spec.name, 0), prev, rec, problems)
    if prev is not None and prev.hex() != run["chain_head"]:
        problems.append(Problem(rid, "run", None, ProblemKind.CHAIN_HEAD,
                                "the last record row does not match the chain head sealed in the run row"))
    _verify_corrections(conn, rid, run["chain_head"], problems)


def _verify_orphans(conn: Connection, problems: list[Problem]) -> None:
    runs = sa.select(RUN.c.id)
    for t in [*(s.table for s in _SPECS), CORRECTION]:
        for (rid,) in conn.execute(sa.select(t.c.run_id).where(t.c.run_id.not_in(runs)).distinct()):
            problems.append(Problem(rid, t.name, None, ProblemKind.INSERTED,
                                    f"rows for run {rid}, which does not exist"))


def _missing_runs(ids: Sequence[int]) -> list[Problem]:
    """SQLite ids are dense: a gap is a removed run."""
    missing = sorted(set(range(1, max(ids, default=0) + 1)) - set(ids))
    return [Problem(None, "run", None, ProblemKind.REMOVED, f"run(s) {missing} missing")] if missing else []


def verify(engine: Engine, run_id: int | None = None) -> list[Problem]:
    """Recompute the record chains and release signatures; an empty list means nothing was altered."""
    problems: list[Problem] = []
    with _reading(engine, "verify") as conn:
        q = sa.select(RUN, SCENARIO.c.content_hash, SCENARIO.c.text) \
            .join(SCENARIO, SCENARIO.c.id == RUN.c.scenario_id).order_by(RUN.c.id)
        if run_id is not None:
            q = q.where(RUN.c.id == run_id)
        runs = conn.execute(q).mappings().all()
        if run_id is not None and not runs:
            return [Problem(run_id, "run", None, ProblemKind.MISSING, "no run with this id in the store")]
        for run in runs:
            _verify_run(conn, run, problems)  # type: ignore[arg-type]
        if run_id is None:
            if conn.dialect.name == "sqlite":
                problems += _missing_runs([int(r["id"]) for r in runs])
            _verify_orphans(conn, problems)
    return problems
