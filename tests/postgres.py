"""A throwaway PostgreSQL server for the tests: initdb'd in a temporary directory, on a free port.

The server binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``).
``initdb`` and ``postgres`` refuse to run as root, so under root they run as the ``postgres``
user (or ``nobody``) in a directory that user owns. With ``CI`` set, a missing server fails the
test; elsewhere it is skipped.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import typing as t

import pytest

BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _version(path: str) -> tuple[int, ...]:
    digits = path.split("/")[-2]
    return tuple(int(part) for part in digits.split(".") if part.isdigit())


def find_bin() -> str | None:
    """The newest installed server's ``bin`` directory, or ``None``."""
    found = [d for d in glob.glob(BIN_GLOB) if os.path.exists(os.path.join(d, "initdb"))]
    return max(found, key=_version) if found else None


def missing(reason: str) -> t.NoReturn:
    """Fail under CI (the server must be there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so PostgreSQL is required)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _account() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root (else ``None``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None  # every Debian has nobody


class PostgresServer:
    """A running server; :meth:`database` hands out a fresh, empty database per call."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.user = _account()
        self.root = tempfile.mkdtemp(prefix="pm-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.sockets = os.path.join(self.root, "run")
        os.mkdir(self.sockets)
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            os.chown(self.sockets, self.user.pw_uid, self.user.pw_gid)
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(self.root, "server.log")
        self._names = itertools.count(1)

    def _run_as(self) -> dict[str, t.Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def start(self) -> None:
        """initdb, start, wait until it accepts connections (at most 60 s)."""
        subprocess.run(
            [
                os.path.join(self.bindir, "initdb"),
                "-D",
                self.data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.root,
            **self._run_as(),
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    os.path.join(self.bindir, "postgres"),
                    "-D",
                    self.data,
                    "-p",
                    str(self.port),
                    "-k",
                    self.sockets,
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                **self._run_as(),
            )
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    with open(self.log) as log_file:
                        raise RuntimeError(f"PostgreSQL did not start: {log_file.read()}") from None
                time.sleep(0.1)

    def dsn(self, dbname: str) -> str:
        """A libpq connection string."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"metrics_{next(self._names)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Fast shutdown, then remove the directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:  # a stuck server
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """Start a server, or fail/skip (see :func:`missing`) when none is installed."""
    try:
        import psycopg  # noqa: F401
    except ImportError:  # psycopg is in the test extra
        missing("psycopg is not installed")
    bindir = find_bin()
    if bindir is None:
        missing(f"no PostgreSQL server in {BIN_GLOB}")
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


_shared: PostgresServer | None = None
_users = 0


@pytest.fixture(scope="session")
def postgres() -> t.Iterator[PostgresServer]:
    """One server for the whole run, however many test modules import this fixture."""
    global _shared, _users
    if _shared is None:
        _shared = start_server()
    _users += 1
    yield _shared
    _users -= 1
    if _users == 0:
        _shared.stop()
        _shared = None
