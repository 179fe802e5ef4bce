"""The tracking catalogue: events and properties as typed, frozen dataclasses.

Every name that reaches Mixpanel comes from one of these classes, so a typo is an
``AttributeError`` in your editor or a ``ValueError`` in your tests, never a stray event in
Mixpanel. Apps extend the defaults by subclassing and pointing a setting at the subclass::

    @dataclass(frozen=True)
    class MyEvents(Events):
        site_deployed: Event = Event("Site Deployed", "A site went live.")

Descriptions are the optional second argument of :class:`Event` and :class:`Property`; they do
not take part in equality, so ``Event("Page Viewed")`` equals the catalogue's member.

The tracking plan may go further, optionally: a property may declare its JSON type
(``Property("Price", "…", type="number")``) and an event the properties it requires
(``Event("Item Bought", "…", requires=(EventProperties.price,))``). ``track()`` checks them
(an error in testing mode, a logged and counted violation in production) and
``pmixpanel lexicon push`` publishes them to Mixpanel's Lexicon. Neither takes part in equality.
"""

from __future__ import annotations

import difflib
import functools
import re
import typing as t
from dataclasses import dataclass, field

from .exceptions import MixpanelConfigurationError, with_note

__all__ = [
    "PROPERTY_TYPES",
    "RESERVED_EVENT_PROPERTIES",
    "RESERVED_META_PROPERTIES",
    "RESERVED_PROFILE_PROPERTIES",
    "Catalog",
    "Event",
    "EventProperties",
    "Events",
    "GroupKeys",
    "GroupProperties",
    "Name",
    "ProfileMetaProperties",
    "ProfileProperties",
    "Property",
    "PropertyType",
    "Section",
    "closest",
    "closest_match",
    "members",
    "normalise",
]


@dataclass(frozen=True)
class Name:
    """A name Mixpanel stores, with an optional description (not part of equality)."""

    name: str
    # Not in the repr either: ``Event(name='Foo')``, as error messages always showed it.
    description: str = field(default="", compare=False, repr=False)

    # Hand-written equality and hash (on the name only, like the generated ones) because every
    # tracked property is looked up in a frozenset: this is the hottest code of a request.
    # An Event never equals a Property of the same name.
    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)


#: The JSON types a :class:`Property` may declare.
PropertyType = t.Literal["string", "number", "boolean", "datetime", "list", "object"]
PROPERTY_TYPES: tuple[str, ...] = t.get_args(PropertyType)


@dataclass(frozen=True, eq=False)
class Property(Name):
    """A Mixpanel property name, e.g. ``Property("Path")`` or ``Property("$email")``.

    :param type: optionally, the JSON type of its values: ``string``, ``number``, ``boolean``,
        ``datetime`` (a ``datetime``/``date``, or an ISO 8601 string), ``list`` or ``object``.
        ``None`` (the default) declares nothing. Not part of equality.
    """

    type: PropertyType | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in PROPERTY_TYPES:
            raise MixpanelConfigurationError(
                f"Property {self.name!r}: type must be one of {', '.join(PROPERTY_TYPES)},"
                f" got {self.type!r}"
            )


# eq=False: keep Name's equality and hash instead of generating new ones.
@dataclass(frozen=True, eq=False)
class Event(Name):
    """A Mixpanel event name, e.g. ``Event("Page Viewed")``.

    :param requires: optionally, the event properties every such event must carry (declared
        in the configured ``EventProperties`` or ``GroupKeys``). Not part of equality.
    """

    requires: tuple[Property, ...] = field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.requires, tuple) or not all(
            isinstance(prop, Property) for prop in self.requires
        ):
            raise MixpanelConfigurationError(
                f"Event {self.name!r}: requires must be a tuple of Property, got {self.requires!r}"
            )


@dataclass(frozen=True)
class Events:
    """Events every app sends; subclass to add your own."""

    page_viewed: Event = Event("Page Viewed", "A page was shown to the visitor.")
    button_link_clicked: Event = Event("Button/Link Clicked", "A button or a link was clicked.")
    user_signed_up: Event = Event("User Signed Up", "A visitor created an account.")
    user_logged_in: Event = Event("User Logged In", "A user logged in.")
    user_charged: Event = Event("User Charged", "A user was charged money.")
    user_disabled: Event = Event("User Disabled", "A user account was disabled.")


@dataclass(frozen=True)
class EventProperties:
    """Properties that events may carry; subclass to add your own."""

    title: Property = Property("Title", "Title of the page or of the clicked element.")
    path: Property = Property("Path", "URL path of the page.")
    dollar_referrer: Property = Property("$referrer", "The referring URL.")


@dataclass(frozen=True)
class ProfileProperties:
    """Properties of user profiles; subclass to add your own."""

    dollar_created: Property = Property("$created", "When the user signed up.")
    dollar_email: Property = Property("$email", "The user's email address.")
    dollar_name: Property = Property("$name", "The user's full name.")
    dollar_phone: Property = Property("$phone", "The user's phone number.")
    dollar_unsubscribed: Property = Property("$unsubscribed", "Opted out of messages.")


@dataclass(frozen=True)
class ProfileMetaProperties:
    """Modifiers of a profile update (top-level keys of an Engage message)."""

    dollar_ip: Property = Property("$ip", "IP address used to geolocate the profile.")
    dollar_time: Property = Property("$time", "Time of the update (ms since epoch).")
    dollar_ignore_time: Property = Property("$ignore_time", "Do not update $last_seen.")
    dollar_ignore_alias: Property = Property("$ignore_alias", "Do not resolve aliases.")


@dataclass(frozen=True)
class GroupKeys:
    """Group keys of group analytics (e.g. ``Property("company_id")``); none by default."""


@dataclass(frozen=True)
class GroupProperties:
    """Properties of group profiles; subclass to add your own."""

    dollar_name: Property = Property("$name", "Display name of the group.")


# Mixpanel's reserved names, from its docs on default and reserved properties. A ``$`` name
# outside these lists would be stored by Mixpanel as an ordinary property that looks official,
# which is exactly the kind of silent mess the catalogue exists to prevent.
RESERVED_EVENT_PROPERTIES: frozenset[str] = frozenset(
    {
        "$app_build_number", "$app_release", "$app_version", "$app_version_string",
        "$bluetooth_enabled", "$bluetooth_version", "$brand", "$browser", "$browser_version",
        "$carrier", "$city", "$current_url", "$device", "$device_id", "$duration",
        "$event_name", "$groups", "$has_nfc", "$has_telephone", "$import", "$initial_referrer",
        "$initial_referring_domain", "$insert_id", "$latitude", "$lib_version", "$longitude",
        "$manufacturer", "$model", "$mp_api_endpoint", "$os", "$os_version", "$radio",
        "$referrer", "$referring_domain", "$region", "$screen_dpi", "$screen_height",
        "$screen_width", "$search_engine", "$source", "$user_id", "$wifi", "$anon_id",
        "$identified_id", "$distinct_id_before_identity", "$name", "$email", "$phone",
    }
)  # fmt: skip
RESERVED_PROFILE_PROPERTIES: frozenset[str] = frozenset(
    {
        "$android_devices", "$avatar", "$city", "$country_code", "$created", "$email",
        "$first_name", "$geo_source", "$ios_devices", "$last_name", "$last_seen", "$name",
        "$phone", "$region", "$timezone", "$transactions", "$unsubscribed", "$distinct_id",
        "$latitude", "$longitude", "$os", "$browser", "$device",
    }
)  # fmt: skip
RESERVED_META_PROPERTIES: frozenset[str] = frozenset(
    {"$ip", "$time", "$ignore_time", "$ignore_alias", "$latitude", "$longitude"}
)

M = t.TypeVar("M", Event, Property)


def members(cls: type, kind: type[M]) -> dict[str, M]:
    """Return ``{attribute name: member}`` for every ``kind`` instance declared on ``cls``.

    Class attributes are read through the MRO rather than through ``dataclasses.fields`` so a
    subclass that forgot ``@dataclass`` still contributes its members.
    """
    found: dict[str, M] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, kind):
                found[attr] = value
    return found


def normalise(name: str) -> str:
    """Fold a name for fuzzy matching: ``X-Mixpanel-Dark-Mode`` ~ ``Dark Mode`` ~ ``dark_mode``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def closest_match(wanted: str, candidates: t.Iterable[str]) -> str | None:
    """Return the candidate nearest to ``wanted`` (same folded spelling first), or ``None``."""
    pool = list(candidates)
    by_fold = {normalise(c): c for c in pool}
    folded = by_fold.get(normalise(wanted))
    if folded is not None:
        return folded
    match = difflib.get_close_matches(wanted, pool, n=1, cutoff=0.6)
    return match[0] if match else None


def closest(wanted: str, candidates: t.Iterable[str]) -> str:
    """Return a ``" Did you mean 'X'?"`` hint for the candidate nearest to ``wanted``, or ``""``."""
    match = closest_match(wanted, candidates)
    return f" Did you mean {match!r}?" if match is not None else ""


class Section(t.Generic[M]):
    """One configured catalogue class, indexed for O(1) membership checks."""

    def __init__(self, label: str, cls: type, kind: type[M], reserved: frozenset[str]) -> None:
        self.label = label
        #: The name of the section on ``request.mixpanel`` (``events``, ``event_properties``…).
        self.attr = label.replace(" ", "_")
        self.cls = cls
        self.by_attr: dict[str, M] = members(cls, kind)
        self.by_name: dict[str, M] = {}
        for attr, member in self.by_attr.items():
            if member.name.startswith("$") and member.name not in reserved:
                raise MixpanelConfigurationError(
                    f"{cls.__qualname__}.{attr} = {member.name!r}: names starting with '$' are"
                    f" reserved by Mixpanel and {member.name!r} is not one of its {label}."
                    f"{closest(member.name, reserved)}"
                )
            self.by_name.setdefault(member.name, member)
        self.members: frozenset[M] = frozenset(self.by_attr.values())

    @functools.cached_property
    def instance(self) -> t.Any:
        """An instance of the class (``request.mixpanel.events`` and friends)."""
        return self.cls()

    def hint(self, wanted: object) -> str:
        """Suggest the declared member closest to ``wanted`` (an attribute or Mixpanel name)."""
        name = getattr(wanted, "name", str(wanted))
        attr_of = {member.name: attr for attr, member in self.by_attr.items()}
        attr_of.update({attr: attr for attr in self.by_attr})
        match = closest_match(name, attr_of)
        if match is None:
            return ""
        attr = attr_of[match]
        return f" Did you mean {self.cls.__qualname__}.{attr} ({self.by_attr[attr].name!r})?"

    def unknown(self, wanted: object) -> ValueError:
        """Build the error for a member that is not declared in this section.

        The message is the original package's (apps' tests compare it); where it is declared
        and the nearest declared member are a note, shown under it in tracebacks.
        """
        return with_note(
            ValueError(f"{type(wanted).__name__} '{wanted!r}' is not a member of self.{self.attr}"),
            self.describe_unknown(wanted),
        )

    def describe_unknown(self, wanted: object) -> str:
        """Say that ``wanted`` is not declared here, where to declare it and what is nearest."""
        return (
            f"{wanted!r} is not declared in {self.cls.__module__}.{self.cls.__qualname__}"
            f" ({self.label}).{self.hint(wanted)}"
        )


class Catalog:
    """All configured catalogue classes of one app, built once at configuration time."""

    def __init__(
        self,
        events: type = Events,
        event_properties: type = EventProperties,
        profile_properties: type = ProfileProperties,
        profile_meta_properties: type = ProfileMetaProperties,
        group_keys: type = GroupKeys,
        group_properties: type = GroupProperties,
    ) -> None:
        self.events = Section("events", events, Event, frozenset())
        # Group keys are event properties too: an event joins a group by carrying its key.
        self.group_keys = Section("group keys", group_keys, Property, frozenset())
        self.event_properties = Section(
            "event properties", event_properties, Property, RESERVED_EVENT_PROPERTIES
        )
        self.profile_properties = Section(
            "profile properties", profile_properties, Property, RESERVED_PROFILE_PROPERTIES
        )
        self.profile_meta_properties = Section(
            "profile meta properties",
            profile_meta_properties,
            Property,
            RESERVED_META_PROPERTIES,
        )
        self.group_properties = Section(
            "group properties", group_properties, Property, RESERVED_PROFILE_PROPERTIES
        )
        self.event_property_members: frozenset[Property] = (
            self.event_properties.members | self.group_keys.members
        )
        #: Declared types of event properties, by property (only those that declare one).
        self.event_property_types: dict[Property, str] = {
            prop: prop.type for prop in self.event_property_members if prop.type is not None
        }
        #: Required properties, by event (only events that require some).
        self.requirements: dict[Event, tuple[Property, ...]] = {}
        for attr, event in self.events.by_attr.items():
            for prop in event.requires:
                if prop not in self.event_property_members:
                    raise MixpanelConfigurationError(
                        f"{self.events.cls.__qualname__}.{attr} = {event.name!r} requires"
                        f" {prop.name!r}, which is not declared in"
                        f" {self.event_properties.cls.__qualname__} or"
                        f" {self.group_keys.cls.__qualname__}"
                    )
            if event.requires:
                self.requirements[event] = event.requires
        #: Whether ``track()`` has anything to check against the plan: computed once, so a
        #: catalogue without types or requirements costs nothing per call.
        self.checks_plan: bool = bool(self.event_property_types or self.requirements)

    def attr_of(self, member: Event | Property) -> str:
        """``Class.attribute`` of an event or event property, for messages."""
        sections = (
            (self.events,)
            if isinstance(member, Event)
            else (self.event_properties, self.group_keys)
        )
        for section in sections:
            for attr, declared in section.by_attr.items():
                if declared == member:
                    return f"{section.cls.__qualname__}.{attr}"
        return repr(member.name)

    @property
    def sections(self) -> tuple[Section[t.Any], ...]:
        """Every section, in documentation order."""
        return (
            self.events,
            self.event_properties,
            self.group_keys,
            self.profile_properties,
            self.profile_meta_properties,
            self.group_properties,
        )
