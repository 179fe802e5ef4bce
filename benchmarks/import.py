# ruff: noqa: N999  # the issue names it benchmarks/import.py; `python -m benchmarks.import` works
"""Historical import throughput: ``import_file`` against a bare client, into the loopback Mixpanel.

The loopback Mixpanel (``tests.loopback.MixpanelStandIn``) runs in a process of its own, as the
real one runs on its own machines; in this process, every microsecond our side spends reading
rows would also hold the server's GIL and be counted twice.

Bare client (the limit)
    The very bodies the import sends (same records, same ``$insert_id``), pre-built into gzip'd
    2000-event batches before the clock starts, posted to ``/import?strict=1`` by as many
    threads as the import has senders, one keep-alive session each.
pyramid_mixpanel
    ``import_file`` on a JSONL file of the same rows: read, validate, check the catalogue,
    normalise time, derive ``$insert_id``, batch, gzip, post, checkpoint.

Each run gets a fresh server (same deduplication work for both); A and B alternate over
several rounds and medians are reported, with the events the server stored checked after each
run. Where the machine allows, the stand-in is pinned to CPU 0 and this process to the others,
so the server's work does not take the client's CPU. Target: ratio >= 0.8. The CPU time of this
process per event is printed too, and how it splits: this thread parses, validates, hashes and
serialises every row (orjson, SHA-256: about 3.5 µs per event on the 2-CPU machine of the issue),
the sender threads gzip every batch and post it (about 2 µs, half of it gzip); the bare client
only posts. The stand-in takes about 80,000 events/s, less than the import sends on the one CPU
it gets there (about 180,000), so the ratio is near 1 (0.95-0.98 measured); ``benchmarks.peers``
measures the import against a sink that only counts.

Run: ``make bench`` (or ``python -m benchmarks.import``).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import typing as t

import requests

from benchmarks.standin import PIN, server
from pyramid_mixpanel.importer import GZIP_LEVEL, import_file, prepare_record
from pyramid_mixpanel.settings import parse_settings

EVENTS = 200_000
BATCH = 2000
ROUNDS = 5
TARGET = 0.8
TOKEN = "bench-token"
NAMES = ("Page Viewed", "Button/Link Clicked", "User Logged In", "User Charged")


def rows(count: int) -> t.Iterator[dict[str, t.Any]]:
    start = int(time.time()) - 400 * 86400  # a year of history, more than /track takes
    for i in range(count):
        yield {
            "event": NAMES[i % len(NAMES)],
            "properties": {
                "distinct_id": f"user-{i % 9973}",
                "time": start + i * 60,
                "Path": f"/articles/{i % 500}",
                "Title": f"Article number {i % 500}",
                "$referrer": "https://example.com/",
            },
        }


def bare(url: str, batches: list[bytes], concurrency: int) -> tuple[float, float]:
    local = threading.local()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}

    def post(payload: bytes) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        answer = session.post(
            f"{url}/import",
            params={"strict": "1", "verbose": "1"},
            data=payload,
            headers=headers,
            auth=(TOKEN, ""),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

    started, cpu = time.perf_counter(), time.process_time()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, batches))
    return EVENTS / (time.perf_counter() - started), per_event(cpu)


def per_event(cpu_started: float) -> float:
    """Microseconds of this process's CPU per event since ``cpu_started``."""
    return (time.process_time() - cpu_started) / EVENTS * 1e6


def ours(url: str, path: str, concurrency: int) -> tuple[float, float, float]:
    """Events/s, and µs of CPU per event: in all, and of this thread (reading, validating)."""
    settings = parse_settings(
        {"mixpanel.token": TOKEN, "mixpanel.api_host": url, "mixpanel.read_timeout": "60"}
    )
    started, cpu, reader = time.perf_counter(), time.process_time(), time.thread_time()
    report = import_file(path, settings, concurrency=concurrency, progress=False, restart=True)
    elapsed = time.perf_counter() - started
    reading = (time.thread_time() - reader) / EVENTS * 1e6
    assert report.ok and report.sent == EVENTS, report.summary()
    return EVENTS / elapsed, per_event(cpu), reading


def main() -> int:
    concurrency = int(os.environ.get("CONCURRENCY", "10"))
    if PIN:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    print(
        f"pmixpanel import throughput: {EVENTS:,} events, batches of {BATCH}, concurrency"
        f" {concurrency}, {ROUNDS} rounds, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "events.jsonl")
        bodies = []
        with open(path, "w") as file:
            for row in rows(EVENTS):
                file.write(json.dumps(row) + "\n")
                bodies.append(prepare_record(row))
        batches = [
            # The very payloads the import sends: same bodies, same gzip level.
            gzip.compress(("[" + ",".join(bodies[i : i + BATCH]) + "]").encode(), GZIP_LEVEL)
            for i in range(0, EVENTS, BATCH)
        ]
        del bodies
        size = os.path.getsize(path)
        limit: list[tuple[float, float]] = []
        measured: list[tuple[float, float, float]] = []
        for _ in range(ROUNDS):
            with server() as api:
                limit.append(bare(api.base_url, batches, concurrency))
                assert api.events() == EVENTS
            with server() as api:
                measured.append(ours(api.base_url, path, concurrency))
                assert api.events() == EVENTS
    a, a_cpu = (statistics.median(column) for column in zip(*limit, strict=True))
    b, b_cpu, b_reading = (statistics.median(column) for column in zip(*measured, strict=True))
    print(f"   input: {size / 2**20:.1f} MiB of JSONL, {size / EVENTS:.0f} bytes per row")
    print(f"   {'':47}{'events/s':>10}{'client CPU µs/event':>21}")
    print(f"   bare client, pre-built gzip'd batches (limit): {a:>10,.0f}{a_cpu:>21.1f}")
    print(f"   pmixpanel import (import_file):                {b:>10,.0f}{b_cpu:>21.1f}")
    print(
        f"   the import's CPU µs/event: {b_reading:.1f} reading, validating, hashing, batching"
        f" (this thread), {b_cpu - b_reading:.1f} gzip and HTTP (the sender threads)"
    )
    print(f"   ratio: {b / a:.2f}  [target: >= {TARGET}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
