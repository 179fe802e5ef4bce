"""Accuracy of the per-account metrics: every stored figure against an independent reference.

A seeded random export (default 120,000 events, 60 accounts, 14 days) holds what a real one
does: events sent twice (the Raw Event Export is not deduplicated), events out of order, sessions
across midnight, users in two accounts, users entering a funnel on several days. It is synced
through the real path (``pmixpanel sync``'s :func:`~pyramid_mixpanel.metrics.sync` against the
loopback query stand-in, into an SQLite store), then every stored figure is compared with
:class:`tests.test_metrics_reference.Reference` (the plain "keep every event, then count"
computation) and, for funnels over a range, with a count of each user's first entry written
here:

- per account and day: total events, unique users, sessions, events per user, events per name,
  breakdowns, engagement score;
- per account, funnel and entry day: users at each step;
- per account and funnel over ranges (the whole period, a week, a day, three middle days):
  unique users at each step, each user once by their first entry in the range (Mixpanel's
  "Uniques" funnels).

Target: exact (the customer-success PRD's bar is > 99 %). Run: ``python -m benchmarks.accuracy``
(``--events N --accounts N``); ``tests/test_metrics_accuracy.py`` runs a smaller stream in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import random
import sys
import tempfile
import time
import typing as t
from collections import defaultdict

from pyramid_mixpanel.metrics import MetricsStore, parse_metrics_settings, sync
from tests.metrics_helpers import DAY, T0, day
from tests.query_standin import QueryStandIn
from tests.test_metrics_reference import Reference

FUNNELS = "Signup: Page Viewed > User Signed Up > Plan Upgraded\nExport: Search > Report Exported"
WINDOW_HOURS = 30
NAMES = ("Page Viewed", "User Signed Up", "Plan Upgraded", "Search", "Report Exported")
PLANS = ("free", "pro", "team", None)


@dataclasses.dataclass(frozen=True)
class Figures:
    """How many figures were compared, and the ones that differ."""

    compared: int
    wrong: list[str]


def stream(seed: int, events: int, accounts: int, days: int) -> list[dict[str, t.Any]]:
    """A random export: copies, disorder, midnight sessions, shared users, repeated entries."""
    rng = random.Random(seed)
    names = [f"acct-{n:03d}" for n in range(accounts)]
    users = [f"user-{n:05d}" for n in range(max(accounts * 40, 1))]
    # Each user belongs to one account, one in ten to a second one too.
    home = {user: [rng.choice(names)] for user in users}
    for user in rng.sample(users, len(users) // 10):
        home[user].append(rng.choice(names))
    out: list[dict[str, t.Any]] = []
    while len(out) < events:
        user = rng.choice(users)
        account = rng.choice(home[user])
        number = rng.randrange(days)
        # Bursts of a visit: several events minutes apart, often near midnight.
        start = number * DAY + rng.choice(
            (rng.randrange(DAY), DAY - rng.randrange(1, 3600), rng.randrange(1800))
        )
        moment = start
        for _ in range(rng.randint(1, 8)):
            moment += rng.choice((5, 60, 600, 1799, 1801, 4000))
            if moment >= days * DAY:
                break
            name = rng.choices(NAMES, weights=(6, 2, 1, 3, 2))[0]
            properties: dict[str, t.Any] = {
                "time": T0 + moment + rng.choice((0, 0, 0, 0.5)),
                "distinct_id": user,
                "$insert_id": f"{len(out):08x}",
                "company_id": account,
            }
            plan = rng.choice(PLANS)
            if plan is not None:
                properties["plan"] = plan
            out.append({"event": name, "properties": properties})
    # A tenth sent twice (exact copies: a retry), then the whole export out of order.
    out += [dict(e) for e in rng.sample(out, len(out) // 10)]
    rng.shuffle(out)
    return out[: events + events // 10]


def settings_for(api: QueryStandIn, database: str) -> dict[str, str]:
    values = api.settings(
        **{
            "mixpanel.token": "false",
            "mixpanel.metrics.database_url": database,
            "mixpanel.metrics.account_property": "company_id",
            "mixpanel.metrics.breakdowns": "plan",
            "mixpanel.metrics.signals": "Report Exported = reporting\nSearch = discovery",
            "mixpanel.metrics.funnels": FUNNELS,
            "mixpanel.metrics.funnel_window_hours": str(WINDOW_HOURS),
            "mixpanel.metrics.saved_funnels": "",
            "mixpanel.metrics.profile_account_property": "off",
            "mixpanel.metrics.alert": "",
            "mixpanel.metrics.chunk_days": "3",
        }
    )
    values.pop("mixpanel.delivery")
    return values


def range_reference(
    events: list[dict[str, t.Any]], first: dt.date, last: dt.date
) -> dict[tuple[str, str], list[int]]:
    """(account, funnel) -> unique users at each step over ``first``..``last``, by first entry.

    Written from the definition: deduplicate, then per account and user walk the funnel from the
    first time of the first step on each day; the earliest entry day in the range decides.
    """
    config = parse_metrics_settings(
        {"mixpanel.metrics.funnels": FUNNELS, "mixpanel.metrics.account_property": "x"}
    )
    window = WINDOW_HOURS * 3600
    seen: set[tuple[object, ...]] = set()
    history: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for event in events:
        p = event["properties"]
        key = (event["event"], p["distinct_id"], int(p["time"]), p["$insert_id"])
        if key in seen:
            continue
        seen.add(key)
        history[p["company_id"], p["distinct_id"]].append((int(p["time"]), event["event"]))
    low = (first - dt.date(1970, 1, 1)).days
    high = (last - dt.date(1970, 1, 1)).days
    out: dict[tuple[str, str], list[int]] = {}
    for funnel in config.funnels:
        steps = funnel.steps
        for (account, _), moments in history.items():
            moments.sort()
            entries: dict[int, int] = {}
            for moment, name in moments:
                if name == steps[0]:
                    entries.setdefault(moment // DAY, moment)
            in_range = [n for n in entries if low <= n <= high]
            if not in_range:
                continue
            start = entries[min(in_range)]
            reached, previous = 0, start
            for step in range(1, len(steps)):
                later = [
                    m for m, n in moments if n == steps[step] and previous <= m <= start + window
                ]
                if not later:
                    break
                reached, previous = step, min(later)
            row = out.setdefault((account, funnel.name), [0] * len(steps))
            for step in range(reached + 1):
                row[step] += 1
    return out


def check(events: list[dict[str, t.Any]], days: int) -> Figures:
    """Sync ``events`` into a fresh store and compare every stored figure with the references."""
    first, last = day(0), day(days - 1)
    compared, wrong = 0, []
    with QueryStandIn() as api, tempfile.TemporaryDirectory() as folder:
        api.events = events
        database = f"sqlite:///{folder}/accuracy.db"
        settings = settings_for(api, database)
        with MetricsStore(database) as store:
            sync(settings, first, last, progress=False, store=store, today=day(days + 30))
            config = parse_metrics_settings(settings)
            reference = Reference(config)
            expected = reference.chunk(first, last, events)
            finished = reference.finish()
            funnel_rows = {(f.account, f.funnel_id, f.date): f.steps for f in finished.funnels}
            for f in expected.funnels + expected.open_funnels:
                funnel_rows.setdefault((f.account, f.funnel_id, f.date), f.steps)
            daily = {(d.account, d.date): d for d in expected.daily}
            accounts = store.accounts()
            for account in accounts:
                for stored in store.daily(account, first, last):
                    want = daily.pop((account, stored.date), None)
                    got = dataclasses.replace(stored, anomaly=None)
                    compared += 9
                    if want is None or got != dataclasses.replace(want, anomaly=None):
                        wrong.append(f"daily {account} {stored.date}: {got} != {want}")
                for row in store.funnels(account, first, last):
                    want_steps = funnel_rows.pop((account, row.funnel_id, row.date), None)
                    compared += len(row.steps)
                    if row.steps != want_steps:
                        wrong.append(f"funnel {account} {row.funnel_id} {row.date}: {row.steps}")
            wrong += [f"daily missing: {key}" for key in daily]
            wrong += [f"funnel row missing: {key}" for key in funnel_rows]
            ranges = [(first, last), (day(days - 7), last), (day(2), day(2)), (day(4), day(6))]
            for low, high in ranges:
                want_totals = range_reference(events, low, high)
                for account in accounts:
                    for total in store.funnel_totals(account, low, high):
                        steps = want_totals.pop((account, total.funnel_id), None)
                        compared += len(total.steps)
                        if total.steps != steps:
                            wrong.append(f"range {low}..{high} {account} {total.funnel_id}:"
                                         f" {total.steps} != {steps}")  # fmt: skip
                wrong += [f"range {low}..{high} missing: {key}" for key in want_totals]
    return Figures(compared, wrong)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--accounts", type=int, default=60)
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args(argv)
    # The sync logs each anomaly it flags (random data has a few): not what this measures.
    logger = logging.getLogger("pyramid_mixpanel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    started = time.perf_counter()
    try:
        events = stream(7, args.events, args.accounts, args.days)
        figures = check(events, args.days)
    finally:
        logger.setLevel(level)
    share = 1 - len(figures.wrong) / max(figures.compared, 1)
    print(
        f"accuracy: {len(events):,} exported events ({args.events // 10:,} of them copies),"
        f" {args.accounts} accounts, {args.days} days: {figures.compared:,} stored figures"
        f" compared, {len(figures.wrong)} wrong ({share:.4%} exact)"
        f" in {time.perf_counter() - started:.0f} s"
    )
    for line in figures.wrong[:10]:
        print("  ", line)
    ok = not figures.wrong
    print(f"   target: exact (PRD: > 99 %) -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
