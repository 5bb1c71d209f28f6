"""Integrity check of the batch log: recompute every record chain, run seal and release signature, the
keyed seals of the ledger (store/seals.py), the stored forecasts (store/forecast_check.py) and the
append-only triggers' definitions (store/guards.py).

Each row is checked against the stored digest of the row before it, so a finding names the row itself:
a changed row fails its own link (or, if its digest was recomputed too, the next row's), a gap in
``row_seq`` or a short table is a removal, a row past the count recorded in the run row (or for a run
that does not exist) is an insertion. It works whether or not the append-only triggers are in place.

The sha256 chains show an edit to anyone who does not recompute them; the ledger's HMAC entries show it
to anyone without the key: a run, scenario or correction that differs from its entry was re-sealed
without the key, one with no entry was written outside celltx, an entry with no object was deleted.
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
from .forecast_check import forecast_problems
from .guards import guard_problems
from .hashing import _correction_body, _genesis, _record_hex, _run_seal, scenario_digest
from .keys import load_keys
from .ledger_check import _Seals
from .read import _run_rows
from .schema import _BY_NAME, _SPECS, CORRECTION, RELEASE_SIGNATURE, RUN, SCENARIO, _Spec
from .seals import release_signature

_BODY_ERRORS = (TypeError, ValueError, struct.error, UnicodeError)
_ROLE_IDX = _BY_NAME["release"].fields.index("signer_role")
_BATCH_IDX = _BY_NAME["release"].fields.index("batch_no")


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
    releases: dict[int, tuple[bytes, str, str]]  # release row -> (canonical bytes, signer role, batch)
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
            self.releases[seq] = (body, str(vals[_ROLE_IDX]), str(vals[_BATCH_IDX]))
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
                  rec: defaultdict[str, Any], problems: list[Problem],
                  releases: dict[int, tuple[bytes, str, str]]) -> bytes | None:
    """Check one table's links; returns the last good link (None when it is unknown)."""
    check = _TableCheck(spec, rid, count, prev, rec, problems, releases)
    for row in _run_rows(conn, spec, ["row_seq", *spec.fields, "digest"], rid):
        check.row(row[0], row[1:-1], row[-1])
    return check.end()


def _verify_corrections(conn: Connection, rid: int, chain_head: str | None, seals: _Seals,
                        problems: list[Problem]) -> None:
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
        seals.check(problems, "correction", int(row["id"]), row["digest"], rid, f"correction {row['id']}")


def _row_counts(run: Mapping[str, Any], rid: int, problems: list[Problem]) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(run["row_counts"]).items()}
    except (TypeError, ValueError, AttributeError):
        problems.append(Problem(rid, "run", None, ProblemKind.CHANGED, "row counts unreadable"))
        return {}


def _verify_scenario_of(run: Mapping[str, Any], rid: int, problems: list[Problem]) -> str | None:
    """The run's scenario text hash, once its text is checked; None (and a finding) when it is gone."""
    content_hash = run["content_hash"]
    if content_hash is None:
        problems.append(Problem(rid, "scenario", None, ProblemKind.REMOVED,
                                f"scenario {run['scenario_id']} of this run is missing (deleted)"))
        return None
    if hashlib.sha256(str(run["text"]).encode()).hexdigest() != content_hash:
        problems.append(Problem(rid, "scenario", None, ProblemKind.CHANGED,
                                f"scenario {run['scenario_id']} text no longer matches its hash"))
    return str(content_hash)


def _verify_signatures(conn: Connection, rid: int, releases: Mapping[int, tuple[bytes, str, str]],
                       seals: _Seals, expected: bool, problems: list[Problem]) -> None:
    """Each release row's role signature: present (unless the run predates signatures), by the key of
    the row's signer role, over the row as stored."""
    t = RELEASE_SIGNATURE.c
    q = sa.select(t.row_seq, t.role, t.key_id, t.signature).where(t.run_id == rid)
    sigs = {int(seq): (str(role), str(kid), sig) for seq, role, kid, sig in
            (conn.execute(q) if seals.has_signatures else ())}
    for seq, (body, role, batch_no) in releases.items():
        found = sigs.pop(seq, None)
        if found is None:
            if expected:
                problems.append(Problem(rid, "release", seq, ProblemKind.SIGNATURE,
                                        f"release of {batch_no} carries no {role} signature (removed)"))
            continue
        signer, kid, sig = found
        key = seals.role_key(role, kid)
        if signer != role:
            problems.append(Problem(rid, "release", seq, ProblemKind.SIGNATURE,
                                    f"release of {batch_no} signed as {signer}, not by its signer role {role}"))
        elif key is None:
            problems.append(Problem(rid, "release", seq, ProblemKind.UNKNOWN_KEY,
                                    f"release of {batch_no} signed by an unknown {role} key (key id {kid})"))
        elif release_signature(key, body) != sig:
            problems.append(Problem(rid, "release", seq, ProblemKind.SIGNATURE,
                                    f"release of {batch_no}: the {role} signature does not match the release "
                                    "row (the row or its signed record digest was changed)"))
    for seq in sorted(sigs):
        problems.append(Problem(rid, "release_signature", seq, ProblemKind.INSERTED, "a signature of no release row"))


def _verify_run(conn: Connection, run: Mapping[str, Any], seals: _Seals, problems: list[Problem]) -> None:
    rid = int(run["id"])
    content_hash = _verify_scenario_of(run, rid, problems)
    if content_hash is not None and run["digest"] != _run_seal(rid, content_hash, run):
        problems.append(Problem(rid, "run", None, ProblemKind.CHANGED, "run row differs from what was sealed"))
    adopted = seals.check(problems, "run", rid, run["digest"], rid, f"run {rid}")
    counts = _row_counts(run, rid, problems)
    prev: bytes | None = _genesis(rid, content_hash) if content_hash is not None else None
    rec: defaultdict[str, Any] = defaultdict(hashlib.sha256)
    releases: dict[int, tuple[bytes, str, str]] = {}
    for spec in _SPECS:
        prev = _verify_table(conn, spec, rid, counts.get(spec.name, 0), prev, rec, problems, releases)
    if prev is not None and prev.hex() != run["chain_head"]:
        problems.append(Problem(rid, "run", None, ProblemKind.CHAIN_HEAD,
                                "the last record row does not match the chain head sealed in the run row"))
    _verify_signatures(conn, rid, releases, seals, not adopted, problems)
    _verify_corrections(conn, rid, run["chain_head"], seals, problems)


def _verify_orphans(conn: Connection, problems: list[Problem], signatures: bool) -> None:
    runs = sa.select(RUN.c.id)
    for t in [*(s.table for s in _SPECS), CORRECTION, *([RELEASE_SIGNATURE] if signatures else [])]:
        for (rid,) in conn.execute(sa.select(t.c.run_id).where(t.c.run_id.not_in(runs)).distinct()):
            problems.append(Problem(rid, t.name, None, ProblemKind.INSERTED,
                                    f"rows for run {rid}, which does not exist"))


def _verify_scenarios(conn: Connection, seals: _Seals, problems: list[Problem], only: int | None = None) -> None:
    """Each scenario row (name and first-stored time included) against its ledger entry."""
    s = SCENARIO.c
    q = sa.select(s.id, s.name, s.content_hash, s.created).order_by(s.id)
    for sid, name, content_hash, created in conn.execute(q if only is None else q.where(s.id == only)):
        try:
            digest: bytes | None = scenario_digest(int(sid), name, content_hash, created)
        except TypeError:  # a value JSON cannot hold: not what celltx wrote
            digest = None
        seals.check(problems, "scenario", int(sid), digest, None, f"scenario {sid} ({name!r})")


def _run_query(run_id: int | None) -> Any:
    """Every stored run (or one) with its scenario's hash and text: an outer join, so a run whose
    scenario row was deleted is still verified (and the deletion reported)."""
    q = sa.select(RUN, SCENARIO.c.content_hash, SCENARIO.c.text) \
        .outerjoin(SCENARIO, SCENARIO.c.id == RUN.c.scenario_id).order_by(RUN.c.id)
    return q if run_id is None else q.where(RUN.c.id == run_id)


def verify(engine: Engine, run_id: int | None = None, expect_heads: Sequence[str] = ()) -> list[Problem]:
    """Recompute the record chains, seals, release signatures, the ledger and the append-only triggers;
    an empty list means nothing was altered.

    ``expect_heads`` are ledger heads kept outside the store (printed by every writing command): one no
    longer in the ledger shows that the newest entries (or all) were removed. Iterates the stored rows (no
    range of ids), so a forged id of 9e18 is one more finding, not a memory error.
    """
    problems: list[Problem] = []
    with _reading(engine, "verify") as conn:
        runs = conn.execute(_run_query(run_id)).mappings().all()
        if run_id is not None and not runs:
            return [Problem(run_id, "run", None, ProblemKind.MISSING, "no run with this id in the store")]
        seals = _Seals.read(conn, load_keys(create=False))
        for run in runs:
            _verify_run(conn, run, seals, problems)  # type: ignore[arg-type]
        if run_id is None:
            _verify_scenarios(conn, seals, problems)
            _verify_orphans(conn, problems, seals.has_signatures)
            problems += forecast_problems(conn, seals, sa.inspect(conn).get_table_names())
            problems += seals.unentered()
            problems += guard_problems(conn)
        else:
            _verify_scenarios(conn, seals, problems, only=int(runs[0]["scenario_id"]))
        problems += seals.chain_problems(run_id is None)
        for head in dict.fromkeys(expect_heads):
            problems += seals.head_problems(head)
    return problems
