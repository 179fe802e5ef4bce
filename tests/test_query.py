"""MixpanelQuery against a loopback stand-in of Mixpanel's JQL endpoint; the query settings."""

from __future__ import annotations

import base64
import json
import sys
import threading
import typing as t
import urllib.parse
import zoneinfo
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyramid_mixpanel import MixpanelQuery, MixpanelQueryError, MultipleProfilesFoundException
from pyramid_mixpanel.converters import as_timezone
from pyramid_mixpanel.exceptions import MixpanelConfigurationError
from pyramid_mixpanel.query import PROFILE_BY_EMAIL
from pyramid_mixpanel.settings import parse_query_settings, parse_settings


class JQLServer(ThreadingHTTPServer):
    """Answers ``POST /api/2.0/jql`` like Mixpanel, evaluating the profile-by-email script.

    Any other script gets ``canned``. ``requests`` records what each call carried.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), JQLHandler)
        self.profiles: list[dict[str, t.Any]] = []
        self.canned: t.Any = []
        self.fail: tuple[int, bytes] | None = None
        self.requests: list[dict[str, t.Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class JQLHandler(BaseHTTPRequestHandler):
    server: JQLServer

    def log_message(self, format: str, *args: object) -> None:  # stdlib name
        pass

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        user, _, password = (
            base64.b64decode(self.headers["Authorization"][6:]).decode().partition(":")
        )
        url = urllib.parse.urlsplit(self.path)
        self.server.requests.append(
            {
                "path": url.path,
                "query": dict(urllib.parse.parse_qsl(url.query)),
                "auth": (user, password),
                "script": form["script"][0],
                "params": json.loads(form["params"][0]),
            }
        )
        if self.server.fail is not None:
            status, body = self.server.fail
        elif form["script"][0] == PROFILE_BY_EMAIL:
            email = json.loads(form["params"][0])["email"]
            # People() gives {distinct_id, properties}; the script keeps the matches and maps
            # each to {distinct_id, email}.
            found = [
                {"distinct_id": p["distinct_id"], "email": p["properties"]["$email"]}
                for p in self.server.profiles
                if p["properties"].get("$email") == email
            ]
            status, body = 200, json.dumps(found).encode()
        else:
            status, body = 200, json.dumps(self.server.canned).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def jql_server() -> Iterator[JQLServer]:
    server = JQLServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def sa_settings(server: JQLServer) -> dict[str, str]:
    return {
        "mixpanel.query_api_host": server.base_url,
        "mixpanel.service_account.username": "sa.user",
        "mixpanel.service_account.secret": "sa-secret-value",
        "mixpanel.service_account.project_id": "4242",
    }


def profile(distinct_id: str, email: str) -> dict[str, t.Any]:
    """A profile as JQL's ``People()`` gives it."""
    return {"distinct_id": distinct_id, "properties": {"$email": email}}


def test_jql_with_a_service_account(jql_server: JQLServer) -> None:
    jql_server.canned = [{"count": 3}]
    query = MixpanelQuery(sa_settings(jql_server))
    assert query.jql("function main() { return 1; }", {"a": 1}) == [{"count": 3}]
    (seen,) = jql_server.requests
    assert seen["path"] == "/api/2.0/jql"
    assert seen["query"] == {"project_id": "4242"}
    assert seen["auth"] == ("sa.user", "sa-secret-value")
    assert seen["params"] == {"a": 1}


def test_jql_with_the_legacy_api_secret(jql_server: JQLServer) -> None:
    query = MixpanelQuery(
        {"mixpanel.query_api_host": jql_server.base_url, "mixpanel.api_secret": "legacy"}
    )
    query.jql("function main() { return []; }")
    (seen,) = jql_server.requests
    assert seen["auth"] == ("legacy", "")
    assert seen["query"] == {}
    assert seen["params"] == {}


def test_profile_by_email_through_jql(jql_server: JQLServer) -> None:
    jql_server.profiles = [
        profile("1", "a@x.com"),
        profile("2", "b@x.com"),
        profile("3", "b@x.com"),
    ]
    query = MixpanelQuery(sa_settings(jql_server))
    # JQL is the default, as in the original package, with the original's answer.
    assert query.profile_by_email("a@x.com") == {"distinct_id": "1", "email": "a@x.com"}
    assert query.profile_by_email("nobody@x.com", use_jql=True) is None
    with pytest.raises(MultipleProfilesFoundException) as info:
        query.profile_by_email("b@x.com")
    assert isinstance(info.value, ValueError)
    assert info.value.email == "b@x.com"
    assert [p["distinct_id"] for p in info.value.profiles] == ["2", "3"]
    assert str(info.value) == (
        "Multiple Mixpanel profiles found for email: b@x.com - Profile IDs:"
        " [{'distinct_id': '2', 'email': 'b@x.com'}, {'distinct_id': '3', 'email': 'b@x.com'}]"
    )


def test_email_is_a_parameter_never_part_of_the_script(jql_server: JQLServer) -> None:
    """The original pasted the email into the script: ``x' || true || '`` matched everyone."""
    jql_server.profiles = [profile("1", "a@x.com"), profile("2", "b@x.com")]
    query = MixpanelQuery(sa_settings(jql_server))
    hostile = "x' || true || '"
    assert query.profile_by_email(hostile, use_jql=True) is None
    (seen,) = jql_server.requests
    assert seen["script"] == PROFILE_BY_EMAIL
    assert hostile not in seen["script"]
    assert seen["params"] == {"email": hostile}


def test_errors_carry_mixpanels_text_without_secrets(jql_server: JQLServer) -> None:
    jql_server.fail = (400, b'{"error": "bad script near sa-secret-value", "request": "/jql"}')
    query = MixpanelQuery(sa_settings(jql_server))
    with pytest.raises(MixpanelQueryError) as info:
        query.jql("oops")
    assert info.value.status == 400
    assert info.value.endpoint == "/api/2.0/jql"
    assert "bad script near ***" in str(info.value)
    assert "sa-secret-value" not in str(info.value)

    jql_server.fail = (502, b"<html>Bad gateway</html>")
    query = MixpanelQuery(sa_settings(jql_server), max_retries=1, sleep=lambda seconds: None)
    with pytest.raises(MixpanelQueryError, match="502 to /api/2.0/jql: <html>Bad gateway"):
        query.jql("oops")
    assert len(jql_server.requests) == 3  # the 400 once; the 502 twice (retried once)


def test_credentials_are_required() -> None:
    with pytest.raises(ValueError, match="needs mixpanel.service_account"):
        MixpanelQuery({"mixpanel.token": "tok"})


# -- the query side's settings ----------------------------------------------------------------

ZONES = sorted(zoneinfo.available_timezones())


def test_project_timezone_examples() -> None:
    assert parse_query_settings({}).project_timezone == "UTC"
    assert parse_settings({}).project_timezone == "UTC"
    parsed = parse_query_settings({"mixpanel.project_timezone": " Europe/Ljubljana "})
    assert parsed.project_timezone == "Europe/Ljubljana"
    assert parse_settings({"mixpanel.project_timezone": "America/New_York"}).query == (
        parse_query_settings({"mixpanel.project_timezone": "America/New_York"})
    )
    assert parse_query_settings({"mixpanel.project_timezone": "off"}).project_timezone == "UTC"
    with pytest.raises(MixpanelConfigurationError) as info:
        parse_settings({"mixpanel.project_timezone": "Europe/Ljubjana"})
    assert str(info.value) == (
        "mixpanel.project_timezone must be an IANA time zone name such as Europe/Ljubljana or"
        " UTC, got 'Europe/Ljubjana'. Did you mean 'Europe/Ljubljana'?"
    )
    for wrong in ("utc+2", "../etc/passwd", "zone.tab", "Europe", "/etc/localtime", 42):
        with pytest.raises(MixpanelConfigurationError, match=r"^mixpanel\.project_timezone "):
            parse_query_settings({"mixpanel.project_timezone": wrong})


@settings(max_examples=200, deadline=None, database=None)
@given(st.one_of(st.text(max_size=40), st.sampled_from(ZONES)))
def test_project_timezone_is_an_iana_name_or_a_configuration_error(value: str) -> None:
    try:
        parsed = as_timezone("mixpanel.project_timezone", value)
    except MixpanelConfigurationError as exc:
        assert str(exc).startswith("mixpanel.project_timezone must be an IANA time zone name")
        assert value.strip() not in ZONES
    else:
        assert parsed is None or parsed in ZONES
        assert parsed == (value.strip() or None) or parsed is None
        if parsed is not None:
            zoneinfo.ZoneInfo(parsed)  # what the sync will use


@settings(max_examples=50, deadline=None, database=None)
@given(st.sampled_from(ZONES))
def test_every_iana_zone_is_accepted(zone: str) -> None:
    assert parse_query_settings({"mixpanel.project_timezone": zone}).project_timezone == zone


def test_query_limits_url(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = "postgresql+psycopg://app:db-password-9@db.example/app"
    assert parse_query_settings({}).query_limits_url is None
    parsed = parse_query_settings({"mixpanel.metrics.database_url": metrics})
    assert parsed.query_limits_url == metrics  # the metrics database by default
    assert "db-password-9" not in repr(parsed)
    assert "db-password-9" not in repr(parse_settings({"mixpanel.metrics.database_url": metrics}))
    own = parse_query_settings(
        {"mixpanel.metrics.database_url": metrics, "mixpanel.query_limits_url": "sqlite:///l.db"}
    )
    assert own.query_limits_url == "sqlite:///l.db"
    off = {"mixpanel.metrics.database_url": metrics, "mixpanel.query_limits_url": "off"}
    assert parse_query_settings(off).query_limits_url is None
    for wrong in ("redis://:redis-password-3@cache/0", "not a url"):
        with pytest.raises(MixpanelConfigurationError) as info:
            parse_query_settings({"mixpanel.query_limits_url": wrong})
        assert str(info.value).startswith("mixpanel.query_limits_url is not an SQLAlchemy")
        assert "password" not in str(info.value)
    with pytest.raises(MixpanelConfigurationError, match=r"^mixpanel\.metrics\.database_url is"):
        parse_query_settings({"mixpanel.metrics.database_url": "nope"})
    monkeypatch.setitem(sys.modules, "sqlalchemy.engine", None)
    with pytest.raises(MixpanelConfigurationError, match=r"needs SQLAlchemy: pip install"):
        parse_query_settings({"mixpanel.query_limits_url": "sqlite:///l.db"})
