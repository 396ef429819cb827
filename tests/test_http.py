"""The HTTP side of the port, in-process, with a real HTTP client (httpx).

Covered: every endpoint with its status code and headers (GET and HEAD), the
token and ``--no-page``, the metrics as a Prometheus parser reads them, the
head size bound (431) and the head time bound (slow headers dropped) for plain
requests, requests and upgrades arriving in small pieces, and the token and
Origin refusals of WebSocket handshakes (with their log lines and counts).
Every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_broadcast import Config, Server, frame_stream, handshake, read_lines, serve
from trio_broadcast.counters import Counters

from .conftest import LineFeed, running_server, wait_until, ws_client
from .wire import upgrade_request

TOKEN = "0123456789abcdef"


@asynccontextmanager
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        yield client


async def exchange(server: Server, *pieces: bytes) -> bytes:
    """Send ``pieces`` one write at a time; return everything until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        for piece in pieces:
            await stream.send_all(piece)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
    return received


async def status_line(server: Server, request: bytes) -> bytes:
    """The status line the server answers ``request`` with (then hang up)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(request)
        received = b""
        while b"\r\n" not in received and (chunk := await stream.receive_some()):
            received += chunk
    return received.split(b"\r\n", 1)[0]


def metric_values(exposition: str) -> dict[tuple[str, str], float]:
    """``(sample name, result label or "")`` to value, as a Prometheus scraper sees it."""
    return {
        (sample.name, sample.labels.get("result", "")): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


# --- endpoints ------------------------------------------------------------------


async def test_get_and_head_on_every_endpoint() -> None:
    with trio.fail_after(10):
        async with running_server() as server, http(server) as client:
            page = await client.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert page.headers["connection"] == "close"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert "<title>trio-broadcast</title>" in page.text
            head = await client.head("/")
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["content-length"] == page.headers["content-length"]

            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.headers["content-type"] == "application/json"
            assert health.headers["cache-control"] == "no-store"
            assert (await client.head("/healthz")).status_code == 200

            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain; version=")
            assert (await client.head("/metrics")).content == b""

            missing = await client.get("/nowhere")
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "text/plain; charset=utf-8"
            refused = await client.post("/healthz", content=b"x")
            assert refused.status_code == 405
            assert refused.headers["allow"] == "GET, HEAD"
            assert (await client.delete("/")).status_code == 405


async def test_a_target_that_is_not_a_path_gets_400() -> None:
    with trio.fail_after(10):
        async with running_server() as server:
            answer = await exchange(server, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")


async def test_healthz_reports_clients_uptime_and_stdin() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed) as server, http(server) as client:
            first = (await client.get("/healthz")).json()
            assert first["status"] == "ok"
            assert first["clients"] == 0
            assert first["stdin_open"] is True
            assert isinstance(first["uptime_s"], float)
            async with ws_client(server.urls[0]):
                await wait_until(lambda: server.clients == 1)
                assert (await client.get("/healthz")).json()["clients"] == 1
            feed.end()
            await wait_until(lambda: not server.statistics().input_open)
            last = (await client.get("/healthz")).json()
            assert last["stdin_open"] is False
            assert last["uptime_s"] >= first["uptime_s"]


async def test_metrics_count_what_happened() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed, token=TOKEN) as server, http(server) as client:
            async with ws_client(f"{server.urls[0]}?token={TOKEN}") as ws:
                await feed.send("ab", "cde")
                assert [await ws.get_message(), await ws.get_message()] == ["ab", "cde"]
                await ws.send_message("é")
                assert await ws.get_message() == "é"
            assert (await exchange(server, upgrade_request())).startswith(b"HTTP/1.1 401 ")
            response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            values = metric_values(response.text)
            assert values[("trio_broadcast_clients", "")] in (0, 1)
            assert values[("trio_broadcast_connections_total", "accepted")] == 1
            assert values[("trio_broadcast_connections_total", "unauthorized")] == 1
            assert values[("trio_broadcast_connections_total", "forbidden_origin")] == 0
            assert values[("trio_broadcast_connections_total", "too_many_clients")] == 0
            assert values[("trio_broadcast_connections_total", "bad_request")] == 0
            assert values[("trio_broadcast_connections_total", "out_of_file_descriptors")] == 0
            assert values[("trio_broadcast_lines_read_total", "")] == 2
            assert values[("trio_broadcast_messages_delivered_total", "")] == 3
            assert values[("trio_broadcast_bytes_sent_total", "")] == (2 + 2) + (2 + 3) + (2 + 2)
            assert values[("trio_broadcast_messages_dropped_total", "")] == 0
            assert values[("trio_broadcast_slow_disconnects_total", "")] == 0
            assert values[("trio_broadcast_lines_too_long_total", "")] == 0
            assert TOKEN not in response.text


async def test_metrics_show_connections_tasks_and_descriptors_coming_back_down() -> None:
    """The gauges an operator watches for leaks return to where they were."""

    async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
        return metric_values((await client.get("/metrics")).text)

    with trio.fail_after(10):
        async with running_server() as server, http(server) as client:
            before = await scrape(client)
            assert before[("trio_broadcast_open_connections", "")] == 1  # this scrape
            assert before[("process_open_fds", "")] > 0
            assert before[("process_max_fds", "")] > 0
            assert before[("process_resident_memory_bytes", "")] > 0
            async with ws_client(server.urls[0]), ws_client(server.urls[0]):
                await wait_until(lambda: server.clients == 2)
                during = await scrape(client)
                assert during[("trio_broadcast_open_connections", "")] == 3
                assert during[("trio_broadcast_tasks", "")] > before[("trio_broadcast_tasks", "")]
            # The clients, fully closed:
            await wait_until(lambda: server.statistics().connections == 0)
            after = await scrape(client)
            assert after[("trio_broadcast_tasks", "")] == before[("trio_broadcast_tasks", "")]
            assert after[("process_open_fds", "")] == before[("process_open_fds", "")]


async def test_metrics_count_long_lines_read_from_a_file_descriptor() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"far too long\nok\n")
    os.close(write_end)
    counters = Counters()
    source = partial(read_lines, max_line_size=5, fd=read_end, counters=counters)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                config = Config(host="127.0.0.1", port=0)
                server: Server = await nursery.start(
                    partial(serve, config, source, counters=counters)
                )
                await wait_until(lambda: not server.statistics().input_open)
                async with http(server) as client:
                    values = metric_values((await client.get("/metrics")).text)
                assert values[("trio_broadcast_lines_too_long_total", "")] == 1
                assert values[("trio_broadcast_lines_read_total", "")] == 1
                nursery.cancel_scope.cancel()
    finally:
        os.close(read_end)


async def test_two_servers_have_separate_registries() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed) as busy, running_server() as idle:
            await feed.send("one")
            await wait_until(lambda: busy.statistics().lines_read == 1)
            for server, expected in ((busy, 1), (idle, 0)):
                async with http(server) as client:
                    values = metric_values((await client.get("/metrics")).text)
                assert values[("trio_broadcast_lines_read_total", "")] == expected


async def test_no_page() -> None:
    with trio.fail_after(10):
        async with running_server(page=False) as server, http(server) as client:
            assert (await client.get("/")).status_code == 404
            assert (await client.get("/healthz")).status_code == 200


# --- the token ------------------------------------------------------------------


async def test_the_token_guards_the_page_and_metrics_but_not_healthz() -> None:
    with trio.fail_after(10):
        async with running_server(token=TOKEN) as server, http(server) as client:
            for path in ("/", "/metrics", "/nowhere"):
                refused = await client.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["www-authenticate"] == 'Bearer realm="trio-broadcast"'
                assert (await client.get(path, params={"token": "wrong"})).status_code == 401
            assert (await client.post("/nowhere")).status_code == 401
            assert (await client.get("/healthz")).status_code == 200
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await client.get("/", headers=bearer)).status_code == 200
            assert (await client.get("/", params={"token": TOKEN})).status_code == 200
            assert (await client.get("/metrics", headers=bearer)).status_code == 200
            assert (await client.get("/nowhere", headers=bearer)).status_code == 404
            assert (await client.post("/nowhere", headers=bearer)).status_code == 405


# --- the bounds on the request head -----------------------------------------------


async def test_an_oversized_plain_request_gets_431() -> None:
    with trio.fail_after(10):
        async with running_server() as server, http(server) as client:
            response = await client.get("/healthz", headers={"X-Big": "b" * (17 * 1024)})
            assert response.status_code == 431
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert (await client.get("/healthz", headers={"X-Big": "b" * 8000})).status_code == 200


async def test_a_bad_request_line_is_quoted_back_bounded_and_escaped() -> None:
    line = b"GET /\x1b]0;owned\x07" + b"a" * 10_000 + b" HTTP/1.1\r\n"
    with trio.fail_after(10):
        async with running_server() as server:
            answer = await exchange(server, line + b"Host: x\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert body.startswith(b"illegal request line")
    assert len(body) <= 250
    assert b"\\x1b]0;owned\\x07" in body
    assert re.search(rb"[\x00-\x1f\x7f]", body.removesuffix(b"\n")) is None


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (upgrade_request("/") + b"\x81\x85" * 10_000, 401),
        (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + b"b" * 20_000,
            405,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431),
    ],
    ids=["refused-upgrade-then-frames", "405-with-a-body", "431-head-too-large"],
)
async def test_a_refusal_with_bytes_left_unread_still_closes_gracefully(
    request_: bytes, status: int
) -> None:
    # Closing a socket with unread bytes resets the connection, and the client
    # may lose the answer: the server must read what is left before it closes.
    with trio.fail_after(10):
        async with running_server(token=TOKEN) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(request_)
                answer = b""
                try:
                    while chunk := await stream.receive_some():
                        answer += chunk
                except trio.BrokenResourceError as exc:
                    raise AssertionError(
                        f"reset after {answer[:30]!r}: {exc.__cause__!r}"
                    ) from None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head + b"\r\n"


async def test_the_reading_before_closing_is_bounded_in_time() -> None:
    with trio.fail_after(10):
        async with running_server(token=TOKEN) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(upgrade_request("/"))
                while await stream.receive_some():  # the answer, then the half-close
                    pass
                # Kept open and silent: closed after LINGER_SECONDS.
                await wait_until(lambda: server.statistics().connections == 0)


async def test_the_reading_before_closing_is_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(frame_stream, "LINGER_SECONDS", 60.0)
    sent = 0
    with trio.fail_after(10):
        async with running_server(token=TOKEN) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(upgrade_request("/"))
                with contextlib.suppress(trio.BrokenResourceError):
                    while sent < 100 * handshake.LINGER_BYTES:
                        await stream.send_all(b"x" * 65536)
                        sent += 65536
                await wait_until(lambda: server.statistics().connections == 0)
    assert sent < 100 * handshake.LINGER_BYTES


async def test_slow_headers_are_dropped_at_the_deadline() -> None:
    with trio.fail_after(10):
        async with running_server(handshake_timeout=0.5) as server:
            # Before connecting: the server's clock for this connection starts
            # when it accepts, which may come before open_tcp_stream returns.
            started = trio.current_time()
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream, trio.open_nursery() as nursery:

                async def trickle() -> None:
                    # A byte every 50 ms: each arrives well within any per-read
                    # timeout, yet the whole head never does.
                    with contextlib.suppress(trio.BrokenResourceError):
                        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 99:
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(0.05)

                nursery.start_soon(trickle)
                # Dropped: an end of stream, or a reset if a byte was still unread.
                with contextlib.suppress(trio.BrokenResourceError):
                    assert await stream.receive_some() == b""
                assert 0.5 <= trio.current_time() - started < 2
                nursery.cancel_scope.cancel()
            await wait_until(lambda: server.statistics().connections == 0)


async def test_a_request_in_small_pieces_gets_its_answer() -> None:
    with trio.fail_after(10):
        async with running_server() as server:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            answer = await exchange(
                server, *(request[i : i + 3] for i in range(0, len(request), 3))
            )
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == "ok"


async def test_an_upgrade_in_small_pieces_with_the_token_still_works() -> None:
    feed = LineFeed()
    with trio.fail_after(10):
        async with running_server(feed, token=TOKEN) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                request = upgrade_request(f"/any/path?token={TOKEN}")
                for i in range(0, len(request), 5):
                    await stream.send_all(request[i : i + 5])
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await stream.receive_some(1)
                assert head.startswith(b"HTTP/1.1 101 ")
                await wait_until(lambda: server.clients == 1)
                await feed.send("through")
                assert await stream.receive_some() == b"\x81\x07through"


@pytest.mark.parametrize(
    "connection",
    [
        (b"Upgrade",),
        (b"Upgrade", b"close"),
        (b"keep-alive", b"Upgrade", b"close"),
    ],
    ids=["one-line", "two-lines", "three-lines"],
)
async def test_connection_lines_are_one_list(connection: tuple[bytes, ...]) -> None:
    lines = b"".join(b"Connection: " + value + b"\r\n" for value in connection)
    request = upgrade_request("/").replace(b"Connection: Upgrade\r\n", lines)
    with trio.fail_after(10):
        async with running_server() as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(request)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := await stream.receive_some(1)):
                    head += chunk
                assert head.startswith(b"HTTP/1.1 101 "), head
                await stream.send_all(b"\x81\x85\x00\x00\x00\x00hello")
                assert await stream.receive_some() == b"\x81\x05hello"


# --- refused handshakes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "request_", "status", "reason"),
    [
        ({"token": TOKEN}, upgrade_request("/"), 401, "a valid token is required"),
        ({"token": TOKEN}, upgrade_request("/?token=nope"), 401, "a valid token is required"),
        (
            {"token": TOKEN},
            upgrade_request("/", "Authorization: Bearer nope"),
            401,
            "a valid token is required",
        ),
        (
            {"allowed_origins": ("https://good.example",)},
            upgrade_request("/", "Origin: https://evil.example"),
            403,
            "origin not allowed",
        ),
        ({"require_origin": True}, upgrade_request("/"), 403, "an Origin header is required"),
        ({}, upgrade_request("/", key="c2hvcnQ="), 400, "must be the base64 of 16 bytes"),
        (
            {},
            upgrade_request("/").replace(b"Version: 13", b"Version: 8"),
            400,
            "only WebSocket version 13",
        ),
    ],
    ids=[
        "no-token",
        "wrong-query-token",
        "wrong-bearer",
        "foreign-origin",
        "no-origin",
        "bad-key",
        "version-8",
    ],
)
async def test_refused_handshakes(
    settings: dict[str, Any],
    request_: bytes,
    status: int,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_broadcast")
    with trio.fail_after(10):
        async with running_server(**settings) as server:
            answer = await exchange(server, request_)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
            assert reason.encode() in answer
            head = answer.split(b"\r\n\r\n")[0] + b"\r\n"
            assert b"\r\nX-Content-Type-Options: nosniff\r\n" in head
            if status == 400:
                assert b"\r\nSec-WebSocket-Version: 13\r\n" in head
            if status == 401:
                assert b"\r\nWWW-Authenticate: Bearer" in answer
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refusals) == 1
    assert refusals[0].startswith("refused 127.0.0.1:")
    assert reason in refusals[0]
    assert TOKEN not in caplog.text


async def test_accepted_handshakes() -> None:
    settings: dict[str, Any] = {"token": TOKEN, "allowed_origins": ("https://good.example",)}
    with trio.fail_after(10):
        async with running_server(**settings) as server:
            url = f"{server.urls[0]}?token={TOKEN}"
            for headers in ([], [(b"Origin", b"https://good.example")]):
                async with ws_client(url, extra_headers=headers) as ws:
                    await ws.send_message("in")
                    assert await ws.get_message() == "in"
            # The page's own origin: the Host header the request was sent to.
            own = f"http://127.0.0.1:{server.port}".encode()
            async with ws_client(url, extra_headers=[(b"Origin", own)]) as ws:
                await ws.send_message("own")
                assert await ws.get_message() == "own"
            await wait_until(lambda: server.clients == 0)
            assert server.statistics().handshakes["accepted"] == 3


async def test_a_rebound_name_does_not_pass_for_the_servers_own_origin() -> None:
    settings: dict[str, Any] = {
        "allowed_origins": ("https://a.example",),
        "allowed_hosts": ("chat.example",),
    }
    with trio.fail_after(10):
        async with running_server(**settings) as server:

            def from_page_at(host: str) -> bytes:
                request = upgrade_request("/", f"Origin: http://{host}")
                return request.replace(b"Host: 127.0.0.1", f"Host: {host}".encode())

            port = server.port
            # The built-in page, opened by address, as localhost, or by a listed name.
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"chat.example:{port}"):
                assert await status_line(server, from_page_at(host)) == (
                    b"HTTP/1.1 101 Switching Protocols"
                ), host
            # A page from evil.example, whose name now resolves to this server.
            assert await status_line(server, from_page_at(f"evil.example:{port}")) == (
                b"HTTP/1.1 403 Forbidden"
            )


async def test_with_allowed_hosts_a_rebound_page_cannot_read_anything() -> None:
    with trio.fail_after(10):
        async with running_server(allowed_hosts=("chat.example",)) as server:
            for target in ("/", "/metrics", "/healthz"):
                request = f"GET {target} HTTP/1.1\r\nHost: evil.example:{server.port}\r\n\r\n"
                answer = await exchange(server, request.encode())
                assert answer.startswith(b"HTTP/1.1 403 "), answer
                assert answer.endswith(b"\r\n\r\nhost not allowed (see --allowed-host)\n")
            rebound = upgrade_request("/").replace(b"Host: 127.0.0.1", b"Host: evil.example")
            assert await status_line(server, rebound) == b"HTTP/1.1 403 Forbidden"
            assert server.statistics().handshakes["forbidden_host"] == 1
            async with http(server) as client:  # Host: 127.0.0.1:PORT
                assert (await client.get("/healthz")).status_code == 200
                named = await client.get("/healthz", headers={"Host": "chat.example"})
                assert named.status_code == 200


async def test_refusal_logs_are_rate_limited_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_broadcast")
    with trio.fail_after(10):
        async with running_server(token=TOKEN) as server:
            for _ in range(5):
                assert (await exchange(server, upgrade_request())).startswith(b"HTTP/1.1 401 ")
            assert server.statistics().handshakes["unauthorized"] == 5
            held = [r for r in caplog.records if r.getMessage().startswith("refused")]
            assert len(held) == 1
            # A second later, the next refusal is logged with the count held back.
            await trio.sleep(1.0)
            await exchange(server, upgrade_request())
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(logged) == 2
    assert logged[1].endswith("(4 more refused for this since the last report)")
