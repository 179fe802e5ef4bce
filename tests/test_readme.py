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

from .test_query import JQLServer, jql_server  # noqa: F401  # the fixture, by name

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


def test_every_python_example_runs(
    jql_server: JQLServer,  # noqa: F811  # the fixture imported above
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "production.ini").write_text(PRODUCTION_INI)
    monkeypatch.chdir(tmp_path)
    config = testing.setUp(settings={"mixpanel.token": "false"})
    request = testing.DummyRequest()
    request.registry.settings.update(
        {
            "mixpanel.query_api_host": jql_server.base_url,
            "mixpanel.service_account.username": "sa",
            "mixpanel.service_account.secret": "readme-secret",
            "mixpanel.service_account.project_id": "1",
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
    assert [r["script"][:13] for r in jql_server.requests] == ["function main"] * 2
