"""The benchmarks' counting sink (benchmarks/sink.py) decodes and answers what each client sends."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import typing as t
import urllib.parse
from collections.abc import Iterator

import pytest
import requests

from benchmarks import sink

EVENTS = [{"event": "Page Viewed", "properties": {"distinct_id": "u", "time": 1}}] * 3


@pytest.fixture(scope="module")
def api() -> Iterator[sink.Server]:
    with sink.server() as running:
        yield running


@pytest.fixture
def fresh(api: sink.Server) -> sink.Server:
    api.reset()
    return api


def post(api: sink.Server, path: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(f"{api.base_url}{path}", data=body, headers=headers, timeout=10)


def test_gzip_json_to_import(fresh: sink.Server) -> None:
    body = gzip.compress(json.dumps(EVENTS).encode())
    answer = post(fresh, "/import?strict=1", body, **{"Content-Encoding": "gzip"})
    assert answer.json() == {"code": 200, "num_records_imported": 3, "status": "OK"}
    assert (fresh.events(), fresh.requests(), fresh.wire_bytes()) == (3, 1, len(body))


@pytest.mark.parametrize("encode", [False, True])
def test_form_to_track(fresh: sink.Server, encode: bool) -> None:
    data = json.dumps(EVENTS).encode()
    value = base64.b64encode(data).decode() if encode else data.decode()
    form = urllib.parse.urlencode({"data": value, "verbose": "1", "ip": "0"}).encode()
    content_type = "application/x-www-form-urlencoded"
    assert post(fresh, "/track", form, **{"Content-Type": content_type}).json() == {
        "status": 1,
        "error": None,
    }
    assert post(fresh, "/engage", json.dumps(EVENTS[0]).encode()).json() == 1
    assert fresh.events() == 4


def test_batches_chunked_and_expect_continue(fresh: sink.Server) -> None:
    batch = json.dumps({"api_key": "k", "batch": EVENTS}).encode()

    def chunks() -> Iterator[bytes]:
        yield batch[:10]
        yield batch[10:]

    answer = requests.post(f"{fresh.base_url}/batch/", data=chunks(), timeout=10)
    assert answer.json() == {"status": "Ok"}
    connection = http.client.HTTPConnection("127.0.0.1", int(fresh.base_url.rsplit(":", 1)[1]))
    connection.request("POST", "/v1/batch", batch, {"Expect": "100-continue"})
    assert connection.getresponse().read() == b'{"status":"Ok"}'
    connection.close()
    assert fresh.wait_for(6, 10) == 6


@pytest.mark.parametrize("body", [b"", b"not json", b"data=%%%", b"7"])
def test_malformed_is_400(fresh: sink.Server, body: bytes) -> None:
    headers: dict[str, t.Any] = {"Content-Encoding": "gzip"} if body == b"7" else {}
    assert post(fresh, "/track", body, **headers).status_code == 400
    assert (fresh.errors(), fresh.events()) == (1, 0)


def test_wait_times_out_with_what_it_holds(fresh: sink.Server) -> None:
    assert fresh.wait_for(1, 0.05) == 0
