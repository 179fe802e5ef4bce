"""``oldest_age()`` of both stores: how long the oldest pending message has waited.

The memory store is checked against a model through random sequences of puts, claims and every
way a claim is settled (whole or in parts, acked, held back, buried, dead letters requeued).
"""

from __future__ import annotations

import pathlib
import time
import typing as t

from hypothesis import given
from hypothesis import strategies as st

from pyramid_mixpanel.delivery.store import Batch, MemoryStore, SqliteSpool


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def memory(clock: Clock, max_messages: int = 1000, max_bytes: int = 10**6) -> MemoryStore:
    store = MemoryStore(max_messages, max_bytes)
    store.clock = clock
    return store


def part(batch: Batch, positions: t.Sequence[int]) -> Batch:
    """As the engine settles a batch in parts (delivered, refused, held back)."""
    return Batch(
        batch.endpoint,
        tuple(batch.ids[i] for i in positions),
        tuple(batch.bodies[i] for i in positions),
        batch.attempts,
    )


def test_an_empty_store_has_no_age(tmp_path: pathlib.Path) -> None:
    assert memory(Clock()).oldest_age() is None
    assert SqliteSpool(str(tmp_path / "s.db"), 10, 10**6).oldest_age() is None


def test_memory_ages_of_fresh_claimed_held_and_delivered_messages() -> None:
    clock = Clock(100.0)
    store = memory(clock)
    store.put([("events", "a"), ("people", "b")])
    clock.now = 110.0
    store.put([("events", "c")])
    assert store.oldest_age(now=130.0) == 30.0
    assert store.oldest_age() == 10.0  # now: the store's clock

    first = store.claim("events", clock.now, 1, 10**6)  # "a", now being sent: still waiting
    assert first is not None and first.bodies == ("a",)
    assert store.oldest_age(now=130.0) == 30.0
    store.retry(first, not_before=200.0)  # held back: still as old
    assert store.oldest_age(now=130.0) == 30.0
    people = store.claim("people", clock.now, 10, 10**6)
    assert people is not None
    store.ack(people)
    again = store.claim("events", 300.0, 10, 10**6)  # the retry, then "c"
    assert again is not None and again.bodies == ("a", "c")
    assert store.oldest_age(now=130.0) == 30.0
    store.ack(part(again, [0]))  # "a" arrived; "c" still in flight
    assert store.oldest_age(now=130.0) == 20.0
    store.ack(part(again, [1]))
    assert store.oldest_age(now=130.0) is None
    assert store.pending() == 0


def test_memory_ages_of_dead_letters_requeued_and_of_a_forked_child() -> None:
    clock = Clock(100.0)
    store = memory(clock)
    store.put([("events", "a"), ("events", "b")])
    batch = store.claim("events", clock.now, 10, 10**6)
    assert batch is not None
    store.bury(batch, "refused", positions=[0])  # "a" dead, "b" arrived
    assert store.oldest_age() is None
    clock.now = 150.0
    assert store.requeue_dead() == 1  # queued again now, as the spool does
    assert store.oldest_age(now=160.0) == 10.0
    # A clock behind the queue times (a caller's own now) is no negative age.
    assert store.oldest_age(now=0.0) == 0.0
    store.claim("events", clock.now, 10, 10**6)  # in flight in the parent when it forks
    store.after_fork()
    assert store.oldest_age() is None


def test_memory_claims_settled_out_of_order_and_one_at_a_time() -> None:
    clock = Clock(0.0)
    store = memory(clock)
    for second in range(4):
        clock.now = float(second)
        store.put([("events", "x" * 10)])
    # Within a byte limit the messages are taken one at a time: each claim is still noted.
    one = store.claim("events", clock.now, 10, 14)
    two = store.claim("events", clock.now, 10, 14)
    assert one is not None and two is not None and len(one.ids) == len(two.ids) == 1
    rest = store.claim("events", clock.now, 10, 10**6)
    assert rest is not None and len(rest.ids) == 2
    store.ack(two)  # not the oldest claim
    assert store.oldest_age(now=10.0) == 10.0
    store.ack(one)
    assert store.oldest_age(now=10.0) == 8.0
    store.retry(part(rest, [1]), 20.0)  # held back in parts
    store.retry(part(rest, [0]), 20.0)
    assert store.oldest_age(now=10.0) == 8.0
    store.bury(rest, "refused")
    assert store.oldest_age(now=10.0) is None
    # The last fresh message, taken alone because it is over the byte limit.
    store.put([("events", "y" * 20)])
    alone = store.claim("events", clock.now, 10, 14)
    assert alone is not None and alone.bodies == ("y" * 20,)
    assert store.oldest_age(now=clock.now + 1) == 1.0


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["events", "people"]), st.integers(1, 4)),
        st.tuples(st.just("claim"), st.sampled_from(["events", "people"]), st.integers(1, 5)),
        st.tuples(
            st.just("settle"),
            st.integers(0, 10),
            st.lists(st.sampled_from(["ack", "retry", "bury"]), min_size=1, max_size=3),
        ),
        st.tuples(st.just("requeue")),
        st.tuples(st.just("tick"), st.floats(0.0, 5.0, allow_nan=False)),
    ),
    max_size=40,
)


@given(OPERATIONS)
def test_memory_oldest_age_matches_a_model(operations: list[tuple[t.Any, ...]]) -> None:
    clock = Clock(0.0)
    store = memory(clock)
    queued: dict[str, float] = {}  # body -> when it was queued (bodies are unique)
    dead: set[str] = set()
    claimed: list[Batch] = []
    made = 0
    for operation in operations:
        kind = operation[0]
        if kind == "put":
            _, endpoint, count = operation
            bodies = [f"m{made + i}" for i in range(count)]
            made += count
            assert store.put([(endpoint, body) for body in bodies]) == 0
            queued.update(dict.fromkeys(bodies, clock.now))
        elif kind == "claim":
            batch = store.claim(operation[1], clock.now, operation[2], 10**6)
            if batch is not None:
                claimed.append(batch)
        elif kind == "settle" and claimed:
            batch = claimed.pop(operation[1] % len(claimed))
            ways = operation[2]
            # Each way settles a part: the positions whose index modulo the ways is its own.
            for number, way in enumerate(ways):
                positions = [i for i in range(len(batch.ids)) if i % len(ways) == number]
                if not positions:
                    continue
                piece = part(batch, positions)
                if way == "ack":
                    store.ack(piece)
                    for body in piece.bodies:
                        del queued[body]
                elif way == "retry":
                    store.retry(piece, clock.now)  # due at once: claimable again
                else:
                    store.bury(piece, "refused")
                    for body in piece.bodies:
                        del queued[body]
                        dead.add(body)
        elif kind == "requeue":
            store.requeue_dead()
            queued.update(dict.fromkeys(dead, clock.now))
            dead.clear()
        elif kind == "tick":
            clock.now += operation[1]
        assert store.pending() == len(queued)
        expected = clock.now - min(queued.values()) if queued else None
        assert store.oldest_age() == expected


def test_spool_age_of_waiting_leased_and_requeued_rows(tmp_path: pathlib.Path) -> None:
    spool = SqliteSpool(str(tmp_path / "s.db"), 100, 10**6)
    before = time.time()
    spool.put([("events", "a"), ("people", "b")])
    after = time.time()
    age = spool.oldest_age(now=after + 10)
    assert age is not None and 10 <= age <= 10 + (after - before)
    current = spool.oldest_age()
    assert current is not None and 0 <= current < 5  # measured on the wall clock

    leased = spool.claim("events", time.time(), 10, 10**6)
    assert leased is not None
    assert spool.oldest_age(now=after + 10) == age  # being sent: still waiting
    spool.bury(leased, "refused")
    people = spool.claim("people", time.time(), 10, 10**6)
    assert people is not None
    spool.ack(people)
    assert spool.oldest_age() is None

    requeued_at = time.time()
    assert spool.requeue_dead() == 1  # queued again now
    again = spool.oldest_age(now=requeued_at + 10)
    assert again is not None and again <= 10
    assert spool.oldest_age(now=0.0) == 0.0


def test_spool_lanes_have_their_own_age(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "s.db")
    mixpanel = SqliteSpool(path, 100, 10**6)
    customerio = SqliteSpool(path, 100, 10**6, lane="customerio", endpoints=("track",))
    mixpanel.put([("events", "a")])
    assert mixpanel.oldest_age() is not None
    assert customerio.oldest_age() is None
