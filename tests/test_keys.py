"""The key file the seals are made with (store/keys.py): where it is, that it is created owner-only on
first use and only by a writer, that one made by two processes at once is one file, and that a key file
others can read, or one that is not ours, is refused with one line naming it (and the store untouched)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from celltx_mfg import store
from celltx_mfg.cli import app
from celltx_mfg.store import StoreError, keys

from .conftest import short_baseline_file
from .test_store import SCENARIO_YAML, make_records

runner = CliRunner()


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CELLTX_KEY_FILE naming a key file that does not exist yet, in a folder that does not either."""
    path = tmp_path / "cfg" / "celltx" / "keys.json"
    monkeypatch.setenv("CELLTX_KEY_FILE", str(path))
    return path


def test_default_location_is_the_user_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLTX_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.key_file() == tmp_path / "xdg" / "celltx" / "keys.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert keys.default_key_file() == Path.home() / ".config" / "celltx" / "keys.json"
    monkeypatch.setenv("CELLTX_KEY_FILE", "  ")  # blank: the default
    assert keys.key_file() == Path.home() / ".config" / "celltx" / "keys.json"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_created_on_first_write_owner_only(fresh: Path, tmp_path: Path) -> None:
    """A reader does not create the key file; the first write does: 0600 in a 0700 folder, JSON with a
    seal key and a qualified-person key; the store holds their ids, never the keys."""
    assert store.load_keys(create=False) is None and not fresh.exists()
    engine = store.open_store(str(tmp_path / "s.db"))
    store.write_run(engine, "two-suite plant", SCENARIO_YAML, make_records())
    engine.dispose()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
    data = json.loads(fresh.read_text())
    assert data["celltx_keys"] == 1 and len(bytes.fromhex(data["seal"])) == 32
    assert set(data["roles"]) == {"qualified_person"}
    raw = (tmp_path / "s.db").read_bytes()
    for key in (data["seal"], *data["roles"].values()):
        assert bytes.fromhex(key) not in raw and key.encode() not in raw
    ring = store.load_keys(create=False)
    assert ring is not None and ring.seal_id == store.key_id(bytes.fromhex(data["seal"])) and len(ring.seal_id) == 16
    assert ring.seal_id == hashlib.sha256(b"celltx key id\0" + bytes.fromhex(data["seal"])).hexdigest()[:16]


def _load(path: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    os.environ["CELLTX_KEY_FILE"] = path
    out.put(keys.signing_keys().seal.hex())


def test_two_processes_creating_the_key_file_get_one_key(fresh: Path) -> None:
    ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_load, args=(str(fresh), out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = {out.get(timeout=5) for _ in procs}
    assert got == {json.loads(fresh.read_text())["seal"]}
    assert [p.name for p in fresh.parent.iterdir()] == ["keys.json"]  # no temporary file left


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_key_file_readable_by_others_is_refused(fresh: Path, tmp_path: Path) -> None:
    """Like ssh with a private key: a key file others can read is refused, by the store API and by
    `celltx run` (before it simulates or touches the store) and `celltx verify` (exit 2, one line naming
    the file and the fix)."""
    store.load_keys(create=True)
    fresh.chmod(0o644)
    with pytest.raises(StoreError, match=r"accessible by other users \(mode 644\): run `chmod 600"):
        store.load_keys(create=True)
    sc = short_baseline_file(tmp_path, horizon=60)
    db = tmp_path / "s.db"
    r = runner.invoke(app, ["run", str(sc), "--db", str(db), "--json"])
    assert r.exit_code == 2 and str(fresh) in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not db.exists()  # refused before the store was touched (and before simulating)
    fresh.chmod(0o600)
    assert runner.invoke(app, ["run", str(sc), "--db", str(db), "--json"]).exit_code == 0
    fresh.chmod(0o640)
    r = runner.invoke(app, ["verify", "--db", str(db)])
    assert r.exit_code == 2 and "chmod 600" in r.output and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("text, why", [
    ("not json", "not JSON"),
    ('{"seal": "00"}', 'no "celltx_keys": 1'),
    ('{"celltx_keys": 1, "seal": "zz"}', "seal must be a hex key"),
    ('{"celltx_keys": 1, "seal": "0011"}', "at least 16 bytes"),
    ('{"celltx_keys": 1, "seal": "' + "ab" * 32 + '", "roles": []}', "roles must be a mapping"),
])
def test_a_key_file_that_is_not_ours_is_one_line(fresh: Path, text: str, why: str) -> None:
    fresh.parent.mkdir(parents=True)
    fresh.write_text(text)
    fresh.chmod(0o600)
    with pytest.raises(StoreError) as exc:
        store.load_keys(create=True)
    assert str(fresh) in str(exc.value) and why in str(exc.value) and "\n" not in str(exc.value)


def test_a_key_file_without_the_qp_role_cannot_sign_releases(fresh: Path, tmp_path: Path) -> None:
    fresh.parent.mkdir(parents=True)
    fresh.write_text(json.dumps({"celltx_keys": 1, "seal": "ab" * 32, "roles": {}}))
    fresh.chmod(0o600)
    engine = store.open_store(str(tmp_path / "s.db"))
    with pytest.raises(StoreError, match="no key for role 'qualified_person'"):
        store.write_run(engine, "two-suite plant", SCENARIO_YAML, make_records())
    assert store.list_runs(engine).empty
    engine.dispose()


def test_key_file_edits_are_seen_by_a_running_process(fresh: Path) -> None:
    """The keys are cached per file, and read again when the file changes (another key file, a rotated
    key): the cache never hands out a stale key."""
    first = store.load_keys(create=True)
    assert first is not None and store.load_keys(create=False) is first
    data = json.loads(fresh.read_text())
    data["seal"] = "cd" * 32
    fresh.write_text(json.dumps(data))
    again = store.load_keys(create=False)
    assert again is not None and again.seal == bytes.fromhex("cd" * 32)
