"""Every Python example of the README runs, in order, in one namespace, so none can rot.

The namespace holds what the examples assume exists in a reader's app: a ``config``, a
``registry``, a ``request`` whose settings point at a loopback JQL stand-in, and the app's own
``create_user``. Example test functions without parameters are called too.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import re
import typing as t

import pytest
from pyramid import testing

from .query_standin import QueryStandIn

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
PRODUCTION_INI = """\
[app:main]
use = call:tests.test_pmixpanel:app
mixpanel.token = readme-token
mixpanel.delivery = sync
"""


class User:
    distinct_id = "42"
    email = "a@example.com"
    created = dt.datetime(2026, 1, 1)


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.fixture
def query_api() -> t.Iterator[QueryStandIn]:
    with QueryStandIn() as server:
        server.saved_funnels = {7: {"name": "Signup", "steps": ["Page Viewed", "Signed Up"]}}
        server.bookmarks = {"123": {"series": {}}}
        yield server


def test_every_python_example_runs(
    query_api: QueryStandIn,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "production.ini").write_text(PRODUCTION_INI)
    monkeypatch.chdir(tmp_path)
    config = testing.setUp(settings={"mixpanel.token": "false"})
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
        "registry": config.registry,
        "request": request,
        "create_user": lambda request: User(),
    }
    try:
        for number, block in enumerate(BLOCKS):
            try:
                exec(
                    compile(block, f"README.md python block {number}", "exec"), namespace
                )  # our own README
            except Exception as exc:
                raise AssertionError(f"README python block {number} failed:\n{block}") from exc
        tests = [
            value
            for name, value in namespace.items()
            if name.startswith("test_") and callable(value) and not value.__code__.co_argcount
        ]
        assert tests, "the README's own test example ran"
        for test in tests:
            test()
    finally:
        testing.tearDown()
    paths = [r["path"] for r in query_api.requests]
    assert paths.count("/api/2.0/export") == 10  # January in weekly chunks, twice
    assert "/api/2.0/jql" in paths
    assert "/api/query/funnels" in paths
