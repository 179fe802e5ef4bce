"""MixpanelTrack: validation, message building, buffering and release, in testing mode."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import gc
import json
import logging
import time
import typing as t
import weakref

import mixpanel
import pytest

from pyramid_mixpanel import (
    Event,
    EventProperties,
    Events,
    GroupKeys,
    GroupProperties,
    MixpanelTrack,
    ProfileMetaProperties,
    ProfileProperties,
    Property,
)
from pyramid_mixpanel.consumer import MockedConsumer, RequestBuffer
from pyramid_mixpanel.customerio import CustomerIOCall
from pyramid_mixpanel.delivery.base import Prepared
from pyramid_mixpanel.delivery.transport import MixpanelTransport
from pyramid_mixpanel.runtime import Runtime
from pyramid_mixpanel.settings import parse_settings
from pyramid_mixpanel.track import final_event


@dataclasses.dataclass(frozen=True)
class Keys(GroupKeys):
    company: Property = Property("company_id")


@dataclasses.dataclass(frozen=True)
class Groups(GroupProperties):
    plan: Property = Property("Plan")
    tags: Property = Property("Tags")


@dataclasses.dataclass(frozen=True)
class Profile(ProfileProperties):
    logins: Property = Property("Logins")
    tags: Property = Property("Tags")


class Color(str, enum.Enum):
    RED = "red"


SETTINGS = {
    "mixpanel.token": "false",
    "mixpanel.group_keys": Keys,
    "mixpanel.group_properties": Groups,
    "mixpanel.profile_properties": Profile,
}


@pytest.fixture
def mp() -> MixpanelTrack:
    return MixpanelTrack(SETTINGS, distinct_id="u1")


def messages(mp: MixpanelTrack) -> list[dict[str, t.Any]]:
    return mp.mocked_messages


def test_track_records_a_clean_message(mp: MixpanelTrack) -> None:
    mp.track(Events.page_viewed, {EventProperties.path: "/x", EventProperties.title: "Home"})
    assert messages(mp) == [
        {
            "endpoint": "events",
            "msg": {
                "event": "Page Viewed",
                "properties": {"distinct_id": "u1", "Path": "/x", "Title": "Home"},
            },
        }
    ]
    assert mp.api._consumer is t.cast(t.Any, mp.api._consumer)
    assert mp.api._consumer.mocked_messages is mp.mocked_messages
    assert mp.api._consumer.flushed is False


def test_system_properties_are_kept_when_asked(mp: MixpanelTrack) -> None:
    class KeepAll(MockedConsumer):
        DROP_SYSTEM_MESSAGE_PROPERTIES = False

    mp.api._consumer = KeepAll()
    mp.track(Events.page_viewed)
    mp.profile_set({ProfileProperties.dollar_name: "A"})
    event, profile = mp.mocked_messages
    assert set(event["msg"]["properties"]) >= {"token", "time", "$insert_id", "mp_lib"}
    assert len(event["msg"]["properties"]["$insert_id"]) <= 36
    assert {"$token", "$time"} <= set(profile["msg"])


def test_global_event_props_apply_to_every_event_and_props_win() -> None:
    mp = MixpanelTrack(
        SETTINGS, distinct_id="u1", global_event_props={EventProperties.title: "Global"}
    )
    mp.track(Events.page_viewed)
    mp.track(Events.page_viewed, {EventProperties.title: "Local"})
    titles = [m["msg"]["properties"]["Title"] for m in mp.mocked_messages]
    assert titles == ["Global", "Local"]


def test_missing_distinct_id_is_an_attribute_error() -> None:
    mp = MixpanelTrack(SETTINGS)
    with pytest.raises(
        AttributeError, match="distinct_id must be set before you can send events or set properties"
    ):
        mp.track(Events.page_viewed)
    with pytest.raises(AttributeError, match="profile_set"):
        mp.profile_set({})
    mp.distinct_id = "later"
    mp.track(Events.page_viewed)
    assert mp.mocked_messages[0]["msg"]["properties"]["distinct_id"] == "later"


def test_undeclared_event_is_a_value_error_with_a_hint(mp: MixpanelTrack) -> None:
    with pytest.raises(
        ValueError, match=r"Event\(name='Page Viewd'.*Did you mean Events.page_viewed"
    ):
        mp.track(Event("Page Viewd"))
    with pytest.raises(TypeError, match="expected a Event from Events, got 'Page Viewed'"):
        mp.track("Page Viewed")  # type: ignore[arg-type]  # the mistake under test
    assert mp.mocked_messages == []


def test_undeclared_property_is_a_value_error_with_a_hint(mp: MixpanelTrack) -> None:
    with pytest.raises(ValueError, match=r"Did you mean EventProperties.path \('Path'\)"):
        mp.track(Events.page_viewed, {Property("path"): "/"})
    with pytest.raises(TypeError, match="expected a Property"):
        mp.track(Events.page_viewed, {"Path": "/"})  # type: ignore[dict-item]  # the mistake under test
    # A profile property is not an event property.
    with pytest.raises(ValueError, match="event properties"):
        mp.track(Events.page_viewed, {ProfileProperties.dollar_email: "a@b"})
    with pytest.raises(ValueError, match="profile properties"):
        mp.profile_set({EventProperties.path: "/"})
    with pytest.raises(ValueError, match="profile meta properties"):
        mp.profile_set({}, meta={EventProperties.path: "/"})


def test_values_are_converted_or_refused(mp: MixpanelTrack) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    mp.track(
        Events.page_viewed,
        {
            EventProperties.title: when,
            EventProperties.path: [dt.date(2026, 1, 2), 1.5, ("a", {"k": Color.RED})],
            EventProperties.dollar_referrer: None,
        },
    )
    props = mp.mocked_messages[0]["msg"]["properties"]
    assert props["Title"] == "2026-01-02T01:04:05"
    assert props["Path"] == ["2026-01-02", 1.5, ["a", {"k": "red"}]]
    assert props["$referrer"] is None
    with pytest.raises(TypeError, match="'Path' is a object"):
        mp.track(Events.page_viewed, {EventProperties.path: object()})
    with pytest.raises(ValueError, match="'Path' is nan"):
        mp.track(Events.page_viewed, {EventProperties.path: float("nan")})
    with pytest.raises(ValueError, match="inf"):
        mp.track(Events.page_viewed, {EventProperties.path: [float("inf")]})
    assert len(mp.mocked_messages) == 1


def test_at_most_255_properties() -> None:
    many = {Property(f"P{i}"): i for i in range(256)}
    cls = dataclasses.make_dataclass(
        "Many",
        [(f"p{i}", Property, dataclasses.field(default=p)) for i, p in enumerate(many)],
        bases=(EventProperties,),
        frozen=True,
    )
    mp = MixpanelTrack({"mixpanel.event_properties": cls}, distinct_id="u")
    # The ones the client and the transport add count too (token, time, $insert_id, ip, ...).
    with pytest.raises(ValueError, match="would have 255 properties with the ones every event"):
        mp.track(Events.page_viewed, dict(list(many.items())[:248]))
    mp.track(Events.page_viewed, dict(list(many.items())[:247]))
    with pytest.raises(ValueError, match="would have 263 properties"):
        mp.track(Events.page_viewed, many)


def test_long_strings_warn_in_testing_mode(
    mp: MixpanelTrack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        mp.track(Events.page_viewed, {EventProperties.path: "x" * 256})
        mp.track(Events.page_viewed, {EventProperties.path: "x" * 255})
    assert caplog.text.count("mixpanel.long_string") == 1
    assert "property='Path'" in caplog.text


def test_ip_and_recent_time_go_to_track(mp: MixpanelTrack) -> None:
    recent = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    mp.track(Events.page_viewed, time=recent, ip="203.0.113.9")
    mp.track(Events.page_viewed, time=recent.replace(tzinfo=None).timestamp())
    first = mp.mocked_messages[0]
    assert first["endpoint"] == "events"
    assert first["msg"]["properties"]["ip"] == "203.0.113.9"
    with pytest.raises(TypeError, match="ip must be a string"):
        mp.track(Events.page_viewed, ip=1)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(TypeError, match="time must be a datetime"):
        mp.track(Events.page_viewed, time="yesterday")  # type: ignore[arg-type]  # the mistake under test


def test_time_is_sent_when_given() -> None:
    mp = MixpanelTrack(SETTINGS, distinct_id="u1")

    class KeepAll(MockedConsumer):
        DROP_SYSTEM_MESSAGE_PROPERTIES = False

    mp.api._consumer = KeepAll()
    recent = dt.datetime(2026, 1, 1, 12, 0, 0)
    now = recent.replace(tzinfo=dt.timezone.utc).timestamp() + 3600
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: now)
        mp.track(Events.page_viewed, time=recent)
    assert mp.mocked_messages[0]["msg"]["properties"]["time"] == now - 3600


def test_old_events_go_to_import(mp: MixpanelTrack) -> None:
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=6)
    mp.track(Events.page_viewed, {EventProperties.path: "/old"}, time=old)
    assert mp.mocked_messages == [
        {
            "endpoint": "imports",
            "msg": {"event": "Page Viewed", "properties": {"distinct_id": "u1", "Path": "/old"}},
        }
    ]


def test_old_events_are_buffered_for_import_outside_testing_mode() -> None:
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=6)
    live = MixpanelTrack({"mixpanel.token": "tok"}, distinct_id="u")
    live.track(Events.page_viewed, time=old)
    assert t.cast(RequestBuffer, live.api._consumer).messages[0][0] == "imports"


def test_profile_methods_build_engage_messages(mp: MixpanelTrack) -> None:
    created = dt.datetime(2020, 1, 1, 10, 0)
    mp.profile_set(
        {ProfileProperties.dollar_created: created, ProfileProperties.dollar_email: "a@b.c"},
        meta={ProfileMetaProperties.dollar_ip: "1.2.3.4", ProfileMetaProperties.dollar_time: 5},
    )
    mp.people_set_once({Profile.logins: 0})
    mp.people_append({Profile.tags: "a"})
    mp.people_union({Profile.tags: ["a", "b"]})
    mp.people_remove({Profile.tags: "a"})
    mp.people_unset([Profile.tags])
    mp.profile_increment({Profile.logins: 1})
    mp.people_clear_charges()
    mp.people_delete()
    ops = [(m["endpoint"], m["msg"]) for m in mp.mocked_messages]
    assert all(endpoint == "people" for endpoint, _ in ops)
    assert ops[0][1] == {
        "$distinct_id": "u1",
        "$set": {"$created": "2020-01-01T10:00:00", "$email": "a@b.c"},
        "$ip": "1.2.3.4",  # $time is a system key: dropped like an event's time
    }
    assert ops[1][1]["$set_once"] == {"Logins": 0}
    assert ops[2][1]["$append"] == {"Tags": "a"}
    assert ops[3][1]["$union"] == {"Tags": ["a", "b"]}
    assert ops[4][1]["$remove"] == {"Tags": "a"}
    assert ops[5][1]["$unset"] == ["Tags"]
    assert ops[6][1]["$add"] == {"Logins": 1}
    assert ops[7][1]["$unset"] == ["$transactions"]
    assert ops[8][1]["$delete"] == ""


def test_meta_time_is_epoch_seconds_like_the_official_client(mp: MixpanelTrack) -> None:
    mp.api._consumer = MockedConsumer()
    mp.api._consumer.DROP_SYSTEM_MESSAGE_PROPERTIES = False
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    mp.profile_set({}, meta={ProfileMetaProperties.dollar_time: when})
    mp.profile_set({}, meta={ProfileMetaProperties.dollar_ignore_time: True})
    assert mp.mocked_messages[0]["msg"]["$time"] == int(when.timestamp())
    assert mp.mocked_messages[1]["msg"]["$ignore_time"] is True


def test_wrong_value_types_are_type_errors(mp: MixpanelTrack) -> None:
    with pytest.raises(TypeError, match="people_union needs lists, 'Tags' is str"):
        mp.people_union({Profile.tags: "a"})
    with pytest.raises(TypeError, match="profile_increment needs numbers, 'Logins' is str"):
        mp.profile_increment({Profile.logins: "1"})
    with pytest.raises(TypeError, match="is bool"):
        mp.profile_increment({Profile.logins: True})
    with pytest.raises(TypeError, match="amount must be a number"):
        mp.profile_track_charge("9.99")  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(ValueError, match="profile properties"):
        mp.people_unset([EventProperties.path])
    assert mp.mocked_messages == []


def test_track_charge_appends_a_transaction(mp: MixpanelTrack) -> None:
    mp.profile_track_charge(9.99, {EventProperties.title: "Pro"})
    mp.profile_track_charge(5, {Profile.logins: 1})
    first = mp.mocked_messages[0]["msg"]["$append"]["$transactions"]
    assert first["$amount"] == 9.99
    assert first["Title"] == "Pro"
    # As the official client and the original package: no $time is added (Mixpanel stamps it).
    assert "$time" not in first


def test_group_methods(mp: MixpanelTrack) -> None:
    mp.track(Events.page_viewed, {Keys.company: "acme"})
    mp.group_set(Keys.company, "acme", {Groups.plan: "pro"})
    mp.group_set_once(Keys.company, "acme", {Groups.plan: "free"})
    mp.group_union(Keys.company, "acme", {Groups.tags: ["a"]})
    mp.group_remove(Keys.company, "acme", {Groups.tags: "a"})
    mp.group_unset(Keys.company, "acme", [Groups.tags])
    mp.group_delete(Keys.company, "acme")
    endpoints = [m["endpoint"] for m in mp.mocked_messages]
    assert endpoints == ["events"] + ["groups"] * 6
    group_set = mp.mocked_messages[1]["msg"]
    assert group_set["$group_key"] == "company_id"
    assert group_set["$group_id"] == "acme"
    assert group_set["$set"] == {"Plan": "pro"}
    assert mp.mocked_messages[-1]["msg"]["$delete"] == ""
    with pytest.raises(ValueError, match="group keys"):
        mp.group_set(Property("org"), "x", {})
    with pytest.raises(TypeError, match="group_union needs lists"):
        mp.group_union(Keys.company, "acme", {Groups.tags: "a"})
    with pytest.raises(ValueError, match="group properties"):
        mp.group_unset(Keys.company, "acme", [Profile.logins])


def test_catalogue_classes_are_exposed(mp: MixpanelTrack) -> None:
    # Instances of the configured classes, as the original package exposed them.
    assert mp.events == Events() and type(mp.events) is Events
    assert type(mp.event_properties) is EventProperties
    assert mp.profile_properties == Profile()
    assert mp.profile_meta_properties == ProfileMetaProperties()
    assert mp.profile_properties is mp.profile_properties  # built once per app


def test_testing_mode_flush_marks_flushed_and_keeps_messages(mp: MixpanelTrack) -> None:
    mp.track(Events.page_viewed)
    mp.flush()
    assert mp.api._consumer.flushed is True
    assert len(mp.mocked_messages) == 1


def test_settle_releases_once_and_later_messages_follow_the_outcome() -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "tok"}))
    mp = MixpanelTrack(runtime, distinct_id="u")
    delivered: list[tuple[str, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            runtime, "deliver", lambda msgs, calls=(), consumer=None: delivered.extend(msgs)
        )
        mp.track(Events.page_viewed)
        mp.settle(True)
        mp.settle(False, "ignored: already settled")
        assert [endpoint for endpoint, _ in delivered] == ["events"]
        mp.track(Events.user_logged_in)  # after success: delivered at once
        assert json.loads(delivered[-1][1])["event"] == "User Logged In"
    assert mp.outcome is True


def test_discarded_requests_drop_later_messages_too(caplog: pytest.LogCaptureFixture) -> None:
    mp = MixpanelTrack({"mixpanel.token": "tok"}, distinct_id="u")
    buffer = t.cast(RequestBuffer, mp.api._consumer)
    mp.track(Events.page_viewed)
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"):
        mp.settle(False, "the view raised")
        mp.track(Events.page_viewed)
    assert buffer.messages == []
    assert "messages=1 reason='the view raised'" in caplog.text
    assert "tracked after the request failed" in caplog.text
    mp.discard("nothing left")  # an empty discard logs nothing more
    assert caplog.text.count("messages_discarded") == 2


def test_mocked_messages_only_exist_in_testing_mode() -> None:
    live = MixpanelTrack({"mixpanel.token": "tok"}, distinct_id="u")
    with pytest.raises(AttributeError, match="only exist in testing mode"):
        _ = live.mocked_messages
    assert isinstance(live.api, mixpanel.Mixpanel)


def test_context_manager_flushes_or_discards() -> None:
    runtime = Runtime(parse_settings({"mixpanel.token": "tok"}))
    delivered: list[tuple[str, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            runtime, "deliver", lambda msgs, calls=(), consumer=None: delivered.extend(msgs)
        )
        with MixpanelTrack(runtime, distinct_id="u") as mp:
            mp.track(Events.page_viewed)
        assert len(delivered) == 1
        with pytest.raises(RuntimeError), MixpanelTrack(runtime, distinct_id="u") as mp:
            mp.track(Events.page_viewed)
            raise RuntimeError("boom")
        assert len(delivered) == 1


def test_buffer_flush_by_hand_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripts written for the original package call ``api._consumer.flush()``."""
    runtime = Runtime(parse_settings({"mixpanel.token": "tok"}))
    delivered: list[tuple[str, str]] = []
    monkeypatch.setattr(
        runtime, "deliver", lambda msgs, calls=(), consumer=None: delivered.extend(msgs)
    )
    mp = MixpanelTrack(runtime, distinct_id="u")
    mp.track(Events.page_viewed)
    mp.api._consumer.flush()
    assert len(delivered) == 1
    # The buffer does not keep its MixpanelTrack alive (no reference cycle per request):
    # once the request's helper is gone, flushing its buffer has nothing left to release.
    buffer = mp.api._consumer
    del mp
    buffer.flush()
    assert len(delivered) == 1


def test_a_request_helper_is_freed_without_the_cycle_collector() -> None:
    gc.disable()
    try:
        mp = MixpanelTrack({"mixpanel.token": "tok"}, distinct_id="u")
        alive = weakref.ref(mp)
        del mp
        assert alive() is None  # freed by reference counting alone
    finally:
        gc.enable()


def test_customerio_calls_are_recorded_in_testing_mode() -> None:
    settings = {
        "mixpanel.token": "false",
        "customerio.tracking.site_id": "s",
        "customerio.tracking.api_key": "k",
        "customerio.tracking.region": "us",
    }
    mp = MixpanelTrack(settings, distinct_id="u", global_event_props={EventProperties.title: "T"})
    mp.track(Events.page_viewed, {EventProperties.path: "/p"})
    mp.track(Events.page_viewed, skip_customerio=True)
    mp.profile_set(
        {
            ProfileProperties.dollar_created: dt.datetime(2020, 1, 1),
            ProfileProperties.dollar_email: "a@b.c",
        }
    )
    mp.profile_set({ProfileProperties.dollar_name: "N"}, skip_customerio=True)
    mp.flush()
    assert mp.customerio_messages == [
        CustomerIOCall("track", "u", {"Title": "T", "Path": "/p"}, "Page Viewed"),
        CustomerIOCall("identify", "u", {"created_at": 1577836800, "email": "a@b.c"}),
    ]
    mp.discard("testing mode keeps everything")
    assert len(mp.customerio_messages) == 2


def test_device_properties_and_insert_id(mp: MixpanelTrack) -> None:
    class KeepAll(MockedConsumer):
        DROP_SYSTEM_MESSAGE_PROPERTIES = False

    mp.api._consumer = KeepAll()
    device = {"$browser": "Chrome", "$os": "Linux", "$device_id": "abc"}
    mp.track(Events.page_viewed, device=device, insert_id="row-42")
    properties = mp.mocked_messages[0]["msg"]["properties"]
    assert properties["$browser"] == "Chrome"
    assert properties["$device_id"] == "abc"
    assert properties["$insert_id"] == "row-42"
    with pytest.raises(ValueError, match="device takes .*not 'Path'"):
        mp.track(Events.page_viewed, device={"Path": "/"})
    with pytest.raises(TypeError, match=r"device\['\$os'\] must be a string"):
        mp.track(Events.page_viewed, device={"$os": 3})  # type: ignore[dict-item]  # under test
    for bad in ("x" * 37, "has space", ""):
        with pytest.raises(ValueError, match="insert_id must be 1 to 36"):
            mp.track(Events.page_viewed, insert_id=bad)
    assert len(mp.mocked_messages) == 1


def test_none_inside_lists_is_kept(mp: MixpanelTrack) -> None:
    mp.track(Events.page_viewed, {EventProperties.path: ["/a", None]})
    assert mp.mocked_messages[0]["msg"]["properties"]["Path"] == ["/a", None]


def test_a_message_mixpanel_would_refuse_as_too_large_is_an_error() -> None:
    big = {EventProperties.title: "x" * 1_000_000}
    for settings in ({"mixpanel.token": "false"}, {"mixpanel.token": "tok"}):
        mp = MixpanelTrack(settings, distinct_id="u")
        with pytest.raises(ValueError, match="Mixpanel takes less than 1 MB per record"):
            mp.track(Events.page_viewed, big)
        mp.track(Events.page_viewed, {EventProperties.title: "x" * 400_000})  # 400 kB: fine


@pytest.mark.parametrize("placeholder", ["anonymous", "null", "undefined", "0", "-1", " None "])
def test_placeholder_distinct_ids_are_errors(placeholder: str) -> None:
    mp = MixpanelTrack({"mixpanel.token": "false"}, distinct_id=placeholder)
    with pytest.raises(ValueError, match="is a placeholder Mixpanel refuses"):
        mp.track(Events.page_viewed)
    with pytest.raises(ValueError, match="is a placeholder Mixpanel refuses"):
        mp.profile_set({})


def test_values_nested_beyond_mixpanels_limits_are_errors(mp: MixpanelTrack) -> None:
    with pytest.raises(ValueError, match="'Title' has objects nested deeper than 3 levels"):
        mp.track(Events.page_viewed, {EventProperties.title: {"a": {"b": {"c": {}}}}})
    with pytest.raises(ValueError, match="'Title' has a list of 255 items"):
        mp.track(Events.page_viewed, {EventProperties.title: list(range(255))})
    with pytest.raises(ValueError, match="is a value Mixpanel refuses"):
        mp.track(Events.page_viewed, insert_id="undefined")
    mp.track(Events.page_viewed, {EventProperties.title: {"a": {"b": [1, 2]}}})


def test_messages_are_the_official_clients_messages() -> None:
    """Built without mixpanel.Mixpanel's per-message costs, but the same JSON to Mixpanel."""
    ours = MixpanelTrack({"mixpanel.token": "tok"}, distinct_id="u")
    theirs: list[tuple[str, str]] = []

    class Recorder:
        def send(self, endpoint: str, message: str, *args: object) -> None:
            theirs.append((endpoint, message))

    official = mixpanel.Mixpanel("tok", consumer=Recorder())
    ours.track(Events.page_viewed, {EventProperties.path: "/x"})
    official.track("u", "Page Viewed", {"Path": "/x"})
    when = 1_600_000_000
    ours.track(Events.page_viewed, time=when)
    official.import_data(None, "u", "Page Viewed", when)
    ours.profile_set(
        {ProfileProperties.dollar_name: "N"}, meta={ProfileMetaProperties.dollar_ip: "1.2.3.4"}
    )
    official.people_set("u", {"$name": "N"}, meta={"$ip": "1.2.3.4"})
    ours.profile_track_charge(3.5)
    official.people_track_charge("u", 3.5)
    ours.people_clear_charges()
    official.people_clear_charges("u")
    ours.people_delete()
    official.people_delete("u")

    def comparable(message: str) -> object:
        data = json.loads(message)
        for holder in (data, data.get("properties", {})):
            for key in ("time", "$time", "$insert_id"):
                holder.pop(key, None)
        for charge in [data.get("$append", {}).get("$transactions")]:
            if isinstance(charge, dict):
                charge.pop("$time", None)  # ours dates the charge (the official client does not)
        return data

    # Ours are built once in the form the transport posts (integer ms, "ip": "0"): what the
    # transport makes of the official client's messages.
    transport = MixpanelTransport("http://127.0.0.1:9")

    def posted(endpoint: str, message: str) -> object:
        body, reason, _ = transport._prepare(endpoint, message.encode(), int(time.time() * 1000))
        assert body is not None, reason
        return comparable(body.decode())

    mine = ours.history
    assert [endpoint for endpoint, _ in mine] == [endpoint for endpoint, _ in theirs]
    assert [posted(*m) for m in mine] == [posted(*m) for m in theirs]
    assert [comparable(m) for _, m in mine[:2]] == [posted(*m) for m in theirs[:2]]
    assert json.loads(mine[1][1])["properties"]["time"] == when * 1000
    assert len(json.loads(mine[0][1])["properties"]["$insert_id"]) == 32
    assert all(type(m) is Prepared for _, m in mine[:2])


def test_integers_beyond_64_bits_are_still_json() -> None:
    mp = MixpanelTrack({"mixpanel.token": "false"}, distinct_id="u")
    mp.track(Events.page_viewed, {EventProperties.title: 2**70})
    assert mp.mocked_messages[0]["msg"]["properties"]["Title"] == 2**70


def test_final_events_are_built_once_and_only_when_every_rule_holds() -> None:
    now = time.time()

    def event(**properties: object) -> dict[str, t.Any]:
        base = {"token": "tok", "distinct_id": "u", "time": now, "$insert_id": "a" * 32}
        return {"event": "Page Viewed", "properties": {**base, **properties}}

    body = final_event(event(), now)
    assert type(body) is Prepared
    posted = json.loads(body)["properties"]
    assert posted["time"] == round(now * 1000) and posted["ip"] == "0"
    assert json.loads(final_event(event(ip="1.2.3.4"), now))["properties"]["ip"] == "1.2.3.4"
    # A rule broken: a plain body, which the transport refuses with the reason.
    for broken in (
        event(distinct_id="undefined"),
        event(time=float("nan")),
        event(time=now + 7200),
        event(Big="x" * 1_000_000),
    ):
        assert type(final_event(broken, now)) is str


def test_a_consumer_put_in_by_a_test_gets_the_official_form() -> None:
    mp = MixpanelTrack({"mixpanel.token": "tok"}, distinct_id="u")
    got: list[str] = []

    class Recorder:
        def send(self, endpoint: str, message: str, *args: object) -> None:
            got.append(message)

    mp.api._consumer = Recorder()
    mp.track(Events.page_viewed)
    assert type(got[0]) is str and "ip" not in json.loads(got[0])["properties"]


def test_declared_types_are_checked_for_global_properties_too() -> None:
    @dataclasses.dataclass(frozen=True)
    class Typed(EventProperties):
        count: Property = Property("Count", type="number")

    mp = MixpanelTrack(
        {**SETTINGS, "mixpanel.event_properties": Typed},
        distinct_id="u1",
        global_event_props={Typed.count: "many"},
    )
    with pytest.raises(TypeError, match=r"'Count' \(.*Typed.count\) must be a number value"):
        mp.track(Events.page_viewed)
    mp.global_event_props = {Typed.count: 3}
    mp.track(Events.page_viewed, {Typed.count: 4.5})
    assert mp.mocked_messages[0]["msg"]["properties"]["Count"] == 4.5
