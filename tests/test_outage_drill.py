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
