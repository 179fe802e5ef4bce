"""Prometheus metrics of message delivery and of the relay, read at scrape time.

Install the extra (``pip install 'pyramid_mixpanel[prometheus]'``) and include it::

    config.include("pyramid_mixpanel.prometheus")

A custom collector of the app's figures is registered with ``prometheus_client``'s default
registry (so whatever serves that registry — ``prometheus_client.start_http_server``, an exporter
the app already has — serves them too), or with the registry named by
``mixpanel.prometheus.registry``. With ``mixpanel.prometheus.path = /metrics`` the app serves that
registry itself, in the text exposition format. Nothing is counted per request for this: the
figures are read when Prometheus scrapes (see :mod:`pyramid_mixpanel.observability`).

* ``pyramid_mixpanel_messages_total{lane, outcome}``: counter; outcome is queued, sent, retried,
  spooled, overflowed, dead or dropped;
* ``pyramid_mixpanel_sender_errors_total{lane}``: counter of failed sender cycles;
* ``pyramid_mixpanel_queue_depth{lane}``: gauge of the messages waiting (queue or spool, plus
  the overflow);
* ``pyramid_mixpanel_oldest_pending_seconds{lane}``: gauge, how long the oldest has waited;
* ``pyramid_mixpanel_sender_up{lane}``: gauge, 1 while the sender runs, 0 once it stopped;
* ``pyramid_mixpanel_relay_calls_total{result}``: counter; result is accepted, or the reason of
  a refusal.

The queue, age and sender gauges exist for the ``background`` and ``celery`` deliveries; the
relay's counter once ``pyramid_mixpanel.relay`` is included. Figures are those of the process
that is scraped (each worker of a pre-fork server has its own queue and counters).

One app per Prometheus registry: an app that includes this in a process where another app
already did, with the same registry, takes its place there. Apps that manage their own
``CollectorRegistry`` can skip the include and register :func:`collector` themselves.
"""

from __future__ import annotations

import contextlib
import re
import typing as t
import weakref
from dataclasses import dataclass

from ._extras import require

try:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError:
    require("prometheus_client", "prometheus", "pyramid_mixpanel.prometheus")
    raise  # prometheus_client is there, but broken: its own error says how

from pyramid.interfaces import PHASE1_CONFIG
from pyramid.response import Response

from .converters import Setting, as_dotted_object, as_secret, parse_table
from .exceptions import MixpanelConfigurationError
from .observability import App, Observed

if t.TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from pyramid.config import Configurator
    from pyramid.request import Request

__all__ = [
    "PROMETHEUS_KEY",
    "MetricsView",
    "MixpanelCollector",
    "PrometheusSettings",
    "collector",
    "includeme",
    "parse_prometheus_settings",
]

#: Registry key of the app's :class:`MixpanelCollector` (once the configuration is committed).
PROMETHEUS_KEY = "pyramid_mixpanel.prometheus"
ROUTE_NAME = "pyramid_mixpanel.prometheus"
PREFIX = "mixpanel.prometheus."
# Letters, digits and "/._~-" only: a route pattern ({x}, *x) would capture the app's URLs.
PLAIN_PATH = re.compile(r"/[A-Za-z0-9/._~-]*")

# The collector each Prometheus registry got from this module (one app per registry). Weak: the
# registry owns its collectors.
_INSTALLED: weakref.WeakKeyDictionary[CollectorRegistry, MixpanelCollector] = (
    weakref.WeakKeyDictionary()
)


class MixpanelCollector(Collector):
    """A ``prometheus_client`` collector of one app's figures, read at each scrape.

    :param app: the app's registry (lanes and relay), or its runtime (lanes only).
    """

    def __init__(self, app: App) -> None:
        self.observed = Observed(app)

    def describe(self) -> t.Iterator[Metric]:
        """The metric families, without reading anything (used when it is registered)."""
        return iter(_families())

    def collect(self) -> t.Iterator[Metric]:
        """The metric families, with the figures of now."""
        messages, errors, depth, oldest, up, relay = _families()
        observed = self.observed
        for lane, outcome, count in observed.messages():
            messages.add_metric([lane, outcome], count)
        for lane, count in observed.sender_errors():
            errors.add_metric([lane], count)
        for lane, waiting in observed.queue_depth():
            depth.add_metric([lane], waiting)
        for lane, age in observed.oldest_age():
            oldest.add_metric([lane], age)
        for lane, alive in observed.sender_up():
            up.add_metric([lane], 1 if alive else 0)
        yield from (messages, errors, depth, oldest, up)
        calls = observed.relay_calls()
        if calls is not None:
            for result, count in calls:
                relay.add_metric([result], count)
            yield relay


def _families() -> tuple[
    CounterMetricFamily,
    CounterMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    CounterMetricFamily,
]:
    lane = ["lane"]
    return (
        CounterMetricFamily(
            "pyramid_mixpanel_messages",
            "Messages by lane and outcome: queued, sent, retried, spooled, overflowed, dead,"
            " dropped.",
            labels=["lane", "outcome"],
        ),
        CounterMetricFamily(
            "pyramid_mixpanel_sender_errors",
            "Sender cycles that failed (and were started again).",
            labels=lane,
        ),
        GaugeMetricFamily(
            "pyramid_mixpanel_queue_depth",
            "Messages waiting for delivery (the queue or spool plus the overflow).",
            labels=lane,
        ),
        GaugeMetricFamily(
            "pyramid_mixpanel_oldest_pending_seconds",
            "Seconds the oldest waiting message has waited (0 when none waits).",
            labels=lane,
        ),
        GaugeMetricFamily(
            "pyramid_mixpanel_sender_up",
            "1 while the sender thread runs (or was not needed yet), 0 when it stopped.",
            labels=lane,
        ),
        CounterMetricFamily(
            "pyramid_mixpanel_relay_calls",
            "Items the relay accepted, and refusals by reason.",
            labels=["result"],
        ),
    )


def collector(app: App) -> MixpanelCollector:
    """A collector of ``app``'s figures, for apps that register it with a registry of their own.

    :param app: the app's registry (``config.registry``, ``request.registry``), or its runtime.

    ::

        registry = CollectorRegistry()
        registry.register(pyramid_mixpanel.prometheus.collector(config.registry))
    """
    return MixpanelCollector(app)


def _install(app: App, registry: CollectorRegistry) -> MixpanelCollector:
    """Register ``app``'s collector with ``registry``, in place of an earlier app's."""
    earlier = _INSTALLED.pop(registry, None)
    if earlier is not None:
        with contextlib.suppress(KeyError):  # the app took it out itself
            registry.unregister(earlier)
    installed = _INSTALLED[registry] = collector(app)
    registry.register(installed)
    return installed


class MetricsView:
    """``GET <mixpanel.prometheus.path>``: ``registry`` in the text exposition format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __call__(self, request: Request) -> Response:
        """Answer a scrape."""
        response = Response(body=generate_latest(self.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        response.headers["Cache-Control"] = "no-store"
        return response


@dataclass(frozen=True)
class PrometheusSettings:
    """The parsed ``mixpanel.prometheus.*`` settings."""

    #: Where the app serves its metrics (``None``: it does not; something else serves them).
    path: str | None = None
    #: The registry the collector joins (and the view serves).
    registry: CollectorRegistry = REGISTRY
    #: The permission of the view (``None``: the app's default permission, if any).
    permission: str | None = None


def _path(key: str, value: object) -> str | None:
    text = as_secret(key, value)
    if text is not None and not PLAIN_PATH.fullmatch(text):
        raise MixpanelConfigurationError(
            f"{key} must be a plain URL path starting with '/', such as /metrics: letters,"
            " digits and / . _ ~ - (no {placeholders}, * or :name)"
        )
    return text


def _registry(key: str, value: object) -> CollectorRegistry | None:
    if isinstance(value, str) and as_secret(key, value) is None:
        return None
    found = as_dotted_object(key, value)
    if not isinstance(found, CollectorRegistry):
        raise MixpanelConfigurationError(
            f"{key} must name a prometheus_client CollectorRegistry (such as"
            f" myapp.metrics.registry), got {type(found).__name__}"
        )
    return found


TABLE: tuple[Setting, ...] = (
    Setting(PREFIX + "path", "path", _path),
    Setting(PREFIX + "registry", "registry", _registry),
    Setting(PREFIX + "permission", "permission", as_secret),
)


def parse_prometheus_settings(settings: t.Mapping[str, object]) -> PrometheusSettings:
    """Parse ``mixpanel.prometheus.*``; an unknown key is logged with the closest known one.

    :raises MixpanelConfigurationError: a value is invalid; the message names the key.
    """
    values = parse_table(settings, TABLE, namespaces=(PREFIX,))
    return PrometheusSettings(**values)  # type: ignore[arg-type]  # keys come from the table


def includeme(config: Configurator) -> None:
    """Export the app's figures to Prometheus; serve them at ``mixpanel.prometheus.path``.

    Includes ``pyramid_mixpanel`` itself when the app has not. The settings are parsed, and
    the collector registered, when the configuration is committed (so ``config.add_settings``
    after this include still counts); the route is added then, after the app's own routes.
    The collector is kept in the app's registry under :data:`PROMETHEUS_KEY`.
    """
    config.include("pyramid_mixpanel")

    def register() -> None:
        settings = parse_prometheus_settings(config.get_settings())
        config.registry[PROMETHEUS_KEY] = _install(config.registry, settings.registry)
        if settings.path is not None:
            config.add_route(ROUTE_NAME, settings.path)
            config.add_view(
                MetricsView(settings.registry),
                route_name=ROUTE_NAME,
                request_method=("GET", "HEAD"),
                permission=settings.permission,
            )

    # After the core's action (same phase, registered later), which builds the runtime.
    config.action(PROMETHEUS_KEY, register, order=PHASE1_CONFIG)
