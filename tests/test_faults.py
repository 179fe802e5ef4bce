"""Faults from outside the process: delivery keeps its promise, and no request is slowed.

Each case is reproduced for real on loopback or on disk: a trickling or lying Mixpanel, a spool
locked by another connection, full, corrupted, deleted or replaced, a clock stepped backwards,
an engine whose store keeps failing.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import socket
import sqlite3
import threading
import time
import typing as t
from collections.abc import Iterator

import pytest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError

from pyramid_mixpanel import Events, MixpanelTrack, get_runtime
from pyramid_mixpanel.customerio import CustomerIOCall, CustomerIOTransport
from pyramid_mixpanel.delivery import BackgroundEngine, MixpanelTransport, SyncDelivery
from pyramid_mixpanel.delivery import engine as engine_module
from pyramid_mixpanel.delivery.base import Outcome
from pyramid_mixpanel.delivery.policy import RetryPolicy
from pyramid_mixpanel.delivery.store import Batch, MemoryStore, SpoolError, SqliteSpool
from pyramid_mixpanel.delivery.store import spool as spool_module
from pyramid_mixpanel.log import Log
from pyramid_mixpanel.settings import parse_settings

from .loopback import CustomerIOStandIn, MixpanelStandIn, wait_until

TOKEN = "tok-faults"
FAST = RetryPolicy(base=0.05, cap=0.2, jitter=(0.0, 0.01))


@pytest.fixture
def api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


def event(n: int = 0) -> str:
    properties = {
        "token": TOKEN,
        "distinct_id": "u",
        "time": int(time.time()),
        "$insert_id": f"i{n}",
    }
    return json.dumps({"event": "E", "properties": properties})


def engine_for(store: t.Any, transport: t.Any, **kwargs: t.Any) -> BackgroundEngine:
    return BackgroundEngine(
        store, transport, Log([TOKEN]), policy=FAST, flush_interval=0.05, **kwargs
    )


# -- Mixpanel misbehaves -------------------------------------------------------------------------


def test_a_trickling_answer_cannot_hold_the_sender(api: MixpanelStandIn) -> None:
    transport = MixpanelTransport(api.base_url, timeout=(0.5, 0.5), import_auth=(TOKEN, ""))
    api.set_mode("trickle")  # a byte every 0.1 s: no single read times out
    started = time.monotonic()
    outcome = transport.post("events", [event()])
    # Bounded by the total deadline (connect + read = 1 s), not by the server's patience.
    assert time.monotonic() - started < 3
    assert (outcome.kind, outcome.unreachable) == ("retry", True)
    assert outcome.error == "no whole answer within 1s"
    api.set_mode("up")
    assert transport.post("events", [event(1)]).sent  # the next exchange is a fresh one


def test_a_200_that_is_not_mixpanels_answer_is_retried(api: MixpanelStandIn) -> None:
    transport = MixpanelTransport(api.base_url, import_auth=(TOKEN, ""))
    api.set_mode("html200")
    outcome = transport.post("events", [event()])
    assert outcome.kind == "retry"
    assert outcome.error.startswith("HTTP 200 with an answer that is not Mixpanel's: <html>")


def test_sync_delivery_pays_one_timeout_when_customerio_hangs() -> None:
    with CustomerIOStandIn() as server:
        server.mode = "hang"
        transport = CustomerIOTransport("s", "k", url=server.base_url, timeout=(0.3, 0.3))
        delivery = SyncDelivery(transport, parse_settings({}), Log())
        calls = [CustomerIOCall("track", f"u{i}", {}, "E") for i in range(6)]
        started = time.monotonic()
        failed = delivery.submit([(call.method, call.to_json()) for call in calls])
        elapsed = time.monotonic() - started
        server.release.set()
    assert failed == 6
    assert elapsed < 1.5  # one read timeout, not six


# -- the sender never dies -----------------------------------------------------------------------


def test_a_sender_whose_store_keeps_failing_restarts_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = {"on": True}

    class Flaky(MemoryStore):
        def next_due(self, endpoints: t.Iterable[str] | None = None) -> float | None:
            # Outside the send step: where a locked or corrupted spool used to kill the sender.
            if broken["on"]:
                raise sqlite3.OperationalError("database is locked")
            return super().next_due(endpoints)

    class Quiet:
        name = "mixpanel"
        endpoints = ("events",)
        max_records = 10
        max_bytes = 10**6

        def post(self, endpoint: str, bodies: t.Any) -> Outcome:
            return Outcome("sent")

        def close(self) -> None:
            pass

    engine = engine_for(Flaky(10, 10**6), Quiet())
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.start()
        wait_until(lambda: engine.stats["sender_errors"] >= 3, 10, engine.stats.snapshot)
    health = engine.health()
    assert health["sender_alive"] is True
    assert health["last_error"] == "OperationalError: database is locked"
    assert "mixpanel.sender_error error='OperationalError: database is locked'" in caplog.text
    broken["on"] = False
    engine.submit([("events", "{}")])
    wait_until(lambda: engine.stats["sent"] == 1, 40, engine.health)
    assert engine.health()["seconds_since_progress"] is not None
    engine.close(1)


def test_memory_dead_letters_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    class Refusing:
        name = "mixpanel"
        endpoints = ("events",)
        max_records = 10
        max_bytes = 10**6

        def post(self, endpoint: str, bodies: t.Any) -> Outcome:
            return Outcome("dead", "HTTP 400: no")

        def close(self) -> None:
            pass

    engine = engine_for(MemoryStore(100, 10**6, max_dead=3), Refusing())
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.submit([("events", "{}")] * 5)
        wait_until(
            lambda: engine.stats["dead"] + engine.stats["dropped"] == 5, 5, engine.stats.snapshot
        )
    assert engine.stats["dead"] == 3 and engine.stats["dropped"] == 2
    assert engine.store.dead_count() == 3
    assert "mixpanel.dead_letters_full_dropped messages=2" in caplog.text
    engine.close(1)


def test_history_of_a_long_lived_helper_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    mp = MixpanelTrack({"mixpanel.token": TOKEN, "mixpanel.delivery": "sync"}, distinct_id="u")
    # Nothing is posted: the history is what is under test, not delivery.
    monkeypatch.setattr(mp._runtime, "deliver", lambda messages, calls=(), consumer=None: None)
    for _ in range(1100):
        mp.track(Events.page_viewed)
        mp.flush()
    assert len(mp.history) == 1000


# -- the spool in trouble ------------------------------------------------------------------------


def test_a_spool_locked_by_another_process_never_holds_a_request(
    api: MixpanelStandIn, tmp_path: pathlib.Path
) -> None:
    path = str(tmp_path / "spool.db")
    spool = SqliteSpool(path, 1000, 10**7)
    transport = MixpanelTransport(api.base_url, import_auth=(TOKEN, ""))
    engine = engine_for(spool, transport, spooled=True)
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection
    other.execute("BEGIN IMMEDIATE")  # ... holding the write lock
    try:
        started = time.monotonic()
        for n in range(10):
            assert engine.submit([("events", event(n))]) == 0
        elapsed = time.monotonic() - started
    finally:
        other.execute("COMMIT")
        other.close()
    assert elapsed < 2.0  # ten requests, each waiting at most the 50 ms lock wait
    assert engine.stats["overflowed"] == 10
    api.wait_for_events(10)  # nothing lost: from memory into the spool, or sent from there
    wait_until(lambda: spool.pending() + engine.overflow.pending() == 0, 5, spool.pending)
    engine.close(1)


def test_a_full_disk_says_so(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 10**6, 10**9)
    pages = spool._put_db.execute("PRAGMA page_count").fetchone()[0]
    spool._put_db.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow
    with pytest.raises(SpoolError, match="is on a full disk"):
        spool.put([("events", "x" * 100_000)])
    spool.close()


@pytest.mark.parametrize("damage", ["garbage", "directory", "missing directory"])
def test_an_unusable_spool_is_a_startup_error_naming_the_setting_and_the_file(
    tmp_path: pathlib.Path, damage: str
) -> None:
    path = tmp_path / "spool.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database file, it was overwritten" * 100)
    elif damage == "directory":
        path.mkdir()
    else:
        path = tmp_path / "nowhere" / "spool.db"
    config = Configurator(settings={"mixpanel.token": TOKEN, "mixpanel.spool_path": str(path)})
    config.include("pyramid_mixpanel")
    with pytest.raises(ConfigurationError) as raised:
        config.commit()
    message = str(raised.value)
    assert f"mixpanel.spool_path = {str(path)!r}: cannot be used: " in message
    assert TOKEN not in message


def test_a_corrupted_spool_can_be_moved_aside(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"garbage" * 1000)
    settings = {"mixpanel.token": TOKEN, "mixpanel.spool_path": str(path)}
    config = Configurator(settings={**settings, "mixpanel.spool_repair": "true"})
    config.include("pyramid_mixpanel")
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        config.commit()
    engine = get_runtime(config.registry).lanes["mixpanel"]
    assert isinstance(engine, BackgroundEngine) and engine.store.pending() == 0
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("spool.db.broken-")]
    assert moved.read_bytes() == b"garbage" * 1000  # kept for whoever wants to look at it
    assert f"mixpanel.spool_repaired path={str(path)!r}" in caplog.text
    get_runtime(config.registry).close(0)


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_a_spool_deleted_or_replaced_at_runtime_keeps_its_messages(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    path = tmp_path / "spool.db"
    spool = SqliteSpool(str(path), 1000, 10**7)
    spool.put([("events", event(n)) for n in range(3)])
    batch = spool.claim("events", time.time(), 1, 10**6)
    assert batch is not None
    spool.bury(batch, "HTTP 400: no")
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)
    if change == "replaced":
        SqliteSpool(str(path), 1000, 10**7).close()  # an empty spool in its place
    assert spool.check() == (
        f"was {'deleted' if change == 'deleted' else 'replaced by another file'}:"
        " 2 message(s) and 1 dead letter(s) carried over"
    )
    assert spool.check() is None  # settled
    assert path.exists() and spool.pending() == 2 and spool.dead_count() == 1
    again = SqliteSpool(str(path), 1000, 10**7)  # another process sees them in the file
    assert again.pending() == 2
    again.close()
    # The engine's sender notices by itself, and says so.
    engine = engine_for(spool, MixpanelTransport("http://127.0.0.1:9", import_auth=(TOKEN, "")))
    for suffix in ("", "-wal", "-shm"):
        pathlib.Path(f"{path}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.start()
        wait_until(lambda: "mixpanel.spool_replaced" in caplog.text, 10, lambda: caplog.text)
    assert path.exists()
    engine.close(0)


def test_a_clock_stepped_backwards_does_not_stall_the_spool(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 1000, 10**7, lease=10)
    spool.put([("events", "{}")])
    batch = spool.claim("events", time.time(), 10, 10**6)
    assert batch is not None
    # Retried "in 60 s" just before the clock went back a day: due a day and a minute ahead.
    spool.retry(batch, time.time() + 86_400 + 60)
    assert spool.next_due() == pytest.approx(time.time(), abs=5)
    assert spool.claim("events", time.time(), 10, 10**6) is not None
    # A retry within any backoff is respected, not mistaken for a clock step.
    spool.put([("events", "{}")])
    later = spool.claim("events", time.time(), 10, 10**6)
    assert later is not None
    spool.retry(later, time.time() + 120)
    assert spool.claim("events", time.time(), 10, 10**6) is None
    spool.close()


def test_the_memory_queue_runs_on_a_monotonic_clock() -> None:
    store = MemoryStore(10, 10**6)
    assert store.clock is time.monotonic
    store.put([("events", "{}")])
    batch = store.claim("events", store.clock(), 10, 10**6)
    assert isinstance(batch, Batch)
    store.retry(batch, store.clock() + 0.0)
    assert store.claim("events", store.clock(), 10, 10**6) is not None


def test_status_reads_never_take_the_write_lock(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "spool.db")
    spool = SqliteSpool(path, 1000, 10**7)
    spool.put([("events", "{}")] * 3)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer holds the lock
    try:
        started = time.monotonic()
        assert (spool.pending(), spool.dead_count(), spool.dead()) == (3, 0, [])
        assert spool.next_due() == 0
        assert time.monotonic() - started < 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    spool.beat(time.time(), "")
    (beat,) = spool.beats()
    assert beat.pid == os.getpid() and beat.error == ""
    spool.close()


# -- shutdown ----------------------------------------------------------------------------------


def test_sigterm_with_the_default_action_exits_through_the_exit_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "_PREVIOUS", {})
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)
    installed: list[t.Any] = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: installed.append(handler))
    engine_module._install_signal_handlers()
    assert installed == [engine_module._on_sigterm]
    with pytest.raises(SystemExit) as exited:
        engine_module._on_sigterm(signal.SIGTERM, None)
    assert exited.value.code == 128 + signal.SIGTERM


def test_an_apps_own_sigterm_handler_is_kept_and_called(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[int] = []
    monkeypatch.setattr(engine_module, "_PREVIOUS", {})
    monkeypatch.setattr(
        signal, "getsignal", lambda sig: lambda signum, frame: called.append(signum)
    )
    monkeypatch.setattr(signal, "signal", lambda sig, handler: None)
    engine_module._install_signal_handlers()
    engine_module._on_sigterm(signal.SIGTERM, None)
    assert called == [signal.SIGTERM]
    # Installed once: our own handler, or an ignored signal, is left alone.
    for current in (engine_module._on_sigterm, signal.SIG_IGN):
        monkeypatch.setattr(engine_module, "_PREVIOUS", {})
        monkeypatch.setattr(signal, "getsignal", lambda sig, current=current: current)
        engine_module._install_signal_handlers()
        assert engine_module._PREVIOUS == {}


def test_signal_handlers_are_only_installed_from_the_main_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "_PREVIOUS", {})
    thread = threading.Thread(target=engine_module._install_signal_handlers)
    thread.start()
    thread.join(5)
    assert engine_module._PREVIOUS == {}


def test_a_deadline_that_passed_shuts_a_socket_watched_late() -> None:
    from pyramid_mixpanel.delivery import deadline

    left, right = socket.socketpair()
    late = deadline.Deadline()
    late.expire()
    late.watch(left)  # registered after the deadline: shut at once
    late.watch(None)  # nothing to shut
    assert left.recv(1) == b""  # shut down: reads end at once
    left.close()
    right.close()


def test_one_watchdog_expires_deadlines_and_forgets_finished_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyramid_mixpanel.delivery import deadline

    monkeypatch.setattr(deadline, "PRUNE_AT", 4)
    watchdog = deadline._Watchdog()
    for _ in range(10):  # exchanges that end long before their deadline
        finished = deadline.Deadline()
        watchdog.add(60, finished)
        finished.finish()
    assert len(watchdog._heap) < 10  # pruned as they piled up
    watched, other_end = socket.socketpair()
    reused, its_peer = socket.socketpair()
    passing = deadline.Deadline()
    passing.watch(watched)
    ended = deadline.Deadline()
    ended.watch(reused)
    ended.finish()  # its exchange ended: its connection may serve the next one, never shut it
    watchdog.add(0.05, ended)
    watchdog.add(0.05, passing)
    due = (ended, passing)
    wait_until(lambda: not any(d in due for _, _, d in watchdog._heap), 5, lambda: due)
    assert watched.recv(1) == b""  # shut down: a blocked read ends at once
    assert not ended.expired and ended.sockets == []
    its_peer.sendall(b"x")
    assert reused.recv(1) == b"x"  # still open
    for sock in (watched, other_end, reused, its_peer):
        sock.close()


def test_a_forked_child_gets_a_watchdog_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid_mixpanel.delivery import deadline

    with deadline.deadline(30):  # the parent's watchdog runs, its fork hook is installed
        pass
    parent = deadline._WATCHDOG
    assert parent._thread is not None and parent._thread.is_alive()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child's coverage is not collected
        own = deadline._WATCHDOG is not parent  # the parent's thread did not come along
        left, _right = socket.socketpair()
        with deadline.deadline(0.05) as limit:
            limit.watch(left)
            left.settimeout(5)
            shut = left.recv(1) == b""  # the child's own watchdog shuts it
        os.write(write, b"1" if own and shut and limit.expired else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    # What the hook ran in the child, run here to be measured.
    monkeypatch.setattr(deadline, "_WATCHDOG", parent)  # restored afterwards
    deadline._forked()
    assert deadline._WATCHDOG is not parent and deadline._WATCHDOG._thread is None


def test_a_deadline_session_works_without_a_deadline(api: MixpanelStandIn) -> None:
    from pyramid_mixpanel.delivery import deadline

    answer = deadline.session().post(
        f"{api.base_url}/engage",
        data=b"[]",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert answer.status_code == 200


def test_what_the_spool_cannot_take_back_from_memory_is_dropped_and_said(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 2, 10**7)  # room for two messages
    engine = engine_for(spool, MixpanelTransport("http://127.0.0.1:9", import_auth=(TOKEN, "")))
    spool.put([("events", "{}")])  # taken meanwhile by another process
    engine.overflow.put([("events", "{}"), ("events", "{}")])  # waited in memory
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine._spool_overflow()
    assert spool.pending() == 2
    assert engine.stats["dropped"] == 1
    assert "mixpanel.queue_full_dropped messages=1" in caplog.text
    spool.close()


def test_a_spool_with_damaged_pages_is_refused_at_startup(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "spool.db"
    spool = SqliteSpool(str(path), 10_000, 10**8)
    spool.put([("events", "x" * 2000)] * 50)
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    spool.close()
    data = bytearray(path.read_bytes())
    data[8192:12288] = b"\xff" * 4096  # a page of the table, overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="cannot be used: .*malformed"):
        SqliteSpool(str(path), 10_000, 10**8)


def test_a_forked_child_opens_its_own_spool_connections(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**6)
    parents = (spool._db, spool._put_db)
    uses: list[t.Callable[[], object]] = [
        lambda: spool.put([("events", "{}")]),
        spool.pending,
        spool.dead_count,
    ]
    for use in uses:
        spool._pid = -1  # as if this were a forked child
        use()
        assert (spool._db, spool._put_db) != parents
        parents = (spool._db, spool._put_db)
    assert spool.pending() == 1
    spool.close()


def test_the_memory_store_reports_its_sender() -> None:
    store = MemoryStore(10, 100)
    assert store.beats() == []
    store.beat(123.0, "boom")
    (beat,) = store.beats()
    assert (beat.pid, beat.progress, beat.error) == (os.getpid(), 123.0, "boom")
    assert store.check() is None


@pytest.mark.parametrize("spool_back", [True, False])
def test_at_shutdown_what_waited_in_memory_goes_into_the_spool_if_it_can(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, spool_back: bool
) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**7)
    transport = MixpanelTransport("http://127.0.0.1:9", import_auth=(TOKEN, ""))
    engine = engine_for(spool, transport, spooled=True)
    engine.start()
    sender = engine._thread
    assert sender is not None
    engine._stop.set()  # the sender stops (as when the process is exiting) ...
    engine._wake.set()
    wait_until(lambda: not sender.is_alive(), 5, lambda: None)
    engine.overflow.put([("events", event(1))])  # ... with a message still in memory
    if not spool_back:
        spool.put = lambda messages: (_ for _ in ()).throw(sqlite3.OperationalError("locked"))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        left = engine.close(0)
    assert left == 1
    if spool_back:
        assert "mixpanel.shutdown left=1 kept_in_spool=1 lost=0" in caplog.text
    else:
        assert "mixpanel.spool_unavailable problem='locked'" in caplog.text
        assert "mixpanel.shutdown left=1 kept_in_spool=0 lost=1" in caplog.text


def test_sender_side_writes_roll_back_and_reconnect_after_fork(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**6)
    spool.put([("events", "{}")])
    spool._sql["lease"] = "UPDATE no_such_table SET due = ? WHERE id = ?"  # fails mid-claim
    with pytest.raises(sqlite3.OperationalError):
        spool.claim("events", time.time(), 10, 10**6)
    spool._sql["lease"] = spool_module.STATEMENTS["lease"].format(p="")
    spool._pid = -1  # as if forked: the claim reconnects first
    batch = spool.claim("events", time.time(), 10, 10**6)  # the rolled-back claim left it due
    assert batch is not None and len(batch.ids) == 1
    spool.close()
