"""The log, end to end: ``--log-level`` (a line per connect and disconnect at
``info``, none at ``warning``); hostile close reasons, request lines and
headers leave every line with the server's prefix, printable and bounded; the
token never appears in it, even at ``--log-level debug``.
"""

from __future__ import annotations

import os
import re
import signal
import struct
from pathlib import Path

import pytest
import trio
from websockets.exceptions import ConnectionClosedOK

from .conftest import Process, running_command
from .e2e import (
    PROG,
    assert_clean,
    echoes,
    exited,
    local_port,
    stop,
    url_port,
    ws,
)
from .wire import CLOSE, RawClient

pytestmark = pytest.mark.e2e


async def _connect_then_disconnect(process: Process) -> tuple[int, int]:
    """One client leaves by itself, one is closed by a SIGTERM; their ports."""
    async with ws(process.url) as leaving:
        await echoes(leaving, "hello")
        leaving_port = local_port(leaving)
    async with ws(process.url) as staying:
        await echoes(staying, "hello")
        staying_port = local_port(staying)
        process.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosedOK):
            await staying.recv()
        assert staying.close_code == 1001
    return leaving_port, staying_port


async def test_log_level_info_logs_each_connect_and_disconnect() -> None:
    with trio.fail_after(10):
        async with running_command("--log-level", "info") as process:
            leaving, staying = await _connect_then_disconnect(process)
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert_clean(stderr)
            for port, closing in (
                (leaving, "connection ended with 1000"),
                (staying, "closed with 1001"),
            ):
                lines = [line for line in stderr.splitlines() if f"127.0.0.1:{port}" in line]
                assert len(lines) == 2, stderr
                assert re.search(rf"INFO: client 127\.0\.0\.1:{port} connected", lines[0])
                assert re.search(rf"INFO: client 127\.0\.0\.1:{port} {closing}\b", lines[1])


async def test_log_level_warning_logs_nothing_for_clients() -> None:
    with trio.fail_after(10):
        async with running_command("--log-level", "warning") as process:
            await _connect_then_disconnect(process)
            code, stderr = await exited(process)
            assert code == 0, stderr
            assert stderr.splitlines() == [f"{PROG}: listening on {process.url}"]


LOG_LINE = re.compile(rf"{PROG}: (listening on |(DEBUG|INFO|WARNING|ERROR|CRITICAL): )")


FORGED_REASON = "\r\nclient 1.2.3.4:5 connected (9 clients)\x1b]0;pwned\x07\x1b[2J\u2028\u202e"


HOSTILE_REQUESTS = [
    b"GET /\x1b[2J\r\nclient 1.2.3.4:5 connected (9 clients) HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evil\x1b]0;pwned\x07: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 3000 + b"\x00\r\n\r\n",
    b"A" * 3000 + b" / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
]


async def refused(port: int, request: bytes) -> bytes:
    """Send ``request`` on a raw connection; the server's whole answer, a 4xx."""
    client = await RawClient.open(port)
    try:
        await client.stream.send_all(request)
        answer = await client.read_to_end()
    finally:
        await client.aclose()
    assert answer.startswith(b"HTTP/1.1 4"), answer
    return answer


def log_lines(stderr: str) -> list[str]:
    """The server's stderr, split on newlines only (not on U+2028 and the like)."""
    lines = stderr.split("\n")
    assert lines.pop() == "", "stderr does not end with a newline"
    return lines


async def test_client_text_cannot_forge_or_flood_log_lines() -> None:
    with trio.fail_after(10):
        async with running_command("--log-level", "debug") as process:
            port = url_port(process.url)
            client = await RawClient.handshake(port)
            try:
                await client.send_frame(CLOSE, struct.pack("!H", 1000) + FORGED_REASON.encode())
                frames = await client.read_until_gone()
            finally:
                await client.aclose()
            assert [frame.close_code for frame in frames] == [1000]
            await process.read_stderr_until(rf"client 127\.0\.0\.1:{client.port} connection ended")
            for request in HOSTILE_REQUESTS:
                await refused(port, request)
            stderr = await stop(process)
    for line in log_lines(stderr):
        assert LOG_LINE.match(line), ascii(line)
        assert line.isprintable(), ascii(line)
        assert len(line) <= 500, line[:300]
    reason = r"\r\nclient 1.2.3.4:5 connected (9 clients)\x1b]0;pwned\x07\x1b[2J\u2028\u202e"
    assert f"client 127.0.0.1:{client.port} connection ended with 1000 ({reason})" in stderr
    assert stderr.count(": DEBUG: bad request from 127.0.0.1:") == 3, stderr
    assert ": INFO: refused 127.0.0.1:" in stderr


async def test_the_token_never_reaches_the_log(tmp_path: Path) -> None:
    token = "s3cret-" + os.urandom(8).hex()
    (tmp_path / "token").write_text(token + "\n")
    upgrade = (
        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    requests = [
        f"GET /?token={token}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /?x=1&%74oken={token}#\x1b HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer {token}\r\n\r\n",
        f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization\x01: Token {token}\r\n\r\n",
        f"GET /?token={token} HTTP/1.1\r\n{upgrade}Origin: https://evil.example\r\n\r\n",
        f"POST /?token={token} HTTP/1.1\r\n{upgrade}Authorization: Bearer {token}\r\n\r\n",
    ]
    with trio.fail_after(10):
        async with running_command(
            *("--log-level", "debug", "--token-file", str(tmp_path / "token")),
            *("--allowed-origin", "https://a.example"),
        ) as process:
            for request in requests:
                await refused(url_port(process.url), request.encode())
            headers = {"Authorization": f"Bearer {token}"}
            async with ws(f"{process.url}?token={token}", additional_headers=headers) as client:
                await echoes(client, "let in")
            stderr = await stop(process)
    assert token not in stderr, stderr
    assert stderr.count(": DEBUG: bad request from 127.0.0.1:") == 4, stderr
    assert stderr.count(": INFO: refused 127.0.0.1:") == 2, stderr
    assert ": INFO: client 127.0.0.1:" in stderr, stderr
