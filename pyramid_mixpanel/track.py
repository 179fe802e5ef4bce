"""``MixpanelTrack``: validate, build and buffer one request's Mixpanel messages.

Messages are built as the official :class:`mixpanel.Mixpanel` client (available as
:attr:`MixpanelTrack.api`) builds them, into its consumer (a buffer); what happens to the
buffer is decided by :mod:`pyramid_mixpanel.lifecycle` once the request's outcome is known, or
by :meth:`flush` when used outside a request.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import time as time_module
import typing as t

import mixpanel
import orjson
from webob.request import BaseRequest

from . import rules
from .catalog import Event, Property, Section
from .consumer import MockedConsumer, RequestBuffer
from .customerio import CustomerIOCall, cio_attributes
from .delivery.base import Prepared
from .delivery.sync import ConsumerDelivery
from .exceptions import with_note
from .identity import DeviceCookie, anonymous_id, new_device_id
from .runtime import RUNTIME_KEY, Runtime, get_runtime, runtime_for
from .settings import MixpanelSettings

if t.TYPE_CHECKING:
    from pyramid.registry import Registry
    from pyramid.request import Request

__all__ = [
    "DEVICE_PROPERTIES",
    "IMPORT_AGE",
    "INSERT_ID",
    "MixpanelTrack",
    "PropsType",
    "distinct_id_of",
    "mixpanel_init",
]

PropsType = t.Mapping[Property, t.Any]
LIB_VERSION: str = mixpanel.__version__
# The random module's own generator (see Track._event): no system call, no GIL hand-over.
_random_bits = random.getrandbits
# Mixpanel truncates longer strings.
MAX_STRING_LENGTH = 255
#: Properties the client library and the transport add to every event: they count towards
#: Mixpanel's limit of fewer than 255 properties (reference/import-events).
SYSTEM_EVENT_KEYS = frozenset(
    {"token", "distinct_id", "time", "$insert_id", "mp_lib", "$lib_version", "ip"}
)
# /track refuses events older than five days; those go through /import.
IMPORT_AGE = dt.timedelta(days=5).total_seconds()
_PLAIN = frozenset({str, int, bool, type(None)})
_NUMBERS = (int, float)
_COLLECTIONS = (list, dict)
#: Mixpanel's rule for ``$insert_id``.
INSERT_ID = rules.INSERT_ID
#: Mixpanel's default device properties, which ``track(device=...)`` may set.
DEVICE_PROPERTIES = frozenset(
    {"$browser", "$browser_version", "$os", "$os_version", "$device", "$device_id", "$model"}
)


class MixpanelTrack:
    """Typed helper around :class:`mixpanel.Mixpanel`, available as ``request.mixpanel``.

    :param settings: the app's settings mapping (``request.registry.settings``: its messages go
        through the app's own delivery), another settings mapping or a
        :class:`~pyramid_mixpanel.settings.MixpanelSettings` (a standalone instance that posts
        on :meth:`flush`), or a :class:`~pyramid_mixpanel.runtime.Runtime`. Outside a request,
        :meth:`from_registry` is the clearest way to use the app's delivery.
    :param distinct_id: whom the messages are about; settable later as :attr:`distinct_id`.
    :param global_event_props: properties added to every event tracked through this instance.
    :param device_id: the visitor's device id (``request.mixpanel`` reads it from the
        ``mixpanel.device_cookie``): events carry it as ``$device_id``, and without a
        ``distinct_id`` they are the anonymous visitor's (see :meth:`identify`).

    Every method raises :class:`AttributeError` when :attr:`distinct_id` is not set,
    :class:`ValueError` for an event or property not declared in the configured catalogue, and
    :class:`TypeError` for a value of the wrong type. Outside a request, call :meth:`flush` (or
    use the instance as a context manager) to hand the buffered messages to delivery.
    """

    def __init__(
        self,
        settings: t.Mapping[str, object] | MixpanelSettings | Runtime,
        distinct_id: str | None = None,
        global_event_props: PropsType | None = None,
        *,
        device_id: str | None = None,
    ) -> None:
        runtime = settings if isinstance(settings, Runtime) else runtime_for(settings)
        self._runtime = runtime
        self._catalog = runtime.catalog
        self.settings: MixpanelSettings = runtime.settings
        self._simplified = runtime.settings.id_merge == "simplified"
        self._user_id = distinct_id
        self._anonymous_id: str | None = None
        self._device_id: str | None = None
        self.device_id = device_id
        #: A device id drawn for this visitor (no genuine cookie, or :meth:`reset`): written
        #: to the device cookie on the response by ``request.mixpanel``.
        self.issued_device_id: str | None = None
        self.global_event_props: dict[Property, t.Any] = dict(global_event_props or {})
        self.testing = runtime.settings.testing
        self._replicate = runtime.settings.customerio_enabled
        self._customerio_calls: list[CustomerIOCall] = []
        consumer: t.Any
        # Messages go to api._consumer (which a test may replace, as with the original), except
        # with mixpanel.consumer: then they wait in the buffer until the request's release.
        self._consumer: t.Any = None
        self._sink: RequestBuffer | None = None
        # Events handed to this package's own delivery are built in their final form, once
        # (see _event); a consumer of the app's, or one a test put in, gets the official form.
        self._final = False
        if self.testing:
            consumer = MockedConsumer()
        else:
            consumer = self._buffer = RequestBuffer(self)
            lane = runtime.mixpanel
            if isinstance(lane, ConsumerDelivery):
                # The configured class, exposed as the original package exposed it.
                self._sink = self._buffer
                consumer = self._consumer = lane.make_consumer()
            else:
                self._final = True
        self._token = runtime.settings.token or "testing-mode"
        #: The official client. Its ``_consumer`` is the :class:`MockedConsumer` in testing
        #: mode, the ``mixpanel.consumer`` instance when one is configured, otherwise the
        #: :class:`~pyramid_mixpanel.consumer.RequestBuffer` holding this instance's messages.
        self.api = mixpanel.Mixpanel(runtime.settings.token or "testing-mode", consumer=consumer)
        self._checked_id: str | None = None
        #: ``None`` while pending; ``True``/``False`` once the request was judged a success or not.
        self.outcome: bool | None = None

    @classmethod
    def from_registry(
        cls,
        registry: Registry,
        distinct_id: str | None = None,
        global_event_props: PropsType | None = None,
    ) -> MixpanelTrack:
        """An instance that delivers through the app's runtime, e.g. in a script or a thread.

        ::

            with MixpanelTrack.from_registry(env["registry"], distinct_id="42") as mixpanel:
                mixpanel.track(Events.user_logged_in)
        """
        return cls(get_runtime(registry), distinct_id, global_event_props)

    # -- identity ---------------------------------------------------------------------------

    @property
    def distinct_id(self) -> str | None:
        """Whom messages are about: the user's id, else the anonymous visitor's, else ``None``.

        Setting it names the user (as the original package did); :meth:`identify` does that and
        links the visitor's anonymous history to them.
        """
        return self._user_id if self._user_id is not None else self._anonymous_id

    @distinct_id.setter
    def distinct_id(self, value: str | None) -> None:
        self._user_id = value

    @property
    def device_cookie(self) -> DeviceCookie | None:
        """The app's signed device-id cookie (``None`` without ``mixpanel.device_cookie``)."""
        return self._runtime.device_cookie

    @property
    def user_id(self) -> str | None:
        """The signed-in user's distinct id (``None`` for an anonymous visitor)."""
        return self._user_id

    @property
    def device_id(self) -> str | None:
        """The visitor's device id (``None`` without ``mixpanel.device_cookie``)."""
        return self._device_id

    @device_id.setter
    def device_id(self, value: str | None) -> None:
        self._device_id = value
        self._anonymous_id = None if value is None else anonymous_id(value, self.settings.id_merge)

    def identify(self, user_id: str) -> None:
        """The visitor signed up or signed in as ``user_id`` (call it in the login view).

        Later messages are about ``user_id``, and the visitor's anonymous history is merged into
        the user as the project's ``mixpanel.id_merge`` API expects: an ``$identify`` event with
        ``$device_id`` and ``$user_id`` (``simplified``: any event carrying both merges), with
        ``$identified_id`` and ``$anon_id`` (``original``), or a ``$create_alias`` event
        (``legacy``). Without a device id, or when already identified as ``user_id``, nothing
        is sent.
        """
        if not isinstance(user_id, str) or not user_id:
            raise TypeError(f"user_id must be a non-empty string, got {user_id!r}")
        if rules.blocked_id(user_id):
            raise ValueError(f"user_id {user_id!r} is a placeholder Mixpanel refuses")
        previous, self._user_id = self._user_id, user_id
        if self._device_id is None or previous == user_id:
            return
        self._link_device(user_id)
        self._after_message()

    def _link_device(self, user_id: str, extra: t.Mapping[str, t.Any] | None = None) -> None:
        """Buffer the event that merges the device id's anonymous history into ``user_id``.

        ``extra``: checked properties the event carries too (the browser-SDK proxy adds the
        client's address, device and page); the identity fields are the server's.
        """
        device_id = t.cast(str, self._device_id)
        mode = self.settings.id_merge
        located = dict(extra or {})
        if mode == "legacy":
            # reference/identity-create-alias: the alias joins the anonymous id's cluster.
            alias = {**located, "alias": user_id}
            self._event("events", "$create_alias", t.cast(str, self._anonymous_id), alias)
        else:
            properties = {**located, "$device_id": device_id}
            if mode == "simplified":
                # identifying-users-simplified: an event with both ids merges them.
                properties["$user_id"] = user_id
            else:
                # reference/create-identity: $anon_id must be a UUID v4 (device ids are).
                properties.update({"$identified_id": user_id, "$anon_id": device_id})
            self._event("events", "$identify", user_id, properties)

    def reset(self) -> None:
        """The user signed out: later messages are anonymous, under a fresh device id.

        Mixpanel's advice for a logout, so the next person on this browser is not merged into
        the user who left. The new id is written to the device cookie on the response.
        """
        self._user_id = None
        if self._runtime.device_cookie is not None:
            self.device_id = self.issued_device_id = new_device_id()

    # -- the catalogue, as instances of the configured classes --------------------------------

    @property
    def events(self) -> t.Any:
        """An instance of the configured ``Events`` class (``== Events()`` by default)."""
        return self._catalog.events.instance

    @property
    def event_properties(self) -> t.Any:
        """An instance of the configured ``EventProperties`` class."""
        return self._catalog.event_properties.instance

    @property
    def profile_properties(self) -> t.Any:
        """An instance of the configured ``ProfileProperties`` class."""
        return self._catalog.profile_properties.instance

    @property
    def profile_meta_properties(self) -> t.Any:
        """An instance of the configured ``ProfileMetaProperties`` class."""
        return self._catalog.profile_meta_properties.instance

    @property
    def cio(self) -> t.Any:
        """A ``customerio.CustomerIO`` client for ``customerio.tracking.*``, or ``None``.

        For calls of your own; this instance's replication does not go through it but through
        the Customer.io lane, after the request succeeded.
        """
        return self._runtime.customerio_client

    @property
    def mocked_messages(self) -> list[dict[str, t.Any]]:
        """Messages recorded in testing mode (``mixpanel.token`` not set).

        Mixpanel messages as ``{"endpoint": "events" | "people" | …, "msg": {...}}`` and
        replicated Customer.io calls as ``{"endpoint": "customer.io", "msg": {...}}``.
        """
        consumer = self.api._consumer
        if not isinstance(consumer, MockedConsumer):
            raise AttributeError(
                "mocked_messages only exist in testing mode (mixpanel.token = false)"
            )
        return consumer.mocked_messages

    @property
    def history(self) -> list[tuple[str, str]]:
        """The last 1000 ``(endpoint, JSON)`` messages built outside testing mode, released too."""
        if self.testing:
            return []
        return list(self._buffer.history)

    @property
    def customerio_messages(self) -> list[CustomerIOCall]:
        """Customer.io calls waiting for release (recorded for good in testing mode)."""
        return self._customerio_calls

    # -- events ---------------------------------------------------------------------------

    def track(
        self,
        event: Event,
        props: PropsType | None = None,
        skip_customerio: bool = False,
        *,
        time: dt.datetime | float | None = None,
        ip: str | None = None,
        device: t.Mapping[str, str] | None = None,
        insert_id: str | None = None,
    ) -> None:
        """Track ``event`` with ``props`` (``{EventProperties.x: value}``).

        :param time: when the event happened (aware datetime, naive UTC datetime or epoch
            seconds); events older than five days are sent to ``/import``.
        :param ip: the client IP Mixpanel should geolocate the event with.
        :param device: Mixpanel's device properties (``$browser``, ``$browser_version``,
            ``$os``, ``$os_version``, ``$device``, ``$device_id``, ``$model``), e.g. from
            :func:`pyramid_mixpanel.relay.client.device_properties`.
        :param insert_id: Mixpanel's ``$insert_id`` (at most 36 letters, digits and ``-``):
            events with the same one are counted once, so a retried call is harmless; by
            default the official client draws a random one.
        :param skip_customerio: do not replicate this event to Customer.io.
        """
        distinct_id = self._need_distinct_id("track")
        if event not in self._catalog.events.members:
            raise self._not_member(event, Event, self._catalog.events)
        allowed = self._catalog.event_property_members
        section = self._catalog.event_properties
        if self.global_event_props:
            properties = self._values(self.global_event_props, allowed, section)
            if props:
                properties.update(self._values(props, allowed, section))
        else:
            properties = self._values(props, allowed, section) if props else {}
        if self._catalog.checks_plan:
            self._check_plan(event, props)
        self._emit_event(
            event.name,
            distinct_id,
            properties,
            time=time,
            ip=ip,
            device=device,
            insert_id=insert_id,
        )
        # Anonymous visitors are not Customer.io customers: only users are replicated.
        if self._replicate and not skip_customerio and self._user_id is not None:
            raw = {**_names(self.global_event_props), **_names(props or {})}
            self._replicate_call(
                CustomerIOCall("track", distinct_id, cio_attributes(raw), event.name)
            )
        self._after_message()

    def _emit_event(
        self,
        name: str,
        distinct_id: str,
        properties: dict[str, t.Any],
        *,
        time: dt.datetime | float | None = None,
        ip: str | None = None,
        device: t.Mapping[str, str] | None = None,
        insert_id: str | None = None,
    ) -> None:
        """Add the identity, client and time fields to checked ``properties`` and buffer them.

        What :meth:`track` does once the catalogue checks passed; the browser-SDK proxy calls it
        with properties it checked against its own rules (``pyramid_mixpanel.proxy``).
        """
        if ip is not None:
            if not isinstance(ip, str):
                raise TypeError(f"ip must be a string, got {type(ip).__name__}")
            properties["ip"] = ip
        if self._device_id is not None:
            # identifying-users-simplified, "Server-side Identity Management": $device_id on
            # every event, and $user_id too once signed in (the first such event merges them).
            properties["$device_id"] = self._device_id
            if self._user_id is not None and self._simplified:
                properties["$user_id"] = self._user_id
        if device:
            for key, value in device.items():
                if key not in DEVICE_PROPERTIES:
                    raise ValueError(
                        f"device takes {', '.join(sorted(DEVICE_PROPERTIES))}, not {key!r}"
                    )
                if not isinstance(value, str):
                    raise TypeError(f"device[{key!r}] must be a string")
                properties[key] = value
        if insert_id is not None:
            if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
                raise ValueError(
                    f"insert_id must be 1 to 36 letters, digits or '-', got {insert_id!r}"
                )
            if rules.blocked_id(insert_id):
                raise ValueError(f"insert_id {insert_id!r} is a value Mixpanel refuses")
            properties["$insert_id"] = insert_id
        # Counted exactly only near the limit: this runs for every event.
        if (
            len(properties) >= rules.MAX_PROPERTIES - len(SYSTEM_EVENT_KEYS)
            and (total := len(properties) + len(SYSTEM_EVENT_KEYS.difference(properties)))
            >= rules.MAX_PROPERTIES
        ):
            raise ValueError(
                f"{name!r} would have {total} properties with the ones every event"
                f" carries; Mixpanel takes fewer than {rules.MAX_PROPERTIES}"
            )
        timestamp = None if time is None else _epoch(time)
        if timestamp is not None and time_module.time() - timestamp > IMPORT_AGE:
            self._event("imports", name, distinct_id, properties, timestamp)
        else:
            if timestamp is not None:
                properties["time"] = timestamp
            self._event("events", name, distinct_id, properties)

    # -- profiles -------------------------------------------------------------------------

    def profile_set(
        self,
        props: PropsType,
        meta: PropsType | None = None,
        skip_customerio: bool = False,
    ) -> None:
        """Set profile properties (``{ProfileProperties.x: value}``), replicated to Customer.io."""
        distinct_id = self._need_distinct_id("profile_set")
        values = self._profile_values(props)
        self._profile("$set", distinct_id, values, meta)
        if self._replicate and not skip_customerio and self._user_id is not None:
            raw = {**_names(props), **_names(meta or {})}
            self._replicate_call(CustomerIOCall("identify", distinct_id, cio_attributes(raw)))
        self._after_message()

    def people_set_once(self, props: PropsType, meta: PropsType | None = None) -> None:
        """Set profile properties that are not set yet."""
        distinct_id = self._need_distinct_id("people_set_once")
        self._profile("$set_once", distinct_id, self._profile_values(props), meta)
        self._after_message()

    def people_append(self, props: PropsType, meta: PropsType | None = None) -> None:
        """Append values to list profile properties."""
        distinct_id = self._need_distinct_id("people_append")
        self._profile("$append", distinct_id, self._profile_values(props), meta)
        self._after_message()

    def people_union(self, props: PropsType, meta: PropsType | None = None) -> None:
        """Merge lists into list profile properties; every value must be a list."""
        distinct_id = self._need_distinct_id("people_union")
        values = self._profile_values(props)
        _require_lists(values, "people_union")
        self._profile("$union", distinct_id, values, meta)
        self._after_message()

    def people_remove(self, props: PropsType, meta: PropsType | None = None) -> None:
        """Remove values from list profile properties."""
        distinct_id = self._need_distinct_id("people_remove")
        self._profile("$remove", distinct_id, self._profile_values(props), meta)
        self._after_message()

    def people_unset(self, props: t.Iterable[Property], meta: PropsType | None = None) -> None:
        """Delete profile properties."""
        distinct_id = self._need_distinct_id("people_unset")
        names = self._names_of(props, self._catalog.profile_properties)
        self._profile("$unset", distinct_id, names, meta)
        self._after_message()

    def people_delete(self, meta: PropsType | None = None) -> None:
        """Delete the whole profile."""
        distinct_id = self._need_distinct_id("people_delete")
        self._profile("$delete", distinct_id, "", meta)
        self._after_message()

    def people_clear_charges(self, meta: PropsType | None = None) -> None:
        """Delete every charge recorded on the profile."""
        distinct_id = self._need_distinct_id("people_clear_charges")
        self._profile("$unset", distinct_id, ["$transactions"], meta)
        self._after_message()

    def profile_increment(self, props: PropsType, meta: PropsType | None = None) -> None:
        """Add numbers to numeric profile properties (negative numbers subtract)."""
        distinct_id = self._need_distinct_id("profile_increment")
        values = self._profile_values(props)
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, _NUMBERS):
                raise TypeError(
                    f"profile_increment needs numbers, {name!r} is {type(value).__name__}"
                )
        self._profile("$add", distinct_id, values, meta)
        self._after_message()

    def profile_track_charge(
        self, amount: float, props: PropsType | None = None, meta: PropsType | None = None
    ) -> None:
        """Record a charge of ``amount`` for Mixpanel's revenue report."""
        distinct_id = self._need_distinct_id("profile_track_charge")
        if isinstance(amount, bool) or not isinstance(amount, _NUMBERS):
            raise TypeError(f"amount must be a number, got {type(amount).__name__}")
        allowed = self._catalog.profile_properties.members | self._catalog.event_property_members
        transaction = self._values(props or {}, allowed, self._catalog.profile_properties)
        transaction["$amount"] = amount
        self._profile("$append", distinct_id, {"$transactions": transaction}, meta)
        self._after_message()

    # -- groups ---------------------------------------------------------------------------

    def group_set(
        self, group_key: Property, group_id: str, props: PropsType, meta: PropsType | None = None
    ) -> None:
        """Set properties of the group profile ``group_key = group_id``."""
        key = self._group_key(group_key)
        self._group("$set", key, group_id, self._group_values(props), meta)
        self._after_message()

    def group_set_once(
        self, group_key: Property, group_id: str, props: PropsType, meta: PropsType | None = None
    ) -> None:
        """Set group profile properties that are not set yet."""
        key = self._group_key(group_key)
        self._group("$set_once", key, group_id, self._group_values(props), meta)
        self._after_message()

    def group_union(
        self, group_key: Property, group_id: str, props: PropsType, meta: PropsType | None = None
    ) -> None:
        """Merge lists into list properties of a group profile; values must be lists."""
        key = self._group_key(group_key)
        values = self._group_values(props)
        _require_lists(values, "group_union")
        self._group("$union", key, group_id, values, meta)
        self._after_message()

    def group_unset(
        self,
        group_key: Property,
        group_id: str,
        props: t.Iterable[Property],
        meta: PropsType | None = None,
    ) -> None:
        """Delete properties of a group profile."""
        key = self._group_key(group_key)
        names = self._names_of(props, self._catalog.group_properties)
        self._group("$unset", key, group_id, names, meta)
        self._after_message()

    def group_remove(
        self, group_key: Property, group_id: str, props: PropsType, meta: PropsType | None = None
    ) -> None:
        """Remove values from list properties of a group profile."""
        key = self._group_key(group_key)
        self._group("$remove", key, group_id, self._group_values(props), meta)
        self._after_message()

    def group_delete(
        self, group_key: Property, group_id: str, meta: PropsType | None = None
    ) -> None:
        """Delete a group profile."""
        key = self._group_key(group_key)
        self._group("$delete", key, group_id, "", meta)
        self._after_message()

    # -- release --------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand every buffered message to delivery now (testing mode: mark them flushed)."""
        if self.testing:
            # Nothing is sent in testing mode; messages and Customer.io calls stay inspectable.
            self.api._consumer.flush()
            return
        calls, self._customerio_calls = self._customerio_calls, []
        messages, self._buffer.messages = self._buffer.messages, []
        self._runtime.deliver(messages, calls, consumer=self._consumer)

    def discard(self, reason: str) -> None:
        """Drop every buffered message, counting and logging how many and why."""
        if self.testing:
            return
        dropped = len(self._buffer.messages)
        self._buffer.messages = []
        self._customerio_calls = []
        if dropped:
            self._runtime.stats.add("discarded", dropped)
            self._runtime.log.info("mixpanel.messages_discarded", messages=dropped, reason=reason)

    def settle(self, success: bool, reason: str = "") -> None:
        """Record the request's outcome once and release or discard the buffer accordingly."""
        if self.outcome is not None:
            return
        self.outcome = success
        if success:
            self.flush()
        else:
            self.discard(reason)

    def __enter__(self) -> MixpanelTrack:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.flush()
        else:
            self.discard("the with block raised")

    # -- messages -------------------------------------------------------------------------
    # Built as mixpanel.Mixpanel builds them (same keys, same system properties, compact JSON)
    # but encoded with orjson: the official client constructs a JSON encoder and a UUID object
    # per message, most of a message's cost. The random $insert_id comes from the random
    # module (128 bits, reseeded in forked children), not os.urandom: that system call lets go
    # of the GIL in the middle of every track(), handing it to the sender thread for a whole
    # cycle. It only has to be unique, not unguessable: Mixpanel deduplicates on it.

    def _event(
        self,
        endpoint: str,
        name: str,
        distinct_id: str,
        properties: dict[str, t.Any],
        when: float | None = None,
    ) -> None:
        now = time_module.time()
        everything = {
            "token": self._token,
            "distinct_id": distinct_id,
            "time": now if when is None else when,
            "$insert_id": f"{_random_bits(128):032x}",
            "mp_lib": "python",
            "$lib_version": LIB_VERSION,
        }
        everything.update(properties)
        message = {"event": name, "properties": everything}
        target = self._sink or self.api._consumer
        if self._final and target is self._buffer:
            target.send(endpoint, final_event(message, now))
        else:
            target.send(endpoint, _dumps(message))

    def _update(self, endpoint: str, message: dict[str, t.Any], meta: PropsType | None) -> None:
        record = {"$token": self._token, "$time": time_module.time()}
        record.update(message)
        if meta:
            record.update(self._meta(meta))
        (self._sink or self.api._consumer).send(endpoint, _dumps(record))

    def _profile(
        self, operation: str, distinct_id: str, values: object, meta: PropsType | None
    ) -> None:
        self._update("people", {"$distinct_id": distinct_id, operation: values}, meta)

    def _group(
        self, operation: str, key: str, group_id: str, values: object, meta: PropsType | None
    ) -> None:
        message = {"$group_key": key, "$group_id": group_id, operation: values}
        self._update("groups", message, meta)

    # -- helpers --------------------------------------------------------------------------

    def _replicate_call(self, call: CustomerIOCall) -> None:
        self._customerio_calls.append(call)
        if self.testing:
            # As the original package recorded them, beside the Mixpanel messages.
            if call.method == "track":
                msg = {"customer_id": call.customer_id, "name": call.name, **call.data}
            else:
                msg = {"id": call.customer_id, **call.data}
            self.mocked_messages.append({"endpoint": "customer.io", "msg": msg})

    def _after_message(self) -> None:
        # A message added after the request was judged (e.g. from a finished callback)
        # follows that judgement instead of waiting for a release that already happened.
        if self.outcome is True:
            self.flush()
        elif self.outcome is False:
            self.discard("tracked after the request failed")

    def _need_distinct_id(self, method: str) -> str:
        distinct_id = self._user_id if self._user_id is not None else self._anonymous_id
        if distinct_id is None:
            raise with_note(
                AttributeError(
                    "distinct_id must be set before you can send events or set properties"
                ),
                f"{method}() needs request.user.distinct_id, request.mixpanel.distinct_id ="
                " '...' or, for anonymous visitors, mixpanel.device_cookie",
            )
        if distinct_id is not self._checked_id:
            if rules.blocked_id(distinct_id):
                # Mixpanel refuses these placeholders (reference/import-events): a bug upstream.
                raise ValueError(
                    f"distinct_id {distinct_id!r} is a placeholder Mixpanel refuses"
                    " (anonymous, null, undefined, 0, -1, ...)"
                )
            # Checked once per id, not once per call.
            self._checked_id = distinct_id
        return distinct_id

    def _not_member(self, value: object, kind: type, section: Section[t.Any]) -> Exception:
        if not isinstance(value, kind):
            return TypeError(
                f"expected a {kind.__name__} from {section.cls.__qualname__}, got"
                f" {value!r}.{section.hint(value)}"
            )
        return section.unknown(value)

    def _values(
        self,
        props: PropsType,
        allowed: frozenset[Property],
        section: Section[Property],
    ) -> dict[str, t.Any]:
        values: dict[str, t.Any] = {}
        for prop, value in props.items():
            if prop not in allowed:
                raise self._not_member(prop, Property, section)
            if type(value) not in _PLAIN:
                value = json_value(prop.name, value)
                if type(value) in _COLLECTIONS:
                    problem = rules.value_problem(value)
                    if problem is not None:
                        raise ValueError(f"{prop.name!r} has {problem}: Mixpanel refuses it")
            elif self.testing and type(value) is str and len(value) > MAX_STRING_LENGTH:
                self._runtime.log.warning(
                    "mixpanel.long_string",
                    property=prop.name,
                    length=len(value),
                    detail=f"Mixpanel truncates strings to {MAX_STRING_LENGTH} characters",
                )
            values[prop.name] = value
        return values

    def _check_plan(self, event: Event, props: PropsType | None) -> None:
        """Check an event's values against the declared types and requirements.

        Only called when the catalogue declares some (``Catalog.checks_plan``). In testing
        mode a violation raises; otherwise it is logged and counted, and the event still goes.
        """
        catalog = self._catalog
        values: dict[Property, t.Any] = {**self.global_event_props, **(props or {})}
        types = catalog.event_property_types
        for prop, value in values.items():
            wanted = types.get(prop)
            if wanted is not None and not has_type(value, wanted):
                self._plan_violation(
                    event, prop, f"must be a {wanted} value, got {type(value).__name__}", TypeError
                )
        for prop in catalog.requirements.get(event, ()):
            if prop not in values:
                self._plan_violation(event, prop, "is required but missing", ValueError)

    def _plan_violation(
        self, event: Event, prop: Property, problem: str, kind: type[Exception]
    ) -> None:
        catalog = self._catalog
        text = (
            f"event {event.name!r} ({catalog.attr_of(event)}): property {prop.name!r}"
            f" ({catalog.attr_of(prop)}) {problem}"
        )
        if self.testing:
            raise kind(text)
        # Never the value: it may be personal data.
        self._runtime.log.warning(
            "mixpanel.plan_violation", event_name=event.name, property=prop.name, problem=text
        )
        self._runtime.stats.add("plan_violations")

    def _profile_values(self, props: PropsType) -> dict[str, t.Any]:
        section = self._catalog.profile_properties
        return self._values(props, section.members, section)

    def _group_values(self, props: PropsType) -> dict[str, t.Any]:
        section = self._catalog.group_properties
        return self._values(props, section.members, section)

    def _meta(self, meta: PropsType) -> dict[str, t.Any]:
        section = self._catalog.profile_meta_properties
        values = self._values(meta, section.members, section)
        when = meta.get(Property("$time"))
        if isinstance(when, (dt.datetime, float, int)) and not isinstance(when, bool):
            # Epoch seconds, as the official client sends $time (not an ISO string).
            values["$time"] = int(_epoch(when))
        return values

    def _names_of(self, props: t.Iterable[Property], section: Section[Property]) -> list[str]:
        names = []
        for prop in props:
            if prop not in section.members:
                raise self._not_member(prop, Property, section)
            names.append(prop.name)
        return names

    def _group_key(self, group_key: Property) -> str:
        section = self._catalog.group_keys
        if group_key not in section.members:
            raise self._not_member(group_key, Property, section)
        return group_key.name


def distinct_id_of(request: Request) -> str | None:
    """``request.user.distinct_id`` when the app has a ``request.user``, else ``None``."""
    user = getattr(request, "user", None)
    return getattr(user, "distinct_id", None) if user is not None else None


def mixpanel_init(request: Request) -> MixpanelTrack:
    """A :class:`MixpanelTrack` for ``request``, as ``request.mixpanel`` is built.

    With the app's runtime when ``pyramid_mixpanel`` is included (else one for
    ``request.registry.settings``), ``distinct_id`` from ``request.user.distinct_id`` and
    global event properties from ``X-Mixpanel-*`` headers. ``request.mixpanel`` also ties the
    release of the messages to the request's outcome; this function alone does not.
    """
    runtime = request.registry.get(RUNTIME_KEY) if hasattr(request.registry, "get") else None
    if not isinstance(runtime, Runtime):
        runtime = runtime_for(request.registry.settings)
    if isinstance(request, BaseRequest):
        environ = request.environ
    else:
        # A test double (``pyramid.testing.DummyRequest``) keeps its headers apart from its
        # environ: take them, as the environ of a real request would hold them.
        environ = {
            "HTTP_" + name.upper().replace("-", "_"): value
            for name, value in getattr(request, "headers", {}).items()
        }
    track = MixpanelTrack(
        runtime,
        distinct_id=distinct_id_of(request),
        global_event_props=runtime.header_props(environ),
    )
    cookie = runtime.device_cookie
    if cookie is not None:
        device_id = cookie.read(request)
        if device_id is None:
            # No cookie, or one this app did not sign: a new visitor as far as we can tell.
            device_id = track.issued_device_id = new_device_id()
        track.device_id = device_id
    return track


def _names(props: PropsType) -> dict[str, t.Any]:
    return {prop.name: value for prop, value in props.items()}


def _require_lists(values: dict[str, t.Any], method: str) -> None:
    for name, value in values.items():
        if not isinstance(value, list):
            raise with_note(
                TypeError(f"Property '{Property(name)!r}' value is not a list"),
                f"{method} needs lists, {name!r} is {type(value).__name__}",
            )


def _iso(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="seconds")


def _epoch(value: dt.datetime | float) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        raise TypeError(f"time must be a datetime or epoch seconds, got {type(value).__name__}")
    return float(value)


def has_type(value: object, wanted: str) -> bool:
    """Whether ``value`` is of the declared property type ``wanted`` (``None`` always is)."""
    if value is None:
        return True
    if wanted == "string":
        return isinstance(value, str)
    if wanted == "number":
        return isinstance(value, _NUMBERS) and not isinstance(value, bool)
    if wanted == "boolean":
        return isinstance(value, bool)
    if wanted == "datetime":
        if isinstance(value, dt.date):
            return True
        if not isinstance(value, str):
            return False
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    if wanted == "list":
        return isinstance(value, (list, tuple, set, frozenset))
    return isinstance(value, dict)


def json_value(name: str, value: object) -> object:
    """Convert a value to what Mixpanel stores, or raise naming the property."""
    if value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            # json.dumps would write NaN/Infinity, which is not JSON: Mixpanel would reject the
            # whole batch, taking other requests' events down with it.
            raise ValueError(f"{name!r} is {value}, which Mixpanel cannot store")
        return value
    if isinstance(value, (str, int)):  # str/int subclasses such as enums
        return value
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_value(name, item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(name, item) for key, item in value.items()}
    raise TypeError(
        f"{name!r} is a {type(value).__name__}; Mixpanel properties take str, int, float,"
        " bool, None, datetime, date, lists and dicts of those"
    )


def final_event(message: dict[str, t.Any], now: float) -> str:
    """``message`` as the transport posts it, checked once against every documented rule.

    On the caller's thread: a :class:`~pyramid_mixpanel.delivery.base.Prepared` body the
    sender posts as it is. One that breaks a rule stays a plain body: the transport refuses it
    then, with the reason, as it would any other.
    """
    properties = message["properties"]
    when = rules.time_ms(properties["time"])
    if when is None:
        return _dumps(message)
    # What the transport would do: integer milliseconds, and no geolocation to this server.
    properties["time"] = when
    properties.setdefault("ip", "0")
    body = _dumps(message)
    # (A character takes at most 4 bytes: most bodies are far from the limit, without encoding.)
    large = len(body) * 4 >= rules.MAX_EVENT_BYTES and len(body.encode()) >= rules.MAX_EVENT_BYTES
    if large or rules.event_problem(message, round(now * 1000)) is not None:
        return body
    return Prepared(body)


def _dumps(value: object) -> str:
    """Compact JSON, as the official client writes it."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, which orjson refuses and json writes
        return json.dumps(value, separators=(",", ":"))
