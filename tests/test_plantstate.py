"""The plant-state format: round trip byte-identical, and every bad state reported at once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from celltx_mfg.config import load_scenario
from celltx_mfg.plantstate import (
    BatchState,
    PatientState,
    PlantState,
    QCOutcome,
    QCTestState,
    SlotState,
    Stage,
    StateError,
    StateInfo,
    StepState,
    UnitHeld,
    UnitKind,
    load_state,
    write_state,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2027, 5, 3, 8, 0, 0)


def _t(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


def _patient(coi: str, stage: Stage, **kw: object) -> PatientState:
    base = dict(site="site_north", product="car_t_lenti", urgency="standard", infectious=False,
                referred=_t(-30), stage=stage, attempt=1)
    base.update(kw)
    return PatientState(coi, **base)  # type: ignore[arg-type]


def _state(**over: object) -> PlantState:
    """A small plant: one patient waiting, one booked, one in expansion, one in QC."""
    parts: dict[str, object] = dict(
        patients=(
            _patient("P-1", Stage.waiting_for_slot),
            _patient("P-2", Stage.slot_booked, booked_infusion=_t(30)),
            _patient("P-3", Stage.manufacturing),
            _patient("P-4", Stage.qc),
        ),
        slots=(SlotState("P-2", "P-2-A1", _t(-2), _t(3), _t(5), "S2"),),
        batches=(
            BatchState("P-3", "P-3-A1", 1, _t(-6), _t(-5.8), _t(-3.8), _t(-4.9), _t(-4.5)),
            BatchState("P-4", "P-4-A1", 1, _t(-20), _t(-19.8), None, _t(-19), _t(-18.5), _t(-5), _t(360)),
        ),
        steps=(StepState("P-3-A1", "expansion", _t(-3.4), _t(-3.4)),),
        units_held=(UnitHeld("P-3-A1", UnitKind.suite, "S1", _t(-4.5)),
                    UnitHeld("P-3-A1", UnitKind.incubator, "I1", _t(-4.3))),
        qc_tests=(QCTestState("P-4-A1", "sterility", _t(-5), _t(-5)),
                  QCTestState("P-4-A1", "endotoxin", _t(-5), _t(-5), QCOutcome.passed, _t(-4.9))),
    )
    parts.update(over)
    return PlantState(StateInfo(T0, "baseline", "test"), **parts)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def baseline():  # type: ignore[no-untyped-def]
    return load_scenario(ROOT / "scenarios" / "baseline.yaml")[0]


def _bytes(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return {path.name: path.read_bytes()}


@pytest.mark.parametrize("name", ["state", "state.yaml", "state.json"])
def test_round_trip_is_byte_identical(tmp_path: Path, baseline, name: str) -> None:  # type: ignore[no-untyped-def]
    state = _state()
    first, second = tmp_path / "a" / name, tmp_path / "b" / name
    write_state(state, first)
    back = load_state(first, baseline)
    assert back == state
    write_state(back, second)
    assert _bytes(first) == _bytes(second)
    assert back.state_hash() == state.state_hash()


def _problems(state: PlantState, tmp_path: Path, baseline) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad"
    write_state(state, path)
    with pytest.raises(StateError) as e:
        load_state(path, baseline)
    msg = e.value.render()
    assert len(msg.splitlines()) <= 25  # one screen
    return msg


def test_unit_that_does_not_exist(tmp_path: Path, baseline) -> None:  # type: ignore[no-untyped-def]
    s = _state(units_held=(UnitHeld("P-3-A1", UnitKind.suite, "S99", _t(-4.5)),))
    msg = _problems(s, tmp_path, baseline)
    assert "units_held.csv row 2, unit: a unit that does not exist" in msg and "'S99'" in msg


def test_two_patients_in_one_suite(tmp_path: Path, baseline) -> None:  # type: ignore[no-untyped-def]
    s = _state()
    s = _state(units_held=(*s.units_held, UnitHeld("P-4-A1", UnitKind.suite, "S1", _t(-4))),
               patients=(*s.patients[:3], dataclasses.replace(s.patients[3], stage=Stage.manufacturing)),
               steps=(*s.steps, StepState("P-4-A1", "expansion", _t(-4), _t(-4))), qc_tests=())
    msg = _problems(s, tmp_path, baseline)
    assert "two patients' open steps in one suite" in msg and "P-3" in msg and "P-4" in msg


def test_qc_result_for_unknown_test(tmp_path: Path, baseline) -> None:  # type: ignore[no-untyped-def]
    s = _state(qc_tests=(QCTestState("P-4-A1", "astrology", _t(-5), _t(-5), QCOutcome.passed, _t(-4)),))
    assert "a QC result for an unknown test" in _problems(s, tmp_path, baseline)


def test_start_in_the_future(tmp_path: Path, baseline) -> None:  # type: ignore[no-untyped-def]
    s = _state(steps=(StepState("P-3-A1", "expansion", _t(-3.4), _t(2)),))
    msg = _problems(s, tmp_path, baseline)
    assert "steps.csv row 2, started: in the future" in msg


def test_batch_with_no_patient(tmp_path: Path, baseline) -> None:  # type: ignore[no-untyped-def]
    s = _state()
    s = _state(batches=(*s.batches, BatchState("P-9", "P-9-A1", 1, _t(-3))))
    assert "a batch with no patient" in _problems(s, tmp_path, baseline)


def test_every_problem_at_once(tmp_path: Path, baseline) -> None:  # type: ignore[no-untyped-def]
    s = _state(units_held=(UnitHeld("P-3-A1", UnitKind.suite, "S99", _t(-4.5)),),
               qc_tests=(QCTestState("P-4-A1", "astrology", _t(-5)),),
               steps=(StepState("P-3-A1", "dancing", _t(-3.4), _t(-3.4)),))
    msg = _problems(s, tmp_path, baseline)
    assert "does not exist" in msg and "unknown test" in msg and "not a step of car_t_lenti" in msg


def test_bad_cells_unknown_columns_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "st"
    write_state(_state(), path)
    p = path / "patients.csv"
    p.write_text(p.read_text().replace("2027-04-03T08:00:00", "3rd of April", 1).replace("attempt", "atempt"))
    (path / "slots.csv").unlink()
    with pytest.raises(StateError) as e:
        load_state(path)
    msg = e.value.render()
    assert "patients.csv" in msg and "unknown column(s) ['atempt']" in msg
    assert "slots.csv: missing file" in msg


def test_bad_date_named_with_row(tmp_path: Path) -> None:
    path = tmp_path / "st"
    write_state(_state(), path)
    p = path / "patients.csv"
    p.write_text(p.read_text().replace("2027-04-03T08:00:00", "3rd of April", 1))
    with pytest.raises(StateError) as e:
        load_state(path)
    assert "patients.csv row 2, referred: must be an ISO date" in e.value.render()


@pytest.mark.parametrize("kind", ["missing", "fifo", "wrong_suffix"])
def test_paths_are_checked(tmp_path: Path, kind: str) -> None:
    import os

    target = tmp_path / "x"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "wrong_suffix":
        target = tmp_path / "x.txt"
        target.write_text("")
    with pytest.raises(StateError) as e:
        load_state(target)
    assert str(target) in e.value.render()
