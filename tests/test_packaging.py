"""What the wheel ships: every folder of the package is listed, so nothing is left out quietly."""

from __future__ import annotations

import pathlib

from setuptools.config.pyprojecttoml import load_file  # tomllib is Python 3.11+

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_with_its_data_files() -> None:
    config = load_file(ROOT / "pyproject.toml")["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {
        ".".join(path.relative_to(ROOT).parts)
        for path in (ROOT / "pyramid_mixpanel").rglob("*")
        if path.is_dir() and path.name != "__pycache__" and any(path.glob("*.*"))
    }
    # A folder setuptools does not know is a "Package would be ignored" warning at build time
    # and, for data folders, files missing from the wheel.
    assert folders | {"pyramid_mixpanel"} == listed
    data = config["package-data"]
    for package, patterns in data.items():
        folder = ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            assert list(folder.glob(pattern)), (package, pattern)
    assert data["pyramid_mixpanel.static"] == ["*.js"]
