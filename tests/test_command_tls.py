"""TLS, end to end: ``--certfile``/``--keyfile`` serve ``wss://``; a client that
does not trust the certificate, plain HTTP and a connection that never starts
TLS are dropped; a bad, missing or mismatched certificate or key is one clear line.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio

from .conftest import running_command
from .e2e import (
    echoes,
    local_port,
    one_error_line,
    recv_text,
    run_command,
    seen_connected,
    stop,
    url_port,
    ws,
)
from .wire import RawClient

pytestmark = pytest.mark.e2e


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            openssl,
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=False,
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr.decode()[-300:]}")
    return str(cert), str(key)


async def test_tls_serves_wss(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    context = ssl.create_default_context(cafile=cert)
    with trio.fail_after(10):
        async with running_command(
            *("--certfile", cert, "--keyfile", key, "--handshake-timeout", "0.5")
        ) as process:
            assert process.url.startswith("wss://127.0.0.1:")
            async with ws(process.url, ssl=context) as client:
                await seen_connected(process, local_port(client))
                await process.write(b"over TLS\n")
                assert await recv_text(client) == "over TLS"
                await echoes(client, "echo over TLS")
                await echoes(client, b"\x00binary over TLS")
            # A client that does not trust the certificate is refused; the server goes on.
            with pytest.raises(trio.BrokenResourceError) as refused:
                async with ws(process.url, ssl=ssl.create_default_context()):
                    pass
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            # Plain HTTP, and a TCP connection that never starts TLS, are dropped.
            port = url_port(process.url)
            plain = await RawClient.open(port)
            idle = await RawClient.open(port)
            try:
                await plain.stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert await plain.read_to_end() == b""
                started = trio.current_time()
                assert await idle.read_to_end() == b""
                assert trio.current_time() - started < 2.5  # --handshake-timeout 0.5
            finally:
                await plain.aclose()
                await idle.aclose()
            async with ws(process.url, ssl=context) as client:
                await echoes(client, "still serving")
            await stop(process)


@pytest.mark.parametrize("problem", ["missing", "not-pem"])
async def test_bad_certificate_is_one_clear_line(tmp_path: Path, problem: str) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    if problem == "not-pem":
        cert.write_text("this is not a certificate\n")
        key.write_text("this is not a key\n")
    with trio.fail_after(10):
        result = await run_command(
            "--host", "127.0.0.1", "--port", "0", "--certfile", str(cert), "--keyfile", str(key)
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    line = one_error_line(stderr)
    assert stderr.splitlines() == [line]
    assert str(cert) in line
    if problem == "missing":
        assert "No such file or directory" in line


async def test_mismatched_key_is_one_clear_line(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, _ = certificate
    other_key = tmp_path / "other-key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-out", str(other_key)],
        check=True,
        capture_output=True,
    )
    with trio.fail_after(10):
        result = await run_command(
            *("--host", "127.0.0.1", "--port", "0"),
            *("--certfile", cert, "--keyfile", str(other_key)),
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    line = one_error_line(stderr)
    assert stderr.splitlines() == [line]
    assert cert in line
    assert str(other_key) in line


async def test_missing_key_names_the_key(tmp_path: Path, certificate: tuple[str, str]) -> None:
    cert, _ = certificate
    missing_key = tmp_path / "no-such-key.pem"
    with trio.fail_after(10):
        result = await run_command(
            *("--host", "127.0.0.1", "--port", "0"),
            *("--certfile", cert, "--keyfile", str(missing_key)),
        )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    line = one_error_line(stderr)
    assert stderr.splitlines() == [line]
    assert str(missing_key) in line, line
