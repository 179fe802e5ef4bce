"""Tracking plan and naming lint."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import pathlib

import pytest
from pyramid.config import Configurator

from pyramid_mixpanel import Event, EventProperties, Events, Property
from pyramid_mixpanel.catalog import Catalog
from pyramid_mixpanel.plan import LintIssue, lint, render_plan

from .test_pmixpanel import run


@dataclasses.dataclass(frozen=True)
class MessyEvents(Events):
    lowercase: Event = Event("page downloaded")
    not_past: Event = Event("Click Button")
    one_word: Event = Event("Clicked")
    alias: Event = Event("Page Viewed")
    near: Event = Event("User Sign Up")
    irregular: Event = Event("Invoice Sent", "An invoice went out.")
    small_words: Event = Event("Terms of Use Accepted")


@dataclasses.dataclass(frozen=True)
class MessyProperties(EventProperties):
    path_again: Property = Property("Paths")
    lower: Property = Property("plan name")


def test_the_defaults_are_clean() -> None:
    assert lint(Catalog()) == []


def test_lint_finds_every_kind_of_problem() -> None:
    issues = {(i.attr, i.problem.split(",")[0].split(" e.g.")[0]) for i in lint(
        Catalog(events=MessyEvents, event_properties=MessyProperties)
    )}  # fmt: skip
    assert issues == {
        ("lowercase", "use Title Case"),
        ("not_past", "name events '<Item> <Action>' in past tense"),
        ("one_word", "name events '<Item> <Action>' in past tense"),
        ("alias", "the same Mixpanel name as page_viewed"),
        ("near", "nearly the same as user_signed_up = 'User Signed Up'"),
        ("near", "name events '<Item> <Action>' in past tense"),
        ("path_again", "nearly the same as path = 'Path'"),
        ("lower", "use Title Case"),
    }
    text = str(LintIssue("events", "a", "b", "c"))
    assert text == "events: a = 'b': c"


def test_plan_formats() -> None:
    catalog = Catalog(events=MessyEvents)
    markdown = render_plan(catalog)
    assert "| Invoice Sent | `irregular` | An invoice went out. |" in markdown
    assert "## Group keys (`GroupKeys`)\n\nNone declared." in markdown
    rows = json.loads(render_plan(catalog, "json"))
    assert {"section": "events", "class": "MessyEvents", "attribute": "irregular",
            "name": "Invoice Sent", "description": "An invoice went out."} in rows  # fmt: skip
    table = list(csv.DictReader(io.StringIO(render_plan(catalog, "csv"))))
    assert table[0]["name"] == "Page Viewed"


def test_pipes_in_descriptions_are_escaped() -> None:
    @dataclasses.dataclass(frozen=True)
    class Piped(Events):
        x: Event = Event("Report Exported", "CSV | PDF")

    assert "CSV \\| PDF" in render_plan(Catalog(events=Piped))


def test_naming_issues_are_warned_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="pyramid_mixpanel"),
        Configurator(
            settings={"mixpanel.token": "false", "mixpanel.events": MessyEvents}
        ) as config,
    ):
        config.include("pyramid_mixpanel")
    assert "mixpanel.naming issue=\"events: lowercase = 'page downloaded'" in caplog.text


def test_pmixpanel_plan_and_lint(tmp_path: pathlib.Path) -> None:
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[app:main]\nuse = call:tests.test_pmixpanel:app\nmixpanel.token = false\n"
        "mixpanel.events = tests.test_plan.MessyEvents\n"
    )
    code, out, _ = run(["plan", str(ini), "--format", "json"])
    assert code == 0
    assert json.loads(out)[0]["name"] == "Page Viewed"
    code, out, _ = run(["lint", str(ini)])
    assert code == 1
    assert "6 naming issue(s)" in out
    clean = tmp_path / "clean.ini"
    clean.write_text("[app:main]\nuse = call:tests.test_pmixpanel:app\nmixpanel.token = false\n")
    code, out, _ = run(["lint", str(clean)])
    assert (code, out) == (0, "0 naming issue(s)\n")
