#!/usr/bin/env python3
"""What a line costs each process on the Redis path, at a steady rate (issue 15).

    python bench/redis_cost.py [--rate 1000] [--seconds 8] [--instances 1]

A redis-server (no persistence), ``--instances`` serving instances
(``--no-stdin``, no clients) and one publisher that reads this script's lines
(64 bytes, ``--rate`` a second, spread evenly), all pinned to core 0 as
``run.py`` pins its R scenarios. After a second of warm-up it reads
``/proc/PID/stat`` over ``--seconds`` and prints each process's user and
system CPU as a percentage of a core, then Redis's ``INFO commandstats``
(``EVAL`` and ``XREAD`` calls per line appended). Unlike R1 it leaves the core
idle most of the time, so lines do not gather while a process waits for the
core: this is the cost per line when each line is a batch of its own.

The ``trio-broadcast`` command is the one beside this Python (the venv's), so
a before/after comparison runs this script with each venv. Run it while
nothing else is measuring (``flock /work/notes/bench.lock`` on the shared
benchmark machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"
LINE = b"x" * 63 + b"\n"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited at start")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port} after {timeout:g} s")


def cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def pinned(*argv: str) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", "0", *argv] if taskset and (os.cpu_count() or 1) > 1 else [*argv]


def feed(stdin: IO[bytes] | None, rate: int, seconds: float) -> int:
    """Write ``rate`` lines a second for ``seconds``, in time; the number written."""
    assert stdin is not None
    began = time.monotonic()
    written = 0
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate)
        if due > written:
            stdin.write(LINE * (due - written))
            stdin.flush()
            written = due
        time.sleep(max(0.0, (written + 1) / rate - (time.monotonic() - began)))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="lines a second (default 1000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured (default 8)")
    parser.add_argument("--instances", type=int, default=1, help="serving instances (default 1)")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    command = Path(sys.executable).parent / "trio-broadcast"
    if redis_server is None or not command.exists():
        raise SystemExit("needs redis-server on PATH and trio-broadcast beside this Python")
    quiet = ["--log-level", "warning", "--host", HOST]
    with tempfile.TemporaryDirectory(prefix="redis-cost-") as directory:
        children: list[subprocess.Popen[bytes]] = []
        try:
            redis_port = free_port()
            no_files = ("--dir", directory, "--save", "", "--appendonly", "no")
            redis = subprocess.Popen(
                pinned(redis_server, "--port", str(redis_port), "--bind", HOST, *no_files),
                stdout=subprocess.DEVNULL,
            )
            children.append(redis)
            wait_for_port(redis_port, redis)
            url = f"redis://{HOST}:{redis_port}/0"
            names = {"redis-server": redis}
            for n in range(args.instances):
                port = free_port()
                instance = subprocess.Popen(
                    pinned(str(command), "--port", str(port), "--redis", url, "--no-stdin", *quiet)
                )
                children.append(instance)
                names[f"instance {n + 1}"] = instance
                wait_for_port(port, instance)
            port = free_port()
            publisher = subprocess.Popen(
                pinned(str(command), "--port", str(port), "--redis", url, *quiet),
                stdin=subprocess.PIPE,
            )
            children.append(publisher)
            names["publisher"] = publisher
            wait_for_port(port, publisher)
            feed(publisher.stdin, args.rate, 1.0)
            before = {name: cpu(child.pid) for name, child in names.items()}
            began = time.monotonic()
            lines = feed(publisher.stdin, args.rate, args.seconds)
            seconds = time.monotonic() - began
            after = {name: cpu(child.pid) for name, child in names.items()}
            stats = subprocess.run(
                ["redis-cli", "-p", str(redis_port), "INFO", "commandstats"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        finally:
            for child in reversed(children):
                child.terminate()
            for child in children:
                child.wait(timeout=10)
    print(f"{args.rate} lines/s for {seconds:.1f} s ({lines} lines), % of a core:")
    for name in names:
        user = after[name][0] - before[name][0]
        system = after[name][1] - before[name][1]
        print(
            f"  {name:12s} user {100 * user / seconds:5.1f}   system {100 * system / seconds:5.1f}"
            f"   total {100 * (user + system) / seconds:5.1f}"
        )
    calls = {
        line.split(":")[0].removeprefix("cmdstat_"): int(line.split("calls=")[1].split(",")[0])
        for line in stats.splitlines()
        if line.startswith("cmdstat_")
    }
    appended = lines + args.rate  # the warm-up second too: commandstats counts from the start
    print(
        "  per line appended: "
        + ", ".join(
            f"{calls.get(name, 0) / appended:.2f} {name.upper()}" for name in ("eval", "xread")
        )
    )


if __name__ == "__main__":
    main()
