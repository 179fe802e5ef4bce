"""Only what really happened is reported: the release policy against real apps.

Each test builds a real Pyramid app (Configurator → WSGI app → WebTest). A recording consumer
(``mixpanel.consumer``) shows what was handed to delivery and when; testing mode shows what was
recorded and whether it was released (``flushed``).
"""

from __future__ import annotations

import json
import logging
import typing as t

import mixpanel
import pytest
import transaction
import webtest
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest, HTTPFound
from pyramid.request import Request
from pyramid.response import Response
from pyramid_retry import RetryableException

from pyramid_mixpanel import EventProperties, Events, MixpanelTrack

LOG: list[str] = []


class RecordingConsumer(mixpanel.Consumer):  # type: ignore[misc]  # untyped base
    """Records what delivery receives, in order with other events of the test (``LOG``).

    One per request (``request.mixpanel.api._consumer``): each flush logs what came since the
    last one.
    """

    def __init__(self) -> None:
        self.batch: list[str] = []

    def send(self, endpoint: str, json_message: str, *args: object) -> None:
        self.batch.append(json.loads(json_message).get("event", endpoint))

    def flush(self) -> None:
        LOG.append("deliver:" + ",".join(self.batch))
        self.batch = []


class CommitLogger:
    """A data manager joined to the transaction that logs when a commit really finished."""

    transaction_manager = transaction.manager

    def __init__(self, fail_vote: bool = False) -> None:
        self.fail_vote = fail_vote

    def abort(self, txn: object) -> None:
        pass

    def tpc_begin(self, txn: object) -> None:
        pass

    def commit(self, txn: object) -> None:
        pass

    def tpc_vote(self, txn: object) -> None:
        if self.fail_vote:
            raise RuntimeError("the database refused the commit")

    def tpc_finish(self, txn: object) -> None:
        LOG.append("committed")

    def tpc_abort(self, txn: object) -> None:
        pass

    def sortKey(self) -> str:
        return "commit-logger"


@pytest.fixture(autouse=True)
def clean_log() -> None:
    LOG.clear()


def make_app(
    view: t.Callable[[Request], t.Any],
    *,
    live: bool = True,
    tm: bool = False,
    retry: bool = False,
    exception_view: bool = False,
    captured: list[MixpanelTrack] | None = None,
    settings: dict[str, str] | None = None,
) -> webtest.TestApp:
    base = {"mixpanel.token": "tok" if live else "false"}
    if live:
        base["mixpanel.consumer"] = "tests.test_functional_lifecycle.RecordingConsumer"
    if retry:
        base["retry.attempts"] = "3"
    base.update(settings or {})

    def wrapped(request: Request) -> t.Any:
        request.mixpanel.distinct_id = "u"
        if captured is not None:
            captured.append(request.mixpanel)
        return view(request)

    with Configurator(settings=base) as config:
        if tm:
            config.include("pyramid_tm")
        if retry:
            config.include("pyramid_retry")
        config.include("pyramid_mixpanel")
        config.add_route("x", "/x")
        config.add_view(wrapped, route_name="x", renderer="json")
        if exception_view:
            config.add_exception_view(
                lambda exc, request: Response("sorry", status=500), context=RuntimeError
            )
    return webtest.TestApp(config.make_wsgi_app())


def track(request: Request, event: t.Any = Events.page_viewed) -> None:
    request.mixpanel.track(event, {EventProperties.path: request.path})


def ok(request: Request) -> dict[str, str]:
    track(request)
    return {}


def boom(request: Request) -> None:
    track(request)
    raise RuntimeError("the view failed")


def test_success_is_delivered_once() -> None:
    make_app(ok).get("/x", status=200)
    assert LOG == ["deliver:Page Viewed"]


def test_an_exception_sends_nothing_and_logs_the_count(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(boom)
    with caplog.at_level(logging.INFO, logger="pyramid_mixpanel"), pytest.raises(RuntimeError):
        app.get("/x")
    assert LOG == []
    assert "mixpanel.messages_discarded messages=1 reason='the request raised an exception'" in (
        caplog.text
    )


def test_an_exception_view_response_sends_nothing() -> None:
    make_app(boom, exception_view=True).get("/x", status=500)
    assert LOG == []


def test_raised_redirects_send_nothing_returned_ones_do() -> None:
    """Same semantics as pyramid_tm, which aborts when an exception view rendered a response."""

    def raised(request: Request) -> None:
        track(request)
        raise HTTPFound("/elsewhere")

    def returned(request: Request) -> HTTPFound:
        track(request)
        return HTTPFound("/elsewhere")

    make_app(raised).get("/x", status=302)
    assert LOG == []
    make_app(returned).get("/x", status=302)
    assert LOG == ["deliver:Page Viewed"]


def test_five_hundred_events_then_a_failure_send_none() -> None:
    def many(request: Request) -> None:
        for _ in range(500):
            track(request)
        raise RuntimeError("late failure")

    with pytest.raises(RuntimeError):
        make_app(many).get("/x")
    assert LOG == []


def test_testing_mode_marks_released_and_held_back_requests() -> None:
    captured: list[MixpanelTrack] = []
    make_app(ok, live=False, captured=captured).get("/x", status=200)
    make_app(boom, live=False, captured=captured, exception_view=True).get("/x", status=500)
    released, held = captured
    assert released.api._consumer.flushed is True
    assert released.outcome is True
    assert held.api._consumer.flushed is False
    assert held.outcome is False
    assert len(held.mocked_messages) == 1  # still inspectable


# -- pyramid_tm ------------------------------------------------------------------------------


def joined(view: t.Callable[[Request], t.Any], **manager: t.Any) -> t.Callable[[Request], t.Any]:
    def inner(request: Request) -> t.Any:
        request.tm.get().join(CommitLogger(**manager))
        return view(request)

    return inner


def test_tm_delivers_only_after_the_commit() -> None:
    make_app(joined(ok), tm=True).get("/x", status=200)
    assert LOG == ["committed", "deliver:Page Viewed"]


def test_tm_view_exception_sends_nothing() -> None:
    with pytest.raises(RuntimeError):
        make_app(joined(boom), tm=True).get("/x")
    assert LOG == []


def test_tm_exception_view_sends_nothing() -> None:
    make_app(joined(boom), tm=True, exception_view=True).get("/x", status=500)
    assert LOG == []


def test_tm_doomed_transaction_sends_nothing() -> None:
    def doomed(request: Request) -> dict[str, str]:
        track(request)
        request.tm.doom()
        return {}

    make_app(joined(doomed), tm=True).get("/x", status=200)
    assert LOG == []


def test_tm_commit_veto_sends_nothing() -> None:
    def bad_request(request: Request) -> HTTPBadRequest:
        track(request)
        return HTTPBadRequest()

    make_app(
        joined(bad_request), tm=True, settings={"tm.commit_veto": "pyramid_tm.default_commit_veto"}
    ).get("/x", status=400)
    assert LOG == []


def test_tm_failed_commit_sends_nothing() -> None:
    make_app(joined(ok, fail_vote=True), tm=True, exception_view=True).get("/x", status=500)
    assert "deliver:Page Viewed" not in LOG


def test_tm_inactive_falls_back_to_success_semantics() -> None:
    make_app(
        ok, tm=True, settings={"tm.activate_hook": "tests.test_functional_lifecycle.never"}
    ).get("/x", status=200)
    assert LOG == ["deliver:Page Viewed"]


def never(request: Request) -> bool:
    return False


def test_success_policy_ignores_the_transaction() -> None:
    def bad_request(request: Request) -> HTTPBadRequest:
        track(request)
        return HTTPBadRequest()

    make_app(
        joined(bad_request),
        tm=True,
        settings={
            "tm.commit_veto": "pyramid_tm.default_commit_veto",
            "mixpanel.release_policy": "success",
        },
    ).get("/x", status=400)
    assert LOG == ["deliver:Page Viewed"]


def test_always_policy_sends_even_failed_requests() -> None:
    with pytest.raises(RuntimeError):
        make_app(boom, settings={"mixpanel.release_policy": "always"}).get("/x")
    assert LOG == ["deliver:Page Viewed"]


# -- pyramid_retry ---------------------------------------------------------------------------


def flaky(request: Request) -> dict[str, str]:
    attempt = request.environ.setdefault("attempts", [])
    attempt.append(1)
    track(request, Events.user_logged_in if len(attempt) == 3 else Events.page_viewed)
    if len(attempt) < 3:
        raise RetryableException("try again")
    return {}


def test_retry_sends_only_the_final_attempt_once() -> None:
    make_app(flaky, retry=True).get("/x", status=200)
    assert LOG == ["deliver:User Logged In"]


def test_retry_with_tm_sends_only_the_final_attempt_once() -> None:
    make_app(joined(flaky), retry=True, tm=True).get("/x", status=200)
    assert LOG == ["committed", "deliver:User Logged In"]


# -- messages after the outcome, headers, distinct_id ----------------------------------------


def test_messages_tracked_after_the_outcome_follow_it() -> None:
    def late(request: Request) -> dict[str, str]:
        track(request)
        request.add_finished_callback(lambda r: track(r, Events.user_logged_in))
        return {}

    make_app(late).get("/x", status=200)
    assert LOG == ["deliver:Page Viewed", "deliver:User Logged In"]

    def late_failure(request: Request) -> None:
        track(request)
        request.add_finished_callback(lambda r: track(r, Events.user_logged_in))
        raise RuntimeError("no")

    LOG.clear()
    with pytest.raises(RuntimeError):
        make_app(late_failure).get("/x")
    assert LOG == []


def test_x_mixpanel_headers_set_global_event_properties(
    caplog: pytest.LogCaptureFixture,
) -> None:
    captured: list[MixpanelTrack] = []

    def two(request: Request) -> dict[str, str]:
        request.mixpanel.track(Events.page_viewed)
        request.mixpanel.track(Events.page_viewed, {EventProperties.title: "explicit"})
        return {}

    app = make_app(two, live=False, captured=captured)
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        app.get(
            "/x",
            headers={
                "X-Mixpanel-Title": "Hello",
                "X-Mixpanel-Referrer": "https://ref.example",
                "X-Mixpanel-Secret-Plan": "do-not-log-me",
            },
        )
    first, second = (m["msg"]["properties"] for m in captured[0].mocked_messages)
    assert first == {"distinct_id": "u", "Title": "Hello", "$referrer": "https://ref.example"}
    assert second["Title"] == "explicit"
    assert "X-Mixpanel-Secret-Plan" in caplog.text
    assert "do-not-log-me" not in caplog.text


def test_distinct_id_comes_from_request_user() -> None:
    class User:
        distinct_id = "from-user"

    captured: list[MixpanelTrack] = []

    def whoami(request: Request) -> dict[str, str | None]:
        captured.append(request.mixpanel)
        return {"id": request.mixpanel.distinct_id}

    settings = {"mixpanel.token": "false"}
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_request_method(lambda request: User(), "user", reify=True)
        config.add_route("x", "/x")
        config.add_view(whoami, route_name="x", renderer="json")
    assert webtest.TestApp(config.make_wsgi_app()).get("/x").json == {"id": "from-user"}

    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_request_method(lambda request: None, "user", reify=True)
        config.add_route("x", "/x")
        config.add_view(whoami, route_name="x", renderer="json")
    assert webtest.TestApp(config.make_wsgi_app()).get("/x").json == {"id": None}

    def anonymous(request: Request) -> None:
        request.mixpanel.track(Events.page_viewed)

    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.add_route("x", "/x")
        config.add_view(anonymous, route_name="x", renderer="json")
    with pytest.raises(AttributeError, match="distinct_id must be set before you can send events"):
        webtest.TestApp(config.make_wsgi_app()).get("/x")


def test_requests_that_never_track_register_nothing() -> None:
    seen: list[Request] = []

    def quiet(request: Request) -> dict[str, str]:
        seen.append(request)
        return {}

    with Configurator(settings={"mixpanel.token": "false"}) as config:
        config.include("pyramid_mixpanel")
        config.add_route("x", "/x")
        config.add_view(quiet, route_name="x", renderer="json")
    webtest.TestApp(config.make_wsgi_app()).get("/x")
    assert "mixpanel" not in seen[0].__dict__
    assert not seen[0].response_callbacks
    assert not seen[0].finished_callbacks


def test_an_active_tm_without_a_transaction_falls_back() -> None:
    from pyramid_mixpanel.lifecycle import _join_transaction

    class NoTransactionManager:
        def get(self) -> None:
            raise transaction.interfaces.NoTransaction()

    class FakeRequest:
        environ: t.ClassVar[dict[str, bool]] = {"tm.active": True}
        tm = NoTransactionManager()

    assert _join_transaction(t.cast(Request, FakeRequest()), t.cast(MixpanelTrack, None)) is False
