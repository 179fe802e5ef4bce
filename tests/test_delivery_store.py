"""Both stores behave the same: caps, claims within limits, retries, dead letters."""

from __future__ import annotations

import json
import os
import pathlib
import sqlite3
import time
import typing as t

import pytest

from pyramid_mixpanel.delivery.store import MemoryStore, SpoolError, SqliteSpool, Store


@pytest.fixture(params=["memory", "spool"])
def make_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> t.Callable[..., Store]:
    def make(max_messages: int = 100, max_bytes: int = 10**6) -> Store:
        if request.param == "memory":
            return MemoryStore(max_messages, max_bytes)
        return SqliteSpool(str(tmp_path / "spool.db"), max_messages, max_bytes)

    return make


def body(n: int, pad: int = 0) -> str:
    return json.dumps({"n": n, "p": "x" * pad}, separators=(",", ":"))


NOW = 1_000_000.0


def test_put_refuses_what_exceeds_the_cap(make_store: t.Callable[..., Store]) -> None:
    store = make_store(max_messages=3)
    assert store.put([("events", body(i)) for i in range(5)]) == 2
    assert store.pending() == 3
    assert store.put([]) == 0
    by_bytes = make_store(max_messages=100, max_bytes=len(body(0)) * 2)
    assert by_bytes.put([("events", body(i)) for i in range(3)]) >= 1


def test_claim_respects_record_and_byte_limits(make_store: t.Callable[..., Store]) -> None:
    store = make_store()
    store.put([("events", body(i, pad=100)) for i in range(10)])
    store.put([("people", body(99))])
    first = store.claim("events", NOW, 4, 10**6)
    assert first is not None and len(first.ids) == 4
    small = store.claim("events", NOW, 100, 250)
    assert small is not None and len(small.bodies) == 2
    # A single message bigger than the byte limit still goes alone rather than blocking.
    alone = store.claim("events", NOW, 100, 10)
    assert alone is not None and len(alone.bodies) == 1
    people = store.claim("people", NOW, 100, 10**6)
    assert people is not None and people.bodies == (body(99),)
    assert store.claim("groups", NOW, 100, 10**6) is None


def test_claimed_messages_are_not_claimed_twice(make_store: t.Callable[..., Store]) -> None:
    store = make_store()
    store.put([("events", body(i)) for i in range(3)])
    first = store.claim("events", NOW, 2, 10**6)
    second = store.claim("events", NOW, 10, 10**6)
    assert first is not None and second is not None
    assert set(first.ids).isdisjoint(second.ids)
    assert store.claim("events", NOW, 10, 10**6) is None
    assert store.pending() == 3  # claimed is still pending until acked
    store.ack(first)
    store.ack(second)
    assert store.pending() == 0
    assert store.next_due() is None


def test_retry_holds_a_batch_back_without_blocking_others(
    make_store: t.Callable[..., Store],
) -> None:
    store = make_store()
    store.put([("events", body(1))])
    failed = store.claim("events", NOW, 10, 10**6)
    assert failed is not None
    store.retry(failed, NOW + 30)
    store.put([("events", body(2))])
    fresh = store.claim("events", NOW, 10, 10**6)
    assert fresh is not None and fresh.bodies == (body(2),)
    assert store.claim("events", NOW + 10, 10, 10**6) is None
    store.ack(fresh)
    assert store.next_due() == NOW + 30
    again = store.claim("events", NOW + 31, 10, 10**6)
    assert again is not None and again.bodies == (body(1),) and again.attempts == 1


def test_bury_keeps_refused_records_and_acks_the_rest(
    make_store: t.Callable[..., Store],
) -> None:
    store = make_store()
    store.put([("imports", body(i)) for i in range(3)])
    batch = store.claim("imports", NOW, 10, 10**6)
    assert batch is not None
    store.bury(batch, "HTTP 400: bad time", positions=[1])
    assert store.pending() == 0
    (letter,) = store.dead()
    assert (letter.endpoint, letter.body, letter.error) == (
        "imports",
        body(1),
        "HTTP 400: bad time",
    )
    assert letter.attempts == 1

    store.put([("events", body(7))])
    whole = store.claim("events", NOW, 10, 10**6)
    assert whole is not None
    store.bury(whole, "HTTP 400: nope")
    assert [d.body for d in store.dead()] == [body(1), body(7)]


def test_requeue_dead_letters(make_store: t.Callable[..., Store]) -> None:
    store = make_store()
    store.put([("events", body(i)) for i in range(3)])
    batch = store.claim("events", NOW, 10, 10**6)
    assert batch is not None
    store.bury(batch, "HTTP 400")
    first_id = store.dead()[0].id
    assert store.requeue_dead([first_id]) == 1
    assert store.pending() == 1
    assert len(store.dead()) == 2
    assert store.requeue_dead() == 2
    assert store.dead() == []
    again = store.claim("events", NOW, 10, 10**6)
    assert again is not None and sorted(again.bodies) == sorted(body(i) for i in range(3))
    store.close()


def test_memory_dead_letters_stay_within_the_byte_cap() -> None:
    size = len(body(0))
    store = MemoryStore(100, 2 * size)  # room for two messages' bytes
    store.put([("events", body(i)) for i in range(2)])
    batch = store.claim("events", NOW, 10, 10**6)
    assert batch is not None
    assert store.bury(batch, "HTTP 400") == 0
    store.put([("events", body(2))])
    batch = store.claim("events", NOW, 10, 10**6)
    assert batch is not None
    assert store.bury(batch, "HTTP 400") == 1  # a third body would exceed the bytes: dropped
    assert store.dead_count() == 2
    assert store.requeue_dead() == 2  # their bytes are freed with them
    batch = store.claim("events", NOW, 10, 10**6)
    assert batch is not None
    assert store.bury(batch, "HTTP 400") == 0


def test_memory_store_forgets_the_parents_queue_after_fork() -> None:
    store = MemoryStore(10, 10**6)
    store.put([("events", body(1))])
    batch = store.claim("events", NOW, 1, 10**6)
    assert batch is not None
    store.retry(batch, NOW + 5)
    store.put([("events", body(2))])
    store.after_fork()
    assert store.pending() == 0
    assert store.next_due() is None


def test_spool_survives_the_process_and_is_shared(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "spool.db")
    writer = SqliteSpool(path, 100, 10**6)
    writer.put([("events", body(1)), ("people", body(2))])
    # Another process (here: another connection) sees the rows, even without a clean close.
    reader = SqliteSpool(path, 100, 10**6, lease=60)
    assert reader.pending() == 2
    leased = reader.claim("events", NOW, 10, 10**6)
    assert leased is not None
    # The lease keeps the row away from other senders until it expires.
    assert writer.claim("events", NOW + 1, 10, 10**6) is None
    expired = writer.claim("events", NOW + 61, 10, 10**6)
    assert expired is not None and expired.bodies == (body(1),)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT messages FROM totals").fetchone()[0] == 2
    writer.close()
    reader.close()


def test_spool_reconnects_in_a_forked_child(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**6)
    spool.put([("events", body(1))])
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child's coverage is not collected
        try:
            spool.put([("events", body(2))])
            os._exit(0 if spool.pending() == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert spool.pending() == 2


def test_spool_rolls_back_a_failed_write(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**6)
    with pytest.raises(SpoolError, match="cannot be written: NOT NULL constraint failed"):
        spool.put([(None, body(0))])  # type: ignore[list-item]  # NOT NULL violation
    assert spool.pending() == 0
    spool.put([("events", body(1))])  # the connection is usable again
    assert spool.pending() == 1


def test_spool_next_due_and_pending_with_leases(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**6, lease=10)
    assert spool.next_due() is None
    spool.put([("events", body(1))])
    assert spool.next_due() == 0
    spool.claim("events", NOW, 10, 10**6)
    assert spool.next_due() == NOW + 10


def test_spool_write_after_a_fork_reconnects(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 100, 10**6)
    old = spool._db
    spool._pid = -1  # what a forked child sees
    spool.put([("events", body(1))])
    assert spool._db is not old
    assert spool.pending() == 1


def test_each_lane_has_its_own_tables_in_one_spool_file(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "spool.db")
    mixpanel = SqliteSpool(path, 10, 10**6)
    customerio = SqliteSpool(path, 1, 10**6, endpoints=("identify", "track"), lane="customerio")
    assert mixpanel.put([("events", "{}")]) == 0
    assert customerio.put([("track", "{}"), ("track", "{}")]) == 1  # its own cap of 1
    assert (mixpanel.pending(), customerio.pending()) == (1, 1)
    batch = customerio.claim("track", time.time(), 10, 10**6)
    assert batch is not None
    customerio.bury(batch, "HTTP 400")
    assert [letter.endpoint for letter in customerio.dead()] == ["track"]
    assert mixpanel.dead() == []
    assert customerio.next_due() is None
    assert mixpanel.next_due() == 0
    with pytest.raises(ValueError, match="must be an identifier"):
        SqliteSpool(path, 1, 1, lane="customer io; DROP TABLE messages")
    mixpanel.close()
    customerio.close()


@pytest.mark.parametrize("kind", ["memory", "spool"])
def test_next_due_of_some_endpoints_and_hasten(kind: str, tmp_path: pathlib.Path) -> None:
    store: MemoryStore | SqliteSpool = (
        MemoryStore(100, 10**6)
        if kind == "memory"
        else SqliteSpool(str(tmp_path / "s.db"), 100, 10**6)
    )
    store.put([("events", "a"), ("people", "b")])
    now = store.clock()
    events = store.claim("events", now, 10, 10**6)
    assert events is not None
    store.retry(events, now + 200)
    assert store.next_due() == 0  # the fresh profile update
    assert store.next_due(["events"]) == now + 200
    assert store.next_due(["groups"]) is None
    # Rows still held until that moment become due now; a stale hold changes nothing.
    store.hasten("events", events.ids, now + 1)
    assert store.next_due(["events"]) == now + 200
    store.hasten("events", events.ids, now + 200)
    due = store.next_due(["events"])
    assert due is not None and due <= store.clock()
    again = store.claim("events", store.clock(), 10, 10**6)
    assert again is not None and again.bodies == ("a",)
    store.close()


def test_memory_queue_is_cut_down_as_it_drains_and_keeps_its_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pyramid_mixpanel.delivery.store import memory as memory_module

    monkeypatch.setattr(memory_module, "COMPACT", 4)  # what was taken is cut off early
    store = MemoryStore(100, 10**6)
    store.put([("events", body(i)) for i in range(20)])
    taken: list[str] = []
    while (batch := store.claim("events", store.clock(), 3, 10**6)) is not None:
        taken.extend(batch.bodies)
        store.ack(batch)
        if len(taken) == 12:  # queued while the queue is being cut down
            store.put([("events", body(i)) for i in range(20, 25)])
    assert taken == [body(i) for i in range(25)]
    assert store.pending() == 0 and store.oldest_age() is None


def test_memory_retries_that_fill_a_batch_leave_fresh_messages_for_the_next() -> None:
    store = MemoryStore(100, 10**6)
    store.put([("events", "a" * 8)])
    batch = store.claim("events", store.clock(), 10, 10**6)
    assert batch is not None
    store.retry(batch, store.clock())
    store.put([("events", "c" * 8)])
    # The retry takes 11 of the 15 bytes: the fresh message does not fit beside it.
    first = store.claim("events", store.clock(), 10, 15)
    assert first is not None and first.bodies == ("a" * 8,) and first.attempts == 1
    second = store.claim("events", store.clock(), 10, 15)
    assert second is not None and second.bodies == ("c" * 8,) and second.attempts == 0


def test_memory_claims_within_the_byte_limit() -> None:
    store = MemoryStore(100, 10**6)
    # One message larger than a batch may be: sent alone (the transport says why if refused).
    store.put([("events", "x" * 50)])
    big = store.claim("events", store.clock(), 10, 20)
    assert big is not None and big.bodies == ("x" * 50,)
    # Retries due are taken first, as many as the byte limit allows.
    store.put([("events", "a" * 8), ("events", "b" * 8)])
    batch = store.claim("events", store.clock(), 10, 10**6)
    assert batch is not None
    store.retry(batch, store.clock())
    first = store.claim("events", store.clock(), 10, 15)
    assert first is not None and first.bodies == ("a" * 8,)
