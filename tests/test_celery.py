"""``mixpanel.delivery = celery`` against a real Redis broker and a real Celery worker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from collections.abc import Iterator

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.request import Request

from pyramid_mixpanel import EventProperties, Events, get_runtime
from pyramid_mixpanel.customerio import CustomerIOTransport
from pyramid_mixpanel.delivery import BackgroundEngine
from pyramid_mixpanel.delivery.celery import CeleryDelivery, CeleryPublisher, register
from pyramid_mixpanel.delivery.transport import MixpanelTransport
from pyramid_mixpanel.log import Log
from pyramid_mixpanel.settings import MixpanelConfigurationError, parse_settings

from . import drill_app
from .loopback import MixpanelStandIn, SilentServer, free_port, wait_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run must install it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def api() -> Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


@pytest.fixture
def worker(redis_url: str, api: MixpanelStandIn) -> Iterator[dict[str, str]]:
    env = {
        "DRILL_BROKER": redis_url,
        "DRILL_API_HOST": api.base_url,
        "DRILL_WORKER": "1",
        "DRILL_QUEUE": f"q-{uuid.uuid4().hex[:8]}",
    }
    process = subprocess.Popen(
        [str(BIN / "celery"), "-A", "tests.celery_app", "worker", "--pool=solo",
         "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
        cwd=ROOT,
        env={**os.environ, **env},
    )  # fmt: skip
    try:
        yield env
    finally:
        process.terminate()
        process.wait(20)


def make_app(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> webtest.TestApp:
    for key, value in env.items():
        if key != "DRILL_WORKER":
            monkeypatch.setenv(key, value)
    # A fresh import so the web-side app picks up this test's broker and queue.
    sys.modules.pop("tests.celery_app", None)
    import tests.celery_app

    def view(request: Request) -> dict[str, str]:
        request.mixpanel.distinct_id = "celery-user"
        for i in range(int(request.params.get("n", "1"))):
            request.mixpanel.track(Events.page_viewed, {EventProperties.path: f"/{i}"})
        return {}

    settings = {
        "mixpanel.token": "celery-token",
        "mixpanel.delivery": "celery",
        "mixpanel.celery_app": tests.celery_app.app,
        **drill_app.CATALOG,
    }
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("x", "/x")
        config.add_view(view, route_name="x", renderer="json")
        # Every kind of message (events, old events, profiles, groups), as in the drills.
        config.add_route("track", "/track")
        config.add_view(drill_app.track, route_name="track", renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


def test_workers_deliver_what_requests_released(
    worker: dict[str, str], api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(worker, monkeypatch)
    api.set_mode("error500")  # the first attempts fail: the worker retries with backoff
    app.get("/x?n=3", status=200)
    app.get("/x?n=2", status=200)
    wait_until(lambda: len(api.requests) > 0, 30, lambda: api.requests)  # the worker tried
    for n in range(2):
        app.get(f"/track?n={n}", status=200)
    api.set_mode("up")
    events = api.wait_for_events(5 + 4, timeout=30)
    paths = sorted(e["properties"]["Path"] for e in events if e["event"] == "Page Viewed")
    assert paths == ["/0", "/0", "/1", "/1", "/2", "0", "1"]
    assert all(e["properties"]["token"] == "celery-token" for e in events)
    wait_until(
        lambda: drill_app.every_kind_arrived(api, 2),
        30,
        lambda: (api.received["people"], api.received["groups"], api.refused, api.dropped),
    )
    assert api.refused == [] and api.dropped == []


def broker_app(monkeypatch: pytest.MonkeyPatch, broker: str, **extra: str) -> webtest.TestApp:
    """The web app with its Celery app pointed at ``broker``."""
    app = make_app({"DRILL_BROKER": broker, "DRILL_QUEUE": "nowhere", **extra}, monkeypatch)
    import tests.celery_app

    tests.celery_app.app.conf.broker_connection_timeout = 0.2
    return app


@pytest.mark.parametrize("kind", ["refusing", "hung"])
def test_a_broker_outage_never_reaches_the_request_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    with contextlib.ExitStack() as stack:
        # A hung broker accepts connections and never answers; a refusing one has no listener.
        port = stack.enter_context(SilentServer()).port if kind == "hung" else free_port()
        app = broker_app(monkeypatch, f"redis://127.0.0.1:{port}/0")
        engine = get_runtime(app.app.registry).lanes["mixpanel"]
        assert isinstance(engine, BackgroundEngine)
        slowest = 0.0
        with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
            for _ in range(20):
                started = time.monotonic()
                app.get("/x", status=200)
                slowest = max(slowest, time.monotonic() - started)
            wait_until(lambda: engine.stats["retried"] >= 1, 30, engine.stats.snapshot)
        # A behaviour bound, not a benchmark: no request waited for the broker.
        assert slowest < 0.5
        assert "mixpanel.delivery_retry" in caplog.text
        # Nothing was dropped: the 20 events wait for the broker.
        assert engine.stats["dropped"] == 0
        assert engine.store.pending() + engine.overflow.pending() == 20
        engine.close(0.1)


class FakeTask:
    def __init__(self, retries: int) -> None:
        self.request = type("R", (), {"retries": retries})()
        self.retried: list[tuple[t.Any, ...]] = []

    def retry(
        self, args: tuple[t.Any, ...], kwargs: dict[str, t.Any], countdown: float
    ) -> Exception:
        self.retried.append(args)
        return RuntimeError(f"retry in {countdown}")


def test_the_task_settles_like_the_engine(
    api: MixpanelStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    class App:
        def task(self, **options: t.Any) -> t.Callable[[t.Callable[..., int]], t.Any]:
            assert options["acks_late"] is True
            return lambda func: func

    deliver = register(App(), {"mixpanel.token": "celery-token", "mixpanel.api_host": api.base_url})
    now = int(time.time())
    body = json.dumps(
        {"event": "A", "properties": {"time": now, "distinct_id": "u", "$insert_id": "x"}}
    )
    refused = json.dumps({"event": "B", "properties": {"time": now, "distinct_id": "null"}})
    assert deliver(FakeTask(0), "events", [body]) == 1
    # One refused record is logged and dropped from the task; the good one arrived.
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        assert deliver(FakeTask(0), "events", [refused, body]) == 1
    assert "'null' is a value Mixpanel refuses" in caplog.text
    api.set_mode("error500")
    task = FakeTask(2)
    with pytest.raises(RuntimeError, match="retry in"):
        deliver(task, "events", [refused, body])
    assert task.retried == [("events", [body])]  # the refused one does not go round again
    api.set_mode("bad_request")
    with caplog.at_level(logging.ERROR, logger="pyramid_mixpanel"):
        assert deliver(FakeTask(0), "events", [body]) == 0
        # A lane this worker's settings do not configure is refused loudly, not posted.
        assert deliver(FakeTask(0), "track", ["{}"], lane="customerio") == 0
    assert "mixpanel.delivery_refused" in caplog.text
    assert "mixpanel.celery_unknown_lane lane='customerio'" in caplog.text


def test_handover_batches_per_endpoint_within_each_lane(tmp_path: pathlib.Path) -> None:
    sent: list[tuple[str, str, int]] = []

    class App:
        def send_task(
            self, name: str, args: tuple[str, list[str]], kwargs: dict[str, str], retry: bool
        ) -> None:
            assert retry is False  # retries are the engine's, with Mixpanel's backoff
            sent.append((kwargs["lane"], args[0], len(args[1])))

    settings = parse_settings(
        {
            "mixpanel.token": "t",
            "mixpanel.delivery": "celery",
            "mixpanel.celery_app": App(),
            "mixpanel.batch_max_records": "2",
            "mixpanel.flush_interval": "0.05",
            # The spool works with Celery too: what the broker has not taken survives a crash.
            "mixpanel.spool_path": str(tmp_path / "spool.db"),
            "customerio.tracking.site_id": "s",
            "customerio.tracking.api_key": "k",
            "customerio.tracking.region": "us",
        }
    )
    mixpanel = CeleryDelivery(MixpanelTransport.from_settings(settings), settings, Log())
    assert mixpanel.submit([("events", "{}")] * 3) == 0
    customerio = CeleryDelivery(CustomerIOTransport.from_settings(settings), settings, Log())
    assert customerio.submit([("track", "{}")] * 2) == 0
    wait_until(lambda: len(sent) == 4, 10, lambda: sent)
    assert sorted(sent) == [
        ("customerio", "track", 1),
        ("customerio", "track", 1),
        ("mixpanel", "events", 1),
        ("mixpanel", "events", 2),
    ]
    assert mixpanel.stats["sent"] == 3 and mixpanel.stats["spooled"] == 3
    mixpanel.close(1)
    customerio.close(1)


def test_one_stuck_publish_at_a_time() -> None:
    release = threading.Event()
    calls: list[int] = []

    class App:
        def send_task(self, *args: t.Any, **kwargs: t.Any) -> None:
            calls.append(1)
            if len(calls) == 1:
                release.wait(10)  # the broker hangs on the first publish
            else:
                raise ConnectionError("broker gone")

    lane = MixpanelTransport()
    publisher = CeleryPublisher(lane, App(), timeout=0.05)
    assert (publisher.name, publisher.endpoints) == ("mixpanel", lane.endpoints)
    first = publisher.post("events", [b"{}"])
    assert (first.kind, first.unreachable) == ("retry", True)
    assert "did not answer within 0.05s" in first.error
    second = publisher.post("events", ["{}"])
    assert second.error == "the broker has not answered an earlier hand-over"
    assert calls == [1]  # no second thread piled up behind the stuck one
    release.set()
    wait_until(
        lambda: publisher._stuck is not None and not publisher._stuck.is_alive(), 5, calls.copy
    )
    third = publisher.post("events", ["{}"])
    assert third.error == "ConnectionError: broker gone"
    publisher.close()


def test_celery_settings_go_together() -> None:
    with pytest.raises(MixpanelConfigurationError, match="go together"):
        parse_settings({"mixpanel.delivery": "celery"})
    with pytest.raises(MixpanelConfigurationError, match="cannot be imported"):
        parse_settings({"mixpanel.delivery": "celery", "mixpanel.celery_app": "nowhere:app"})


def test_workers_deliver_the_customerio_lane_when_they_configure_it() -> None:
    from .loopback import CustomerIOStandIn

    class App:
        def task(self, **options: t.Any) -> t.Callable[[t.Callable[..., int]], t.Any]:
            return lambda func: func

    with CustomerIOStandIn() as server:
        deliver = register(
            App(),
            {
                "mixpanel.token": "celery-token",
                "customerio.tracking.site_id": "s",
                "customerio.tracking.api_key": "k",
                "customerio.tracking.region": "us",
                "customerio.tracking.url": server.base_url,
            },
        )
        call = '{"method":"track","customer_id":"u","data":{},"name":"E"}'
        assert deliver(FakeTask(0), "track", [call], lane="customerio") == 1
        assert [method for method, *_ in server.requests] == ["POST"]
