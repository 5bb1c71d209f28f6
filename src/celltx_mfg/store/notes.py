"""Scenario notes: a label, a description and a hidden flag a planner gives a scenario name.

Append-only like everything else in the store: a change is a new ``scenario_note`` row, the newest row
of a name wins whole, and the fields a change leaves out are carried over from the row before, so
``celltx label baseline --hide`` keeps the label given earlier. Hiding takes a scenario out of the
dashboard's lists; its runs stay stored, verifiable and reachable by name from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from . import _common
from ._common import DB_ERRORS, StoreError, _reading, _reason, _where, _write_txn
from .schema import SCENARIO, SCENARIO_NOTE

NOTE_COLUMNS = ("scenario_name", "label", "description", "hidden", "time", "actor")
MAX_LABEL = 80
MAX_DESCRIPTION = 2000


@dataclass(frozen=True)
class ScenarioNote:
    """The note in force for one scenario name (its newest row)."""

    scenario_name: str
    label: str | None
    description: str | None
    hidden: bool
    time: str
    actor: str


def _clean(value: str | None, field: str, limit: int) -> str | None:
    """None stays None (keep the old value); an empty string clears the field."""
    if value is None:
        return None
    text = " ".join(value.split()) if field == "label" else value.strip()
    if len(text) > limit:
        raise StoreError(f"scenario note {field}: {len(text)} characters; at most {limit} are allowed")
    return text


def _current(conn: sa.Connection, name: str) -> ScenarioNote | None:
    n = SCENARIO_NOTE.c
    row = conn.execute(sa.select(*(n[c] for c in NOTE_COLUMNS)).where(n.scenario_name == name)
                       .order_by(n.id.desc()).limit(1)).first()
    return None if row is None else ScenarioNote(str(row[0]), row[1], row[2], bool(row[3]), str(row[4]), str(row[5]))


def write_scenario_note(engine: Engine, name: str, *, label: str | None = None, description: str | None = None,
                        hidden: bool | None = None, actor: str = "planner") -> ScenarioNote:
    """Append a note for scenario ``name`` (which must be stored); returns the note now in force.

    ``None`` keeps a field as the previous note had it; ``""`` clears a label or description.
    """
    label, description = _clean(label, "label", MAX_LABEL), _clean(description, "description", MAX_DESCRIPTION)
    if not actor.strip():
        raise StoreError("a scenario note needs an actor (who, or which role)")
    where = _where(engine)
    try:
        with _write_txn(engine) as conn:
            names = sorted({str(x) for x in conn.execute(sa.select(SCENARIO.c.name)).scalars()})
            if name not in names:
                shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
                raise StoreError(f"no scenario named {name!r} in {where}; scenarios: {shown or '(none stored)'}")
            old = _current(conn, name)
            note = ScenarioNote(
                name,
                (old.label if old else None) if label is None else (label or None),
                (old.description if old else None) if description is None else (description or None),
                (old.hidden if old else False) if hidden is None else hidden,
                _common._now(), actor.strip(),
            )
            conn.execute(sa.insert(SCENARIO_NOTE).values(**{c: getattr(note, c) for c in NOTE_COLUMNS}))
        return note
    except StoreError:
        raise
    except DB_ERRORS as e:
        raise StoreError(f"scenario note not written to {where}: {_reason(e)}") from e


def scenario_notes(engine: Engine) -> pd.DataFrame:
    """The note in force per scenario name (columns ``NOTE_COLUMNS``); names never noted are absent."""
    n = SCENARIO_NOTE.c
    newest = sa.select(sa.func.max(n.id)).group_by(n.scenario_name).scalar_subquery()
    with _reading(engine) as conn:
        rows = conn.execute(sa.select(*(n[c] for c in NOTE_COLUMNS)).where(n.id.in_(newest))
                            .order_by(n.scenario_name)).all()
    df = pd.DataFrame([tuple(r) for r in rows], columns=list(NOTE_COLUMNS))
    df["hidden"] = df["hidden"].astype(bool)
    return df


def note_history(engine: Engine, name: str) -> pd.DataFrame:
    """Every note row of one scenario name, oldest first: who changed its label or visibility, and when."""
    n = SCENARIO_NOTE.c
    with _reading(engine) as conn:
        rows = conn.execute(sa.select(*(n[c] for c in NOTE_COLUMNS)).where(n.scenario_name == name)
                            .order_by(n.id)).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(NOTE_COLUMNS))
