"""The live page in a real browser: Debian's headless Chromium, driven by Playwright.

Runs in its own nox session (``nox -s browser``), which installs what it needs;
deselected elsewhere by the ``browser`` marker. The installed ``trio-broadcast``
command serves the page with a pipe as its standard input; the tests check that
lines appear in order and as text (never HTML), that a typed message comes back
marked as an echo (by its type, even when a broadcast line has the same text),
that after the server is killed and restarted on the same port the page
reconnects by itself and marks the gap, and, through a TCP proxy
(:mod:`tests.browser.proxy`) that resets the page's connection or holds its
reconnection, that the page resumes with ``?since=`` and shows every line once,
in order, or says how many it missed. It also saves the README's screenshot,
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
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
from websockets.sync.client import connect

from .proxy import Proxy

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

    def __init__(self, port: int = 0, *options: str) -> None:
        self.process = subprocess.Popen(
            [
                str(COMMAND),
                *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                *options,
            ],
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


@contextmanager
def running(*options: str) -> Iterator[Command]:
    command = Command(0, *options)
    try:
        yield command
    finally:
        command.kill()


@pytest.fixture
def server() -> Iterator[Command]:
    with running() as command:
        yield command


def open_page(context: BrowserContext, port: int, query: str = "") -> Page:
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.goto(f"http://127.0.0.1:{port}/{query}")
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
        # It asked to resume from a line of the old run: the new one cannot say what it missed.
        expect(page.get_by_role("listitem").filter(has_text="missing")).to_have_text(
            [re.compile("— some lines may be missing —")]
        )
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


def test_the_page_resumes_after_its_connection_is_reset(
    context: BrowserContext, tmp_path: Path
) -> None:
    token = "s3cret"
    (tmp_path / "token").write_text(token)
    with running("--token-file", str(tmp_path / "token")) as server, Proxy(server.port) as proxy:
        page = open_page(context, proxy.port, f"?token={token}")
        broadcast = page.locator("#feed li.line:not(.echo) .text")
        lines = [f"line {n}" for n in range(1, 301)]
        server.send(*lines[:100])
        expect(broadcast.last).to_have_text("line 100")

        server.send(*lines[100:200])  # on their way while the connection is reset
        proxy.reset()
        server.send(*lines[200:])
        expect(page.locator("#feed li.note .text")).to_have_text(
            ["connected", re.compile(r"disconnected \(1006"), "reconnected"],
            timeout=RECONNECT_TIMEOUT * 1000,
        )
        expect(broadcast).to_have_text(lines)
        assert page.get_by_role("listitem").filter(has_text="missed").count() == 0
        requests = proxy.requests
    assert re.fullmatch(rf"GET /\?token={token}&since=[^& ]+ HTTP/1\.1", requests[-1]), requests
    assert sum("since=" in request for request in requests) == 1, requests


def test_an_echo_is_labelled_by_its_type_not_its_text(
    context: BrowserContext, server: Command
) -> None:
    with Proxy(server.port) as proxy:
        page = open_page(context, proxy.port)
        broadcast = page.locator("#feed li.line:not(.echo) .text")
        echoes = page.locator("#feed li.echo .text")

        proxy.hold()  # the typed message waits at the proxy...
        page.locator("#message").fill("deploy done")
        page.locator("#message").press("Enter")
        assert proxy.held.wait(TIMEOUT), "the typed message did not reach the proxy"
        server.send("deploy done")  # ...while a broadcast line with the same text arrives
        expect(broadcast).to_have_text(["deploy done"])
        assert echoes.count() == 0

        proxy.release()
        expect(echoes).to_have_text(["deploy done"])
        expect(broadcast).to_have_text(["deploy done"])
        expect(page.locator("#count")).to_have_text("1 line")


def test_the_page_marks_the_lines_it_missed(context: BrowserContext) -> None:
    with running("--retain", "10") as server, Proxy(server.port) as proxy:
        page = open_page(context, proxy.port)
        lines = [f"line {n}" for n in range(1, 51)]
        server.send(*lines[:5])
        expect(page.locator("#feed li.line .text")).to_have_text(lines[:5])

        proxy.hold()
        proxy.reset()
        assert proxy.held.wait(RECONNECT_TIMEOUT), "the page did not try to reconnect"
        with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=TIMEOUT) as observer:
            server.send(*lines[5:45])  # 30 of them are forgotten before the page is back
            while observer.recv(timeout=TIMEOUT) != lines[44]:
                pass
        proxy.release()

        gap = page.get_by_role("listitem").filter(has_text="missed")
        expect(gap).to_have_text([re.compile("— 30 lines missed —")])
        server.send(*lines[45:])
        expect(page.locator("#feed li.line .text, #feed li.gap .text")).to_have_text(
            [*lines[:5], "— 30 lines missed —", *lines[35:]]
        )


def test_the_page_ignores_what_it_does_not_know(context: BrowserContext, server: Command) -> None:
    with Proxy(server.port) as proxy:
        page = open_page(context, proxy.port)
        server.send("first")
        expect(page.locator("#feed li.line .text")).to_have_text(["first"])
        proxy.inject(
            text_frame('{"type":"notice","line":"not a line"}')
            + text_frame('{"type":"echo","data":"an echo","from":"the future"}')
            + text_frame('"not an object"')
        )
        server.send("second")
        expect(page.locator("#feed li.line .text")).to_have_text(["first", "an echo", "second"])
        expect(page.locator("#feed li.echo .text")).to_have_text(["an echo"])


def text_frame(payload: str) -> bytes:
    """A short, unmasked text frame, as a server sends it."""
    data = payload.encode()
    assert len(data) < 126
    return bytes([0x81, len(data)]) + data
