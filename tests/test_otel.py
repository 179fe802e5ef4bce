"""The OpenTelemetry export: a real app (WebTest) observed by the SDK's in-memory reader.

Each test gives its own ``MeterProvider`` (the global one can be set only once per process);
the include's use of the global provider is checked with a provider patched in for one test.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import typing as t
from collections.abc import Iterator

import opentelemetry.metrics
import pytest
import webtest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pyramid.config import Configurator
from pyramid.registry import Registry

from pyramid_mixpanel import MixpanelConfigurationError, get_runtime
from pyramid_mixpanel.otel import METER_NAME, OTEL_KEY, Instruments, _version, instrument
from pyramid_mixpanel.runtime import Runtime

from .loopback import MixpanelStandIn, free_port, wait_until
from .observed_app import ORIGIN, User, observed_app

Points = dict[tuple[str, tuple[tuple[str, t.Any], ...]], float]


@pytest.fixture
def reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    """An in-memory reader and the provider it reads."""
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    yield memory, provider
    provider.shutdown()


def make_app(
    runtimes: list[Runtime], settings: dict[str, object], *, otel: bool = False
) -> tuple[webtest.TestApp, Registry]:
    def configure(config: Configurator) -> None:
        config.add_request_method(lambda request: User("user-1"), "user", reify=True)
        config.include("pyramid_mixpanel.relay")
        if otel:
            config.include("pyramid_mixpanel.otel")

    return observed_app(runtimes, settings, configure)


def points(memory: InMemoryMetricReader) -> tuple[Points, dict[str, tuple[str, str]]]:
    """Every data point by (instrument, attributes); each instrument's unit and data kind."""
    found: Points = {}
    kinds: dict[str, tuple[str, str]] = {}
    data = memory.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == METER_NAME
            assert scope.scope.version == _version()
            for metric in scope.metrics:
                kinds[metric.name] = (metric.unit or "", type(metric.data).__name__)
                for point in metric.data.data_points:
                    attributes = tuple(sorted((point.attributes or {}).items()))
                    # (histogram points have no value; these instruments make sums and gauges only)
                    found[(metric.name, attributes)] = point.value  # type: ignore[union-attr]  # see above
    return found, kinds


def sent(found: Points) -> float | None:
    return found.get(("pyramid_mixpanel.messages", (("lane", "mixpanel"), ("outcome", "sent"))))


def lane(found: Points, name: str) -> float | None:
    return found.get((name, (("lane", "mixpanel"),)))


def test_instruments_read_the_figures_at_collection(
    runtimes: list[Runtime], reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    memory, provider = reader
    with MixpanelStandIn() as api:
        app, registry = make_app(runtimes, {"mixpanel.api_host": api.base_url})
        instruments = instrument(registry, provider)
        before, kinds = points(memory)
        assert sent(before) == 0
        assert lane(before, "pyramid_mixpanel.sender.up") == 1
        assert lane(before, "pyramid_mixpanel.sender.errors") == 0
        assert before[("pyramid_mixpanel.relay.calls", (("result", "accepted"),))] == 0
        assert kinds == {
            "pyramid_mixpanel.messages": ("{message}", "Sum"),
            "pyramid_mixpanel.sender.errors": ("{error}", "Sum"),
            "pyramid_mixpanel.queue.depth": ("{message}", "Gauge"),
            "pyramid_mixpanel.queue.oldest_age": ("s", "Gauge"),
            "pyramid_mixpanel.sender.up": ("1", "Gauge"),
            "pyramid_mixpanel.relay.calls": ("{call}", "Sum"),
        }

        for _ in range(3):
            app.get("/page")
        event = {"event": "Page Viewed", "properties": {"Path": "/"}}
        app.post_json("/mixpanel/track", event, headers={"Origin": ORIGIN}, status=200)
        app.post_json("/mixpanel/track", event, headers={"Origin": "https://x.test"}, status=403)
        after = wait_until(lambda: sent(points(memory)[0]) == 4, 10, lambda: points(memory)[0])
    assert len(api.events()) == 4
    assert lane(after, "pyramid_mixpanel.queue.depth") == 0
    assert lane(after, "pyramid_mixpanel.queue.oldest_age") == 0
    assert after[("pyramid_mixpanel.relay.calls", (("result", "accepted"),))] == 1
    assert after[("pyramid_mixpanel.relay.calls", (("result", "csrf"),))] == 1
    assert isinstance(instruments, Instruments)


def test_the_oldest_age_grows_while_mixpanel_is_unreachable(
    runtimes: list[Runtime], reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    memory, provider = reader
    app, registry = make_app(runtimes, {"mixpanel.api_host": f"http://127.0.0.1:{free_port()}"})
    instrument(get_runtime(registry), provider)  # a runtime: lanes only
    app.get("/page")
    app.get("/page")

    def waiting() -> bool:
        found = points(memory)[0]
        return (
            lane(found, "pyramid_mixpanel.queue.depth") == 2
            and (lane(found, "pyramid_mixpanel.queue.oldest_age") or 0) > 0
        )

    first = wait_until(waiting, 10, lambda: points(memory)[0])
    age = t.cast(float, lane(first, "pyramid_mixpanel.queue.oldest_age"))
    later = wait_until(
        lambda: (lane(points(memory)[0], "pyramid_mixpanel.queue.oldest_age") or 0) > age,
        10,
        lambda: points(memory)[0],
    )
    assert lane(later, "pyramid_mixpanel.queue.depth") == 2
    assert not [key for key in later if key[0] == "pyramid_mixpanel.relay.calls"]


def test_the_include_uses_the_global_provider_and_a_later_app_takes_over(
    runtimes: list[Runtime],
    reader: tuple[InMemoryMetricReader, MeterProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory, provider = reader
    monkeypatch.setattr(opentelemetry.metrics, "get_meter_provider", lambda: provider)
    _, first = make_app(runtimes, {"mixpanel.token": "false"}, otel=True)
    _, second = make_app(
        runtimes, {"mixpanel.api_host": f"http://127.0.0.1:{free_port()}"}, otel=True
    )
    assert first[OTEL_KEY] is second[OTEL_KEY]  # one set of instruments per provider
    assert second[OTEL_KEY].observed.app is second
    found, _ = points(memory)
    assert lane(found, "pyramid_mixpanel.sender.up") == 1  # the second app's lane


def test_the_version_of_a_source_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _version() == importlib.metadata.version("pyramid_mixpanel")

    def missing(name: str) -> t.NoReturn:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert _version() == ""


def test_without_opentelemetry_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if never installed
    monkeypatch.delitem(sys.modules, "pyramid_mixpanel.otel")
    with pytest.raises(MixpanelConfigurationError) as raised:
        importlib.import_module("pyramid_mixpanel.otel")
    assert "pip install 'pyramid_mixpanel[otel]'" in str(raised.value)
    assert "pyramid_mixpanel.otel needs the opentelemetry package" in str(raised.value)


def test_a_broken_opentelemetry_says_what_broke(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(opentelemetry.metrics, "Observation")
    monkeypatch.delitem(sys.modules, "pyramid_mixpanel.otel")
    with pytest.raises(ImportError, match="Observation"):
        importlib.import_module("pyramid_mixpanel.otel")
