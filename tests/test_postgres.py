"""The store on a real PostgreSQL server (tests/pgserver.py starts a throw-away one; skipped without one):
the CLI gives the same KPIs as on SQLite, the append-only guards refuse UPDATE and DELETE, verify finds a
changed row, a parallel sweep stores its runs, the dashboard loader reads it, the password in the URL
never appears in any output, and the keyed seals, the ledger and the trigger checks work as on SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from celltx_mfg import store
from celltx_mfg.cli import app

from .conftest import short_baseline_file
from .pgserver import PG_PASSWORD

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_baseline_file(tmp_path_factory.mktemp("sc"), horizon=120)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store on each backend: a SQLite file, or a PostgreSQL database (URL with a password)."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return str(request.getfixturevalue("pg_url"))


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert PG_PASSWORD not in result.output
    return str(result.output)


def _run_kpis(small: Path, db: str, seed: int) -> tuple[list[int], dict]:
    out = json.loads(_ok(runner.invoke(app, ["run", str(small), "--db", db, "--seed", str(seed), "--json"])))
    kpis = json.loads(_ok(runner.invoke(app, ["kpis", "--db", db, "--run", str(out["runs"][0]), "--json"])))
    return out["runs"], kpis


def test_run_kpis_verify_export_match_sqlite(small: Path, tmp_path: Path, pg_url: str) -> None:
    seed = 2**62 + 12345  # 63-bit seeds: a 32-bit INTEGER column would overflow
    _, on_sqlite = _run_kpis(small, str(tmp_path / "s.db"), seed)
    runs, on_pg = _run_kpis(small, pg_url, seed)
    assert on_pg == on_sqlite
    seeds = [store.list_runs(store.open_store(d, readonly=True))["seed"].tolist() for d in (str(tmp_path / "s.db"), pg_url)]
    assert seeds[0] == seeds[1] and seeds[0][0] > 2**31  # 63-bit: a 32-bit INTEGER column would overflow
    out = _ok(runner.invoke(app, ["verify", "--db", pg_url]))
    assert "verified" in out
    for fmt in ("csv", "parquet"):
        d = tmp_path / fmt
        _ok(runner.invoke(app, ["export", "--db", pg_url, "--format", fmt, "--out", str(d)]))
        assert any(d.iterdir())
    # the same exported records (digests included) from both backends; run and scenario rows carry wall-clock times
    _ok(runner.invoke(app, ["export", "--db", str(tmp_path / "s.db"), "--format", "csv", "--out", str(tmp_path / "s")]))
    compared = [f for f in sorted((tmp_path / "s").iterdir()) if f.stem in store.RECORD_TABLES]
    assert len(compared) == len(store.RECORD_TABLES)
    for f in compared:
        assert (tmp_path / "csv" / f.name).read_text() == f.read_text(), f.name


@pytest.mark.parametrize("sql", ["UPDATE patient SET coi = 'X' WHERE row_seq = 0",
                                 "DELETE FROM patient WHERE row_seq = 0",
                                 "UPDATE run SET label = 'x'", "DELETE FROM run",
                                 "UPDATE scenario SET name = 'x'", "DELETE FROM step_event"])
def test_append_only_guards(small: Path, db: str, sql: str) -> None:
    _ok(runner.invoke(app, ["run", str(small), "--db", db, "--json"]))
    engine = store.open_store(db)
    with pytest.raises(sa.exc.DBAPIError, match="append-only GMP record"), engine.begin() as conn:
        conn.exec_driver_sql(sql)


def test_verify_finds_a_changed_row(small: Path, pg_url: str) -> None:
    _ok(runner.invoke(app, ["run", str(small), "--db", pg_url, "--json"]))
    engine = store.open_store(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")  # superuser: triggers off
        conn.exec_driver_sql("UPDATE qc_test SET result = CASE result WHEN 'pass' THEN 'fail' ELSE 'pass' END "
                             "WHERE row_seq = 3")
    problems = store.verify(engine)
    assert any(p.table == "qc_test" and p.row_seq == 3 and p.kind == "changed" for p in problems), problems
    res = runner.invoke(app, ["verify", "--db", pg_url])
    assert res.exit_code != 0 and "qc_test" in res.output and PG_PASSWORD not in res.output


def test_sweep_two_jobs(small: Path, db: str) -> None:
    res = runner.invoke(app, ["sweep", str(small), "--vary", "suites=8,12", "-r", "2", "--jobs", "2",
                              "--db", db, "--json"])
    obj = json.loads(_ok(res))
    ids = sorted(i for c in obj["cells"] for i in c["run_ids"])
    assert ids == sorted(store.list_runs(store.open_store(db, readonly=True))["id"].tolist())
    assert len(ids) == 4
    assert obj["db"] == store.display_url(db)
    assert store.verify(store.open_store(db, readonly=True)) == []


def test_dashboard_loader_reads_postgres(small: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "dashboards"))
    sys.modules.pop("_common", None)
    import _common

    _ok(runner.invoke(app, ["run", str(small), "--db", pg_url, "--json"]))
    runs = _common.runs_table(pg_url, _common.db_version(pg_url))
    assert len(runs) == 1
    frames = _common.frames(pg_url, (int(runs["id"][0]),), _common.db_version(pg_url))
    assert len(frames["patients"]) > 0
    kpis = _common.kpi_summary(pg_url, (int(runs["id"][0]),), _common.db_version(pg_url), 21.0)
    assert kpis["patients_referred"] > 0


def test_password_never_printed(small: Path, pg_url: str, tmp_path: Path) -> None:
    outputs = [
        runner.invoke(app, ["run", str(small), "--db", pg_url]),  # table title names the store
        runner.invoke(app, ["kpis", "--db", pg_url]),
        runner.invoke(app, ["verify", "--db", pg_url]),
        runner.invoke(app, ["sweep", str(small), "--vary", "suites=8", "-r", "1", "--db", pg_url]),
        runner.invoke(app, ["sweep", str(small), "--vary", "suites=8", "-r", "1", "--db", pg_url, "--json"]),
    ]
    bad = pg_url.replace("/t_", "/nosuchdb_")
    outputs.append(runner.invoke(app, ["run", str(small), "--db", bad]))
    outputs.append(runner.invoke(app, ["kpis", "--db", bad]))
    for r in outputs:
        text = r.output + (r.stderr if r.stderr_bytes is not None else "")
        assert PG_PASSWORD not in text, text
    assert "***" in outputs[0].output or "127.0.0.1" in outputs[0].output


def test_display_url() -> None:
    assert store.display_url("runs/celltx.db") == "runs/celltx.db"
    assert store.display_url("postgresql+psycopg://u:pw@h:5/d") == "postgresql+psycopg://u:***@h:5/d"
    assert store.display_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(store.StoreError) as e:
        store.open_store("postgresql+psycopg://u:pw@127.0.0.1:1/d")
    assert "pw" not in str(e.value).replace("psycopg", "")


def test_dashboard_start_line_and_page_header_mask_the_password(monkeypatch: pytest.MonkeyPatch, small: Path,
                                                                pg_url: str) -> None:
    import sys

    import celltx_mfg.cli as cli

    monkeypatch.setattr(cli, "_serve", lambda cmd, env: 0)  # the start line, not a server
    res = runner.invoke(app, ["dashboard", "--db", pg_url])
    assert res.exit_code == 0 and "127.0.0.1" in res.output and PG_PASSWORD not in res.output

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "dashboards"))
    sys.modules.pop("_common", None)
    import _common

    shown: list[str] = []
    monkeypatch.setattr(_common.st, "caption", lambda text, **_: shown.append(text))
    monkeypatch.setattr(_common.st, "code", lambda text, **_: shown.append(text))
    monkeypatch.setattr(_common.st, "warning", lambda text, **_: shown.append(text))
    monkeypatch.setattr(_common.st, "stop", lambda: None)
    import datetime as dt

    sel = _common.Selection(db=pg_url, version=(), scenario="x", name="x", scenario_hash="h", run_ids=(1,),
                            horizon=120.0, warmup=30.0, start=dt.date(2026, 1, 1))
    _common.caption_selection(sel)
    _common._stop_with_setup_help(pg_url, "no runs")
    assert shown and all(PG_PASSWORD not in t for t in shown), shown
    assert "***" in shown[0]


def test_compare_json_masks_the_password(small: Path, pg_url: str, tmp_path: Path) -> None:
    b = tmp_path / "b.yaml"
    b.write_text(f"base: {small}\nname: fewer_suites\nresources: {{suites: 6}}\n")
    res = runner.invoke(app, ["compare", str(small), str(b), "-r", "2", "--db", pg_url, "--json"])
    obj = json.loads(_ok(res))
    assert obj["db"] == store.display_url(pg_url) and "***" in obj["db"]
    res = runner.invoke(app, ["compare", str(small), str(b), "-r", "2", "--db", pg_url])
    assert "stored 4 run(s) in postgresql+psycopg://planner:***@" in _ok(res)


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:topsecret@host:notaport/db", "post gres://u:topsecret@h/db"])
def test_an_unparseable_url_is_one_line_without_its_password(url: str) -> None:
    with pytest.raises(store.StoreError, match="cannot open store <unparseable database URL>") as e:
        store.open_store(url)
    assert "topsecret" not in str(e.value)


# ------------------------------------------------------------- keyed seals, ledger and guards (issue 10)
@contextmanager
def _tampering(db: str) -> Iterator[sa.Connection]:
    """A connection with the append-only triggers out of the way, as an insider would have it: on
    PostgreSQL a superuser's session_replication_role; on SQLite the triggers dropped, then put back."""
    engine = sa.create_engine(db if "://" in db else f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
                yield conn
                return
            names = [r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
            for name in names:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
            yield conn
            for ddl in store._append_only_ddl():
                conn.exec_driver_sql(ddl)
    finally:
        engine.dispose()


def _found(db: str, *heads: str) -> set[tuple[int | None, str, str]]:
    engine = store.open_store(db, readonly=True)
    try:
        return {(p.run_id, p.table, p.kind) for p in store.verify(engine, expect_heads=heads)}
    finally:
        engine.dispose()


def test_resealed_run_and_deleted_newest_run_found_on_both_backends(small: Path, db: str) -> None:
    """The same keyed seals and ledger on SQLite and PostgreSQL: a run re-sealed with the package's sha256
    after its seed was changed is found (its ledger entry no longer matches); the newest run deleted with
    its ledger entry leaves a whole store, and only the head printed before (`ledger_head`) shows it."""
    out = json.loads(_ok(runner.invoke(app, ["run", str(small), "--db", db, "-r", "2", "--json"])))
    head = out["ledger_head"]
    assert _found(db, head) == set()
    with _tampering(db) as conn:
        run = dict(conn.execute(sa.text("SELECT * FROM run WHERE id = 1")).mappings().one())
        content_hash = conn.execute(sa.text("SELECT content_hash FROM scenario")).scalar()
        run["seed"] += 1
        conn.execute(sa.text("UPDATE run SET seed = :s, digest = :d WHERE id = 1"),
                     {"s": run["seed"], "d": store._run_seal(1, content_hash, run)})
    assert _found(db) == {(1, "run", "seal")}
    with _tampering(db) as conn:
        for t in (*store.RECORD_TABLES, "release_signature"):
            conn.execute(sa.text(f'DELETE FROM "{t}" WHERE run_id = 2'))
        conn.execute(sa.text("DELETE FROM run WHERE id = 2"))
        conn.execute(sa.text("DELETE FROM ledger WHERE kind = 'run' AND ref_id = 2"))
    assert _found(db) == {(1, "run", "seal")}
    assert _found(db, head) == {(1, "run", "seal"), (None, "ledger", "removed")}
    res = runner.invoke(app, ["verify", "--db", db, "--expect-head", head])
    assert res.exit_code == 1 and "is not in the ledger" in res.output and PG_PASSWORD not in res.output


def test_guards_are_checked_by_their_text_and_repaired(small: Path, db: str) -> None:
    """A dropped trigger and a no-op replacement (PostgreSQL: also a disabled trigger and a no-op
    function body) are each reported by verify; the next writable open puts the real ones back."""
    _ok(runner.invoke(app, ["run", str(small), "--db", db, "--json"]))
    engine = sa.create_engine(db if "://" in db else f"sqlite:///{db}")
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP TRIGGER run_no_delete ON run")
            conn.exec_driver_sql("ALTER TABLE qc_test DISABLE TRIGGER qc_test_no_update")
            conn.exec_driver_sql("CREATE OR REPLACE TRIGGER batch_no_update BEFORE INSERT ON batch "
                                 "FOR EACH ROW EXECUTE FUNCTION celltx_append_only()")
            conn.exec_driver_sql("CREATE OR REPLACE FUNCTION celltx_append_only() RETURNS trigger "
                                 "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
            expected = {("run", "run_no_delete is missing"), ("qc_test", "qc_test_no_update is disabled"),
                        ("batch", "batch_no_update differs"), ("run", "celltx_append_only differs")}
        else:
            conn.exec_driver_sql('DROP TRIGGER "run_no_delete"')
            conn.exec_driver_sql('DROP TRIGGER "batch_no_update"')
            conn.exec_driver_sql('CREATE TRIGGER "batch_no_update" BEFORE UPDATE ON "batch" BEGIN SELECT 1; END')
            expected = {("run", "run_no_delete is missing"), ("batch", "batch_no_update differs")}
    engine.dispose()
    ro = store.open_store(db, readonly=True)  # a writable open would repair them first
    guards = [p for p in store.verify(ro) if p.kind == "guard"]
    ro.dispose()
    assert len(guards) == len(expected), guards
    res = runner.invoke(app, ["verify", "--db", db])
    assert res.exit_code == 1 and res.output.count(": guard: ") == len(expected), res.output
    assert all(any(t == p.table and what in p.detail for p in guards) for t, what in expected), guards
    store.open_store(db).dispose()
    assert _found(db) == set()
    engine = store.open_store(db)
    with pytest.raises(sa.exc.DBAPIError, match="append-only GMP record"), engine.begin() as conn:
        conn.exec_driver_sql("UPDATE qc_test SET result = 'pass'")
    engine.dispose()


def test_postgres_truncate_is_refused(small: Path, pg_url: str) -> None:
    """TRUNCATE skips row triggers: a statement trigger on every guarded table refuses it."""
    _ok(runner.invoke(app, ["run", str(small), "--db", pg_url, "--json"]))
    engine = store.open_store(pg_url)
    for sql in ("TRUNCATE ledger", "TRUNCATE run CASCADE", "TRUNCATE scenario CASCADE"):
        with pytest.raises(sa.exc.DBAPIError, match="cannot be truncated"), engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert len(store.list_runs(engine)) == 1
    engine.dispose()


def test_postgres_parallel_writers_extend_one_ledger(pg_url: str) -> None:
    """Four writers at once on one PostgreSQL store: the ledger appends queue (an advisory lock), so the
    entries are numbered without a gap and every run verifies."""
    from concurrent.futures import ThreadPoolExecutor

    from .test_store import SCENARIO_YAML, make_records

    store.open_store(pg_url).dispose()

    def one(seed: int) -> int:
        engine = store.open_store(pg_url)
        try:
            return store.write_run(engine, "two-suite plant", SCENARIO_YAML, make_records(seed=seed))
        finally:
            engine.dispose()

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(one, range(8)))
    engine = store.open_store(pg_url)
    with engine.connect() as conn:
        seqs = [r[0] for r in conn.execute(sa.text("SELECT seq FROM ledger ORDER BY seq"))]
    assert sorted(ids) == list(range(1, 9)) and seqs == list(range(1, 10))  # + the scenario
    assert store.verify(engine) == []
    engine.dispose()
