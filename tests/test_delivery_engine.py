"""The background engine's decisions, driven through a scripted transport.

The HTTP side is covered against a loopback Mixpanel in the functional tests; here a transport
that answers from a script lets each decision (ack, retry with pause, dead letters, shutdown)
be checked exactly.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import typing as t

import pytest

from pyramid_mixpanel.counters import Counters
from pyramid_mixpanel.delivery import engine as engine_module
from pyramid_mixpanel.delivery.base import Outcome
from pyramid_mixpanel.delivery.engine import BackgroundEngine
from pyramid_mixpanel.delivery.policy import RetryPolicy, parse_retry_after
from pyramid_mixpanel.delivery.store import MemoryStore, SpoolError, SqliteSpool
from pyramid_mixpanel.log import Log


class ScriptedTransport:
    """Answers each post with the next scripted outcome (default: sent)."""

    name = "mixpanel"
    endpoints: tuple[str, ...] = ("events", "people", "groups", "imports")
    max_records = 2000
    max_bytes = 10_000_000

    def __init__(self, *script: Outcome) -> None:
        self.script: collections.deque[Outcome] = collections.deque(script)
        self.posts: list[tuple[str, tuple[str, ...]]] = []
        self.gate: threading.Event | None = None

    def close(self) -> None:
        self.closed = True

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        if self.gate is not None:
            self.gate.wait(5)
        self.posts.append((endpoint, tuple(t.cast("t.Sequence[str]", bodies))))
        return self.script.popleft() if self.script else Outcome("sent")


class FixedPolicy(RetryPolicy):
    def delay(self, attempt: int, retry_after: float | None = None, draw: t.Any = None) -> float:
        return 5.0


def make_engine(transport: ScriptedTransport, **kwargs: t.Any) -> BackgroundEngine:
    store = kwargs.pop("store", MemoryStore(1000, 10**7))
    return BackgroundEngine(
        store,
        transport,
        Log(["tok-secret"]),
        policy=kwargs.pop("policy", RetryPolicy(base=0.05, cap=0.2, jitter=(0.0, 0.01))),
        flush_interval=kwargs.pop("flush_interval", 0.05),
        **kwargs,
    )


def wait_for(predicate: t.Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def fail_first_put(spool: SqliteSpool, error: Exception) -> None:
    """The spool's next put raises ``error``; the ones after it work again."""
    real_put, pending = spool.put, [error]

    def put(messages: t.Sequence[tuple[str, str]]) -> int:
        if pending:
            raise pending.pop()
        return real_put(messages)

    spool.put = put  # type: ignore[method-assign]  # the fault under test


def test_submit_returns_at_once_and_the_sender_delivers() -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()
    engine = make_engine(transport)
    started = time.perf_counter()
    engine.submit([("events", '{"a":1}'), ("people", '{"b":2}')])
    assert time.perf_counter() - started < 0.5  # the gate holds the sender, not the caller
    transport.gate.set()
    wait_for(lambda: engine.stats.snapshot()["sent"] == 2)
    assert sorted(endpoint for endpoint, _ in transport.posts) == ["events", "people"]
    assert engine.store.pending() == 0
    assert engine.close(1) == 0


def test_nothing_to_submit_starts_nothing() -> None:
    engine = make_engine(ScriptedTransport())
    engine.submit([])
    assert engine._thread is None
    assert engine.close() == 0
    assert engine.close() == 0  # closing twice is harmless


def test_retry_pauses_the_endpoint_then_delivers() -> None:
    transport = ScriptedTransport(Outcome("retry", "HTTP 503: busy"))
    engine = make_engine(transport)
    engine.submit([("events", '{"a":1}')])
    wait_for(lambda: engine.stats.snapshot()["sent"] == 1)
    stats = engine.stats.snapshot()
    assert stats["retried"] == 1
    assert [endpoint for endpoint, _ in transport.posts] == ["events", "events"]
    engine.close(1)


def test_unreachable_pauses_every_endpoint() -> None:
    transport = ScriptedTransport(Outcome("retry", "ConnectionError", unreachable=True))
    engine = make_engine(transport, policy=FixedPolicy())
    engine.store.put([("events", "{}"), ("people", "{}")])
    assert engine.send_due() is True
    # One post only: the people batch was not tried after Mixpanel proved unreachable.
    assert len(transport.posts) == 1
    assert set(engine._pauses) == {"events", "people", "groups", "imports"}
    assert engine.send_due() is False
    assert 0 < engine._idle_wait() <= engine.flush_interval


def test_refused_batches_become_dead_letters(caplog: pytest.LogCaptureFixture) -> None:
    transport = ScriptedTransport(
        Outcome("dead", "HTTP 400: bad"),
        Outcome("dead", "HTTP 400: one bad", failed=frozenset({1})),
    )
    engine = make_engine(transport)
    engine.store.put([("events", '{"a":1}')])
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.send_due()
    engine.store.put([("imports", '{"i":0}'), ("imports", '{"i":1}'), ("imports", '{"i":2}')])
    engine.send_due()
    assert [d.body for d in engine.store.dead()] == ['{"a":1}', '{"i":1}']
    stats = engine.stats.snapshot()
    assert (stats["dead"], stats["sent"]) == (2, 2)
    assert "pmixpanel dead" in caplog.text


def test_failures_are_logged_periodically_with_counters(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "FAILURE_LOG_INTERVAL", 0.0)
    transport = ScriptedTransport(Outcome("retry", "HTTP 500: tok-secret broke"))
    engine = make_engine(transport)
    engine.store.put([("events", "{}")])
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        engine.send_due()
    assert "mixpanel.delivery_failing" in caplog.text
    assert "retried=1" in caplog.text
    assert "tok-secret" not in caplog.text
    wait_for(lambda: engine._pauses["events"][0] < time.monotonic())
    engine.send_due()  # success clears the failure state
    assert engine._failing_since is None


def test_queue_cap_drops_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(ScriptedTransport(), store=MemoryStore(2, 10**6))
    engine.store.put([("events", "{}"), ("events", "{}")])
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.submit([("events", "{}")])
    assert engine.stats.snapshot()["dropped"] == 1
    assert "mixpanel.queue_full_dropped" in caplog.text
    engine.close(1)


def test_a_store_that_cannot_take_messages_never_loses_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryStore):
        def put(self, messages: t.Sequence[tuple[str, str]]) -> int:
            raise SpoolError("/var/spool.db", "is on a full disk")

    transport = ScriptedTransport()
    engine = make_engine(transport, store=Broken(10, 10**6))
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        assert engine.submit([("events", "{}")]) == 0
        engine.submit([("events", "{}")])
    # Kept in memory, logged once (not once per request), and sent from there.
    assert caplog.text.count("mixpanel.spool_unavailable problem='is on a full disk'") == 1
    wait_for(lambda: engine.stats["sent"] == 2)
    assert engine.stats["overflowed"] == 2 and engine.stats["dropped"] == 0
    engine.close(0.5)


def test_the_overflow_goes_back_into_the_spool_when_it_can(tmp_path: t.Any) -> None:
    spool = SqliteSpool(str(tmp_path / "s.db"), 100, 10**6)
    engine = make_engine(ScriptedTransport(), store=spool, spooled=True)
    transport = t.cast(ScriptedTransport, engine.transport)
    transport.gate = threading.Event()  # nothing is sent until the test says so
    fail_first_put(spool, SpoolError(spool.path, "is locked by another process"))
    engine.submit([("events", '{"a":1}')])  # the spool refuses: kept in memory
    assert engine.stats["overflowed"] == 1
    wait_for(lambda: engine.overflow.pending() == 0)  # the sender spooled it
    assert engine.stats["spooled"] == 1
    transport.gate.set()
    wait_for(lambda: engine.stats["sent"] == 1)
    engine.close(1)


def test_sender_survives_an_unexpected_error(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}

    class Flaky(MemoryStore):
        def claim(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            return super().claim(*args, **kwargs)

    engine = make_engine(ScriptedTransport(), store=Flaky(10, 10**6))
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.submit([("events", "{}")])
        wait_for(lambda: engine.stats.snapshot()["sent"] == 1)
    assert "mixpanel.sender_error" in caplog.text
    engine.close(1)


def test_close_drains_within_the_timeout_and_reports_leftovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()  # a hung Mixpanel: the post never returns
    engine = make_engine(transport)
    engine.submit([("events", "{}")])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        left = engine.close(0.3)
    assert time.monotonic() - started < 2
    assert left == 1
    assert "mixpanel.shutdown left=1 kept_in_spool=0 lost=1" in caplog.text
    assert "set mixpanel.spool_path" in caplog.text
    transport.gate.set()


def test_close_does_not_wait_for_messages_in_backoff() -> None:
    transport = ScriptedTransport(Outcome("retry", "HTTP 429", retry_after=30))
    engine = make_engine(transport, policy=RetryPolicy(base=30, cap=60))
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats.snapshot()["retried"] == 1)
    started = time.monotonic()
    assert engine.close(5) == 1
    assert time.monotonic() - started < 2


def test_spooled_leftovers_are_reported_as_kept(caplog: pytest.LogCaptureFixture) -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()
    engine = make_engine(transport, spooled=True)
    engine.submit([("events", "{}")])
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        assert engine.close(0.1) == 1
    assert "mixpanel.shutdown left=1 kept_in_spool=1 lost=0" in caplog.text
    transport.gate.set()


def test_a_process_that_never_sent_reports_nothing(caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(ScriptedTransport(), spooled=True)
    engine.store.put([("events", "{}")])
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        assert engine.close(0.1) == 0
    assert caplog.text == ""


def test_start_sends_what_the_store_already_holds() -> None:
    engine = make_engine(ScriptedTransport())
    engine.store.put([("events", "{}")])
    engine.start()
    wait_for(lambda: engine.stats.snapshot()["sent"] == 1)
    engine.close(1)


def test_a_forked_child_gets_its_own_sender_and_no_inherited_queue() -> None:
    engine = make_engine(ScriptedTransport())
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats.snapshot()["sent"] == 1)
    engine.store.put([("events", '{"parent":1}')])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child's coverage is not collected
        ok = (
            engine._thread is None
            and engine.store.pending() == 0
            and engine.stats.snapshot()["sent"] == 0
        )
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    engine.close(1)


def test_pid_check_rebuilds_state_without_the_fork_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(ScriptedTransport())
    monkeypatch.setattr(engine, "_pid", -1)
    engine.submit([("events", "{}")])
    assert engine._pid == os.getpid()
    wait_for(lambda: engine.stats.snapshot()["sent"] == 1)
    engine.close(1)


def test_at_exit_every_started_engine_is_closed() -> None:
    engine = make_engine(ScriptedTransport())
    engine.submit([("events", "{}")])
    engine_module._close_all()
    assert engine._closed


def test_exit_and_fork_hooks_are_installed_by_the_first_sender_not_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed: list[str] = []
    monkeypatch.setattr(engine_module, "_hooks_installed", False)
    monkeypatch.setattr(atexit, "register", lambda f: installed.append("atexit"))
    monkeypatch.setattr(os, "register_at_fork", lambda **kw: installed.append("fork"))
    first, second = make_engine(ScriptedTransport()), make_engine(ScriptedTransport())
    assert installed == []  # building engines installs nothing
    first.submit([("events", "{}")])
    second.submit([("events", "{}")])
    assert installed == ["atexit", "fork"]  # once, when the first sender started
    first.close(1)
    second.close(1)


def test_retry_policy_is_mixpanels() -> None:
    """2 s doubling to 60 s, plus 1 to 5 s of jitter (reference/import-events, "Rate Limit")."""
    policy = RetryPolicy()
    assert [policy.ceiling(n) for n in (1, 2, 3, 6, 7, 20)] == [2, 4, 8, 60, 60, 60]
    assert policy.delay(3, draw=lambda: 0.5) == 8 + 3
    assert policy.delay(1, draw=lambda: 0.0) == 3  # never back at once
    assert policy.delay(9, draw=lambda: 1.0) == 65
    assert policy.delay(1, retry_after=10, draw=lambda: 0.5) == 10
    assert policy.delay(1, retry_after=10_000, draw=lambda: 0.5) == 300
    assert all(17 <= policy.delay(4) <= 21 for _ in range(100))
    # ~1000 failures in a row (8 h of outage) no longer overflow the float exponent.
    assert policy.ceiling(2000) == 60


@pytest.mark.parametrize(
    ("header", "expected"), [(None, None), ("", None), ("7", 7.0), ("-1", None), ("soon", None)]
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_stats_snapshot_is_a_copy() -> None:
    stats = Counters(["sent"])
    stats.add("sent", 3)
    snap = stats.snapshot()
    snap["sent"] = 0
    assert stats.snapshot()["sent"] == 3


def test_success_on_one_endpoint_keeps_other_pauses() -> None:
    engine = make_engine(ScriptedTransport())
    engine._pauses["people"] = (time.time() + 60, 1)
    engine._failing_since = time.time()
    engine.store.put([("events", "{}")])
    engine.send_due()
    assert "people" in engine._pauses
    assert engine._failing_since is not None


def test_fork_hooks_reset_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(ScriptedTransport())
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats.snapshot()["sent"] == 1)
    engine.store.put([("events", "{}")])
    # What os.register_at_fork runs in a child, called here so it is measured.
    monkeypatch.setattr(engine_module, "_STARTED", {engine})
    old_thread = engine._thread
    engine_module._after_fork()
    assert engine._thread is None
    assert engine.stats.snapshot()["sent"] == 0
    assert engine.store.pending() == 0
    assert old_thread is not None
    engine._stop.set()


# -- batching while the app is busy, and coming back after an outage ----------------------------


def test_a_burst_of_hand_overs_leaves_as_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # A linger far longer than the wait below: the batch leaves because it is full, not because
    # the linger ran out.
    monkeypatch.setattr(engine_module, "LINGER", 60.0)
    transport = ScriptedTransport()
    transport.max_records = 10
    engine = make_engine(transport)
    for i in range(10):
        engine.submit([("events", f'{{"n":{i}}}')])
    wait_for(lambda: engine.stats["sent"] == 10, timeout=20)
    assert [len(bodies) for _, bodies in transport.posts] == [10]
    engine.close(1)


def test_a_lone_hand_over_leaves_after_the_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "LINGER", 0.01)
    transport = ScriptedTransport()
    engine = make_engine(transport, flush_interval=60.0)
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["sent"] == 1)
    # The sender is idle again: the next hand-over wakes it (not its 60 s idle timeout).
    wait_for(lambda: engine._idle)
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["sent"] == 2)
    engine.close(1)


class ProbedTransport(ScriptedTransport):
    """Unreachable until ``up`` is set; says so to the engine's probe."""

    def __init__(self) -> None:
        super().__init__()
        self.up = threading.Event()
        self.probes = 0

    def reachable(self) -> bool:
        self.probes += 1
        return self.up.is_set()

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        if not self.up.is_set():
            self.posts.append((endpoint, tuple(t.cast("t.Sequence[str]", bodies))))
            return Outcome(
                "retry", "ConnectionError: refused", unreachable=True, no_connection=True
            )
        return super().post(endpoint, bodies)


@pytest.mark.parametrize("spooled", [False, True])
def test_back_from_an_outage_within_a_probe_not_a_backoff(
    spooled: bool, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "PROBE_INTERVAL", 0.05)
    transport = ProbedTransport()
    store = (
        SqliteSpool(str(tmp_path / "spool.db"), 1000, 10**7, lease=30)
        if spooled
        else MemoryStore(1000, 10**7)
    )
    # A backoff of minutes: only the probe can bring these messages back in time.
    engine = make_engine(transport, store=store, policy=FixedPolicy(), flush_interval=60.0)
    monkeypatch.setattr(FixedPolicy, "delay", lambda *_args, **_kw: 200.0)
    engine.submit([("events", '{"n":1}')])
    wait_for(lambda: engine.stats["retried"] == 1)
    # Held back, every endpoint paused: a hand-over now does not wake the sender for nothing.
    posts = len(transport.posts)
    engine.submit([("events", '{"n":2}')])
    wait_for(lambda: transport.probes >= 2)
    assert len(transport.posts) == posts
    transport.up.set()
    wait_for(lambda: engine.stats["sent"] == 2)
    assert sorted(b for _, bodies in transport.posts[posts:] for b in bodies) == [
        '{"n":1}',
        '{"n":2}',
    ]
    engine.close(1)


def test_a_429_is_waited_out_never_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "PROBE_INTERVAL", 0.01)
    transport = ProbedTransport()
    transport.up.set()
    transport.script.append(Outcome("retry", "HTTP 429: slow down", 0.3))
    engine = make_engine(transport)
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["sent"] == 1)
    assert transport.probes == 0
    engine.close(1)


def test_a_probe_that_finds_nothing_keeps_the_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "PROBE_INTERVAL", 0.01)
    transport = ScriptedTransport(Outcome("retry", "refused", unreachable=True, no_connection=True))
    # No reachable(): the engine cannot probe it and waits out the backoff.
    engine = make_engine(transport, policy=FixedPolicy())
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["retried"] == 1)
    wait_for(lambda: time.monotonic() > engine._next_probe)
    engine._probe()
    assert engine._pauses["events"][0] > time.monotonic()
    engine.close(0)


def test_batches_held_during_an_outage_are_due_once_anything_arrives() -> None:
    transport = ScriptedTransport(
        Outcome("retry", "refused", unreachable=True),
    )
    engine = make_engine(transport, policy=FixedPolicy())
    engine._closed = True  # driven by hand: no sender thread
    engine.submit([("events", '{"n":1}')])
    assert engine.send_due()
    assert engine._held and engine.store.next_due() == pytest.approx(time.monotonic() + 5, abs=1)
    engine._pauses.clear()
    engine.submit([("people", '{"n":2}')])
    assert engine.send_due()
    assert not engine._held
    assert engine.store.next_due() == pytest.approx(time.monotonic(), abs=1)


def test_held_batches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_HELD", 1)
    transport = ScriptedTransport(*[Outcome("retry", "refused", unreachable=True)] * 2)
    engine = make_engine(transport, policy=FixedPolicy())
    engine._closed = True
    engine.submit([("events", "{}"), ("people", "{}")])
    engine.send_due()
    engine._pauses.clear()
    engine.send_due()
    assert len(engine._held) == 1


def test_no_linger_when_a_whole_batch_already_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "LINGER", 60.0)
    engine = make_engine(ScriptedTransport())
    engine._handed = engine.transport.max_records
    started = time.monotonic()
    engine._linger()
    assert time.monotonic() - started < 30


# -- mixpanel.spool_commit = group -------------------------------------------------------------


def group_engine(tmp_path: t.Any, transport: ScriptedTransport) -> BackgroundEngine:
    spool = SqliteSpool(str(tmp_path / "s.db"), 1000, 10**6)
    return make_engine(transport, store=spool, spooled=True, group_commit=True)


def test_group_commit_leaves_sqlite_off_the_request_thread(tmp_path: t.Any) -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()  # nothing is sent until the test says so
    engine = group_engine(tmp_path, transport)
    spool = t.cast(SqliteSpool, engine.store)
    writers: list[str] = []
    real_put = spool.put

    def recording_put(messages: t.Sequence[tuple[str, str]]) -> int:
        writers.append(threading.current_thread().name)
        return real_put(messages)

    spool.put = recording_put  # type: ignore[method-assign]  # observed, not changed
    for i in range(20):
        engine.submit([("events", f'{{"n":{i}}}'), ("people", f'{{"n":{i}}}')])
    # Committed by the spooler, in far fewer transactions than hand-overs.
    wait_for(lambda: engine.stats["spooled"] == 40)
    assert set(writers) == {"pyramid_mixpanel-mixpanel-spooler"}
    assert len(writers) < 20
    assert spool.pending() == 40
    transport.gate.set()
    wait_for(lambda: engine.stats["sent"] == 40)
    assert spool.pending() == 0
    engine.close(1)


@pytest.mark.parametrize("pause", [0.0, 60.0])
def test_group_commit_keeps_what_the_spool_refused(
    pause: float, tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No pause after the refusal: the spooler's next attempt spools the message. A long one:
    # meanwhile the sender takes it from memory.
    monkeypatch.setattr(engine_module, "STORE_RETRY", pause)
    transport = ScriptedTransport()
    transport.gate = threading.Event()
    engine = group_engine(tmp_path, transport)
    spool = t.cast(SqliteSpool, engine.store)
    fail_first_put(spool, SpoolError(spool.path, "is locked by another process"))
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.submit([("events", '{"n":1}')])
        wait_for(lambda: "spool_unavailable" in caplog.text)
    assert "problem='is locked by another process' kept_in_memory=1" in caplog.text
    if pause:
        wait_for(lambda: len(transport.posts) == 0 and engine.overflow.pending() == 1)
    else:
        wait_for(lambda: engine.stats["spooled"] == 1)
    transport.gate.set()
    wait_for(lambda: engine.stats["sent"] == 1)
    assert engine.stats["spooled"] == (0 if pause else 1)
    engine.close(1)


def test_group_commit_spooler_survives_an_unexpected_error(
    tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()
    engine = group_engine(tmp_path, transport)
    spool = t.cast(SqliteSpool, engine.store)
    fail_first_put(spool, RuntimeError("a bug"))
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        engine.submit([("events", "{}")])
        wait_for(lambda: engine.stats["spooled"] == 1)
    assert "mixpanel.spooler_error error='RuntimeError: a bug'" in caplog.text
    assert engine.stats["sender_errors"] == 1
    transport.gate.set()
    engine.close(1)


def test_group_commit_close_spools_what_is_still_in_memory(
    tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window longer than the test: only close() can have written these messages.
    monkeypatch.setattr(engine_module, "GROUP_WINDOW", 60.0)
    transport = ScriptedTransport(Outcome("retry", "refused", unreachable=True))
    engine = group_engine(tmp_path, transport)
    engine.submit([("events", "{}")] * 3)
    assert engine.store.pending() == 0
    assert engine.close(0.5) == 3
    reopened = SqliteSpool(str(tmp_path / "s.db"), 1000, 10**6)
    assert reopened.pending() == 3
    reopened.close()


def test_group_commit_wakes_an_idle_spooler_and_reuses_its_thread(tmp_path: t.Any) -> None:
    transport = ScriptedTransport()
    spool = SqliteSpool(str(tmp_path / "s.db"), 1000, 10**6)
    # An hour between idle wake-ups: only a hand-over can wake the spooler in time.
    engine = make_engine(
        transport, store=spool, spooled=True, group_commit=True, flush_interval=3600
    )
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["spooled"] == 1 and engine._spooler_idle)
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["spooled"] == 2)
    wait_for(lambda: engine.stats["sent"] == 2)
    engine.close(1)


def test_the_spooler_has_nothing_to_move_while_the_sender_holds_it(tmp_path: t.Any) -> None:
    spool = SqliteSpool(str(tmp_path / "s.db"), 1000, 10**6)
    engine = make_engine(ScriptedTransport(), store=spool, spooled=True, group_commit=True)
    engine._closed = True  # driven by hand: no threads
    engine.submit([("events", "{}")])
    in_flight = engine.overflow.claim("events", engine.overflow.clock(), 10, 10**6)
    assert in_flight is not None and engine.overflow.pending() == 1
    assert engine._spool_overflow() == 0
    engine._stop.set()
    engine._spool_run()  # stopped: returns at once
    assert spool.pending() == 0


def test_two_full_batches_leave_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "LINGER", 0.0)
    transport = ScriptedTransport()
    transport.max_records = 2
    engine = make_engine(transport)
    engine._closed = True  # driven by hand
    engine.submit([("events", f'{{"n":{i}}}') for i in range(9)])
    while engine.send_due():
        pass
    assert engine.stats["sent"] == 9
    assert sorted(len(bodies) for _, bodies in transport.posts) == [1, 2, 2, 2, 2]
    assert engine._poster is not None  # made once, used for both pairs
    engine.close(0)


class PairedTransport(ScriptedTransport):
    """Answers no post until two are in flight: both posts of a pair see the same moment."""

    def __init__(self, *script: Outcome) -> None:
        super().__init__(*script)
        self.pair = threading.Barrier(2, timeout=5)

    def post(self, endpoint: str, bodies: t.Sequence[str] | t.Sequence[bytes]) -> Outcome:
        self.pair.wait()
        return super().post(endpoint, bodies)


def test_both_batches_of_a_pair_failing_pause_once(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = PairedTransport(*[Outcome("retry", "HTTP 503: busy")] * 2)
    transport.max_records = 2
    engine = make_engine(transport, policy=FixedPolicy())
    engine._closed = True
    engine.submit([("events", f'{{"n":{i}}}') for i in range(6)])
    assert engine.send_due()
    until, failures = engine._pauses["events"]
    assert failures == 1 and until == pytest.approx(time.monotonic() + 5, abs=1)
    assert engine.stats["retried"] == 4
    # The failure stopped the backlog: the third batch was not even claimed.
    assert len(transport.posts) == 2 and engine.store.pending() == 6
    assert engine.store.next_due(["events"]) == 0.0  # due at once when the pause ends


def test_a_backlog_drains_in_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    # Between spans, the sender visits the other endpoints, the overflow and its heartbeat.
    monkeypatch.setattr(engine_module, "SPAN", 0.0)
    transport = ScriptedTransport()
    transport.max_records = 2
    engine = make_engine(transport)
    engine._closed = True
    engine.submit([("events", f'{{"n":{i}}}') for i in range(6)])
    engine.submit([("people", '{"p":1}')])
    assert engine.send_due()
    assert [(endpoint, len(bodies)) for endpoint, bodies in transport.posts] == [
        ("events", 2),
        ("people", 1),
    ]
    engine._stop.set()  # closing: nothing more is claimed either
    assert engine.send_due()
    assert len(transport.posts) == 3 and engine.store.pending() == 2


def test_a_host_that_accepts_but_does_not_answer_is_waited_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "PROBE_INTERVAL", 0.01)
    transport = ProbedTransport()
    transport.up.set()
    transport.script.append(Outcome("retry", "ReadTimeout", unreachable=True))
    engine = make_engine(transport, policy=FixedPolicy())
    engine.submit([("events", "{}")])
    wait_for(lambda: engine.stats["retried"] == 1)
    engine._probe()
    assert transport.probes == 0 and engine._pauses["events"][0] > time.monotonic()
    engine.close(0)
