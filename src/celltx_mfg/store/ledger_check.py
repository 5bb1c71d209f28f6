"""``verify``'s side of the keyed seals: the ledger read back and checked entry by entry, then matched
against the scenarios, runs and corrections the store holds (store/seals.py writes them).

An entry whose HMAC does not match was altered, or an entry before it was removed or reordered; a
gap in the entry numbers is a removal; an object that differs from its entry was changed and re-sealed
without the key; an object with no entry was written outside celltx (or its entry removed); an entry
whose object is gone records a deletion; an object entered twice had its id reused after one. A head
kept outside the store that is no longer in the ledger shows the removal of the newest entries.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ._common import Problem, ProblemKind
from .keys import Keyring, key_file, key_id
from .schema import LEDGER, RELEASE_SIGNATURE
from .seals import GENESIS_HEAD, LedgerRow, entry_head, ledger_rows


def _entry_ok(key: bytes, prev: bytes, e: LedgerRow) -> bool:
    if e.head is None or e.digest is None:
        return False
    return entry_head(key, prev, e.seq, e.kind, e.ref_id, e.digest, e.adopted, e.time, e.key_id) == e.head


@dataclass
class _Seals:
    """The ledger as read: the entries of each object, which entries could be checked, and the
    findings about the ledger itself (each with the entry it concerns)."""

    ring: Keyring | None
    has_signatures: bool = True
    by_object: defaultdict[tuple[str, int], list[LedgerRow]] = field(default_factory=lambda: defaultdict(list))
    heads: dict[str, int] = field(default_factory=dict)  # head hex -> entry number
    unknown: set[int] = field(default_factory=set)  # entries sealed by a key we do not hold
    unknown_ids: set[str] = field(default_factory=set)  # and those keys' ids
    findings: list[tuple[int | None, Problem]] = field(default_factory=list)
    checked: set[int] = field(default_factory=set)  # entries of the objects verify looked at
    last: LedgerRow | None = None

    @classmethod
    def read(cls, conn: Connection, ring: Keyring | None) -> "_Seals":
        """Walk the ledger in entry order, checking each entry's link under the seal key."""
        names = set(sa.inspect(conn).get_table_names())
        seals = cls(ring, has_signatures=RELEASE_SIGNATURE.name in names)
        if LEDGER.name not in names:
            seals.findings.append((None, Problem(None, "ledger", None, ProblemKind.REMOVED,
                                                 "the ledger table is missing (dropped)")))
            return seals
        seals._walk(conn)
        return seals

    def _walk(self, conn: Connection) -> None:
        prev, expected = GENESIS_HEAD, 1
        for e in ledger_rows(conn):
            if e.seq != expected:
                gap = f"entry {expected}" if e.seq == expected + 1 else f"entries {expected}-{e.seq - 1}"
                self._finding(e.seq, ProblemKind.REMOVED, f"ledger {gap} missing (removed)")
            key = self.ring.seal if self.ring is not None and e.key_id == self.ring.seal_id else None
            if key is None:
                self.unknown.add(e.seq)
                self.unknown_ids.add(e.key_id)
            elif not _entry_ok(key, prev, e):
                self._finding(e.seq, ProblemKind.SEAL, f"ledger entry {e.seq} ({e.kind} {e.ref_id}) does not "
                              "match its seal: altered, or an entry before it removed or reordered")
            self.by_object[(e.kind, e.ref_id)].append(e)
            if e.head is not None:
                self.heads[e.head.hex()] = e.seq
            prev, expected, self.last = e.head or b"", e.seq + 1, e

    def _finding(self, seq: int | None, kind: ProblemKind, detail: str) -> None:
        self.findings.append((seq, Problem(None, "ledger", seq, kind, detail)))

    def check(self, problems: list[Problem], kind: str, ref: int, digest: bytes | None, rid: int | None,
              label: str) -> bool:
        """Match one stored object with its ledger entry; returns whether the entry is an adopted one
        (an object from before the ledger, whose releases carry no role signature)."""
        entries = self.by_object.pop((kind, ref), [])
        if not entries:
            problems.append(Problem(rid, kind, None, ProblemKind.SEAL, f"{label} has no ledger entry: written "
                                                                       "outside celltx, or its entry removed"))
            return False
        self.checked.update(e.seq for e in entries)
        if len(entries) > 1:
            problems.append(Problem(rid, kind, None, ProblemKind.SEAL,
                                    f"{label} is in the ledger {len(entries)} times (entries "
                                    f"{', '.join(str(e.seq) for e in entries)}): its id was reused after a deletion"))
        match = next((e for e in reversed(entries) if e.digest == digest), entries[-1])
        if match.seq in self.unknown:
            problems.append(Problem(rid, kind, None, ProblemKind.UNKNOWN_KEY,
                                    f"{label} sealed by an unknown key (key id {match.key_id})"))
        elif match.digest != digest:
            problems.append(Problem(rid, kind, None, ProblemKind.SEAL,
                                    f"{label} differs from what ledger entry {match.seq} sealed: changed, and "
                                    "its digests recomputed without the key"))
        return match.adopted

    def role_key(self, role: str, kid: str) -> bytes | None:
        """The key of ``role`` when ``kid`` names it (None: a key this installation does not hold)."""
        key = self.ring.roles.get(role) if self.ring is not None else None
        return key if key is not None and key_id(key) == kid else None

    def unentered(self) -> list[Problem]:
        """Entries whose object is not in the store: deleted after it was sealed."""
        out = []
        for (kind, ref), entries in sorted(self.by_object.items()):
            seqs = ", ".join(str(e.seq) for e in entries)
            out.append(Problem(ref if kind == "run" else None, kind, None, ProblemKind.REMOVED,
                               f"{kind} {ref} is in the ledger (entry {seqs}) but not in the store: deleted"))
        return out

    def chain_problems(self, everything: bool) -> list[Problem]:
        """Findings about the ledger itself: all of them, or those of the entries of the objects checked."""
        out = [p for seq, p in self.findings if everything or seq is None or seq in self.checked]
        if self.unknown and (everything or self.unknown & self.checked):
            why = f"no key file at {key_file()}" if self.ring is None else f"the key file {self.ring.path} holds " \
                                                                          "other keys"
            out.append(Problem(None, "ledger", None, ProblemKind.UNKNOWN_KEY,
                               f"{len(self.unknown)} ledger entries sealed by unknown key(s) "
                               f"{', '.join(sorted(self.unknown_ids))} "
                               f"({why}): set CELLTX_KEY_FILE to the key file that wrote this store"))
        return out

    def head_problems(self, expect: str) -> list[Problem]:
        """The head kept outside the store must still be in the ledger."""
        want = expect.strip().lower()
        if want in self.heads:
            return []
        now = f"now {self.last.seq} entries, head {self.last.head.hex()[:16]}..." \
            if self.last is not None and self.last.head is not None else "the ledger is now empty"
        return [Problem(None, "ledger", None, ProblemKind.REMOVED,
                        f"expected head {want[:16]}... is not in the ledger ({now}): the newest entries, or all, "
                        "were removed, or the ledger was rebuilt")]
