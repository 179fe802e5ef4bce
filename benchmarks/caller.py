"""The caller's thread while the sender is busy: what one ``track()`` costs, side by side.

200,000 events from one thread, each ``track()`` followed by ``flush()`` (what a request's
release does), delivered to the loopback Mixpanel in a process of its own (benchmarks/standin.py),
in the same run:

- ``MixpanelTrack`` with the background memory queue (the default);
- the same with the durable SQLite spool (``mixpanel.spool_path``);
- the official ``mixpanel.Mixpanel`` with its ``BufferedConsumer`` posting to the same server on
  the caller's thread (what any Python app can use): the peer (20,000 events).

Printed per contender: µs per event on the caller's thread (mean, p99), events per second
delivered (first call until the stand-in holds them all), events per HTTP request, and our
ratios to the peer. Targets (issue "Fastest Mixpanel path in Python"): mean <= 15 µs and p99 <=
100 µs on the caller's thread with the memory queue. The stand-in (Python, validating every
record) takes about 20,000 events/s itself (``benchmarks/delivery.py`` section 2 measures that
limit side by side with a bare client), which bounds the delivered rate of every contender.

Run: ``make bench`` (or ``python -m benchmarks.caller``).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
import typing as t

import mixpanel

from benchmarks import standin
from pyramid_mixpanel import EventProperties, Events, MixpanelTrack
from pyramid_mixpanel.runtime import build_runtime

TOKEN = "bench-token"
TOTAL = 200_000
# The peer posts 50 events per request on the caller's thread: a tenth is enough for its figures
# (per event, and per second), and keeps the run short.
PEER_TOTAL = 20_000


class Result(t.NamedTuple):
    mean_us: float
    p99_us: float
    delivered_per_s: float
    per_request: float


def summary(timings: list[float], started: float, api: standin.Server) -> Result:
    total = len(timings)
    deadline = time.monotonic() + 120
    while api.events() < total and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the stand-in until everything arrived, with a deadline
    delivered = api.events()
    assert delivered == total, f"{delivered} of {total} events arrived"
    elapsed = time.perf_counter() - started
    ordered = sorted(timings)
    return Result(
        statistics.fmean(timings) * 1e6,
        ordered[int(len(ordered) * 0.99)] * 1e6,
        total / elapsed,
        total / max(1, api.requests()),
    )


def ours(spool: str | None = None) -> Result:
    with standin.server() as api:
        settings = {
            "mixpanel.token": TOKEN,
            "mixpanel.api_host": api.base_url,
            "mixpanel.read_timeout": "30",
            "mixpanel.queue_max_messages": str(TOTAL * 2),
            "mixpanel.queue_max_bytes": str(1 << 30),
        }
        if spool:
            settings["mixpanel.spool_path"] = spool
        runtime = build_runtime(settings)
        track = MixpanelTrack(runtime, distinct_id="bench-user")
        path, title = EventProperties.path, EventProperties.title
        timings = []
        clock = time.perf_counter
        started = clock()
        for i in range(TOTAL):
            before = clock()
            track.track(Events.page_viewed, {path: f"/p/{i % 50}", title: "Title"})
            track.flush()
            timings.append(clock() - before)
        result = summary(timings, started, api)
        runtime.close()
    return result


def official() -> Result:
    with standin.server() as api:
        consumer = mixpanel.BufferedConsumer(
            max_size=50, events_url=f"{api.base_url}/track", request_timeout=30
        )
        client = mixpanel.Mixpanel(TOKEN, consumer=consumer)
        timings = []
        clock = time.perf_counter
        started = clock()
        for i in range(PEER_TOTAL):
            before = clock()
            client.track("bench-user", "Page Viewed", {"Path": f"/p/{i % 50}", "Title": "Title"})
            timings.append(clock() - before)
        consumer.flush()
        return summary(timings, started, api)


def main() -> int:
    logging.getLogger("pyramid_mixpanel").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            ("pyramid_mixpanel, memory queue", ours()),
            ("pyramid_mixpanel, SQLite spool", ours(os.path.join(folder, "spool.db"))),
            ("official mixpanel + BufferedConsumer (peer)", official()),
        ]
    print(f"\nCaller's thread while the sender is busy ({TOTAL:,} events, track + flush each)")
    print(f"   {'contender':48}{'mean µs':>9}{'p99 µs':>9}{'events/s':>11}{'per req':>9}")
    for name, r in rows:
        print(
            f"   {name:48}{r.mean_us:>9.1f}{r.p99_us:>9.1f}"
            f"{r.delivered_per_s:>11,.0f}{r.per_request:>9.0f}"
        )
    memory, spool, peer = (r for _, r in rows)
    print(
        f"   ratios to the peer: memory queue mean {memory.mean_us / peer.mean_us:.3f},"
        f" p99 {memory.p99_us / peer.p99_us:.3f}, delivered"
        f" {memory.delivered_per_s / peer.delivered_per_s:.1f}x; spool mean"
        f" {spool.mean_us / peer.mean_us:.3f}; spool / memory queue mean"
        f" {spool.mean_us / memory.mean_us:.1f}"
    )
    for target, ok in (
        ("mean <= 15 µs", memory.mean_us <= 15),
        ("p99 <= 100 µs", memory.p99_us <= 100),
    ):
        print(f"   target (memory queue) {target}: {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
