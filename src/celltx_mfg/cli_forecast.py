"""`celltx forecast STATE --scenario FILE`: simulate forward from a plant state and print the patients at
risk first (``register`` adds it to the main app). Thin: the work is :mod:`celltx_mfg.forecast`.

The state is read by the plant-state package (``celltx_mfg.plantstate.load_state``); storing the forecast
(``--db``) goes through the store's ``write_forecast`` (:func:`store_forecast` is that one boundary).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from .cli_common import (
    DB_HELP,
    JOBS_OPTION,
    JSON_OPTION,
    SafeConsole,
    cap_jobs,
    fail,
    handled,
    load_or_exit,
    open_db,
    progress_bar,
    replications_option,
)

MAX_HORIZON_DAYS = 3650.0


def load_start_state(path: Path, sc: Any) -> Any:
    """The state file or folder in the engine's form, or exit 2 with every problem of the state."""
    from .forecast.adapt import start_state

    if not path.exists():
        fail(f"{path}: no such plant-state file or folder")
    try:
        plantstate = importlib.import_module("celltx_mfg.plantstate")
    except ImportError as e:  # pragma: no cover - the package ships with the plant-state reader
        fail(f"{path}: the plant-state reader is not available ({e})")
    try:
        ps = plantstate.load_state(path, sc) if _takes_scenario(plantstate.load_state) else plantstate.load_state(path)
    except Exception as e:
        render = getattr(e, "render", None)
        if callable(render):
            fail(str(render()))
        raise
    return start_state(ps, sc)


def _takes_scenario(fn: Any) -> bool:
    import inspect

    return len(inspect.signature(fn).parameters) > 1


def store_forecast(engine: Any, result: Any, scenario_text: str) -> Any:
    """Store the forecast in its own append-only table (the store's ``write_forecast``)."""
    store = importlib.import_module("celltx_mfg.store")
    write = getattr(store, "write_forecast", None)
    if write is None:
        fail("--db: this build's store has no forecast table yet (write_forecast); run without --db")
    return write(engine, result, scenario_text)


def _table(result: Any) -> Table:
    t = Table(title=f"forecast as of {result.as_of:%Y-%m-%d %H:%M}, {result.replications} replications")
    for col in ("coi", "stage", "release p10", "p50", "p90", "infusion p50", "p90", "p booked", "p lost", "risk"):
        t.add_column(col)

    def d(v: Any) -> str:
        return "after horizon" if v is None else f"{v:%Y-%m-%d}"

    for p in result.ranked():
        booked = "-" if p.p_infused_by_booked_date is None else f"{p.p_infused_by_booked_date:.0%}"
        t.add_row(p.coi, p.stage, d(p.release.p10), d(p.release.p50), d(p.release.p90), d(p.infusion.p50),
                  d(p.infusion.p90), booked, f"{p.p_lost:.0%}", "AT RISK" if p.at_risk else "")
    return t


def forecast(
    state: Path = typer.Argument(..., help="plant state: a folder of CSV files, or one YAML or JSON file"),
    scenario: Path = typer.Option(..., "--scenario", help="scenario YAML: the plant's rules, capacities, demand"),
    replications: int = replications_option(200, 1, "replications"),
    horizon_days: float = typer.Option(120.0, "--horizon-days", min=1.0, max=MAX_HORIZON_DAYS,
                                       help="days simulated after the state's as_of"),
    db: str | None = typer.Option(None, "--db", help=DB_HELP + " (default: the forecast is not stored)"),
    json_out: bool = JSON_OPTION,
    jobs: int = JOBS_OPTION,
) -> None:
    """Forecast every live patient's release and infusion dates from a plant state, patients at risk first."""
    from .forecast.run import run_forecast

    sc, text = load_or_exit(scenario)
    start = load_start_state(state, sc)
    engine = open_db(db)
    jobs = cap_jobs(jobs, replications)
    with handled(db), progress_bar(json_out, f"forecast {sc.name}") as progress:
        result = run_forecast(sc, text, start, replications, horizon_days, jobs=jobs, progress=progress)
    if engine is not None:
        with handled(db):
            store_forecast(engine, result, text)
    if json_out:
        sys.stdout.write(result.to_json() + "\n")
        return
    SafeConsole(soft_wrap=True, width=None if sys.stdout.isatty() else 220).print(_table(result))


def register(app: typer.Typer) -> None:
    app.command(name="forecast")(forecast)
