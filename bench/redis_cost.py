#!/usr/bin/env python3
"""What a line costs each process on the Redis path, at a steady rate (issue 15).

    python bench/redis_cost.py [--rate 1000] [--seconds 8] [--instances 1]

A redis-server (no persistence), ``--instances`` serving instances
(``--no-stdin``, no clients) and one publisher that reads this script's lines
(64 bytes, ``--rate`` a second, spread evenly), all pinned to core 0 as
``run.py`` pins its R scenarios. After a second of warm-up it reads
``/proc/PID/stat`` over ``--seconds`` and prints each process's user and
system CPU as a percentage of a core, and how many times it woke per line
(voluntary context switches in ``/proc/PID/status``), then Redis's ``INFO commandstats``
(``EVAL`` and ``XREAD`` calls per line appended). Unlike R1 it leaves the core
idle most of the time, so lines do not gather while a process waits for the
core: this is the cost per line when each line is a batch of its own.

Before that, in the same run and fed the same way, two references, each alone
on the core: the same ``trio-broadcast`` without ``--redis`` (what reading
and publishing the input costs with no Redis path at all), and a bare Trio
program that reads the pipe and does nothing else (:data:`TRIO_READER`: the
least any Trio process that wakes for each line can use). The publisher is
printed as a ratio to both. ``--no-references`` skips them.

``--read-cost`` measures something else, in this process, with no Redis: the
client CPU a reader spends per line to parse (coredis's parser) and decode
(:func:`trio_broadcast.redis_stream.decode_entries`) an ``XREAD`` reply of
1,000 entries of one line each, as the stream holds them today, against one
entry holding the same 1,000 lines (a batch per entry, which the stream does
not do: the figure says what that layout would save).

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
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any, NamedTuple

HOST = "127.0.0.1"
LINE = b"x" * 63 + b"\n"
TICKS = os.sysconf("SC_CLK_TCK")
TRIO_READER = """
import os, trio
async def main():
    stdin = trio.lowlevel.FdStream(os.dup(0))
    while await stdin.receive_some(65536):
        pass
trio.run(main)
"""
"""The floor: a Trio task that reads standard input, chunk by chunk, and drops it."""


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


class Usage(NamedTuple):
    """What a process used: CPU seconds, and how many times it went to sleep."""

    user: float
    system: float
    sleeps: int
    """Voluntary context switches: each is a wait for input, so at a steady rate
    their count per line is how many times the process woke for that line."""

    def __sub__(self, other: object) -> Usage:
        assert isinstance(other, Usage)
        return Usage(
            self.user - other.user, self.system - other.system, self.sleeps - other.sleeps
        )


def usage(pid: int) -> Usage:
    """``pid``'s user and system CPU seconds, and voluntary context switches, so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/status") as status:
        sleeps = next(
            int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches")
        )
    return Usage(int(fields[11]) / TICKS, int(fields[12]) / TICKS, sleeps)


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


def measured(
    names: dict[str, subprocess.Popen[bytes]],
    fed: subprocess.Popen[bytes],
    args: argparse.Namespace,
) -> tuple[dict[str, Usage], int, float]:
    """Feed ``fed`` a second of warm-up, then ``args.seconds``: what each process used."""
    feed(fed.stdin, args.rate, 1.0)
    before = {name: usage(child.pid) for name, child in names.items()}
    began = time.monotonic()
    lines = feed(fed.stdin, args.rate, args.seconds)
    seconds = time.monotonic() - began
    after = {name: usage(child.pid) for name, child in names.items()}
    return {name: after[name] - before[name] for name in names}, lines, seconds


def report(name: str, used: Usage, lines: int, seconds: float) -> float:
    """Print ``name``'s line; its total CPU as a percentage of a core."""
    user, system = 100 * used.user / seconds, 100 * used.system / seconds
    print(
        f"  {name:16s} user {user:5.1f}   system {system:5.1f}   total {user + system:5.1f}"
        f"   wakes per line {used.sleeps / lines:4.2f}"
    )
    return user + system


def references(command: Path, quiet: list[str], args: argparse.Namespace) -> dict[str, float]:
    """The two references of the module docstring, one after the other, each alone on the core."""
    print(f"references, {args.rate} lines/s each, % of a core:")
    shares: dict[str, float] = {}
    runs = {
        "without Redis": [str(command), "--port", str(free_port()), *quiet],
        "Trio reader": [sys.executable, "-c", TRIO_READER],
    }
    for name, argv in runs.items():
        child = subprocess.Popen(pinned(*argv), stdin=subprocess.PIPE)
        try:
            if name == "without Redis":
                wait_for_port(int(argv[2]), child)
            used, lines, seconds = measured({name: child}, child, args)
        finally:
            child.terminate()
            child.wait(timeout=10)
        shares[name] = report(name, used[name], lines, seconds)
    return shares


def read_cost(lines: int = 1000, rounds: int = 200) -> None:
    """Print the per-line cost of reading ``lines`` lines as one-line entries and as one entry."""
    from coredis.parser import Parser  # noqa: PLC0415 (the redis extra; only this mode needs it)

    from trio_broadcast.redis_stream.entries import decode_entries  # noqa: PLC0415

    line = LINE.rstrip(b"\n")

    def bulk(data: bytes) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(data), data)

    def entry(seq: int, fields: list[bytes]) -> bytes:
        head = b"*2\r\n" + bulk(b"1700000000000-%d" % seq) + b"*%d\r\n" % len(fields)
        return head + b"".join(bulk(field) for field in fields)

    def reply(entries: list[bytes]) -> bytes:
        return b"*1\r\n*2\r\n" + bulk(b"key") + b"*%d\r\n" % len(entries) + b"".join(entries)

    def parse(data: bytes) -> Any:
        parser = Parser()
        parser.feed(data)
        return parser.parse(decode=False)[1][0][1]  # type: ignore[index]

    one_per_line = reply([entry(seq, [b"line", line]) for seq in range(lines)])
    one_entry = reply([entry(lines - 1, [b"lines", b"\n".join([line] * lines)])])
    batch = parse(one_entry)[0][1][1]

    def per_line(call: Callable[[], object]) -> float:
        return timeit.timeit(call, number=rounds) / rounds / lines * 1e6

    print(f"reading {lines} lines of {len(line)} bytes, client CPU per line:")
    print(
        f"  {lines} one-line entries: parse {per_line(lambda: parse(one_per_line)):.2f} µs,"
        f" decode {per_line(partial(decode_entries, parse(one_per_line))):.2f} µs"
    )
    print(
        f"  one entry of {lines} lines: parse {per_line(lambda: parse(one_entry)):.2f} µs,"
        f" split {per_line(lambda: batch.decode().split(chr(10))):.2f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="lines a second (default 1000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured (default 8)")
    parser.add_argument("--instances", type=int, default=1, help="serving instances (default 1)")
    parser.add_argument(
        "--no-references",
        action="store_true",
        help="skip the two references (without Redis; a bare Trio reader)",
    )
    parser.add_argument(
        "--read-cost",
        action="store_true",
        help="only measure the parse and decode cost per line of a read (no Redis)",
    )
    args = parser.parse_args()
    if args.read_cost:
        read_cost()
        return
    redis_server = shutil.which("redis-server")
    command = Path(sys.executable).parent / "trio-broadcast"
    if redis_server is None or not command.exists():
        raise SystemExit("needs redis-server on PATH and trio-broadcast beside this Python")
    quiet = ["--log-level", "warning", "--host", HOST]
    shares = {} if args.no_references else references(command, quiet, args)
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
            used, lines, seconds = measured(names, publisher, args)
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
    totals = {name: report(name, used[name], lines, seconds) for name in names}
    for name, share in shares.items():
        print(f"  publisher / {name}: {totals['publisher'] / share:.1f} times")
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
