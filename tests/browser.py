"""Headless Chromium for end-to-end tests (Debian's chromium and chromedriver, via Selenium)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import waitress.server

from .loopback import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[t.Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are not installed (.ci/run installs them)")
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network beyond loopback here: keep Chromium from calling home at start.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def stop(server: t.Any) -> None:
    """Stop a waitress server from its own loop thread: closing its sockets from another thread
    races the loop's ``select`` (EBADF), and keep-alive connections a client left open would
    keep the loop running."""

    def close_everything() -> None:
        for channel in list(server._map.values()):
            if channel is not server and channel is not server.trigger:
                channel.handle_close()
        server.close()

    server.trigger.pull_trigger(close_everything)


@contextlib.contextmanager
def serve(app: t.Any, threads: int = 4) -> Iterator[str]:
    """Serve a WSGI app with waitress on a free loopback port; yield its base URL."""
    port = free_port()
    server = waitress.server.create_server(app, host="127.0.0.1", port=port, threads=threads)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)
        thread.join(5)
