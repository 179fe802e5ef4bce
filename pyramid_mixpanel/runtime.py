"""The app's runtime: parsed settings, catalogue, logger and one delivery per lane.

Built once per app, in the configuration action of ``config.include("pyramid_mixpanel")``, and
kept in the app's registry: two apps in one process (even with equal settings) have two
runtimes, each with its own engines, queues and counters. Reach it with :func:`get_runtime`.
Everything a request needs that does not depend on the request lives here, so reifying
``request.mixpanel`` only creates the request's own buffer.
"""

from __future__ import annotations

import functools
import typing as t
import weakref

from .catalog import Property, Section, closest, normalise
from .converters import from_environment, redact_url
from .counters import Counters
from .customerio import CustomerIOTransport
from .delivery import Delivery, build_delivery
from .delivery.sync import ConsumerDelivery, SyncDelivery
from .delivery.transport import MixpanelTransport
from .exceptions import MixpanelConfigurationError
from .identity import DeviceCookie
from .log import Log
from .settings import INGESTION_HOSTS, MixpanelSettings, parse_settings

if t.TYPE_CHECKING:
    from pyramid.registry import Registry

    from .customerio import CustomerIOCall
    from .delivery import Message

__all__ = ["RUNTIME_KEY", "Runtime", "get_runtime", "runtime_for"]

#: The registry key of the app's :class:`Runtime` (use :func:`get_runtime`).
RUNTIME_KEY = "pyramid_mixpanel.runtime"
HEADER_PREFIX = "HTTP_X_MIXPANEL_"
COUNTERS = ("released", "discarded", "failed", "customerio_failed", "plan_violations")
#: When Mixpanel stops accepting project API secrets (reference/project-secret).
API_SECRET_RETIREMENT = "2027-03-03"  # noqa: S105  # a date, not a secret

# The runtime built for a registry's settings mapping, by the mapping's id, so that
# ``MixpanelTrack(request.registry.settings)`` finds its app's runtime. Weak: an index, not an
# owner — the registry owns its runtime, and an entry goes away with it.
_BY_SETTINGS: weakref.WeakValueDictionary[int, Runtime] = weakref.WeakValueDictionary()


#: Why a runtime is in testing mode when nothing says otherwise.
NO_TOKEN_REASON = "mixpanel.token is not set"  # noqa: S105  # a sentence, not a secret
#: What :meth:`Runtime.setup` says without settings of ours: no ``mixpanel.setup`` line then.
DEFAULT_SETUPS = (
    {"mode": "testing", "reason": NO_TOKEN_REASON, "release_policy": "commit"},
    {
        "mode": "live",
        "delivery": "background",
        "queue": "memory",
        "api_host": f"https://{INGESTION_HOSTS['us']}",
        "region": "us",
        "release_policy": "commit",
        "customerio": "off",
    },
)


class Runtime:
    """Settings plus what is derived from them once: catalogue, logging, delivery.

    :param settings: the parsed settings.
    :param source: the settings mapping they were parsed from (the registry's), if any.
    :param standalone: built outside an app (``MixpanelTrack(settings)`` with settings that no
        registry owns): nothing would ever close a background engine (``celery`` hands over
        through one too), so those modes become ``sync`` — messages are posted by ``flush()``.
    """

    def __init__(
        self,
        settings: MixpanelSettings,
        *,
        source: t.Mapping[str, object] | None = None,
        standalone: bool = False,
    ) -> None:
        self.settings = settings
        self.source = source
        self.catalog = settings.build_catalog()
        self.log = Log(settings.secrets, settings.structlog)
        #: Counts of what happened to messages: released, discarded, failed deliveries.
        self.stats = Counters(COUNTERS)
        #: The Mixpanel lane's delivery (``None`` in testing mode).
        self.mixpanel: Delivery | None = None
        #: The Customer.io lane's delivery (``None`` unless ``customerio.tracking.*`` is set).
        self.customerio: Delivery | None = None
        if not settings.testing:
            self.mixpanel = self._build(MixpanelTransport.from_settings(settings), standalone)
            if settings.customerio_enabled:
                self.customerio = self._build(
                    CustomerIOTransport.from_settings(settings), standalone
                )
        # X-Mixpanel-<Name> headers: matched on folded names, so "X-Mixpanel-Dark-Mode" finds
        # both Property("Dark Mode") and an attribute called dark_mode.
        self.header_properties = _header_properties(self.catalog.event_properties, settings)
        self.declared_header_names = frozenset(
            _header_properties(self.catalog.event_properties, settings, everything=True)
        )
        # Header warnings come from "pyramid_mixpanel.track", as the original package's did.
        self.header_log = self.log.child("track")
        #: The signed device-id cookie (``None`` unless ``mixpanel.device_cookie`` is set).
        self.device_cookie = (
            DeviceCookie(
                settings.device_cookie,
                t.cast(str, settings.cookie_secret),  # parse_settings requires it
                settings.device_cookie_secure,
                settings.device_cookie_max_age,
            )
            if settings.device_cookie is not None
            else None
        )

    def _build(
        self, transport: MixpanelTransport | CustomerIOTransport, standalone: bool
    ) -> Delivery:
        settings = self.settings
        if transport.name == "mixpanel" and settings.consumer is not None:
            return ConsumerDelivery(settings.consumer, settings, self.log)
        if standalone and settings.delivery in ("background", "celery"):
            return SyncDelivery(transport, settings, self.log)
        return build_delivery(transport, settings, self.log)

    @functools.cached_property
    def customerio_client(self) -> t.Any:
        """A ``customerio.CustomerIO`` client for ``customerio.tracking.*`` (else ``None``).

        Built on first use, with the bounded timeouts of the Customer.io lane: it is
        ``request.mixpanel.cio``, for apps' own calls (replication goes through the lane).
        """
        if not self.settings.customerio_enabled:
            return None
        return CustomerIOTransport.from_settings(self.settings).client

    @property
    def lanes(self) -> dict[str, Delivery]:
        """The configured deliveries by lane name (``mixpanel``, ``customerio``)."""
        lanes = {"mixpanel": self.mixpanel, "customerio": self.customerio}
        return {name: delivery for name, delivery in lanes.items() if delivery is not None}

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
        limit = self.settings.header_max_length
        for key in [key for key in environ if str(key).startswith(HEADER_PREFIX)]:
            value = environ[key]
            prop = self.header_properties.get(normalise(key[len(HEADER_PREFIX) :]))
            header = "X-Mixpanel-" + key[len(HEADER_PREFIX) :].replace("_", "-").title()
            if prop is None:
                # Undeclared, or declared but not in mixpanel.header_properties: headers come
                # from clients, so only the allowed ones may set a property.
                name = header[len("X-Mixpanel-") :].lower()
                where = (
                    "in mixpanel.header_properties"
                    if normalise(name) in self.declared_header_names
                    else "a member of event_properties"
                )
                self.header_log.say(
                    "warning",
                    f"Property '{name}', from request header '{header}' is not {where}",
                )
                continue
            if not isinstance(value, str) or len(value) > limit:
                self.log.warning(
                    "mixpanel.header_too_long_ignored",
                    header=header,
                    length=len(value) if isinstance(value, str) else None,
                    limit=limit,
                )
                continue
            found[prop] = value
        return found

    def deliver(
        self,
        messages: t.Sequence[Message],
        calls: t.Sequence[CustomerIOCall] = (),
        consumer: object = None,
    ) -> None:
        """Hand released messages to each lane's delivery; never raises.

        ``consumer``: with ``mixpanel.consumer``, the instance the messages go to (the request's
        ``api._consumer``) instead of a new one.
        """
        if messages and self.mixpanel is not None:  # no delivery at all in testing mode
            self.stats.add("released", len(messages))
            failed = self._submit(self.mixpanel, messages, consumer)
            if failed:
                self.stats.add("failed", failed)
        if calls and self.customerio is not None:
            lane = [(call.method, call.to_json()) for call in calls]
            failed = self._submit(self.customerio, lane)
            if failed:
                self.stats.add("customerio_failed", failed)

    def _submit(
        self, delivery: Delivery, messages: t.Sequence[Message], consumer: object = None
    ) -> int:
        try:
            if consumer is not None:
                return t.cast(ConsumerDelivery, delivery).submit_to(consumer, messages)
            return delivery.submit(messages)
        except Exception as exc:
            # Built-in deliveries never raise; a custom backend might, and the request that
            # released these messages must not see it.
            self.log.error(
                "mixpanel.delivery_error",
                delivery=type(delivery).__qualname__,
                messages=len(messages),
                error=f"{type(exc).__name__}: {str(exc)[:300]}",
            )
            return len(messages)

    def open(self) -> None:
        """Called when the app's configuration is committed: let each delivery start up."""
        for delivery in self.lanes.values():
            delivery.open()

    def close(self, timeout: float | None = None) -> int:
        """Close every delivery (draining for at most ``timeout`` seconds each).

        Returns how many messages were left undelivered (in the spool, or lost and logged).
        """
        return sum(delivery.close(timeout) for delivery in self.lanes.values())

    def setup(self) -> dict[str, str]:
        """What runs, for the startup line and ``pmixpanel status``.

        The mode (and in testing mode why), the delivery, where messages wait, the host and
        region, the release policy and whether Customer.io is replicated to.
        """
        settings = self.settings
        if settings.testing:
            raw = from_environment("mixpanel.token", (self.source or {}).get("mixpanel.token"))
            shown = raw.strip() if isinstance(raw, str) else raw
            reason = (
                NO_TOKEN_REASON
                if shown is None
                else f"mixpanel.token = {str(shown).lower() or '(empty)'}"
            )
            return {"mode": "testing", "reason": reason, "release_policy": settings.release_policy}
        described = {"mode": "live", "delivery": settings.delivery}
        if settings.consumer is not None:
            described["delivery"] = f"sync, through {settings.consumer.__name__}"
        elif settings.delivery in ("background", "celery"):
            described["queue"] = (
                f"spool {settings.spool_path} (commit: {settings.spool_commit})"
                if settings.spool_path
                else "memory"
            )
        described.update(
            api_host=redact_url(settings.api_host),
            region=settings.region,
            release_policy=settings.release_policy,
            customerio="on" if settings.customerio_enabled else "off",
        )
        return described

    def log_configured(self) -> None:
        """Log how tracking is set up: the original package's lines, then any advice.

        ``Mixpanel configured`` names the consumer and catalogue classes as the original did
        (apps' tests compare the line), followed by every delivery setting that differs from
        its default; in testing mode, the original's warning follows.
        """
        settings = self.settings
        consumer = "MockedConsumer" if settings.testing else "PoliteBufferedConsumer"
        if settings.consumer is not None:
            consumer = settings.consumer.__name__
        fields: dict[str, t.Any] = {
            "consumer": consumer,
            "events": settings.events.__name__,
            "event_properties": settings.event_properties.__name__,
            "profile_properties": settings.profile_properties.__name__,
            "profile_meta_properties": settings.profile_meta_properties.__name__,
            "customerio": settings.customerio_enabled,
        }
        if not settings.testing:
            if settings.consumer is None and settings.delivery != "background":
                fields["delivery"] = settings.delivery
            if settings.spool_path:
                fields["spool_path"] = settings.spool_path
            if settings.region != "us":
                fields["region"] = settings.region
            if settings.api_host != f"https://{INGESTION_HOSTS[settings.region]}":
                fields["api_host"] = redact_url(settings.api_host)
        if settings.release_policy != "commit":
            fields["release_policy"] = settings.release_policy
        if settings.header_properties is not None:
            fields["header_properties"] = ",".join(settings.header_properties) or "off"
        if settings.device_cookie is not None:
            fields["device_cookie"] = settings.device_cookie
        if settings.id_merge != "simplified":
            fields["id_merge"] = settings.id_merge
        self.log.say("info", "Mixpanel configured", **fields)
        # The original's lines are kept as they were and, for the two setups an app of the
        # original has without settings of ours (no token; a token and nothing else), alone:
        # apps' tests compare every line logged at startup. Otherwise this one says what runs.
        setup = self.setup()
        if setup not in DEFAULT_SETUPS:
            self.log.info("mixpanel.setup", **setup)
        if settings.testing:
            self.log.say("warning", "Mixpanel is in testing mode, no message will be sent!")
        if settings.api_secret and not settings.has_service_account:
            # reference/project-secret: the API secret is deprecated and retires on 2027-03-03.
            self.log.warning(
                "mixpanel.api_secret_deprecated",
                retires=API_SECRET_RETIREMENT,
                detail="Mixpanel retires project secrets: set mixpanel.service_account.*",
            )


def build_runtime(settings: t.Mapping[str, object]) -> Runtime:
    """Parse an app's settings mapping into a new runtime, findable by that mapping."""
    runtime = Runtime(parse_settings(settings), source=settings)
    _BY_SETTINGS[id(settings)] = runtime
    return runtime


def get_runtime(registry: Registry) -> Runtime:
    """The runtime of the app whose registry this is.

    :raises MixpanelConfigurationError: ``pyramid_mixpanel`` is not included, or the
        configuration is not committed yet.
    """
    runtime = registry.get(RUNTIME_KEY)
    if runtime is None:
        raise MixpanelConfigurationError(
            "pyramid_mixpanel is not configured in this registry: config.include("
            '"pyramid_mixpanel") and commit the configuration (make_wsgi_app) first'
        )
    return t.cast(Runtime, runtime)


def runtime_for(settings: t.Mapping[str, object] | MixpanelSettings | Runtime) -> Runtime:
    """The runtime to use for ``settings``.

    The app's own runtime when ``settings`` is an app registry's settings mapping (e.g.
    ``request.registry.settings``); otherwise a new, standalone runtime that posts on
    ``flush()`` (see :class:`Runtime`).
    """
    if isinstance(settings, Runtime):
        return settings
    if isinstance(settings, MixpanelSettings):
        return Runtime(settings, standalone=True)
    found = _BY_SETTINGS.get(id(settings))
    if found is not None and found.source is settings:
        return found
    return Runtime(parse_settings(settings), source=settings, standalone=True)


def _header_properties(
    section: Section[Property], settings: MixpanelSettings, everything: bool = False
) -> dict[str, Property]:
    """Folded header name -> property, for the properties headers may set.

    Names match loosely, so ``X-Mixpanel-Dark-Mode`` finds both ``Property("Dark Mode")`` and an
    attribute called ``dark_mode``. ``mixpanel.header_properties`` narrows the set (by
    Mixpanel name or attribute name); a name that is not declared is a startup error.
    """
    declared: dict[str, Property] = {}
    for attr, prop in section.by_attr.items():
        declared.setdefault(normalise(attr.removeprefix("dollar_")), prop)
        declared.setdefault(normalise(prop.name), prop)
    allowed = settings.header_properties
    if allowed is None or everything:
        return declared
    chosen: set[Property] = set()
    for name in allowed:
        found = declared.get(normalise(name))
        if found is None:
            hint = closest(name, [p.name for p in section.by_attr.values()])
            raise MixpanelConfigurationError(
                f"mixpanel.header_properties: {name!r} is not a declared event property.{hint}"
            )
        chosen.add(found)
    return {key: prop for key, prop in declared.items() if prop in chosen}
