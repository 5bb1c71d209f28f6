"""The lever-path language: what-if scenarios made from a scenario's text by setting values at dotted paths.

``resources.suites``, ``sites.site_north.apheresis_per_day`` or ``sites.*.share``: list items (sites,
steps, tests) are addressed by ``name`` or index, ``*`` means every item, and keys the scenario model
knows may be added even where the file left them at their defaults. The result is validated like a file.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

import yaml
from pydantic import BaseModel

from ..config import Scenario, ScenarioError, parse_text
from .errors import ExperimentError

# Short names for the capacity levers planners turn most; any dotted scenario path works as well.
LEVERS: dict[str, str] = {
    "suites": "resources.suites",
    "incubators": "resources.incubators",
    "operators": "resources.operators.count",
    "qc_analysts": "resources.qc_analysts.count",
    "qa_reviewers": "resources.qa_reviewers.count",
    "starts_per_day": "booking.starts_per_day",
    "demand": "demand.per_year",
}


def resolve_lever(name: str) -> str:
    """Short lever name -> scenario path; a dotted path or a top-level scenario key passes through."""
    name = name.strip()
    if name in LEVERS:
        return LEVERS[name]
    if "." in name or name in Scenario.model_fields:
        return name
    raise ExperimentError(
        f"unknown lever {name!r}; short names: {', '.join(LEVERS)}; or give a dotted scenario path "
        "such as demand.per_year or sites.site_north.apheresis_per_day"
    )


def coerce_value(value: Any) -> Any:
    """Text from the command line -> the YAML value it means: '4' -> 4, '2.5' -> 2.5, 'true' -> True,
    '{dist: fixed, value: 14}' -> a mapping; anything else stays text."""
    if not isinstance(value, str):
        return value
    s = value.strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s[:1] in "{[":
        try:
            return yaml.safe_load(s)
        except yaml.YAMLError as e:
            raise ExperimentError(f"value {s!r} is not valid YAML: {e}") from None
    return s


# ------------------------------------------------------------------------------ scenario model types
def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X, Annotated[X, ...] -> X; a union of several models stays as it is."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_fields(tp: Any) -> dict[str, Any] | None:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {(f.alias or name): f.annotation for name, f in tp.model_fields.items()}
    return None


def _container_item(tp: Any, kind: type) -> Any:
    tp = _unwrap(tp)
    if typing.get_origin(tp) is kind:
        args = typing.get_args(tp)
        return args[-1] if args else None
    return None


# --------------------------------------------------------------------------------------- path walk
class _Target(NamedTuple):
    """A node the path has reached so far, with its model type (to know which keys may be added)."""

    node: Any
    tp: Any
    where: str


class _Step(NamedTuple):
    path: str  # the whole lever path, for messages
    part: str
    last: bool
    value: Any


def _list_indices(node: list[Any], target: _Target, step: _Step) -> list[int]:
    part = step.part
    if part == "*":
        return list(range(len(node)))
    if part.isdigit() and int(part) < len(node):
        return [int(part)]
    idxs = [j for j, x in enumerate(node) if isinstance(x, dict) and x.get("name") == part]
    if not idxs:
        names = [x.get("name") for x in node if isinstance(x, dict) and "name" in x]
        valid = ", ".join(map(str, names)) if names else f"indices 0..{len(node) - 1}"
        raise ExperimentError(
            f"lever path {step.path!r}: no item {part!r} in {target.where or 'the scenario'}; "
            f"valid there: {valid} (or an index, or * for all)"
        )
    return idxs


def _step_list(target: _Target, step: _Step) -> list[_Target]:
    node = target.node
    item_tp = _container_item(target.tp, list)
    here = f"{target.where}.{step.part}" if target.where else step.part
    following = []
    for j in _list_indices(node, target, step):
        if step.last:
            node[j] = step.value
        else:
            following.append(_Target(node[j], item_tp, here))
    return following


def _step_dict(target: _Target, step: _Step) -> list[_Target]:
    node, where, part = target.node, target.where, step.part
    fields = _model_fields(target.tp)
    map_item = _container_item(target.tp, dict)
    known = set(node) | set(fields or {})
    if part != "*" and part not in known and map_item is None:
        raise ExperimentError(
            f"lever path {step.path!r}: unknown key {part!r} in {where or 'the scenario'}; "
            f"valid keys there: {', '.join(sorted(map(str, known)))}"
        )
    following = []
    for key in list(node) if part == "*" else [part]:
        if step.last:
            node[key] = step.value
            continue
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        child_tp = fields.get(key) if fields else map_item
        following.append(_Target(child, child_tp, f"{where}.{key}" if where else str(key)))
    return following


def _step(target: _Target, step: _Step) -> list[_Target]:
    if isinstance(target.node, list):
        return _step_list(target, step)
    if isinstance(target.node, dict):
        return _step_dict(target, step)
    raise ExperimentError(
        f"lever path {step.path!r}: {target.where} is a single value ({target.node!r}), it has no key {step.part!r}"
    )


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted lever path in a scenario's YAML data (see the module docstring)."""
    parts = path.split(".")
    if not all(parts):
        raise ExperimentError(f"lever path {path!r} has an empty part")
    targets = [_Target(data, Scenario, "")]
    for i, part in enumerate(parts):
        step = _Step(path, part, i == len(parts) - 1, value)
        targets = [t for target in targets for t in _step(target, step)]


_set_path = set_path  # the old private name


def get_values(data: Any, path: str) -> list[Any]:
    """The values at a dotted lever path (one per item a ``*`` matches), read with the addressing of
    :func:`set_path`, so a capacity plan knows what a lever is today and what adding to it costs. Read
    from a validated scenario's ``model_dump(by_alias=True)`` to see defaults a file left out."""
    parts = path.split(".")
    if not all(parts):
        raise ExperimentError(f"lever path {path!r} has an empty part")
    targets = [_Target(data, Scenario, "")]
    for part in parts:
        step = _Step(path, part, False, None)
        following = []
        for t in targets:
            here = f"{t.where}.{part}" if t.where else part
            if isinstance(t.node, list):
                following += [_Target(t.node[j], None, here) for j in _list_indices(t.node, t, step)]
            elif isinstance(t.node, dict) and (part == "*" or part in t.node):
                keys = list(t.node) if part == "*" else [part]
                following += [_Target(t.node[k], None, f"{t.where}.{k}" if t.where else str(k)) for k in keys]
            elif isinstance(t.node, dict):
                known = ", ".join(sorted(map(str, t.node)))
                raise ExperimentError(f"lever path {path!r}: unknown key {part!r} in {t.where or 'the scenario'}; "
                                      f"valid keys there: {known}")
            else:
                raise ExperimentError(f"lever path {path!r}: {t.where} is a single value ({t.node!r}), "
                                      f"it has no key {part!r}")
        targets = following
    return [t.node for t in targets]


# ----------------------------------------------------------------------------------------- what-ifs
def _fmt_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    return str(v)


def _load_mapping(scenario_text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(scenario_text)
    except yaml.YAMLError as e:
        raise ScenarioError(source, [("", f"not valid YAML: {e}", None)]) from None
    if not isinstance(data, dict):
        raise ScenarioError(source, [("", "top level must be a mapping of keys", None)])
    return data


def apply_overrides(
    scenario_text: str,
    overrides: Mapping[str, Any],
    name_suffix: str | None = None,
    source: str = "<scenario>",
    base_dir: Path | None = None,
) -> tuple[Scenario, str]:
    """A what-if made from a scenario's text by setting lever values, validated like a file.

    Keys are lever short names or dotted paths; values may be command-line text ("4"). The scenario is
    renamed ``<name>[<suffix>]`` (default suffix ``lever=value,...`` as given) so stored runs say which
    cell they belong to. An invalid result raises :class:`ScenarioError` naming the field."""
    data = _load_mapping(scenario_text, source)
    if not overrides and name_suffix is None:
        return parse_text(scenario_text, source, base_dir), scenario_text
    shown = []
    for key, raw in overrides.items():
        value = coerce_value(raw)
        set_path(data, resolve_lever(key), value)
        shown.append(f"{key}={_fmt_value(value)}")
    suffix = name_suffix if name_suffix is not None else ",".join(shown)
    if suffix:
        data["name"] = f"{data.get('name', 'scenario')}[{suffix}]"
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return parse_text(text, source, base_dir), text
