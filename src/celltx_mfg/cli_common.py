"""What every command shares: options declared once, number formatting, the progress bar, and turning
bad input into a one-screen message and exit code 2 (never a traceback)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from . import DEFAULT_DB as DEFAULT_DB


def printable(text: str) -> str:
    """``text`` as it may reach a terminal: every control or other invisible character (an escape code in a
    scenario, site or file name, a damaged byte in a message) shown as its Python escape, lines kept."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in "\n\t" else ascii(ch)[1:-1] for ch in text)


class SafeConsole(Console):
    """The CLI's console: what it prints is text, never rich markup (a scenario named ``a[/]b`` prints as
    that), and control characters are shown escaped (:func:`printable`), in tables and titles too: rich
    renders every string through :meth:`render_str`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Any:
        return super().render_str(printable(text), **kwargs)


err = SafeConsole(stderr=True, soft_wrap=True)


class Backend(StrEnum):
    """Where replications run (``--backend``); click checks the choice and --help lists it."""

    local = "local"
    ray = "ray"


class ExportFormat(StrEnum):
    """Table file format of ``celltx export --format``."""

    csv = "csv"
    parquet = "parquet"


BACKENDS = tuple(b.value for b in Backend)
EXIT_CODES = ("Exit codes: 0 success; 1 a requirement (check), the record verification (verify) or the capacity "
              "plan (plan) not met; 2 bad input (file, option, database), with a message and no traceback; "
              "130 interrupted (finished runs stay stored).")
REQUIRE_FORM = "'KPI<op>NUMBER' with op one of <=, >=, <, >, ==, != (e.g. 'vein_to_vein_days.p90<=28')"

FILE_HELP = "scenario YAML file"
DB_HELP = "database: a SQLite file path or a SQLAlchemy URL such as postgresql+psycopg://user:pw@host/db"
JOBS_HELP = ("worker processes (local) or concurrent Ray tasks; results do not depend on it; more than "
             "there are replications to run (or, local, than this machine's CPUs) is capped, with a note on stderr")
BACKEND_HELP = "local: a process pool on this machine; ray: Ray tasks (local Ray, or --ray-address)"
RAY_HELP = "Ray cluster to use: 'auto' on a cluster node, or ray://head:10001"
JSON_HELP = "print one JSON object on stdout, no table and no progress bar"
KPI_HELP = "KPI path to show in the table (repeat; default a standard set); --json has them all"
REPLICATIONS_HELP = "replications (default: the scenario's)"
SEED_HELP = "base seed, 0 to 2**63-1 (default: the scenario's seed)"
RUN_HELP = "run id (repeatable); default: the latest scenario's runs"

# Bounds shared by every command: the scenario's replications cap (config.Scenario.replications), seeds
# and run ids that fit a signed 64-bit integer (SQLite and PostgreSQL BIGINT).
MAX_REPLICATIONS = 10_000
MAX_INT64 = 2**63 - 1

# Options the simulating commands take, declared once.
DB_OPTION = typer.Option(DEFAULT_DB, "--db", help=DB_HELP)
JOBS_OPTION = typer.Option(1, "--jobs", "-j", min=1, help=JOBS_HELP)
NO_STORE_OPTION = typer.Option(False, "--no-store", help="do not store the runs")
BACKEND_OPTION = typer.Option(Backend.local, "--backend", help=BACKEND_HELP)
RAY_OPTION = typer.Option(None, "--ray-address", help=RAY_HELP)
JSON_OPTION = typer.Option(False, "--json", help=JSON_HELP)
KPI_OPTION = typer.Option([], "--kpi", help=KPI_HELP)
REPLICATIONS_OPTION = typer.Option(None, "--replications", "-r", min=1, max=MAX_REPLICATIONS, help=REPLICATIONS_HELP)
SEED_OPTION = typer.Option(None, "--seed", min=0, max=MAX_INT64, help=SEED_HELP)


def run_id_option(help: str = RUN_HELP) -> Any:
    """``--run``: a stored run id, 1 to 2**63-1 (a larger number is exit 2, not an overflow traceback)."""
    return typer.Option(None, "--run", min=1, max=MAX_INT64, help=help)


def replications_option(default: int, minimum: int, help: str) -> Any:
    """``-r`` of the experiment commands, with their own default, bounded like the scenario's."""
    return typer.Option(default, "--replications", "-r", min=minimum, max=MAX_REPLICATIONS, help=help)


def cap_jobs(jobs: int, tasks: int | None, backend: str = "local") -> int:
    """``--jobs`` capped at the number of tasks and, for local workers, at os.cpu_count(); a note on
    stderr says so. Results do not depend on it."""
    import os

    limits = []
    if tasks is not None and tasks >= 1:
        limits.append((tasks, f"{tasks} replication(s) to run"))
    if backend == "local":
        cpus = os.cpu_count() or 1
        limits.append((cpus, f"{cpus} CPU(s)"))
    capped, why = min(limits, default=(jobs, ""))
    if jobs <= capped:
        return jobs
    err.print(f"note: --jobs {jobs} capped at {capped} ({why})", markup=False)
    return capped


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


def open_db(db: str | None, readonly: bool = False, untouched: bool = False, **checks: bool) -> Any:
    """An open store, None when no database was asked for, or exit 2 naming the database. ``readonly``
    for commands that only read (verify, kpis, export): they then work on read-only storage; ``checks``
    are open_store's ``audit`` and ``lenient_text`` (verify). ``untouched`` (verify): a database URL is
    opened read-only too, so a writable open does not repair the append-only triggers before they are
    checked."""
    if db is None:
        return None
    from .store import StoreError, display_url, open_store

    try:
        return open_store(db, readonly=readonly and ("://" not in db or untouched), **checks)
    except StoreError as e:
        fail(f"database {display_url(db)}: {e}")


def ledger_head_of(engine: Any, db: str | None) -> str | None:
    """The store's newest ledger head after a writing command (None when nothing is stored): printed as
    ``"ledger_head"`` so a CI job can keep it and later check it with ``celltx verify --expect-head``."""
    if engine is None:
        return None
    from .store import StoreError, display_url, ledger_head

    try:
        return ledger_head(engine)
    except StoreError as e:
        fail(f"database {display_url(db or '')}: {e}")


def head_note(head: str | None) -> None:
    """The new ledger head on stderr, for the table (non-JSON) output of a writing command."""
    if head is not None:
        err.print(f"ledger head {head} (check later: celltx verify --expect-head {head})", markup=False)


def fmt_value(v: Any) -> str:
    """A KPI for a table: three decimals below 10, one above, thousands separated, '-' for nothing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def headline(per_run: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The KPIs the commands print and gate on, in one shape for any number of replications: the means
    (a run's own values when there is one), ``ci95`` (None for one run) and ``replications``."""
    from .analysis import summarise

    if len(per_run) != 1:
        return dict(summary if summary is not None else summarise(per_run))
    return {**per_run[0], "ci95": None, "replications": 1}


def json_numbers(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` for --json: integer KPI values as floats (the ``replications`` count excepted), so a count has
    the type of a mean of counts and a reader sees the same types for ``-r 1`` and ``-r 3``. Values are
    unchanged; tables keep printing a single run's counts as integers."""

    def conv(key: str, v: Any) -> Any:
        if isinstance(v, Mapping):
            return json_numbers(v)
        if key == "replications" or isinstance(v, bool) or not isinstance(v, numbers.Integral):
            return v
        return float(v)

    return {k: conv(k, v) for k, v in d.items()}


def check_requirement_syntax(options: list[str]) -> list[str]:
    """Every ``--require`` parses, before anything is simulated; a malformed one exits 2."""
    from .analysis import RequirementSyntaxError, parse_requirement

    for req in options:
        try:
            parse_requirement(req)
        except RequirementSyntaxError:
            raise typer.BadParameter(f"{req!r}: expected {REQUIRE_FORM}", param_hint="'--require'") from None
    return options


def check_kpi_paths(scenario: Any, paths: Sequence[str], option: str) -> None:
    """Every KPI path named on the command line exists in the KPIs of ``scenario`` (from a two-day run),
    before anything is simulated: an unknown one exits 2 with the nearest names or the allowed members."""
    if not paths:
        return
    from .experiments import ExperimentError, check_kpi_path, kpi_skeleton

    skeleton = kpi_skeleton(scenario)
    for path in dict.fromkeys(paths):
        try:
            check_kpi_path(skeleton, path, scenario)
        except ExperimentError as e:
            fail(f"{option}: {e}")


def requirement_paths(options: Sequence[str]) -> list[str]:
    """The KPI path of every (already syntax-checked) ``--require``."""
    from .analysis import parse_requirement

    return [parse_requirement(r).path for r in options]


@contextmanager
def progress_bar(quiet: bool, description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (replications done / planned, time left); nothing when ``quiet``."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TextColumn("replications"),
        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=err, transient=True,
        auto_refresh=False,  # no refresh thread: a single-threaded parent can fork its workers at once
    ) as bar:
        task = bar.add_task(printable(description), total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, refresh=True)

        yield update


@contextmanager
def handled(db: str | None = None) -> Iterator[None]:
    """Bad input becomes a message and exit 2; Ctrl-C says what was kept and exits 130."""
    from .config import ScenarioError
    from .experiments import ExperimentError, ExperimentInterrupted

    try:
        yield
    except ScenarioError as e:
        fail(e.render())
    except ExperimentError as e:
        fail(str(e))
    except ExperimentInterrupted as e:
        ids = e.stored_run_ids
        kept = f"; stored run ids {ids[0]}..{ids[-1]}" if ids else ""
        fail(f"{e}{kept}", 130)
    except Exception as e:
        from .store import StoreError, display_url

        if isinstance(e, StoreError):
            fail(f"database {display_url(db)}: {e}" if db else f"database: {e}")
        raise
