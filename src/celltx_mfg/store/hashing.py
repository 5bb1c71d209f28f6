"""The tamper-evidence digests: one canonical byte form per record row, chained by sha256.

Canonical row = struct(table name, run_id, row_seq, numbers, null flags, text lengths) + the UTF-8 text
of the strings. The lengths make it unambiguous, a null flag tells None from 0 or "", an int in a float
field packs the same as the float SQLite reads back, and NaN counts as None because SQLite stores NaN as
NULL. Two implementations give the same bytes: ``compile_row_code`` generates straight-line code per
table (it runs once per row for millions of rows, about twice as fast as a loop), and ``reference_body``
/ ``reference_chain`` are the plain loop, the definition the generated code is tested against.
"""

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

RowBody = Callable[[Sequence[Any], int, int], bytes]
RowChain = Callable[..., Iterator[tuple[Any, ...]]]

_STRUCT_CODE = {"float": "d", "int": "q", "bool": "?"}  # '?' takes numpy bools too
_ZERO: dict[str, Any] = {"float": 0.0, "int": 0, "bool": 0}

# ------------------------------------------------------------------------------------- reference form


def _is_null(kind: str, v: Any) -> bool:
    return v is None or (kind == "float" and v != v)


def reference_body(name: str, kinds: Sequence[str], optional: Sequence[bool], row: Sequence[Any],
                   run_id: int, seq: int) -> bytes:
    """Canonical bytes of one row, field by field: the readable definition of the row digest."""
    fmt, values, texts = ["<", f"{len(name.encode())}s", "q", "q"], [name.encode(), run_id, seq], []
    for kind, opt, v in zip(kinds, optional, row, strict=True):
        if kind == "str":
            text = "" if opt and v is None else v
            if opt:
                fmt.append("B")
                values.append(v is None)
            fmt.append("I")
            values.append(len(text))
            texts.append(format(text))  # as the generated f-string formats it
        elif opt:
            null = _is_null(kind, v)
            fmt += ["B", _STRUCT_CODE[kind]]
            values += [null, _ZERO[kind] if null else v]
        else:
            fmt.append(_STRUCT_CODE[kind])
            values.append(v)
    return struct.pack("".join(fmt), *values) + "".join(texts).encode()


def reference_chain(name: str, kinds: Sequence[str], optional: Sequence[bool], batch_idx: int | None,
                    rows: Iterable[Sequence[Any]], run_id: int, prev: bytes,
                    rec: Mapping[str, Any]) -> tuple[list[tuple[Any, ...]], bytes]:
    """Insert tuples of a table's rows and the chain's last link, feeding each batch's record digest."""
    out = []
    for seq, r in enumerate(rows):
        body = reference_body(name, kinds, optional, r, run_id, seq)
        prev = hashlib.sha256(prev + body).digest()
        if batch_idx is not None and r[batch_idx] is not None:
            rec[r[batch_idx]].update(body)
        out.append((run_id, seq, *r, prev))
    return out, prev


# ------------------------------------------------------------------------------------- generated form

def _field_code(i: int, kind: str, opt: bool) -> tuple[list[str], list[str], list[str]]:
    """struct codes, pack arguments and text parts of field ``i`` as source text."""
    v = f"r[{i}]"
    if kind == "str":
        if opt:
            return ["B", "I"], [f"{v} is None", f'len("" if {v} is None else {v})'], [f"'' if {v} is None else {v}"]
        return ["I"], [f"len({v})"], [v]
    code = _STRUCT_CODE[kind]
    if opt and kind == "float":
        null = f"({v} is None or {v} != {v})"
        return ["B", code], [null, f"(0.0 if {null} else {v})"], []
    if opt:
        return ["B", code], [f"{v} is None", f"(0 if {v} is None else {v})"], []
    return [code], [v], []


_ROW_CODE = """
def body(r, run_id, seq):
    return {body}

def chain(rows, run_id, prev, rec, state):
    for seq, r in enumerate(rows):
        body = {body}
        prev = SHA(prev + body).digest()
        {rec}
        yield (run_id, seq, *r, prev)
    state[0] = prev
"""


def compile_row_code(name: str, kinds: Sequence[str], optional: Sequence[bool], batch_idx: int | None,
                     batch_optional: bool) -> tuple[RowBody, RowChain]:
    """Generate one table's row serialiser ``body(r, run_id, seq)`` and chaining generator
    ``chain(rows, run_id, prev, rec, state)`` (yields insert tuples, leaves the last link in state[0]);
    same bytes as ``reference_body``, inlined because the loop over field kinds costs as much again."""
    fmt, args = ["<", f"{len(name.encode())}s", "q", "q"], ["NAME", "run_id", "seq"]
    texts: list[str] = []
    for i, (kind, opt) in enumerate(zip(kinds, optional, strict=True)):
        f, a, t = _field_code(i, kind, opt)
        fmt, args, texts = fmt + f, args + a, texts + t
    text = 'f"' + "".join("{" + t + "}" for t in texts) + '".encode()' if texts else 'b""'
    body = f"PACK({', '.join(args)}) + {text}"
    rec = ""
    if batch_idx is not None:
        b = f"r[{batch_idx}]"
        rec = f"if {b} is not None: rec[{b}].update(body)" if batch_optional else f"rec[{b}].update(body)"
    ns: dict[str, Any] = {"NAME": name.encode(), "PACK": struct.Struct("".join(fmt)).pack,
                          "SHA": hashlib.sha256}
    exec(compile(_ROW_CODE.format(body=body, rec=rec), f"<store row code: {name}>", "exec"), ns)
    return ns["body"], ns["chain"]


# ------------------------------------------------------------------------------ run and correction seals

RUN_SEALED = ("replication", "seed", "package_version", "status", "started", "finished", "horizon", "warmup",
              "events", "costs_json", "label", "row_counts", "chain_head")


def _run_body(values: Sequence[Any]) -> bytes:
    return b"run" + json.dumps(list(values), separators=(",", ":")).encode()


def _genesis(run_id: int, content_hash: str) -> bytes:
    """First link of a run's record chain: binds every row to its run and its scenario text."""
    return hashlib.sha256(_run_body([run_id, content_hash])).digest()


def _run_seal(run_id: int, content_hash: str, row: Mapping[str, Any]) -> bytes:
    """The run row's own digest, over all its fields including the chain head."""
    return hashlib.sha256(_run_body([run_id, content_hash, *(row[k] for k in RUN_SEALED)])).digest()


def _correction_body(run_id: int, table: str, row_seq: int, reason: str, new_values_json: str, time: str,
                     actor: str) -> bytes:
    return b"correction" + json.dumps([run_id, table, row_seq, reason, new_values_json, time, actor],
                                      separators=(",", ":")).encode()


def _record_hex(rec: Mapping[str, Any], batch_no: str | None) -> str:
    """Digest of a batch's record as it stands now (rows of batch, step_event, qc_test, deviation)."""
    h = rec.get(batch_no) if batch_no is not None else None
    return (h if h is not None else hashlib.sha256()).hexdigest()


# ------------------------------------------------------------------------------- ledger and signatures

def scenario_digest(scenario_id: int, name: str, content_hash: str, created: str) -> bytes:
    """A scenario row's own seal: its id, name, text hash and the time it was first stored."""
    return hashlib.sha256(b"scenario" + json.dumps([scenario_id, name, content_hash, created],
                                                   separators=(",", ":")).encode()).digest()


def ledger_body(seq: int, kind: str, ref_id: int, digest: bytes, adopted: bool, time: str, key_id: str) -> bytes:
    """Canonical bytes of one ledger entry; its head is HMAC(seal key, previous head + these bytes)."""
    return b"ledger" + json.dumps([seq, kind, ref_id, digest.hex(), bool(adopted), time, key_id],
                                  separators=(",", ":")).encode()


def release_signed_bytes(row_body: bytes) -> bytes:
    """What a role key signs for a release: the release row's canonical bytes (run, row, batch, time,
    mode, role, meaning and the batch record digest), domain-separated from every other MAC."""
    return b"release signature\0" + row_body
