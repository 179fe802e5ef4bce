"""Mixpanel's record rules, checked against the strict stand-in's own reading of the docs."""

from __future__ import annotations

import json
import time
import typing as t

import hypothesis.strategies as st
import mixpanel
import pytest
from hypothesis import given, settings

from pyramid_mixpanel import rules
from pyramid_mixpanel.delivery.transport import MixpanelTransport

from .loopback import MixpanelStandIn

NOW_MS = int(time.time() * 1000)


def event(**properties: object) -> dict[str, t.Any]:
    return {
        "event": "E",
        "properties": {"time": NOW_MS, "distinct_id": "u", "$insert_id": "i-1", **properties},
    }


def test_time_ms() -> None:
    assert rules.time_ms(1_700_000_000) == 1_700_000_000_000
    assert rules.time_ms(1_700_000_000.25) == 1_700_000_000_250
    assert rules.time_ms(1_700_000_000_250) == 1_700_000_000_250
    for bad in (None, "1", True, float("inf"), float("nan")):
        assert rules.time_ms(bad) is None


def test_blocked_ids_are_compared_without_case_or_spaces() -> None:
    assert rules.blocked_id(" Undefined ")
    assert rules.blocked_id("00000000-0000-0000-0000-000000000000")
    assert not rules.blocked_id("user-1")
    assert not rules.blocked_id(0)  # not a string: the type check is the caller's


def test_each_rule() -> None:
    assert rules.event_problem(event(), NOW_MS) is None
    cases: list[tuple[object, str]] = [
        ([], "event"),
        ({"event": ""}, "event"),
        ({"event": "E", "properties": []}, "properties"),
        (event(time=None), "properties.time"),
        (event(time=1000), "properties.time"),
        (event(time=NOW_MS + 3_600_001), "properties.time"),
        (event(distinct_id=7), "properties.distinct_id"),
        (event(distinct_id="nil"), "properties.distinct_id"),
        (event(**{"$insert_id": "x" * 37}), "properties.$insert_id"),
        (event(**{"$insert_id": "-1"}), "properties.$insert_id"),
        (event(**{f"p{i}": 1 for i in range(252)}), "properties"),
        (event(deep={"a": {"b": {"c": {}}}}), "properties.deep"),
        (event(deep=[[[[1]]]]), "properties.deep"),
        (event(wide={str(i): i for i in range(255)}), "properties.wide"),
        (event(long=list(range(255))), "properties.long"),
        (event(inner=[{"a": list(range(255))}]), "properties.inner"),
    ]
    for record, field in cases:
        problem = rules.event_problem(record, NOW_MS)
        assert problem is not None and problem[0] == field, (record, problem)
    # At the limits, still fine.
    assert rules.event_problem(event(**{f"p{i}": 1 for i in range(251)}), NOW_MS) is None
    assert rules.event_problem(event(deep={"a": {"b": [1]}}, n=list(range(254))), NOW_MS) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=30,
)
ids = st.sampled_from(["u", "anon", "NULL", "0", "", "abc-123", "x" * 40, " none "])


@settings(deadline=None)
@given(
    props=st.dictionaries(st.text(min_size=1, max_size=4), json_values, max_size=6),
    distinct_id=ids,
    insert_id=ids,
    offset=st.integers(-(10**12), 10**8),
)
def test_what_the_client_accepts_the_strict_stand_in_accepts(
    props: dict[str, t.Any], distinct_id: str, insert_id: str, offset: int
) -> None:
    """No record this client lets through would be refused by (the stand-in of) Mixpanel."""
    record = event(**props)
    record["properties"].update(
        {"distinct_id": distinct_id, "$insert_id": insert_id, "time": NOW_MS + offset}
    )
    stand_in = MixpanelStandIn.__new__(MixpanelStandIn)  # its rules only: no server needed
    stand_in.clock = lambda: NOW_MS / 1000
    ours = rules.event_problem(record, NOW_MS)
    theirs = stand_in.event_problem(record, "imports")
    if ours is None:
        assert theirs is None, (record, theirs)
    # The transport prepares and checks the same record without ever raising.
    prepared, reason, _ = MixpanelTransport(prepared=False)._prepare(
        "events", json.dumps(record).encode(), NOW_MS
    )
    assert (prepared is None) == bool(reason)


def test_the_official_clients_form_posts_get_the_verbose_answer_it_reads() -> None:
    """mixpanel-python sends ``verbose=1`` in its form body and parses the JSON answer."""
    with MixpanelStandIn() as api:
        consumer = mixpanel.Consumer(events_url=f"{api.base_url}/track", retry_limit=0)
        message = event(token="t")
        message["properties"]["time"] = NOW_MS // 1000
        consumer.send("events", json.dumps(message))  # raises unless the answer says status 1
        assert api.requests[-1].query["verbose"] == "1"
        with pytest.raises(mixpanel.MixpanelException, match="no valid data"):
            consumer.send("events", json.dumps(event(distinct_id="undefined")))
    assert len(api.events()) == 1
