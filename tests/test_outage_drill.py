"""Outage drills through real WSGI servers in their own processes.

waitress: requests answer fast while Mixpanel is slow, failing, rate limiting or hung; the
server is ``kill -9``ed while Mixpanel hangs and restarted on the same spool; once Mixpanel is
back, every event of every answered request has arrived exactly once (after ``$insert_id``
dedupe). gunicorn: two pre-forked workers (``--preload``) both deliver.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import typing as t
import urllib.request
from collections.abc import Iterator

import pytest

from .drill_app import every_kind_arrived, paths
from .loopback import MixpanelStandIn, free_port, wait_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def start(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(process.stderr.read().decode() if process.stderr else "no start")


def get(port: int, n: int) -> tuple[float, dict[str, t.Any]]:
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/track?n={n}"
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        assert response.status == 200
        body = json.loads(response.read())
    return time.monotonic() - started, body


@pytest.fixture
def api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


def test_waitress_outage_drill_with_kill_9(api: MixpanelStandIn, tmp_path: pathlib.Path) -> None:
    port = free_port()
    env = {"DRILL_API_HOST": api.base_url, "DRILL_SPOOL": str(tmp_path / "spool.db")}
    command = [
        str(BIN / "waitress-serve"),
        f"--listen=127.0.0.1:{port}",
        "--call",
        "tests.drill_app:app",
    ]
    server = start(command, env, port)
    answered = 0
    slowest = 0.0
    try:
        for mode in ("up", "slow", "error500", "rate_limited", "hang", "down"):
            api.set_mode(mode, delay=2.0, retry_after="1")
            for _ in range(10):
                elapsed, _ = get(port, answered)
                slowest = max(slowest, elapsed)
                answered += 1
                time.sleep(0.05)  # let the sender meet each mode
        # Mixpanel recovers: everything answered so far arrives (after the backoff pauses).
        api.set_mode("up")
        wait_until(lambda: every_kind_arrived(api, answered), 90, lambda: len(api.events()))
        # Mixpanel hangs again, and the app dies hard while a post is in flight.
        api.set_mode("hang")
        seen = len(api.requests)
        for _ in range(10):
            get(port, answered)
            answered += 1
        wait_until(lambda: any(r.status == 0 for r in api.requests[seen:]), 10, lambda: None)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server = start(command, env, port)  # same spool
        api.set_mode("up")
        for _ in range(5):
            get(port, answered)
            answered += 1
        wait_until(lambda: every_kind_arrived(api, answered), 60, lambda: len(api.events()))
    finally:
        server.kill()
        server.wait(10)
    # Not a benchmark: a behaviour bound. No request waited for Mixpanel (2 s slow, hung).
    assert slowest < 1.0
    for event in ("Page Viewed", "User Charged"):  # recent, and older than /track's window
        counts = paths(api, event)
        assert set(counts) == {str(n) for n in range(answered)}
        assert set(counts.values()) == {1}  # exactly once after dedupe
    assert every_kind_arrived(api, answered)  # profile and group updates too
    # Nothing was refused or silently dropped by the (strict) stand-in.
    assert api.refused == [] and api.dropped == []


def test_gunicorn_prefork_workers_both_deliver(api: MixpanelStandIn) -> None:
    port = free_port()
    command = [
        str(BIN / "gunicorn"),
        "--preload",
        "--workers=2",
        "--threads=2",
        f"--bind=127.0.0.1:{port}",
        "tests.drill_app:app()",
    ]
    server = start(command, {"DRILL_API_HOST": api.base_url}, port)
    pids: set[int] = set()
    try:
        n = 0
        deadline = time.monotonic() + 30
        while (len(pids) < 2 or n < 40) and time.monotonic() < deadline:
            _, body = get(port, n)
            pids.add(body["pid"])
            n += 1
        wait_until(lambda: every_kind_arrived(api, n), 30, lambda: len(api.events()))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)
    assert len(pids) == 2, "both workers answered"
    assert set(paths(api)) == {str(i) for i in range(n)}


def waitress(port: int) -> list[str]:
    return [
        str(BIN / "waitress-serve"),
        f"--listen=127.0.0.1:{port}",
        "--call",
        "tests.drill_app:app",
    ]


def stop(server: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> str:
    """Send ``sig``, wait for the process to end, return what it wrote on stderr."""
    server.send_signal(sig)
    _, err = server.communicate(timeout=timeout)
    return err.decode()


@pytest.mark.parametrize("spooled", [False, True])
def test_sigterm_under_waitress_drains_and_says_what_is_left(
    api: MixpanelStandIn, tmp_path: pathlib.Path, spooled: bool
) -> None:
    port = free_port()
    env = {"DRILL_API_HOST": api.base_url, "DRILL_SHUTDOWN": "1"}
    if spooled:
        env["DRILL_SPOOL"] = str(tmp_path / "spool.db")
    api.set_mode("down")
    server = start(waitress(port), env, port)
    for n in range(3):
        get(port, n)
    started = time.monotonic()
    err = stop(server)  # what docker, systemd and Kubernetes send
    # Drained for mixpanel.shutdown_timeout (1 s), then gone: not killed before the exit hooks.
    assert time.monotonic() - started < 10
    assert server.returncode >= 0  # it exited; a negative code would mean killed by the signal
    if spooled:
        assert "mixpanel.shutdown left=12 kept_in_spool=12 lost=0" in err
    else:
        assert "mixpanel.shutdown left=12 kept_in_spool=0 lost=12" in err
        assert "set mixpanel.spool_path" in err


def test_sigterm_under_waitress_sends_what_it_can_first(api: MixpanelStandIn) -> None:
    port = free_port()
    server = start(waitress(port), {"DRILL_API_HOST": api.base_url, "DRILL_SHUTDOWN": "5"}, port)
    for n in range(5):
        get(port, n)
    err = stop(server)
    assert "mixpanel.shutdown left=0 kept_in_spool=0 lost=0" in err
    assert every_kind_arrived(api, 5)


def test_sigterm_under_gunicorn_drains_every_worker(api: MixpanelStandIn) -> None:
    port = free_port()
    command = [
        str(BIN / "gunicorn"),
        "--preload",
        "--workers=2",
        f"--bind=127.0.0.1:{port}",
        "tests.drill_app:app()",
    ]
    server = start(command, {"DRILL_API_HOST": api.base_url, "DRILL_SHUTDOWN": "5"}, port)
    pids: set[int] = set()
    n = 0
    deadline = time.monotonic() + 30
    while len(pids) < 2 and time.monotonic() < deadline:
        _, body = get(port, n)
        pids.add(body["pid"])
        n += 1
    err = stop(server)
    assert len(pids) == 2
    # Each worker that handled requests drained on its way out, and said so.
    assert err.count("mixpanel.shutdown left=0") >= 2, err[-3000:]
    assert every_kind_arrived(api, n)


@pytest.mark.parametrize("processes", [1, 3])
def test_kill_9_loops_with_processes_sharing_a_spool(
    api: MixpanelStandIn, tmp_path: pathlib.Path, processes: int
) -> None:
    """Servers are killed hard while Mixpanel hangs; every acknowledged event still arrives."""
    env = {"DRILL_API_HOST": api.base_url, "DRILL_SPOOL": str(tmp_path / "spool.db")}
    ports = [free_port() for _ in range(processes)]
    servers = [start(waitress(port), env, port) for port in ports]
    answered = 0
    try:
        for round_ in range(3):
            api.set_mode("hang" if round_ % 2 == 0 else "error500")
            for _ in range(6):
                get(ports[answered % processes], answered)
                answered += 1
            victim = round_ % processes
            servers[victim].send_signal(signal.SIGKILL)
            servers[victim].wait(10)
            servers[victim] = start(waitress(ports[victim]), env, ports[victim])
        api.set_mode("up")
        wait_until(lambda: every_kind_arrived(api, answered), 90, lambda: len(api.events()))
    finally:
        for server in servers:
            server.kill()
            server.wait(10)
    for event in ("Page Viewed", "User Charged"):
        counts = paths(api, event)
        assert set(counts) == {str(n) for n in range(answered)}
        assert set(counts.values()) == {1}  # duplicates only as resends of one $insert_id


def test_a_spool_locked_by_another_process_never_slows_a_request(
    api: MixpanelStandIn, tmp_path: pathlib.Path
) -> None:
    spool = tmp_path / "spool.db"
    port = free_port()
    server = start(
        waitress(port), {"DRILL_API_HOST": api.base_url, "DRILL_SPOOL": str(spool)}, port
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(spool)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        slowest = 0.0
        for n in range(10):
            elapsed, _ = get(port, n)
            slowest = max(slowest, elapsed)
        holder.stdin = None
        holder.terminate()  # lets go of the lock
        holder.wait(10)
        wait_until(lambda: every_kind_arrived(api, 10), 30, lambda: len(api.events()))
    finally:
        holder.kill()
        server.kill()
        server.wait(10)
    assert slowest < 1.0  # a behaviour bound: the request never waited out the other's lock


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(30)  # holds the lock until terminated
"""


def test_a_corrupted_spool_stops_the_boot_with_a_clear_error_or_is_repaired(
    api: MixpanelStandIn, tmp_path: pathlib.Path
) -> None:
    spool = tmp_path / "spool.db"
    spool.write_bytes(b"not a database at all " * 200)
    port = free_port()
    env = {"DRILL_API_HOST": api.base_url, "DRILL_SPOOL": str(spool)}
    process = subprocess.run(
        waitress(port), cwd=ROOT, env={**os.environ, **env}, capture_output=True, timeout=60
    )
    assert process.returncode != 0
    assert f"mixpanel.spool_path = {str(spool)!r}: cannot be used: file is not a database" in (
        process.stderr.decode()
    )
    server = start(waitress(port), {**env, "DRILL_REPAIR": "1"}, port)
    try:
        get(port, 0)
        wait_until(lambda: every_kind_arrived(api, 1), 30, lambda: len(api.events()))
    finally:
        err = stop(server)
    assert "mixpanel.spool_repaired" in err
