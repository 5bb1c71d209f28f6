"""The plant's state at one moment (docs/plant-state.md): typed rows, readers and writers for a CSV
folder or one YAML/JSON file, validation on its own and against a scenario, and the snapshot of a stored
simulated run at a day.

``load_state(path, scenario)`` is the one way in: a state read, checked on its own and (given the
scenario) against the plant it will run under, with every problem reported at once as ``StateError``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Scenario
from .errors import StateError, StateProblem
from .io import read_state, state_json_text, state_yaml_text, write_state
from .model import (
    KINDS,
    ROW_TYPES,
    BatchState,
    OutOfService,
    PatientState,
    PlantState,
    QCOutcome,
    QCTestState,
    ReleaseMode,
    SlotState,
    Stage,
    StateInfo,
    StepState,
    UnitHeld,
    UnitKind,
    at_day,
    days_from,
)
from .validate import check_against, check_consistency, unit_names

__all__ = [
    "KINDS", "ROW_TYPES", "BatchState", "OutOfService", "PatientState", "PlantState", "QCOutcome", "QCTestState",
    "ReleaseMode", "SlotState", "Stage", "StateError", "StateInfo", "StateProblem", "StepState", "UnitHeld",
    "UnitKind", "at_day", "check_against", "check_consistency", "days_from", "load_state", "read_state",
    "state_json_text", "state_yaml_text", "unit_names", "write_state",
]


def load_state(path: str | Path, scenario: Scenario | None = None) -> PlantState:
    """The state at ``path`` (a CSV folder, or a .yaml/.yml/.json file), checked on its own and, with
    ``scenario``, against the plant it describes; StateError lists every problem (nothing is used)."""
    state = read_state(path)
    if scenario is not None:
        check_against(state, scenario, str(path))
    return state
