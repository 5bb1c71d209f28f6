"""A throw-away PostgreSQL server for the tests: initdb in a temp dir, bound to 127.0.0.1 on a free port,
password authentication (so the URL carries a password and masking can be tested), stopped at session end.

Skips, with the reason in the ``-ra`` summary, when no server binaries or no driver are available.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "planner"
PG_PASSWORD = "s3cret-pw"


@dataclass(frozen=True)
class PgServer:
    port: int
    host: str = "127.0.0.1"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@{self.host}:{self.port}/{db}"

    def create_db(self) -> str:
        """A new empty database; returns its SQLAlchemy URL (with the password)."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host=self.host, port=self.port, user=PG_USER, password=PG_PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


class PgUnavailable(Exception):
    """No server can be started here; the message says why (tests skip with it, benchmarks print it)."""


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user() -> list[str]:
    """initdb refuses root: run the server as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise PgUnavailable("running as root and there is no postgres user to run a PostgreSQL server as") from None
    if not runuser:
        raise PgUnavailable("running as root and runuser is missing: cannot start a PostgreSQL server")
    return [runuser, "-u", "postgres", "--"]


def _start(bindir: Path, tmp: Path) -> int:
    prefix = _as_server_user()
    if prefix:
        shutil.chown(tmp, "postgres")
    pwfile = tmp / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if prefix:
        shutil.chown(pwfile, "postgres")
    data = tmp / "data"
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
                    "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, text=True)
    port = _free_port()
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60",
                    "-o", f"-h 127.0.0.1 -p {port} -k {tmp} -c fsync=off -c max_connections=50", "start"],
                   check=True, capture_output=True, text=True)
    return port


def _stop(bindir: Path, tmp: Path) -> None:
    prefix = _as_server_user()
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(tmp / "data"), "-m", "fast", "-w", "stop"],
                   capture_output=True, text=True)


@contextmanager
def throwaway_server() -> Iterator[PgServer]:
    """A PostgreSQL server in a temp dir on 127.0.0.1, stopped and removed on exit; PgUnavailable when
    none can be started (no binaries, no driver, start-up failed)."""
    bindir = _bin_dir()
    if bindir is None:
        raise PgUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: PostgreSQL tests skip "
                            "(make test installs Debian's postgresql when run as root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("psycopg not installed (pip install 'celltx-mfg[postgres]'): PostgreSQL tests skip") \
            from None
    tmp = Path(tempfile.mkdtemp(prefix="celltx-pg-"))
    try:
        try:
            port = _start(bindir, tmp)
        except subprocess.CalledProcessError as e:
            log = (tmp / "log").read_text() if (tmp / "log").exists() else ""
            raise PgUnavailable(f"could not start a PostgreSQL server: {(e.stderr or '').strip()} {log.strip()}"[:500]) \
                from None
        try:
            yield PgServer(port)
        finally:
            _stop(bindir, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        with throwaway_server() as server:
            yield server
    except PgUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the throw-away server: its URL, password included."""
    return pg_server.create_db()
