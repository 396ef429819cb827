"""The installed command starting up: the ``listening on`` line and ``--port 0``,
``--version`` (also as ``python -m trio_broadcast``), bad option values, and
start-up errors that are one clear line (a port in use, a privileged port).

End to end, against the installed command (helpers in :mod:`tests.e2e`).
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest
import trio

import trio_broadcast
from trio_broadcast.cli import FULL_COLLECTION_EVERY, _collector_for_a_server, main

from .conftest import COMMAND, running_command
from .e2e import (
    PROG,
    echoes,
    exited,
    one_error_line,
    run_command,
    stop,
    ws,
)

pytestmark = pytest.mark.e2e


async def test_listening_line_shows_the_real_port() -> None:
    with trio.fail_after(10):
        async with running_command("--port", "0") as process:
            match = await process.read_stderr_until(r"listening on ws://127\.0\.0\.1:(\d+)/")
            port = int(match[1])
            assert port != 0
            assert process.url == f"ws://127.0.0.1:{port}/"
            async with ws(f"ws://127.0.0.1:{port}/") as client:
                await echoes(client, "the port works")
            await stop(process)


@pytest.mark.parametrize(
    "command",
    [[str(COMMAND)], [sys.executable, "-m", "trio_broadcast"]],
    ids=["command", "python-m"],
)
async def test_version(command: list[str]) -> None:
    with trio.fail_after(10):
        result = await trio.run_process(
            [*command, "--version"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
        )
    assert result.stdout.decode() == f"{PROG} {trio_broadcast.__version__}\n"
    assert trio_broadcast.__version__ not in ("", "0+unknown")
    assert result.stderr == b""


BAD_OPTIONS = [
    (["--port", "65536"], "--port"),
    (["--port", "-1"], "--port"),
    (["--queue-size", "0"], "--queue-size"),
    (["--on-full", "block"], "--on-full"),
    (["--history", "-1"], "--history"),
    (["--max-clients", "many"], "--max-clients"),
    (["--max-message-size", "1.5"], "--max-message-size"),
    (["--max-line-size", "0"], "--max-line-size"),
    (["--ping-interval", "nan"], "--ping-interval"),
    (["--ping-interval", "-1"], "--ping-interval"),
    (["--handshake-timeout", "0"], "--handshake-timeout"),
    (["--log-level", "verbose"], "--log-level"),
    (["--certfile", "cert.pem"], "--keyfile"),
    (["--keyfile", "key.pem"], "--certfile"),
    (["--no-such-option"], "--no-such-option"),
]


async def test_bad_option_values_exit_2_with_one_clear_line() -> None:
    """Each case in its own process, all at once (each is mostly interpreter start-up)."""
    results: dict[int, subprocess.CompletedProcess[bytes]] = {}

    async def run_case(index: int, args: list[str]) -> None:
        results[index] = await run_command(*args)

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for index, (args, _) in enumerate(BAD_OPTIONS):
                nursery.start_soon(run_case, index, args)
    for index, (args, named) in enumerate(BAD_OPTIONS):
        result = results[index]
        stderr = result.stderr.decode()
        assert result.returncode == 2, (args, stderr)
        assert named in one_error_line(stderr), (args, stderr)
        assert stderr.splitlines()[-1].startswith(f"{PROG}: error:"), (args, stderr)
        assert "listening" not in stderr, args
        assert result.stdout == b"", args


async def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with trio.fail_after(10):
            async with running_command("--port", str(port), wait_listening=False) as process:
                code, stderr = await exited(process)
    assert code == 1, stderr
    assert stderr.splitlines() == [one_error_line(stderr)]
    assert f"127.0.0.1:{port}" in stderr
    assert "address already in use" in stderr


def test_the_server_runs_with_fewer_full_collections() -> None:
    """While the server runs, start-up's objects are frozen and full collections are rarer."""
    before = gc.get_threshold()
    with _collector_for_a_server():
        assert gc.get_freeze_count() > 0
        now = gc.get_threshold()
        assert now[:2] == before[:2]
        if before[2]:  # 0: an incremental collector (3.14), which has no threshold2
            assert now[2] == FULL_COLLECTION_EVERY
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_callers_frozen_objects_stay_frozen() -> None:
    """``main()`` in a process that froze objects of its own leaves them frozen."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with _collector_for_a_server():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_main_leaves_the_collector_as_it_found_it() -> None:
    """``main()`` sets the collector up for the server's life (freezing start-up's
    objects, rarer full collections), and only for it.

    In-process, as a caller of ``main()`` runs it: a start-up failure returns 1,
    and the caller's own objects must still be collectable afterwards.
    """
    root, coredis = logging.getLogger(), logging.getLogger("coredis")
    handlers, root_level, coredis_level = root.handlers[:], root.level, coredis.level
    try:
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            port = blocker.getsockname()[1]
            assert gc.get_freeze_count() == 0
            thresholds = gc.get_threshold()
            assert main(["--host", "127.0.0.1", "--port", str(port), "--no-stdin"]) == 1
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == thresholds
    finally:
        root.handlers[:] = handlers  # main() set logging up for the process
        root.setLevel(root_level)
        coredis.setLevel(coredis_level)


async def test_privileged_port_is_one_clear_line() -> None:
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is not available to drop privileges")
        prefix = (setpriv, "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    with trio.fail_after(10):
        probe = await trio.run_process(
            [
                *prefix,
                sys.executable,
                "-c",
                "import socket; socket.socket().bind(('127.0.0.1', 80))",
            ],
            capture_stderr=True,
            check=False,
        )
        if b"PermissionError" not in probe.stderr:
            pytest.skip(f"binding port 80 is not refused here: {probe.stderr.decode()[-200:]}")
        result = await run_command("--host", "127.0.0.1", "--port", "80", prefix=prefix)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert stderr.splitlines() == [one_error_line(stderr)]
    assert "127.0.0.1:80" in stderr
    assert "permission denied" in stderr
