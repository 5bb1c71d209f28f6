"""`celltx sweep | compare | plan | bottleneck`: the experiment commands, registered on the main app by ``register``.

Thin: options are parsed and checked here, the work is :mod:`celltx_mfg.experiments`. Exit codes follow
the main CLI (``EXIT_CODES``): 0 done; 1 ``plan`` found no combination meeting the requirements; 2 bad input (file,
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
    SafeConsole,
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

# --db for designs that store nothing unless asked (plan, bottleneck)
OPTIONAL_DB_OPTION = typer.Option(None, "--db", help=DB_HELP + " (default: runs are not stored)")

DEFAULT_KPIS = (
    "patients_infused",
    "patients_lost",
    "vein_to_vein_days.mean",
    "vein_to_vein_days.p90",
    "referral_to_infusion_days.p90",
    "wait_for_slot_days.mean",
    "utilisation.suite",
    "cost_per_infused_patient",
)
VARY_FORM = "LEVER=V1,V2,... (e.g. suites=4,6,8 or demand.per_year=300,450,600)"
PRECISION_FORM = "KPI=HALFWIDTH (e.g. vein_to_vein_days.mean=0.5)"
_VARY = re.compile(r"^\s*(?P<lever>[A-Za-z_*][\w.*\-]*)\s*=\s*(?P<values>.*\S)\s*$")


def _out() -> SafeConsole:
    """stdout console; tables piped to a file or a pager keep their columns instead of 80-char folds."""
    return SafeConsole(soft_wrap=True, width=None if sys.stdout.isatty() else 220)


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
        row = [cell.name.rsplit("[", 1)[0] if cell.levers else cell.name] if by_scenario else []
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
LEVER_HELP = ("lever to turn, LEVER[:cost=PER_UNIT][:min=V][:max=V][:step=V]; repeat for several. LEVER: suites, "
              "incubators, operators, qc_analysts, qa_reviewers, starts_per_day, or a dotted scenario path "
              "(sites.*.apheresis_per_day: every site). cost is per unit added (with *, per item changed); a "
              "lever without cost is free. min/max default to --min/--max, else from the scenario's value "
              "up to twice it; step defaults to 1")


def parse_levers(options: list[str], lo: float | None, hi: float | None) -> list[Any]:
    """``--lever suites:cost=400000:max=40`` (repeatable) -> lever specs, --min/--max filling the bounds
    a lever leaves open; a malformed one exits 2 naming the option."""
    from dataclasses import replace

    from .experiments import ExperimentError, LeverSpec

    specs = []
    for opt in options:
        try:
            spec = LeverSpec.parse(opt)
        except ExperimentError as e:
            raise typer.BadParameter(str(e), param_hint="'--lever'") from None
        specs.append(replace(spec, lo=spec.lo if spec.lo is not None else lo,
                             hi=spec.hi if spec.hi is not None else hi))
    return specs


def plan(
    file: Path = typer.Argument(..., help=FILE_HELP),
    lever: list[str] = typer.Option(..., "--lever", help=LEVER_HELP),
    require: list[str] = typer.Option(..., "--require", help=f"requirement on the replication means, {REQUIRE_FORM}; "
                                      "repeat for several"),
    lo: int | None = typer.Option(None, "--min", help="lower bound of every lever without its own :min "
                                  "(default: the scenario's value)"),
    hi: int | None = typer.Option(None, "--max", help="upper bound of every lever without its own :max "
                                  "(default: twice the scenario's value)"),
    budget: int = typer.Option(40, "--budget", min=1, max=MAX_REPLICATIONS,
                               help="most candidates to simulate (each -r replications); the search stops there"),
    replications: int = replications_option(10, 1, "replications per candidate"),
    jobs: int = JOBS_OPTION,
    db: str | None = OPTIONAL_DB_OPTION,
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Find the cheapest combination of lever values meeting every requirement.

    Every candidate runs the same replication seeds (common random numbers) and is accepted only on its
    own replication means: more of a lever is not assumed never to hurt. The search follows the lever whose next
    step improves the unmet requirements most per unit cost, then looks for cheaper combinations (each
    lever stepped back down, units traded between levers). The evidence table lists every candidate
    tried. Exit 1 when none met (within the bounds, or before --budget ran out)."""
    from . import experiments as ex

    check_requirement_syntax(require)
    if lo is not None and hi is not None and lo > hi:
        raise typer.BadParameter(f"--min ({lo}) must be <= --max ({hi})", param_hint="'--min'")
    specs = parse_levers(lever, lo, hi)
    sc, text = load_or_exit(file)
    with handled():
        engine = open_db(db)
        jobs = cap_jobs(jobs, replications * len(specs), backend.value)  # one step of every lever at a time
        with progress_bar(as_json, "plan") as progress:
            result = ex.capacity_plan(sc, text, specs, require, replications=replications, budget=budget, jobs=jobs,
                                      backend=backend.value, engine=engine, progress=progress,
                                      ray_address=ray_address, source=str(file), base_dir=file.parent)
    head = ledger_head_of(engine, db)
    if as_json:
        _print_json(plan_json(result, head))
    else:
        _print_plan(result)
        head_note(head)
    if not result.met:
        raise typer.Exit(1)


def _money(v: float | None) -> str:
    """A cost: whole units, thousands separated (a plan's costs are capital sums, not KPIs)."""
    return "-" if v is None else f"{v:,.0f}"


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in values.items())


def _print_plan(result: Any) -> None:
    out = _out()
    out.print("levers: " + "; ".join(lv.describe() for lv in result.levers), markup=False)
    out.print(_plan_table(result))
    if result.guidance:
        out.print(_guidance_table(result))
    done = f"{result.evaluations} candidate(s) simulated, budget {result.budget}"
    if result.chosen is None:
        err.print(f"{result.outcome}: {result.reason} ({done})", markup=False)
        return
    c = result.chosen
    out.print(f"cheapest plan found: {_values_text(c.values)} (#{c.id}), cost {_money(c.cost)}; {done}; "
              f"{result.reason}", markup=False)
    single = result.single_lever_best
    if single is not None and single is not c:
        out.print(f"cheapest single-lever plan tried: {_values_text(single.values)} (#{single.id}), cost "
                  f"{_money(single.cost)}", markup=False)
    close = [chk.requirement for chk in c.checks if _close_call(c, chk)]
    if close:
        err.print(f"note: {', '.join(close)} is within its 95% half-width of the bound: more replications (-r) "
                  "would make the plan surer", markup=False)


def _close_call(c: Any, chk: Any) -> bool:
    from .analysis import value_or_none

    hw = value_or_none(c.summary.get("ci95", {}), chk.path)
    return chk.actual is not None and hw is not None and abs(chk.actual - chk.threshold) <= hw


def _requirement_cell(r: dict[str, Any], req: str) -> str:
    ok = r.get(f"{req} ok")
    if ok is None or _nan(ok):
        return "-"
    return f"{_mean_ci(r.get(req), r.get(f'{req} ci95'))} {'ok' if ok else 'FAIL'}"


def _plan_table(result: Any) -> Table:
    """The evidence: every candidate tried, its lever values, cost, each requirement's mean ± half-width."""
    table = Table(title=f"plan for {result.scenario}: every candidate tried, {result.replications} replication(s) "
                        "each on common random numbers (means ± 95% half-width)")
    for col in ("#", "phase", *(lv.name for lv in result.levers), "cost", "result", *result.requirements, "note"):
        table.add_column(col, justify="left" if col in ("phase", "result", "note") else "right")
    chosen = result.chosen.id if result.chosen is not None else None
    for r in result.evidence.to_dict(orient="records"):
        cells = [f"{r['candidate']}{'*' if r['candidate'] == chosen else ''}", str(r["phase"])]
        cells += [fmt_value(r[lv.name]) for lv in result.levers]
        cells += [_money(r["cost"]), str(r["status"])]
        cells += [_requirement_cell(r, req) for req in result.requirements]
        cells.append("" if _nan(r.get("note")) else str(r.get("note") or ""))
        table.add_row(*cells)
    return table


# --------------------------------------------------------------------------------------- bottleneck
def bottleneck(
    file: Path = typer.Argument(..., help=FILE_HELP),
    replications: int = replications_option(10, 2, "paired replications per resource kind"),
    kpi: str | None = typer.Option(None, "--kpi", help="target KPI path the marginal values are measured on "
                                   "(default: referral_to_infusion_days.p90); lower is better except throughput, "
                                   "infusions and on-time share"),
    jobs: int = JOBS_OPTION,
    db: str | None = OPTIONAL_DB_OPTION,
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Name the binding constraint: rank resource kinds by what one more unit does to the KPI.

    Per kind: effective utilisation (against what its calendar and the booking rules let it be used
    for), queue-days and mean wait per hold in the unchanged plant, and the marginal value of one more
    unit (one more chair or infusion slot a day at every site), a paired difference on common random
    numbers with its 95% interval. Binding: the kind whose extra unit improves the KPI most,
    significantly; none when no extra unit does. Exit 0 either way."""
    from . import bottleneck as bn
    from .experiments import bottleneck as design

    target = kpi or bn.DEFAULT_KPI
    sc, text = load_or_exit(file)
    with handled(db):
        design.check_kpi(sc, target)
        engine = open_db(db)
        kinds = len(design.effective_capacity(sc)) + 1
        jobs = cap_jobs(jobs, kinds * replications, backend.value)
        with progress_bar(as_json, f"bottleneck {sc.name}") as progress:
            result = design.bottleneck(sc, text, replications, target, source=str(file), base_dir=file.parent,
                                       jobs=jobs, backend=backend.value, engine=engine, progress=progress,
                                       ray_address=ray_address)
    head = ledger_head_of(engine, db)
    if as_json:
        _print_json({**result.as_json(), "db": _shown(db), "ledger_head": head, "run_ids": result.run_ids})
        return
    _out().print(_bottleneck_table(result))
    _out().print(_binding_line(result), markup=False)
    _stored_note(result.run_ids, db)
    head_note(head)


def _marginal_cell(e: Any) -> str:
    mv = e.marginal
    if mv is None:
        return e.note or "-"
    return _mean_ci(mv.mean, mv.ci95) + (" *" if mv.improves else "")


def _bottleneck_table(result: Any) -> Table:
    """One row per kind, best extra unit first: the evidence of the ranking."""
    better = "lower" if result.direction.value == "lower_is_better" else "higher"
    table = Table(title=f"bottleneck of {result.scenario}: {result.kpi} ({better} is better) = "
                        f"{_mean_ci(result.kpi_mean, result.kpi_ci95)}; {result.replications} paired "
                        "replications per kind (* = significant improvement)")
    for col, just in (("rank", "right"), ("kind", "left"), ("one more unit", "left"), ("effective util.", "right"),
                      ("util.", "right"), ("queue-days", "right"), ("mean wait (d)", "right"),
                      (f"change in {result.kpi}", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, e in enumerate(result.ranking, 1):
        table.add_row(str(i), e.kind, e.lever, _pct(e.effective_utilisation), _pct(e.utilisation),
                      fmt_value(e.queue_days), fmt_value(e.mean_wait_days), _marginal_cell(e))
    return table


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _binding_line(result: Any) -> str:
    if result.binding is None:
        return (f"binding: none - no single extra unit changes {result.kpi} significantly at "
                f"{result.replications} replications (demand-limited, co-binding resources, or too few replications)")
    top = result.ranking[0]
    mv = top.marginal
    return (f"binding: {top.kind} - {top.lever} changes {result.kpi} by {_mean_ci(mv.mean, mv.ci95)} "
            f"(effective utilisation {_pct(top.effective_utilisation)})")


def _guidance_table(result: Any) -> Table:
    """Marginal values the search followed: one step of each lever against the candidate it left."""
    table = Table(title="marginal value of one step (improvement of the unmet requirements, normalised; "
                        "paired on common random numbers)")
    for col in ("at #", "lever", "improvement", "step cost", "per million"):
        table.add_column(col, justify="left" if col == "lever" else "right")
    for at, values in result.guidance:
        for mv in values:
            per = None if mv.per_cost is None else mv.per_cost * 1e6
            table.add_row(str(at), mv.lever, _mean_ci(mv.improvement, mv.ci95),
                          "free" if not mv.step_cost else _money(mv.step_cost), fmt_value(per))
    return table


def plan_json(result: Any, head: str | None = None) -> dict[str, Any]:
    """``celltx plan --json``: the outcome, the plan chosen, every candidate and the guidance taken, and
    the store's new ledger head (None when the plan's runs were not stored)."""
    chosen = result.chosen
    return {
        "command": "plan",
        "scenario": result.scenario,
        "ledger_head": head,
        "levers": [{"lever": lv.name, "path": lv.path, "base": list(lv.base), "min": lv.lo, "max": lv.hi,
                    "step": lv.step, "cost_per_unit": lv.unit_cost} for lv in result.levers],
        "requirements": result.requirements,
        "replications": result.replications,
        "seed": result.seed,
        "budget": result.budget,
        "evaluations": result.evaluations,
        "status": str(result.outcome),
        "met": result.met,
        "reason": result.reason,
        "search_complete": result.search_complete,
        "chosen": None if chosen is None else {"candidate": chosen.id, "values": chosen.values, "cost": chosen.cost},
        "candidates": [_candidate_json(c) for c in result.candidates],
        "guidance": [{"at": at, "marginal_values": [mv._asdict() | {"per_cost": mv.per_cost} for mv in values]}
                     for at, values in result.guidance],
    }


def _candidate_json(c: Any) -> dict[str, Any]:
    from .analysis import value_or_none

    ci = c.summary.get("ci95", {})
    return {
        "candidate": c.id, "phase": str(c.phase), "values": c.values, "cost": c.cost, "status": str(c.status),
        "replications": len(c.per_run), "shortfall": c.shortfall, "note": c.note,
        "requirements": {chk.requirement: {"mean": chk.actual, "ci95": value_or_none(ci, chk.path), "ok": chk.ok}
                         for chk in c.checks},
    }


def register(app: typer.Typer) -> None:
    """Add ``sweep``, ``compare``, ``plan`` and ``bottleneck`` to the main ``celltx`` app."""
    app.command("sweep")(sweep)
    app.command("compare")(compare)
    app.command("plan")(plan)
    app.command("bottleneck")(bottleneck)
