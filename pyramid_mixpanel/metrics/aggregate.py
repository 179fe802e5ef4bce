"""Pure aggregation of raw Mixpanel events into per-account, per-day metrics and funnels.

Feed whole days at a time with :meth:`Aggregator.add_chunk` (oldest first, the way
:meth:`~pyramid_mixpanel.query.MixpanelQuery.export_chunks` yields them); each call returns the
finished days. Nothing here touches the network or a database.

Memory grows with users x days of one chunk, not with events:

- per account, day and user one ``array("q")`` (8-byte integers, no object per number): its
  adoption category bits, the first time it did the first step of each local funnel, its
  session clusters (events no more than 30 minutes apart) as sorted ``start, end`` pairs,
  merged on insert so the session count is exact even when events arrive out of order (the
  export is not sorted), with a fast path for events in order, then the hashes below;
- per local funnel and user, the first time each day the user did the first step, and the times
  of the later steps' events within the chunk (only those events), reduced at the end of every
  chunk to one open chain per entry day;
- per account, day and user, an 8-byte hash of each event's (name, time, ``$insert_id``): the
  Raw Event Export is not deduplicated (reference/raw-data-export-api), so an event that was sent
  twice (a retry, a beacon) comes back twice. An event is a duplicate when an earlier one of the
  chunk has the same event name, ``distinct_id``, ``time`` and ``$insert_id``, Mixpanel's own
  rule; it is counted once, as Mixpanel's reports count it. A user's event later than every
  earlier one of the day cannot repeat one, so events in time order only append their hash.
  These hashes are the one part that grows with events (8 bytes each), dropped with the chunk;
- per account and day, the events per combination of breakdown labels, at most
  :data:`FOLD_AT` of them before they are added up per breakdown;
- per aggregator, the labels of up to :data:`CACHED` combinations of breakdown values and the
  handling of up to :data:`CACHED` event names, worked out once each.

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
import itertools
import json
import math
import operator
import typing as t
from array import array
from collections import Counter
from dataclasses import dataclass, field

from .config import MetricsSettings
from .model import (
    DailyMetrics,
    FunnelEntry,
    FunnelMetrics,
    GroupProfile,
    ProfileAggregate,
    clean_text,
    storable,
)
from .score import engagement_scorer

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
#: Event names, and combinations of breakdown values, whose handling is worked out once and
#: kept (each).
CACHED = 4096
#: Combinations of breakdown labels counted per account-day before they are added up per
#: breakdown.
FOLD_AT = 4096
#: Bits of adoption categories per 8-byte integer (the sign bit left alone).
BITS = 63
#: The first time of a funnel's first step in a user's day when it has none yet (in seconds
#: since the start of the day, as a user's day keeps its times: later than any).
NEVER = DAY

Event = t.Mapping[str, t.Any]


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01 (what ``time // 86400`` gives for an epoch time)."""
    return (day - EPOCH).days


def from_day_number(number: int) -> dt.date:
    """The date of a :func:`day_number`."""
    return EPOCH + dt.timedelta(days=number)


def add_time(
    clusters: t.MutableSequence[int], moment: int, head: int = 1, pairs: int | None = None
) -> int:
    """Add an event time to the sessions in ``clusters``; return the change in their number.

    The sessions are ``pairs`` sorted ``start, end`` pairs from ``clusters[head]`` (by default
    all the rest of ``clusters``). Two events belong to one session when no more than
    :data:`SESSION_GAP` seconds separate them, so each pair is a session: a new time extends
    (0), joins (-1: it bridges two) or creates (+1) pairs. What is before and after the pairs
    is left alone. There must be at least one pair.
    """
    if pairs is None:
        pairs = (len(clusters) - head) // 2
    low, high = 0, pairs
    while low < high:  # the first pair starting after ``moment``
        middle = (low + high) // 2
        if clusters[head + 2 * middle] <= moment:
            low = middle + 1
        else:
            high = middle
    after = head + 2 * low  # index of the next pair's start (just past the pairs when none)
    if low:
        end = after - 1
        if moment <= clusters[end]:
            return 0
        if moment - clusters[end] <= SESSION_GAP:
            clusters[end] = moment
            if low < pairs and clusters[after] - moment <= SESSION_GAP:
                # The time bridges two sessions: they become one.
                clusters[end] = clusters[after + 1]
                del clusters[after : after + 2]
                return -1
            return 0
    if low < pairs and clusters[after] - moment <= SESSION_GAP:
        clusters[after] = moment
        return 0
    clusters.insert(after, moment)
    clusters.insert(after, moment)
    return 1


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
    joined = "".join(counts)
    if joined.isascii() and "\x00" not in joined:  # nothing to replace: one pass over all keys
        return dict(sorted(counts.items()))
    out: dict[str, int] = {}
    for key, count in counts.items():
        key = clean_text(key)
        out[key] = out.get(key, 0) + count
    return dict(sorted(out.items()))


# -- a user's day ---------------------------------------------------------------------------


#: ``record[0]`` of each record, in C (``map`` of it is several times quicker than a generator).
_FIRST: t.Callable[[array[int]], int] = operator.itemgetter(0)


class _Layout:
    """Where things are in a user's day in an account, one ``array("q")``.

    ::

        [last, category bits..., first step times..., start, end, start, end, ..., hashes...]

    ``last`` is the index of its last session's end; then the bits of the adoption categories
    of its events (63 per item); per local funnel, the first time of its first step that day
    (:data:`NEVER` if none); its sessions, sorted (first and last time of each); the hashes of
    its events with an ``$insert_id``, to find the copies. One object per user-day, found with
    one lookup per event; 8-byte integers, no object per number, and nothing the garbage
    collector has to look through (a list would be).

    Its times are seconds since the start of the day (0 to 86,399): Python works with such
    small integers much more quickly than with epoch seconds (past 2**30, two "digits" of
    CPython's integers, their comparisons are not specialized and every one written into the
    array goes through a slow conversion).
    """

    def __init__(self, categories: int, funnels: int) -> None:
        self.bits = 1
        self.entries = self.bits + -(-categories // BITS)
        #: The first session's start.
        self.times = self.entries + funnels
        #: A new user's day before its first time (copied: quicker than made from numbers).
        self.start = array(
            "q", (self.times + 1,) + (0,) * (self.entries - self.bits) + (NEVER,) * funnels
        )

    def category(self, index: int) -> tuple[int, int]:
        """The item and bit of adoption category ``index``."""
        return self.bits + index // BITS, 1 << index % BITS

    def sessions(self, days: t.Collection[array[int]]) -> int:
        """The sessions of these user-days."""
        return (sum(map(_FIRST, days)) - len(days) * (self.times - 1)) // 2


# -- what events mean, worked out once -------------------------------------------------------

#: What an event name means: the name itself (one object for all events of that name, so
#: the per-day lookups find it by identity), the item and bit of its adoption category in a
#: user's day (0, 0 if none), the items of the funnels it is the first step of in a user's
#: day, and the (funnel, step, steps) of the funnels it is a later step of.
_Kind = tuple[str, int, int, tuple[int, ...], tuple[tuple[int, int, int], ...]]


class _Kinds(dict[str, _Kind]):
    """``kinds[name]``: what an event name means, worked out once.

    Kept for up to :data:`CACHED` names of at most :data:`MAX_LABEL` characters (a name is
    kept as long as the aggregator).
    """

    def __init__(self, settings: MetricsSettings, layout: _Layout) -> None:
        super().__init__()
        self.signals = settings.signals
        self.categories = {category: n for n, category in enumerate(settings.categories)}
        self.layout = layout
        steps: dict[str, list[tuple[int, int, int]]] = {}
        for index, funnel in enumerate(settings.funnels):
            for step, event in enumerate(funnel.steps):
                steps.setdefault(event, []).append((index, step, len(funnel.steps)))
        #: Event name -> (funnel, step, steps) of the funnels it is a step of.
        self.steps = {name: tuple(refs) for name, refs in steps.items()}

    def __missing__(self, name: str) -> _Kind:
        category = self.signals.get(name)
        item, bit = (0, 0) if category is None else self.layout.category(self.categories[category])
        refs = self.steps.get(name, ())
        kind = (
            name,
            item,
            bit,
            tuple(self.layout.entries + index for index, step, _ in refs if not step),
            tuple(ref for ref in refs if ref[1]),
        )
        if len(self) < CACHED and len(name) <= MAX_LABEL:
            self[name] = kind
        return kind


def _fetcher(breakdowns: tuple[str, ...]) -> t.Callable[[t.Mapping[str, t.Any]], t.Any]:
    """A function giving an event's values of the breakdowns (alone for one breakdown).

    Written out for up to three breakdowns: twice as quick as a loop or a map.
    """
    if len(breakdowns) == 1:
        (first,) = breakdowns
        return lambda props: props.get(first)
    if len(breakdowns) == 2:
        first, second = breakdowns
        return lambda props: (props.get(first), props.get(second))
    if len(breakdowns) == 3:
        first, second, third = breakdowns
        return lambda props: (props.get(first), props.get(second), props.get(third))
    return lambda props: tuple([props.get(breakdown) for breakdown in breakdowns])


#: The labels of an event's breakdown values; ``None`` for a value too long (counted under
#: :data:`TOO_LONG` and in :attr:`AggregateStats.long_values` when they are added up: a value
#: "(too long)" is a label like any other).
_Labels = tuple[str | None, ...]


#: A combination of breakdown labels as the counts key it: its number in
#: :attr:`_LabelCache.combinations` when it is cached (a small integer hashes at no cost, a
#: tuple of labels is hashed again at every lookup), else the labels themselves.
_Combo: t.TypeAlias = int | _Labels


class _LabelCache(dict[t.Any, _Combo]):
    """``labels[values]``: the combination of labels of what a :func:`_fetcher` gives.

    Worked out once and numbered when every value is ``None`` or a string short enough (1, 1.0
    and True are one key but three labels; a long string is no key to keep), for up to
    :data:`CACHED` combinations; other values get their labels, worked out each time.
    """

    def __init__(self, breakdowns: int) -> None:
        super().__init__()
        self.single = breakdowns == 1
        #: The labels of each cached combination, by number.
        self.combinations: list[_Labels] = []

    def __missing__(self, values: t.Any) -> _Combo:
        labels = self.work_out(values)
        if len(self) < CACHED and all(
            value is None or text is value
            for value, text in zip((values,) if self.single else values, labels, strict=True)
        ):
            number = self[values] = len(self.combinations)
            self.combinations.append(labels)
            return number
        return labels

    def work_out(self, values: t.Any) -> _Labels:
        """The labels of ``values``, whatever they are (a list or an object too)."""
        labels = [label(value) for value in ((values,) if self.single else values)]
        return tuple(None if text is TOO_LONG else text for text in labels)


# -- counters -------------------------------------------------------------------------------


class _AccountDay:
    """Counters of one account on one day (its total is the sum of its event counts)."""

    __slots__ = ("anonymous", "breakdowns", "combos", "events", "funnels", "hours", "users")

    def __init__(self, breakdowns: int, funnels: tuple[dict[str, _FunnelUser], ...]) -> None:
        self.events: dict[str, int] = {}
        #: Events per hour of the day (0-23), for the activity heatmap.
        self.hours = [0] * 24
        #: Per breakdown (in the order of the settings), label -> events.
        self.breakdowns: tuple[dict[str, int], ...] = tuple({} for _ in range(breakdowns))
        #: Events per combination of breakdown labels, not added to ``breakdowns`` yet: one
        #: lookup per event rather than one per breakdown (see :meth:`fold`).
        self.combos: dict[_Combo, int] = {}
        #: distinct_id -> its day (see :class:`_Layout`; memory only).
        self.users: dict[str, array[int]] = {}
        #: Hashes of the events without a ``distinct_id`` (deduplication), once there is one.
        self.anonymous: set[int] | None = None
        #: Per local funnel, the account's users in it (the funnel's own dict, found once here
        #: rather than once per event).
        self.funnels = funnels

    def fold(self, combinations: t.Sequence[_Labels]) -> int:
        """Add the events per combination of labels to those per label; count the long ones.

        ``combinations`` are the labels of the numbered combinations (see :data:`_Combo`).
        Returns how many values were too long. Adds up in the order each combination first
        came, so the labels of a breakdown come in the order they first came too: the first
        :data:`MAX_BREAKDOWN_VALUES` of them are those an event-by-event count keeps (the others
        are counted under :data:`OTHER`).
        """
        most = MAX_BREAKDOWN_VALUES
        long = 0
        for combo, count in self.combos.items():
            labels = combinations[combo] if isinstance(combo, int) else combo
            for values, text in zip(self.breakdowns, labels, strict=True):
                if text is None:
                    text = TOO_LONG
                    long += count
                if text in values:
                    values[text] += count
                elif len(values) < most:
                    values[text] = count
                else:
                    values[OTHER] = values.get(OTHER, 0) + count
        self.combos.clear()
        return long


# -- local funnels --------------------------------------------------------------------------

#: Chains counted per entry day: the users at each step, and each user's step.
_Counts: t.TypeAlias = tuple[dict[int, list[int]], dict[int, dict[t.Any, int]]]


class _FunnelUser:
    """One user's progress through one local funnel, within one account."""

    __slots__ = ("entries", "open", "times")

    def __init__(self) -> None:
        #: Day number -> first time of the first step that day: the chains at the first step
        #: (entries of the current chunk, and those of earlier chunks still open).
        self.entries: dict[int, int] = {}
        #: Sorted times of each later step's events in the current chunk (index 0 unused), once
        #: there is one; ``None`` for a step without one yet. (Arrays of 8-byte integers: a
        #: quarter of the memory of a list of ints; made only for the steps that have events,
        #: as every object made here is one more the garbage collector walks until the chunk
        #: ends.)
        self.times: list[array[int] | None] | None = None
        #: Chains past the first step still within their window from earlier chunks:
        #: (day, step, time, entry time).
        self.open: t.Sequence[tuple[int, int, int, int]] = ()

    def enter(self, day: int, moment: int) -> None:
        """Record a time of the first step."""
        entry = self.entries.setdefault(day, moment)
        if moment < entry:
            self.entries[day] = moment

    def add(self, step: int, steps: int, moment: int) -> None:
        """Record the time of an event of a later ``step`` (of ``steps``)."""
        if self.times is None:
            self.times = [None] * steps
        times = self.times[step]
        if times is None:
            self.times[step] = array("q", (moment,))
        elif moment > times[-1]:
            times.append(moment)
        else:
            at = bisect.bisect_left(times, moment)
            if times[at] != moment:
                times.insert(at, moment)


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
        #: (account, entry day) -> how many settled chains stopped at each step (one increment
        #: per chain; the users who reached each step are summed when the row is handed out).
        self.stopped: dict[tuple[str, int], list[int]] = {}
        #: The same for the chains still open after the last :meth:`advance`, where they stand.
        self.open_rows: dict[tuple[str, int], list[int]] = {}
        #: (account, entry day) -> user -> the step its chain stopped at (settled, not handed
        #: out yet), and the same for the open chains where they stand: the entries that make
        #: funnels over a range exact (:class:`~.model.FunnelEntry`).
        self.stopped_users: dict[tuple[str, int], dict[t.Any, int]] = {}
        self.open_users: dict[tuple[str, int], dict[t.Any, int]] = {}

    def _row(self, key: tuple[str, int], stopped: list[int]) -> FunnelMetrics:
        """The row of an entry day: the users who reached each step (stopped there or later)."""
        reached = list(itertools.accumulate(reversed(stopped)))[::-1]
        return FunnelMetrics(key[0], self.name, self.name, from_day_number(key[1]), reached)

    def advance(self, end: int) -> None:
        """Move every chain as far as the events seen so far allow; settle finished ones.

        ``end`` is the epoch time up to which every event has been seen: a chain whose window
        closes before it can no longer progress. The chains left open are counted where they
        stand as well (:meth:`peek` and :meth:`settle_open` need no other pass over them).
        """
        window, size = self.window, len(self.steps)
        users_left: dict[str, dict[str, _FunnelUser]] = {}
        self.open_rows = {}
        self.open_users = {}
        for account, users in self.users.items():
            # Per entry day: the account's chains stopped at each step, and those still open;
            # and per entry day, each user's step (stopped, and open).
            stopped: dict[int, list[int]] = {}
            still: dict[int, list[int]] = {}
            stopped_users: dict[int, dict[t.Any, int]] = {}
            still_users: dict[int, dict[t.Any, int]] = {}
            waiting: list[int] = []  # entry days of chains at the first step, all still open
            kept: dict[str, _FunnelUser] = {}
            for key, user in users.items():
                entries = user.entries
                if user.times is not None:
                    self._move(key, user, end, (stopped, stopped_users), (still, still_users))
                elif user.open or (entries and min(entries.values()) + window < end):
                    self._wait(key, user, end, (stopped, stopped_users), (still, still_users))
                else:  # most users, most chunks: nothing moves, nothing stops
                    waiting += entries
                    for day in entries:
                        by_user = still_users.get(day)
                        if by_user is None:
                            by_user = still_users[day] = {}
                        by_user[key] = 0
                if user.entries or user.open:
                    kept[key] = user
            for day, count in Counter(waiting).items():
                row = still.get(day)
                if row is None:
                    row = still[day] = [0] * size
                row[0] += count
            for day, row in stopped.items():
                self._add(self.stopped, (account, day), row)
            for day, row in still.items():
                self.open_rows[account, day] = row
            for day, by_user in stopped_users.items():
                self.stopped_users.setdefault((account, day), {}).update(by_user)
            for day, by_user in still_users.items():
                self.open_users[account, day] = by_user
            if kept:
                users_left[account] = kept
        self.users = users_left

    def _count(self, counts: _Counts, day: int, step: int, key: t.Any) -> None:
        """Count one chain of user ``key`` entered on ``day`` where it stands (``step``)."""
        rows, users = counts
        row = rows.get(day)
        if row is None:
            row = rows[day] = [0] * len(self.steps)
        row[step] += 1
        by_user = users.get(day)
        if by_user is None:
            by_user = users[day] = {}
        by_user[key] = step

    def _wait(
        self,
        key: t.Any,
        user: _FunnelUser,
        end: int,
        stopped: _Counts,
        still: _Counts,
    ) -> None:
        """:meth:`_move` for a user without events of a later step: no chain moves.

        The chains whose window has closed stop where they stand.
        """
        window = self.window
        waiting: dict[int, int] = {}
        for day, t1 in user.entries.items():
            if t1 + window < end:
                self._count(stopped, day, 0, key)
            else:
                waiting[day] = t1
                self._count(still, day, 0, key)
        user.entries = waiting
        chains = []
        for chain in user.open:
            if chain[3] + window < end:
                self._count(stopped, chain[0], chain[1], key)
            else:
                chains.append(chain)
                self._count(still, chain[0], chain[1], key)
        user.open = chains

    def _move(
        self,
        key: t.Any,
        user: _FunnelUser,
        end: int,
        stopped: _Counts,
        still: _Counts,
    ) -> None:
        """Move the user's chains along its events; count each where it stops or stands.

        A chain still at the first step stays an entry (day -> its time) for the next chunk,
        the others are kept as (day, step, time, entry time).
        """
        size = len(self.steps)
        last = size - 1
        window, strict, times = self.window, self.strict, user.times
        assert times is not None
        waiting: dict[int, int] = {}
        chains: list[tuple[int, int, int, int]] = []
        for day, step, moment, t1 in [
            *((day, 0, t1, t1) for day, t1 in user.entries.items()),
            *user.open,
        ]:
            deadline = t1 + window
            while step < last:
                later = times[step + 1]
                if later is None:  # no event of the next step in this chunk
                    break
                if strict[step + 1]:
                    found = bisect.bisect_right(later, moment)
                else:
                    found = bisect.bisect_left(later, moment)
                if found == len(later) or later[found] > deadline:
                    break
                step, moment = step + 1, later[found]
            if step == last or deadline < end:
                rows, users = stopped
            else:
                rows, users = still
                if step:
                    chains.append((day, step, moment, t1))
                else:
                    waiting[day] = t1
            # :meth:`_count`, written out: once per chain of every user with events.
            row = rows.get(day)
            if row is None:
                row = rows[day] = [0] * size
            row[step] += 1
            by_user = users.get(day)
            if by_user is None:
                by_user = users[day] = {}
            by_user[key] = step
        user.entries, user.open = waiting, chains
        user.times = None  # the next chunk's events are searched from scratch

    @staticmethod
    def _add(rows: dict[tuple[str, int], list[int]], key: tuple[str, int], row: list[int]) -> None:
        """Add ``row`` to ``rows[key]``."""
        total = rows.get(key)
        if total is None:
            rows[key] = list(row)
        else:
            for step, count in enumerate(row):
                total[step] += count

    def settle_open(self) -> None:
        """Count every open chain where it stands (the end of the data)."""
        for key, row in self.open_rows.items():
            self._add(self.stopped, key, row)
        for key, by_user in self.open_users.items():
            self.stopped_users.setdefault(key, {}).update(by_user)
        self.users = {}
        self.open_rows = {}
        self.open_users = {}

    def peek(self) -> list[FunnelMetrics]:
        """The entry days not handed out yet, counted where their users stand (nothing changes).

        What :meth:`settle_open` then :meth:`take` would give if the data ended here: the sync
        stores it with the days it belongs to, so a sync stopped before those days settle still
        leaves them their rows (later syncs complete them).
        """
        rows = {key: list(stopped) for key, stopped in self.stopped.items()}
        for key, row in self.open_rows.items():
            self._add(rows, key, row)
        return [self._row(key, stopped) for key, stopped in sorted(rows.items())]

    def peek_entries(self, pseudonym: t.Callable[[t.Any], str]) -> list[FunnelEntry]:
        """The entries of :meth:`peek`'s rows, one per user and entry day."""
        users: dict[tuple[str, int], dict[t.Any, int]] = {
            key: dict(by_user) for key, by_user in self.stopped_users.items()
        }
        for key, by_user in self.open_users.items():
            users.setdefault(key, {}).update(by_user)
        return self._entries(users, pseudonym)

    def take_entries(
        self, before: int | None, pseudonym: t.Callable[[t.Any], str]
    ) -> list[FunnelEntry]:
        """Hand out the entries of the days :meth:`take` hands out (call it first)."""
        taken = {}
        for key in list(self.stopped_users):
            if before is None or key[1] < before:
                taken[key] = self.stopped_users.pop(key)
        return self._entries(taken, pseudonym)

    def _entries(
        self, users: dict[tuple[str, int], dict[t.Any, int]], pseudonym: t.Callable[[t.Any], str]
    ) -> list[FunnelEntry]:
        out: list[FunnelEntry] = []
        for (account, day), by_user in sorted(users.items()):
            date = from_day_number(day)
            named = sorted((pseudonym(user), step) for user, step in by_user.items())
            out.extend(FunnelEntry(account, self.name, date, name, step) for name, step in named)
        return out

    def take(self, before: int | None) -> list[FunnelMetrics]:
        """Hand out the counts of entry days before day number ``before`` (all with None)."""
        out = []
        for key in sorted(self.stopped):
            if before is None or key[1] < before:
                out.append(self._row(key, self.stopped.pop(key)))
        return out


@dataclass
class ChunkResult:
    """What one chunk finished: its days' metrics and the funnel entry days now settled."""

    daily: list[DailyMetrics] = field(default_factory=list)
    funnels: list[FunnelMetrics] = field(default_factory=list)
    #: The entry days not settled yet (their window is still open), counted where their users
    #: stand: what :meth:`Aggregator.finish` would give if the data ended with this chunk.
    open_funnels: list[FunnelMetrics] = field(default_factory=list)
    #: The users' entries of ``funnels`` and of ``open_funnels``: one per user and entry day.
    entries: list[FunnelEntry] = field(default_factory=list)
    open_entries: list[FunnelEntry] = field(default_factory=list)


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

    :param pseudonym: turns a ``distinct_id`` into the pseudonym its
        :class:`~.model.FunnelEntry` records carry (the store's keyed hash); without it, no
        entries are handed out (only the daily funnel rows).
    """

    def __init__(
        self, settings: MetricsSettings, pseudonym: t.Callable[[t.Any], str] | None = None
    ) -> None:
        self.settings = settings
        self.pseudonym = pseudonym
        self.stats = AggregateStats()
        window = settings.funnel_window_hours * 3600
        self.funnels = [
            _Funnel(index, funnel.name, funnel.steps, window)
            for index, funnel in enumerate(settings.funnels)
        ]
        self._layout = _Layout(len(settings.categories), len(self.funnels))
        self._kinds = _Kinds(settings, self._layout)
        self._fetch = _fetcher(settings.breakdowns) if settings.breakdowns else None
        self._labels = _LabelCache(len(settings.breakdowns))
        self._score = engagement_scorer(settings)

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
        result = ChunkResult()
        if metrics:
            by_day: dict[int, dict[str, tuple[_AccountDay]]] = {
                day: {} for day in range(first_day, last_day + 1)
            }
            self._consume(events, first_day, last_day, by_day)
            for day, accounts in by_day.items():
                date = from_day_number(day)
                for account in sorted(accounts):
                    bucket = accounts[account][0]
                    self.stats.long_values += bucket.fold(self._labels.combinations)
                    self._enter(day, bucket)
                    result.daily.append(self._daily(account, date, bucket))
        else:
            self._feed_funnels(events, first_day, last_day)
        end = (last_day + 1) * DAY
        pseudonym = self.pseudonym
        for funnel in self.funnels:
            funnel.advance(end)
            # Day D is settled once every entry of D (at the latest, its last second) has had its
            # whole window: (D + 1) * DAY + window <= end.
            before = (end - funnel.window) // DAY
            result.funnels.extend(funnel.take(before=before))
            result.open_funnels.extend(funnel.peek())
            if pseudonym is None:
                funnel.stopped_users.clear()
            else:
                result.entries.extend(funnel.take_entries(before, pseudonym))
                result.open_entries.extend(funnel.peek_entries(pseudonym))
        return result

    def finish(self) -> list[FunnelMetrics]:
        """The remaining funnel entry days, counted where their users stand now."""
        return self.finish_result().funnels

    def finish_result(self) -> ChunkResult:
        """:meth:`finish`'s rows, with their users' entries (with a ``pseudonym``)."""
        out = ChunkResult()
        for funnel in self.funnels:
            funnel.settle_open()
            out.funnels.extend(funnel.take(before=None))
            if self.pseudonym is not None:
                out.entries.extend(funnel.take_entries(None, self.pseudonym))
            funnel.stopped_users.clear()
        return out

    def _route(
        self, value: object, accounts: dict[str, tuple[_AccountDay]]
    ) -> tuple[tuple[_AccountDay, ...], int]:
        """The counters of the accounts ``value`` names on a day, and how many ids it refuses.

        The counters of a new account are made here. The slow path of :meth:`_consume`: once
        per account-day, and for the values that are not one known account id (lists,
        numbers, ids refused, no account).
        """
        names, refused = storable_accounts(value)
        found: list[_AccountDay] = []
        for name in names:
            day = accounts.get(name)
            if day is None:
                funnels = tuple(funnel.users.setdefault(name, {}) for funnel in self.funnels)
                day = accounts[name] = (_AccountDay(len(self.settings.breakdowns), funnels),)
            found += day
        return tuple(found), refused

    def _consume(
        self,
        events: t.Iterable[Event],
        first_day: int,
        last_day: int,
        by_day: dict[int, dict[str, tuple[_AccountDay]]],
    ) -> None:
        # The hot loop: one pass, locals only, a fast path for the common case at every step;
        # what can be worked out once per account-day, event name or breakdown values is
        # worked out once (``_route``, ``_kinds``, ``_labels``), and counts per breakdown and
        # funnel entries are added up per account-day and user-day afterwards.
        stats = self.stats
        prop = self.settings.account_property
        getter = self.settings.account_getter
        fetch = self._fetch
        labels_of = self._labels
        kinds = self._kinds
        route = self._route
        head, start = self._layout.times, self._layout.start
        gap = SESSION_GAP
        fold_at = FOLD_AT
        # The epoch seconds of the previous event's day: its first, and the next day's first.
        low = high = 0
        # Day -> account -> its counters alone in a tuple: an event of a known account (its
        # id was checked when they were made) finds what it counts for in one lookup, however
        # many accounts an event may name.
        accounts: dict[str, tuple[_AccountDay]] = {}
        combinations = labels_of.combinations
        combo: _Combo = ()
        counted = unattributed = outside = duplicates = rejected = 0
        for event in events:
            props = event["properties"]
            moment = props["time"]
            if moment.__class__ is not int:
                moment = int(moment)
            if not low <= moment < high:  # another day than the previous event's
                day = moment // DAY
                if not first_day <= day <= last_day:
                    outside += 1
                    continue
                low = day * DAY
                high = low + DAY
                accounts = by_day[day]
            # The time in the user's day (see _Layout); the funnels' steps keep epoch seconds.
            second = moment - low
            value = props.get(prop) if getter is None else getter(event)
            targets: tuple[_AccountDay, ...] | None
            try:
                # A number or None is no account id (a string): no known account either.
                targets = accounts.get(value)  # type: ignore[arg-type]  # any JSON value: see above
            except TypeError:  # a list
                targets = None
            if targets is None:
                targets, refused = route(value, accounts)
                rejected += refused
                if not targets:
                    unattributed += 1
                    continue
            name, item, bit, entries, later = kinds[event["event"]]
            hour = second // 3600
            if fetch is not None:
                values = fetch(props)
                try:
                    combo = labels_of[values]
                except TypeError:  # a list or an object as a value
                    combo = labels_of.work_out(values)
            user = props.get("distinct_id")
            insert_id = props.get("$insert_id")
            # Mixpanel's deduplication key (the user, account and day are the bucket's).
            twin = (hash((name, second, insert_id)) or 1) if insert_id else 0
            for bucket in targets:
                if user:
                    record = bucket.users.get(user)
                    if record is None:
                        record = bucket.users[user] = start[:]
                        record.append(second)
                        record.append(second)
                        if twin:
                            record.append(twin)
                    else:
                        at = record[0]  # the last session's end
                        end = record[at]
                        if second > end:
                            # Later than every event of the user so far: not a copy.
                            if second - end <= gap:
                                record[at] = second
                            else:  # a new session
                                record.insert(at + 1, second)
                                record.insert(at + 1, second)
                                record[0] = at + 2
                            if twin:
                                record.append(twin)
                        else:
                            if twin:
                                if twin not in record[at + 1 :]:
                                    record.append(twin)
                                elif bucket is targets[0]:
                                    break  # a copy (of the event of the first account it names)
                                # (A copy seen only by a later account: its account list
                                # changed, so it counts for the accounts that are new.)
                            if second < record[at - 1]:
                                sessions = (at - head + 1) // 2
                                record[0] = at + 2 * add_time(record, second, head, sessions)
                    # Most events of a category find its bit already set: an item of the array
                    # is read more cheaply than written.
                    if bit and not record[item] & bit:
                        record[item] |= bit
                    for entry in entries:
                        if second < record[entry]:
                            record[entry] = second
                    if later:
                        funnels = bucket.funnels
                        for index, step, steps in later:
                            state = funnels[index].get(user)
                            if state is None:
                                state = funnels[index][user] = _FunnelUser()
                            state.add(step, steps, moment)
                elif twin:
                    anonymous = bucket.anonymous
                    if anonymous is None:
                        bucket.anonymous = {twin}
                    elif twin not in anonymous:
                        anonymous.add(twin)
                    elif bucket is targets[0]:
                        break
                counts = bucket.events
                counts[name] = counts.get(name, 0) + 1
                bucket.hours[hour] += 1
                if fetch is not None:
                    combos = bucket.combos
                    count = combos.get(combo)
                    if count is not None:
                        combos[combo] = count + 1
                    else:
                        if len(combos) >= fold_at:
                            stats.long_values += bucket.fold(combinations)
                        combos[combo] = 1
            else:
                counted += 1
                continue
            duplicates += 1  # the loop stopped at the first account: a copy, not counted
        stats.events += counted
        stats.unattributed += unattributed
        stats.outside += outside
        stats.duplicates += duplicates
        stats.rejected_accounts += rejected

    def _enter(self, day: int, bucket: _AccountDay) -> None:
        """Hand the funnels the first time each user of an account-day did their first step.

        Kept in the user's day until now: one lookup per user-day rather than one per event.
        """
        first = self._layout.entries
        start = day * DAY
        for index, by_user in enumerate(bucket.funnels):
            item = first + index
            for user, record in bucket.users.items():
                second = record[item]
                if second != NEVER:
                    state = by_user.get(user)
                    if state is None:
                        state = by_user[user] = _FunnelUser()
                    state.enter(day, start + second)

    def _feed_funnels(self, events: t.Iterable[Event], first_day: int, last_day: int) -> None:
        """Feed the local funnels only (``metrics=False``).

        No counters (these days were counted when they were synced: a sync's report counts the
        events of its own days once), and no deduplication (a copy moves no funnel).
        """
        prop = self.settings.account_property
        getter = self.settings.account_getter
        for event in events:
            props = event["properties"]
            moment = props["time"]
            if moment.__class__ is not int:
                moment = int(moment)
            day = moment // DAY
            if not first_day <= day <= last_day:
                continue
            user = props.get("distinct_id")
            refs = self._kinds.steps.get(event["event"], ())
            if not (refs and user):
                continue
            names, _ = storable_accounts(props.get(prop) if getter is None else getter(event))
            for account in names:
                for index, step, steps in refs:
                    by_user = self.funnels[index].users.setdefault(account, {})
                    state = by_user.get(user)
                    if state is None:
                        state = by_user[user] = _FunnelUser()
                    if step:
                        state.add(step, steps, moment)
                    else:
                        state.enter(day, moment)

    def _daily(self, account: str, date: dt.date, bucket: _AccountDay) -> DailyMetrics:
        records = bucket.users.values()
        users = len(records)
        adopted = [0] * len(self._kinds.categories)
        for n in range(0, len(adopted), BITS):
            # Users per combination of categories (counted in C), then per category: one pass
            # over the bits of each combination.
            item = self._layout.bits + n // BITS
            for bits, count in Counter(map(operator.itemgetter(item), records)).items():
                bit = 0
                while bits:
                    if bits & 1:
                        adopted[n + bit] += count
                    bits >>= 1
                    bit += 1
        total = sum(bucket.events.values())
        return DailyMetrics(
            account=account,
            date=date,
            total_events=total,
            unique_users=users,
            sessions=self._layout.sessions(records),
            avg_events_per_user=round(total / users, 4) if users else 0.0,
            # Names and values are stored as JSON, where PostgreSQL refuses NUL and lone
            # surrogates: cleaned once per account-day here rather than once per event.
            event_counts=_clean_counts(bucket.events),
            breakdowns={
                prop: _clean_counts(values)
                for prop, values in zip(self.settings.breakdowns, bucket.breakdowns, strict=True)
            },
            engagement_score=self._score(adopted, users),
            hours=list(bucket.hours),
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


def group_profiles(
    profiles: t.Iterable[t.Mapping[str, t.Any]],
    settings: MetricsSettings,
    stats: AggregateStats | None = None,
) -> list[GroupProfile]:
    """The accounts' group profiles, from Engage's group profiles (``data_group_id``).

    A group profile's ``$distinct_id`` is its group id: the account. Only the configured
    ``group_properties`` are kept, as stored labels (strings over :data:`MAX_LABEL` characters
    become :data:`TOO_LONG`, NUL and lone surrogates U+FFFD); numbers and booleans stay numbers
    and booleans. Group ids the store cannot keep are refused and counted in ``stats``.
    """
    stats = stats if stats is not None else AggregateStats()
    found: dict[str, GroupProfile] = {}
    for profile in profiles:
        properties = profile.get("$properties")
        accounts, refused = storable_accounts(profile.get("$distinct_id"))
        stats.rejected_accounts += refused
        if not accounts or not isinstance(properties, dict):
            continue
        kept: dict[str, t.Any] = {}
        for name in settings.group_properties:
            if name not in properties:
                continue
            value = properties[name]
            if isinstance(value, (bool, int, float)) and not (
                isinstance(value, float) and not math.isfinite(value)
            ):
                kept[name] = value
            else:
                text = label(value)
                if text is TOO_LONG:
                    stats.long_values += 1
                kept[name] = clean_text(text)
        account = accounts[0]
        found[account] = GroupProfile(account, t.cast(str, settings.group_key), kept)
    return [found[account] for account in sorted(found)]


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
