"""Reading and writing a plant state: a folder with one CSV per kind, or one YAML or JSON file.

Both forms carry the same columns (the row dataclasses' fields in order). Every kind must be there,
even with no rows (a header alone, or ``[]``): a forgotten file must not read as "no batches in QC".
Writing is deterministic: rows sorted, every column written, times as ISO text to the second (a date
alone when the time is midnight), so state -> write -> read -> write gives the same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import stat
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from .errors import Problems, StateError
from .model import KINDS, ROW_TYPES, PlantState, StateInfo

MAX_FILE_BYTES = 64_000_000  # a plant's live work in progress is thousands of rows, not millions
MAX_ROWS = 1_000_000
SINGLE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")

_Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------- values
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """The field's type without ``None`` and whether it may be empty."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return (args[0], True) if args and len(args) < len(typing.get_args(tp)) else (tp, False)


def parse_datetime(v: Any) -> dt.datetime:
    """An ISO date or date-time (plant local time, no zone), to the whole second."""
    if isinstance(v, dt.datetime):
        when = v
    elif isinstance(v, dt.date):
        when = dt.datetime.combine(v, dt.time())
    elif isinstance(v, str):
        when = dt.datetime.fromisoformat(v.strip())
    else:
        raise ValueError("an ISO date (2027-03-01) or date-time (2027-03-01T08:30)")
    if when.tzinfo is not None:
        raise ValueError("a time zone (Z, +01:00) is not allowed: give the plant's local time")
    return when.replace(microsecond=0)


def _parse(v: Any, tp: Any) -> Any:
    """A cell or YAML/JSON value as the field's type; ValueError says what is allowed."""
    if tp is dt.datetime:
        try:
            return parse_datetime(v)
        except ValueError as e:
            allowed = "must be an ISO date (2027-03-01) or date-time (2027-03-01T08:30)"
            msg = str(e) if "time zone" in str(e) else allowed
            raise ValueError(msg) from None
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in TRUE + FALSE:
            return v.strip().lower() in TRUE
        raise ValueError("must be true or false")
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError("must be a whole number")
        try:
            n = int(v)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if n < 1:
            raise ValueError("must be 1 or more")
        return n
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(v.strip() if isinstance(v, str) else v)
        except ValueError:
            raise ValueError(f"must be one of {', '.join(m.value for m in tp)}") from None
    if not isinstance(v, str | int | float) or isinstance(v, bool):
        raise ValueError("must be text")
    return str(v).strip()


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _parse_row(cls: type, raw: _Row, where: str, problems: Problems) -> Any | None:
    """One row as its dataclass, or None after adding its problems (unknown and missing columns are the
    caller's: they concern the whole file)."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    ok = True
    for f in fields(cls):
        tp, optional = _base_type(hints[f.name])
        v = raw.get(f.name)
        if _empty(v):
            if not optional and tp is not bool:
                problems.add(where, f.name, "required, is empty")
                ok = False
            continue
        try:
            values[f.name] = _parse(v, tp)
        except ValueError as e:
            problems.add(where, f.name, str(e), v)
            ok = False
    return cls(**values) if ok else None


def format_value(v: Any) -> str:
    """A value as its CSV text; the YAML/JSON text of a time or enum is the same string."""
    if v is None:
        return ""
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time() else v.isoformat(timespec="seconds")
    return str(v)


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, bool | int) and not isinstance(v, Enum):
        return v
    return format_value(v)


# ---------------------------------------------------------------------------------------------- columns
def columns(kind: str) -> list[str]:
    cls = StateInfo if kind == "state" else ROW_TYPES[kind]
    return [f.name for f in fields(cls)]


def _required(kind: str) -> list[str]:
    cls = StateInfo if kind == "state" else ROW_TYPES[kind]
    hints = _hints(cls)
    kinds = {f.name: _base_type(hints[f.name]) for f in fields(cls)}
    return [name for name, (tp, optional) in kinds.items() if not optional and tp is not bool]


def _check_columns(kind: str, present: Iterable[str], where: str, problems: Problems) -> bool:
    cols = list(present)
    allowed = columns(kind)
    unknown = [c for c in cols if c not in allowed]
    if unknown:
        problems.add(where, None, f"unknown column(s) {unknown}; allowed: {', '.join(allowed)}")
    missing = [c for c in _required(kind) if c not in cols]
    if missing:
        problems.add(where, None, f"missing column(s) {missing}; required: {', '.join(_required(kind))}")
    return not unknown and not missing


# ---------------------------------------------------------------------------------------------- building
def build_state(tables: Mapping[str, list[tuple[str, _Row]]], path: str) -> PlantState:
    """Rows of every kind (with where each came from) as a ``PlantState``; every problem at once."""
    problems = Problems()
    info_rows = tables.get("state", [])
    info: StateInfo | None = None
    if len(info_rows) != 1:
        where = info_rows[1][0] if len(info_rows) > 1 else "state"
        problems.add(where, None, f"the state has exactly one row (as_of, scenario, source), got {len(info_rows)}")
    else:
        info = _parse_row(StateInfo, info_rows[0][1], info_rows[0][0], problems)
    rows: dict[str, list[Any]] = {}
    sources: dict[int, str] = {}
    for kind, cls in ROW_TYPES.items():
        rows[kind] = []
        for where, raw in tables.get(kind, []):
            r = _parse_row(cls, raw, where, problems)
            if r is not None:
                rows[kind].append(r)
                sources[id(r)] = where
    problems.raise_if_any(path)
    assert info is not None
    state = PlantState(info, **{k: tuple(v) for k, v in rows.items()}, sources=sources)
    from .validate import check_consistency

    check_consistency(state, path)
    return state


# ---------------------------------------------------------------------------------------------- paths
def _kind_of_path(p: Path, shown: str) -> str:
    """'dir' or 'file' for a path a user typed; StateError when it cannot be read as a state."""
    try:
        st = p.stat()
    except FileNotFoundError:
        raise StateError(shown, [_p(shown, "no such file or directory")]) from None
    except OSError as e:
        raise StateError(shown, [_p(shown, f"cannot read: {e.strerror or e}")]) from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(p, os.R_OK | os.X_OK):
            raise StateError(shown, [_p(shown, "directory is not readable (permission denied)")])
        return "dir"
    if not stat.S_ISREG(st.st_mode):
        raise StateError(shown, [_p(shown, "not a regular file or a directory (a FIFO, device or socket?)")])
    if p.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise StateError(shown, [_p(shown, "a plant state is a folder of CSV files or one .yaml, .yml or .json "
                                    "file")])
    return "file"


def _p(where: str, message: str) -> Any:
    from .errors import StateProblem

    return StateProblem(where, None, message)


def _read_text(p: Path, shown: str) -> str:
    """A file's UTF-8 text, refused past MAX_FILE_BYTES and when not a regular readable file."""
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise StateError(shown, [_p(str(p.name), "not a regular file")])
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise StateError(shown, [_p(p.name, f"cannot read: {e.strerror or e}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise StateError(shown, [_p(p.name, f"more than {MAX_FILE_BYTES:,} bytes, the most a state file may be")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise StateError(shown, [_p(p.name, f"not UTF-8 text (byte {e.start})")]) from None


# ---------------------------------------------------------------------------------------------- CSV folder
def _csv_table(kind: str, text: str, name: str, problems: Problems) -> list[tuple[str, _Row]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        rows: list[tuple[str, _Row]] = []
        for i, r in enumerate(reader, start=2):
            if i > MAX_ROWS + 1:
                problems.add(name, None, f"more than {MAX_ROWS:,} rows")
                return []
            if None in r:
                problems.add(f"{name} row {i}", None, "more cells than columns in the header")
                continue
            rows.append((f"{name} row {i}", r))
    except csv.Error as e:
        problems.add(name, None, f"not a readable CSV: {e}")
        return []
    if not header:
        problems.add(name, None, f"empty file: the header line is needed ({', '.join(columns(kind))})")
        return []
    if not _check_columns(kind, header, name, problems):
        return []
    return rows


def read_folder(folder: Path, shown: str) -> PlantState:
    problems = Problems()
    known = {f"{k}.csv" for k in KINDS}
    try:
        present = sorted(e.name for e in os.scandir(folder))
    except OSError as e:
        raise StateError(shown, [_p(shown, f"cannot list the folder: {e.strerror or e}")]) from None
    for name in present:
        if name.lower().endswith(".csv") and name not in known:
            problems.add(name, None, f"unknown file; a state folder holds {', '.join(sorted(known))}")
    tables: dict[str, list[tuple[str, _Row]]] = {}
    for kind in KINDS:
        name = f"{kind}.csv"
        if name not in present:
            problems.add(name, None, "missing file: every kind is needed, with a header line and no rows if "
                         f"there are none (columns: {', '.join(columns(kind))})")
            continue
        tables[kind] = _csv_table(kind, _read_text(folder / name, shown), name, problems)
    problems.raise_if_any(shown)
    return build_state(tables, shown)


def write_folder(state: PlantState, folder: Path) -> list[Path]:
    """One CSV per kind, every column, rows sorted; the folder is created if missing. The files are
    written to temporary names and renamed, so a failed write leaves no half-written state."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {f"{k}.csv": _csv_text(k, state) for k in KINDS}
    return _write_all(folder, texts)


def _csv_text(kind: str, state: PlantState) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns(kind))
    rows = [state.info] if kind == "state" else state.rows(kind)
    for r in rows:
        w.writerow([format_value(getattr(r, c)) for c in columns(kind)])
    return buf.getvalue()


def _write_all(folder: Path, texts: Mapping[str, str]) -> list[Path]:
    tmp = [(folder / f".{name}.tmp", folder / name, text) for name, text in texts.items()]
    try:
        for t, _, text in tmp:
            t.write_text(text, encoding="utf-8", newline="")
        for t, final, _ in tmp:
            os.replace(t, final)
    finally:
        for t, _, _ in tmp:
            t.unlink(missing_ok=True)
    return [final for _, final, _ in tmp]


# ---------------------------------------------------------------------------------------------- YAML / JSON
def state_mapping(state: PlantState) -> dict[str, Any]:
    """The state as one mapping: the state's fields, then a list of rows per kind (every column)."""
    out: dict[str, Any] = {c: _json_value(getattr(state.info, c)) for c in columns("state")}
    for kind in ROW_TYPES:
        out[kind] = [{c: _json_value(getattr(r, c)) for c in columns(kind)} for r in state.rows(kind)]
    return out


def state_json_text(state: PlantState) -> str:
    return json.dumps(state_mapping(state), indent=2, ensure_ascii=False) + "\n"


def state_yaml_text(state: PlantState) -> str:
    return yaml.safe_dump(state_mapping(state), sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=1000)


def _single_tables(data: Any, name: str, problems: Problems) -> dict[str, list[tuple[str, _Row]]]:
    if not isinstance(data, dict):
        problems.add(name, None, f"top level must be a mapping (as_of, scenario, source, {', '.join(ROW_TYPES)})")
        return {}
    allowed = [*columns("state"), *ROW_TYPES]
    for k in data:
        if k not in allowed:
            problems.add(name, str(k), f"unknown key; allowed: {', '.join(allowed)}")
    info = {k: data[k] for k in columns("state") if k in data}
    tables: dict[str, list[tuple[str, _Row]]] = {"state": [(name, info)]}
    for kind in ROW_TYPES:
        if kind not in data:
            problems.add(name, kind, f"missing: every kind is needed ([] when there are none); columns: "
                         f"{', '.join(columns(kind))}")
            continue
        rows = data[kind] if data[kind] is not None else []
        if not isinstance(rows, list):
            problems.add(name, kind, "must be a list of rows", rows)
            continue
        tables[kind] = []
        for i, r in enumerate(rows):
            where = f"{name} {kind}[{i}]"
            if not isinstance(r, dict):
                problems.add(where, None, "a row must be a mapping of column: value", r)
            elif _check_columns(kind, [str(c) for c in r], where, problems):
                tables[kind].append((where, r))
    return tables


def read_single(p: Path, shown: str) -> PlantState:
    problems = Problems()
    text = _read_text(p, shown)
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise StateError(shown, [_p(p.name, f"not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: "
                                    f"{str(e).splitlines()[0]}")]) from None
    tables = _single_tables(data, p.name, problems)
    problems.raise_if_any(shown)
    return build_state(tables, shown)


def write_single(state: PlantState, p: Path) -> Path:
    text = state_json_text(state) if p.suffix.lower() == ".json" else state_yaml_text(state)
    p.parent.mkdir(parents=True, exist_ok=True)
    _write_all(p.parent, {p.name: text})
    return p


# ---------------------------------------------------------------------------------------------- entry points
def read_state(path: str | Path) -> PlantState:
    """A state from a CSV folder or a YAML/JSON file, checked on its own (no scenario); StateError lists
    every problem."""
    p = Path(path)
    shown = str(path)
    if _kind_of_path(p, shown) == "dir":
        return read_folder(p, shown)
    return read_single(p, shown)


def write_state(state: PlantState, path: str | Path) -> list[Path]:
    """Write a state: ``*.yaml``/``*.yml``/``*.json`` as one file, any other path as a CSV folder."""
    p = Path(path)
    if p.suffix.lower() in SINGLE_FILE_SUFFIXES:
        return [write_single(state, p)]
    return write_folder(state, p)

