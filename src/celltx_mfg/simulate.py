"""``simulate(scenario, seed)``: one replication in, records out. No database, no UI."""

from __future__ import annotations

from .config import Scenario
from .distributions import replication_seed
from .model.journey import Model
from .records import RunRecords


def simulate(scenario: Scenario, seed: int | None = None, replication: int = 0) -> RunRecords:
    """Run one replication. ``seed`` defaults to the seed the scenario derives for ``replication``, so
    replication r of any two scenarios with the same base seed shares its random numbers."""
    run_seed = replication_seed(scenario.seed, replication) if seed is None else int(seed)
    return Model(scenario, run_seed, replication).run()
