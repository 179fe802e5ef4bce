"""The documentation builds without a warning, and its reference tables match the package.

The build is the one CI runs (``sphinx -W --keep-going -b html docs ...``), offline. The settings
page is checked against every settings table of the package (each module-level tuple of
``Setting`` rows: the core's, the relay's, the metrics', ...) both ways: every key the package
reads has one row in ``docs/settings.md`` and every row names a key the package reads; old or
shared names read in a key's place (``pyramid_heroku.structlog``,
``mixpanel.relay.cookie_secret``, ...) are on the built page too. The installation page has a row
for every extra of ``pyproject.toml``.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import importlib
import os
import pathlib
import pkgutil
import re
import typing as t

import pytest
from setuptools.config.pyprojecttoml import load_file  # tomllib is Python 3.11+

import pyramid_mixpanel
from pyramid_mixpanel.converters import Setting
from pyramid_mixpanel.relay import config as relay_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SETTINGS_PAGE = DOCS / "settings.md"
INSTALLATION_PAGE = DOCS / "installation.md"
# What the docs need: the `docs` extra.
DOCS_MODULES = ("sphinx.cmd.build", "myst_parser", "furo")
CODE = re.compile(r"<code[^>]*>(.*?)</code>", re.S)
TAG = re.compile(r"<[^>]+>")
# The first cell of a table row of a Markdown page: | `mixpanel.xxx` | default | meaning |
ROW_KEY = re.compile(r"^\| `([^`]+)` \|", re.M)
# Extensions (myst-parser) that still use Sphinx APIs deprecated for a later Sphinx: their
# Python warnings are not documentation warnings (those fail the build through -W).
pytestmark = pytest.mark.filterwarnings("ignore:.*Check CHANGES for Sphinx API modifications")


@dataclasses.dataclass(frozen=True)
class Build:
    status: int
    out: pathlib.Path
    warnings: str


def _build_main() -> t.Callable[[list[str]], int]:
    try:
        modules = [importlib.import_module(name) for name in DOCS_MODULES]
    except ImportError as exc:
        reason = f"the docs extra is not installed ({exc})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the docs build is required")
        pytest.skip(reason)
    return t.cast("t.Callable[[list[str]], int]", modules[0].build_main)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    build_main = _build_main()
    tmp = tmp_path_factory.mktemp("docs")
    out = tmp / "html"
    warning_file = tmp / "warnings.txt"
    status = build_main(
        ["-W", "--keep-going", "-b", "html", "-q", "-w", str(warning_file), str(DOCS), str(out)]
    )
    warnings = warning_file.read_text() if warning_file.exists() else ""
    return Build(status, out, warnings)


@functools.cache
def settings_tables() -> dict[str, tuple[Setting, ...]]:
    """Every settings table of the package, by ``module.name``: found, not listed by hand."""
    tables: dict[str, tuple[Setting, ...]] = {}
    for info in pkgutil.walk_packages(pyramid_mixpanel.__path__, "pyramid_mixpanel."):
        if ".migrations" in info.name:  # Alembic's scripts run only under Alembic
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                isinstance(value, tuple)
                and value
                and all(isinstance(row, Setting) for row in value)
                and value not in tables.values()
            ):
                tables[f"{info.name}.{name}"] = value
    return tables


def setting_keys() -> tuple[set[str], set[str]]:
    """The keys the package reads: ``(keys, old or shared names read in their place)``."""
    keys: set[str] = set()
    aliases: set[str] = set()
    for table in settings_tables().values():
        for setting in table:
            keys.add(setting.key)
            if setting.fallback:
                aliases.add(setting.fallback)
    # The relay's allow-lists and its old cookie keys are read outside its table.
    keys.update(relay_config.PREFIX + name for name in relay_config.LISTS)
    aliases.update(relay_config.PREFIX + name for name in relay_config.CORE_ALIASES)
    return keys, aliases - keys


def test_the_docs_build_without_warnings(build: Build) -> None:
    assert build.status == 0, f"sphinx -W failed:\n{build.warnings}"
    assert build.warnings == ""
    for page in ("index", "settings", "delivery", "api", "changelog"):
        assert (build.out / f"{page}.html").is_file()


def test_every_settings_table_is_found() -> None:
    tables = settings_tables()
    assert "pyramid_mixpanel.settings.SETTINGS" in tables
    assert "pyramid_mixpanel.relay.config.TABLE" in tables
    assert len(tables) >= 4


def test_the_settings_page_has_a_row_for_every_setting_the_package_reads() -> None:
    keys, _ = setting_keys()
    rows = ROW_KEY.findall(SETTINGS_PAGE.read_text())
    missing = sorted(keys - set(rows))
    assert not missing, f"settings without a row in docs/settings.md: {missing}"
    unknown = sorted(set(rows) - keys)
    assert not unknown, (
        f"docs/settings.md has rows for settings the package does not read: {unknown}"
    )
    assert len(rows) == len(set(rows)), "a setting has two rows in docs/settings.md"


def test_the_built_settings_page_shows_every_key_and_old_name(build: Build) -> None:
    assert build.status == 0, f"sphinx -W failed:\n{build.warnings}"
    page = (build.out / "settings.html").read_text()
    literals = {html.unescape(TAG.sub("", code)) for code in CODE.findall(page)}
    keys, aliases = setting_keys()
    missing = sorted((keys | aliases) - literals)
    assert not missing, f"not on the built settings page: {missing}"


def test_the_installation_page_has_a_row_for_every_extra() -> None:
    extras = load_file(ROOT / "pyproject.toml")["project"]["optional-dependencies"]
    rows = set(ROW_KEY.findall(INSTALLATION_PAGE.read_text()))
    missing = sorted(set(extras) - rows)
    assert not missing, f"extras without a row in docs/installation.md: {missing}"
