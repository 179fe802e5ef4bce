"""Settings: the core's table of :class:`~pyramid_mixpanel.converters.Setting` rows, parsed once.

:func:`parse_settings` turns the ``mixpanel.*`` / ``customerio.tracking.*`` keys into one frozen
:class:`MixpanelSettings`; :func:`parse_query_settings` reads only what the query side needs into a
:class:`QuerySettings`. Every mistake is a :class:`MixpanelConfigurationError` naming the
setting; an unknown ``mixpanel.*`` key is logged with the closest known key. Secrets are kept out
of ``repr``.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field, fields

from ._extras import require
from .catalog import (
    Catalog,
    EventProperties,
    Events,
    GroupKeys,
    GroupProperties,
    ProfileMetaProperties,
    ProfileProperties,
)
from .converters import (
    Setting,
    as_auto_bool,
    as_base_url,
    as_bool,
    as_cookie_name,
    as_database_url,
    as_dotted_object,
    as_hmac_secret,
    as_name_list,
    as_positive_float,
    as_secret,
    as_timezone,
    one_of,
    parse_table,
    positive_int,
    subclass_of,
)
from .exceptions import MixpanelConfigurationError, with_note
from .identity import ID_MERGE_MODES

__all__ = [
    "DELIVERY_MODES",
    "SETTINGS",
    "MixpanelConfigurationError",
    "MixpanelSettings",
    "QuerySettings",
    "parse_query_settings",
    "parse_settings",
]

RELEASE_POLICIES = ("commit", "success", "always")
#: How the spool commits hand-overs (``mixpanel.spool_commit``).
SPOOL_COMMITS = ("request", "group")
DELIVERY_MODES = ("background", "sync", "celery")

# Mixpanel's data residency: ingestion and query hosts per region.
INGESTION_HOSTS = {
    "us": "api.mixpanel.com",
    "eu": "api-eu.mixpanel.com",
    "in": "api-in.mixpanel.com",
}
QUERY_HOSTS = {"us": "mixpanel.com", "eu": "eu.mixpanel.com", "in": "in.mixpanel.com"}
EXPORT_HOSTS = {
    "us": "data.mixpanel.com",
    "eu": "data-eu.mixpanel.com",
    "in": "data-in.mixpanel.com",
}
CUSTOMERIO_REGIONS = ("us", "eu")


def _customerio_region(key: str, value: object) -> str | None:
    try:
        return t.cast("str | None", one_of(CUSTOMERIO_REGIONS)(key, value))
    except MixpanelConfigurationError as exc:
        # The original package's message, which apps' tests compare; ours is the note.
        raise with_note(
            MixpanelConfigurationError("Unknown customer.io region"), str(exc)
        ) from None


def as_delivery(key: str, value: object) -> object:
    """A delivery mode name, or the dotted name of a delivery backend factory."""
    if isinstance(value, str) and value.strip().lower() in DELIVERY_MODES:
        return value.strip().lower()
    if isinstance(value, str) and not value.strip():
        return None
    found = as_dotted_object(key, value)
    if not callable(found):
        raise MixpanelConfigurationError(
            f"{key} must be one of {', '.join(DELIVERY_MODES)} or the dotted name of a delivery"
            f" backend factory, got {value!r}"
        )
    return found


def _catalogue(base: type) -> t.Callable[[str, object], object]:
    """A subclass of a catalogue class, named in errors as the original package named it."""
    return subclass_of(base, named=f"pyramid_mixpanel.{base.__name__}")


def _consumer(key: str, value: object) -> object:
    import mixpanel

    from .consumer import MockedConsumer

    return subclass_of(
        mixpanel.Consumer,
        mixpanel.BufferedConsumer,
        MockedConsumer,
        named="mixpanel.(Buffered)Consumer",
    )(key, value)


@dataclass(frozen=True)
class MixpanelSettings:
    """The parsed, validated settings of one app. Build it with :func:`parse_settings`."""

    token: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    events: type = Events
    event_properties: type = EventProperties
    profile_properties: type = ProfileProperties
    profile_meta_properties: type = ProfileMetaProperties
    group_keys: type = GroupKeys
    group_properties: type = GroupProperties
    consumer: type | None = None
    region: str = "us"
    api_host: str = "https://api.mixpanel.com"
    query_api_host: str = "https://mixpanel.com"
    export_api_host: str = "https://data.mixpanel.com"
    service_account_username: str | None = None
    service_account_secret: str | None = field(default=None, repr=False)
    service_account_project_id: str | None = None
    service_account_workspace_id: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    query_timeout: float = 60.0
    project_timezone: str = "UTC"
    query_limits_url: str | None = field(default=None, repr=False)
    release_policy: str = "commit"
    #: ``background``, ``sync``, ``celery``, or the dotted name of a custom backend factory.
    delivery: str = "background"
    #: The custom backend factory named by ``mixpanel.delivery`` (``None`` for built-in modes).
    delivery_factory: t.Callable[..., t.Any] | None = None
    spool_path: str | None = None
    #: Move a corrupted spool file aside and start an empty one instead of refusing to start.
    spool_repair: bool = False
    #: ``request``: each request's messages are committed before its release returns;
    #: ``group``: a spooler thread commits every few milliseconds what all requests handed over.
    spool_commit: str = "request"
    celery_app: object = None
    queue_max_messages: int = 100_000
    queue_max_bytes: int = 64 * 1024 * 1024
    flush_interval: float = 1.0
    shutdown_timeout: float = 5.0
    batch_max_records: int = 2000
    #: Mixpanel's limit is 10 MB, decimal, of uncompressed JSON per request.
    batch_max_bytes: int = 10_000_000
    structlog: bool = False
    #: Event properties ``X-Mixpanel-<Name>`` headers may set (``None``: every declared one, the
    #: original package's behaviour; empty: none).
    header_properties: tuple[str, ...] | None = None
    #: Longer header values are ignored (Mixpanel keeps 255 bytes of a string value).
    header_max_length: int = 255
    customerio_site_id: str | None = field(default=None, repr=False)
    customerio_api_key: str | None = field(default=None, repr=False)
    customerio_region: str | None = None
    customerio_url: str | None = None
    #: The name of the signed first-party cookie holding each visitor's device id (``None``:
    #: no device ids; anonymous requests need a ``distinct_id`` set by hand, as before).
    device_cookie: str | None = None
    #: Signs the device cookie (HMAC-SHA256); required with ``device_cookie``. Never shown.
    cookie_secret: str | None = field(default=None, repr=False)
    #: ``None`` (``auto``): the cookie is Secure exactly when the request is HTTPS.
    device_cookie_secure: bool | None = None
    device_cookie_max_age: int = 365 * 24 * 3600
    #: The project's ID merge API: ``simplified``, ``original`` or ``legacy``.
    id_merge: str = "simplified"

    @property
    def testing(self) -> bool:
        """True when no token is configured: messages are recorded, never sent."""
        return self.token is None

    @property
    def customerio_enabled(self) -> bool:
        """True when all three Customer.io settings are present."""
        return self.customerio_site_id is not None

    @property
    def has_service_account(self) -> bool:
        """True when service-account credentials are configured."""
        return self.service_account_username is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for scrubbing log lines and error messages."""
        values = (
            self.token,
            self.api_secret,
            self.service_account_secret,
            self.customerio_api_key,
            self.customerio_site_id,
            self.cookie_secret,
        )
        return tuple(v for v in values if v)

    def build_catalog(self) -> Catalog:
        """Index the configured catalogue classes."""
        return Catalog(
            events=self.events,
            event_properties=self.event_properties,
            profile_properties=self.profile_properties,
            profile_meta_properties=self.profile_meta_properties,
            group_keys=self.group_keys,
            group_properties=self.group_properties,
        )

    @property
    def query(self) -> QuerySettings:
        """The part of these settings the query side uses."""
        return QuerySettings(**{f.name: getattr(self, f.name) for f in fields(QuerySettings)})


@dataclass(frozen=True)
class QuerySettings:
    """What :class:`~pyramid_mixpanel.query.MixpanelQuery` needs: hosts, credentials, timeouts.

    Build it with :func:`parse_query_settings`; it parses no catalogue, delivery or Customer.io
    setting, so constructing a query client never imports or opens anything else.
    """

    api_secret: str | None = field(default=None, repr=False)
    region: str = "us"
    query_api_host: str = "https://mixpanel.com"
    export_api_host: str = "https://data.mixpanel.com"
    service_account_username: str | None = None
    service_account_secret: str | None = field(default=None, repr=False)
    service_account_project_id: str | None = None
    service_account_workspace_id: str | None = None
    connect_timeout: float = 2.0
    query_timeout: float = 60.0
    structlog: bool = False
    #: The IANA time zone of the export's days and timestamps: UTC, except for projects created
    #: before 2023-01-01, whose export is in the project's timezone (docs/export-methods).
    project_timezone: str = "UTC"
    #: The SQLAlchemy URL of the database where the project's query limits are shared between
    #: processes (by default ``mixpanel.metrics.database_url`` when set); ``None``: per process.
    query_limits_url: str | None = field(default=None, repr=False)

    @property
    def has_service_account(self) -> bool:
        """True when service-account credentials are configured."""
        return self.service_account_username is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every configured secret, for scrubbing log lines and error messages."""
        return tuple(v for v in (self.api_secret, self.service_account_secret) if v)


SETTINGS: tuple[Setting, ...] = (
    Setting("mixpanel.token", "token", as_secret),
    Setting("mixpanel.api_secret", "api_secret", as_secret),
    Setting("mixpanel.events", "events", _catalogue(Events)),
    Setting("mixpanel.event_properties", "event_properties", _catalogue(EventProperties)),
    Setting("mixpanel.profile_properties", "profile_properties", _catalogue(ProfileProperties)),
    Setting(
        "mixpanel.profile_meta_properties",
        "profile_meta_properties",
        _catalogue(ProfileMetaProperties),
    ),
    Setting("mixpanel.group_keys", "group_keys", _catalogue(GroupKeys)),
    Setting("mixpanel.group_properties", "group_properties", _catalogue(GroupProperties)),
    Setting("mixpanel.consumer", "consumer", _consumer),
    Setting("mixpanel.region", "region", one_of(tuple(INGESTION_HOSTS))),
    Setting("mixpanel.api_host", "api_host", as_base_url),
    Setting("mixpanel.query_api_host", "query_api_host", as_base_url),
    Setting("mixpanel.export_api_host", "export_api_host", as_base_url),
    Setting("mixpanel.service_account.username", "service_account_username", as_secret),
    Setting("mixpanel.service_account.secret", "service_account_secret", as_secret),
    Setting("mixpanel.service_account.project_id", "service_account_project_id", as_secret),
    Setting("mixpanel.service_account.workspace_id", "service_account_workspace_id", as_secret),
    Setting("mixpanel.connect_timeout", "connect_timeout", as_positive_float),
    Setting("mixpanel.read_timeout", "read_timeout", as_positive_float),
    Setting("mixpanel.query_timeout", "query_timeout", as_positive_float),
    Setting("mixpanel.project_timezone", "project_timezone", as_timezone),
    # The metrics database is where `pmixpanel sync` and the web app both reach: share it there.
    Setting(
        "mixpanel.query_limits_url",
        "query_limits_url",
        as_database_url,
        fallback="mixpanel.metrics.database_url",
    ),
    Setting("mixpanel.release_policy", "release_policy", one_of(RELEASE_POLICIES)),
    Setting("mixpanel.delivery", "delivery", as_delivery),
    Setting("mixpanel.spool_path", "spool_path", as_secret),
    Setting("mixpanel.spool_repair", "spool_repair", as_bool),
    Setting("mixpanel.spool_commit", "spool_commit", one_of(SPOOL_COMMITS)),
    Setting("mixpanel.celery_app", "celery_app", as_dotted_object),
    Setting("mixpanel.queue_max_messages", "queue_max_messages", positive_int(10**9)),
    Setting("mixpanel.queue_max_bytes", "queue_max_bytes", positive_int(2**40)),
    Setting("mixpanel.flush_interval", "flush_interval", as_positive_float),
    Setting("mixpanel.shutdown_timeout", "shutdown_timeout", as_positive_float),
    Setting("mixpanel.batch_max_records", "batch_max_records", positive_int(2000)),
    Setting("mixpanel.batch_max_bytes", "batch_max_bytes", positive_int(10 * 1000 * 1000)),
    # pyramid_heroku's key, which the original package read, still works.
    Setting("mixpanel.structlog", "structlog", as_bool, fallback="pyramid_heroku.structlog"),
    Setting("mixpanel.header_properties", "header_properties", as_name_list),
    Setting("mixpanel.header_max_length", "header_max_length", positive_int(65_536)),
    Setting("customerio.tracking.site_id", "customerio_site_id", as_secret),
    Setting("customerio.tracking.api_key", "customerio_api_key", as_secret),
    Setting("customerio.tracking.region", "customerio_region", _customerio_region),
    Setting("customerio.tracking.url", "customerio_url", as_base_url),
    # The relay's keys, from before every request.mixpanel had a device id, still work.
    Setting(
        "mixpanel.device_cookie",
        "device_cookie",
        as_cookie_name,
        fallback="mixpanel.relay.device_cookie",
    ),
    Setting(
        "mixpanel.cookie_secret",
        "cookie_secret",
        as_hmac_secret,
        fallback="mixpanel.relay.cookie_secret",
    ),
    Setting(
        "mixpanel.device_cookie_secure",
        "device_cookie_secure",
        as_auto_bool,
        fallback="mixpanel.relay.cookie_secure",
    ),
    Setting(
        "mixpanel.device_cookie_max_age",
        "device_cookie_max_age",
        positive_int(10 * 365 * 24 * 3600),
        fallback="mixpanel.relay.cookie_max_age",
    ),
    Setting("mixpanel.id_merge", "id_merge", one_of(ID_MERGE_MODES)),
)
#: Where the core looks for typos.
NAMESPACES = ("mixpanel.", "customerio.tracking.")
#: Keys parsed (and checked for typos) by the optional includes.
ELSEWHERE = (
    "mixpanel.relay.",
    "mixpanel.proxy.",
    "mixpanel.metrics.",
    "mixpanel.insights.",
    "mixpanel.prometheus.",
)
QUERY_FIELDS = frozenset(f.name for f in fields(QuerySettings))


def parse_settings(settings: t.Mapping[str, object]) -> MixpanelSettings:
    """Parse and validate the ``mixpanel.*`` / ``customerio.tracking.*`` keys of ``settings``."""
    values = parse_table(settings, SETTINGS, namespaces=NAMESPACES, elsewhere=ELSEWHERE)
    _no_conflicting_aliases(settings)

    delivery = values.get("delivery")
    if callable(delivery):
        raw = settings.get("mixpanel.delivery")
        values["delivery_factory"] = delivery
        values["delivery"] = (
            raw.strip()
            if isinstance(raw, str)
            else f"{delivery.__module__}.{getattr(delivery, '__qualname__', delivery)}"
        )
        delivery = "custom"
    if "consumer" in values:
        # A custom consumer is called at the end of the request, like the original package did.
        if delivery not in (None, "sync"):
            raise MixpanelConfigurationError(
                "mixpanel.consumer sends at the end of the request: it cannot be combined with"
                f" mixpanel.delivery = {values['delivery']} (drop one of them)"
            )
        values["delivery"] = "sync"
    if "spool_commit" in values and "spool_path" not in values:
        raise MixpanelConfigurationError(
            "mixpanel.spool_commit is about the spool: it needs mixpanel.spool_path"
        )
    if "spool_path" in values and values.get("delivery", "background") not in (
        "background",
        "celery",
    ):
        raise MixpanelConfigurationError(
            "mixpanel.spool_path needs mixpanel.delivery = background (or celery)"
        )
    if (values.get("delivery") == "celery") != ("celery_app" in values):
        raise MixpanelConfigurationError(
            "mixpanel.delivery = celery and mixpanel.celery_app (the dotted name of your Celery"
            " app) go together"
        )
    _hosts(values)
    _all_or_none(
        values,
        {
            "mixpanel.service_account.username": "service_account_username",
            "mixpanel.service_account.secret": "service_account_secret",
            "mixpanel.service_account.project_id": "service_account_project_id",
        },
    )
    _all_or_none(
        values,
        {
            "customerio.tracking.site_id": "customerio_site_id",
            "customerio.tracking.api_key": "customerio_api_key",
            "customerio.tracking.region": "customerio_region",
        },
    )
    if "customerio_url" in values and "customerio_site_id" not in values:
        raise MixpanelConfigurationError(
            "customerio.tracking.url is set but customerio.tracking.site_id, .api_key and"
            " .region are not"
        )
    if values.get("customerio_site_id"):
        require("customerio", "customerio", "customerio.tracking.*")
    if "device_cookie" in values and "cookie_secret" not in values:
        # An unsigned device id could be set to any value, another visitor's included.
        raise MixpanelConfigurationError(
            "mixpanel.cookie_secret must be set with mixpanel.device_cookie: the device cookie"
            " is signed, so a visitor cannot pick another visitor's device id"
        )

    parsed = MixpanelSettings(**values)  # type: ignore[arg-type]  # keys come from the table
    # Build the catalogue once here so a bad class ('$' misuse…) fails at startup.
    parsed.build_catalog()
    return parsed


def parse_query_settings(settings: t.Mapping[str, object]) -> QuerySettings:
    """Parse only what the query side needs (hosts, credentials, timeouts).

    Unknown keys are not reported here: :func:`parse_settings` does that once for the app.
    """
    table = [row for row in SETTINGS if row.field in QUERY_FIELDS]
    values = parse_table(settings, table)
    _hosts(values)
    _all_or_none(
        values,
        {
            "mixpanel.service_account.username": "service_account_username",
            "mixpanel.service_account.secret": "service_account_secret",
            "mixpanel.service_account.project_id": "service_account_project_id",
        },
    )
    values.pop("api_host", None)
    return QuerySettings(**values)  # type: ignore[arg-type]  # keys come from the table


def _hosts(values: dict[str, object]) -> None:
    """Fill in the residency hosts of ``mixpanel.region`` that were not set explicitly."""
    region = t.cast(str, values.get("region", "us"))
    values.setdefault("api_host", f"https://{INGESTION_HOSTS[region]}")
    values.setdefault("query_api_host", f"https://{QUERY_HOSTS[region]}")
    values.setdefault("export_api_host", f"https://{EXPORT_HOSTS[region]}")


def _no_conflicting_aliases(settings: t.Mapping[str, object]) -> None:
    """A setting and its old relay key may both be set, but not to different values."""
    for row in SETTINGS:
        if row.fallback is None or not row.fallback.startswith("mixpanel.relay."):
            continue
        new, old = settings.get(row.key), settings.get(row.fallback)
        if (
            new is not None
            and old is not None
            and row.convert(row.key, new) != row.convert(row.fallback, old)
        ):
            raise MixpanelConfigurationError(
                f"{row.key} and {row.fallback} (its old name) are both set, to different"
                f" values: keep {row.key}"
            )


def _all_or_none(values: dict[str, object], group: dict[str, str]) -> None:
    present = [key for key, attr in group.items() if attr in values]
    if present and len(present) != len(group):
        missing = [key for key in group if key not in present]
        raise MixpanelConfigurationError(
            f"{', '.join(missing)} must be set together with {', '.join(present)}"
        )
