"""MixpanelTransport against the strict loopback Mixpanel, and how answers are classified."""

from __future__ import annotations

import gzip
import json
import logging
import time
import typing as t
from collections.abc import Iterator

import pytest
import requests

from pyramid_mixpanel.customerio import CustomerIOCall, CustomerIOTransport
from pyramid_mixpanel.delivery import SyncDelivery
from pyramid_mixpanel.delivery.base import Outcome, Prepared
from pyramid_mixpanel.delivery.transport import MixpanelTransport
from pyramid_mixpanel.log import Log
from pyramid_mixpanel.settings import parse_settings
from pyramid_mixpanel.track import final_event

from .loopback import CustomerIOStandIn, MixpanelStandIn, free_port

TOKEN = "tok-transport"
NOW = int(time.time())


def event(name: str = "Page Viewed", **properties: object) -> str:
    """An event as mixpanel.Mixpanel builds it (float seconds, token, insert id)."""
    props: dict[str, object] = {
        "token": TOKEN,
        "distinct_id": "u",
        "time": NOW + 0.25,
        "$insert_id": "i1",
        **properties,
    }
    return json.dumps({"event": name, "properties": props})


def profile(**fields: object) -> str:
    return json.dumps({"$token": TOKEN, "$distinct_id": "u", "$set": {"a": 1}, **fields})


EVENT = event()
GROUP = json.dumps({"$token": TOKEN, "$group_key": "company", "$group_id": "c1", "$set": {}})


@pytest.fixture
def api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn(tokens={TOKEN}, accounts={"sa": "sa-secret"}) as server:
        yield server


def transport(api: MixpanelStandIn, **settings: str) -> MixpanelTransport:
    return MixpanelTransport.from_settings(
        parse_settings(
            {
                "mixpanel.token": TOKEN,
                "mixpanel.api_host": api.base_url,
                "mixpanel.read_timeout": "0.3",
                **settings,
            }
        )
    )


def response(status: int, body: object, headers: dict[str, str] | None = None) -> requests.Response:
    made = requests.Response()
    made.status_code = status
    made._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    made.headers.update(headers or {})
    return made


def test_every_endpoint_goes_where_mixpanel_documents_it(api: MixpanelStandIn) -> None:
    sender = transport(api)
    for endpoint, body in (
        ("events", EVENT),
        ("imports", event("Old", time=1_600_000_000)),
        ("people", profile()),
        ("groups", GROUP),
    ):
        assert sender.post(endpoint, [body]).sent, api.requests[-1]
    track, old, engage, groups = api.requests
    # Events, recent or old, go to /import: per-record errors, no 5-day window.
    assert (track.path, track.query, track.auth) == ("/import", {"strict": "1"}, (TOKEN, ""))
    assert (old.path, old.auth) == ("/import", (TOKEN, ""))
    assert (engage.path, engage.query, engage.auth) == (
        "/engage",
        {"strict": "1", "verbose": "1"},
        None,
    )
    assert (groups.path, groups.query) == ("/groups", {"strict": "1", "verbose": "1"})
    assert [e["event"] for e in api.events()] == ["Page Viewed", "Old"]
    assert api.dropped == [] and api.refused == []


def test_events_are_prepared_for_import(api: MixpanelStandIn) -> None:
    sender = transport(api)
    without_insert_id = json.loads(event("Derived"))
    del without_insert_id["properties"]["$insert_id"]
    bodies = [EVENT, event("With IP", ip="203.0.113.9"), json.dumps(without_insert_id)]
    assert sender.post("events", bodies).sent
    plain, with_ip, derived = api.received["imports"]
    # Float seconds become whole milliseconds; /import wants an integer.
    assert plain["properties"]["time"] == (NOW + 0.25) * 1000
    # Without ip, /import would geolocate the event to this server: "0" skips it.
    assert plain["properties"]["ip"] == "0"
    assert with_ip["properties"]["ip"] == "203.0.113.9"
    # A missing $insert_id is derived from the content: a resend is a duplicate.
    insert_id = derived["properties"]["$insert_id"]
    assert len(insert_id) == 32
    assert sender.post("events", [json.dumps(without_insert_id)]).sent
    assert api.received["imports"][-1]["properties"]["$insert_id"] == insert_id
    assert len(api.events()) == 3


def test_profiles_are_not_geolocated_to_the_server(api: MixpanelStandIn) -> None:
    sender = transport(api)
    assert sender.post("people", [profile(), profile(**{"$ip": "203.0.113.9"})]).sent
    first, second = api.received["people"]
    assert first["$ip"] == "0"
    assert second["$ip"] == "203.0.113.9"  # a client IP given by the app wins


def test_import_uses_the_service_account(api: MixpanelStandIn) -> None:
    sender = transport(
        api,
        **{
            "mixpanel.service_account.username": "sa",
            "mixpanel.service_account.secret": "sa-secret",
            "mixpanel.service_account.project_id": "7",
        },
    )
    assert sender.post("events", [EVENT]).sent
    seen = api.requests[-1]
    assert seen.auth == ("sa", "sa-secret")
    assert seen.query == {"strict": "1", "project_id": "7"}


def test_import_uses_the_legacy_secret_before_the_token(api: MixpanelStandIn) -> None:
    # The legacy project secret authenticates like the token: user, empty password.
    sender = transport(api, **{"mixpanel.api_secret": "legacy"})
    refused = sender.post("events", [EVENT])
    assert api.requests[-1].auth == ("legacy", "")
    assert (refused.kind, refused.error) == ("dead", "HTTP 401: Invalid credentials")
    api.tokens.add("legacy")
    assert sender.post("events", [EVENT]).sent


def test_without_an_account_events_use_the_token_they_carry(api: MixpanelStandIn) -> None:
    sender = MixpanelTransport(api.base_url)
    other = event("Other").replace(TOKEN, "tok-other")
    api.tokens.add("tok-other")
    no_token = json.loads(EVENT)
    del no_token["properties"]["token"]
    outcome = sender.post("events", [EVENT, other, json.dumps(no_token)])
    assert outcome.kind == "dead"
    assert outcome.failed == frozenset({2})
    assert "no credentials for /import" in outcome.reasons[2]
    assert sorted(r.auth for r in api.requests) == [("tok-other", ""), (TOKEN, "")]  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("mode", "kind", "unreachable"),
    [
        ("down", "retry", True),
        ("hang", "retry", True),
        ("error500", "retry", False),
        ("rate_limited", "retry", False),
        ("bad_request", "dead", False),
    ],
)
def test_failures_are_classified(
    api: MixpanelStandIn, mode: str, kind: str, unreachable: bool
) -> None:
    api.set_mode(mode)
    outcome = transport(api).post("events", [EVENT])
    assert (outcome.kind, outcome.unreachable) == (kind, unreachable)
    if mode == "rate_limited":
        assert outcome.retry_after is None  # Mixpanel documents no Retry-After
        assert outcome.error == "HTTP 429: Project exceeded rate limits."
        api.retry_after = "3"
        assert transport(api).post("events", [EVENT]).retry_after == 3
    api.set_mode("up")


def test_records_that_break_a_rule_are_refused_before_sending(api: MixpanelStandIn) -> None:
    sender = transport(api)
    bodies = [
        EVENT,
        event("Anonymous", distinct_id="undefined"),
        event("Nested", deep={"a": {"b": {"c": {"d": 1}}}}),
        event("Many", **{f"p{i}": i for i in range(250)}),
        event("Ancient", time=10),
        "not json",
        "[1]",
        json.dumps({"event": "No properties"}),
        event("Untimed", time="yesterday"),
        event("Large", blob="x" * 1_000_000),
    ]
    outcome = sender.post("events", bodies)
    assert outcome.kind == "dead"
    assert outcome.failed == frozenset(range(1, len(bodies)))
    assert all(reason.startswith("refused before sending: ") for reason in outcome.reasons.values())
    assert "'undefined' is a value Mixpanel refuses" in outcome.reasons[1]
    assert "nested deeper than 3 levels" in outcome.reasons[2]
    assert "fewer than 255 allowed" in outcome.reasons[3]
    assert "before 1971-01-01" in outcome.reasons[4]
    assert "not JSON" in outcome.reasons[5]
    assert "must be a JSON object" in outcome.reasons[6]
    assert "properties is missing" in outcome.reasons[7]
    assert "not epoch seconds or milliseconds" in outcome.reasons[8]
    assert "Mixpanel takes less than 1 MB" in outcome.reasons[9]
    (posted,) = api.requests
    assert len(posted.records) == 1  # only the good event travelled
    refused = sender.post("people", [profile(**{"$distinct_id": "null"})])
    assert refused.kind == "dead" and "a value Mixpanel refuses" in refused.error
    assert sender.post("groups", ["[]"]).kind == "dead"


def test_strict_answers_name_the_refused_records(api: MixpanelStandIn) -> None:
    # Bodies already prepared (as pmixpanel import sends them): the stand-in does the checking.
    sender = MixpanelTransport(api.base_url, import_auth=(TOKEN, ""), prepared=True)
    good = event(time=NOW * 1000)
    untimed = json.dumps({"event": "B", "properties": {"distinct_id": "u", "$insert_id": "b"}})
    partial = sender.post("imports", [good, untimed])
    assert (partial.kind, partial.failed) == ("dead", frozenset({1}))
    assert "'properties.time' is invalid" in partial.reasons[1]
    assert sender.post("imports", [untimed]) == Outcome(
        "dead",
        "HTTP 400: some data points in the request failed validation",
        reasons={0: "'properties.time' is invalid: must be specified as seconds since epoch"},
    )
    # /engage with strict=1 names the update with two operations; the others arrived.
    two = profile(**{"$unset": ["a"]})
    engaged = transport(api).post("people", [profile(), two, profile()])
    assert (engaged.kind, engaged.failed) == ("dead", frozenset({1}))
    assert "exactly one operation" in engaged.reasons[1]
    assert len(api.received["people"]) == 2
    assert [message for *_, message in api.refused][-1].startswith("exactly one operation")


def test_a_413_splits_the_batch_until_each_part_fits(api: MixpanelStandIn) -> None:
    sender = transport(api)
    bodies = [event(f"E{i}", **{"$insert_id": f"i{i}", "pad": "x" * 200}) for i in range(8)]
    one = len(sender._prepare("events", bodies[0].encode(), NOW * 1000)[0] or b"")
    api.max_request_bytes = 3 * one  # three events fit, four do not
    assert sender.post("events", bodies).sent
    assert len(api.events()) == 8
    assert [r.status for r in api.requests] == [413, 413, 200, 200, 413, 200, 200]
    # One record too large on its own is refused with the reason, never resent forever.
    api.max_request_bytes = one // 2
    alone = sender.post("events", [bodies[0]])
    assert alone.kind == "dead"
    assert alone.error.startswith("HTTP 413: request exceeds max limit")
    assert alone.reasons == {0: f"too large for Mixpanel even alone: {alone.error}"}


def test_a_split_batch_that_hits_a_rate_limit_retries_only_what_is_left(
    api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = transport(api)
    bodies = [event(f"E{i}", **{"$insert_id": f"i{i}"}) for i in range(4)]
    real = sender._post_once
    calls = []

    def flaky(endpoint: str, items: list[bytes], auth: t.Any) -> tuple[Outcome, bool]:
        calls.append(len(items))
        if len(calls) == 1:
            return Outcome("dead", "HTTP 413: too large"), True
        if len(calls) == 3:
            return Outcome("retry", "HTTP 429: slow down", retry_after=7.0), False
        return real(endpoint, items, auth)

    monkeypatch.setattr(sender, "_post_once", flaky)
    outcome = sender.post("events", bodies)
    assert calls == [4, 2, 2]
    assert (outcome.kind, outcome.pending, outcome.retry_after) == (
        "retry",
        frozenset({2, 3}),
        7.0,
    )
    assert outcome.partition(4) == ([0, 1], [2, 3], [])


def test_a_first_half_that_must_wait_holds_the_second_back(
    api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = transport(api)
    answers = [(Outcome("dead", "HTTP 413"), True), (Outcome("retry", "HTTP 503"), False)]
    monkeypatch.setattr(sender, "_post_once", lambda *args: answers.pop(0))
    outcome = sender.post("events", [EVENT, event("Two", **{"$insert_id": "i2"})])
    assert answers == []  # the second half was never posted
    assert (outcome.kind, outcome.pending) == ("retry", frozenset())
    assert outcome.partition(2) == ([], [0, 1], [])


def test_events_of_another_token_wait_when_mixpanel_asks_to(api: MixpanelStandIn) -> None:
    api.set_mode("rate_limited")
    other = event("Other").replace(TOKEN, "tok-other")
    outcome = MixpanelTransport(api.base_url).post("events", [EVENT, other])
    assert len(api.requests) == 1  # one post told us to wait: the other token's waits too
    assert (outcome.kind, outcome.pending) == ("retry", frozenset())


def test_no_credentials_at_all(api: MixpanelStandIn) -> None:
    assert MixpanelTransport.from_settings(parse_settings({})).import_auth is None
    sender = MixpanelTransport(api.base_url, prepared=True)
    outcome = sender.post("imports", [EVENT])
    assert outcome.kind == "dead"
    assert outcome.reasons == {
        0: "refused before sending: no credentials for /import (no token, no account)"
    }
    assert api.requests == []


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, 1, Outcome("sent")),
        (200, b"1", Outcome("sent")),
        (200, {"status": 1, "error": None}, Outcome("sent")),
        (200, {"code": 200, "status": "OK", "num_records_imported": 1}, Outcome("sent")),
        (200, 0, Outcome("dead", "HTTP 200: no record was valid (answer 0)")),
        (200, {"status": 0, "error": "token missing"}, Outcome("dead", "HTTP 200: token missing")),
        (401, {"message": "unauthorized"}, Outcome("dead", "HTTP 401: unauthorized")),
        (413, b"<html>too large</html>", Outcome("dead", "HTTP 413: <html>too large</html>")),
        (400, b"", Outcome("dead", "HTTP 400: no error text")),
        (503, b"busy", Outcome("retry", "HTTP 503: busy")),
        (408, {}, Outcome("retry", "HTTP 408: {}")),
    ],
)
def test_classify(status: int, body: object, expected: Outcome) -> None:
    sender = MixpanelTransport.from_settings(parse_settings({"mixpanel.token": "tok-abcdef"}))
    assert sender._classify(response(status, body), 1) == expected


def test_classify_failed_records_forms() -> None:
    sender = MixpanelTransport.from_settings(parse_settings({"mixpanel.token": "tok"}))
    answer = {"failed_records": [{"index": 0}, 2, {"index": 99}, "x", {"no": 1}, True]}
    outcome = sender._classify(response(400, answer), 3)
    assert outcome.failed == frozenset({0, 2})
    assert sender._classify(response(400, [1]), 3).failed == frozenset()
    # A 200 that still lists refused records is not a success.
    listed = sender._classify(response(200, {"status": 1, "failed_records": [{"index": 1}]}), 2)
    assert (listed.kind, listed.failed) == ("dead", frozenset({1}))


def test_errors_are_scrubbed_of_secrets() -> None:
    sender = MixpanelTransport.from_settings(parse_settings({"mixpanel.token": "tok-123"}))
    outcome = sender._classify(response(400, {"error": "bad token tok-123"}), 1)
    assert outcome.error == "HTTP 400: bad token ***"


def test_outcome_partitions() -> None:
    assert Outcome("sent").partition(2) == ([0, 1], [], [])
    assert Outcome("dead").partition(2) == ([], [], [0, 1])
    assert Outcome("dead", failed=frozenset({1})).partition(3) == ([0, 2], [], [1])
    assert Outcome("retry").partition(2) == ([], [0, 1], [])
    both = Outcome("retry", failed=frozenset({0}))
    assert both.partition(3) == ([], [1, 2], [0])
    assert both.refused_of(3) == 3
    assert Outcome("retry", failed=frozenset({0}), pending=frozenset({2})).partition(3) == (
        [1],
        [2],
        [0],
    )


def test_customerio_transport_sends_calls_one_by_one() -> None:
    with CustomerIOStandIn() as server:
        settings = parse_settings(
            {
                "mixpanel.token": "tok",
                "customerio.tracking.site_id": "s",
                "customerio.tracking.api_key": "k",
                "customerio.tracking.region": "us",
                "customerio.tracking.url": server.base_url,
            }
        )
        lane = CustomerIOTransport.from_settings(settings)
        assert (lane.name, lane.endpoints, lane.max_records) == (
            "customerio",
            ("identify", "track"),
            1,
        )
        call = CustomerIOCall("identify", "u1", {"email": "a@b"})
        assert lane.post("identify", [call.to_json()]) == Outcome("sent")
        server.mode = "bad_request"
        assert lane.post("identify", [call.to_json()]).kind == "dead"
        server.mode = "error500"
        assert lane.post("identify", [call.to_json().encode()]).kind == "retry"
        (method, path, auth, body) = server.requests[0]
        assert (method, path, auth, body) == (
            "PUT",
            "/api/v1/customers/u1",
            ("s", "k"),
            {"email": "a@b"},
        )
        lane.close()
    nowhere = CustomerIOTransport("s", "k", url=f"http://127.0.0.1:{free_port()}")
    unreachable = nowhere.post("track", [CustomerIOCall("track", "u1", {}, "E").to_json()])
    assert (unreachable.kind, unreachable.unreachable) == ("retry", True)


def test_gzip_only_where_mixpanel_accepts_it(
    api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/track and /import take gzip; /engage does not (reference/profile-set), nor /groups."""
    sender = transport(api)
    sent: list[tuple[str, dict[str, str], bytes]] = []
    real = sender.session.post

    def spy(*args: t.Any, **kwargs: t.Any) -> requests.Response:
        sent.append((args[0], kwargs["headers"], kwargs["data"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(sender.session, "post", spy)
    for endpoint, body in (("events", EVENT), ("imports", EVENT), ("people", profile())):
        assert sender.post(endpoint, [body]).sent
    assert sender.post("groups", [GROUP]).sent
    for url, headers, data in sent:
        assert headers["Content-Type"] == "application/json"
        if url.endswith("/import"):
            assert headers["Content-Encoding"] == "gzip"
            assert json.loads(gzip.decompress(data))[0]["event"] == "Page Viewed"
        else:
            assert "Content-Encoding" not in headers
            assert isinstance(json.loads(data), list)
    assert len(sent) == 4


def test_the_stand_in_refuses_gzip_on_engage(api: MixpanelStandIn) -> None:
    """What production would do to a client that gzips profiles (reference/profile-set)."""
    answer = requests.post(
        f"{api.base_url}/engage",
        data=gzip.compress(f"[{profile()}]".encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=5,
    )
    assert (answer.status_code, answer.json()["error"]) == (400, "gzip is not supported")
    assert api.received["people"] == []


def test_the_stand_in_track_drops_silently(api: MixpanelStandIn) -> None:
    """/track answers 1 while dropping invalid and stale events (reference/track-event)."""
    old = event("Old", time=NOW - 6 * 24 * 3600, **{"$insert_id": "old"})
    bad = event("Bad", distinct_id="anonymous", **{"$insert_id": "bad"})
    answer = requests.post(
        f"{api.base_url}/track", data={"data": f"[{EVENT},{old},{bad}]"}, timeout=5
    )
    assert answer.json() == 1
    assert [e["event"] for e in api.events()] == ["Page Viewed"]
    assert [message for *_, message in api.dropped] == [
        "older than 5 days",
        "'anonymous' is not a valid distinct_id",
    ]
    verbose = requests.post(f"{api.base_url}/track?verbose=1", data={"data": bad}, timeout=5)
    assert verbose.json() == {"status": 0, "error": "no valid data"}


def test_sync_delivery_refuses_endpoints_its_lane_does_not_have(
    api: MixpanelStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = SyncDelivery(transport(api), parse_settings({}), Log())
    assert delivery.submit([]) == 0
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        assert delivery.submit([("track", "{}"), ("events", EVENT)]) == 1
    assert "mixpanel.unknown_endpoint endpoint='track' messages=1" in caplog.text
    assert delivery.stats.snapshot() == {"sent": 1, "failed": 1}
    assert delivery.close() == 0


def test_reachable_says_whether_the_host_takes_connections() -> None:
    # The engine's probe during an outage: a TCP connection, nothing sent.
    with MixpanelStandIn() as api, CustomerIOStandIn() as cio:
        assert MixpanelTransport(api.base_url).reachable()
        assert CustomerIOTransport("site", "key", url=cio.base_url).reachable()
        assert not api.requests
    closed = free_port()
    assert not MixpanelTransport(f"http://127.0.0.1:{closed}", timeout=(0.5, 1)).reachable()
    # Without a port, the scheme's: nothing listens on 127.0.0.1:80 or :443 here.
    assert not MixpanelTransport("http://127.0.0.1", timeout=(0.5, 1)).reachable()
    assert not MixpanelTransport("https://127.0.0.1", timeout=(0.5, 1)).reachable()


def test_events_built_in_their_final_form_are_posted_as_they_are() -> None:
    now = time.time()
    event = {"token": "tok", "distinct_id": "u", "time": now, "$insert_id": "b" * 32}
    body = final_event({"event": "Page Viewed", "properties": event}, now)
    assert type(body) is Prepared
    with MixpanelStandIn() as api:
        # With credentials: posted as is. Without: prepared again, the token from the event.
        for auth in (("tok", ""), None):
            transport = MixpanelTransport(api.base_url, import_auth=auth)
            assert transport.post("events", [body]).sent
        assert [e["properties"]["time"] for e in api.events()] == [round(now * 1000)]


def test_only_a_destination_that_took_no_connection_is_worth_probing() -> None:
    event = {"event": "e", "properties": {"time": time.time(), "distinct_id": "u"}}
    body = json.dumps(event)
    closed = free_port()
    refused = MixpanelTransport(f"http://127.0.0.1:{closed}", import_auth=("tok", ""))
    outcome = refused.post("events", [body])
    assert outcome.unreachable and outcome.no_connection
    with MixpanelStandIn() as api:
        api.set_mode("hang")
        hung = MixpanelTransport(api.base_url, timeout=(1, 0.2), import_auth=("tok", ""))
        outcome = hung.post("events", [body])
        api.set_mode("up")
    assert outcome.unreachable and not outcome.no_connection


@pytest.mark.parametrize("fast", [True, False])
def test_batches_are_gzip_with_or_without_isal(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Mixpanel takes Content-Encoding: gzip on /track and /import (reference/track-event,
    # reference/import-events; ../shared/mixpanel-rules.md): RFC 1952 gzip, whichever library
    # wrote it. The loopback stand-in decodes it only on those paths.
    from pyramid_mixpanel.delivery import transport as transport_module

    if not fast:
        monkeypatch.setattr(transport_module, "_igzip", None)  # as without the fast extra
    else:
        assert transport_module._igzip is not None  # the test extra installs isal
    records = [json.dumps({"event": "e", "properties": {"n": i}}) for i in range(600)]
    raw = ("[" + ",".join(records) + "]").encode()
    # Text or UTF-8, over several slices of GZIP_SLICE records, or none at all.
    for bodies in (records, [record.encode() for record in records], []):
        for level in (1, 5, 9):
            packed = transport_module.gzip_array(bodies, level)
            assert gzip.decompress(packed) == (raw if bodies else b"[]")
            assert not bodies or len(packed) < len(raw) / 4


def test_a_batch_is_one_gzip_array_whatever_its_size() -> None:
    from pyramid_mixpanel.delivery import transport as transport_module

    # One record; several slices that outgrow the thread's first buffer; a batch too large for
    # the thread to keep its buffer afterwards.
    for count, pad in ((1, 10), (600, 200), (300, 5000)):
        records = [json.dumps({"n": i, "p": "x" * pad}) for i in range(count)]
        packed = transport_module.gzip_array(records, 5)
        assert gzip.decompress(packed) == ("[" + ",".join(records) + "]").encode()
        kept = transport_module._scratch.buffer
        assert (kept is None) == (count * pad > transport_module.KEEP_BUFFER)


def test_a_413_splits_events_built_in_their_final_form_too(api: MixpanelStandIn) -> None:
    now = time.time()
    bodies = [
        final_event(
            {
                "event": f"E{i}",
                "properties": {
                    "token": TOKEN,
                    "distinct_id": "u",
                    "time": now,
                    "$insert_id": f"i{i}",
                    "pad": "x" * 200,
                },
            },
            now,
        )
        for i in range(8)
    ]
    assert all(type(body) is Prepared for body in bodies)
    api.max_request_bytes = 3 * len(bodies[0])  # three events fit, four do not
    sender = transport(api)
    assert sender.post("events", bodies).sent
    assert sorted(e["event"] for e in api.events()) == [f"E{i}" for i in range(8)]
    assert [r.status for r in api.requests] == [413, 413, 200, 200, 413, 200, 200]


def test_optional_modules() -> None:
    from pyramid_mixpanel._extras import optional

    assert optional("json") is json
    assert optional("pyramid_mixpanel_no_such_module") is None


def test_which_failures_took_no_connection() -> None:
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    from pyramid_mixpanel.delivery.transport import _no_connection

    # (urllib3 types the pool and connection arguments; the check reads only the reason)
    refused = MaxRetryError(None, "/import", NewConnectionError(None, "refused"))  # type: ignore[arg-type]  # no pool: not needed
    assert _no_connection(requests.exceptions.ConnectTimeout())
    assert _no_connection(requests.exceptions.ConnectionError(refused))
    assert not _no_connection(requests.exceptions.ConnectionError("Connection aborted."))
    assert not _no_connection(requests.exceptions.ConnectionError())
    assert not _no_connection(requests.exceptions.ReadTimeout())
