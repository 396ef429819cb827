#!/usr/bin/env python3
"""What a line costs each process on the Redis path, at a steady rate (issue 15).

    python bench/redis_cost.py [--rate 1000] [--seconds 8] [--instances 1]
                               [--no-references] [--read-cost]

A redis-server (no persistence), ``--instances`` serving instances
(``--no-stdin``, no clients) and one publisher that reads this script's lines
(64 bytes, ``--rate`` a second, spread evenly). The publisher has core 0 to
itself; redis-server and the instances share core 1 (with this script, which
mostly sleeps). After a second of warm-up it reads ``/proc/PID/stat`` over
``--seconds`` and prints each process's user and system CPU as a percentage
of a core, and per line how many times it went to sleep (voluntary context
switches in ``/proc/PID/status``: waiting for input) and how many times it
was preempted (involuntary ones: another process took the core), then how
busy each core was (``/proc/stat``: whatever ran on it), then Redis's
``INFO commandstats`` (``EVAL`` and ``XREAD`` calls per line appended). A
core more than 80 % busy is flagged: its processes waited for it, and lines
gathered meanwhile, so their figures are not the cost of a line on its own.
(R1 puts all of these on one core, where at 1,000 lines/s they fill it.)

Before that, in the same run and fed the same way, two references, each alone
on core 0 as the publisher is: the same ``trio-broadcast`` without ``--redis`` (what reading
and publishing the input costs with no Redis path at all), and a bare Trio
program that reads the pipe and does nothing else (:data:`TRIO_READER`: the
least any Trio process that wakes for each line can use). The publisher is
printed as a ratio to both. ``--no-references`` skips them.

``--read-cost`` measures something else, in this process, with no Redis: the
client CPU a reader spends per line to parse (the read's own parser,
:class:`trio_broadcast.redis_stream.resp.ReplyParser`, with coredis's compiled
parser, which the read used before, beside it) and decode
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

from run import CLOCK_TICKS, HOST, core_busy, free_port

LINE = b"x" * 63 + b"\n"
TRIO_READER = """
import os, trio
async def main():
    stdin = trio.lowlevel.FdStream(os.dup(0))
    while await stdin.receive_some(65536):
        pass
trio.run(main)
"""
"""The floor: a Trio task that reads standard input, chunk by chunk, and drops it."""


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
    """What a process used: CPU seconds, and how often it left the core."""

    user: float
    system: float
    sleeps: int
    """Voluntary context switches: each is a wait for input."""
    preempted: int
    """Involuntary context switches: each is another process taking the core."""

    def __sub__(self, other: object) -> Usage:
        assert isinstance(other, Usage)
        return Usage(
            self.user - other.user,
            self.system - other.system,
            self.sleeps - other.sleeps,
            self.preempted - other.preempted,
        )


def usage(pid: int) -> Usage:
    """``pid``'s CPU seconds and context switches so far.

    CPU is the whole process's; the switches are its main thread's (``status``
    counts them per thread), which is where a Trio program runs: reading a pipe
    takes no worker thread.
    """
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    switches: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key.endswith("ctxt_switches"):
                switches[key] = int(value)
    return Usage(
        int(fields[11]) / CLOCK_TICKS,
        int(fields[12]) / CLOCK_TICKS,
        switches["voluntary_ctxt_switches"],
        switches["nonvoluntary_ctxt_switches"],
    )


def pinned(*argv: str, core: int = 0) -> list[str]:
    """``argv`` run on ``core`` only (when ``taskset`` and a second core are there)."""
    taskset = shutil.which("taskset")
    if taskset and (os.cpu_count() or 1) > 1:
        return [taskset, "-c", str(core), *argv]
    return [*argv]


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
) -> tuple[dict[str, Usage], int, float, dict[str, float]]:
    """Feed ``fed`` a second of warm-up, then ``args.seconds``: what each process used,
    the lines fed, the seconds, and how busy each core was meanwhile (``/proc/stat``,
    whatever ran on it), in %."""
    feed(fed.stdin, args.rate, 1.0)
    before = {name: usage(child.pid) for name, child in names.items()}
    cores_before = core_busy()
    began = time.monotonic()
    lines = feed(fed.stdin, args.rate, args.seconds)
    seconds = time.monotonic() - began
    cores = {
        core: 100 * (busy - cores_before[core][0]) / max(1, total - cores_before[core][1])
        for core, (busy, total) in core_busy().items()
    }
    after = {name: usage(child.pid) for name, child in names.items()}
    return {name: after[name] - before[name] for name in names}, lines, seconds, cores


def report(name: str, used: Usage, lines: int, seconds: float) -> float:
    """Print ``name``'s line; its total CPU as a percentage of a core."""
    user, system = 100 * used.user / seconds, 100 * used.system / seconds
    print(
        f"  {name:16s} user {user:5.1f}   system {system:5.1f}   total {user + system:5.1f}"
        f"   per line: slept {used.sleeps / lines:4.2f}, preempted {used.preempted / lines:4.2f}"
    )
    return user + system


def stop(child: subprocess.Popen[bytes]) -> None:
    """End ``child``: ``SIGTERM``, then ``SIGKILL`` if it is still there 10 s later."""
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def references(command: Path, quiet: list[str], args: argparse.Namespace) -> dict[str, float]:
    """The two references of the module docstring, one after the other, each alone on core 0."""
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
            used, lines, seconds, _cores = measured({name: child}, child, args)
        finally:
            stop(child)
        shares[name] = report(name, used[name], lines, seconds)
    return shares


def read_cost(lines: int = 1000, rounds: int = 200) -> None:
    """Print the per-line cost of reading ``lines`` lines as one-line entries and as one entry."""
    from coredis.parser import Parser  # noqa: PLC0415 (the redis extra; only this mode needs it)

    from trio_broadcast.redis_stream.entries import decode_entries  # noqa: PLC0415
    from trio_broadcast.redis_stream.resp import ReplyParser  # noqa: PLC0415

    line = LINE.rstrip(b"\n")

    def bulk(data: bytes) -> bytes:
        return b"$%d\r\n%s\r\n" % (len(data), data)

    def entry(seq: int, fields: list[bytes]) -> bytes:
        head = b"*2\r\n" + bulk(b"1700000000000-%d" % seq) + b"*%d\r\n" % len(fields)
        return head + b"".join(bulk(field) for field in fields)

    def reply(entries: list[bytes]) -> bytes:
        return b"*1\r\n*2\r\n" + bulk(b"key") + b"*%d\r\n" % len(entries) + b"".join(entries)

    def parse(data: bytes) -> Any:
        """The entries, as the read parses them (:class:`ReplyParser`, ours)."""
        parser = ReplyParser()
        parser.feed(data)
        return parser.next_reply()[0][1]  # type: ignore[index]

    def parse_coredis(data: bytes) -> Any:
        """The same, with coredis's (compiled) parser, which the read used before."""
        parser = Parser()
        parser.feed(data)
        return parser.parse(decode=False)[1][0][1]  # type: ignore[index]

    one_per_line = reply([entry(seq, [b"line", line]) for seq in range(lines)])
    one_entry = reply([entry(lines - 1, [b"lines", b"\n".join([line] * lines)])])
    identifier, (_name, batch) = parse(one_entry)[0]

    def split_and_name() -> tuple[list[str], list[str]]:
        """What a reader would do with the batch: its lines, and an ID for each."""
        batched = batch.decode("utf-8", errors="replace").split("\n")
        ms, _, last = identifier.decode("ascii").partition("-")
        first = int(last) - len(batched) + 1
        return batched, [f"{ms}-{first + k}" for k in range(len(batched))]

    def per_line(call: Callable[[], object]) -> float:
        return timeit.timeit(call, number=rounds) / rounds / lines * 1e6

    print(f"reading {lines} lines of {len(line)} bytes, client CPU per line:")
    print(
        f"  {lines} one-line entries: parse {per_line(lambda: parse(one_per_line)):.2f} µs,"
        f" decode {per_line(partial(decode_entries, parse(one_per_line))):.2f} µs"
        f" (coredis's parser: {per_line(lambda: parse_coredis(one_per_line)):.2f} µs)"
    )
    print(
        f"  one entry of {lines} lines: parse {per_line(lambda: parse(one_entry)):.2f} µs,"
        f" split and name {per_line(split_and_name):.2f} µs"
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
                pinned(redis_server, "--port", str(redis_port), "--bind", HOST, *no_files, core=1),
                stdout=subprocess.DEVNULL,
            )
            children.append(redis)
            wait_for_port(redis_port, redis)
            url = f"redis://{HOST}:{redis_port}/0"
            names = {"redis-server": redis}
            for n in range(args.instances):
                port = free_port()
                instance = subprocess.Popen(
                    pinned(
                        str(command),
                        "--port",
                        str(port),
                        "--redis",
                        url,
                        "--no-stdin",
                        *quiet,
                        core=1,
                    )
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
            used, lines, seconds, cores = measured(names, publisher, args)
            stats = subprocess.run(
                ["redis-cli", "-p", str(redis_port), "INFO", "commandstats"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
        finally:
            for child in reversed(children):
                stop(child)
    print(f"{args.rate} lines/s for {seconds:.1f} s ({lines} lines), % of a core:")
    totals = {name: report(name, used[name], lines, seconds) for name in names}
    for core, busy in cores.items():
        full = "  (nearly full: these figures include waiting for it)" if busy > 80 else ""
        print(f"  {core}: {busy:5.1f} % busy{full}")
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
