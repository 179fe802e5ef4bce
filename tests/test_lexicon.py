"""Types and requirements in the catalogue, and ``pmixpanel lexicon`` against a Lexicon stand-in."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
import pathlib
import typing as t

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from pyramid_mixpanel import Event, EventProperties, Events, MixpanelTrack, Property
from pyramid_mixpanel.catalog import Catalog, ProfileProperties
from pyramid_mixpanel.delivery.policy import RetryPolicy
from pyramid_mixpanel.exceptions import MixpanelConfigurationError, MixpanelQueryError
from pyramid_mixpanel.lexicon import (
    PROFILE,
    Change,
    LexiconClient,
    LexiconDiff,
    LexiconMissingAccountError,
    batches,
    diff,
    lexicon_type,
    render_diff,
)
from pyramid_mixpanel.scripts.pmixpanel import PMixpanelCommand
from pyramid_mixpanel.settings import parse_settings
from pyramid_mixpanel.track import has_type

from .ini import LOGGING, app  # noqa: F401  # app: the .ini files name it here
from .lexicon_standin import SECRET, LexiconStandIn, Limits, entries_problem, schema_problem


@dataclasses.dataclass(frozen=True)
class ShopProperties(EventProperties):
    price: Property = Property("Price", "What the item cost.", type="number")
    item: Property = Property("Item", "The item's name.", type="string")
    paid_at: Property = Property("Paid At", "When it was paid.", type="datetime")
    note: Property = Property("Note")  # neither described nor typed


@dataclasses.dataclass(frozen=True)
class ShopEvents(Events):
    item_bought: Event = Event(
        "Item Bought", "An item was bought.", requires=(ShopProperties.price, ShopProperties.item)
    )


@dataclasses.dataclass(frozen=True)
class ShopProfile(ProfileProperties):
    plan: Property = Property("Plan", "The subscription plan.", type="string")


@dataclasses.dataclass(frozen=True)
class ChangedEvents(ShopEvents):
    item_bought: Event = Event(
        "Item Bought",
        "An item was bought, at last.",
        requires=(ShopProperties.price, ShopProperties.item),
    )


SHOP = {
    "mixpanel.events": ShopEvents,
    "mixpanel.event_properties": ShopProperties,
    "mixpanel.profile_properties": ShopProfile,
}
FAST = RetryPolicy(base=0.0, cap=0.0, jitter=(0.0, 0.0))


# -- the catalogue --------------------------------------------------------------------------


def test_types_and_requirements_are_optional_and_not_part_of_equality() -> None:
    assert Property("Price", type="number") == Property("Price")
    assert Event("Item Bought", requires=(ShopProperties.price,)) == Event("Item Bought")
    assert Catalog().checks_plan is False
    catalog = Catalog(ShopEvents, ShopProperties)
    assert catalog.checks_plan is True
    assert catalog.event_property_types[ShopProperties.price] == "number"
    assert catalog.requirements == {
        ShopEvents.item_bought: (ShopProperties.price, ShopProperties.item)
    }
    assert catalog.attr_of(ShopEvents.item_bought) == "ShopEvents.item_bought"
    assert catalog.attr_of(ShopProperties.price) == "ShopProperties.price"
    assert catalog.attr_of(Property("Nowhere")) == "'Nowhere'"


def test_bad_types_and_requirements_are_configuration_errors() -> None:
    with pytest.raises(MixpanelConfigurationError, match="type must be one of"):
        Property("Price", type="money")  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(MixpanelConfigurationError, match="tuple of Property"):
        Event("Item Bought", requires=[ShopProperties.price])  # type: ignore[arg-type]  # under test

    @dataclasses.dataclass(frozen=True)
    class Stray(Events):
        bought: Event = Event("Bought", requires=(Property("Undeclared"),))

    with pytest.raises(MixpanelConfigurationError, match="requires 'Undeclared'"):
        Catalog(Stray)


@pytest.mark.parametrize(
    ("value", "wanted", "ok"),
    [
        ("x", "string", True),
        (1, "string", False),
        (1, "number", True),
        (1.5, "number", True),
        (True, "number", False),
        (True, "boolean", True),
        (1, "boolean", False),
        (dt.datetime(2026, 1, 1), "datetime", True),
        (dt.date(2026, 1, 1), "datetime", True),
        ("2026-01-01T10:00:00", "datetime", True),
        ("yesterday", "datetime", False),
        (5, "datetime", False),
        ([1], "list", True),
        ((1,), "list", True),
        ({}, "list", False),
        ({"a": 1}, "object", True),
        ([], "object", False),
        (None, "number", True),
    ],
)
def test_has_type(value: object, wanted: str, ok: bool) -> None:
    assert has_type(value, wanted) is ok


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text()))
def test_has_type_agrees_with_json_types(value: object) -> None:
    assert has_type(value, "number") is (type(value) in (int, float))
    assert has_type(value, "string") is isinstance(value, str)


def test_testing_mode_raises_naming_the_event_and_the_member() -> None:
    mp = MixpanelTrack({"mixpanel.token": "false", **SHOP}, distinct_id="u")
    with pytest.raises(TypeError, match=r"'Item Bought' \(ShopEvents.item_bought\).*'Price'"):
        mp.track(ShopEvents.item_bought, {ShopProperties.price: "12", ShopProperties.item: "x"})
    with pytest.raises(ValueError, match=r"ShopProperties.item\) is required but missing"):
        mp.track(ShopEvents.item_bought, {ShopProperties.price: 12})
    mp.global_event_props = {ShopProperties.item: "hat"}
    mp.track(ShopEvents.item_bought, {ShopProperties.price: 12})
    mp.track(Events.page_viewed)
    assert [m["msg"]["event"] for m in mp.mocked_messages] == ["Item Bought", "Page Viewed"]


def test_live_mode_logs_counts_and_still_sends(caplog: pytest.LogCaptureFixture) -> None:
    mp = MixpanelTrack({"mixpanel.token": "tok", **SHOP}, distinct_id="u")
    with caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"):
        mp.track(ShopEvents.item_bought, {ShopProperties.price: "12"})
    assert mp._runtime.stats["plan_violations"] == 2
    lines = [r.getMessage() for r in caplog.records if "plan_violation" in r.getMessage()]
    assert len(lines) == 2
    assert "'12'" not in " ".join(lines)  # never the value
    assert [json.loads(body)["event"] for _, body in mp.history] == ["Item Bought"]


def test_a_catalogue_without_types_does_no_plan_work(monkeypatch: pytest.MonkeyPatch) -> None:
    mp = MixpanelTrack({"mixpanel.token": "false"}, distinct_id="u")

    def boom(*args: object) -> None:
        raise AssertionError("checked")

    monkeypatch.setattr(MixpanelTrack, "_check_plan", boom)
    mp.track(Events.page_viewed, {EventProperties.path: "/"})


# -- diff, without a server ------------------------------------------------------------------


def test_lexicon_types() -> None:
    assert lexicon_type({"type": "integer"}) == "number"
    assert lexicon_type({"type": "string", "format": "date-time"}) == "datetime"
    assert lexicon_type({"type": "array"}) == "list"
    assert lexicon_type({"type": "null"}) is None
    assert lexicon_type({"type": ["string"]}) is None


def test_diff_against_an_empty_lexicon_uploads_everything() -> None:
    catalog = Catalog(ShopEvents, ShopProperties, ShopProfile)
    result = diff(catalog, [])
    assert bool(result)
    assert {(e["entityType"], e["name"]) for e in result.uploads} == {
        *(("event", event.name) for event in catalog.events.by_attr.values()),
        PROFILE,
    }
    bought = next(e for e in result.uploads if e["name"] == "Item Bought")["schemaJson"]
    assert bought["required"] == ["Price", "Item"]
    assert bought["properties"]["Paid At"] == {
        "type": "string",
        "format": "date-time",
        "description": "When it was paid.",
    }
    assert bought["properties"]["Path"]["type"] == "string"  # untyped: Mixpanel's default
    assert not diff(catalog, _entries(result.uploads))


def test_diff_keeps_what_the_code_does_not_own_unless_pruning() -> None:
    catalog = Catalog(ShopEvents, ShopProperties, ShopProfile)
    held = _entries(diff(catalog, []).uploads)
    bought = next(e for e in held if e["name"] == "Item Bought")["schemaJson"]
    bought["properties"]["Color"] = {"type": "string", "metadata": {"com.mixpanel": {}}}
    bought["properties"]["Price"]["type"] = "integer"  # the same as number
    bought["properties"]["Item"]["type"] = "boolean"
    bought["properties"]["Item"]["metadata"] = {"com.mixpanel": {"displayName": "Thing"}}
    bought["required"] = ["Price"]
    bought["metadata"] = {"com.mixpanel": {"hidden": True}}
    page = next(e for e in held if e["name"] == "Page Viewed")["schemaJson"]
    page["description"] = "Someone's edit in the UI."
    page.pop("required", None)
    del page["properties"]["Title"]
    page["properties"]["Path"]["description"] = "Edited in the UI."
    held.append({"entityType": "profile", "name": "company", "schemaJson": {}})  # not ours
    result = diff(catalog, held)
    kinds = {(c.kind, c.entity, c.property) for c in result.changes}
    assert kinds == {
        ("only_in_lexicon", "Item Bought", "Color"),
        ("type", "Item Bought", "Item"),
        ("required", "Item Bought", None),
        ("description", "Page Viewed", None),
        ("only_in_code", "Page Viewed", "Title"),
        ("description", "Page Viewed", "Path"),
    }
    upload = next(e for e in result.uploads if e["name"] == "Item Bought")["schemaJson"]
    assert "Color" in upload["properties"]
    assert upload["properties"]["Item"]["metadata"] == {"com.mixpanel": {"displayName": "Thing"}}
    assert upload["metadata"] == {"com.mixpanel": {"hidden": True}}
    pruned = diff(catalog, held, prune=True)
    upload = next(e for e in pruned.uploads if e["name"] == "Item Bought")["schemaJson"]
    assert "Color" not in upload["properties"]
    assert pruned.deletions == []


def test_render_diff_as_a_table_and_as_json() -> None:
    assert render_diff(LexiconDiff()) == "Lexicon matches the code.\n"
    result = LexiconDiff([Change("description", "event", "A", None, "x" * 50, None)])
    table = render_diff(result)
    assert "event A" in table and "…" in table and "1 difference(s)" in table
    assert json.loads(render_diff(result, "json"))[0]["code"] == "x" * 50


def test_batches_keep_within_the_updates_per_minute() -> None:
    entries: list[dict[str, t.Any]] = [
        {"schemaJson": {"properties": {str(i): {} for i in range(9)}}}
    ] * 5
    assert [len(b) for b in batches(entries, limit=20)] == [2, 2, 1]


def _entries(uploads: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    copied: list[dict[str, t.Any]] = json.loads(json.dumps(uploads))
    return copied


# -- the stand-in's own rules ----------------------------------------------------------------


def test_the_stand_in_refuses_what_the_spec_refuses() -> None:
    assert entries_problem([]) is not None
    assert entries_problem({"entries": [], "extra": 1}) is not None
    assert entries_problem({"entries": [], "truncate": "yes"}) is not None
    assert entries_problem({"entries": {}}) is not None
    assert entries_problem({"entries": [{"name": "A"}]}) is not None
    entry = {"entityType": "group", "name": "A", "schemaJson": {}}
    assert entries_problem({"entries": [entry]}) is not None
    assert entries_problem({"entries": [{**entry, "entityType": "event", "name": ""}]})
    assert (
        schema_problem({"properties": {"A": {"description": "x"}}}) == "property 'A' needs a type"
    )
    assert schema_problem({"properties": {"A": {"type": "date"}}}) is not None
    assert schema_problem({"properties": {"A": {"type": "string", "enum": []}}}) is not None
    assert schema_problem({"metadata": {"com.mixpanel": {"owner": "x"}}}) is not None
    assert schema_problem({"$schema": "http://json-schema.org/draft-04/schema"}) is not None
    assert schema_problem({"required": "A"}) is not None


# -- pmixpanel lexicon, end to end -----------------------------------------------------------

INI = (
    """\
[app:main]
use = call:tests.test_lexicon:app
mixpanel.token = false
mixpanel.events = tests.test_lexicon:{events}
mixpanel.event_properties = tests.test_lexicon:ShopProperties
mixpanel.profile_properties = tests.test_lexicon:ShopProfile
{service_account}

"""
    + LOGGING
)


@pytest.fixture
def lexicon() -> t.Iterator[LexiconStandIn]:
    with LexiconStandIn(limits=Limits(requests_per_minute=None)) as server:
        yield server


def write_ini(
    tmp_path: pathlib.Path,
    server: LexiconStandIn | None,
    events: str = "ShopEvents",
    **overrides: str,
) -> str:
    account = ""
    if server is not None:
        values = {**server.settings(), **overrides}
        account = "\n".join(f"{key} = {value}" for key, value in values.items())
    ini = tmp_path / "app.ini"
    ini.write_text(INI.format(events=events, service_account=account))
    return str(ini)


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    command = PMixpanelCommand(["pmixpanel", *argv], out)
    command.retry_policy = FAST
    return command.run(), out.getvalue()


def test_push_creates_one_schema_per_event_and_the_profile(
    tmp_path: pathlib.Path, lexicon: LexiconStandIn
) -> None:
    ini = write_ini(tmp_path, lexicon)
    code, out = run("lexicon", "push", ini)
    assert code == 0, out
    assert "uploaded 8 schema(s) in 1 request(s), deleted 0" in out
    catalog = Catalog(ShopEvents, ShopProperties, ShopProfile)
    assert set(lexicon.schemas) == {
        *(("event", event.name) for event in catalog.events.by_attr.values()),
        PROFILE,
    }
    bought = lexicon.schemas[("event", "Item Bought")]
    assert bought["description"] == "An item was bought."
    assert bought["properties"]["Price"] == {"type": "number", "description": "What the item cost."}
    assert bought["required"] == ["Price", "Item"]
    assert lexicon.schemas[PROFILE]["properties"]["Plan"]["type"] == "string"
    assert [seen.method for seen in lexicon.requests] == ["GET", "POST"]

    lexicon.requests.clear()
    code, out = run("lexicon", "push", ini)
    assert (code, lexicon.writes()) == (0, [])
    assert "uploaded 0 schema(s) in 0 request(s)" in out
    assert run("lexicon", "diff", ini) == (0, "Lexicon matches the code.\n")


def test_diff_push_dry_run_and_prune(tmp_path: pathlib.Path, lexicon: LexiconStandIn) -> None:
    assert run("lexicon", "push", write_ini(tmp_path, lexicon))[0] == 0
    lexicon.schemas[("event", "Legacy Thing Happened")] = {"description": "old"}
    lexicon.schemas[("event", "Item Bought")]["metadata"] = {"com.mixpanel": {"hidden": True}}
    ini = write_ini(tmp_path, lexicon, events="ChangedEvents")

    code, out = run("lexicon", "diff", ini)
    assert code == 1
    rows = [" ".join(line.split()) for line in out.splitlines()]
    assert any(row.startswith("description event Item Bought An item") for row in rows)
    assert "only_in_lexicon event Legacy Thing Happened - -" in rows
    code, out = run("lexicon", "diff", ini, "--format", "json")
    assert code == 1
    assert {(c["kind"], c["entity"]) for c in json.loads(out)} == {
        ("description", "Item Bought"),
        ("only_in_lexicon", "Legacy Thing Happened"),
    }

    lexicon.requests.clear()
    code, out = run("lexicon", "push", ini, "--dry-run", "--prune")
    assert (code, lexicon.writes()) == (0, [])
    assert "dry run: would upload 1 schema(s), delete 1" in out

    code, out = run("lexicon", "push", ini)  # without --prune: deletes nothing
    assert code == 0
    assert ("event", "Legacy Thing Happened") in lexicon.schemas
    bought = lexicon.schemas[("event", "Item Bought")]
    assert bought["description"] == "An item was bought, at last."
    assert bought["metadata"] == {"com.mixpanel": {"hidden": True}}  # left as it was

    lexicon.requests.clear()
    code, out = run("lexicon", "push", ini, "--prune")
    assert code == 0, out
    assert ("event", "Legacy Thing Happened") not in lexicon.schemas
    assert [(s.method, s.path) for s in lexicon.writes()] == [
        ("DELETE", "/api/app/projects/4242/schemas/event/Legacy%20Thing%20Happened")
    ]
    assert run("lexicon", "diff", ini)[0] == 0


def test_bad_credentials_show_mixpanels_message_and_never_the_secret(
    tmp_path: pathlib.Path, lexicon: LexiconStandIn
) -> None:
    wrong = SECRET + "-wrong"
    ini = write_ini(tmp_path, lexicon, **{"mixpanel.service_account.secret": wrong})
    code, out = run("lexicon", "diff", ini)
    assert code == 2
    assert "Invalid service account credentials" in out
    assert "401" in out
    assert wrong not in out and SECRET not in out
    ini = write_ini(tmp_path, lexicon, **{"mixpanel.service_account.project_id": "1"})
    code, out = run("lexicon", "push", ini)
    assert (code, "cannot access this project" in out) == (2, True)


def test_no_service_account_is_one_line_and_exit_2(tmp_path: pathlib.Path) -> None:
    code, out = run("lexicon", "diff", write_ini(tmp_path, None))
    assert code == 2
    assert out.count("\n") == 1 and "needs a service account" in out


def test_rate_limits_are_retried(tmp_path: pathlib.Path, lexicon: LexiconStandIn) -> None:
    lexicon.fail_next = [429, 503]
    code, out = run("lexicon", "push", write_ini(tmp_path, lexicon))
    assert code == 0, out
    lexicon.fail_next = [429] * 3
    code, out = run("lexicon", "diff", write_ini(tmp_path, lexicon), "--max-retries", "1")
    assert code == 2 and "429" in out


def test_the_stand_in_enforces_the_documented_limits() -> None:
    with LexiconStandIn(limits=Limits(requests_per_minute=1, updates_per_minute=3)) as server:
        settings = parse_settings(server.settings())
        client = LexiconClient(settings, retry=FAST, max_retries=0)
        assert client.schemas() == []
        with pytest.raises(MixpanelQueryError, match="5 requests per minute"):
            client.schemas()
        server.limits.requests_per_minute = None
        entry = {"entityType": "event", "name": "A", "schemaJson": {"properties": {}}}
        client.upload([entry, {**entry, "name": "B"}])
        with pytest.raises(MixpanelQueryError, match="4000 events and properties"):
            client.upload([{**entry, "name": "C"}, {**entry, "name": "D"}])
        server.limits.deletions_per_request = 1
        with pytest.raises(MixpanelQueryError, match="3000 deletions"):
            client._call("DELETE", "")
        with pytest.raises(MixpanelQueryError, match="3000 deletions"):
            client._call("POST", "", {"entries": [], "truncate": True})
        server.limits.deletions_per_request = 3000
        server.limits.updates_per_minute = None
        one = {"description": "one", "metadata": {"com.mixpanel": {"tags": ["x"], "hidden": True}}}
        assert client._call("POST", "/event/One", one) == {"status": "ok"}
        again = {"metadata": {"com.mixpanel": {"hidden": None}}}
        client._call("POST", "/event/One", again)
        assert client._call("GET", "/event/One") == {"metadata": {"com.mixpanel": {"tags": ["x"]}}}
        with pytest.raises(MixpanelQueryError, match="404"):
            client._call("GET", "/event/Nope")
        with pytest.raises(MixpanelQueryError, match="entityType"):
            client._call("GET", "/group")
        with pytest.raises(MixpanelQueryError, match="405"):
            client._call("POST", "/event", {})
        with pytest.raises(MixpanelQueryError, match="needs a type"):
            client._call("POST", "/event/Two", {"properties": {"x": {}}})
        assert client._call("POST", "", {"entries": [], "truncate": True})["results"] == {
            "added": 0,
            "deleted": 3,
        }
        client.delete("event", "A")
        assert client._call("GET", "/event") == {"results": [], "status": "ok"}
        response = requests.post(server.base_url + "/api/app/projects/4242/schemas", data=b"{")
        assert response.status_code == 400
        response = requests.get(server.base_url + "/elsewhere", auth=client.auth)
        assert response.status_code == 404


def test_an_unreachable_host_is_status_0(tmp_path: pathlib.Path) -> None:
    with LexiconStandIn() as server:
        settings = parse_settings(server.settings())
    client = LexiconClient(settings, retry=FAST, max_retries=1, sleep=lambda _: None)
    with pytest.raises(MixpanelQueryError, match="answered 0"):
        client.schemas()


def test_a_client_needs_a_service_account() -> None:
    with pytest.raises(LexiconMissingAccountError):
        LexiconClient(parse_settings({}))


def test_a_non_object_answer_is_empty(lexicon: LexiconStandIn) -> None:
    class Session(requests.Session):
        def request(self, *args: t.Any, **kwargs: t.Any) -> requests.Response:
            response = requests.Response()
            response.status_code = 200
            response._content = b"[]"
            return response

    client = LexiconClient(parse_settings(lexicon.settings()), Session())
    assert client.schemas() == []
