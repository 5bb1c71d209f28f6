"""Keyed seals: the run ledger and the QP release signatures (keys: store/keys.py).

Every scenario, run and correction gets one ledger entry in the transaction that writes it: its own
sha256 seal (``hashing.scenario_digest``, ``run.digest``, ``correction.digest``) and
``head = HMAC(seal key, previous head + entry)``. Without the key nobody can re-seal an edited run or
rebuild the ledger around a deletion; keeping the newest head outside the store (``ledger_head``,
``verify --expect-head``) also catches the deletion of the newest runs or of everything, which leaves
a shorter ledger that is still whole.

Each release row is signed by the key of its signer's role (``release.signer_role``): an HMAC of the
row, record digest included, stored in ``release_signature``.
"""

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import _common
from ._common import _reading
from .hashing import ledger_body, release_signed_bytes
from .keys import Keyring, key_id, mac
from .schema import _BY_NAME, LEDGER, RELEASE_SIGNATURE

_SIGNATURE_COLUMNS = ("run_id", "row_seq", "role", "key_id", "signature")
_SIGNATURE_INSERT = (f"INSERT INTO {RELEASE_SIGNATURE.name} ({', '.join(_SIGNATURE_COLUMNS)}) "
                     f"VALUES ({', '.join('?' * len(_SIGNATURE_COLUMNS))})")
GENESIS_HEAD = bytes(32)  # the "previous head" of the first entry
_PG_LEDGER_LOCK = 4242132  # advisory lock: one ledger append at a time (SQLite's write lock does this)
_RELEASE = _BY_NAME["release"]
_ROLE_IDX = _RELEASE.fields.index("signer_role")


@dataclass(frozen=True)
class Entry:
    """An object to enter in the ledger: what it is, its id and its own seal."""

    kind: str
    ref_id: int
    digest: bytes


def entry_head(key: bytes, prev: bytes, seq: int, kind: str, ref_id: int, digest: bytes, adopted: bool,
               time: str, key_id: str) -> bytes:
    """The head after one entry: it links the entry to everything before it, under the seal key."""
    return mac(key, prev + ledger_body(seq, kind, ref_id, digest, adopted, time, key_id))


def _tip(conn: Connection) -> tuple[int, bytes]:
    """The newest entry's number and head (0 and the genesis head for an empty ledger)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LEDGER_LOCK})
    last = conn.execute(sa.select(LEDGER.c.seq, LEDGER.c.head).order_by(LEDGER.c.seq.desc()).limit(1)).first()
    return (int(last[0]), bytes(last[1])) if last is not None else (0, GENESIS_HEAD)


def append(conn: Connection, ring: Keyring, entries: Sequence[Entry], adopted: bool = False) -> bytes:
    """Enter objects in the ledger inside the caller's write transaction; returns the new head."""
    seq, prev = _tip(conn)
    rows = []
    for e in entries:
        seq += 1
        time = _common._now()
        prev = entry_head(ring.seal, prev, seq, e.kind, e.ref_id, e.digest, adopted, time, ring.seal_id)
        rows.append({"seq": seq, "kind": e.kind, "ref_id": e.ref_id, "digest": e.digest, "adopted": adopted,
                     "time": time, "key_id": ring.seal_id, "head": prev})
    if rows:
        conn.execute(sa.insert(LEDGER), rows)
    return prev


def ledger_head(engine: Engine) -> str | None:
    """The newest ledger head (hex), None for a store with nothing in it: what a writing command prints
    and a CI job keeps, to check later with ``verify --expect-head``."""
    with _reading(engine, "read the ledger of") as conn:
        head = conn.execute(sa.select(LEDGER.c.head).order_by(LEDGER.c.seq.desc()).limit(1)).scalar()
    return None if head is None else bytes(head).hex()


def release_signature(key: bytes, row_body: bytes) -> bytes:
    """A role key's signature of one release row (its canonical bytes)."""
    return mac(key, release_signed_bytes(row_body))


def sign_releases(conn: Connection, ring: Keyring, run_id: int, rows: Sequence[Sequence[Any]]) -> None:
    """Sign each release row (fields + record digest, as stored) with its signer role's key. One HMAC
    state per role is keyed once and copied per row; SQLite gets the rows through the DB-API cursor
    (a run in which every batch is released signs tens of thousands)."""
    keyed: dict[str, tuple[str, Any]] = {}
    sigs = []
    for seq, r in enumerate(rows):
        role = str(r[_ROLE_IDX])
        if role not in keyed:
            key = ring.role(role)
            keyed[role] = (key_id(key), hmac.new(key, release_signed_bytes(b""), hashlib.sha256))
        kid, base = keyed[role]
        h = base.copy()
        h.update(_RELEASE.body(r, run_id, seq))
        sigs.append((run_id, seq, role, kid, h.digest()))
    if not sigs:
        return
    if conn.dialect.name == "sqlite":
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(_SIGNATURE_INSERT, sigs)
        finally:
            cur.close()
    else:
        conn.execute(sa.insert(RELEASE_SIGNATURE), [dict(zip(_SIGNATURE_COLUMNS, s, strict=True)) for s in sigs])


@dataclass(frozen=True)
class LedgerRow:
    """One stored ledger entry as read back."""

    seq: int
    kind: str
    ref_id: int
    digest: bytes | None
    adopted: bool
    time: str
    key_id: str
    head: bytes | None


def ledger_rows(conn: Connection) -> Iterator[LedgerRow]:
    """The stored entries in order (streamed: one row per scenario, run and correction)."""
    c = LEDGER.c
    q = sa.select(c.seq, c.kind, c.ref_id, c.digest, c.adopted, c.time, c.key_id, c.head).order_by(c.seq)
    for r in conn.execute(q):
        yield LedgerRow(int(r[0]), str(r[1]), int(r[2]), _bytes(r[3]), bool(r[4]), str(r[5]), str(r[6]),
                        _bytes(r[7]))


def _bytes(v: Any) -> bytes | None:
    return bytes(v) if isinstance(v, bytes | bytearray | memoryview) else None
