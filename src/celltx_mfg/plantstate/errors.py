"""A plant state that cannot be used: every problem at once, each naming the file and row (or key), the
field, the bad value and what is allowed, in one message that fits a screen."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

MAX_SHOWN = 20  # problems listed; the rest are counted, so the message stays on one screen

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 50


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class StateProblem:
    """One problem: ``where`` is the file and row (``batches.csv row 4``) or key (``batches[3]``)."""

    where: str
    field: str | None
    message: str
    value: Any = MISSING

    def line(self) -> str:
        at = self.where if self.field is None else f"{self.where}, {self.field}"
        shown = "" if self.value is MISSING else f" (got {_REPR.repr(self.value)})"
        return f"{at}: {self.message}{shown}"


class StateError(Exception):
    """A plant state that cannot be read or does not fit its scenario; nothing was used or stored."""

    def __init__(self, path: str, problems: list[StateProblem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self, limit: int = MAX_SHOWN) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s) in the plant state"]
        lines += [f"  - {p.line()}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


class Problems:
    """Collects problems as a check goes, so that every one is reported at once."""

    def __init__(self) -> None:
        self.items: list[StateProblem] = []

    def add(self, where: str, field: str | None, message: str, value: Any = MISSING) -> None:
        self.items.append(StateProblem(where, field, message, value))

    def raise_if_any(self, path: str) -> None:
        if self.items:
            raise StateError(path, self.items)

    def __bool__(self) -> bool:
        return bool(self.items)
