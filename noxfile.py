"""Nox sessions: the suite on every supported Python, the lowest dependency versions, the wheel.

``make test`` stays the one gate (ruff, mypy --strict, the whole suite with 100% coverage on one
Python). These sessions answer what it cannot:

* ``tests-3.10`` … ``tests-3.13``: does it work on every Python ``requires-python`` allows?
  ``tests-3.11`` runs the whole suite with coverage, like ``make test`` (so it needs Redis,
  Chromium and PostgreSQL, see ``.ci/run``); the others run :data:`FAST`, the tests that need
  none of them.
* ``lowest``: do the lower bounds in ``pyproject.toml`` hold? Every direct dependency at the
  lowest version its bound allows, then :data:`FAST`.
* ``wheel``: is what we publish complete and installable? Build the sdist and wheel (no
  warnings), ``twine check``, check the wheel's files, then install it into fresh virtualenvs
  (without extras, and with every runtime extra) and run ``tests/smoke_app.py`` there: one real
  event from a tiny app to a loopback Mixpanel.

Run ``nox -l`` to list them, ``nox -s wheel lowest`` to run some. Installs go through uv when
it is importable next to nox (``pip install nox uv``), else through virtualenv and pip.
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re
import shutil
import typing as t
import zipfile

import nox

ROOT = pathlib.Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: The Python of ``make test`` (``.venv``): the one run of the whole suite with coverage.
FULL_PYTHON = "3.11"
#: Extras that are not runtime features: the smoke installs every other one.
NOT_RUNTIME_EXTRAS = {"test", "bench", "docs"}

#: Test files left out of the fast subset, and why. Everything else (about 100 s of tests) is
#: plain Python against loopback servers and runs on every Python version. New test files
#: join the fast subset unless listed here.
NOT_FAST = {
    "tests/test_celery.py": "Redis and Celery workers",
    "tests/test_relay_browser.py": "Chromium",
    "tests/test_proxy_browser.py": "Chromium and the npm-installed browser SDK",
    "tests/test_insights.py": "Chromium and PostgreSQL",
    "tests/test_metrics_store.py": "PostgreSQL",
    "tests/test_metrics_sync.py": "PostgreSQL",
    "tests/test_metrics_hostile.py": "PostgreSQL",
    "tests/test_query_api.py": "PostgreSQL",
    "tests/test_outage_drill.py": "45 s of app processes under outages, version-independent",
}
#: pytest arguments of the fast subset. No cache provider: sessions may run in parallel
#: (``nox -j``) and must not write the same ``.pytest_cache``.
FAST = ["-q", "-p", "no:cacheprovider", *(f"--ignore={path}" for path in NOT_FAST)]

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lowest", "wheel"]
# CI reaches PyPI only: a missing interpreter is an error, not a download from GitHub. Pass
# ``--download-python auto`` to let nox fetch one.
nox.options.download_python = "never"


def _find_pyenv_interpreters() -> None:
    """Put pyenv's interpreters of :data:`PYTHONS` on ``PATH``, ahead of its shims.

    Without ``pyenv global 3.10.13 3.11.7 …`` the shims answer "command not found" for all but
    one version; nox (and ``uv venv --python``) then find the real ones here.
    """
    versions = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    found = []
    for python in PYTHONS:
        builds = [p for p in versions.glob(f"versions/{python}.*/bin") if (p / "python").exists()]
        if builds:
            newest = max(builds, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])
            found.append(str(newest))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_find_pyenv_interpreters()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The suite: whole with coverage on FULL_PYTHON, the fast subset on the others."""
    # Editable, as in ``make test``: pytest imports the checkout anyway (tests/ is a package,
    # so its parent goes first on sys.path), and no build/ folder is left behind. pip: uv's
    # virtualenvs have none, and test_original_suite.py downloads the original package with it.
    session.install("-e", ".[test]", "pip")
    if session.python == FULL_PYTHON:
        session.run("pytest", "--cov", "--cov-report=term-missing", *session.posargs)
    else:
        session.run("pytest", *FAST, *session.posargs)


@nox.session(python=PYTHONS[0])
def lowest(session: nox.Session) -> None:
    """Every direct dependency (runtime and test) at its lower bound, on the oldest Python."""
    session.install("uv")
    pins = pathlib.Path(session.create_tmp()) / "lowest.txt"
    # lowest-direct: direct dependencies at their bounds, the rest resolved normally (the
    # lowest of everything would test the bounds of our dependencies, not ours).
    session.run(
        "uv", "pip", "compile", "pyproject.toml", "--extra", "test",
        "--resolution", "lowest-direct", "--python-version", str(session.python),
        "--no-header", "--no-annotate", "--quiet", "--output-file", str(pins),
    )  # fmt: skip
    direct = _direct_dependencies()
    session.log(
        "direct dependencies at: "
        + ", ".join(line for line in pins.read_text().split() if _name(line) in direct)
    )
    session.install("-r", str(pins))
    session.install("-e", ".", "--no-deps")
    session.install("pip")  # for test_original_suite.py, as in tests
    session.run("pytest", *FAST, *session.posargs)


@nox.session(python=PYTHONS[0])
def wheel(session: nox.Session) -> None:
    """Build, check and install the distributions; smoke-test the installed wheel."""
    session.install("build[uv]", "twine", "uv")
    tmp = pathlib.Path(session.create_tmp())
    dist = tmp / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # Without --sdist/--wheel, build makes the sdist and the wheel from the unpacked sdist:
    # a file missing from the sdist is then missing from the wheel too, and no stale build/
    # folder in the checkout can add files. PYTHONDONTWRITEBYTECODE (set on some machines)
    # makes setuptools warn "byte-compiling is disabled": not a packaging problem.
    output = session.run(
        "python", "-m", "build", "--installer", "uv", "--outdir", str(dist), str(ROOT),
        env={"PYTHONDONTWRITEBYTECODE": None}, silent=True,
    )  # fmt: skip
    warnings = [line for line in str(output).splitlines() if re.search(r"(?i)warning\b", line)]
    if warnings:
        session.error("the build warned:\n" + "\n".join(warnings))
    session.run("twine", "check", "--strict", *map(str, sorted(dist.iterdir())))
    (wheel_path,) = dist.glob("*.whl")
    _check_wheel(session, wheel_path)

    # The smoke runs from a folder holding only smoke_app.py, so the checkout's package is not
    # importable: what it imports comes from the wheel.
    smoke_dir = tmp / "smoke"
    shutil.rmtree(smoke_dir, ignore_errors=True)
    smoke_dir.mkdir()
    shutil.copy(ROOT / "tests" / "smoke_app.py", smoke_dir)
    extras = sorted(set(_pyproject()["project"]["optional-dependencies"]) - NOT_RUNTIME_EXTRAS)
    # The oldest Python without extras, the newest with all of them (their wheels must exist
    # for it too).
    for python, selected in ((PYTHONS[0], []), (PYTHONS[-1], extras)):
        venv = tmp / f"smoke-{python}{'-extras' if selected else ''}"
        shutil.rmtree(venv, ignore_errors=True)
        # No interpreter downloads, as nox.options.download_python says.
        session.run("uv", "venv", "--quiet", "--python", python, str(venv),
                    env={"UV_PYTHON_DOWNLOADS": "never"})  # fmt: skip
        interpreter = str(venv / "bin" / "python")
        requirement = f"{wheel_path}[{','.join(selected)}]" if selected else str(wheel_path)
        # waitress serves the smoke app; it is not a dependency of the package.
        session.run("uv", "pip", "install", "--quiet", "--python", interpreter, requirement,
                    "waitress")  # fmt: skip
        with session.chdir(smoke_dir):
            session.run(
                interpreter, "smoke_app.py", *(["--extras"] if selected else []),
                external=True, env={"PYTHONPATH": None},
            )  # fmt: skip
        # The console script starts: its subcommands that need no extra work without them.
        session.run(str(venv / "bin" / "pmixpanel"), "--help", external=True, silent=True)


def _pyproject() -> dict[str, t.Any]:
    return nox.project.load_toml(ROOT / "pyproject.toml")


def _name(requirement: str) -> str:
    """The normalised project name of a requirement or pin (``SQLAlchemy>=2`` -> sqlalchemy)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0]).lower()


def _direct_dependencies() -> set[str]:
    project = _pyproject()["project"]
    return {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}


def _check_wheel(session: nox.Session, wheel_path: pathlib.Path) -> None:
    """The wheel holds every module and data file of the package, and nothing else."""
    with zipfile.ZipFile(wheel_path) as archive:
        names = set(archive.namelist())
    package = {name for name in names if not name.startswith("pyramid_mixpanel-")}
    setuptools = _pyproject()["tool"]["setuptools"]
    # Every module of the checkout, and every data file package-data names.
    expected = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "pyramid_mixpanel").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    for dotted, patterns in setuptools["package-data"].items():
        folder = ROOT.joinpath(*dotted.split("."))
        for pattern in patterns:
            matched = {p.relative_to(ROOT).as_posix() for p in folder.glob(pattern)}
            if not matched:
                session.error(f"package-data {dotted}: {pattern} matches no file")
            expected |= matched
    missing, unexpected = expected - package, package - expected
    if missing or unexpected:
        session.error(f"wheel is missing {sorted(missing)}, has extra {sorted(unexpected)}")
    data = sorted(name for name in package if not name.endswith(".py"))
    if not any(fnmatch.fnmatch(name, "*/migrations/versions/*.py") for name in package):
        session.error("wheel has no alembic migration")
    session.log(f"wheel: {len(package)} package files, all expected; data files: {data}")
