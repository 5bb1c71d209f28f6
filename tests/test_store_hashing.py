"""The generated row code of the store (``spec.body`` / ``spec.chain``, built with ``exec`` for speed) must
give the same bytes and digests as the plain reference in ``store.hashing``: on real simulated records
and on edge values of every column kind. A difference would change every stored digest."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celltx_mfg import store
from celltx_mfg.config import load_scenario
from celltx_mfg.records import RunRecords
from celltx_mfg.simulate import simulate
from celltx_mfg.store.hashing import reference_body, reference_chain

BASELINE = Path(__file__).resolve().parents[1] / "scenarios" / "baseline.yaml"
SPEC_NAMES = [s.name for s in store._SPECS]
GENESIS = hashlib.sha256(b"genesis").digest()


def outcome(f: Callable[..., Any], *args: Any) -> Any:
    """The result, or the type of what it raised: both forms must fail alike on values they cannot pack."""
    try:
        return f(*args)
    except Exception as e:  # noqa: BLE001
        return type(e)


def fast_chain(spec: store._Spec, rows: Sequence[Sequence[Any]], run_id: int) -> tuple[list[tuple], bytes, dict]:
    rec: defaultdict[Any, Any] = defaultdict(hashlib.sha256)
    state: list[Any] = [None]
    out = list(spec.chain(rows, run_id, GENESIS, rec, state))
    return out, state[0], {k: h.hexdigest() for k, h in rec.items()}


def slow_chain(spec: store._Spec, rows: Sequence[Sequence[Any]], run_id: int) -> tuple[list[tuple], bytes, dict]:
    rec: defaultdict[Any, Any] = defaultdict(hashlib.sha256)
    out, last = reference_chain(spec.name, spec.kinds, spec.optional, spec.batch_idx, rows, run_id, GENESIS, rec)
    return out, last, {k: h.hexdigest() for k, h in rec.items()}


def assert_same(spec: store._Spec, rows: Sequence[Sequence[Any]], run_id: int) -> None:
    for seq, r in enumerate(rows):
        fast = outcome(spec.body, r, run_id, seq)
        slow = outcome(reference_body, spec.name, spec.kinds, spec.optional, r, run_id, seq)
        assert fast == slow, (spec.name, seq, r)
    if all(isinstance(outcome(spec.body, r, run_id, 0), bytes) for r in rows):
        assert fast_chain(spec, rows, run_id) == slow_chain(spec, rows, run_id)


# --------------------------------------------------------------------------------------- real records

@pytest.fixture(scope="module")
def records() -> RunRecords:
    scenario, _ = load_scenario(BASELINE)
    short = scenario.model_copy(update={"horizon_days": 120.0, "warmup_days": 0.0})
    return simulate(short, seed=11)


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_fast_hasher_equals_reference_on_simulated_records(records: RunRecords, name: str) -> None:
    spec = store._BY_NAME[name]
    rows = [tuple(r) for r in getattr(records, spec.attr)]
    if name == "release":  # the signature column write_run appends
        rows = [(*r, hashlib.sha256(repr(r).encode()).hexdigest()) for r in rows]
    assert rows or name in ("shipment", "deviation"), f"the short baseline run writes no {name} rows"
    assert_same(spec, rows, run_id=3)


# --------------------------------------------------------------------------------------- edge values

_TEXT = st.text(max_size=12) | st.sampled_from(["", "ü", "é\u0301", "日本語", "\U0001f9ec", "a\x00b", "\u2028"])
_FLOAT = (st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from([0.0, -0.0, 5e-324, -1.7976931348623157e308, float("nan"), float("inf"),
                             float("-inf")])
          | st.integers(-(2**53), 2**53)  # an int in a float field packs like the float SQLite reads back
          | st.floats(width=32).map(np.float32))
_INT = (st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 2**63 - 1, -(2**63)])
        | st.integers(-(2**31), 2**31).map(np.int64))
_BOOL = st.booleans() | st.sampled_from([np.bool_(True), np.bool_(False), 0, 1])
_BY_KIND = {"str": _TEXT, "float": _FLOAT, "int": _INT, "bool": _BOOL}
_OUT_OF_RANGE = {"str": st.integers(), "float": st.text(max_size=3),
                 "int": st.sampled_from([2**63, -(2**63) - 1, 2**80]), "bool": st.just(None)}


def row_strategy(spec: store._Spec, broken: bool = False) -> st.SearchStrategy[tuple]:
    """Rows of the table's column kinds (None where the field may be missing); ``broken`` may also put a
    value no column of that kind takes."""
    cols = []
    for kind, opt in zip(spec.kinds, spec.optional, strict=True):
        s = _BY_KIND[kind] | st.none() if opt else _BY_KIND[kind]
        cols.append(s | _OUT_OF_RANGE[kind] if broken else s)
    return st.tuples(*cols)


_EDGE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", SPEC_NAMES)
@_EDGE
@given(data=st.data())
def test_fast_hasher_equals_reference_on_edge_values(name: str, data: st.DataObject) -> None:
    spec = store._BY_NAME[name]
    rows = data.draw(st.lists(row_strategy(spec), max_size=4))
    run_id = data.draw(st.integers(-(2**63), 2**63 - 1))
    assert_same(spec, rows, run_id)


@pytest.mark.parametrize("name", SPEC_NAMES)
@_EDGE
@given(data=st.data())
def test_fast_hasher_fails_like_reference_on_values_of_the_wrong_kind(name: str, data: st.DataObject) -> None:
    spec = store._BY_NAME[name]
    assert_same(spec, [data.draw(row_strategy(spec, broken=True))], data.draw(st.integers(0, 2**31)))


def test_reference_pins_the_stored_row_format() -> None:
    """The digest of one patient row as the pre-package store.py computed it: both forms keep the format."""
    spec = store._BY_NAME["patient"]
    vals = {"str": "COI-\u00fc", "float": 2.5, "int": -7, "bool": True}
    row = tuple(None if opt and i % 2 else vals[kind]
                for i, (kind, opt) in enumerate(zip(spec.kinds, spec.optional, strict=True)))
    want = "8c3343f365af77e93b85b85cd7871eeb897ac88e12748eb6448c99400ffb8fe3"
    assert hashlib.sha256(reference_body(spec.name, spec.kinds, spec.optional, row, 4, 9)).hexdigest() == want
    assert hashlib.sha256(spec.body(row, 4, 9)).hexdigest() == want


def test_null_flags() -> None:
    """A null flag tells None from 0, and NaN in an optional float is None (SQLite stores NaN as NULL)."""
    def one(kind: str, opt: bool, v: Any) -> bytes:
        return reference_body("t", (kind,), (opt,), (v,), 1, 0)

    assert one("float", True, None) == one("float", True, float("nan")) != one("float", True, 0.0)
    assert one("str", True, None) != one("str", True, "")
    assert one("int", False, 3) != one("float", False, 3)
