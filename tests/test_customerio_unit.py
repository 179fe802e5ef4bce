"""Customer.io value mapping and error summaries."""

from __future__ import annotations

import datetime as dt

from customerio import CustomerIOException

from pyramid_mixpanel.customerio import (
    CustomerIOCall,
    CustomerIOTransport,
    cio_attributes,
    cio_name,
    cio_value,
    describe_error,
    epoch_seconds,
)
from pyramid_mixpanel.settings import parse_settings

from .loopback import CustomerIOStandIn


def test_epoch_seconds() -> None:
    assert epoch_seconds(dt.date(2020, 1, 1)) == 1577836800
    assert epoch_seconds(dt.datetime(2020, 1, 1)) == 1577836800
    plus_one = dt.timezone(dt.timedelta(hours=1))
    assert epoch_seconds(dt.datetime(2020, 1, 1, 1, tzinfo=plus_one)) == 1577836800


def test_values_and_names() -> None:
    when = dt.datetime(2020, 1, 1)
    assert cio_value([when, (1, "a")]) == [1577836800, [1, "a"]]
    assert cio_value({"at": when, 2: None}) == {"at": 1577836800, "2": None}
    assert cio_value("x") == "x"
    assert cio_name("$created") == "created_at"
    assert cio_name("$email") == "email"
    assert cio_name("Plan") == "Plan"
    assert cio_attributes({"$created": when, "Path": "/"}) == {
        "created_at": 1577836800,
        "Path": "/",
    }


def test_calls_round_trip_through_json() -> None:
    call = CustomerIOCall("track", "u", {"a": [1]}, "Page Viewed")
    assert CustomerIOCall.from_json(call.to_json()) == call


def test_describe_error_keeps_the_status_not_the_payload() -> None:
    quoted = CustomerIOException("500: https://x/api/v1/customers/u {'email': 'a@b'} oops")
    assert describe_error(quoted) == "HTTP 500"
    other = CustomerIOException("Failed to receive valid response\nLast caught -- timeout")
    assert describe_error(other) == "CustomerIOException: Last caught -- timeout"
    assert describe_error(ValueError()) == "ValueError: "


def test_regions_and_successful_delivery() -> None:
    def settings(region: str, url: str | None = None) -> dict[str, str]:
        values = {
            "mixpanel.token": "tok",
            "customerio.tracking.site_id": "s",
            "customerio.tracking.api_key": "k",
            "customerio.tracking.region": region,
        }
        if url:
            values["customerio.tracking.url"] = url
        return values

    eu = CustomerIOTransport.from_settings(parse_settings(settings("eu")))
    assert eu.client.base_url == "https://track-eu.customer.io/api/v1"
    us = CustomerIOTransport.from_settings(parse_settings(settings("us")))
    assert us.client.base_url == "https://track.customer.io/api/v1"
    with CustomerIOStandIn() as server:
        local = CustomerIOTransport.from_settings(parse_settings(settings("us", server.base_url)))
        calls = [
            CustomerIOCall("track", "u", {"Path": "/"}, "Page Viewed"),
            CustomerIOCall("identify", "u", {"email": "a@b"}),
        ]
        for call in calls:
            assert local.post(call.method, [call.to_json()]).sent
        assert [method for method, *_ in server.requests] == ["POST", "PUT"]
