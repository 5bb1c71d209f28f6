"""What every command shares: turning bad input into a one-screen message and exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(msg: str, code: int = 2) -> NoReturn:
    """Print the message to stderr and leave with ``code`` (2: bad input), never a traceback."""
    err.print(msg, markup=False)
    raise typer.Exit(code)


def load_or_exit(path: Path) -> tuple[Any, str]:
    """The validated scenario and its stored text, or exit 2 listing every problem in the file."""
    from .config import ScenarioError, load_scenario

    try:
        return load_scenario(path)
    except ScenarioError as e:
        fail(e.render())


def open_db(db: str | None, readonly: bool = False) -> Any:
    """An open store, None when no database was asked for, or exit 2 naming the database. ``readonly``
    for commands that only read (verify, kpis, export): they then work on read-only storage."""
    if db is None:
        return None
    from .store import StoreError, open_store

    try:
        return open_store(db, readonly=readonly and "://" not in db)
    except StoreError as e:
        fail(f"database {db}: {e}")
