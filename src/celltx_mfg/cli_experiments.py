"""`celltx sweep | compare | plan`: the experiment commands, registered on the main app by ``register``.

Thin: options are parsed and checked here, the work is :mod:`celltx_mfg.experiments`. Exit codes follow
the main CLI (``EXIT_CODES``): 0 done; 1 ``plan`` found no lever value meeting the requirements; 2 bad input (file,
option, database) with a message and no traceback; 130 interrupted (finished runs stay stored).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .cli_common import (
    BACKEND_OPTION,
    DB_HELP,
    DB_OPTION,
    FILE_HELP,
    JOBS_OPTION,
    JSON_OPTION,
    KPI_OPTION,
    MAX_REPLICATIONS,
    NO_STORE_OPTION,
    RAY_OPTION,
    REQUIRE_FORM,
    Backend,
    cap_jobs,
    check_kpi_paths,
    check_requirement_syntax,
    err,
    fmt_value,
    handled,
    head_note,
    ledger_head_of,
    load_or_exit,
    open_db,
    progress_bar,
    replications_option,
)

DEFAULT_KPIS = (
    "patients_infused",
    "patients_lost",
    "vein_to_vein_days.mean",
    "vein_to_vein_days.p90",
    "wait_for_slot_days.mean",
    "utilisation.suite",
    "cost_per_infused_patient",
)
VARY_FORM = "LEVER=V1,V2,... (e.g. suites=4,6,8 or demand.per_year=300,450,600)"
PRECISION_FORM = "KPI=HALFWIDTH (e.g. vein_to_vein_days.mean=0.5)"
_VARY = re.compile(r"^\s*(?P<lever>[A-Za-z_*][\w.*\-]*)\s*=\s*(?P<values>.*\S)\s*$")


def _out() -> Console:
    """stdout console; tables piped to a file or a pager keep their columns instead of 80-char folds."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 220)


def parse_vary(options: list[str]) -> dict[str, list[str]]:
    """``--vary suites=4,6,8`` (repeatable) -> {lever: [values]}; a malformed option exits 2."""
    vary: dict[str, list[str]] = {}
    for opt in options:
        m = _VARY.match(opt)
        values = [v.strip() for v in m["values"].split(",")] if m else []
        if m is None or not all(values):
            raise typer.BadParameter(f"{opt!r}: expected {VARY_FORM}", param_hint="'--vary'")
        if m["lever"] in vary:
            raise typer.BadParameter(f"lever {m['lever']!r} is given twice", param_hint="'--vary'")
        vary[m["lever"]] = values
    return vary


def parse_precision(options: list[str]) -> dict[str, float]:
    """``--precision vein_to_vein_days.mean=0.5`` -> {KPI path: target 95% half-width}."""
    targets: dict[str, float] = {}
    for opt in options:
        path, sep, value = opt.partition("=")
        try:
            target = float(value)
        except ValueError:
            target = math.nan
        if not sep or not path.strip() or not (math.isfinite(target) and target > 0):
            raise typer.BadParameter(f"{opt!r}: expected {PRECISION_FORM} with a half-width > 0",
                                     param_hint="'--precision'")
        targets[path.strip()] = target
    return targets


def _mean_ci(mean: Any, hw: Any) -> str:
    if hw is None or (isinstance(hw, float) and math.isnan(hw)):
        return fmt_value(mean)
    return f"{fmt_value(mean)} ± {fmt_value(hw)}"


def _print_json(obj: Any) -> None:
    from .experiments import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), allow_nan=False) + "\n")


def _shown(db: str | None) -> str | None:
    """The database as printed: a URL's password masked."""
    from .store import display_url

    return None if db is None else display_url(db)


def _stored_note(ids: list[Any], db: str | None) -> None:
    if ids:
        err.print(f"stored {len(ids)} run(s) in {_shown(db)} (run ids {ids[0]}..{ids[-1]})", markup=False)


# -------------------------------------------------------------------------------------------- sweep
def sweep(
    files: list[Path] = typer.Argument(..., help="scenario YAML file(s); several files without --vary "
                                       "sweep over the what-ifs"),
    vary: list[str] = typer.Option([], "--vary", help=f"lever values to sweep, {VARY_FORM}; repeat for a grid"),
    replications: int = replications_option(30, 1, "replications per cell (with --precision: the first batch)"),
    jobs: int = JOBS_OPTION,
    db: str = DB_OPTION,
    no_store: bool = NO_STORE_OPTION,
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = JSON_OPTION,
    precision: list[str] = typer.Option([], "--precision", help=f"add replications until the 95% "
                                        f"half-width is this small, {PRECISION_FORM}; repeatable"),
    max_replications: int = typer.Option(200, "--max-replications", min=2, max=MAX_REPLICATIONS,
                                          help="cap with --precision"),
    kpi: list[str] = KPI_OPTION,
) -> None:
    """Sweep levers over a grid, or over what-if files, with N replications per cell.

    Every cell runs the same replication seeds (common random numbers), so differences between cells
    are lever effects; each KPI gets its mean and 95% half-width per cell."""
    from . import experiments as ex

    levers = parse_vary(vary)
    targets = parse_precision(precision)
    loaded = [(f, *load_or_exit(f)) for f in files]
    with handled():
        for _, sc, _ in loaded:
            check_kpi_paths(sc, kpi, "--kpi")
        cells = []
        for f, sc, text in loaded:
            cells.extend(ex.grid(sc, text, levers, source=str(f), base_dir=f.parent))
        engine = None if no_store else open_db(db)
        per_cell = max(replications, max_replications) if targets else replications
        jobs = cap_jobs(jobs, len(cells) * per_cell, backend.value)
        with progress_bar(as_json, "sweep") as progress:
            result = ex.sweep(cells, replications, jobs=jobs, backend=backend.value, engine=engine,
                              progress=progress, ray_address=ray_address, precision=targets or None,
                              max_replications=max_replications)
    head = ledger_head_of(engine, db)
    if as_json:
        _print_json(_sweep_json(result, list(levers), None if no_store else db, targets, head))
        return
    shown = list(dict.fromkeys([*(kpi or DEFAULT_KPIS), *targets]))
    _out().print(_sweep_table(result, list(levers), shown, by_scenario=len(files) > 1 or not levers))
    if targets and not all(m for m in result.precision_met):
        err.print("precision not reached in cells marked (cap): raise --max-replications", markup=False)
    _stored_note(_run_ids(result.runs), db)
    head_note(head)


def _run_ids(runs: list[list[tuple[Any, Any]]]) -> list[Any]:
    return [rid for group in runs for rid, _ in group if rid is not None]


def _sweep_json(result: Any, levers: list[str], db: str | None, targets: dict[str, float],
                head: str | None) -> dict[str, Any]:
    cells = zip(result.cells, result.summaries, result.precision_met, result.runs, strict=True)
    return {
        "command": "sweep",
        "levers": levers,
        "db": _shown(db),
        "ledger_head": head,
        "precision": targets,
        "cells": [
            {
                "name": c.name,
                "levers": c.levers,
                "replications": s["replications"],
                "precision_met": met,
                "run_ids": [rid for rid, _ in runs],
                "kpis": {k: v for k, v in s.items() if k not in ("ci95", "replications")},
                "ci95": s["ci95"],
            }
            for c, s, met, runs in cells
        ],
    }


def _sweep_table(result: Any, levers: list[str], shown: list[str], by_scenario: bool) -> Table:
    from .analysis import value_or_none

    table = Table(title=f"sweep: {len(result.cells)} cell(s), mean ± 95% half-width")
    if by_scenario:
        table.add_column("scenario")
    for lever in levers:
        table.add_column(lever, justify="right")
    table.add_column("reps", justify="right")
    for path in shown:
        table.add_column(path, justify="right")
    for cell, summary, met in zip(result.cells, result.summaries, result.precision_met, strict=True):
        row = [cell.name.split("[")[0]] if by_scenario else []
        row += [fmt_value(cell.levers.get(lever)) for lever in levers]
        row.append(str(summary["replications"]) + ("" if met in (None, True) else " (cap)"))
        for path in shown:
            row.append(_mean_ci(value_or_none(summary, path), value_or_none(summary.get("ci95", {}), path)))
        table.add_row(*row)
    return table


# ------------------------------------------------------------------------------------------ compare
def compare(
    files: list[Path] = typer.Argument(..., help="reference scenario first, then what-ifs to compare with it"),
    replications: int = replications_option(30, 2, "paired replications"),
    jobs: int = JOBS_OPTION,
    db: str = DB_OPTION,
    no_store: bool = NO_STORE_OPTION,
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = JSON_OPTION,
    kpi: list[str] = KPI_OPTION,
) -> None:
    """Compare what-ifs with a reference scenario, replication by replication.

    Pairs share their random numbers; each KPI gets the mean difference (what-if minus reference), its
    95% t-interval, and "significant" when the interval excludes 0."""
    from . import experiments as ex

    if len(files) < 2:
        raise typer.BadParameter("give a reference scenario and at least one what-if", param_hint="FILES")
    scenarios = [load_or_exit(f) for f in files]
    with handled():
        engine = None if no_store else open_db(db)
        jobs = cap_jobs(jobs, len(scenarios) * replications, backend.value)
        with progress_bar(as_json, "compare") as progress:
            result = ex.compare(scenarios, replications, jobs=jobs, backend=backend.value, engine=engine,
                                progress=progress, ray_address=ray_address, kpi_paths=kpi or None)
    head = ledger_head_of(engine, db)
    if as_json:
        _print_json(_compare_json(result, replications, None if no_store else db, head))
        return
    for name in result.names[1:]:
        _out().print(_compare_table(result, name, list(kpi or DEFAULT_KPIS), replications))
    _stored_note(_run_ids(result.runs), db)
    head_note(head)


def _compare_json(result: Any, replications: int, db: str | None, head: str | None) -> dict[str, Any]:
    return {
        "command": "compare",
        "reference": result.names[0],
        "scenarios": result.names[1:],
        "replications": replications,
        "seed": result.seed,
        "db": _shown(db),
        "ledger_head": head,
        "differences": result.table,
        "summaries": dict(zip(result.names, result.summaries, strict=True)),
        "run_ids": {n: [rid for rid, _ in runs] for n, runs in zip(result.names, result.runs, strict=True)},
    }


def _compare_table(result: Any, name: str, shown: list[str], replications: int) -> Table:
    """One what-if against the reference: each shown KPI's means, difference and paired interval."""
    rows = result.table[(result.table["scenario"] == name) & (result.table["kpi"].isin(shown))]
    table = Table(title=f"{name} - {result.names[0]} ({replications} paired replications, common random numbers)")
    for col, just in (("KPI", "left"), (result.names[0], "right"), (name, "right"),
                      ("difference", "right"), ("95% interval", "right"), ("significant", "center")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for path in shown:
        match = rows[rows["kpi"] == path]
        if match.empty:
            continue
        r = match.iloc[0].to_dict()
        interval = ("-" if r["ci_low"] is None or _nan(r["ci_low"])
                    else f"[{fmt_value(r['ci_low'])}, {fmt_value(r['ci_high'])}]")
        sig = r["significant"]
        table.add_row(path, fmt_value(r["mean_reference"]), fmt_value(r["mean_scenario"]), fmt_value(r["difference"]),
                      interval, "-" if sig is None or _nan(sig) else ("YES" if sig else "no"))
    return table


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


# --------------------------------------------------------------------------------------------- plan
def plan(
    file: Path = typer.Argument(..., help=FILE_HELP),
    lever: str = typer.Option(..., "--lever", help="lever to size: suites, incubators, operators, qc_analysts, "
                              "qa_reviewers, starts_per_day, or a dotted integer path"),
    require: list[str] = typer.Option(..., "--require", help=f"requirement on the replication means, {REQUIRE_FORM}; "
                                      "repeat for several"),
    lo: int = typer.Option(1, "--min", help="smallest lever value to consider"),
    hi: int = typer.Option(40, "--max", help="largest lever value to consider"),
    replications: int = replications_option(10, 1, "replications per value tried"),
    jobs: int = JOBS_OPTION,
    db: str | None = typer.Option(None, "--db", help=DB_HELP + " (default: runs are not stored)"),
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Find the smallest lever value (e.g. suites) that meets every requirement.

    Requirements are judged on the replication means; the search gallops up from --min, then bisects
    (it assumes more capacity never hurts). Exit 1, with the evidence, when no value in range does."""
    from . import experiments as ex

    check_requirement_syntax(require)
    if lo > hi:
        raise typer.BadParameter(f"--min ({lo}) must be <= --max ({hi})", param_hint="'--min'")
    sc, text = load_or_exit(file)
    with handled():
        engine = open_db(db)
        jobs = cap_jobs(jobs, replications, backend.value)  # one lever value's replications at a time
        with progress_bar(as_json, f"plan {lever}") as progress:
            result = ex.plan(sc, text, lever, require, lo=lo, hi=hi, replications=replications, jobs=jobs,
                             backend=backend.value, engine=engine, progress=progress,
                             ray_address=ray_address, source=str(file), base_dir=file.parent)
    head = ledger_head_of(engine, db)
    if as_json:
        _print_json(_plan_json(result, sc.name, lo, hi, replications, head))
    else:
        _out().print(_plan_table(result, sc.name, replications))
        if result.value is not None:
            _out().print(f"smallest {result.lever} meeting every requirement: {result.value}", markup=False)
        else:
            err.print(f"no value of {result.lever} in [{lo}, {hi}] meets every requirement", markup=False)
        head_note(head)
    if result.value is None:
        raise typer.Exit(1)


def _plan_json(result: Any, scenario: str, lo: int, hi: int, replications: int,
               head: str | None) -> dict[str, Any]:
    return {
        "command": "plan",
        "scenario": scenario,
        "ledger_head": head,
        "lever": result.lever,
        "path": result.path,
        "requirements": result.requirements,
        "min": lo,
        "max": hi,
        "replications": replications,
        "value": result.value,
        "met": result.value is not None,
        "evidence": result.evidence,
    }


def _requirement_cell(r: dict[str, Any], req: str) -> str:
    ok = r.get(f"{req} ok")
    if ok is None or _nan(ok):
        return "-"
    return f"{_mean_ci(r.get(req), r.get(f'{req} ci95'))} {'ok' if ok else 'FAIL'}"


def _plan_table(result: Any, scenario: str, replications: int) -> Table:
    """The evidence: every lever value tried, each requirement's mean ± half-width and verdict."""
    table = Table(title=f"plan {result.lever} ({result.path}) for {scenario}: every value tried, "
                        f"{replications} replications each (means ± 95% half-width)")
    table.add_column(result.lever, justify="right")
    table.add_column("result")
    for req in result.requirements:
        table.add_column(req, justify="right")
    table.add_column("note")
    for r in result.evidence.to_dict(orient="records"):
        cells = [str(r["value"]), str(r["status"])]
        cells += [_requirement_cell(r, req) for req in result.requirements]
        cells.append("" if _nan(r.get("note")) else str(r.get("note") or ""))
        table.add_row(*cells)
    return table


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``compare`` and ``plan`` to the main ``celltx`` app."""
    app.command("sweep")(sweep)
    app.command("compare")(compare)
    app.command("plan")(plan)
