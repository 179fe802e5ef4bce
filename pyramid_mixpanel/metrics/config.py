"""Settings of per-account metrics (``mixpanel.metrics.*``), parsed once into a frozen object.

Every mistake is a :class:`~pyramid_mixpanel.settings.MixpanelConfigurationError` naming the
key; an unknown ``mixpanel.metrics.*`` key is logged with the closest known one. The database URL
is never echoed in a message (it may carry a password).
"""

from __future__ import annotations

import math
import re
import typing as t
from dataclasses import dataclass, field

from ..catalog import closest, normalise
from ..converters import (
    Setting,
    as_database_url,
    as_dotted_object,
    as_positive_float,
    as_secret,
    parse_table,
    positive_int,
)
from ..exceptions import MixpanelConfigurationError
from .model import MAX_KEY, storable

if t.TYPE_CHECKING:
    from .freshness import Freshness
    from .model import Anomaly

__all__ = ["LocalFunnel", "MetricsSettings", "parse_metrics_settings"]


PREFIX = "mixpanel.metrics."
DEFAULT_DATABASE_URL = "sqlite:///mixpanel-metrics.db"
#: Properties that identify a person: never an account, a breakdown or a profile aggregate.
PII_PROPERTIES = frozenset(
    {
        "email",
        "name",
        "firstname",
        "lastname",
        "phone",
        "distinctid",
        "userid",
        "deviceid",
        "ip",
        "insertid",
        "avatar",
    }
)
AccountGetter = t.Callable[[t.Mapping[str, t.Any]], "str | None"]
#: Called with each new :class:`~.model.Anomaly`, and with a stale
#: :class:`~.freshness.Freshness`.
AlertHook = t.Callable[["Anomaly | Freshness"], None]


@dataclass(frozen=True)
class LocalFunnel:
    """A funnel computed from the export: ordered event names, entered on the first step."""

    name: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class MetricsSettings:
    """The parsed ``mixpanel.metrics.*`` settings; build with :func:`parse_metrics_settings`."""

    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    #: The event property holding the account id (a group key such as ``company_id``).
    account_property: str | None = None
    #: Or a callable ``(event dict) -> account id or None``.
    account_getter: AccountGetter | None = None
    breakdowns: tuple[str, ...] = ()
    funnels: tuple[LocalFunnel, ...] = ()
    funnel_window_hours: int = 168
    saved_funnels: tuple[int, ...] = ()
    #: Saved Insights reports (bookmark ids) pulled on each sync (:mod:`.reports`).
    reports: tuple[int, ...] = ()
    #: Mixpanel cohorts (ids) counted as accounts of their own, ``cohort:<id>``.
    cohorts: tuple[int, ...] = ()
    #: Event name -> adoption category.
    signals: t.Mapping[str, str] = field(default_factory=dict)
    #: Adoption category -> weight in the engagement score (1.0 when not given).
    weights: t.Mapping[str, float] = field(default_factory=dict)
    anomaly_days: int = 28
    anomaly_threshold: float = 3.0
    anomaly_min_days: int = 7
    alert: AlertHook | None = None
    chunk_days: int = 7
    #: The profile property holding the account id; ``None``: profiles are not aggregated.
    profile_account_property: str | None = None
    #: Profile properties whose values are counted per account.
    profile_properties: tuple[str, ...] = ()
    #: Group Analytics: the group key whose group ids are the accounts, the key's id for Engage
    #: (``data_group_id``), and the group profile properties stored per account.
    group_key: str | None = None
    data_group_id: int | None = None
    group_properties: tuple[str, ...] = ()
    #: Keep this many days of rows up to the last synced day; ``None``: keep everything.
    retention_days: int | None = None
    #: Data older than this many hours is stale (:mod:`~pyramid_mixpanel.metrics.freshness`).
    max_age_hours: int = 24
    #: The Fernet key of the stored connection's secret (:mod:`~.connect`); never shown.
    secret_key: str | None = field(default=None, repr=False)

    @property
    def categories(self) -> tuple[str, ...]:
        """The adoption categories, in the order they were first named in ``signals``."""
        return tuple(dict.fromkeys(self.signals.values()))

    @property
    def lookback_days(self) -> int:
        """Days before a sync's first day whose funnel entries the sync's events can complete."""
        return math.ceil(self.funnel_window_hours / 24)


def _lines(key: str, value: object, *, commas: bool) -> list[str]:
    """Split a multi-line (and, with ``commas``, comma-separated) setting; lists pass through."""
    if isinstance(value, str):
        pattern = r"[\n,]" if commas else r"\n"
        return [item.strip() for item in re.split(pattern, value) if item.strip()]
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    raise MixpanelConfigurationError(f"{key}: expected one item per line, got {value!r}")


def _property(key: str, value: object) -> str | None:
    name = as_secret(key, value)
    if name is not None and normalise(name.lstrip("$")) in PII_PROPERTIES:
        raise MixpanelConfigurationError(
            f"{key}: {name!r} identifies a person; metrics keep counts per account, never PII"
        )
    return name


def _properties(key: str, value: object) -> tuple[str, ...]:
    names = [t.cast(str, _property(key, item)) for item in _lines(key, value, commas=True)]
    return tuple(dict.fromkeys(names))


def _callable(what: str) -> t.Callable[[str, object], object]:
    def parse(key: str, value: object) -> object:
        if isinstance(value, str) and as_secret(key, value) is None:
            return None
        target = as_dotted_object(key, value)
        if not callable(target):
            raise MixpanelConfigurationError(f"{key} must name a callable {what}")
        return target

    return parse


def _funnels(key: str, value: object) -> tuple[LocalFunnel, ...]:
    funnels: dict[str, LocalFunnel] = {}
    for line in _lines(key, value, commas=False):
        name, colon, rest = line.partition(":")
        steps = tuple(step.strip() for step in rest.split(">"))
        if not colon or not name.strip() or len(steps) < 2 or not all(steps):
            raise MixpanelConfigurationError(
                f"{key}: {line!r} is not 'Name: First Event > Second Event [> ...]'"
            )
        if name.strip() in funnels:
            raise MixpanelConfigurationError(f"{key}: the funnel {name.strip()!r} is defined twice")
        if not storable(name.strip()):
            # The name is the funnel's id in the store, a VARCHAR(255) column.
            raise MixpanelConfigurationError(
                f"{key}: a funnel name has at most {MAX_KEY} characters and no NUL, got one"
                f" of {len(name.strip())} characters"
            )
        funnels[name.strip()] = LocalFunnel(name.strip(), steps)
    return tuple(funnels.values())


def _ids(what: str) -> t.Callable[[str, object], tuple[int, ...]]:
    """A converter of a list of Mixpanel ids (whole numbers), each once, in order."""

    def parse(key: str, value: object) -> tuple[int, ...]:
        ids = []
        for item in _lines(key, value, commas=True):
            if not item.isdigit():
                raise MixpanelConfigurationError(f"{key}: {item!r} is not {what}")
            ids.append(int(item))
        return tuple(dict.fromkeys(ids))

    return parse


def _data_group_id(key: str, value: object) -> int | None:
    text = as_secret(key, value)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise MixpanelConfigurationError(
            f"{key} must be the group key's id, a whole number (Project Settings > Group Keys),"
            f" got {text!r}"
        ) from None


def _pairs(key: str, value: object) -> list[tuple[str, str]]:
    pairs = []
    for line in _lines(key, value, commas=False):
        left, equals, right = line.rpartition("=")
        if not equals or not left.strip() or not right.strip():
            raise MixpanelConfigurationError(f"{key}: {line!r} is not 'name = value'")
        pairs.append((left.strip(), right.strip()))
    return pairs


def _signals(key: str, value: object) -> dict[str, str]:
    signals: dict[str, str] = {}
    for event, category in _pairs(key, value):
        if event in signals:
            raise MixpanelConfigurationError(
                f"{key}: the event {event!r} is mapped twice; give each event one category"
            )
        signals[event] = category
    return signals


def _weights(key: str, value: object) -> dict[str, float]:
    weights: dict[str, float] = {}
    for category, text in _pairs(key, value):
        try:
            weight = float(text)
        except ValueError:
            weight = -1.0
        if not (math.isfinite(weight) and weight >= 0):
            raise MixpanelConfigurationError(
                f"{key}: the weight of {category!r} must be a number >= 0, got {text!r}"
            )
        weights[category] = weight
    return weights


def _fernet_key(key: str, value: object) -> str | None:
    text = as_secret(key, value)
    if text is not None:
        from .connect import fernet

        fernet(text)  # checked at startup; the key is never in the message
    return text


def _min_days(key: str, value: object) -> int:
    days = positive_int(366)(key, value)
    if days < 2:
        raise MixpanelConfigurationError(f"{key} must be at least 2, got {value!r}")
    return days


TABLE: tuple[Setting, ...] = tuple(
    Setting(PREFIX + name, name, convert)
    for name, convert in (
        ("database_url", as_database_url),
        ("account_property", _property),
        ("account_getter", _callable("taking an event dict and returning an account id or None")),
        ("breakdowns", _properties),
        ("funnels", _funnels),
        ("funnel_window_hours", positive_int(24 * 366)),
        ("saved_funnels", _ids("a Mixpanel funnel id")),
        ("reports", _ids("a report's bookmark id (the number in its URL)")),
        ("cohorts", _ids("a Mixpanel cohort id")),
        ("signals", _signals),
        ("weights", _weights),
        ("anomaly_days", positive_int(366)),
        ("anomaly_threshold", as_positive_float),
        ("anomaly_min_days", _min_days),
        ("alert", _callable("taking a pyramid_mixpanel.metrics.Anomaly")),
        ("chunk_days", positive_int(90)),
        ("profile_account_property", _property),
        ("profile_properties", _properties),
        ("group_key", _property),
        ("data_group_id", _data_group_id),
        ("group_properties", _properties),
        ("retention_days", positive_int(100 * 366)),
        ("max_age_hours", positive_int(24 * 366)),
        ("secret_key", _fernet_key),
    )
)


def parse_metrics_settings(settings: t.Mapping[str, object]) -> MetricsSettings:
    """Parse and check the ``mixpanel.metrics.*`` keys of ``settings``.

    :raises MixpanelConfigurationError: a value is invalid; the message names its key.
    """
    values: dict[str, t.Any] = parse_table(settings, TABLE, namespaces=(PREFIX,))

    if "group_key" in values and "account_getter" not in values:
        # The group key's values are the accounts, unless another property is named.
        values.setdefault("account_property", values["group_key"])
    if values.get("group_properties") and "data_group_id" not in values:
        raise MixpanelConfigurationError(
            f"{PREFIX}group_properties needs {PREFIX}data_group_id (the group key's id, from"
            " Project Settings > Group Keys) to read the group profiles"
        )
    if "data_group_id" in values and "group_key" not in values:
        raise MixpanelConfigurationError(f"{PREFIX}data_group_id needs {PREFIX}group_key")
    if ("account_property" in values) == ("account_getter" in values):
        raise MixpanelConfigurationError(
            f"set one of {PREFIX}account_property (the event property holding the account id,"
            f" e.g. company_id) or {PREFIX}account_getter (a dotted callable)"
        )
    if settings.get(PREFIX + "profile_account_property") is None:
        # Not set: the account is the same property on profiles. Set to off/false/empty: no
        # profile sync (the parsed value is then None and must stay so).
        values["profile_account_property"] = values.get("account_property")
    if values.get("cohorts") and "account_property" not in values:
        raise MixpanelConfigurationError(
            f"{PREFIX}cohorts needs {PREFIX}account_property: a cohort's members are counted as"
            " one more account of their events, named by that property"
        )
    if values.get("saved_funnels") and "account_property" not in values:
        raise MixpanelConfigurationError(
            f"{PREFIX}saved_funnels needs {PREFIX}account_property: Mixpanel breaks a saved"
            " funnel down by a property, not by a Python callable"
        )
    if values.get("profile_properties") and values.get("profile_account_property") is None:
        raise MixpanelConfigurationError(
            f"{PREFIX}profile_properties needs {PREFIX}profile_account_property (the profile"
            " property holding the account id)"
        )

    signals: dict[str, str] = values.get("signals", {})
    weights: dict[str, float] = values.get("weights", {})
    categories = set(signals.values())
    for category in weights:
        if category not in categories:
            raise MixpanelConfigurationError(
                f"{PREFIX}weights: no event in {PREFIX}signals maps to the category"
                f" {category!r}.{closest(category, categories)}"
            )
    if signals and not any(weights.get(category, 1.0) > 0 for category in categories):
        raise MixpanelConfigurationError(f"{PREFIX}weights: at least one weight must be above 0")

    parsed = MetricsSettings(**values)
    if parsed.anomaly_min_days > parsed.anomaly_days:
        raise MixpanelConfigurationError(
            f"{PREFIX}anomaly_min_days ({parsed.anomaly_min_days}) cannot exceed"
            f" {PREFIX}anomaly_days ({parsed.anomaly_days})"
        )
    return parsed
