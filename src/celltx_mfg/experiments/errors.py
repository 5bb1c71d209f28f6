"""What can go wrong in an experiment, as types the CLI turns into exit codes."""

from __future__ import annotations

from typing import Any


class ExperimentError(ValueError):
    """An experiment that cannot be set up (unknown lever path, bad precision target, bad range)."""


class ExperimentInterrupted(KeyboardInterrupt):
    """Ctrl-C during an experiment. Runs that finished are stored (each in its own transaction);
    ``partial`` holds the result of what finished, ``stored_run_ids`` every run id written."""

    def __init__(self, partial: Any, finished: int, planned: int, stored_run_ids: list[Any]) -> None:
        self.partial = partial
        self.finished = finished
        self.planned = planned
        self.stored_run_ids = stored_run_ids
        super().__init__(str(self))

    def __str__(self) -> str:
        stored = f"; {len(self.stored_run_ids)} run(s) stored" if self.stored_run_ids else ""
        return f"interrupted after {self.finished} of {self.planned} planned replications{stored}"
