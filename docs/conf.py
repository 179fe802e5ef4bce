"""Sphinx configuration of the pyramid_mixpanel documentation.

Build it (warnings are errors, as in CI) with::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The build works offline. Set ``DOCS_INTERSPHINX=1`` to link names to the Python and Pyramid
documentation (that fetches their inventories over the network).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

# Project metadata comes from the installed distribution (pyproject.toml), never repeated here.
_metadata = importlib.metadata.metadata("pyramid_mixpanel")

project = _metadata["Name"]
author = _metadata["Author"] or "pyramid_mixpanel contributors"
copyright = author  # no build date: the same sources build the same pages
release = importlib.metadata.version("pyramid_mixpanel")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False

# MyST: Markdown pages, with heading anchors so [links](page.md#a-heading) work.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: the public surface only (each module's __all__, undocumented constants included), in
# source order, with default values shown as the source writes them.
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
    "undoc-members": True,
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"
# The page's table of contents names members without repeating their class.
toc_object_entries_show_parents = "hide"
# Optional dependencies of documented modules (the package's extras). Those installed are
# imported for real; the others are mocked, so `pip install -e '.[docs]'` alone builds the docs.
autodoc_mock_imports = [
    name
    for name in (
        "alembic",
        "celery",
        "customerio",
        "opentelemetry",
        "prometheus_client",
        "sqlalchemy",
        "structlog",
        "tqdm",
        "ua_parser",
    )
    if importlib.util.find_spec(name) is None
]

# Offline by default: the inventories are fetched only when asked for.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
if os.environ.get("DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "pyramid": ("https://docs.pylonsproject.org/projects/pyramid/en/latest/", None),
    }

html_theme = "furo"
html_title = f"{project} {release}"
html_static_path: list[str] = []
