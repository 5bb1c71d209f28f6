"""Forecasts in the store: written whole, read back as the same result (same JSON), sealed in the ledger
and covered by verify (a changed, removed or inserted row, a re-sealed forecast, a deleted forecast), and a
schema 2 store migrated to 3 with its ledger intact."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from celltx_mfg import store
from celltx_mfg.forecast.result import Band, ForecastResult, LoadKind, PatientForecast, WeekLoad
from celltx_mfg.store import open_store, verify, write_run
from celltx_mfg.store.forecasts import read_forecast, read_forecasts, write_forecast

from .test_store import SCENARIO_YAML, make_records

T0 = dt.datetime(2026, 3, 2, 8, 0)


def _result(n: int = 3) -> ForecastResult:
    day = dt.timedelta(days=1)
    patients = [PatientForecast(
        coi=f"COI-{i:04d}", stage="manufacturing" if i % 2 else "qc",
        release=Band(T0 + (10 + i) * day, T0 + (14 + i) * day, None if i == 0 else T0 + (20 + i) * day),
        infusion=Band(T0 + (15 + i) * day, T0 + (19 + i) * day, T0 + (27 + i) * day),
        p_infused_by_booked_date=None if i == 1 else 0.5 + i / 10, p_lost=0.02 * i,
        booked_infusion=None if i == 1 else T0 + 20 * day) for i in range(n)]
    capacity = {k: [WeekLoad(w, T0 + 7 * (w - 1) * day, Band(0.1 * w, 0.1 * w + 0.05, 0.1 * w + 0.1))
                    for w in range(1, 9)] for k in LoadKind}
    return ForecastResult(as_of=T0, replications=200, horizon_days=120.0, scenario_name="baseline",
                          scenario_hash="ab" * 32, state_hash="cd" * 32, seed=7, patients=patients,
                          capacity=capacity)


@pytest.fixture
def fdb(tmp_path: Path) -> Path:
    p = tmp_path / "f.db"
    e = open_store(str(p))
    write_run(e, "two-suite plant", SCENARIO_YAML, make_records())
    write_forecast(e, _result())
    write_forecast(e, _result(5), label="second")
    e.dispose()
    return p


def _sql(p: Path, *sql: str) -> None:
    con = sqlite3.connect(p)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()


def _found(p: Path) -> set[tuple[str, str]]:
    return {(x.table, str(x.kind)) for x in verify(open_store(str(p), readonly=True)) if x.kind != "guard"}


def test_forecast_round_trips_and_verifies(fdb: Path) -> None:
    e = open_store(str(fdb), readonly=True)
    assert verify(e) == []
    got = read_forecasts(e)
    assert [f.id for f in got] == [2, 1] and got[0].label == "second"
    assert read_forecast(e, 1).result.to_json() == _result().to_json()
    assert read_forecast(e).result.to_json() == _result(5).to_json()
    with pytest.raises(store.StoreError, match="no forecast 9 .*stored forecasts .*2, 1"):
        read_forecast(e, 9)


def test_forecast_rows_are_append_only(fdb: Path) -> None:
    con = sqlite3.connect(fdb)
    for sql in ("UPDATE forecast_patient SET p_lost = 0", "DELETE FROM forecast_load", "DELETE FROM forecast"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(sql)
    con.close()


@pytest.mark.parametrize(("sql", "expect"), [
    ("UPDATE forecast_patient SET release_p50 = '2026-03-05T08:00:00' WHERE forecast_id = 1 AND row_seq = 1",
     ("forecast_patient", "changed")),
    ("DELETE FROM forecast_load WHERE forecast_id = 2 AND row_seq = 23", ("forecast_load", "removed")),
    ("INSERT INTO forecast_load SELECT forecast_id, 24, resource, week, start, p10, p50, p90, digest "
     "FROM forecast_load WHERE forecast_id = 1 AND row_seq = 0", ("forecast_load", "inserted")),
    ("UPDATE forecast SET replications = 2000 WHERE id = 1", ("forecast", "changed")),
])
def test_verify_finds_tampered_forecasts(fdb: Path, sql: str, expect: tuple[str, str]) -> None:
    _sql(fdb, sql)
    assert expect in _found(fdb)


def test_resealed_or_deleted_forecast_is_found_by_the_ledger(fdb: Path) -> None:
    from celltx_mfg.store.forecast_seals import forecast_seal

    con = sqlite3.connect(fdb)
    con.row_factory = sqlite3.Row
    row = dict(con.execute("SELECT * FROM forecast WHERE id = 1").fetchone())
    con.close()
    row["label"] = "edited"  # a new label, and the sha256 seal recomputed without the key
    _sql(fdb, f"UPDATE forecast SET label = 'edited', digest = x'{forecast_seal(1, row).hex()}' WHERE id = 1")
    assert _found(fdb) == {("forecast", "seal")}
    _sql(fdb, "DELETE FROM forecast_patient WHERE forecast_id = 2", "DELETE FROM forecast_load WHERE forecast_id = 2",
         "DELETE FROM forecast WHERE id = 2")
    assert ("forecast", "removed") in _found(fdb)


def test_schema_2_store_is_migrated_to_3(tmp_path: Path) -> None:
    """A store as schema 2 left it (no forecast tables, the ledger's kinds without ``forecast``): a writable
    open adds the tables and widens the ledger without changing its entries; a forecast can then be stored."""
    p = tmp_path / "v2.db"
    e = open_store(str(p))
    write_run(e, "two-suite plant", SCENARIO_YAML, make_records())
    e.dispose()
    con = sqlite3.connect(p)
    before = con.execute("SELECT * FROM ledger ORDER BY seq").fetchall()
    ledger_sql = con.execute("SELECT sql FROM sqlite_master WHERE name = 'ledger'").fetchone()[0]
    con.close()
    _sql(p, "DROP TABLE scenario_note", "DROP TABLE forecast_load", "DROP TABLE forecast_patient", "DROP TABLE forecast",
         "ALTER TABLE ledger RENAME TO l_old", "DROP INDEX ix_ledger_ref",
         ledger_sql.replace(", 'forecast'", ""), "INSERT INTO ledger SELECT * FROM l_old", "DROP TABLE l_old",
         "CREATE INDEX ix_ledger_ref ON ledger (kind, ref_id)", "PRAGMA user_version = 2")
    with pytest.raises(store.StoreError, match="schema version 2 is older"):
        open_store(str(p), readonly=True)
    e = open_store(str(p))
    con = sqlite3.connect(p)
    assert con.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION == 4
    assert con.execute("SELECT * FROM ledger ORDER BY seq").fetchall() == before
    con.close()
    assert verify(e) == []
    write_forecast(e, _result())
    e.dispose()
    assert verify(open_store(str(p), readonly=True)) == []


def test_postgres_stores_and_verifies_forecasts(pg_url: str) -> None:
    e = open_store(pg_url)
    write_forecast(e, _result())
    assert read_forecast(e).result.to_json() == _result().to_json()
    assert verify(e) == []
    e.dispose()
