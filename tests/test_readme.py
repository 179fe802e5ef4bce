"""Every Python example of the README and of the documentation pages runs, so none can rot.

Each page — ``README.md``, then ``docs/*.md`` in the order of the site's table of contents
(``docs/index.md``), then any other page alphabetically — is one test: its ```` ```python ````
blocks run in order, in one namespace of its own. The namespace holds what the examples assume a
reader's app has:

- ``config``: a testing ``Configurator`` (testing mode), and ``request``, a ``DummyRequest``
  whose settings point a ``MixpanelQuery`` at a loopback query stand-in;
- ``registry``: the registry of an app that includes ``pyramid_mixpanel`` (testing mode), as a
  script gets it from ``bootstrap()``;
- ``settings``: app settings that point ingestion at a loopback Mixpanel, with an
  ``events.jsonl`` to import in the working directory (a temporary folder, which also holds the
  ``production.ini`` a Celery worker reads);
- ``create_user``, the app's own code the examples call.

A page whose examples use what an earlier page's define runs after that page's examples, in the
same namespace (:data:`BUILDS_ON`). Example test functions without parameters are called, and
:data:`CHECKS` holds what each page's examples must have done (the export requests of the query
examples, the rows of the import example, ...).

Every Python block runs: a page must not hide an example from this runner behind another fence
(```` ```py ````, ```` ```{code-block} python ````, ...), which
:func:`test_every_python_block_is_seen_by_the_runner` enforces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import pathlib
import re
import textwrap
import typing as t

import pytest
from pyramid import testing
from pyramid.config import Configurator

from pyramid_mixpanel import MixpanelTrack, get_runtime

from .loopback import MixpanelStandIn
from .query_standin import QueryStandIn

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# A fenced ```python block, at any indentation (a block inside a list item is indented).
PYTHON_BLOCK = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
# Any fence whose language is Python, whatever the spelling or directive.
ANY_PYTHON_FENCE = re.compile(
    r"^[ \t]*(?:```|~~~|:::)\s*(?:\{(?:code-block|code|sourcecode)\}\s*)?"
    r"(?:py|python|python3|pycon|ipython3?)\b",
    re.M | re.I,
)
TOCTREE = re.compile(r"```\{toctree\}\n(.*?)```", re.S)

#: Pages whose examples use names an earlier page's examples define: ``{page: earlier page}``.
#: The testing page's unit test exercises the quickstart's ``signup`` view.
BUILDS_ON = {"docs/testing.md": "docs/quickstart.md"}

PRODUCTION_INI = """\
[app:main]
use = call:tests.test_pmixpanel:app
mixpanel.token = readme-token
mixpanel.delivery = sync
"""
#: The file the import example reads: what ``pmixpanel import`` takes.
EVENTS_JSONL = "".join(
    json.dumps({"event": "User Signed Up", "properties": {"distinct_id": d, "time": time}}) + "\n"
    for d, time in (("u1", 1767225600), ("u2", 1767229200))
)


def pages() -> list[str]:
    """The pages, README first, then the site's reading order, then any page not in it."""
    order: list[str] = []
    for toctree in TOCTREE.findall((DOCS / "index.md").read_text()):
        for line in toctree.splitlines():
            entry = line.strip()
            if entry and not entry.startswith(":"):
                order.append(f"docs/{entry}.md")
    listed = ["README.md", "docs/index.md", *order]
    others = sorted(f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in listed)
    return [page for page in [*listed, *others] if (ROOT / page).is_file()]


def blocks(page: str) -> list[str]:
    """The ```python blocks of a page, dedented, in order."""
    return [
        textwrap.dedent(match.group(2))
        for match in PYTHON_BLOCK.finditer((ROOT / page).read_text())
    ]


class User:
    distinct_id = "42"
    email = "a@example.com"
    created = dt.datetime(2026, 1, 1)


@dataclasses.dataclass
class Run:
    """One page's run: its namespace and the stand-ins its examples talked to."""

    namespace: dict[str, t.Any]
    query_api: QueryStandIn
    ingestion: MixpanelStandIn


# What a page's examples must have done, beyond running without an error.
def check_signup_tracks(run: Run) -> None:
    """The front page's ``signup`` view tracks the sign-up, in testing mode."""
    config = run.namespace["config"]
    config.add_route("home", "/")
    request = testing.DummyRequest(path="/signup", registry=config.registry)
    request.mixpanel = MixpanelTrack({"mixpanel.token": "false"})
    run.namespace["signup"](request)
    assert request.mixpanel.mocked_messages == [
        {
            "endpoint": "events",
            "msg": {
                "event": "User Signed Up",
                "properties": {"distinct_id": "42", "Path": "/signup"},
            },
        }
    ]


def check_outside_a_request(run: Run) -> None:
    """``from_registry`` tracked through the app's runtime (testing mode records it)."""
    messages = run.namespace["mixpanel"].mocked_messages
    assert [m["msg"]["event"] for m in messages] == ["User Charged"]


def check_celery_worker(run: Run) -> None:
    """The worker module registered the delivery task on its Celery app."""
    assert "pyramid_mixpanel.deliver" in run.namespace["app"].tasks


def check_import(run: Run) -> None:
    """Both rows of ``events.jsonl`` reached the loopback Mixpanel's ``/import``."""
    report = run.namespace["report"]
    assert (report.sent, report.complete) == (2, True)
    received = run.ingestion.received["imports"]
    assert sorted(r["properties"]["distinct_id"] for r in received) == ["u1", "u2"]


def check_queries(run: Run) -> None:
    """The query examples called the export (January in weekly chunks, twice), JQL, funnels."""
    paths = [r["path"] for r in run.query_api.requests]
    assert paths.count("/api/2.0/export") == 10
    assert "/api/2.0/jql" in paths
    assert "/api/query/funnels" in paths


#: ``{page: checks}``, each called with the page's :class:`Run` after its examples ran.
CHECKS: dict[str, tuple[t.Callable[[Run], None], ...]] = {
    "README.md": (check_signup_tracks,),
    "docs/index.md": (check_signup_tracks,),
    "docs/tracking.md": (check_outside_a_request,),
    "docs/delivery.md": (check_celery_worker,),
    "docs/import.md": (check_import,),
    "docs/query.md": (check_queries,),
}


def test_the_pages_are_found() -> None:
    found = pages()
    assert found[:3] == ["README.md", "docs/index.md", "docs/installation.md"]
    assert {f"docs/{p.name}" for p in DOCS.glob("*.md")} <= set(found)
    assert set(BUILDS_ON) | set(BUILDS_ON.values()) | set(CHECKS) <= set(found)
    assert sum(len(blocks(page)) for page in found) >= 20


@pytest.mark.parametrize("page", pages())
def test_every_python_block_is_seen_by_the_runner(page: str) -> None:
    text = (ROOT / page).read_text()
    fences = ANY_PYTHON_FENCE.findall(text)
    assert len(fences) == len(blocks(page)), (
        f"{page} has a Python example the runner does not see: write it as a ```python block"
    )


@pytest.fixture
def run(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[Run]:
    (tmp_path / "production.ini").write_text(PRODUCTION_INI)
    (tmp_path / "events.jsonl").write_text(EVENTS_JSONL)
    monkeypatch.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        query_api = stack.enter_context(QueryStandIn())
        query_api.saved_funnels = {7: {"name": "Signup", "steps": ["Page Viewed", "Signed Up"]}}
        query_api.bookmarks = {"123": {"series": {}}}
        ingestion = stack.enter_context(MixpanelStandIn())
        app = Configurator(settings={"mixpanel.token": "false"})
        app.include("pyramid_mixpanel")
        app.commit()
        stack.callback(get_runtime(app.registry).close)
        config = testing.setUp(settings={"mixpanel.token": "false"})
        stack.callback(testing.tearDown)
        request = testing.DummyRequest()
        request.registry.settings.update(
            {
                k: v
                for k, v in query_api.settings().items()
                if k not in ("mixpanel.delivery", "mixpanel.token")
            }
        )
        namespace: dict[str, t.Any] = {
            "config": config,
            "registry": app.registry,
            "request": request,
            "settings": {"mixpanel.token": "readme-token", "mixpanel.api_host": ingestion.base_url},
            "create_user": lambda request: User(),
        }
        yield Run(namespace, query_api, ingestion)


@pytest.mark.parametrize("page", [page for page in pages() if blocks(page)])
def test_every_python_example_runs(page: str, run: Run) -> None:
    earlier = BUILDS_ON.get(page)
    for source in ([earlier] if earlier else []) + [page]:
        for number, block in enumerate(blocks(source)):
            try:
                exec(compile(block, f"{source} python block {number}", "exec"), run.namespace)
            except Exception as exc:
                raise AssertionError(f"{source} python block {number} failed:\n{block}") from exc
    for name, value in list(run.namespace.items()):
        if name.startswith("test_") and callable(value) and not value.__code__.co_argcount:
            value()
    for check in CHECKS.get(page, ()):
        check(run)
