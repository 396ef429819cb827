#!/usr/bin/env python3
"""The soak: many connect-receive-disconnect cycles against one server (``nox -s soak``).

    python bench/soak.py [--quick] [--cycles N] [--concurrency N] [--out FILE]

One ``trio-broadcast --history 1`` runs on 127.0.0.1 (pinned to core 0) with
one line on its standard input, so every client that connects receives that
line at once. ``--concurrency`` clients at a time then each: connect, complete
the handshake, receive the line, and leave, in turn in one of three ways: a
clean close handshake, a FIN without a close frame, or a TCP reset.

After a warm-up (the first cycles fill Python's allocator and Trio's caches)
the server's descriptors, resident memory and live Trio tasks are read
(``bench/probe.py``), and again once every cycle has ended and the server has
let go of every connection. The run fails if a cycle failed, if a descriptor
or a task was left behind, or if resident memory grew by more than
:data:`RSS_MARGIN_KB`. A reading is printed every tenth of the run, so a slow
leak shows as a trend. ``--quick`` (5,000 cycles) is the short form CI runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import probe
import trio
from run import (
    BENCH,
    RESULTS,
    SERVER_CORE,
    BenchError,
    Child,
    free_port,
    setup_pinning,
    wait_for_port,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.wire
from tests.wire import trio_broadcast_command, upgrade_request

HOST = "127.0.0.1"
LOGS = BENCH / ".logs" / "soak"
LINE = b"the line every client receives\n"
FULL_CYCLES, QUICK_CYCLES = 100_000, 5_000
WARMUP = 2_000
CONCURRENCY = 16
RSS_MARGIN_KB = 4096
"""Resident memory may end this much above the warmed-up start: allocator
slack, not a leak (a leak of even 100 bytes a cycle would be 10 MB here)."""
CYCLE_TIMEOUT = 10.0
RUN_TIMEOUT = 1800.0
ENDINGS = ("close handshake", "FIN, no close frame", "TCP reset")


CLOSE_1000 = bytes([0x88, 0x82, 0, 0, 0, 0]) + struct.pack("!H", 1000)  # zero mask


async def cycle(port: int, ending: int) -> str | None:
    """One client's life; ``None`` if all went as it should, else what did not."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.connect((HOST, port))
        await sock.send(upgrade_request(host=f"{HOST}:{port}"))
        data = b""
        expected = LINE.rstrip(b"\n")
        # 101 head, then the history line in one small unmasked text frame.
        while not (b"\r\n\r\n" in data and data.endswith(expected)):
            chunk = await sock.recv(4096)
            if not chunk:
                return f"closed early: {data[:40]!r}"
            data += chunk
        if not data.startswith(b"HTTP/1.1 101 "):
            return f"refused: {data[:40]!r}"
        if ending == 0:
            await sock.send(CLOSE_1000)
            while await sock.recv(4096):  # the server's close frame, then its FIN
                pass
        elif ending == 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    finally:
        sock.close()
    return None


async def soak(
    port: int, cycles: int, concurrency: int, on_progress: Any
) -> tuple[Counter[str], int]:
    """Run ``cycles`` cycles, ``concurrency`` at a time, within :data:`RUN_TIMEOUT`.

    Returns the failures by kind and how many cycles ended.
    """
    failures: Counter[str] = Counter()
    started = 0
    done = 0
    step = max(1, cycles // 10)

    async def worker() -> None:
        nonlocal started, done
        while started < cycles:
            n = started
            started += 1
            with trio.move_on_after(CYCLE_TIMEOUT) as bounded:
                problem = await cycle(port, n % len(ENDINGS))
            if bounded.cancelled_caught:
                problem = f"no end within {CYCLE_TIMEOUT:g} s"
            if problem is not None:
                failures[problem[:80]] += 1
            done += 1
            if done % step == 0:
                on_progress(done)

    with trio.move_on_after(RUN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
    return failures, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CYCLES:,} cycles (CI)")
    parser.add_argument("--cycles", type=int, help=f"default {FULL_CYCLES:,}")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    args = parser.parse_args(argv)
    cycles = args.cycles or (QUICK_CYCLES if args.quick else FULL_CYCLES)
    command = trio_broadcast_command()
    if command is None:
        print("the trio-broadcast command is not installed next to this Python")
        return 1
    log_dir = LOGS / time.strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"soak: {cycles:,} cycles, {args.concurrency} at a time, after {WARMUP:,} to warm up; "
        f"logs: {log_dir}",
        flush=True,
    )
    began = time.monotonic()
    result = run(command, log_dir, cycles, args.concurrency)
    result["run_seconds"] = round(time.monotonic() - began, 1)
    failed = verdict(result)
    result["failed"] = failed
    out = args.out or RESULTS / f"soak{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    print(
        f"{cycles:,} cycles in {result['seconds']:.0f} s ({result['cycles_per_s']}/s); "
        f"RSS {result['rss_growth_kb'] / 1024:+.1f} MiB; "
        + ("FAILED: " + "; ".join(failed) if failed else "all checks passed")
        + f" (results: {out})"
    )
    return 1 if failed else 0


def run(command: str, log_dir: Path, cycles: int, concurrency: int) -> dict[str, Any]:
    """Start the server, warm up, soak, and read it before and after."""
    pinning = setup_pinning()  # this harness, its clients included, on the other core
    port = free_port()
    argv = [
        *pinning.prefix(SERVER_CORE),
        command,
        *("--host", HOST, "--port", str(port), "--history", "1"),
    ]
    server = Child("soak-server", argv, log_dir, events=False, env=dict(os.environ))
    try:
        wait_for_port(port, server)
        server.stdin.write(LINE)
        warm, _ = trio.run(soak, port, WARMUP, concurrency, lambda done: None)
        if warm:
            raise BenchError(f"the warm-up failed: {dict(warm)}")
        start = probe.settled(server.pid, port)
        trend: list[dict[str, Any]] = []
        began = time.monotonic()

        def progress(done: int) -> None:
            reading = probe.read(server.pid, port)
            rate = done / (time.monotonic() - began)
            trend.append({"cycles": done, **asdict(reading)})
            print(
                f"  {done:>7,} cycles  {rate:6.0f}/s  fds {reading.fds:3}  "
                f"RSS {reading.rss_kb / 1024:6.1f} MiB  tasks {reading.tasks:3}",
                flush=True,
            )

        failures, done = trio.run(soak, port, cycles, concurrency, progress)
        seconds = time.monotonic() - began
        end = probe.settled(server.pid, port)
        server.stop()
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
    return {
        "cycles": cycles,
        "cycles_ended": done,
        "concurrency": concurrency,
        "seconds": round(seconds, 1),
        "cycles_per_s": round(done / seconds),
        "failures": dict(failures),
        "start": asdict(start),
        "end": asdict(end),
        "rss_growth_kb": end.rss_kb - start.rss_kb,
        "rss_margin_kb": RSS_MARGIN_KB,
        "tracebacks": log.count("Traceback (most recent call last)"),
        "trend": trend,
    }


def verdict(r: dict[str, Any]) -> list[str]:
    """What went wrong, one phrase each; empty if nothing did."""
    start, end, failed = r["start"], r["end"], []
    if r["cycles_ended"] < r["cycles"]:
        failed.append(f"only {r['cycles_ended']:,} cycles ended within {RUN_TIMEOUT:g} s")
    if r["failures"]:
        failed.append(f"{sum(r['failures'].values())} cycles failed: {r['failures']}")
    for what, key in (("descriptors", "fds"), ("Trio tasks", "tasks")):
        if end[key] != start[key]:
            failed.append(f"{what} {start[key]} -> {end[key]}")
    if end["open_connections"] != 0:
        failed.append(f"{end['open_connections']} connections still open")
    if r["rss_growth_kb"] > RSS_MARGIN_KB:
        failed.append(f"RSS grew by {r['rss_growth_kb'] / 1024:.1f} MiB")
    if r["tracebacks"]:
        failed.append(f"{r['tracebacks']} tracebacks in the server log")
    return failed


def render(r: dict[str, Any]) -> str:
    start, end = r["start"], r["end"]
    return (
        "\n| | after warm-up | at the end | limit |\n|---|---|---|---|\n"
        f"| file descriptors | {start['fds']} | {end['fds']} | equal |\n"
        f"| Trio tasks | {start['tasks']} | {end['tasks']} | equal |\n"
        f"| RSS | {start['rss_kb'] / 1024:.1f} MiB | {end['rss_kb'] / 1024:.1f} MiB "
        f"| +{RSS_MARGIN_KB / 1024:.0f} MiB |\n"
        f"| open connections | {start['open_connections']} | {end['open_connections']} | 0 |\n"
    )


if __name__ == "__main__":
    sys.exit(main())
