"""Export + per-account aggregation throughput and memory, against the limit of the bare loop.

A loopback server on 127.0.0.1 streams a generated Raw Event Export (gzip'd JSON lines, as
Mixpanel sends it) of 1,000,000 and of 200,000 events: 5,000 users of 500 accounts, each with
two sessions a day for 7 days (longer sessions for more events), mostly but not strictly in time
order. Each measurement runs in a
fresh subprocess:

- ``imports``: the imports only (the RSS floor of the other two);
- ``bare``: ``requests`` stream + ``iter_lines`` + ``json.loads``, nothing else;
- ``orjson``: the same with ``orjson.loads`` (the limit);
- ``stream``: ``MixpanelQuery.export`` alone (chunks, limits, decoding), events thrown away;
- ``real``: ``MixpanelQuery.export_chunks`` + :class:`~pyramid_mixpanel.metrics.Aggregator` with
  two breakdowns, three adoption signals and a three-step local funnel, deduplicating on
  (event, distinct_id, time, ``$insert_id``) (what ``pmixpanel sync`` does before it writes the
  day's rows).

Printed: events/s of each, the ratios to the ``orjson`` limit (targets, from the performance
issue: ``stream`` >= 0.8, ``real`` >= 0.5), and each process's peak RSS (``ru_maxrss``) for both
sizes, to show that memory follows users x days, not events.

Run: ``python -m benchmarks.export`` (``--repeat N`` runs each measurement N times, best kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIZES = (1_000_000, 200_000)
ACCOUNTS = 500
USERS = 5_000
DAYS = 7
FIRST = dt.date(2026, 1, 1)
LAST = FIRST + dt.timedelta(days=DAYS - 1)
T0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp())
NAMES = (
    ("Page Viewed", 50),
    ("Button Clicked", 20),
    ("Search Performed", 15),
    ("Report Exported", 8),
    ("User Signed Up", 4),
    ("Plan Upgraded", 3),
)
METRICS_SETTINGS = {
    "mixpanel.metrics.account_property": "company_id",
    "mixpanel.metrics.breakdowns": "$browser, plan",
    "mixpanel.metrics.signals": (
        "Report Exported = reporting\nSearch Performed = discovery\nPlan Upgraded = billing"
    ),
    "mixpanel.metrics.funnels": "Signup: Page Viewed > User Signed Up > Plan Upgraded",
}


# -- data and server --------------------------------------------------------------------------


def generate(count: int, path: str, seed: int = 7) -> None:
    """Write ``count`` events as gzip'd JSON lines, sorted by time with local disorder.

    Every user has the same two sessions every day whatever ``count`` (only the sessions'
    length changes), so both sizes have the same users x days.
    """
    rng = random.Random(seed)
    names = [name for name, _ in NAMES]
    weights = [weight for _, weight in NAMES]
    sessions = [(user, day) for user in range(USERS) for day in range(DAYS) for _ in range(2)]
    lengths = [count // len(sessions)] * len(sessions)
    for index in rng.sample(range(len(sessions)), count % len(sessions)):
        lengths[index] += 1
    events: list[tuple[int, str]] = []
    for (user, day), length in zip(sessions, lengths, strict=True):
        moment = T0 + day * 86_400 + rng.randrange(86_400 - 3 * 3600)
        for _ in range(length):
            moment += rng.randint(2, 240)
            name = rng.choices(names, weights)[0]
            properties = {
                "time": moment,
                "distinct_id": f"user-{user:06d}@customer.example",
                "$insert_id": f"{rng.getrandbits(96):024x}",
                "mp_processing_time_ms": moment * 1000 + 731,
                "company_id": f"account-{user % ACCOUNTS:04d}",
                "plan": ("free", "pro", "team", "enterprise")[user % 4],
                "$browser": ("Chrome", "Firefox", "Safari", "Edge")[user % 7 % 4],
                "$os": ("Linux", "Mac OS X", "Windows")[user % 3],
                "$city": "Ljubljana",
                "$current_url": f"https://app.example.com/p/{rng.randrange(200)}",
                "mp_lib": "web",
            }
            events.append((moment, json.dumps({"event": name, "properties": properties})))
    events.sort()
    # Mixpanel's export is not sorted: swap neighbours here and there.
    lines = [line for _, line in events]
    for _ in range(count // 20):
        at = rng.randrange(count - 50)
        other = at + rng.randrange(1, 50)
        lines[at], lines[other] = lines[other], lines[at]
    with gzip.open(path, "wt", compresslevel=6) as out:
        for line in lines:
            out.write(line + "\n")


class _Handler(BaseHTTPRequestHandler):
    server: _ExportServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        size = os.path.getsize(self.server.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(self.server.path, "rb") as body:
            shutil.copyfileobj(body, self.wfile, 1024 * 1024)


class _ExportServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.path = path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


# -- measurements (each in a fresh process) ---------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _settings(url: str) -> dict[str, str]:
    return {
        "mixpanel.export_api_host": url,
        "mixpanel.query_api_host": url,
        "mixpanel.service_account.username": "bench",
        "mixpanel.service_account.secret": "bench-secret",
        "mixpanel.service_account.project_id": "1",
        **METRICS_SETTINGS,
    }


def child(mode: str, url: str) -> dict[str, float]:
    """One measurement; returns events, seconds and the peak RSS in MiB."""
    import requests

    from pyramid_mixpanel.metrics import Aggregator, parse_metrics_settings
    from pyramid_mixpanel.query import MixpanelQuery

    count = 0
    start = time.perf_counter()
    if mode in ("bare", "orjson"):
        import orjson

        params = {"from_date": FIRST.isoformat(), "to_date": LAST.isoformat()}
        with requests.get(f"{url}/api/2.0/export", params=params, stream=True, timeout=60) as r:
            loads = json.loads if mode == "bare" else orjson.loads
            for line in r.iter_lines(chunk_size=256 * 1024):
                if line:
                    loads(line)
                    count += 1
    elif mode == "stream":
        for _ in MixpanelQuery(_settings(url)).export(FIRST, LAST, chunk_days=DAYS):
            count += 1
    elif mode == "real":
        settings = _settings(url)
        aggregator = Aggregator(parse_metrics_settings(settings))
        query = MixpanelQuery(settings)
        rows = 0
        for chunk in query.export_chunks(FIRST, LAST, chunk_days=DAYS):
            rows += len(aggregator.add_chunk(chunk.from_date, chunk.to_date, chunk.events()).daily)
        rows += len(aggregator.finish())
        stats = aggregator.stats
        count = stats.events + stats.unattributed + stats.outside + stats.duplicates
        assert rows > 0
    seconds = time.perf_counter() - start
    return {"events": count, "seconds": seconds, "rss_mb": _peak_rss_mb()}


def run_child(mode: str, url: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", "--child", mode, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return t.cast(dict[str, float], json.loads(output))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=2, metavar=("COUNT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.generate:
        count, path = int(args.generate[0]), args.generate[1]
        generate(count, path + ".tmp")
        os.replace(path + ".tmp", path)
        return

    print(__doc__.split("\n")[0])
    print(f"{USERS:,} users, {ACCOUNTS} accounts, {DAYS} days; best of {args.repeat} runs\n")
    header = f"{'events':>10}  {'json ev/s':>10}  {'orjson':>10}  {'stream':>10}  {'real':>10}"
    header += f"  {'stream/or':>9}  {'real/or':>7}  {'RSS imports':>11}  {'RSS real':>9}"
    print(header)
    verdicts: list[bool] = []
    directory = os.path.join(tempfile.gettempdir(), "pyramid_mixpanel_bench")
    os.makedirs(directory, exist_ok=True)
    for size in SIZES:
        path = os.path.join(directory, f"export-{size}.jsonl.gz")
        if not os.path.exists(path):
            # In a subprocess: on Linux a child's ru_maxrss starts from its parent's peak at
            # fork time, so this process must stay small for the measurements to be its own.
            subprocess.run(
                [sys.executable, "-m", "benchmarks.export", "--generate", str(size), path],
                check=True,
            )
        server = _ExportServer(path)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        try:
            results: dict[str, dict[str, float]] = {}
            for mode in ("imports", "bare", "orjson", "stream", "real"):
                runs = [run_child(mode, server.url) for _ in range(args.repeat)]
                best = min(runs, key=lambda run: run["seconds"])
                best["rss_mb"] = max(run["rss_mb"] for run in runs)
                if mode != "imports":
                    assert best["events"] == size, (mode, best["events"], size)
                results[mode] = best
        finally:
            server.shutdown()
            server.server_close()
        rate = {
            mode: size / results[mode]["seconds"] for mode in ("bare", "orjson", "stream", "real")
        }
        stream, real = rate["stream"] / rate["orjson"], rate["real"] / rate["orjson"]
        verdicts.append(stream >= 0.8 and real >= 0.5)
        print(
            f"{size:>10,}  {rate['bare']:>10,.0f}  {rate['orjson']:>10,.0f}"
            f"  {rate['stream']:>10,.0f}  {rate['real']:>10,.0f}  {stream:>9.2f}  {real:>7.2f}"
            f"  {results['imports']['rss_mb']:>8.0f} MB  {results['real']['rss_mb']:>6.0f} MB"
        )
    print(
        "\nTargets: stream >= 0.8 and real >= 0.5 of the orjson limit:"
        f" {'PASS' if all(verdicts) else 'FAIL'}; RSS of 'real' about the same for both sizes."
    )


if __name__ == "__main__":
    main()
