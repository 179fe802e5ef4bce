"""Aggregation: known answers on hand-made and generated data, in order and shuffled."""

from __future__ import annotations

import datetime as dt
import random
import typing as t
from collections import defaultdict

import pytest

from pyramid_mixpanel.metrics import (
    Aggregator,
    DailyMetrics,
    FunnelMetrics,
    MetricsSettings,
    ProfileAggregate,
    aggregate_events,
    aggregate_profiles,
    parse_metrics_settings,
)
from pyramid_mixpanel.metrics import aggregate as aggregate_module
from pyramid_mixpanel.metrics.aggregate import (
    NOT_SET,
    OTHER,
    SESSION_GAP,
    TOO_LONG,
    AggregateStats,
    accounts_of,
    add_time,
    day_number,
    from_day_number,
    label,
)

from .metrics_helpers import DAY, T0, account_from_path, day, event

P = "mixpanel.metrics."


def settings(**values: object) -> MetricsSettings:
    raw: dict[str, object] = {P + "account_property": "company_id"}
    raw.update({P + key: value for key, value in values.items()})
    return parse_metrics_settings(raw)


def by_account(rows: list[DailyMetrics]) -> dict[tuple[str, dt.date], DailyMetrics]:
    return {(row.account, row.date): row for row in rows}


# -- sessions ---------------------------------------------------------------------------------


def brute_sessions(times: list[int]) -> list[int]:
    """Sessions as flattened [start, end, ...]: sort, split where the gap exceeds 30 min."""
    ordered = sorted(times)
    out = [ordered[0], ordered[0]]
    for moment in ordered[1:]:
        if moment - out[-1] <= SESSION_GAP:
            out[-1] = moment
        else:
            out += [moment, moment]
    return out


def insert_all(times: list[int]) -> list[int]:
    clusters = [0, times[0], times[0]]
    sessions = 1
    for moment in times[1:]:
        sessions += add_time(clusters, moment)  # the change in the number of sessions
    assert sessions == (len(clusters) - 1) // 2
    return clusters[1:]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0, 1800], [0, 1800]),  # exactly 30 minutes apart: one session
        ([0, 1801], [0, 0, 1801, 1801]),  # one second more: two
        ([3600, 0], [0, 0, 3600, 3600]),  # before the only session, too far to join it
        ([3600, 1800], [1800, 3600]),  # before the only session, joins it
        ([0, 3600, 1800], [0, 3600]),  # bridges two sessions
        ([0, 3600, 1700], [0, 1700, 3600, 3600]),  # extends the earlier one only
        ([0, 3600, 1900], [0, 0, 1900, 3600]),  # extends the later one only
        ([0, 7200, 3600], [0, 0, 3600, 3600, 7200, 7200]),  # a session of its own in between
        ([0, 100, 50], [0, 100]),  # inside a session
        ([0, 10_000, 20_000, 10_000], [0, 0, 10_000, 10_000, 20_000, 20_000]),  # a repeat
    ],
)
def test_add_time_cases(times: list[int], expected: list[int]) -> None:
    assert insert_all(times) == expected
    assert insert_all(times) == brute_sessions(times)


def test_add_time_matches_brute_force_in_any_order() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        count = rng.randint(1, 30)
        times = [rng.randint(0, 6 * 3600) for _ in range(count)]
        rng.shuffle(times)
        assert insert_all(times) == brute_sessions(times), times


def test_sessions_counted_with_out_of_order_events() -> None:
    # One user, events given latest first: 0, 25, 50 min (one session), then 2 h (another).
    times = [7200, 3000, 1500, 0]
    result = aggregate_events(
        [event("A", "u1", s) for s in times], day(0), day(0), settings()
    ).daily
    assert [(r.sessions, r.unique_users, r.total_events) for r in result] == [(2, 1, 4)]
    # The same events in order give the same answer (fast path).
    in_order = aggregate_events(
        [event("A", "u1", s) for s in sorted(times)], day(0), day(0), settings()
    ).daily
    assert in_order == result


def test_a_session_across_midnight_counts_on_both_days() -> None:
    rows = aggregate_events(
        [event("A", "u1", DAY - 60), event("A", "u1", DAY + 60)], day(0), day(1), settings()
    ).daily
    assert [(r.date, r.sessions) for r in rows] == [(day(0), 1), (day(1), 1)]


# -- counting ---------------------------------------------------------------------------------


def test_counts_users_events_and_breakdowns() -> None:
    events = [
        event("Page Viewed", "u1", 0, plan="pro", seats=3),
        event("Page Viewed", "u1", 60, plan="pro", seats=3.5),
        event("Report Exported", "u2", 120, plan="free", beta=True),
        event("Page Viewed", "u3", 180, account="globex", plan=None, beta=False),
        event("Page Viewed", None, 240),  # no distinct_id: an event, not a user
        event("Page Viewed", "u4", 300, account=None),  # no account
        event("Page Viewed", "u5", 360, account=""),  # empty account
        event("Page Viewed", "u6", 3 * DAY),  # outside the days
    ]
    result = aggregate_events(events, day(0), day(1), settings(breakdowns="plan\nseats\nbeta"))
    rows = by_account(result.daily)
    acme = rows["acme", day(0)]
    assert acme == DailyMetrics(
        account="acme",
        date=day(0),
        total_events=4,
        unique_users=2,
        sessions=2,
        avg_events_per_user=2.0,
        event_counts={"Page Viewed": 3, "Report Exported": 1},
        breakdowns={
            "plan": {NOT_SET: 1, "free": 1, "pro": 2},
            "seats": {NOT_SET: 2, "3": 1, "3.5": 1},
            "beta": {NOT_SET: 3, "true": 1},
        },
        engagement_score=0.0,
        anomaly=None,
        hours=[4] + [0] * 23,  # all in the first hour
    )
    globex = rows["globex", day(0)]
    assert (globex.total_events, globex.unique_users, globex.breakdowns["beta"]) == (
        1,
        1,
        {"false": 1},
    )
    assert set(rows) == {("acme", day(0)), ("globex", day(0))}
    stats = result.stats
    assert (stats.events, stats.unattributed, stats.outside) == (5, 2, 1)


def test_a_day_without_users_has_no_average() -> None:
    rows = aggregate_events([event("A", None, 0)], day(0), day(0), settings()).daily
    assert (rows[0].total_events, rows[0].unique_users, rows[0].avg_events_per_user) == (1, 0, 0.0)


def test_days_are_utc_and_times_may_be_floats() -> None:
    events = [event("A", "u1", DAY - 0.5), event("A", "u1", DAY + 0.25)]
    rows = aggregate_events(events, day(0), day(1), settings()).daily
    assert [(r.date, r.total_events) for r in rows] == [(day(0), 1), (day(1), 1)]


def test_group_key_lists_count_for_each_account() -> None:
    events = [event("A", "u1", 0, account=["acme", 7, "acme"]), event("A", "u2", 10, account=7.0)]
    rows = by_account(aggregate_events(events, day(0), day(0), settings()).daily)
    assert rows["acme", day(0)].total_events == 1
    assert (rows["7", day(0)].total_events, rows["7", day(0)].unique_users) == (2, 2)


def test_account_getter() -> None:
    config = parse_metrics_settings({P + "account_getter": account_from_path})
    events = [
        event("A", "u1", 0, account=None, path="/acme/home"),
        event("A", "u2", 0, account=None, path="/"),
    ]
    result = aggregate_events(events, day(0), day(0), config)
    assert [(r.account, r.total_events) for r in result.daily] == [("acme", 1)]
    assert result.stats.unattributed == 1


def test_breakdown_values_are_capped_per_account_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregate_module, "MAX_BREAKDOWN_VALUES", 2)
    events = [event("A", "u", n, path=f"/page/{n % 4}") for n in range(8)]
    events.append(event("A", "u", 9, path="x" * 300))
    rows = aggregate_events(events, day(0), day(0), settings(breakdowns="path")).daily
    assert rows[0].breakdowns["path"] == {"/page/0": 2, "/page/1": 2, OTHER: 5}


def test_label_and_accounts_of() -> None:
    assert [label(v) for v in (None, True, False, "x", 3, 2.5)] == [
        NOT_SET,
        "true",
        "false",
        "x",
        "3",
        "2.5",
    ]
    assert label({"b": 1, "a": [1, 2]}) == '{"a": [1, 2], "b": 1}'
    assert label("y" * 255) == "y" * 255
    assert label("y" * 256) == TOO_LONG  # counted apart, never cut: cut values would merge
    assert accounts_of("acme") == ("acme",)
    assert accounts_of(12) == ("12",)
    assert accounts_of(12.0) == ("12",)
    assert accounts_of(12.5) == ()
    assert accounts_of(True) == ()
    assert accounts_of(None) == ()
    assert accounts_of("") == ()
    assert accounts_of(["a", ["nested"], "b", "a", 3, None]) == ("a", "b", "3")
    assert from_day_number(day_number(day(40))) == day(40)


def test_engagement_score_per_account_day() -> None:
    config = settings(
        signals="Report Exported = reporting\nUser Invited = team\nPage Viewed = core",
        weights="reporting = 3\nteam = 1\ncore = 0",
    )
    events = [
        event("Report Exported", "u1", 0),
        event("Page Viewed", "u1", 10),
        event("User Invited", "u1", 20),
        event("Page Viewed", "u2", 30),
        event("Page Viewed", "u3", 40, account="globex"),
    ]
    rows = by_account(aggregate_events(events, day(0), day(0), config).daily)
    # acme: 2 users; reporting 1/2, team 1/2 -> 100 * (3 * .5 + 1 * .5) / 4 = 50.
    assert rows["acme", day(0)].engagement_score == 50.0
    # globex: only a weight-0 category.
    assert rows["globex", day(0)].engagement_score == 0.0


# -- generated data against a brute-force answer ---------------------------------------------


def generate(seed: int, days: int = 6) -> list[dict[str, t.Any]]:
    rng = random.Random(seed)
    names = ["Page Viewed", "User Signed Up", "Plan Upgraded", "Report Exported"]
    events = []
    for n in range(3000):
        user = f"user-{rng.randint(1, 40)}"
        account = f"acct-{int(user.split('-')[1]) % 5}"
        moment = rng.randint(0, days * DAY - 1)
        name = rng.choices(names, weights=[6, 2, 1, 2])[0]
        events.append(event(name, user, moment, account=account, plan=rng.choice(["a", "b"])))
        if n % 7 == 0:  # bursts: several events within minutes
            for gap in (30, 600, 1799):
                events.append(
                    event("Page Viewed", user, min(moment + gap, days * DAY - 1), account)
                )
    return events


FUNNEL = ("Page Viewed", "User Signed Up", "Plan Upgraded")
WINDOW = 30 * 3600


def brute_force(
    events: list[dict[str, t.Any]],
) -> tuple[
    dict[tuple[str, dt.date], tuple[int, int, int, dict[str, int], dict[str, int]]],
    dict[tuple[str, dt.date], list[int]],
]:
    times: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    names: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    plans: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    by_user: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    # The raw export is not deduplicated (reference/raw-data-export-api): an event with the name,
    # distinct_id, time and $insert_id of an earlier one is the same event, counted once.
    unique = {
        (e["event"], e["properties"]["distinct_id"], e["properties"]["time"],
         e["properties"]["$insert_id"]): e
        for e in reversed(events)
    }  # fmt: skip
    for item in reversed(unique.values()):
        props = item["properties"]
        key = (props["company_id"], props["time"] // DAY)
        times[(*key, props["distinct_id"])].append(props["time"])
        names[key][item["event"]] += 1
        plans[key][label(props.get("plan"))] += 1
        by_user[props["company_id"], props["distinct_id"]].append((props["time"], item["event"]))
    daily: dict[tuple[str, dt.date], list[t.Any]] = {}
    for (account, number, _), moments in times.items():
        row = daily.setdefault((account, from_day_number(number)), [0, 0, 0])
        row[0] += len(moments)
        row[1] += 1
        row[2] += len(brute_sessions(moments)) // 2
    metrics = {
        key: (
            total,
            users,
            sessions,
            dict(names[key[0], day_number(key[1])]),
            dict(plans[key[0], day_number(key[1])]),
        )
        for key, (total, users, sessions) in daily.items()
    }
    funnels: dict[tuple[str, dt.date], list[int]] = {}
    for (account, _), history in by_user.items():
        history.sort()
        entries: dict[int, int] = {}
        for moment, name in history:
            if name == FUNNEL[0]:
                entries.setdefault(moment // DAY, moment)
        for number, start in entries.items():
            reached, last = 0, start
            for step in FUNNEL[1:]:
                nxt = [m for m, n in history if n == step and last <= m <= start + WINDOW]
                if not nxt:
                    break
                reached, last = reached + 1, min(nxt)
            counts = funnels.setdefault((account, from_day_number(number)), [0, 0, 0])
            for index in range(reached + 1):
                counts[index] += 1
    return metrics, funnels


@pytest.mark.parametrize(("seed", "chunk_days"), [(1, 6), (2, 1), (3, 2), (4, 4)])
def test_generated_data_matches_brute_force_in_any_order_and_chunking(
    seed: int, chunk_days: int
) -> None:
    events = generate(seed)
    config = settings(
        breakdowns="plan",
        funnels="Signup: " + " > ".join(FUNNEL),
        funnel_window_hours=str(WINDOW // 3600),
    )
    expected_metrics, expected_funnels = brute_force(events)
    # Shuffle within each chunk: the export is not sorted.
    rng = random.Random(seed)
    aggregator = Aggregator(config)
    daily: list[DailyMetrics] = []
    funnels: list[FunnelMetrics] = []
    for start in range(0, 6, chunk_days):
        first, last = day(start), day(min(start + chunk_days, 6) - 1)
        chunk = [
            e for e in events if first <= from_day_number(e["properties"]["time"] // DAY) <= last
        ]
        rng.shuffle(chunk)
        result = aggregator.add_chunk(first, last, chunk)
        daily += result.daily
        funnels += result.funnels
    funnels += aggregator.finish()
    got = {
        (r.account, r.date): (
            r.total_events,
            r.unique_users,
            r.sessions,
            r.event_counts,
            r.breakdowns["plan"],
        )
        for r in daily
    }
    assert got == expected_metrics
    assert {(f.account, f.date): f.steps for f in funnels} == expected_funnels
    # Each funnel day comes out exactly once.
    assert len(funnels) == len(expected_funnels)
    # Events of one user, name and second carry the same $insert_id here: the same event, once.
    assert sum(r.total_events for r in daily) == len(events) - aggregator.stats.duplicates
    assert aggregator.stats.duplicates == len(events) - len(
        {(e["event"], e["properties"]["distinct_id"], e["properties"]["time"]) for e in events}
    )


# -- duplicates (the export is not deduplicated) ----------------------------------------------


def test_an_event_exported_twice_counts_once() -> None:
    config = settings(breakdowns="plan", signals="Report Exported = reporting")
    first = event("Page Viewed", "u1", 100, plan="pro")
    later = event("Page Viewed", "u1", 5000, plan="pro")
    anonymous = event("Page Viewed", None, 200)
    shared = event("Report Exported", "u2", 300, account=["acme", "globex"])
    unstamped = event("Page Viewed", "u3", 400)
    del unstamped["properties"]["$insert_id"]  # no $insert_id: nothing says it is a copy
    events = [first, later, anonymous, shared, unstamped]
    sent_twice = [
        *events,
        dict(first),  # out of time order: after a later event of the user
        dict(later),  # in order: the same second as the user's latest event
        dict(anonymous),
        dict(shared),
        dict(unstamped),
    ]
    twice = aggregate_events(sent_twice, day(0), day(0), config)
    # Counted once, but for the event without an $insert_id.
    once = aggregate_events([*events, dict(unstamped)], day(0), day(0), config)
    assert twice.daily == once.daily
    assert (twice.stats.duplicates, twice.stats.events) == (4, once.stats.events)
    acme = by_account(twice.daily)["acme", day(0)]
    assert acme.event_counts == {"Page Viewed": 5, "Report Exported": 1}
    assert by_account(twice.daily)["globex", day(0)].event_counts == {"Report Exported": 1}
    # Mixpanel's key is (name, distinct_id, time, $insert_id): change one, and it is another.
    others = [
        event("Page Viewed", "u1", 100, plan="pro", **{"$insert_id": "another"}),
        event("Page Viewed", "u9", 100, plan="pro", **{"$insert_id": "Page Viewed-u1-100"}),
        event("Page Viewed", "u1", 101, plan="pro", **{"$insert_id": "Page Viewed-u1-100"}),
        event("Signed Up", "u1", 100, plan="pro", **{"$insert_id": "Page Viewed-u1-100"}),
    ]
    distinct = aggregate_events([first, *others], day(0), day(0), config)
    assert (distinct.stats.duplicates, distinct.stats.events) == (0, 5)


def test_copies_are_recognised_by_the_first_account_of_the_event() -> None:
    config = settings()
    unstamped = event("Page Viewed", "u1", 10)
    del unstamped["properties"]["$insert_id"]
    stamped = event("Page Viewed", "u1", 20)  # the user's first event with an $insert_id
    original = event("Page Viewed", "u1", 30)
    anonymous = event("Page Viewed", None, 40)
    nameless = event("Page Viewed", None, 50)  # neither a distinct_id nor an $insert_id
    del nameless["properties"]["$insert_id"]
    # The same events, their account property now a list starting with another account.
    moved = [
        {**e, "properties": {**e["properties"], "company_id": ["globex", "acme"]}}
        for e in (original, anonymous)
    ]
    result = aggregate_events(
        [unstamped, stamped, original, anonymous, nameless, dict(stamped), *moved],
        day(0),
        day(0),
        config,
    )
    assert result.stats.duplicates == 1  # the copy of ``stamped``
    daily = by_account(result.daily)
    assert daily["acme", day(0)].total_events == 7
    assert daily["globex", day(0)].total_events == 2


def test_two_later_steps_in_one_second_are_not_duplicates() -> None:
    config = settings(funnels="F: A > B > C", funnel_window_hours="1")
    events = [
        event("A", "u1", 0),
        event("B", "u1", 50),
        event("B", "u1", 20, **{"$insert_id": "first"}),
        event("B", "u1", 20, **{"$insert_id": "second"}),  # another event in the same second
        event("C", "u1", 30),
    ]
    result = aggregate_events(events, day(0), day(0), config)
    assert result.stats.duplicates == 0
    assert by_account(result.daily)["acme", day(0)].event_counts["B"] == 3
    assert [f.steps for f in result.funnels] == [[1, 1, 1]]


def test_duplicates_are_found_within_a_chunk_in_any_order() -> None:
    config = settings()
    events = [event("Page Viewed", f"u{n % 5}", n * 97 % DAY) for n in range(300)]
    copies = [dict(e) for e in events[::3]]
    rng = random.Random(5)
    mixed = events + copies
    rng.shuffle(mixed)
    aggregator = Aggregator(config)
    result = aggregator.add_chunk(day(0), day(0), mixed)
    assert aggregator.stats.duplicates == len(copies)
    assert sum(m.total_events for m in result.daily) == len(events)
    # The next chunk starts afresh (a copy always has its original's time, so its day).
    aggregator.add_chunk(day(1), day(1), [])
    assert aggregator.stats.duplicates == len(copies)


# -- local funnels ----------------------------------------------------------------------------


def funnel_settings(steps: str = "A > B > C", hours: int = 24) -> MetricsSettings:
    return settings(funnels=f"F: {steps}", funnel_window_hours=str(hours))


def steps_of(
    events: list[dict[str, t.Any]], config: MetricsSettings, days: int = 3
) -> dict[tuple[str, dt.date], list[int]]:
    result = aggregate_events(events, day(0), day(days - 1), config)
    return {(f.account, f.date): f.steps for f in result.funnels}


def test_funnel_steps_must_be_in_order_within_the_window() -> None:
    events = [
        # u1 completes in order.
        event("A", "u1", 100),
        event("B", "u1", 200),
        event("C", "u1", 300),
        # u2 does B before A: only A counts.
        event("B", "u2", 100),
        event("A", "u2", 200),
        # u3 does C too late (window 24 h after A).
        event("A", "u3", 100),
        event("B", "u3", 200),
        event("C", "u3", 100 + DAY + 1),
        # u4 does C exactly at the window's end: counts.
        event("A", "u4", 100),
        event("B", "u4", 200),
        event("C", "u4", 100 + DAY),
        # u5 never enters: B and C alone count nothing.
        event("B", "u5", 100),
        event("C", "u5", 200),
        # no distinct_id: not a funnel user.
        event("A", None, 100),
    ]
    assert steps_of(events, funnel_settings()) == {("acme", day(0)): [4, 3, 2]}


def test_funnel_entry_is_the_first_of_the_day_and_each_day_counts() -> None:
    events = [
        event("B", "u1", 50),
        event("A", "u1", 3000),  # arrives before the earlier A
        event("A", "u1", 100),  # the entry of day 0
        event("C", "u1", 2000),
        event("A", "u1", DAY + 10),  # a second entry, on day 1
        event("B", "u1", DAY + 20),
    ]
    # Day 0: entry 100, B at 2000? No B after 100 until DAY + 20 (within 24 h), then no C after.
    assert steps_of(events, funnel_settings()) == {
        ("acme", day(0)): [1, 1, 0],
        ("acme", day(1)): [1, 1, 0],
    }


def test_a_repeated_step_needs_another_event() -> None:
    once = [event("A", "u1", 100), event("B", "u1", 200)]
    twice = [*once, event("B", "u1", 200), event("B", "u1", 300)]
    config = funnel_settings("A > B > B")
    assert steps_of(once, config) == {("acme", day(0)): [1, 1, 0]}
    assert steps_of(twice, config) == {("acme", day(0)): [1, 1, 1]}


def test_funnels_complete_across_chunks_and_settle_when_the_window_closes() -> None:
    config = funnel_settings(hours=36)
    aggregator = Aggregator(config)
    first = aggregator.add_chunk(
        day(0), day(0), [event("A", "u1", 100), event("A", "u2", DAY - 1), event("B", "u1", 200)]
    )
    assert first.funnels == []  # both entries may still progress
    second = aggregator.add_chunk(
        day(1), day(1), [event("C", "u1", DAY + 100), event("B", "u2", DAY + 5)]
    )
    # Day 0 closes when its last second's window has passed: day 0 + 1 day + 36 h > day 2.
    assert second.funnels == []
    third = aggregator.add_chunk(day(2), day(2), [event("C", "u2", 2 * DAY + 100)])
    assert [(f.date, f.steps) for f in third.funnels] == [(day(0), [2, 2, 2])]
    assert aggregator.finish() == []


def test_open_funnel_entries_are_counted_where_they_stand_at_the_end() -> None:
    config = funnel_settings(hours=168)
    aggregator = Aggregator(config)
    result = aggregator.add_chunk(day(0), day(1), [event("A", "u1", 100), event("B", "u1", 200)])
    assert result.funnels == []
    assert [(f.date, f.steps, f.source) for f in aggregator.finish()] == [
        (day(0), [1, 1, 0], "local")
    ]


def test_funnel_only_chunks_feed_no_daily_metrics() -> None:
    config = funnel_settings()
    aggregator = Aggregator(config)
    assert aggregator.funnel_events == ("A", "B", "C")
    before = aggregator.add_chunk(day(0), day(0), [event("A", "u1", 100)], metrics=False)
    assert before.daily == []
    after = aggregator.add_chunk(day(1), day(1), [event("B", "u1", DAY), event("C", "u1", DAY + 1)])
    assert [r.total_events for r in after.daily] == [2]
    assert [(f.date, f.steps) for f in after.funnels + aggregator.finish()] == [(day(0), [1, 1, 1])]


def test_funnel_only_chunks_count_nothing() -> None:
    # The days before a sync, re-read for its funnels, were counted when they were synced: a
    # report that counted them again said 297 events where the synced days held 115.
    events = [
        event("A", "u1", 100),
        event("A", "u1", DAY + 5),  # the next day: outside the chunk
        event("A", "u2", 200, account=None),  # no account
        event("A", "u3", 300, account=["x" * 300, "acme"]),  # one id refused, one kept
        event("A", "u4", 400, account="x" * 300),  # refused: no account left
        event("A", None, 500),  # no user: moves no funnel
    ]
    funnel_only, whole = Aggregator(funnel_settings()), Aggregator(funnel_settings())
    funnel_only.add_chunk(day(0), day(0), events, metrics=False)
    whole.add_chunk(day(0), day(0), events)
    assert funnel_only.stats == AggregateStats()
    assert (whole.stats.events, whole.stats.outside, whole.stats.unattributed) == (3, 1, 2)
    assert whole.stats.rejected_accounts == 2
    # Both moved the same funnels.
    assert funnel_only.finish() == whole.finish()


def test_funnel_users_are_per_account() -> None:
    events = [
        event("A", "u1", 100, account="acme"),
        event("B", "u1", 200, account="globex"),  # not acme's
        event("C", "u1", 300, account="acme"),
    ]
    assert steps_of(events, funnel_settings()) == {("acme", day(0)): [1, 0, 0]}


def test_funnel_rates() -> None:
    funnel = FunnelMetrics("acme", "F", "F", day(0), [10, 4, 3, 3])
    assert (funnel.completed_users, funnel.conversion_rate, funnel.drop_off_step) == (3, 0.3, 1)
    flat = FunnelMetrics("acme", "F", "F", day(0), [0, 0])
    assert (flat.completed_users, flat.conversion_rate, flat.drop_off_step) == (0, 0.0, None)
    empty = FunnelMetrics("acme", "F", "F", day(0), [])
    assert (empty.completed_users, empty.conversion_rate, empty.drop_off_step) == (0, 0.0, None)


# -- profiles ---------------------------------------------------------------------------------


def test_profiles_are_counted_per_account_and_property_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregate_module, "MAX_BREAKDOWN_VALUES", 2)
    config = settings(profile_properties="plan\n$city")
    profiles: list[dict[str, t.Any]] = [
        {"$distinct_id": "u1", "$properties": {"company_id": "acme", "plan": "pro", "$city": "A"}},
        {"$distinct_id": "u2", "$properties": {"company_id": "acme", "plan": "pro", "$city": "B"}},
        {"$distinct_id": "u3", "$properties": {"company_id": "acme", "$city": "C"}},
        {"$distinct_id": "u4", "$properties": {"company_id": ["globex", "acme"], "$city": "A"}},
        {"$distinct_id": "u5", "$properties": {"plan": "free"}},
        {"$distinct_id": "u6"},
    ]
    assert aggregate_profiles(profiles, config) == [
        ProfileAggregate(
            "acme", 4, {"plan": {NOT_SET: 2, "pro": 2}, "$city": {"A": 2, "B": 1, OTHER: 1}}
        ),
        ProfileAggregate("globex", 1, {"plan": {NOT_SET: 1}, "$city": {"A": 1}}),
    ]
    without = parse_metrics_settings({P + "account_getter": account_from_path})
    assert aggregate_profiles(profiles, without) == []


def test_events_before_epoch_day_zero_are_outside() -> None:
    result = aggregate_events([event("A", "u1", -T0 - 10)], day(0), day(0), settings())
    assert (result.daily, result.stats.outside) == ([], 1)


def test_session_boundary_in_order() -> None:
    # 30 minutes exactly joins, 30 minutes and one second splits (the in-order fast path).
    events = [event("A", "u1", 0), event("A", "u1", 1800), event("A", "u1", 3601)]
    assert [r.sessions for r in aggregate_events(events, day(0), day(0), settings()).daily] == [2]


def test_a_step_at_the_last_second_of_the_window_in_the_next_chunk_counts() -> None:
    aggregator = Aggregator(funnel_settings("A > B", hours=24))
    assert aggregator.add_chunk(day(0), day(0), [event("A", "u1", 0)]).funnels == []
    result = aggregator.add_chunk(day(1), day(1), [event("B", "u1", DAY)])
    assert [(f.date, f.steps) for f in result.funnels + aggregator.finish()] == [(day(0), [1, 1])]
