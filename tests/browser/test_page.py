"""The live page in a real browser: Debian's headless Chromium, driven by Playwright.

Runs in its own nox session (``nox -s browser``), which installs what it needs;
deselected elsewhere by the ``browser`` marker. The installed ``trio-broadcast``
command serves the page with a pipe as its standard input; the test checks that
lines appear in order and as text (never HTML), that a typed message comes back
marked as an echo, and that after the server is killed and restarted on the same
port the page reconnects by itself. It also saves the README's screenshot,
``docs/page.png``. Every wait is bounded (Playwright's timeouts, the process
deadlines) and waits for an event, never a fixed time.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COMMAND = Path(sys.executable).with_name("trio-broadcast")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "page.png"
TIMEOUT = 10.0
"""Seconds any single step may take."""
RECONNECT_TIMEOUT = 30.0
"""The page's backoff is capped at 15 s; a restart within a second is seen well before this."""


class Command:
    """``trio-broadcast`` in a subprocess, fed through a pipe."""

    def __init__(self, port: int = 0) -> None:
        self.process = subprocess.Popen(
            [str(COMMAND), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port = int(self._read_stderr_until(r"listening on ws://127\.0\.0\.1:(\d+)/"))

    def _read_stderr_until(self, pattern: str) -> str:
        assert self.process.stderr is not None
        deadline = time.monotonic() + TIMEOUT
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stderr, selectors.EVENT_READ)
            while not (match := re.search(pattern, received.decode(errors="replace"))):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise AssertionError(f"no {pattern!r} on stderr in time: {received!r}")
                chunk = os.read(self.process.stderr.fileno(), 4096)
                if not chunk:
                    raise AssertionError(f"stderr ended without {pattern!r}: {received!r}")
                received += chunk
        return match.group(1)

    def send(self, *lines: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)
        for stream in (self.process.stdin, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def context(tmp_path: Path) -> Iterator[BrowserContext]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (nox -s browser)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile every run
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 960, "height": 560},
        )
        context.set_default_timeout(TIMEOUT * 1000)
        expect.set_options(timeout=TIMEOUT * 1000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def server() -> Iterator[Command]:
    command = Command()
    try:
        yield command
    finally:
        command.kill()


def open_page(context: BrowserContext, port: int) -> Page:
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.goto(f"http://127.0.0.1:{port}/")
    expect(page.locator("#state")).to_have_attribute("data-state", "live")
    assert dialogs == []
    return page


def test_the_page_shows_the_feed_echoes_and_reconnects(
    context: BrowserContext, server: Command
) -> None:
    page = open_page(context, server.port)
    broadcast = page.locator("#feed li.line:not(.echo) .text")
    echoes = page.locator("#feed li.echo .text")

    markup = '<b>not bold</b> & <img src=x onerror="alert(1)"> <script>alert(2)</script>'
    lines = [f"line {n}" for n in range(1, 21)] + [markup]
    server.send(*lines)
    expect(broadcast).to_have_text(lines)
    assert page.locator("#feed b, #feed img, #feed script").count() == 0

    page.locator("#message").fill("hello from the browser")
    page.locator("#message").press("Enter")
    expect(echoes).to_have_text(["hello from the browser"])
    expect(broadcast).to_have_count(len(lines))
    expect(page.locator("#count")).to_have_text(f"{len(lines)} lines")

    take_screenshot(context, server)

    port = server.port
    server.kill()
    expect(page.locator("#state")).to_have_attribute("data-state", "down")
    restarted = Command(port)
    try:
        expect(page.locator("#state")).to_have_attribute(
            "data-state", "live", timeout=RECONNECT_TIMEOUT * 1000
        )
        expect(page.locator("#feed li.note").last).to_have_text(re.compile("reconnected"))
        restarted.send("after the restart")
        expect(broadcast.last).to_have_text("after the restart")
        page.locator("#message").fill("still echoing")
        page.locator("#message").press("Enter")
        expect(echoes).to_have_text(["hello from the browser", "still echoing"])
    finally:
        restarted.kill()


def take_screenshot(context: BrowserContext, server: Command) -> None:
    """A second page, given a realistic feed, for the README."""
    page = open_page(context, server.port)
    page.set_viewport_size({"width": 900, "height": 360})
    feed = [
        "deploy: build 1432 started (commit 9f3c2e1)",
        "deploy: 412 tests passed in 38.2 s",
        "deploy: image pushed to registry.internal/app:1432",
        "canary: 5 % of traffic on build 1432",
        "canary: error rate 0.02 %, p99 84 ms: healthy",
        "rollout: 25 % of traffic on build 1432",
    ]
    server.send(*feed)
    expect(page.locator("#feed li.line .text")).to_have_text(feed)
    page.locator("#message").fill("ack from the on-call desk")
    page.locator("#message").press("Enter")
    expect(page.locator("#feed li.echo .text")).to_have_text(["ack from the on-call desk"])
    server.send("rollout: 100 % of traffic on build 1432, done")
    expect(page.locator("#feed li.line:not(.echo) .text").last).to_have_text(re.compile("done"))
    page.locator("#message").fill("nice work")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    page.close()


def test_the_feed_is_capped_and_follows_only_at_the_bottom(
    context: BrowserContext, server: Command
) -> None:
    page = open_page(context, server.port)
    lines = page.locator("#feed li.line .text")
    server.send(*(f"burst {n}" for n in range(6000)))
    expect(lines.last).to_have_text("burst 5999")
    assert page.locator("#feed li").count() == 5000
    assert (
        page.evaluate(
            "() => { const f = feed; return f.scrollHeight - f.scrollTop - f.clientHeight }"
        )
        < 8
    )

    page.evaluate("() => { feed.scrollTop = 0; }")
    server.send("while scrolled up")
    expect(lines.last).to_have_text("while scrolled up")
    expect(page.locator("#jump")).to_be_visible()
    assert page.evaluate("() => feed.scrollTop") == 0

    page.locator("#jump").click()
    expect(page.locator("#jump")).to_be_hidden()
    server.send("following again")
    expect(lines.last).to_have_text("following again")
    assert page.evaluate("() => feed.scrollHeight - feed.scrollTop - feed.clientHeight") < 8
