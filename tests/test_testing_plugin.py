"""The pytest plugin, run the way a user's suite runs it (pytester), and its helpers."""

from __future__ import annotations

import datetime as dt

import pytest

from pyramid_mixpanel import EventProperties, Events, MixpanelTrack, ProfileProperties
from pyramid_mixpanel.testing import (
    MixpanelRecorder,
    assert_nothing_tracked,
    assert_profile_set,
    assert_tracked,
)

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest
import webtest
from pyramid.config import Configurator
from pyramid_mixpanel import EventProperties, Events, ProfileProperties


def view(request):
    request.mixpanel.distinct_id = "42"
    request.mixpanel.track(Events.user_signed_up, {EventProperties.path: request.path})
    request.mixpanel.profile_set({ProfileProperties.dollar_email: "a@example.com"})
    if "fail" in request.params:
        raise RuntimeError("no")
    return {}


@pytest.fixture
def testapp():
    with Configurator(settings={"mixpanel.token": "false"}) as config:
        config.include("pyramid_mixpanel")
        config.add_route("signup", "/signup")
        config.add_view(view, route_name="signup", renderer="json")
    return webtest.TestApp(config.make_wsgi_app())


def test_recorder(testapp, mixpanel_recorder):
    testapp.get("/signup")
    mixpanel_recorder.assert_tracked(Events.user_signed_up, {EventProperties.path: "/signup"})
    mixpanel_recorder.assert_profile_set({ProfileProperties.dollar_email: "a@example.com"})


def test_failed_requests_release_nothing(testapp, mixpanel_recorder):
    with pytest.raises(RuntimeError):
        testapp.get("/signup?fail=1")
    mixpanel_recorder.assert_nothing_tracked()
    assert len(mixpanel_recorder.messages(released=False)) == 2


def test_track_fixture(mixpanel_track):
    mixpanel_track.track(Events.page_viewed)
    assert mixpanel_track.mocked_messages[0]["msg"]["properties"]["distinct_id"] == "test-user"


def test_a_failing_assertion_shows_a_diff(testapp, mixpanel_recorder):
    testapp.get("/signup")
    mixpanel_recorder.assert_tracked(Events.user_signed_up, {EventProperties.path: "/other"})
"""


def test_the_plugin_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess(
        "-p", "pyramid_mixpanel.testing", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*'User Signed Up' with {'Path': '/other'} was not tracked. Tracked events:*",
            "*--- closest tracked*",
            "*-{'Path': '/signup'}*",
            "*+{'Path': '/other'}*",
        ]
    )


def messages(mp: MixpanelTrack) -> list[dict[str, object]]:
    return mp.mocked_messages


def test_helpers_on_mocked_messages() -> None:
    mp = MixpanelTrack({"mixpanel.token": "false"}, distinct_id="u")
    when = dt.datetime(2026, 1, 1, 12)
    mp.track(Events.page_viewed, {EventProperties.title: when})
    mp.profile_set({ProfileProperties.dollar_created: when})
    found = assert_tracked(messages(mp), Events.page_viewed, {EventProperties.title: when})
    assert found["event"] == "Page Viewed"
    assert_tracked(messages(mp), Events.page_viewed)
    assert assert_profile_set(messages(mp), {ProfileProperties.dollar_created: when}) == {
        "$created": "2026-01-01T12:00:00"
    }
    with pytest.raises(AssertionError, match="-{'Path': <missing>}"):
        assert_tracked(messages(mp), Events.page_viewed, {EventProperties.path: "/x"})
    with pytest.raises(AssertionError, match="'User Charged' with {} was not tracked"):
        assert_tracked(messages(mp), Events.user_charged)
    with pytest.raises(AssertionError, match="no profile_set with {'\\$email': 'x'}"):
        assert_profile_set(messages(mp), {ProfileProperties.dollar_email: "x"})
    with pytest.raises(AssertionError, match="expected nothing tracked, got 2 message"):
        assert_nothing_tracked(messages(mp))
    assert_nothing_tracked([])


def test_recorder_refuses_live_apps() -> None:
    recorder = MixpanelRecorder()
    recorder(MixpanelTrack({"mixpanel.token": "false"}))
    assert recorder.messages(released=None) == []
    recorder(MixpanelTrack({"mixpanel.token": "live-token"}))
    with pytest.raises(AssertionError, match="not in testing mode"):
        recorder.messages()
