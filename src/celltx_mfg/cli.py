"""`celltx`: the planner's command line. Thin: every command calls config, simulate, store and analysis.

Exit codes (also in `celltx --help`): 0 success; 1 a requirement (`check`), verification or capacity plan
not met; 2 bad input (file, option, database) with a one-screen message and no traceback; 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from . import __version__
from .cli_common import (
    BACKEND_OPTION,
    DB_OPTION,
    EXIT_CODES,
    FILE_HELP,
    JOBS_OPTION,
    RAY_OPTION,
    REPLICATIONS_OPTION,
    SEED_OPTION,
    Backend,
    ExportFormat,
    SafeConsole,
    cap_jobs,
    check_kpi_paths,
    check_requirement_syntax,
    err,
    fail,
    fmt_value,
    handled,
    head_note,
    headline,
    json_numbers,
    ledger_head_of,
    load_or_exit,
    open_db,
    progress_bar,
    requirement_paths,
    run_id_option,
)

app = typer.Typer(
    name="celltx",
    help="Simulate autologous cell-therapy (CAR-T) manufacturing under GMP rules: run scenarios, store "
    "every batch record in SQLite, report throughput, vein-to-vein time, waits, utilisation and losses.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
out = SafeConsole(soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        print(f"celltx {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """The app's options (``--version``); the help text is the app's."""


def kpi_table(title: str, kpis: dict[str, Any]) -> Table:
    """One row per KPI (dotted name), with the 95% half-width when there are replications."""
    from .analysis import kpi_items, value_or_none

    ci = kpis.get("ci95") or {}
    table = Table(title=title, show_lines=False)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    if ci:
        table.add_column("± 95%", justify="right")
    for key, value in kpi_items(kpis):
        row = [key, fmt_value(value)] + ([fmt_value(value_or_none(ci, key))] if ci else [])
        table.add_row(*row)
    return table


def _replicate(file: Path, db: str | None, seed: int | None, replications: int | None, jobs: int,
               backend: Backend, ray_address: str | None, quiet: bool,
               require: Sequence[str] = ()) -> tuple[Any, Any, str | None]:
    """The one replication path (:func:`experiments.replicate_scenario`) as the simulating commands
    call it: the scenario checked (and the KPI paths of ``require``), the store opened, every replication
    stored whole, KPIs per run; with the store's new ledger head (None when nothing is stored)."""
    from .experiments import replicate_scenario

    sc, text = load_or_exit(file)
    with handled(db):
        check_kpi_paths(sc, requirement_paths(require), "--require")
    engine = open_db(db)
    n = replications or sc.replications
    jobs = cap_jobs(jobs, n, backend.value)
    with handled(db), progress_bar(quiet or n <= 1, sc.name) as progress:
        result = replicate_scenario(sc, text, n, engine=engine, seed=seed, jobs=jobs,
                                    backend=backend.value, ray_address=ray_address,
                                    progress=progress)
    return sc, result, ledger_head_of(engine, db)


def _headline(result: Any) -> dict[str, Any]:
    """The KPIs in one shape for any number of replications (:func:`cli_common.headline`)."""
    return headline(result.per_run, result.summary)


@app.command()
def run(
    file: Path = typer.Argument(..., help=FILE_HELP),
    db: str = DB_OPTION,
    seed: int | None = SEED_OPTION,
    replications: int | None = REPLICATIONS_OPTION,
    jobs: int = JOBS_OPTION,
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Run a scenario, store every replication whole, print the KPIs (mean and 95% interval)."""
    sc, result, head = _replicate(file, db, seed, replications, jobs, backend, ray_address, as_json)
    run_ids, kpis = result.run_ids, _headline(result)
    if as_json:
        print(json.dumps({"command": "run", "scenario": sc.name, "runs": run_ids, "ledger_head": head,
                          "kpis": json_numbers(kpis)}, default=float))
        return
    from .store import display_url

    title = f"{sc.name}: {len(run_ids)} replication(s), runs {run_ids[0]}-{run_ids[-1]} in {display_url(db)}"
    out.print(kpi_table(title, kpis))
    head_note(head)


@app.command()
def validate(files: list[Path] = typer.Argument(..., help="scenario YAML file(s)")) -> None:
    """Check scenario files: every problem at once, with its field path, the bad value and what is allowed."""
    from .config import ScenarioError, load_scenario

    bad = 0
    for f in files:
        try:
            sc, _ = load_scenario(f)
            out.print(f"{f}: ok ({sc.name}: {len(sc.sites)} site(s), {len(sc.products)} product(s), "
                      f"{sc.horizon_days:g} days)", markup=False)
        except ScenarioError as e:
            err.print(e.render(), markup=False)
            bad += 1
    if bad:
        raise typer.Exit(2)


def _runs_for(engine: Any, run: list[int] | None, scenario: str | None) -> list[int]:
    from .store import list_runs

    runs = list_runs(engine)
    if runs.empty:
        fail("the database holds no runs yet: create some with `celltx run scenarios/baseline.yaml`")
    if run:
        missing = sorted(set(run) - set(int(x) for x in runs["id"]))
        if missing:
            fail(f"no run with id {missing}; runs in the database: {int(runs['id'].min())}-{int(runs['id'].max())}")
        return list(dict.fromkeys(run))  # a run named twice is still one replication
    if scenario:
        sel = runs[runs["scenario"] == scenario]
        if sel.empty:
            fail(f"no runs of scenario {scenario!r}; scenarios: {sorted(set(runs['scenario']))}")
        return [int(x) for x in sel["id"]]
    last = runs.sort_values("id").iloc[-1]
    same = runs[(runs["scenario_hash"] == last["scenario_hash"])] if "scenario_hash" in runs else runs.iloc[[-1]]
    return [int(x) for x in same["id"]]


def stored_kpis(engine: Any, run_ids: list[int]) -> dict[str, Any]:
    """KPIs of stored runs, in the shape `run` prints (means, ``ci95``, ``replications``)."""
    from .analysis import kpis as compute_kpis
    from .store import load_frames, load_run_meta

    per_run = []
    for rid in run_ids:
        meta = load_run_meta(engine, rid)
        frames = load_frames(engine, [rid])
        per_run.append(compute_kpis(frames, meta["horizon"], meta["warmup"], meta.get("costs")))
    return headline(per_run)


@app.command()
def kpis(
    db: str = DB_OPTION,
    run: list[int] | None = run_id_option(),
    scenario: str | None = typer.Option(None, "--scenario", help="all runs of this scenario name"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """KPIs of stored runs, computed from the database by the same definitions as `run`."""
    if "://" not in db and not Path(db).exists():
        fail(f"database {db} does not exist: create it with `celltx run scenarios/baseline.yaml --db {db}`")
    engine = open_db(db, readonly=True)
    with handled(db):
        ids = _runs_for(engine, run, scenario)
        result = stored_kpis(engine, ids)
    if as_json:
        print(json.dumps({"command": "kpis", "runs": ids, "kpis": json_numbers(result)}, default=float))
    else:
        from .store import display_url

        out.print(kpi_table(f"runs {ids} in {display_url(db)}", result))


@app.command()
def export(
    db: str = DB_OPTION,
    fmt: ExportFormat = typer.Option(ExportFormat.csv, "--format", help="table file format"),
    out_dir: Path = typer.Option(Path("export"), "--out", help="output folder (or file for --batch)"),
    run: list[int] | None = run_id_option("run id(s); default all"),
    batch: str | None = typer.Option(None, "--batch", help="one chain-of-identity id: its whole record as one CSV"),
) -> None:
    """Export tables (one file per table) or one batch's whole GMP record for a QA reviewer."""
    from . import store

    if "://" not in db and not Path(db).exists():
        fail(f"database {db} does not exist")
    engine = open_db(db, readonly=True)
    with handled(db):
        if run and not batch:
            _runs_for(engine, run, None)  # every run named is stored: exit 2 naming the missing ones
    try:
        if batch:
            target = out_dir if out_dir.suffix == ".csv" else out_dir / f"{batch}.csv"
            target.parent.mkdir(parents=True, exist_ok=True)
            n = store.export_batch_csv(engine, batch, target, run_id=run[0] if run else None)
            out.print(f"wrote {n} rows of {batch} to {target}", markup=False)
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        fn = store.export_csv if fmt is ExportFormat.csv else store.export_parquet
        written = fn(engine, out_dir, run_ids=run)
    except (store.StoreError, OSError, ValueError, KeyError) as e:
        fail(f"export failed: {e}")
    for p in written or []:
        out.print(str(p), markup=False)


@app.command()
def label(
    scenario: str = typer.Argument(..., help="scenario name as stored (see `celltx kpis` or the dashboard)"),
    db: str = DB_OPTION,
    text: str | None = typer.Option(None, "--label", help="a short label the dashboard shows; '' clears it"),
    description: str | None = typer.Option(None, "--description", help="what the scenario is for; '' clears it"),
    hide: bool | None = typer.Option(None, "--hide/--show", help="hide it from the dashboard's lists, or show it"),
    actor: str = typer.Option("planner", "--actor", help="who gives the note (person or role)"),
) -> None:
    """Label, describe, hide or show a scenario. Notes are appended (the newest wins); runs are untouched."""
    from . import store

    if text is None and description is None and hide is None:
        fail("nothing to change: give --label, --description, --hide or --show")
    if "://" not in db and not Path(db).exists():
        fail(f"database {db} does not exist: create it with `celltx run scenarios/baseline.yaml --db {db}`")
    engine = open_db(db)
    with handled(db):
        note = store.write_scenario_note(engine, scenario, label=text, description=description, hidden=hide,
                                         actor=actor)
    shown = "hidden" if note.hidden else "shown"
    out.print(f"{scenario}: label {note.label or '(none)'!s}, {shown}"
              + (f"; {note.description}" if note.description else ""), markup=False)


@app.command()
def check(
    file: Path = typer.Argument(..., help=FILE_HELP),
    require: list[str] = typer.Option(..., "--require", help="e.g. 'vein_to_vein_days.p90<=28' (repeatable)"),
    db: str | None = typer.Option(None, "--db", help="also store the runs here"),
    replications: int | None = REPLICATIONS_OPTION,
    jobs: int = JOBS_OPTION,
    backend: Backend = BACKEND_OPTION,
    ray_address: str | None = RAY_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a scenario and fail (exit 1) when a KPI requirement is not met: a CI gate."""
    from .analysis import check_requirements

    check_requirement_syntax(require)
    sc, result, head = _replicate(file, db, None, replications, jobs, backend, ray_address, as_json, require)
    try:
        results = check_requirements(_headline(result), require)
    except ValueError as e:
        fail(f"--require: {e}")
    failed = [r for r in results if not r.ok]
    if as_json:
        print(json.dumps({"command": "check", "scenario": sc.name, "ok": not failed, "ledger_head": head,
                          "requirements": [json_numbers(r._asdict()) for r in results]}, default=float))
    else:
        for r in results:
            mark = "PASS" if r.ok else "FAIL"
            out.print(f"{mark}  {r.requirement}  (actual {fmt_value(r.actual)})", markup=False)
        head_note(head)
    if failed:
        if not as_json:
            err.print(f"{len(failed)} of {len(results)} requirement(s) not met for {sc.name}", markup=False)
        raise typer.Exit(1)


HEAD_HELP = ("a ledger head printed by a writing command (\"ledger_head\"): exit 1 unless it is still in the "
             "ledger, which catches the removal of the newest runs or of everything")
HEAD_FILE_HELP = ("file a CI job keeps the ledger head in: checked like --expect-head when it exists, and "
                  "(re)written with the store's head after a clean verify")


def _head_arg(value: str, where: str) -> str:
    """A ledger head as given: 64 hex digits (sha256-sized), or exit 2 naming where it came from."""
    head = value.strip().lower()
    if len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
        fail(f"{where}: {value.strip()[:80]!r} is not a ledger head (64 hex digits, as printed in \"ledger_head\")")
    return head


def _read_head_file(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8", errors="strict")[:1000] if path.is_file() else None
    except (OSError, UnicodeError) as e:
        fail(f"--head-file {path}: cannot read it: {e}")
    if text is None:
        fail(f"--head-file {path}: not a regular file")
    return _head_arg(text, f"--head-file {path}")


def _write_head_file(path: Path, head: str) -> None:
    """Keep the verified head (write then rename, so a reader never sees half a head)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(head + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        fail(f"--head-file {path}: cannot write it: {e.strerror or e}")


@app.command()
def verify(
    db: str = DB_OPTION,
    run: int | None = run_id_option("one run id; default all"),
    expect_head: str | None = typer.Option(None, "--expect-head", help=HEAD_HELP),
    head_file: Path | None = typer.Option(None, "--head-file", help=HEAD_FILE_HELP),
) -> None:
    """Recompute the batch log's hash chains, keyed seals, release signatures, ledger and append-only
    triggers; name anything changed, removed or inserted after the fact, or sealed by an unknown key
    (exit 1). Seals are checked with the key file in CELLTX_KEY_FILE (default ~/.config/celltx/keys.json)."""
    from .store import display_url, ledger_head

    if "://" not in db and not Path(db).exists():
        fail(f"database {db} does not exist")
    if head_file is not None and run is not None:
        fail("--head-file keeps the head of the whole store: give it without --run")
    expected = [_head_arg(expect_head, "--expect-head")] if expect_head is not None else []
    kept = _read_head_file(head_file) if head_file is not None else None
    expected += [kept] if kept is not None else []
    with handled(db):
        problems, engine = _verified(db, run, expected)
        head = ledger_head(engine)
    if problems:
        for p in problems:
            err.print(str(p), markup=False)
        err.print(f"{len(problems)} integrity problem(s) found", markup=False)
        raise typer.Exit(1)
    out.print(f"{display_url(db)}: every run's record chain, seal and release signature verified; "
              f"ledger head {head or '(empty ledger)'}", markup=False)
    if head_file is not None and head is not None and head != kept:
        _write_head_file(head_file, head)
        out.print(f"head file {head_file} {'updated' if kept else 'created'}", markup=False)


def _verified(db: str, run: int | None, heads: Sequence[str]) -> tuple[list[Any], Any]:
    """verify's findings and the engine they came from, the file checked by integrity_check first; when a
    stored text turns out not to be UTF-8 (a flipped byte), a second look reads it with replacement
    characters so the row is named. A URL is opened read-only too (``untouched``): a writable open would
    repair the append-only triggers before they are checked."""
    from .store import StoreError, damaged_text
    from .store import verify as verify_store

    engine = open_db(db, readonly=True, untouched=True, audit=True)
    try:
        return verify_store(engine, run, expect_heads=heads), engine
    except StoreError as e:
        if not damaged_text(e):
            raise
    engine = open_db(db, readonly=True, untouched=True, lenient_text=True)
    return verify_store(engine, run, expect_heads=heads), engine


@app.command()
def dashboard(
    db: str = DB_OPTION,
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="TCP port to serve on (1-65535)"),
    host: str = typer.Option("127.0.0.1", "--host"),
) -> None:
    """Serve the Streamlit dashboard on the given database (Ctrl-C stops it)."""
    from .resources import ResourceMissing, dashboard_app

    try:
        app_file = dashboard_app()
    except ResourceMissing as e:
        fail(f"dashboard files not found: {e}")
    env = dict(os.environ, CELLTX_DB=db)
    from .store import display_url

    out.print(f"dashboard on http://{host}:{port}  (database {display_url(db)}; Ctrl-C to stop)", markup=False)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "minimal"]
    raise typer.Exit(_serve(cmd, env))


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run Streamlit as a child that stops with us: it gets its own process group, SIGTERM and SIGINT
    (Ctrl-C) sent to us are passed on to that group and we wait for it; on Linux the kernel also sends
    it SIGTERM if we die without a word (SIGKILL). Ctrl-C or SIGTERM ends with exit 0."""
    import signal

    from .experiments.backends import set_parent_death_signal

    def child_setup() -> None:  # runs in the child between fork and exec
        os.setpgrp()
        set_parent_death_signal(signal.SIGTERM)

    posix = os.name == "posix"
    proc = subprocess.Popen(cmd, env=env, preexec_fn=child_setup if posix else None)  # noqa: PLW1509
    stopped: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if posix:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()

    watched = [signal.SIGINT] + ([signal.SIGTERM] if posix else [])
    previous = {s: signal.signal(s, forward) for s in watched}
    try:
        while True:
            try:
                code = proc.wait(timeout=10.0 if stopped else None)
                break
            except subprocess.TimeoutExpired:  # asked to stop and still serving after 10 s
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL) if posix else proc.kill()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.poll() is None:  # leaving for another reason: do not leave the server behind
            proc.kill()
            proc.wait()
    return 0 if stopped else code


@app.command()
def init(
    directory: Path = typer.Argument(..., help="folder to write the example scenarios to (created if missing)"),
    force: bool = typer.Option(False, "--force", help="overwrite scenario files already there"),
) -> None:
    """Write the example scenarios (baseline.yaml and its what-ifs) to a folder, to run and edit."""
    from .resources import ResourceMissing, example_scenarios

    try:
        sources = example_scenarios()
    except ResourceMissing as e:
        fail(f"example scenarios not found: {e}")
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} exists and is not a folder")
    clash = [directory / s.name for s in sources if (directory / s.name).exists()]
    if clash and not force:
        fail(f"{len(clash)} file(s) already exist, not overwritten (use --force): "
             + ", ".join(str(p) for p in clash))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for s in sources:
            shutil.copyfile(s, directory / s.name)
    except OSError as e:
        fail(f"cannot write to {directory}: {e}")
    out.print(f"wrote {len(sources)} scenario(s) to {directory}: " + ", ".join(s.name for s in sources),
              markup=False)
    out.print(f"next: celltx run {directory / sources[0].name}", markup=False)


@app.command()
def version() -> None:
    """Print the package version."""
    out.print(__version__)


from .cli_experiments import register as _register_experiments  # noqa: E402  (needs `app` above)
from .cli_forecast import register as _register_forecast  # noqa: E402

_register_experiments(app)
_register_forecast(app)


def main() -> None:  # pragma: no cover - console entry point convenience
    app()
