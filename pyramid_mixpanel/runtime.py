"""The per-configuration runtime: parsed settings, catalogue, logger and delivery, built once.

Everything a request needs that does not depend on the request lives here, so reifying
``request.mixpanel`` only creates the request's own buffer.
"""

from __future__ import annotations

import collections
import functools
import typing as t

from .catalog import Property, normalise
from .consumer import PoliteBufferedConsumer
from .customerio import CustomerIOCall, CustomerIOReplicator
from .delivery import BackgroundEngine, build_engine
from .delivery.celery import CeleryHandOver
from .log import Log
from .settings import MixpanelSettings, parse_settings

HEADER_PREFIX = "HTTP_X_MIXPANEL_"


class Runtime:
    """Settings plus what is derived from them once: catalogue, logging, delivery."""

    def __init__(self, settings: MixpanelSettings) -> None:
        self.settings = settings
        self.catalog = settings.build_catalog()
        self.log = Log(settings.secrets, settings.structlog)
        #: Counts of what happened to messages: released, discarded, failed deliveries.
        self.stats: collections.Counter[str] = collections.Counter()
        self.customerio: CustomerIOReplicator | None = None
        if settings.customerio_enabled and not settings.testing:
            self.customerio = CustomerIOReplicator(settings, self.log)
        #: The process-wide background engine (``mixpanel.delivery = background``), else None.
        self.engine: BackgroundEngine | None = None
        self.celery: CeleryHandOver | None = None
        if settings.delivery == "background" and not settings.testing:
            self.engine = build_engine(settings, self.log, self.customerio)
        elif settings.delivery == "celery" and not settings.testing:
            self.celery = CeleryHandOver(settings.celery_app, settings, self.log)
        # X-Mixpanel-<Name> headers: matched on folded names, so "X-Mixpanel-Dark-Mode" finds
        # both Property("Dark Mode") and an attribute called dark_mode.
        self.header_properties: dict[str, Property] = {}
        section = self.catalog.event_properties
        for attr, prop in section.by_attr.items():
            self.header_properties.setdefault(normalise(attr.removeprefix("dollar_")), prop)
            self.header_properties.setdefault(normalise(prop.name), prop)

    def header_props(self, environ: t.Mapping[str, object]) -> dict[Property, object]:
        """Global event properties set by ``X-Mixpanel-<Name>`` request headers."""
        found: dict[Property, object] = {}
        # Most requests carry no such header: one search over the joined keys, in C, says so
        # three times faster than testing each key (this runs for every request.mixpanel).
        try:
            if HEADER_PREFIX not in "\0".join(environ):
                return found
        except TypeError:  # a key that is not a string: not WSGI, but no reason to fail
            pass
        for key in [key for key in environ if str(key).startswith(HEADER_PREFIX)]:
            value = environ[key]
            prop = self.header_properties.get(normalise(key[len(HEADER_PREFIX) :]))
            if prop is None:
                header = "X-Mixpanel-" + key[len(HEADER_PREFIX) :].replace("_", "-").title()
                self.log.warning("mixpanel.unknown_header_ignored", header=header)
                continue
            found[prop] = value
        return found

    def make_consumer(self) -> t.Any:
        """Build a fresh consumer of the configured class for one delivery.

        Classes with a ``from_settings(settings, log)`` classmethod (such as
        :class:`PoliteBufferedConsumer`) are built with it; others are called without arguments.
        """
        cls = self.settings.consumer or PoliteBufferedConsumer
        factory = getattr(cls, "from_settings", None)
        return factory(self.settings, self.log) if factory is not None else cls()

    def deliver(
        self, messages: t.Sequence[tuple[str, str]], calls: t.Sequence[CustomerIOCall] = ()
    ) -> None:
        """Hand released messages to delivery (background engine or consumer); never raises."""
        self.stats["released"] += len(messages)
        handover = self.engine or self.celery
        if handover is not None:
            if self.customerio is not None:
                messages = [*messages, *(("customerio", call.to_json()) for call in calls)]
            self.stats["failed"] += handover.submit(messages)
            return
        if messages:
            try:
                consumer = self.make_consumer()
                for endpoint, json_message in messages:
                    consumer.send(endpoint, json_message)
                flush = getattr(consumer, "flush", None)
                if flush is not None:
                    flush()
            except Exception as exc:
                # A custom consumer may raise anything; the request must not see it.
                self.stats["failed"] += len(messages)
                self.log.error(
                    "mixpanel.consumer_failed",
                    consumer=type(exc).__name__,
                    messages=len(messages),
                    error=str(exc)[:300],
                )
        if calls and self.customerio is not None:
            self.stats["customerio_failed"] += self.customerio.deliver(calls)

    def log_configured(self) -> None:
        """Log the one line that says how tracking is set up."""
        settings = self.settings
        consumer = settings.consumer or PoliteBufferedConsumer
        self.log.info(
            "mixpanel.configured",
            mode="testing" if settings.testing else "live",
            consumer="MockedConsumer" if settings.testing else consumer.__qualname__,
            api_host=settings.api_host,
            events=_qualname(settings.events),
            event_properties=_qualname(settings.event_properties),
            profile_properties=_qualname(settings.profile_properties),
            release_policy=settings.release_policy,
            customerio="on" if settings.customerio_enabled else "off",
        )
        if settings.testing:
            self.log.warning(
                "mixpanel.testing_mode",
                detail="mixpanel.token is not set: messages are recorded, nothing is sent",
            )


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.lru_cache(maxsize=64)
def _runtime_for_settings(settings: MixpanelSettings) -> Runtime:
    return Runtime(settings)


@functools.lru_cache(maxsize=64)
def _parse_items(items: tuple[tuple[str, object], ...]) -> MixpanelSettings:
    return parse_settings(dict(items))


def runtime_for(settings: t.Mapping[str, object] | MixpanelSettings) -> Runtime:
    """Return the (cached) runtime for a settings mapping or a parsed :class:`MixpanelSettings`.

    Identical configurations share one runtime, so ``MixpanelTrack(request.registry.settings)``
    in a view costs no parsing and delivers through the same machinery as ``request.mixpanel``.
    """
    if isinstance(settings, MixpanelSettings):
        return _runtime_for_settings(settings)
    items = tuple(
        sorted(
            (key, value)
            for key, value in settings.items()
            if key.startswith(("mixpanel.", "customerio.", "pyramid_heroku."))
        )
    )
    try:
        parsed = _parse_items(items)
    except TypeError:
        # An unhashable value (e.g. a list set from Python) cannot be a cache key.
        parsed = parse_settings(settings)
    return _runtime_for_settings(parsed)
