"""A small Pyramid app that tracks page views, a sign-up and profile updates.

In testing mode (no token) every request's messages stay in ``request.mixpanel.mocked_messages``;
the app keeps the last requests' messages and shows them on every page, marked "released" when
the request succeeded and "held back" when it failed — exactly what would (not) have been sent.

One visitor's journey is one person in Mixpanel: anonymous page views carry the device cookie's
``$device_id`` (``distinct_id = $device:<id>``), the sign-up calls ``request.mixpanel.identify``
and every later event carries ``$user_id`` with the same ``$device_id``, which merges them; the
logout calls ``request.mixpanel.reset``.
"""

from __future__ import annotations

import collections
import datetime as dt
import html
import json
import threading
import typing as t
import uuid

from pyramid.config import Configurator
from pyramid.events import NewRequest
from pyramid.httpexceptions import HTTPFound
from pyramid.request import Request
from pyramid.response import Response

from .tracking import EventProperties, Events, ProfileProperties

RECENT: collections.deque[dict[str, t.Any]] = collections.deque(maxlen=50)
RECENT_LOCK = threading.Lock()
USER_COOKIE = "demo_user"


class User:
    """The signed-up visitor (a cookie stands in for a real session)."""

    def __init__(self, distinct_id: str) -> None:
        self.distinct_id = distinct_id


def get_user(request: Request) -> User | None:
    """``request.user``: pyramid_mixpanel takes ``distinct_id`` from it automatically."""
    distinct_id = request.cookies.get(USER_COOKIE)
    return User(distinct_id) if distinct_id else None


def remember(event: NewRequest) -> None:
    """Record, for the panel, what each request tracked and whether it was released."""
    request = event.request

    def finished(request: Request) -> None:
        mp = request.__dict__.get("mixpanel")
        if mp is None or mp.api._consumer is None:
            return
        with RECENT_LOCK:
            RECENT.appendleft(
                {
                    "path": request.path,
                    # Finished callbacks run in order: this one before pyramid_mixpanel's own, so
                    # a failed request is not settled yet and reads as not released.
                    "released": bool(mp.api._consumer.flushed),
                    "messages": mp.mocked_messages,
                }
            )

    request.add_finished_callback(finished)


def page(request: Request, title: str, body: str, status: int = 200) -> Response:
    """Render a page with the "what would have been sent" panel."""
    with RECENT_LOCK:
        recent = list(RECENT)
    rows = "".join(
        f"<li><b>{html.escape(item['path'])}</b> — "
        f"{'released' if item['released'] else '<i>held back (request failed)</i>'}"
        f"<pre>{html.escape(json.dumps(item['messages'], indent=2, default=str))}</pre></li>"
        for item in recent[:10]
    )
    mp = request.mixpanel
    user = mp.user_id or f"anonymous (device {mp.device_id})"
    current = request.__dict__.get("mixpanel")
    pending = json.dumps(current.mocked_messages if current else [], indent=2, default=str)
    logout = (
        ' <form method="post" action="/logout" style="display:inline"><button>Log out</button>'
        "</form>"
        if mp.user_id
        else ""
    )
    text = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
pre{{background:#f4f4f4;padding:.5em}}</style></head>
<body><nav><a href="/">Home</a> · <a href="/signup">Sign up</a> · <a href="/boom">Fail</a>
· <a href="/sent">Sent</a> — you are {html.escape(user)}{logout}</nav>
<h1>{html.escape(title)}</h1>{body}
<h2>This request tracked (released only if it succeeds)</h2><pre>{html.escape(pending)}</pre>
<h2>What would have been sent to Mixpanel</h2><ol>{rows or "<li>nothing yet</li>"}</ol>
</body></html>"""
    response = request.response
    response.status = status
    response.text = text
    return response


def home(request: Request) -> Response:
    """Track a page view (an anonymous visitor's under the device cookie's id)."""
    request.mixpanel.track(
        Events.page_viewed, {EventProperties.path: request.path, EventProperties.title: "Home"}
    )
    upgrade = (
        '<form method="post" action="/upgrade"><button>Upgrade to Pro</button></form>'
        if request.user
        else ""
    )
    # The relay's helper: clicks on data-mixpanel-click elements go to POST /mixpanel/track
    # (page views are tracked by the views here, so the helper's own are turned off).
    script = html.escape(request.static_url("pyramid_mixpanel:static/relay.js"))
    front_end = (
        f'<script src="{script}" data-page-view="false" defer></script>'
        '<p><button data-mixpanel-click="Front-end button">Click me (tracked by the'
        " browser, through the relay)</button> then reload to see it below.</p>"
    )
    return page(request, "pyramid_mixpanel demo", f"<p>Welcome!</p>{upgrade}{front_end}")


def signup_form(request: Request) -> Response:
    """Show the sign-up form (and track the page view)."""
    request.mixpanel.track(
        Events.page_viewed, {EventProperties.path: request.path, EventProperties.title: "Sign up"}
    )
    form = """<form method="post">
<input name="email" placeholder="email" required> <input name="name" placeholder="name">
<input name="company" placeholder="company"> <button>Sign up</button></form>"""
    return page(request, "Sign up", form)


def signup(request: Request) -> Response:
    """Create the "account": identify the visitor, track the sign-up and set the profile."""
    distinct_id = f"user-{uuid.uuid4().hex[:12]}"
    # Links this visitor's anonymous page views to the new user (an $identify event with both
    # ids); the sign-up event and every later one carry $user_id and $device_id together.
    request.mixpanel.identify(distinct_id)
    request.mixpanel.track(Events.user_signed_up, {EventProperties.path: request.path})
    request.mixpanel.profile_set(
        {
            ProfileProperties.dollar_created: dt.datetime.now(dt.timezone.utc),
            ProfileProperties.dollar_email: request.POST.get("email", ""),
            ProfileProperties.dollar_name: request.POST.get("name", ""),
            ProfileProperties.company: request.POST.get("company", ""),
        }
    )
    # Return the redirect, do not raise it: a raised HTTPFound is rendered by an exception view,
    # which counts as a failed request, and its events would be dropped (as pyramid_tm would
    # abort its transaction).
    response = HTTPFound(location="/")
    response.set_cookie(USER_COOKIE, distinct_id)
    return response


def upgrade(request: Request) -> Response:
    """Upgrade the signed-up user: an event, a profile update and a counter."""
    if request.user is None:
        return HTTPFound(location="/signup")
    request.mixpanel.track(Events.plan_upgraded, {EventProperties.plan: "Pro"})
    request.mixpanel.profile_set({ProfileProperties.plan: "Pro"})
    request.mixpanel.profile_increment({ProfileProperties.upgrades: 1})
    return HTTPFound(location="/")


def boom(request: Request) -> Response:
    """Track, then fail: nothing of this request is released."""
    request.mixpanel.track(
        Events.page_viewed, {EventProperties.path: request.path, EventProperties.title: "Boom"}
    )
    raise RuntimeError("something broke after tracking")


def logout(request: Request) -> Response:
    """Sign out: later events are anonymous again, under a fresh device id."""
    request.mixpanel.reset()
    response = HTTPFound(location="/")
    response.delete_cookie(USER_COOKIE)
    return response


def failed(exc: RuntimeError, request: Request) -> Response:
    """A friendly 500 page."""
    return page(request, "Something broke", "<p>The request failed.</p>", status=500)


def sent(request: Request) -> Response:
    """Only the panel."""
    return page(request, "Recent requests", "")


def main(global_config: dict[str, str], **settings: str) -> t.Any:
    """The WSGI app (``pserve development.ini``)."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_mixpanel")
        config.include("pyramid_mixpanel.relay")
        config.add_request_method(get_user, "user", reify=True)
        config.add_subscriber(remember, NewRequest)
        config.add_route("home", "/")
        config.add_route("signup", "/signup")
        config.add_route("upgrade", "/upgrade")
        config.add_route("logout", "/logout")
        config.add_route("boom", "/boom")
        config.add_route("sent", "/sent")
        config.add_view(home, route_name="home")
        config.add_view(signup_form, route_name="signup", request_method="GET")
        config.add_view(signup, route_name="signup", request_method="POST")
        config.add_view(upgrade, route_name="upgrade", request_method="POST")
        config.add_view(logout, route_name="logout", request_method="POST")
        config.add_view(boom, route_name="boom")
        config.add_view(sent, route_name="sent")
        config.add_exception_view(failed, context=RuntimeError)
    return config.make_wsgi_app()
