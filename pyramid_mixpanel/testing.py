"""Test helpers and a pytest plugin for apps that use pyramid_mixpanel.

Enable the plugin with ``-p pyramid_mixpanel.testing`` (command line or ``addopts``) or
``pytest_plugins = ["pyramid_mixpanel.testing"]`` in a ``conftest.py``. It is opt-in: installing
the add-on does not change anyone's test run. Fixtures:

``mixpanel_recorder``
    A :class:`MixpanelRecorder` that sees every ``request.mixpanel`` built while the test runs
    (apps in testing mode, ``mixpanel.token = false``)::

        def test_signup(testapp, mixpanel_recorder):
            testapp.post("/signup", {"email": "a@example.com"})
            path = {EventProperties.path: "/signup"}
            mixpanel_recorder.assert_tracked(Events.user_signed_up, path)
            mixpanel_recorder.assert_profile_set({ProfileProperties.dollar_email: "a@example.com"})

``mixpanel_track``
    A fresh testing-mode :class:`~pyramid_mixpanel.track.MixpanelTrack` (``distinct_id`` is
    ``"test-user"``) for unit tests of views with ``DummyRequest``; its settings come from the
    ``mixpanel_settings`` fixture, which you can override to use your own catalogue classes.

The same assertions work on any list of ``mocked_messages`` through :func:`assert_tracked`,
:func:`assert_profile_set` and :func:`assert_nothing_tracked`. Failures show what was tracked
and a diff against the closest message.
"""

from __future__ import annotations

import difflib
import json
import pprint
import typing as t
from collections.abc import Iterator

import pytest

from . import lifecycle
from .catalog import Event, Property
from .track import MixpanelTrack, json_value

__all__ = [
    "Messages",
    "MixpanelRecorder",
    "assert_nothing_tracked",
    "assert_profile_set",
    "assert_tracked",
    "mixpanel_recorder",
    "mixpanel_settings",
    "mixpanel_track",
]


Messages = t.Sequence[t.Mapping[str, t.Any]]


def _expected(props: t.Mapping[Property, t.Any] | None) -> dict[str, t.Any]:
    # Compare as Mixpanel stores values: datetimes as ISO strings, tuples as lists, ...
    return {prop.name: json_value(prop.name, value) for prop, value in (props or {}).items()}


def _closest_diff(expected: dict[str, t.Any], candidates: list[dict[str, t.Any]]) -> str:
    if not candidates:
        return ""
    want = pprint.pformat(expected).splitlines()

    def distance(candidate: dict[str, t.Any]) -> float:
        have = pprint.pformat(candidate).splitlines()
        return difflib.SequenceMatcher(None, want, have).ratio()

    best = max(candidates, key=distance)
    diff = difflib.unified_diff(
        pprint.pformat(best).splitlines(), want, "closest tracked", "expected", lineterm=""
    )
    return "\n" + "\n".join(diff)


def assert_tracked(
    messages: Messages, event: Event, props: t.Mapping[Property, t.Any] | None = None
) -> dict[str, t.Any]:
    """Assert that ``event`` was tracked with (at least) ``props``; return that message."""
    expected = _expected(props)
    same_event = []
    for message in messages:
        msg = message["msg"]
        if message["endpoint"] in ("events", "imports") and msg.get("event") == event.name:
            properties = msg.get("properties", {})
            if all(properties.get(key, _MISSING) == value for key, value in expected.items()):
                return dict(msg)
            same_event.append({key: properties.get(key, _MISSING) for key in expected})
    tracked = [
        (m["msg"].get("event"), m["msg"].get("properties"))
        for m in messages
        if m["endpoint"] in ("events", "imports")
    ]
    raise AssertionError(
        f"{event.name!r} with {expected!r} was not tracked. Tracked events:\n"
        f"{pprint.pformat(tracked)}{_closest_diff(expected, same_event)}"
    )


def assert_profile_set(messages: Messages, props: t.Mapping[Property, t.Any]) -> dict[str, t.Any]:
    """Assert that a profile update ``$set`` (at least) ``props``; return that message."""
    expected = _expected(props)
    sets = [dict(m["msg"].get("$set", {})) for m in messages if m["endpoint"] == "people"]
    for values in sets:
        if all(values.get(key, _MISSING) == value for key, value in expected.items()):
            return values
    raise AssertionError(
        f"no profile_set with {expected!r}. Profile updates:\n"
        f"{pprint.pformat([m['msg'] for m in messages if m['endpoint'] == 'people'])}"
        f"{_closest_diff(expected, sets)}"
    )


def assert_nothing_tracked(messages: Messages) -> None:
    """Assert that no message at all was recorded."""
    if messages:
        raise AssertionError(
            f"expected nothing tracked, got {len(messages)} message(s):\n"
            f"{json.dumps(list(messages), indent=2, default=str)}"
        )


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


class MixpanelRecorder:
    """Every ``request.mixpanel`` built while it listens, and assertions over their messages."""

    def __init__(self) -> None:
        self.tracks: list[MixpanelTrack] = []

    def __call__(self, track: MixpanelTrack) -> None:
        """Remember ``track`` (called by the request lifecycle)."""
        self.tracks.append(track)

    def messages(self, released: bool | None = True) -> list[dict[str, t.Any]]:
        """Recorded messages: of released requests (default), held-back ones (``False``) or all.

        :raises AssertionError: an app is not in testing mode (nothing is recorded there).
        """
        out: list[dict[str, t.Any]] = []
        for track in self.tracks:
            if not track.testing:
                raise AssertionError(
                    "the app under test is not in testing mode: set mixpanel.token = false"
                )
            if released is None or (track.outcome is True) == released:
                out.extend(track.mocked_messages)
        return out

    def assert_tracked(
        self, event: Event, props: t.Mapping[Property, t.Any] | None = None
    ) -> dict[str, t.Any]:
        """Assert a released request tracked ``event`` with (at least) ``props``."""
        return assert_tracked(self.messages(), event, props)

    def assert_profile_set(self, props: t.Mapping[Property, t.Any]) -> dict[str, t.Any]:
        """Assert a released request set (at least) ``props`` on a profile."""
        return assert_profile_set(self.messages(), props)

    def assert_nothing_tracked(self) -> None:
        """Assert that no request released anything."""
        assert_nothing_tracked(self.messages())


@pytest.fixture
def mixpanel_recorder() -> Iterator[MixpanelRecorder]:
    """Record every ``request.mixpanel`` built during the test."""
    recorder = MixpanelRecorder()
    lifecycle.LISTENERS.append(recorder)
    try:
        yield recorder
    finally:
        lifecycle.LISTENERS.remove(recorder)


@pytest.fixture
def mixpanel_settings() -> dict[str, object]:
    """Settings of :func:`mixpanel_track`; override to use your catalogue classes."""
    return {"mixpanel.token": "false"}


@pytest.fixture
def mixpanel_track(mixpanel_settings: dict[str, object]) -> MixpanelTrack:
    """A fresh testing-mode ``MixpanelTrack`` with ``distinct_id = "test-user"``."""
    return MixpanelTrack(mixpanel_settings, distinct_id="test-user")
