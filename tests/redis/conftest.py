"""A real ``redis-server`` for the Redis tests: one per test, on a free loopback port.

No mocks: the adapter, the publisher and the reader are tested against the
server they will meet in production. The fixture starts ``redis-server`` without
persistence in the test's temporary directory, waits until it answers ``PING``,
and stops it afterwards. :meth:`RedisServer.stop` and :meth:`RedisServer.start`
let a fault test take it away and bring it back on the same port. Without
``redis-server`` or ``coredis`` the tests are skipped, saying why; the nox
session ``redis`` installs both.
"""

from __future__ import annotations

import gc
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            # -NOAUTH: it is up, and wants a password (--requirepass).
            return connection.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``, stoppable and restartable on that port."""

    def __init__(self, executable: str, directory: Path) -> None:
        self._executable = executable
        self.directory = directory
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        """Start it and wait (bounded) until it answers ``PING``."""
        assert self._process is None
        log = (self.directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                self._executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                output = (self.directory / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{output}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL); without persistence its data is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(REDIS_SERVER, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _collect_coredis_leftovers() -> Iterator[None]:
    """Collect what coredis leaves to the garbage collector, without its warnings.

    coredis 6 does not close a connection's anyio memory streams when the
    connection never got going (refused, bad credentials); their ``__del__``
    warns, which ``filterwarnings = error`` would turn into a failure of
    whichever test happens to trigger the collection.
    """
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
