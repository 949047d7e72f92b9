"""Headless Chromium for the ``browser`` tests: Playwright for Python (PyPI ``playwright``) drives the
system's Chromium (Debian: ``/usr/bin/chromium`` from ``apt-get install chromium``). Playwright's own
browser downloads (``playwright install``) are never used.

A missing Chromium (or Playwright) FAILS the test with how to install it, never skips: these tests run
in ``make test`` and CI, where a skip would hide that the UI and the report were not checked.

Every page is watched: each request and WebSocket it opens is recorded (``WatchedPage.requests``) and
routing refuses any request that leaves the machine (``WatchedPage.blocked``), so a page never reaches
the network even when a check regresses. The launch flags also keep the browser's own background
traffic (component updates, sync, ...) off, and no host name resolves except 127.0.0.1 and localhost.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Route

INSTALL_HINT = ("install it with `sudo apt-get install -y chromium` (Debian/Ubuntu; `make install`, i.e. "
                "`bash scripts/install.sh`, does this when run as root or with sudo), or set CHROMIUM to the path "
                "of a Chromium or Chrome binary. Do not use `playwright install`: the tests use the system browser.")
# CHROMIUM (environment) first, then Debian's launcher, then the usual names on PATH.
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})
LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about"})
LAUNCH_ARGS = [
    "--no-sandbox",  # root in containers and CI
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    # No host name resolves but the local ones: nothing the browser itself starts reaches the network.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]


def find_chromium() -> str:
    """The Chromium binary to drive; fails the test (with how to install one) when there is none."""
    wanted = os.environ.get("CHROMIUM")
    if wanted:
        path = shutil.which(wanted)
        if path is None:
            pytest.fail(f"CHROMIUM={wanted} is not an executable; {INSTALL_HINT}", pytrace=False)
        return path
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"the browser tests need Chromium and none was found (looked for {', '.join(CANDIDATES)}): "
                f"{INSTALL_HINT}", pytrace=False)


def is_local(url: str) -> bool:
    """A file:, data:, blob: or about: URL, or one on 127.0.0.1 / localhost."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOCAL_HOSTS


@dataclass
class WatchedPage:
    page: Page
    context: BrowserContext
    requests: list[str] = field(default_factory=list)  # every request and WebSocket URL, in order
    blocked: list[str] = field(default_factory=list)  # requests refused because they left the machine

    def _route(self, route: Route) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort("internetdisconnected")

    def external(self) -> list[str]:
        """Requests (blocked or not) that were not for this machine."""
        return [u for u in self.requests if not is_local(u)]


class Chromium:
    """One headless Chromium (Playwright makes it a fresh temporary profile, deleted on close)."""

    def __init__(self, browser: Browser):
        self.browser = browser

    def open(self, url: str, *, offline: bool = False, timeout_s: float = 60.0) -> WatchedPage:
        """A new page in a fresh context (``offline``: the page sees no network, ``navigator.onLine``
        false), watched from its first request; loads ``url`` and waits for its load event."""
        context = self.browser.new_context(offline=offline, service_workers="block",
                                           viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(timeout_s * 1000)
        page = context.new_page()
        watched = WatchedPage(page, context)
        context.on("request", lambda r: watched.requests.append(r.url))
        page.on("websocket", lambda ws: watched.requests.append(ws.url))
        context.route("**/*", watched._route)
        page.goto(url, wait_until="load")
        return watched


@contextmanager
def launch(timeout_s: float = 60.0) -> Iterator[Chromium]:
    """Start headless Chromium under Playwright; always close it."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright for Python: `pip install -e '.[dev]'` (or `make install`)",
                    pytrace=False)
    exe = find_chromium()
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=LAUNCH_ARGS,
                                        timeout=timeout_s * 1000)
        except PlaywrightError as e:
            pytest.fail(f"Chromium at {exe} did not start under Playwright: {e}\n{INSTALL_HINT}", pytrace=False)
        try:
            yield Chromium(browser)
        finally:
            browser.close()
