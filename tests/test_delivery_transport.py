"""MixpanelTransport against the loopback Mixpanel, and how odd answers are classified."""

from __future__ import annotations

import gzip
import json
import logging
import typing as t
from collections.abc import Iterator

import pytest
import requests

from pyramid_mixpanel.customerio import CustomerIOCall, CustomerIOTransport
from pyramid_mixpanel.delivery import SyncDelivery
from pyramid_mixpanel.delivery.base import Outcome
from pyramid_mixpanel.delivery.transport import MixpanelTransport
from pyramid_mixpanel.log import Log
from pyramid_mixpanel.settings import parse_settings

from .loopback import CustomerIOStandIn, MixpanelStandIn, free_port

EVENT = '{"event":"Page Viewed","properties":{"time":1,"distinct_id":"u","$insert_id":"i1"}}'


@pytest.fixture
def api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


def transport(api: MixpanelStandIn, **settings: str) -> MixpanelTransport:
    return MixpanelTransport.from_settings(
        parse_settings(
            {
                "mixpanel.token": "tok",
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


def test_posts_json_to_each_endpoint(api: MixpanelStandIn) -> None:
    sender = transport(api)
    for endpoint, path in (("events", "/track"), ("people", "/engage"), ("groups", "/groups")):
        assert sender.post(endpoint, ['{"x":1}']).sent
        seen = api.requests[-1]
        assert seen.path == path
        assert seen.query == {"verbose": "1", "ip": "0"}
        assert seen.auth is None
    assert api.received["people"] == [{"x": 1}]


def test_import_uses_the_service_account(api: MixpanelStandIn) -> None:
    sender = transport(
        api,
        **{
            "mixpanel.service_account.username": "sa",
            "mixpanel.service_account.secret": "sa-secret",
            "mixpanel.service_account.project_id": "7",
        },
    )
    assert sender.post("imports", [EVENT]).sent
    seen = api.requests[-1]
    assert seen.auth == ("sa", "sa-secret")
    assert seen.query == {"strict": "1", "verbose": "1", "project_id": "7"}


def test_import_uses_the_legacy_secret_before_the_token(api: MixpanelStandIn) -> None:
    sender = transport(api, **{"mixpanel.api_secret": "legacy"})
    assert sender.post("imports", [EVENT]).sent
    assert api.requests[-1].auth == ("legacy", "")


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
    api.set_mode(mode, retry_after="3")
    outcome = transport(api).post("events", [EVENT])
    assert (outcome.kind, outcome.unreachable) == (kind, unreachable)
    if mode == "rate_limited":
        assert outcome.retry_after == 3
        assert outcome.error == "HTTP 429: rate limited"
    api.set_mode("up")


def test_strict_import_partial_and_total_refusal(api: MixpanelStandIn) -> None:
    sender = transport(api)
    bad = '{"event":"B","properties":{"distinct_id":"u"}}'
    partial = sender.post("imports", [EVENT, bad])
    assert partial.kind == "dead"
    assert partial.failed == frozenset({1})
    total = sender.post("imports", [bad])
    assert total.kind == "dead"
    assert total.failed == frozenset()


def test_body_is_a_gzip_json_array(api: MixpanelStandIn) -> None:
    transport(api).post("events", [EVENT, EVENT])
    assert len(api.requests[-1].records) == 2


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, 1, Outcome("sent")),
        (200, b"1", Outcome("sent")),
        (200, {"status": "OK", "num_records_imported": 1}, Outcome("sent")),
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
    assert sender._classify(response(status, body), 1, is_import=False) == expected


def test_classify_import_failed_records_forms() -> None:
    sender = MixpanelTransport.from_settings(parse_settings({"mixpanel.token": "tok"}))
    answer = {"failed_records": [{"index": 0}, 2, {"index": 99}, "x", {"no": 1}]}
    outcome = sender._classify(response(400, answer), 3, is_import=True)
    assert outcome.failed == frozenset({0, 2})
    assert sender._classify(response(400, [1]), 3, is_import=True).failed == frozenset()


def test_errors_are_scrubbed_of_secrets() -> None:
    sender = MixpanelTransport.from_settings(parse_settings({"mixpanel.token": "tok-123"}))
    outcome = sender._classify(response(400, {"error": "bad token tok-123"}), 1, False)
    assert outcome.error == "HTTP 400: bad token ***"


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
    for endpoint in ("events", "imports", "people", "groups"):
        sender.post(endpoint, [EVENT])
    for url, headers, data in sent:
        assert headers["Content-Type"] == "application/json"
        if url.endswith(("/track", "/import")):
            assert headers["Content-Encoding"] == "gzip"
            assert json.loads(gzip.decompress(data)) == [json.loads(EVENT)]
        else:
            assert "Content-Encoding" not in headers
            assert json.loads(data) == [json.loads(EVENT)]
    assert len(sent) == 4


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
