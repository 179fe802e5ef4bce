"""OpenTelemetry metrics of message delivery and of the relay, read at collection time.

Install the extra (``pip install 'pyramid_mixpanel[otel]'``) and include it::

    config.include("pyramid_mixpanel.otel")

Observable instruments are created on the meter ``pyramid_mixpanel`` of the global
``MeterProvider`` (set one up as usual with ``opentelemetry-sdk`` and an exporter; instruments
created before it is set join it when it is). Their callbacks read the app's figures when the
provider's reader collects: nothing is counted per request for this (see
:mod:`pyramid_mixpanel.observability`). :func:`instrument` does the same for a provider given
explicitly.

* ``pyramid_mixpanel.messages``: ObservableCounter, ``{message}``; attributes ``lane`` and
  ``outcome`` (queued, sent, retried, spooled, overflowed, dead, dropped);
* ``pyramid_mixpanel.sender.errors``: ObservableCounter, ``{error}``; ``lane``;
* ``pyramid_mixpanel.queue.depth``: ObservableGauge, ``{message}``; ``lane``;
* ``pyramid_mixpanel.queue.oldest_age``: ObservableGauge, ``s``; ``lane``;
* ``pyramid_mixpanel.sender.up``: ObservableGauge, ``1`` (1 up, 0 down); ``lane``;
* ``pyramid_mixpanel.relay.calls``: ObservableCounter, ``{call}``; ``result`` (accepted, or the
  refusal reason).

The queue, age and sender instruments observe the ``background`` and ``celery`` deliveries; the
relay's once ``pyramid_mixpanel.relay`` is included. Figures are those of the observing process.
One app per meter provider: an app instrumented with a provider another app of the process
already was takes its place there.
"""

from __future__ import annotations

import importlib.metadata
import typing as t
import weakref

from ._extras import require

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
except ImportError:
    require("opentelemetry.metrics", "otel", "pyramid_mixpanel.otel")
    raise  # opentelemetry is there, but broken: its own error says how

from pyramid.interfaces import PHASE1_CONFIG

from .observability import App, Observed

if t.TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["METER_NAME", "OTEL_KEY", "Instruments", "includeme", "instrument"]

#: The name of the meter (the instrumentation scope) the instruments belong to.
METER_NAME = "pyramid_mixpanel"
#: Registry key of the app's :class:`Instruments` (once the configuration is committed).
OTEL_KEY = "pyramid_mixpanel.otel"

# The instruments each meter provider got from this module (one app per provider). Weak: the
# provider owns its instruments.
_INSTALLED: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()


def _version() -> str:
    """The version of pyramid_mixpanel, the meter's (empty when run from a source tree)."""
    try:
        return importlib.metadata.version("pyramid_mixpanel")
    except importlib.metadata.PackageNotFoundError:
        return ""


class Instruments:
    """The observable instruments of one meter, reading the figures of :attr:`observed`.

    :param meter: where the instruments are created.
    :param app: the app's registry (lanes and relay), or its runtime (lanes only).
    """

    def __init__(self, meter: Meter, app: App) -> None:
        #: What the callbacks read; :func:`instrument` points it at another app.
        self.observed = Observed(app)
        self.messages = meter.create_observable_counter(
            "pyramid_mixpanel.messages",
            [self._messages],
            unit="{message}",
            description="Messages by lane and outcome: queued, sent, retried, spooled,"
            " overflowed, dead, dropped.",
        )
        self.sender_errors = meter.create_observable_counter(
            "pyramid_mixpanel.sender.errors",
            [self._sender_errors],
            unit="{error}",
            description="Sender cycles that failed (and were started again).",
        )
        self.queue_depth = meter.create_observable_gauge(
            "pyramid_mixpanel.queue.depth",
            [self._queue_depth],
            unit="{message}",
            description="Messages waiting for delivery (the queue or spool plus the overflow).",
        )
        self.oldest_age = meter.create_observable_gauge(
            "pyramid_mixpanel.queue.oldest_age",
            [self._oldest_age],
            unit="s",
            description="Seconds the oldest waiting message has waited (0 when none waits).",
        )
        self.sender_up = meter.create_observable_gauge(
            "pyramid_mixpanel.sender.up",
            [self._sender_up],
            unit="1",
            description="1 while the sender thread runs (or was not needed yet), 0 when it"
            " stopped.",
        )
        self.relay_calls = meter.create_observable_counter(
            "pyramid_mixpanel.relay.calls",
            [self._relay_calls],
            unit="{call}",
            description="Items the relay accepted, and refusals by reason.",
        )

    def _messages(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(count, {"lane": lane, "outcome": outcome})
            for lane, outcome, count in self.observed.messages()
        ]

    def _sender_errors(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"lane": lane}) for lane, count in self.observed.sender_errors()]

    def _queue_depth(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(depth, {"lane": lane}) for lane, depth in self.observed.queue_depth()]

    def _oldest_age(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(age, {"lane": lane}) for lane, age in self.observed.oldest_age()]

    def _sender_up(self, options: CallbackOptions) -> list[Observation]:
        return [
            Observation(1 if up else 0, {"lane": lane}) for lane, up in self.observed.sender_up()
        ]

    def _relay_calls(self, options: CallbackOptions) -> list[Observation]:
        calls = self.observed.relay_calls() or []
        return [Observation(count, {"result": result}) for result, count in calls]


def instrument(app: App, meter_provider: MeterProvider | None = None) -> Instruments:
    """Observe ``app`` with ``meter_provider`` (default: the global one); return the instruments.

    :param app: the app's registry (``config.registry``), or its runtime (lanes only).

    A provider gets its instruments once: instrumenting another app with it points them at
    that app (one app per provider), as the include of a test suite's next app does.
    """
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    installed = _INSTALLED.get(provider)
    if installed is not None:
        installed.observed = Observed(app)
        return installed
    meter = metrics.get_meter(METER_NAME, _version(), provider)
    installed = _INSTALLED[provider] = Instruments(meter, app)
    return installed


def includeme(config: Configurator) -> None:
    """Observe the app with the global meter provider.

    Includes ``pyramid_mixpanel`` itself when the app has not. The instruments are created
    when the configuration is committed, and kept in the app's registry under
    :data:`OTEL_KEY`.
    """
    config.include("pyramid_mixpanel")

    def register() -> None:
        config.registry[OTEL_KEY] = instrument(config.registry)

    # After the core's action (same phase, registered later), which builds the runtime.
    config.action(OTEL_KEY, register, order=PHASE1_CONFIG)
