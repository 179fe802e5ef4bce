"""Side by side with the peers: the caller's thread, delivery and the wire, against one fast sink.

Every contender posts to the counting sink of ``benchmarks/sink.py`` (a fresh one per run, in a
process of its own pinned to CPU 0, this process to the other CPUs): it takes several hundred
thousand events/s, so what is measured is the client, not a stand-in's validation.

1. Live tracking. One calling thread sends ``--events`` events (default 200,000), each with the
   contender's own properties plus ``Path`` and ``Title``; medians of ``--rounds`` rounds (default
   3), the contenders alternating within each round. Printed per contender: µs per call on the
   caller's thread (mean, p99), events/s delivered (first call until the sink holds them all;
   the sink answers when it does, with a deadline, so nothing sleeps or polls), bytes of request
   body per event and events per HTTP request.

   - ``pyramid_mixpanel``: ``MixpanelTrack.track`` then ``flush()`` per event (what a request's
     release does) with the background memory queue, then the same with the SQLite spool
     (``mixpanel.spool_path``), with its journal (``mixpanel.spool_commit = request``, the
     default: on file before the hand-over returns) and with group commits (``= group``).
   - ``mixpanel`` (official): ``BufferedConsumer(max_size=50)``, posting on the caller's thread.
   - ``mixpanel-py-async``: its ``AsyncBufferedConsumer`` (a thread per flush) with
     ``max_size=50`` as the official one (its default is 20; ``/track`` takes 50 per request).
   - ``posthog``: ``Posthog(host=sink)``, ``capture``, at its defaults (100 events a batch, one
     sender thread, no gzip) but ``max_queue_size``: its default of 10,000 drops what a burst
     queues beyond it (about a quarter of 200,000 events, measured), so it gets twice the run,
     as our queue does.
   - ``segment-analytics-python``: ``Client(host=sink)``, ``track``, at its defaults (100 events a
     batch, one thread, no gzip) but ``max_queue_size``, for the same reason.

   What a client still holds after the last call (its flush) counts in the delivered rate, not
   in the per-call figures. Each call goes through one Python function of the benchmark (the
   same small cost for every contender). Targets (memory queue): mean <= 15 µs, p99 <= 100 µs,
   and a mean below every peer's.

2. Historical import, ``--import-events`` rows (default 100,000): ``import_file`` on a JSONL file
   against ``mixpanel-utils`` ``MixpanelUtils.import_events`` on the same rows as a JSON array
   file, each with its default concurrency (10 senders; ``cpu_count() * 2`` threads). MixpanelUtils
   builds its ``/import`` URL from the instance attribute ``import_api``, set in ``__init__`` to
   ``https://api.mixpanel.com``: the benchmark overwrites that attribute with the sink's URL
   (nothing else is patched). Its failure dumps (``import_backup.txt``) would land in a
   temporary folder. Target: ours / mixpanel-utils >= 2.0 events/s.

A peer that cannot be imported or fails is reported in one line, and the run goes on. Timings
are printed with their targets, never asserted. Output: a plain-text table, the same as Markdown
(for ``docs/performance.md``) with the machine's facts and the date.

Run: ``make bench`` (or ``python -m benchmarks.peers [--events N] [--rounds R]``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import typing as t

from benchmarks import sink
from benchmarks.standin import PIN
from pyramid_mixpanel import EventProperties, Events, MixpanelTrack
from pyramid_mixpanel.importer import import_file
from pyramid_mixpanel.runtime import build_runtime
from pyramid_mixpanel.settings import parse_settings

TOKEN = "bench-token"
DEADLINE = 300.0  # seconds for a run's events to arrive once the last call returned
MEAN_TARGET, P99_TARGET, RATE_TARGET, IMPORT_TARGET = 15.0, 100.0, 50_000, 2.0
INSTALL = "not installed (pip install -e '.[bench]')"


class Client(t.NamedTuple):
    """What a contender does per event, once the calls are over (its flush), and at the end."""

    send: t.Callable[[int], object]
    finish: t.Callable[[], object]
    close: t.Callable[[], object]


class Run(t.NamedTuple):
    mean_us: float
    p99_us: float
    per_s: float
    bytes_per_event: float
    per_request: float
    delivered: int


class UnavailableError(Exception):
    """A peer that cannot run here (not installed): reported in one line."""


def nothing() -> None:
    return None


# -- contenders: each builds a client posting to the sink at base_url --------------------------
# The peers' imports ignore their typing: they come from the bench extra, untyped or absent
# where only the test extra is installed (make test's mypy), so which code applies varies.


def ours(base_url: str, total: int, spool: str | None = None) -> Client:
    settings = {
        "mixpanel.token": TOKEN,
        "mixpanel.api_host": base_url,
        "mixpanel.read_timeout": "30",
        "mixpanel.queue_max_messages": str(2 * total),
        "mixpanel.queue_max_bytes": str(1 << 30),
    }
    folder = tempfile.mkdtemp() if spool else None
    if folder and spool:
        settings["mixpanel.spool_path"] = os.path.join(folder, "spool.db")
        settings["mixpanel.spool_commit"] = spool
    runtime = build_runtime(settings)
    track = MixpanelTrack(runtime, distinct_id="bench-user")
    page_viewed, path, title = Events.page_viewed, EventProperties.path, EventProperties.title

    def send(i: int) -> None:
        track.track(page_viewed, {path: f"/p/{i % 50}", title: "Title"})
        track.flush()  # what the end of a request does: hand its events to the sender

    def close() -> None:
        runtime.close()
        if folder:
            shutil.rmtree(folder)

    return Client(send, nothing, close)


def official(base_url: str, total: int) -> Client:
    import mixpanel

    consumer = mixpanel.BufferedConsumer(
        max_size=50, events_url=f"{base_url}/track", request_timeout=30
    )
    client = mixpanel.Mixpanel(TOKEN, consumer=consumer)

    def send(i: int) -> None:
        client.track("bench-user", "Page Viewed", {"Path": f"/p/{i % 50}", "Title": "Title"})

    return Client(send, consumer.flush, nothing)


def py_async(base_url: str, total: int) -> Client:
    try:
        import mixpanel_async  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as error:
        raise UnavailableError(INSTALL) from error
    import mixpanel

    consumer = mixpanel_async.AsyncBufferedConsumer(
        max_size=50, events_url=f"{base_url}/track", request_timeout=30
    )
    client = mixpanel.Mixpanel(TOKEN, consumer=consumer)

    def send(i: int) -> None:
        client.track("bench-user", "Page Viewed", {"Path": f"/p/{i % 50}", "Title": "Title"})

    def finish() -> None:
        # flush(async_=False) does not wait for a flush thread still posting: both would take
        # from the same buffer. Wait for it first.
        if consumer.flushing_thread is not None:
            consumer.flushing_thread.join()
        consumer.flush(async_=False)

    return Client(send, finish, nothing)


def posthog(base_url: str, total: int) -> Client:
    try:
        from posthog import Posthog  # type: ignore[import-not-found,unused-ignore]
    except ImportError as error:
        raise UnavailableError(INSTALL) from error

    client = Posthog("phc_bench", host=base_url, max_queue_size=2 * total)

    def send(i: int) -> None:
        client.capture(
            "Page Viewed",
            distinct_id="bench-user",
            properties={"Path": f"/p/{i % 50}", "Title": "Title"},
        )

    return Client(send, client.flush, client.shutdown)


def segment(base_url: str, total: int) -> Client:
    try:
        from segment.analytics import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            Client as Segment,
        )
    except ImportError as error:
        raise UnavailableError(INSTALL) from error

    client = Segment("bench-write-key", host=base_url, max_queue_size=2 * total)

    def send(i: int) -> None:
        client.track(
            user_id="bench-user",
            event="Page Viewed",
            properties={"Path": f"/p/{i % 50}", "Title": "Title"},
        )

    return Client(send, client.flush, client.shutdown)


CONTENDERS: list[tuple[str, str | None, t.Callable[[str, int], Client]]] = [
    # (name in the table, distribution for its version, client factory)
    ("pyramid_mixpanel, memory queue", None, ours),
    ("pyramid_mixpanel, spool, journal (request)", None, lambda u, n: ours(u, n, "request")),
    ("pyramid_mixpanel, spool, group commit", None, lambda u, n: ours(u, n, "group")),
    ("mixpanel BufferedConsumer (sync)", "mixpanel", official),
    ("mixpanel-py-async", "mixpanel-py-async", py_async),
    ("posthog", "posthog", posthog),
    ("segment-analytics-python", "segment-analytics-python", segment),
]


def measure(factory: t.Callable[[str, int], Client], total: int) -> Run:
    """One run against a fresh sink: the calls timed one by one, then until all arrived."""
    with sink.server() as api:
        client = factory(api.base_url, total)
        try:
            send = client.send
            clock = time.perf_counter
            timings: list[float] = []
            append = timings.append
            started = clock()
            for i in range(total):
                before = clock()
                send(i)
                append(clock() - before)
            client.finish()
            delivered = api.wait_for(total, DEADLINE)
            elapsed = clock() - started
        finally:
            client.close()
        ordered = sorted(timings)
        return Run(
            statistics.fmean(timings) * 1e6,
            ordered[int(len(ordered) * 0.99)] * 1e6,
            delivered / elapsed,
            api.wire_bytes() / max(1, delivered),
            delivered / max(1, api.requests()),
            delivered,
        )


def median_run(runs: list[Run]) -> Run:
    """Each figure's median over the rounds; of the delivered counts, the smallest."""
    return Run(
        mean_us=statistics.median(run.mean_us for run in runs),
        p99_us=statistics.median(run.p99_us for run in runs),
        per_s=statistics.median(run.per_s for run in runs),
        bytes_per_event=statistics.median(run.bytes_per_event for run in runs),
        per_request=statistics.median(run.per_request for run in runs),
        delivered=min(run.delivered for run in runs),
    )


def live(total: int, rounds: int) -> tuple[list[tuple[str, Run]], list[str]]:
    """Section 1: each contender's medians (labelled with its version), and one-line notes."""
    runs: dict[str, list[Run]] = {name: [] for name, _, _ in CONTENDERS}
    notes: dict[str, str] = {}
    failed: set[str] = set()
    for number in range(rounds):
        for name, _, factory in CONTENDERS:  # alternating: a slow moment hits everyone
            if name in failed:
                continue
            try:
                run = measure(factory, total)
            except UnavailableError as error:
                failed.add(name)
                notes[name] = f"skipped: {error}"
                continue
            except Exception as error:  # a peer failing is reported, not fatal
                failed.add(name)
                notes[name] = f"failed in round {number + 1}: {type(error).__name__}: {error}"
                continue
            runs[name].append(run)
            if run.delivered < total:
                notes[name] = f"only {run.delivered:,} of {total:,} events arrived in a round"
    table = [
        (f"{name} {version(distribution)}", median_run(runs[name]))
        for name, distribution, _ in CONTENDERS
        if runs[name]
    ]
    return table, [f"{name}: {note}" for name, note in notes.items()]


def targets(table: list[tuple[str, Run]]) -> list[str]:
    """Ratios to the memory queue, and the targets' verdicts."""
    ours = [run for label, run in table if label.startswith("pyramid_mixpanel, memory")]
    if not ours:
        return ["targets: no figures for the memory queue"]
    memory = ours[0]
    peers = [(label, run) for label, run in table if not label.startswith("pyramid_mixpanel")]
    lines = [
        f"{label}: mean {run.mean_us / memory.mean_us:.1f}x ours, p99"
        f" {run.p99_us / memory.p99_us:.1f}x ours, events/s {run.per_s / memory.per_s:.2f}x ours"
        for label, run in peers
    ]
    fastest = bool(peers) and all(memory.mean_us < run.mean_us for _, run in peers)
    for text, ok in (
        (
            f"memory queue mean <= {MEAN_TARGET:g} µs ({memory.mean_us:.1f})",
            memory.mean_us <= MEAN_TARGET,
        ),
        (
            f"memory queue p99 <= {P99_TARGET:g} µs ({memory.p99_us:.1f})",
            memory.p99_us <= P99_TARGET,
        ),
        (
            f"memory queue delivers >= {RATE_TARGET:,} events/s ({memory.per_s:,.0f})",
            memory.per_s >= RATE_TARGET,
        ),
        ("ours is the fastest on the caller's thread (mean below every peer's)", fastest),
    ):
        lines.append(f"target: {text}: {'PASS' if ok else 'FAIL'}")
    return lines


# -- section 2: historical import ------------------------------------------------------------


# The rows of benchmarks/import.py (a year of history, four events, five properties); its
# module name is a keyword, hence import_module.
rows = importlib.import_module("benchmarks.import").rows


@contextlib.contextmanager
def working_directory(path: str) -> t.Iterator[None]:
    """MixpanelUtils writes its failure dumps to the working directory: not the repo's."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def import_ours(jsonl: str, total: int) -> float:
    with sink.server() as api:
        settings = parse_settings(
            {
                "mixpanel.token": TOKEN,
                "mixpanel.api_host": api.base_url,
                "mixpanel.read_timeout": "60",
            }
        )
        started = time.perf_counter()
        report = import_file(jsonl, settings, progress=False, restart=True)
        delivered = api.wait_for(total, DEADLINE)
        elapsed = time.perf_counter() - started
    if not report.ok or delivered != total:
        raise RuntimeError(f"{delivered} of {total} arrived: {report.summary()}")
    return total / elapsed


def import_utils(array: str, total: int) -> float:
    try:
        from mixpanel_utils import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            MixpanelUtils,
        )
    except ImportError as error:
        raise UnavailableError(INSTALL) from error

    with sink.server() as api, working_directory(os.path.dirname(array)):
        utils = MixpanelUtils("bench-secret", token=TOKEN, timeout=60)
        utils.import_api = api.base_url  # instead of https://api.mixpanel.com
        started = time.perf_counter()
        utils.import_events(array, timezone_offset=0)
        delivered = api.wait_for(total, DEADLINE)
        elapsed = time.perf_counter() - started
    if delivered != total:
        raise RuntimeError(f"only {delivered:,} of {total:,} rows arrived")
    return total / elapsed


def historical(total: int, rounds: int) -> list[str]:
    """Section 2: events/s of each importer (medians), the ratio and its verdict."""
    with tempfile.TemporaryDirectory() as folder:
        jsonl, array = os.path.join(folder, "events.jsonl"), os.path.join(folder, "events.json")
        records = list(rows(total))
        with open(jsonl, "w") as by_line, open(array, "w") as whole:
            by_line.writelines(json.dumps(row) + "\n" for row in records)
            json.dump(records, whole)  # mixpanel-utils reads a JSON array (or CSV), not JSONL
        del records
        ours_rates, utils_rates = [], []
        note = ""
        for _ in range(rounds):  # alternating, so a slow moment of the machine hits both
            ours_rates.append(import_ours(jsonl, total))
            if note:
                continue
            try:
                utils_rates.append(import_utils(array, total))
            except UnavailableError as error:
                note = f"skipped: {error}"
            except Exception as error:  # a peer failing is reported, not fatal
                note = f"failed: {type(error).__name__}: {error}"
    a = statistics.median(ours_rates)
    lines = [f"pyramid_mixpanel import_file {version(None)}: {a:,.0f} events/s"]
    if note:
        return [*lines, f"mixpanel-utils: {note}"]
    b = statistics.median(utils_rates)
    verdict = "PASS" if a / b >= IMPORT_TARGET else "FAIL"
    return [
        *lines,
        f"mixpanel-utils import_events {version('mixpanel-utils')}: {b:,.0f} events/s",
        f"target: ours / mixpanel-utils >= {IMPORT_TARGET:g} ({a / b:.2f}): {verdict}",
    ]


# -- output ----------------------------------------------------------------------------------

HEADERS = (
    "contender",
    "µs per call, mean",
    "µs per call, p99",
    "events/s delivered",
    "bytes per event",
    "events per request",
)


def cells(label: str, run: Run) -> list[str]:
    return [
        label,
        f"{run.mean_us:.1f}",
        f"{run.p99_us:.1f}",
        f"{run.per_s:,.0f}",
        f"{run.bytes_per_event:.0f}",
        f"{run.per_request:.0f}",
    ]


def plain(table: list[tuple[str, Run]]) -> list[str]:
    grid = [list(HEADERS), *(cells(label, run) for label, run in table)]
    widths = [max(len(line[column]) for line in grid) for column in range(len(HEADERS))]
    return [
        "  ".join(
            value.ljust(width) if column == 0 else value.rjust(width)
            for column, (value, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in grid
    ]


def markdown(table: list[tuple[str, Run]]) -> list[str]:
    return [
        "| " + " | ".join(HEADERS) + " |",
        "|---" + "|---:" * (len(HEADERS) - 1) + "|",
        *("| " + " | ".join(cells(label, run)) + " |" for label, run in table),
    ]


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pinned = "the sink pinned to CPU 0, the clients to the others" if PIN else "nothing pinned"
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()},"
        f" {datetime.date.today().isoformat()}; {pinned}"
    )


def version(distribution: str | None) -> str:
    try:
        return importlib.metadata.version(distribution or "pyramid_mixpanel")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("--events", type=int, default=200_000, help="events per contender")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are printed)")
    parser.add_argument("--import-events", type=int, default=100_000, help="rows imported")
    args = parser.parse_args(argv)
    for name in ("pyramid_mixpanel", "posthog", "segment", "mixpanel_utils"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if PIN:  # before any thread starts (threads inherit it); each sink moves itself to CPU 0
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    facts = machine()
    print(f"Peers side by side: {facts}")

    heading = f"{args.events:,} events from one calling thread, medians of {args.rounds} rounds"
    print(f"\n1. Live tracking: {heading}")
    table, notes = live(args.events, args.rounds)
    for line in [*plain(table), *notes, *targets(table)]:
        print(f"   {line}")

    print(f"\n2. Historical import: {args.import_events:,} rows, medians of {args.rounds} rounds")
    imported = historical(args.import_events, args.rounds)
    for line in imported:
        print(f"   {line}")

    print(f"\nMarkdown (docs/performance.md):\n\n{heading}; {facts}.\n")
    print("\n".join(markdown(table)))
    if notes:
        print("\n" + "\n".join(f"- {note}" for note in notes))
    print(f"\nHistorical import of {args.import_events:,} rows: " + "; ".join(imported) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
