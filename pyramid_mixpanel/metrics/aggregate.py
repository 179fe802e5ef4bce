"""Pure aggregation of raw Mixpanel events into per-account, per-day metrics and funnels.

Feed whole days at a time with :meth:`Aggregator.add_chunk` (oldest first, the way
:meth:`~pyramid_mixpanel.query.MixpanelQuery.export_chunks` yields them); each call returns the
finished days. Nothing here touches the network or a database.

Memory grows with users x days of one chunk, not with events:

- per account, day and user a short list ``[category bits, start, end, start, end, ...]`` of
  session clusters (events no more than 30 minutes apart), kept sorted and merged on insert, so
  the session count is exact even when events arrive out of order (the export is not sorted),
  with a fast path for events in order;
- per local funnel and user, the first time each day the user did the first step, and the times
  of the later steps' events within the chunk (only those events), reduced at the end of every
  chunk to one open chain per entry day;
- per account, day and user, an 8-byte hash of each event's (name, time, ``$insert_id``): the
  Raw Event Export is not deduplicated (reference/raw-data-export-api), so an event that was sent
  twice (a retry, a beacon) comes back twice. An event is a duplicate when an earlier one of the
  chunk has the same event name, ``distinct_id``, ``time`` and ``$insert_id``, Mixpanel's own
  rule; it is counted once, as Mixpanel's reports count it. A user's event later than every
  earlier one of the day cannot repeat one, so events in time order only append their hash.
  These hashes are the one part that grows with events (8 bytes each), dropped with the chunk.

A day's events are those whose ``properties.time`` (epoch seconds) falls on it: a UTC day, or in a
project created before 2023-01-01 a day of the project's timezone, since such a project's
export stores ``time`` as the project's local seconds (docs/export-methods).

Events come from whoever could send one, and everything stored must fit the store:

- events must be well formed (:func:`~pyramid_mixpanel.metrics.lines.parse_line` checks a
  line; the sync skips and counts the others);
- an account id that cannot be stored (over :data:`~.model.MAX_KEY` characters, a NUL, a lone
  surrogate: see :func:`~.model.storable`) is refused and counted, never truncated: two long ids
  that share a prefix are different accounts, and a cut one could name someone else's;
- a breakdown or profile value over :data:`MAX_LABEL` characters is counted under
  :data:`TOO_LONG` (it is a label, not a key: the event still counts), and NUL or lone
  surrogates in event names and labels become U+FFFD.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import typing as t
from array import array
from dataclasses import dataclass, field

from .config import MetricsSettings
from .model import (
    MAX_KEY,
    DailyMetrics,
    FunnelMetrics,
    ProfileAggregate,
    clean_text,
    storable,
)
from .score import engagement_score

__all__ = [
    "AggregateResult",
    "AggregateStats",
    "Aggregator",
    "ChunkResult",
    "accounts_of",
    "aggregate_events",
    "aggregate_profiles",
    "label",
    "storable_accounts",
]


#: A gap of more than this many seconds between a user's events starts a new session.
SESSION_GAP = 30 * 60
DAY = 86_400
EPOCH = dt.date(1970, 1, 1)
#: Breakdown label of events without the property.
NOT_SET = "(not set)"
#: Breakdown label collecting values beyond :data:`MAX_BREAKDOWN_VALUES` per account-day.
OTHER = "(other)"
#: Breakdown label of values longer than :data:`MAX_LABEL` characters (counted, not cut: two
#: long values sharing a prefix would otherwise merge, and a cut one could read as another).
TOO_LONG = "(too long)"
MAX_BREAKDOWN_VALUES = 1000
MAX_LABEL = 255

Event = t.Mapping[str, t.Any]


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01 (what ``time // 86400`` gives for an epoch time)."""
    return (day - EPOCH).days


def from_day_number(number: int) -> dt.date:
    """The date of a :func:`day_number`."""
    return EPOCH + dt.timedelta(days=number)


def add_time(clusters: list[int], moment: int) -> None:
    """Add an event time to ``clusters[1:]``, sorted ``[start, end, start, end, ...]`` pairs.

    Two events belong to one session when no more than :data:`SESSION_GAP` seconds separate
    them, so each pair is a session: a new time extends, joins or creates pairs. ``clusters[0]``
    is left alone (it holds the user's category bits). The list must hold at least one pair.
    """
    pairs = (len(clusters) - 1) // 2
    low, high = 0, pairs
    while low < high:  # the first pair starting after ``moment``
        middle = (low + high) // 2
        if clusters[1 + 2 * middle] <= moment:
            low = middle + 1
        else:
            high = middle
    after = 1 + 2 * low  # index of the next pair's start (== len when there is none)
    if low:
        end = after - 1
        if moment <= clusters[end]:
            return
        if moment - clusters[end] <= SESSION_GAP:
            clusters[end] = moment
            if low < pairs and clusters[after] - moment <= SESSION_GAP:
                # The time bridges two sessions: they become one.
                clusters[end] = clusters[after + 1]
                del clusters[after : after + 2]
            return
    if low < pairs and clusters[after] - moment <= SESSION_GAP:
        clusters[after] = moment
        return
    clusters[after:after] = [moment, moment]


def accounts_of(value: object) -> tuple[str, ...]:
    """The account ids a property value names: a string, a whole number, or a list of them.

    Group keys may hold a list (a user in several companies); the event then counts for each.
    Empty strings, booleans and other types name no account.
    """
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, bool):
        return ()
    if isinstance(value, int):
        return (str(value),)
    if isinstance(value, float) and value.is_integer():
        return (str(int(value)),)
    if isinstance(value, (list, tuple)):
        found: dict[str, None] = {}
        for item in value:
            if not isinstance(item, (list, tuple)):
                found.update(dict.fromkeys(accounts_of(item)))
        return tuple(found)
    return ()


def label(value: object) -> str:
    """A breakdown label for a property value: :data:`TOO_LONG` past 255 characters."""
    if value is None:
        return NOT_SET
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=str)
        except RecursionError:  # nested deeper than the interpreter recurses: far over 255
            return TOO_LONG
    return text if len(text) <= MAX_LABEL else TOO_LONG


def storable_accounts(value: object) -> tuple[tuple[str, ...], int]:
    """The account ids ``value`` names that the store can keep, and how many it cannot."""
    names = accounts_of(value)
    kept = tuple(name for name in names if storable(name))
    return kept, len(names) - len(kept)


def _clean_counts(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` sorted, with NUL and lone surrogates replaced in its keys (merging twins)."""
    out: dict[str, int] = {}
    for key, count in counts.items():
        key = clean_text(key)
        out[key] = out.get(key, 0) + count
    return dict(sorted(out.items()))


class _AccountDay:
    """Counters of one account on one day (its total is the sum of its event counts)."""

    __slots__ = ("anonymous", "breakdowns", "events", "seen", "users")

    def __init__(self, breakdowns: tuple[str, ...]) -> None:
        self.events: dict[str, int] = {}
        #: distinct_id -> [category bits, session start, session end, ...] (memory only).
        self.users: dict[str, list[int]] = {}
        #: (property, value -> events) per breakdown.
        self.breakdowns: list[tuple[str, dict[str, int]]] = [(p, {}) for p in breakdowns]
        #: distinct_id -> hashes of the user's events with an ``$insert_id`` (deduplication).
        self.seen: dict[str, array[int]] = {}
        #: The same for events without a ``distinct_id``.
        self.anonymous: set[int] = set()


class _FunnelUser:
    """One user's progress through one local funnel, within one account."""

    __slots__ = ("entries", "open", "times")

    def __init__(self, steps: int) -> None:
        #: Day number -> first time of the first step that day, in the current chunk.
        self.entries: dict[int, int] = {}
        #: Sorted times of each later step's events in the current chunk (index 0 unused).
        #: (Arrays of 8-byte integers: a quarter of the memory of a list of ints.)
        self.times: list[array[int]] = [array("q") for _ in range(steps)]
        #: Chains still within their window from earlier chunks: [day, step, time, entry time].
        self.open: list[list[int]] = []


class _Funnel:
    """A local funnel's users and its per account-day step counts not yet handed out."""

    def __init__(self, index: int, name: str, steps: tuple[str, ...], window: int) -> None:
        self.index = index
        self.name = name
        self.steps = steps
        self.window = window
        #: A step repeating the previous step's event needs a later event, not the same one.
        self.strict = [False] + [steps[i] == steps[i - 1] for i in range(1, len(steps))]
        #: account -> distinct_id -> progress.
        self.users: dict[str, dict[str, _FunnelUser]] = {}
        self.counts: dict[tuple[str, int], list[int]] = {}

    def record(self, account: str, day: int, reached: int) -> None:
        counts = self.counts.get((account, day))
        if counts is None:
            counts = self.counts[account, day] = [0] * len(self.steps)
        for step in range(reached + 1):
            counts[step] += 1

    def advance(self, end: int) -> None:
        """Move every chain as far as the events seen so far allow; settle finished ones.

        ``end`` is the epoch time up to which every event has been seen: a chain whose window
        closes before it can no longer progress.
        """
        last = len(self.steps) - 1
        for account in list(self.users):
            users = self.users[account]
            for key in list(users):
                user = users[key]
                chains = user.open + [[d, 0, t1, t1] for d, t1 in sorted(user.entries.items())]
                still_open = []
                for chain in chains:
                    day, step, moment, t1 = chain
                    deadline = t1 + self.window
                    while step < last:
                        times = user.times[step + 1]
                        if self.strict[step + 1]:
                            found = bisect.bisect_right(times, moment)
                        else:
                            found = bisect.bisect_left(times, moment)
                        if found == len(times) or times[found] > deadline:
                            break
                        step, moment = step + 1, times[found]
                    if step == last or deadline < end:
                        self.record(account, day, step)
                    else:
                        still_open.append([day, step, moment, t1])
                if still_open:
                    user.open = still_open
                    user.entries = {}
                    user.times = [array("q") for _ in self.steps]
                else:
                    del users[key]
            if not users:
                del self.users[account]

    def settle_open(self) -> None:
        """Count every open chain where it stands (the end of the data)."""
        for account, users in self.users.items():
            for user in users.values():
                for day, step, _, _ in user.open:
                    self.record(account, day, step)
        self.users.clear()

    def peek(self) -> list[FunnelMetrics]:
        """The entry days not handed out yet, counted where their users stand (nothing changes).

        What :meth:`settle_open` then :meth:`take` would give if the data ended here: the sync
        stores it with the days it belongs to, so a sync stopped before those days settle still
        leaves them their rows (later syncs complete them).
        """
        counts = {key: list(steps) for key, steps in self.counts.items()}
        for account, users in self.users.items():
            for user in users.values():
                for day, step, _, _ in user.open:
                    row = counts.setdefault((account, day), [0] * len(self.steps))
                    for reached in range(step + 1):
                        row[reached] += 1
        return [
            FunnelMetrics(account, self.name, self.name, from_day_number(day), steps)
            for (account, day), steps in sorted(counts.items())
        ]

    def take(self, before: int | None) -> list[FunnelMetrics]:
        """Hand out the counts of entry days before day number ``before`` (all with None)."""
        out = []
        for (account, day), counts in sorted(self.counts.items()):
            if before is None or day < before:
                out.append(
                    FunnelMetrics(account, self.name, self.name, from_day_number(day), counts)
                )
                del self.counts[account, day]
        return out


@dataclass
class ChunkResult:
    """What one chunk finished: its days' metrics and the funnel entry days now settled."""

    daily: list[DailyMetrics] = field(default_factory=list)
    funnels: list[FunnelMetrics] = field(default_factory=list)
    #: The entry days not settled yet (their window is still open), counted where their users
    #: stand: what :meth:`Aggregator.finish` would give if the data ended with this chunk.
    open_funnels: list[FunnelMetrics] = field(default_factory=list)


@dataclass
class AggregateStats:
    """Counts of what the aggregator saw."""

    #: Events counted for at least one account.
    events: int = 0
    #: Events without an account (no account property, or the getter returned None).
    unattributed: int = 0
    #: Events whose day is outside the chunk they came with (skipped).
    outside: int = 0
    #: Events that repeat an earlier one of their chunk (same name, ``distinct_id``, ``time`` and
    #: ``$insert_id``): counted once.
    duplicates: int = 0
    #: Account ids the store cannot keep (see :func:`~.model.storable`), once per event naming
    #: one: refused (an event left without an account is also counted in ``unattributed``).
    rejected_accounts: int = 0
    #: Breakdown values (once per account counted) over :data:`MAX_LABEL` characters, counted
    #: under :data:`TOO_LONG`.
    long_values: int = 0


class Aggregator:
    """Turn a stream of raw events into :class:`DailyMetrics` and local :class:`FunnelMetrics`.

    Call :meth:`add_chunk` for consecutive ranges of whole days, oldest first, then
    :meth:`finish` for the funnel entries whose window is still open at the end of the data.
    """

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.stats = AggregateStats()
        window = settings.funnel_window_hours * 3600
        self.funnels = [
            _Funnel(index, funnel.name, funnel.steps, window)
            for index, funnel in enumerate(settings.funnels)
        ]
        categories = settings.categories
        self.category_bits = {category: 1 << n for n, category in enumerate(categories)}
        # Event name -> (category bits, ((funnel, step), ...)): one lookup per event tells
        # whether it matters beyond counting.
        special: dict[str, tuple[int, list[tuple[int, int]]]] = {}
        for event, category in settings.signals.items():
            special[event] = (self.category_bits[category], [])
        for funnel in self.funnels:
            for step, event in enumerate(funnel.steps):
                special.setdefault(event, (0, []))[1].append((funnel.index, step))
        self.special = {name: (bits, tuple(refs)) for name, (bits, refs) in special.items()}

    @property
    def funnel_events(self) -> tuple[str, ...]:
        """The event names the local funnels are made of."""
        return tuple(dict.fromkeys(event for f in self.funnels for event in f.steps))

    def add_chunk(
        self,
        first: dt.date,
        last: dt.date,
        events: t.Iterable[Event],
        *,
        metrics: bool = True,
    ) -> ChunkResult:
        """Consume the events of the days ``first`` to ``last`` (inclusive).

        With ``metrics=False`` only local funnels are fed: the days before a sync whose funnel
        entries its events may complete. Returns the days' metrics (when ``metrics``), the
        funnel entry days whose window has closed, and those still open counted where their
        users stand. Events must be well formed (see
        :func:`~pyramid_mixpanel.metrics.lines.parse_line`).
        """
        first_day, last_day = day_number(first), day_number(last)
        by_day: dict[int, dict[str, _AccountDay]] = (
            {day: {} for day in range(first_day, last_day + 1)} if metrics else {}
        )
        self._consume(events, first_day, last_day, by_day)
        result = ChunkResult()
        for day, accounts in by_day.items():
            date = from_day_number(day)
            for account in sorted(accounts):
                result.daily.append(self._daily(account, date, accounts[account]))
        end = (last_day + 1) * DAY
        for funnel in self.funnels:
            funnel.advance(end)
            # Day D is settled once every entry of D (at the latest, its last second) has had its
            # whole window: (D + 1) * DAY + window <= end.
            result.funnels.extend(funnel.take(before=(end - funnel.window) // DAY))
            result.open_funnels.extend(funnel.peek())
        return result

    def finish(self) -> list[FunnelMetrics]:
        """The remaining funnel entry days, counted where their users stand now."""
        out = []
        for funnel in self.funnels:
            funnel.settle_open()
            out.extend(funnel.take(before=None))
        return out

    def _consume(
        self,
        events: t.Iterable[Event],
        first_day: int,
        last_day: int,
        by_day: dict[int, dict[str, _AccountDay]],
    ) -> None:
        # The hot loop: one pass, locals only, a fast path for the common case at every step.
        stats = self.stats
        prop = self.settings.account_property
        getter = self.settings.account_getter
        breakdowns = self.settings.breakdowns
        special = self.special
        funnels = [(f.users, len(f.steps)) for f in self.funnels]
        gap = SESSION_GAP
        plain = (0, ())
        current: int | None = None  # the day of the previous event
        accounts: dict[str, _AccountDay] | None = None
        counted = unattributed = outside = duplicates = rejected = long_values = 0
        too_long = TOO_LONG
        for event in events:
            props = event["properties"]
            moment = props["time"]
            if moment.__class__ is not int:
                moment = int(moment)
            day = moment // DAY
            if day != current:
                if not first_day <= day <= last_day:
                    outside += 1
                    continue
                current = day
                accounts = by_day.get(day)
            value = props.get(prop) if getter is None else getter(event)
            names: tuple[str, ...]
            if (
                value.__class__ is str
                and value
                and len(value) <= MAX_KEY
                and value.isascii()  # O(1) in CPython
                and "\x00" not in value
            ):
                names = (value,)  # the common case, checked inline: this runs once per event
            else:
                names, refused = storable_accounts(value)
                rejected += refused
            if not names:
                unattributed += 1
                continue
            name = event["event"]
            user = props.get("distinct_id")
            bits, refs = special.get(name, plain)
            twin = 0
            if accounts is not None:
                insert_id = props.get("$insert_id")
                if insert_id:
                    # Mixpanel's deduplication key (the user, account and day are the bucket's).
                    twin = hash((name, moment, insert_id)) or 1
            fresh = True  # nothing of the event is counted yet: it may still be a copy
            for account in names:
                if accounts is not None:
                    bucket = accounts.get(account)
                    if bucket is None:
                        bucket = accounts[account] = _AccountDay(breakdowns)
                    if user:
                        clusters = bucket.users.get(user)
                        if clusters is None:
                            bucket.users[user] = [bits, moment, moment]
                            if twin:
                                bucket.seen[user] = array("q", (twin,))
                        else:
                            end = clusters[-1]
                            if twin:
                                seen = bucket.seen.get(user)
                                if seen is None:
                                    bucket.seen[user] = array("q", (twin,))
                                elif moment > end or twin not in seen:
                                    # Later than every event of the user so far: not a copy.
                                    seen.append(twin)
                                elif fresh:
                                    break
                                # (A copy seen only by a later account: its account list
                                # changed, so it counts for the accounts that are new.)
                            if bits:
                                clusters[0] |= bits
                            if moment >= end:
                                if moment - end <= gap:
                                    clusters[-1] = moment
                                else:
                                    clusters += (moment, moment)
                            elif moment < clusters[-2]:
                                add_time(clusters, moment)
                    elif twin:
                        if twin not in bucket.anonymous:
                            bucket.anonymous.add(twin)
                        elif fresh:
                            break
                    counts = bucket.events
                    counts[name] = counts.get(name, 0) + 1
                    for key, values in bucket.breakdowns:
                        key = props.get(key)
                        if key.__class__ is not str or len(key) > MAX_LABEL:
                            key = label(key)
                            if key is too_long:
                                long_values += 1
                        if key in values:
                            values[key] += 1
                        elif len(values) < MAX_BREAKDOWN_VALUES:
                            values[key] = 1
                        else:
                            values[OTHER] = values.get(OTHER, 0) + 1
                if refs and user:
                    for index, step in refs:
                        states, steps = funnels[index]
                        by_user = states.get(account)
                        if by_user is None:
                            by_user = states[account] = {}
                        state = by_user.get(user)
                        if state is None:
                            state = by_user[user] = _FunnelUser(steps)
                        if step:
                            times = state.times[step]
                            if not times or moment > times[-1]:
                                times.append(moment)
                            else:
                                at = bisect.bisect_left(times, moment)
                                if times[at] != moment:
                                    times.insert(at, moment)
                        else:
                            entries = state.entries
                            entry = entries.get(day)
                            if entry is None or moment < entry:
                                entries[day] = moment
                fresh = False
            else:
                counted += 1
                continue
            duplicates += 1  # the loop stopped at the first account: a copy, not counted
        stats.events += counted
        stats.unattributed += unattributed
        stats.outside += outside
        stats.duplicates += duplicates
        stats.rejected_accounts += rejected
        stats.long_values += long_values

    def _daily(self, account: str, date: dt.date, bucket: _AccountDay) -> DailyMetrics:
        users = len(bucket.users)
        sessions = 0
        adopted = [0] * len(self.category_bits)
        for clusters in bucket.users.values():
            sessions += (len(clusters) - 1) // 2
            bits = clusters[0]
            if bits:
                for n in range(len(adopted)):
                    if bits >> n & 1:
                        adopted[n] += 1
        by_category = dict(zip(self.category_bits, adopted, strict=True))
        total = sum(bucket.events.values())
        return DailyMetrics(
            account=account,
            date=date,
            total_events=total,
            unique_users=users,
            sessions=sessions,
            avg_events_per_user=round(total / users, 4) if users else 0.0,
            # Names and values are stored as JSON, where PostgreSQL refuses NUL and lone
            # surrogates: cleaned once per account-day here rather than once per event.
            event_counts=_clean_counts(bucket.events),
            breakdowns={prop: _clean_counts(values) for prop, values in bucket.breakdowns},
            engagement_score=engagement_score(by_category, users, self.settings),
        )


@dataclass
class AggregateResult:
    """Everything :func:`aggregate` computed."""

    daily: list[DailyMetrics]
    funnels: list[FunnelMetrics]
    stats: AggregateStats


def aggregate_events(
    events: t.Iterable[Event], first: dt.date, last: dt.date, settings: MetricsSettings
) -> AggregateResult:
    """Aggregate the events of the days ``first`` to ``last`` in one go (tests, notebooks).

    Funnel entries whose window reaches past ``last`` are counted where their users stand.
    """
    aggregator = Aggregator(settings)
    chunk = aggregator.add_chunk(first, last, events)
    funnels = chunk.funnels + aggregator.finish()
    return AggregateResult(chunk.daily, funnels, aggregator.stats)


def aggregate_profiles(
    profiles: t.Iterable[t.Mapping[str, t.Any]],
    settings: MetricsSettings,
    stats: AggregateStats | None = None,
) -> list[ProfileAggregate]:
    """Count Engage profiles per account, and per value of each configured profile property.

    Profiles come as Engage returns them (``{"$distinct_id": ..., "$properties": {...}}``);
    only the counts are kept. Account ids the store cannot keep are refused, and long values
    counted under :data:`TOO_LONG`, as for events; ``stats`` (when given) counts both.
    """
    prop = settings.profile_account_property
    names = settings.profile_properties
    stats = stats if stats is not None else AggregateStats()
    users: dict[str, int] = {}
    counts: dict[str, list[dict[str, int]]] = {}
    for profile in profiles:
        properties = profile.get("$properties")
        if not isinstance(properties, dict):
            continue
        accounts, refused = storable_accounts(properties.get(prop) if prop else None)
        stats.rejected_accounts += refused
        for account in accounts:
            if account not in users:
                users[account] = 0
                counts[account] = [{} for _ in names]
            users[account] += 1
            for values, name in zip(counts[account], names, strict=True):
                key = label(properties.get(name))
                if key is TOO_LONG:
                    stats.long_values += 1
                if key in values or len(values) < MAX_BREAKDOWN_VALUES:
                    values[key] = values.get(key, 0) + 1
                else:
                    values[OTHER] = values.get(OTHER, 0) + 1
    return [
        ProfileAggregate(
            account,
            users[account],
            {
                name: _clean_counts(values)
                for name, values in zip(names, counts[account], strict=True)
            },
        )
        for account in sorted(users)
    ]
