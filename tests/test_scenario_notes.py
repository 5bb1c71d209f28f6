"""Scenario notes (labels, descriptions, hidden flags): append-only rows, the newest wins, written by
``celltx label`` and migrated into older stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from celltx_mfg import store
from celltx_mfg.cli import app
from celltx_mfg.store import StoreError, open_store, verify, write_run

from .test_store import SCENARIO_YAML, make_records

runner = CliRunner()
NAME = "two-suite plant"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    p = tmp_path / "notes.db"
    e = open_store(str(p))
    write_run(e, NAME, SCENARIO_YAML, make_records())
    e.dispose()
    return p


def test_newest_note_wins_and_keeps_fields_it_leaves_out(db: Path) -> None:
    e = open_store(str(db))
    store.write_scenario_note(e, NAME, label="Plan A", description="two suites, 2027 demand")
    note = store.write_scenario_note(e, NAME, hidden=True)
    assert (note.label, note.description, note.hidden) == ("Plan A", "two suites, 2027 demand", True)
    notes = store.scenario_notes(e)
    assert notes.to_dict("records")[0] | {"time": None} == {
        "scenario_name": NAME, "label": "Plan A", "description": "two suites, 2027 demand", "hidden": True,
        "time": None, "actor": "planner"}
    store.write_scenario_note(e, NAME, label="", hidden=False)  # '' clears
    now = store.scenario_notes(e).iloc[0]
    assert now["label"] is None and not now["hidden"] and now["description"] == "two suites, 2027 demand"
    assert len(store.note_history(e, NAME)) == 3
    assert verify(e) == []
    e.dispose()


def test_notes_are_append_only(db: Path) -> None:
    e = open_store(str(db))
    store.write_scenario_note(e, NAME, label="Plan A")
    e.dispose()
    con = sqlite3.connect(db)
    for sql in ("UPDATE scenario_note SET label = 'x'", "DELETE FROM scenario_note"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()


def test_note_for_an_unknown_scenario_names_the_stored_ones(db: Path) -> None:
    e = open_store(str(db))
    with pytest.raises(StoreError, match=f"no scenario named 'nope'.*{NAME}"):
        store.write_scenario_note(e, "nope", label="x")
    with pytest.raises(StoreError, match="at most 80"):
        store.write_scenario_note(e, NAME, label="x" * 81)
    assert store.scenario_notes(e).empty
    e.dispose()


def test_cli_label_sets_hides_and_shows(db: Path) -> None:
    res = runner.invoke(app, ["label", NAME, "--db", str(db), "--label", "Plan A", "--description", "why", "--hide"])
    assert res.exit_code == 0, res.output
    assert "Plan A" in res.output and "hidden" in res.output
    res = runner.invoke(app, ["label", NAME, "--db", str(db), "--show"])
    assert res.exit_code == 0 and "shown" in res.output
    notes = store.scenario_notes(open_store(str(db), readonly=True)).iloc[0]
    assert notes["label"] == "Plan A" and not notes["hidden"]


@pytest.mark.parametrize("args, message", [
    (["nope", "--label", "x"], "no scenario named 'nope'"),
    ([NAME], "nothing to change"),
])
def test_cli_label_bad_input_exits_2(db: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["label", *args, "--db", str(db)])
    assert res.exit_code == 2 and message in res.output
    assert "Traceback" not in res.output


def test_cli_label_missing_database_exits_2(tmp_path: Path) -> None:
    res = runner.invoke(app, ["label", NAME, "--db", str(tmp_path / "none.db"), "--hide"])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "none.db").exists()


def test_schema_3_store_gets_the_note_table(db: Path) -> None:
    con = sqlite3.connect(db)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'scenario_note'"):
        con.execute(f'DROP TRIGGER "{name}"')
    con.execute("DROP TABLE scenario_note")
    con.execute("PRAGMA user_version = 3")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 3 is older"):
        open_store(str(db), readonly=True)
    e = open_store(str(db))
    assert store.scenario_notes(e).empty and verify(e) == []
    store.write_scenario_note(e, NAME, hidden=True)
    assert bool(store.scenario_notes(e).iloc[0]["hidden"])
    e.dispose()
