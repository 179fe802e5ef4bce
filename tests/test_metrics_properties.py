"""Property-based tests of the metrics aggregation and of the export-line parser (issue 13).

A reference implementation written here, as plainly as possible (sort, group, count), must give
the numbers the aggregator and the whole sync give, on random event streams: random accounts
(lists, numbers, empty, too long), users (and none), event names, days (and days outside the
export), times around session gaps and midnight, breakdown values (and too long ones), exact
copies of events (the raw export is not deduplicated: same name, ``distinct_id``, ``time`` and
``$insert_id``) and near copies (same ``$insert_id``, another second: not copies), in any order
and any chunking. And the parser never raises, whatever a line holds.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import typing as t
from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from pyramid_mixpanel.metrics import Aggregator, MetricsStore, parse_metrics_settings, sync
from pyramid_mixpanel.metrics.lines import MALFORMED_REASONS, parse_line

from .metrics_helpers import DAY, T0, ListQuery, day, event, local_settings

DAYS = 3
WINDOW_HOURS = 30
FUNNEL = ("Page Viewed", "User Signed Up", "Plan Upgraded")
NAMES = (*FUNNEL, "Report Exported")
LONG = "x" * 256
ACCOUNTS: tuple[object, ...] = (
    "acme",
    "globex",
    7,
    ["acme", "globex"],
    ["globex", 7, "globex"],
    [LONG, "acme"],
    LONG,
    "",
    None,
    True,
)
USERS = ("u1", "u2", "u3", None)
PLANS = ("free", "pro", None, 3, "p" * 256)
#: Offsets within a day: 30 minutes apart exactly, one second more, hours apart, near midnight.
MOMENTS = (0, 600, 1799, 1800, 3601, 7200, DAY - 60)
MALFORMED = (b"{", b"[]", b'{"event": "A"}', b'{"event": "A", "properties": {"time": NaN}}')

Event = dict[str, t.Any]


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    """A shuffled export: events of days -1..DAYS (the first and last are outside), copies."""
    base = draw(
        st.lists(
            st.tuples(
                st.sampled_from(NAMES),
                st.sampled_from(USERS),
                st.integers(-1, DAYS),
                st.sampled_from(MOMENTS),
                st.integers(0, 120),
                st.sampled_from(ACCOUNTS),
                st.sampled_from(PLANS),
                st.booleans(),
            ),
            max_size=50,
        )
    )
    events = []
    for index, (name, user, number, moment, jitter, account, plan, stamped) in enumerate(base):
        item = event(name, user, number * DAY + moment + jitter, account, plan=plan)
        item["properties"]["$insert_id"] = f"id-{index}" if stamped else None
        events.append(item)
    if events:
        picks = st.integers(0, len(events) - 1)
        # Exact copies (a retried send), and near copies: the same $insert_id a second later.
        events += [dict(events[i]) for i in draw(st.lists(picks, max_size=15))]
        for i in draw(st.lists(picks, max_size=5)):
            near = dict(events[i], properties=dict(events[i]["properties"]))
            near["properties"]["time"] += 1
            events.append(near)
    return draw(st.permutations(events))


# -- the reference ------------------------------------------------------------------------------


def accounts_in(value: object) -> list[str]:
    """Account ids of a property value: a non-empty string, a whole number, or a list of them."""
    items = value if isinstance(value, list) else [value]
    found: list[str] = []
    for item in items:
        text = str(item) if type(item) is int else item if type(item) is str else ""
        if text and text not in found:
            found.append(text)
    return found


def plan_label(value: object) -> str:
    if value is None:
        return "(not set)"
    text = str(value)
    return text if len(text) <= 255 else "(too long)"


def sessions(times: list[int]) -> int:
    ordered = sorted(times)
    return 1 + sum(1 for a, b in itertools.pairwise(ordered) if b - a > 1800)


class Reference:
    """The numbers, computed the plain way from a whole stream."""

    def __init__(self, stream: list[Event]) -> None:
        self.stats: dict[str, int] = defaultdict(int)
        seen: set[tuple[object, ...]] = set()
        times: dict[tuple[str, int, str], list[int]] = defaultdict(list)
        totals: dict[tuple[str, int], int] = defaultdict(int)
        names: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        plans: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.history: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for item in stream:
            props = item["properties"]
            number = (props["time"] - T0) // DAY
            if not 0 <= number < DAYS:
                self.stats["outside"] += 1
                continue
            named = accounts_in(props.get("company_id"))
            accounts = [a for a in named if len(a) <= 255]
            self.stats["rejected_accounts"] += len(named) - len(accounts)
            if not accounts:
                self.stats["unattributed"] += 1
                continue
            user, insert_id = props.get("distinct_id"), props.get("$insert_id")
            key = (tuple(accounts), item["event"], user, props["time"], insert_id)
            if insert_id and key in seen:
                self.stats["duplicates"] += 1
                continue
            seen.add(key)
            self.stats["events"] += 1
            for account in accounts:
                totals[account, number] += 1
                names[account, number][item["event"]] += 1
                label = plan_label(props.get("plan"))
                plans[account, number][label] += 1
                self.stats["long_values"] += label == "(too long)"
                if user:
                    times[account, number, user].append(props["time"])
                    self.history[account, user].append((props["time"], item["event"]))
        users: dict[tuple[str, int], list[list[int]]] = defaultdict(list)
        for (account, number, _), moments in times.items():
            users[account, number].append(moments)
        self.daily = {
            (account, day(number)): (
                total,
                len(users[account, number]),
                sum(sessions(moments) for moments in users[account, number]),
                dict(names[account, number]),
                dict(plans[account, number]),
            )
            for (account, number), total in totals.items()
        }

    def funnels(self) -> dict[tuple[str, dt.date], list[int]]:
        """Per account and entry day: users who reached each step (entries counted as they
        stand at the end of the data)."""
        out: dict[tuple[str, dt.date], list[int]] = {}
        window = WINDOW_HOURS * 3600
        for (account, _), history in self.history.items():
            history.sort()
            entries: dict[int, int] = {}
            for moment, name in history:
                if name == FUNNEL[0]:
                    entries.setdefault((moment - T0) // DAY, moment)
            for number, start in entries.items():
                reached, last = 0, start
                for step in FUNNEL[1:]:
                    later = [m for m, n in history if n == step and last <= m <= start + window]
                    if not later:
                        break
                    reached, last = reached + 1, min(later)
                counts = out.setdefault((account, day(number)), [0] * len(FUNNEL))
                for index in range(reached + 1):
                    counts[index] += 1
        return out


CONFIG = parse_metrics_settings(
    local_settings("sqlite://", funnel_window_hours=str(WINDOW_HOURS), alert="")
)


def in_chunks(
    stream: list[Event], chunk_days: int
) -> t.Iterator[tuple[dt.date, dt.date, list[Event]]]:
    for start in range(0, DAYS, chunk_days):
        first, last = day(start), day(min(start + chunk_days, DAYS) - 1)
        chunk = [e for e in stream if first <= day((e["properties"]["time"] - T0) // DAY) <= last]
        if start == 0:  # what the export of day 0 would not hold: counted as outside
            chunk += [e for e in stream if not 0 <= (e["properties"]["time"] - T0) // DAY < DAYS]
        yield first, last, chunk


@given(streams(), st.integers(1, DAYS))
def test_the_aggregator_counts_what_the_reference_counts(
    stream: list[Event], chunk_days: int
) -> None:
    aggregator = Aggregator(CONFIG)
    daily, funnels = [], []
    for first, last, chunk in in_chunks(stream, chunk_days):
        result = aggregator.add_chunk(first, last, chunk)
        daily += result.daily
        funnels += result.funnels
    funnels += aggregator.finish()
    expected = Reference(stream)
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
    assert got == expected.daily
    assert {(f.account, f.date): f.steps for f in funnels} == expected.funnels()
    assert len(funnels) == len(expected.funnels())  # each entry day handed out once
    stats = aggregator.stats
    assert {
        "events": stats.events,
        "unattributed": stats.unattributed,
        "outside": stats.outside,
        "duplicates": stats.duplicates,
        "rejected_accounts": stats.rejected_accounts,
        "long_values": stats.long_values,
    } == {key: expected.stats[key] for key in (
        "events", "unattributed", "outside", "duplicates", "rejected_accounts", "long_values"
    )}  # fmt: skip


@given(streams(), st.integers(1, DAYS))
def test_what_a_chunk_leaves_stored_is_the_one_shot_answer_so_far(
    stream: list[Event], chunk_days: int
) -> None:
    # What the sync stores with each chunk (settled rows, and open ones as they stand) is what
    # a sync of the days so far would store: a sync stopped after any chunk loses nothing.
    aggregator = Aggregator(CONFIG)
    stored: dict[tuple[str, dt.date], list[int]] = {}
    seen: list[Event] = []
    for first, last, chunk in in_chunks(stream, chunk_days):
        result = aggregator.add_chunk(first, last, chunk)
        stored.update({(f.account, f.date): f.steps for f in result.funnels})
        stored.update({(f.account, f.date): f.steps for f in result.open_funnels})
        seen += [e for e in chunk if first <= day((e["properties"]["time"] - T0) // DAY) <= last]
        so_far = Reference(seen).funnels()
        assert stored == so_far


@given(streams(), st.lists(st.tuples(st.integers(0, DAYS - 1), st.sampled_from(MALFORMED)),
                           max_size=10))  # fmt: skip
def test_the_sync_stores_what_the_reference_counts(
    stream: list[Event], malformed: list[tuple[int, bytes]]
) -> None:
    inside = [e for e in stream if 0 <= (e["properties"]["time"] - T0) // DAY < DAYS]
    raw: dict[dt.date, list[object]] = defaultdict(list)
    for number, line in malformed:
        raw[day(number)].append(line)
    settings = local_settings("sqlite://", funnel_window_hours=str(WINDOW_HOURS), alert="")
    settings["mixpanel.metrics.chunk_days"] = "1"
    with MetricsStore("sqlite://") as store:
        report = sync(settings, day(0), day(DAYS - 1), query=ListQuery(inside, raw=dict(raw)),
                      store=store, progress=False, today=day(30))  # fmt: skip
        expected = Reference(inside)
        assert report.malformed == len(malformed)
        assert (report.events, report.duplicates, report.rejected_accounts) == (
            expected.stats["events"],
            expected.stats["duplicates"],
            expected.stats["rejected_accounts"],
        )
        got = {
            (m.account, m.date): (
                m.total_events,
                m.unique_users,
                m.sessions,
                m.event_counts,
                m.breakdowns["plan"],
            )
            for account in store.accounts()
            for m in store.daily(account, day(0), day(DAYS - 1))
            if m.total_events  # (an anomaly flag may add a zero row: none here, all the same)
        }
        assert got == expected.daily
        local = {
            (f.account, f.date): f.steps
            for account in store.accounts()
            for f in store.funnels(account, day(0), day(DAYS - 1))
        }
        assert local == expected.funnels()


# -- the parser never raises --------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["time", "distinct_id", "$insert_id", "company_id", "plan", "x"])
EVENTS = st.fixed_dictionaries(
    {"event": JSON | st.sampled_from(NAMES), "properties": st.dictionaries(KEYS, JSON) | JSON}
) | st.dictionaries(st.sampled_from(["event", "properties"]), JSON)


def accepted(result: object) -> bool:
    """A parse result is an event (a dict) or one of the documented reasons."""
    return isinstance(result, dict) or result in MALFORMED_REASONS


@given(st.binary())
def test_parse_line_never_raises_on_bytes(line: bytes) -> None:
    assert accepted(parse_line(line))


@given(st.text())
def test_parse_line_never_raises_on_text(line: str) -> None:
    assert accepted(parse_line(line))


@given(JSON | EVENTS)
def test_parse_line_never_raises_on_json(value: object) -> None:
    line = json.dumps(value)  # NaN and Infinity come out as Python writes them
    result = parse_line(line)
    assert accepted(result)
    assert accepted(parse_line(line.encode()))
    assert accepted(parse_line(value))  # a decoded line


@given(st.lists(EVENTS, max_size=8))
def test_what_the_parser_accepts_the_aggregator_counts(values: list[object]) -> None:
    events = [e for e in (parse_line(json.dumps(v)) for v in values) if isinstance(e, dict)]
    for item in events:
        moment = item["properties"]["time"]
        assert type(moment) is int or math.isfinite(moment)
    # Put them on day 0, whatever their time said: the counting path, not only "outside".
    for item in events[::2]:
        item["properties"]["time"] = T0 + 60
    aggregator = Aggregator(CONFIG)
    aggregator.add_chunk(day(0), day(0), events)
    aggregator.finish()
    stats = aggregator.stats
    # Every event is accounted for, once.
    assert stats.events + stats.unattributed + stats.outside + stats.duplicates == len(events)
