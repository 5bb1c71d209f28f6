"""Exports with a declared Arrow schema: exact types (also when empty), event times as days and as UTC
timestamps, categories as dictionaries, integers as integers, and a data dictionary that cannot drift."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from celltx_mfg import store
from celltx_mfg.config import DEFAULT_START_DATE
from celltx_mfg.store.arrow_schema import CATEGORY, SCHEMAS, TABLES, TIMESTAMP, _enums
from celltx_mfg.store.schema import _ALL_TABLES, _TABLE_DEFS
from tests.test_store import SCENARIO_YAML, make_records, write

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2027, 3, 1)
TABLE_NAMES = [t.name for t in _ALL_TABLES]


@pytest.fixture
def engine(tmp_path: Path):
    eng = store.open_store(str(tmp_path / "log" / "celltx.db"))
    yield eng
    eng.dispose()


@pytest.fixture
def full(engine) -> int:
    """A store with a row in every table: a run dated by its scenario, another on the default date, a
    correction."""
    rid = write(engine, text=SCENARIO_YAML + f"start_date: {START.isoformat()}\n")
    write(engine, make_records(n_patients=2, seed=5))
    store.record_correction(engine, rid, "batch", 0, "suite recorded wrongly", {"suite": "S2"}, "qa_reviewer:JL")
    return rid


def _dictionary_module():
    spec = importlib.util.spec_from_file_location("data_dictionary", ROOT / "scripts" / "data_dictionary.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_schema_is_derived_from_the_store_tables() -> None:
    for t in _ALL_TABLES:
        stored = [str(c.name) for c in t.columns]
        assert [c.name for c in TABLES[t.name] if c.days_of is None] == stored, t.name
        for c in TABLES[t.name]:
            if c.days_of:
                assert c.type == TIMESTAMP and c.name == c.days_of + "_at"
    for name, enums, _ in _TABLE_DEFS.values():
        assert _enums(next(t for t in _ALL_TABLES if t.name == name)) == enums
        for f in enums:
            assert SCHEMAS[name].field(f).type == CATEGORY
    for table, col in [("run", "started"), ("run", "finished"), ("scenario", "created"), ("correction", "time")]:
        assert SCHEMAS[table].field(col).type == TIMESTAMP
    assert SCHEMAS["run"].field("status").type == CATEGORY
    assert SCHEMAS["correction"].field("table_name").type == CATEGORY
    assert SCHEMAS["batch"].field("attempt").type == pa.int64()
    assert SCHEMAS["step_event"].field("open").type == pa.bool_()
    assert SCHEMAS["batch"].field("released").type == pa.float64()
    assert SCHEMAS["batch"].field("released_at").nullable and not SCHEMAS["step_event"].field("start_at").nullable
    assert "shipment.hold_limit_days_at" not in {f"{t}.{c.name}" for t, cs in TABLES.items() for c in cs}
    assert all(c.meaning and c.unit for cs in TABLES.values() for c in cs)


def test_parquet_of_every_table_has_exactly_the_declared_schema(engine, full, tmp_path: Path) -> None:
    paths = store.export_parquet(engine, tmp_path / "pq")
    assert sorted(p.stem for p in paths) == sorted(TABLE_NAMES)
    for p in paths:
        t = pq.read_table(p)
        assert t.schema.equals(SCHEMAS[p.stem]), p.stem
        assert t.num_rows > 0, p.stem
    steps = pq.read_table(tmp_path / "pq" / "step_event.parquet")
    assert steps.column("open").type == pa.bool_() and steps.column("operators").type == pa.int64()
    assert all(len(d) == 64 for d in steps.column("digest").to_pylist())
    run = pq.read_table(tmp_path / "pq" / "run.parquet").to_pylist()
    assert all(r["started"].tzinfo is not None and r["finished"] >= r["started"] for r in run)


def test_empty_store_exports_every_table_with_the_declared_types(engine, tmp_path: Path) -> None:
    for p in store.export_parquet(engine, tmp_path / "pq"):
        t = pq.read_table(p)
        assert t.num_rows == 0 and t.schema.equals(SCHEMAS[p.stem]), p.stem
        assert not any(pa.types.is_null(f.type) for f in t.schema), p.stem
    for p in store.export_csv(engine, tmp_path / "csv"):
        assert p.read_text().splitlines() == [",".join(SCHEMAS[p.stem].names)], p.stem


def test_dataset_over_an_empty_and_a_full_export_reads(engine, full, tmp_path: Path) -> None:
    empty = store.open_store(str(tmp_path / "empty.db"))
    store.export_parquet(empty, tmp_path / "a")
    empty.dispose()
    store.export_parquet(engine, tmp_path / "b")
    for name in TABLE_NAMES:
        files = [str(tmp_path / d / f"{name}.parquet") for d in ("a", "b")]
        t = ds.dataset(files, format="parquet").to_table()
        assert t.schema.equals(SCHEMAS[name]) and t.num_rows == pq.read_table(files[1]).num_rows, name


def test_event_times_are_start_date_plus_days(engine, full, tmp_path: Path) -> None:
    store.export_parquet(engine, tmp_path / "pq")
    checked = 0
    for name, cols in TABLES.items():
        pairs = [(c.days_of, c.name) for c in cols if c.days_of]
        if not pairs:
            continue
        df = pq.read_table(tmp_path / "pq" / f"{name}.parquet").to_pandas()
        for days, at in pairs:
            for rid, start in ((full, START), (full + 1, DEFAULT_START_DATE)):
                rows = df[df["run_id"] == rid]
                day0 = pd.Timestamp(start, tz="UTC")
                expected = day0 + pd.to_timedelta(rows[days], unit="D").dt.round("us")
                got = rows[at]
                assert (got.isna() == rows[days].isna()).all(), (name, at)
                assert (got.dropna() == expected.dropna()).all(), (name, at)
                checked += int(got.notna().sum())
    assert checked > 100
    batch = pq.read_table(tmp_path / "pq" / "batch.parquet").to_pylist()[0]
    assert batch["run_id"] == full
    assert batch["apheresis_start_at"] == (dt.datetime.combine(START, dt.time(), tzinfo=dt.UTC)
                                           + dt.timedelta(days=batch["apheresis_start"]))


def test_csv_has_the_same_columns_with_iso_utc_timestamps(engine, full, tmp_path: Path) -> None:
    store.export_csv(engine, tmp_path / "csv")
    for name in TABLE_NAMES:
        df = pd.read_csv(tmp_path / "csv" / f"{name}.csv")
        assert list(df.columns) == SCHEMAS[name].names, name
    run = pd.read_csv(tmp_path / "csv" / "run.csv")
    assert run["started"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$").all()
    batch = pd.read_csv(tmp_path / "csv" / "batch.csv")
    assert batch["attempt"].dtype == np.int64 and batch["oos"].dtype == bool
    assert pd.to_datetime(batch["received_at"]).dt.tz is not None
    patients = pd.read_csv(tmp_path / "csv" / "patient.csv")
    assert patients["attempts"].dtype == np.int64 and patients["patient_no"].dtype == np.int64


def test_categoricals_are_dictionary_typed(engine, full, tmp_path: Path) -> None:
    store.export_parquet(engine, tmp_path / "pq")
    for name, cols in TABLES.items():
        t = pq.read_table(tmp_path / "pq" / f"{name}.parquet")
        for c in cols:
            if c.values:
                col = t.column(c.name)
                assert pa.types.is_dictionary(col.type), (name, c.name)
                assert set(col.to_pylist()) - {None} <= set(c.values), (name, c.name)
    df = pd.read_parquet(tmp_path / "pq" / "batch.parquet")
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)


def test_integers_stay_integers_in_batch_csv(engine, full, tmp_path: Path) -> None:
    out = tmp_path / "b.csv"
    n = store.export_batch_csv(engine, "COI-00001", out, run_id=full)
    text = out.read_text()
    df = pd.read_csv(out)
    assert n == len(df) > 20
    for col in ("run_id", "row_seq", "attempt", "seq", "operators", "patient_no", "attempts"):
        assert col in df.columns
        values = df[col].dropna()
        assert (values == values.round()).all(), col
    for row in csv.DictReader(io.StringIO(text)):
        for col in ("run_id", "row_seq", "seq", "operators", "attempt", "patient_no", "attempts"):
            assert not row[col].endswith(".0"), (col, row)


def test_data_dictionary_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "data-dictionary.md").read_text(encoding="utf-8")
    assert committed == _dictionary_module().render(), "run scripts/data_dictionary.py"
    for name, cols in TABLES.items():
        assert f"## `{name}`" in committed
        for c in cols:
            assert f"| `{c.name}` |" in committed
