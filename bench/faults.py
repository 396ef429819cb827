#!/usr/bin/env python3
"""The fault storm, the descriptor limit and shutdown under load (``nox -s faults``).

    python bench/faults.py [--quick] [--out FILE]

Four phases, each against a fresh ``trio-broadcast`` on 127.0.0.1 (pinned to
core 0; the Node load generator on core 1, as in ``bench/run.py``):

1. **Storm.** Well-behaved clients (Node, ``bench/loadgen/loadgen.js``)
   receive lines streamed at 1,000/s while misbehaving ones
   (``bench/misbehave.py``, 5 % of all) cycle through nine faults. Checks:
   the well-behaved lose no line and none is disconnected; every misbehaving
   connection ends; the server's descriptors come back to where they started;
   its log has no traceback.
2. **Resume storm.** ``trio-broadcast.v1`` clients (Node,
   ``bench/loadgen/resume.js``) receive 1,000 numbered lines/s; once the
   retention is full, all are reset at once (TCP RST, no close frame), then
   all reconnect at once with ``?since=`` the last ID each parsed. Checks:
   every client ends with the whole feed, each line once and in order (the
   lines before the reset, then those after); no gap notice and no other
   disconnection; all caught up within ``RESUME_CATCH_UP``; the server's RSS
   after the catch-up within ``RESUME_RSS_TOLERANCE`` of its level just before
   the storm; its descriptors and tasks back to their start once all left.
3. **Descriptor limit.** Under ``ulimit -n 256``, 400 clients try to connect:
   the excess get a ``503`` at once, the log says so, and once the first
   clients leave, as many new ones get in.
4. **Shutdown under load.** SIGTERM while the clients receive as fast as the
   server can send (``--on-full drop``, so that none is cut off for falling
   behind first): every client sees 1001 within 2 s, exit status 0, no
   traceback. Then a second SIGTERM, sent once the first has been logged,
   exits at once (143).

Prints one table per phase and exits 1 if any check failed. ``--quick`` is the
short form that CI runs (fewer clients, a shorter storm); full and quick
results go to ``bench/results/faults[-quick].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import probe
from misbehave import BEHAVIOURS
from run import (
    BENCH,
    LOAD_CORE,
    LOADGEN,
    MEASURE_FROM,
    NODE_MODULES,
    RESULTS,
    SERVER_CORE,
    BenchError,
    Child,
    CpuWindow,
    Feeder,
    ensure_node,
    free_port,
    raise_fd_limit,
    rss_kb,
    setup_pinning,
    wait_for_port,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.wire
from tests.wire import trio_broadcast_command

HOST = "127.0.0.1"
LOGS = BENCH / ".logs" / "faults"
LINE_SIZE = 64
PING_INTERVAL = 5.0
"""The storm's keep-alive interval (the default is 20 s): so that half-open
clients are found within the storm."""
FD_LIMIT = 256
FD_ATTEMPTS = 400
CLOSE_WITHIN = 2.0
FLOOD_OPTIONS = ("--on-full", "drop")
"""Under a flood, clients fall behind and the default policy cuts them off (1008)
before the signal comes; with ``drop`` they skip lines instead and stay, so
that every one of them is there to be closed."""


RESUME_CLIENTS = BENCH / "loadgen" / "resume.js"
RESUME_RSS_TOLERANCE = 0.10
"""After the resume storm, once every client has caught up, the server's RSS may
exceed its level just before the storm by this fraction, no more."""
RESUME_CATCH_UP = 30.0
"""Seconds the resume storm's clients have to catch up before it gives up."""


@dataclass(frozen=True)
class Size:
    clients: int
    misbehaving: int
    storm_seconds: float
    shutdown_clients: int
    resume_clients: int
    resume_before_seconds: float
    """Lines flow this long before the reset: long enough to fill the retention."""
    resume_retain: int
    resume_after_seconds: float
    """And this long after every client has caught up, before memory is read again."""
    resume_rate: int = 1000
    """Lines/s during the resume storm (``--resume-rate``): 1,000 for 1,000 clients is a
    million deliveries/s, about what one core serves; the 5,000-client figure runs at 200."""


FULL = Size(
    clients=1000,
    misbehaving=50,
    storm_seconds=30.0,
    shutdown_clients=1000,
    resume_clients=1000,
    resume_before_seconds=12.0,
    resume_retain=10_000,
    resume_after_seconds=5.0,
)
QUICK = Size(
    clients=200,
    misbehaving=10,
    storm_seconds=8.0,
    shutdown_clients=200,
    resume_clients=200,
    resume_before_seconds=3.0,
    resume_retain=2_000,
    resume_after_seconds=2.0,
)

Result = dict[str, Any]


class Checks:
    """The pass/fail lines of a run, printed as they are made."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
        if not ok:
            self.failed.append(what)


class Harness:
    def __init__(self, log_dir: Path, env: dict[str, str], pin: bool) -> None:
        self.log_dir = log_dir
        self.env = env
        self.pin = pin
        command = trio_broadcast_command()
        if command is None:
            raise BenchError("the trio-broadcast command is not installed next to this Python")
        self.command = command

    def prefix(self, core: int) -> list[str]:
        return ["taskset", "-c", str(core)] if self.pin else []

    @contextlib.contextmanager
    def server(self, name: str, *options: str, fd_limit: int | None = None) -> Any:
        port = free_port()
        limit = ["prlimit", f"--nofile={fd_limit}", "--"] if fd_limit is not None else []
        argv = [
            *self.prefix(SERVER_CORE),
            *limit,
            self.command,
            *("--host", HOST, "--port", str(port)),
            *options,
        ]
        child = Child(name, argv, self.log_dir, events=False, env=self.env)
        try:
            wait_for_port(port, child)
            yield child, port
        finally:
            child.stop()

    @contextlib.contextmanager
    def loadgen(self, name: str, port: int, clients: int, max_seconds: float) -> Any:
        config = {
            "url": f"ws://{HOST}:{port}/",
            "clients": clients,
            "mode": "broadcast",
            "parser": "raw",
            "connectConcurrency": 50,
            "connectTimeoutMs": 10_000,
            "maxSeconds": max_seconds,
            "drainMs": 10_000,
            "idleDrainMs": 3_000,
            "measureFrom": MEASURE_FROM,
            "latencyEvery": 1,
        }
        argv = [*self.prefix(LOAD_CORE), "node", str(LOADGEN), json.dumps(config)]
        child = Child(name, argv, self.log_dir, events=True, env=self.env)
        try:
            yield child
        finally:
            child.stop()


def log_text(child: Child) -> str:
    child._log.flush()
    return child.log_path.read_text(errors="replace")


def tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


# ---------------------------------------------------------------- phase 1: the storm

SERVER_ENDINGS = [
    (re.compile(r"client 127\.0\.0\.2:(\d+) (.+?) after [\d.]+ s"), None),
    (re.compile(r"handshake with 127\.0\.0\.2:(\d+) did not complete"), "handshake timed out"),
    (re.compile(r"connection from 127\.0\.0\.2:(\d+) lost: (\w+)"), "lost in the handshake"),
    (re.compile(r"bad request from 127\.0\.0\.2:(\d+)"), "bad request"),
]


def server_endings(text: str) -> dict[int, str]:
    """What the server's log says about each client port, the last word kept."""
    endings: dict[int, str] = {}
    for line in text.splitlines():
        for regex, label in SERVER_ENDINGS:
            match = regex.search(line)
            if match:
                ending = label or match.group(2)
                endings[int(match.group(1))] = ending
    return endings


def storm(h: Harness, size: Size, check: Checks) -> Result:
    good = size.clients - size.misbehaving
    print(
        f"\nstorm: {good} well-behaved + {size.misbehaving} misbehaving clients, "
        f"1,000 lines/s for {size.storm_seconds:g} s, --ping-interval {PING_INTERVAL:g}",
        flush=True,
    )
    options = ("--ping-interval", str(PING_INTERVAL), "--log-level", "debug")
    result: Result = {"clients": size.clients, "misbehaving": size.misbehaving}
    with contextlib.ExitStack() as stack:
        server, port = stack.enter_context(h.server("storm-server", *options))
        start = probe.settled(server.pid, port)
        max_seconds = size.storm_seconds + 120
        loadgen = stack.enter_context(h.loadgen("storm-loadgen", port, good, max_seconds))
        connected = loadgen.read_event("connected", 60)
        misbehave_config = {
            "host": HOST,
            "port": port,
            "slots": size.misbehaving,
            "seconds": size.storm_seconds,
            "ping_interval": PING_INTERVAL,
        }
        argv = [sys.executable, str(BENCH / "misbehave.py"), json.dumps(misbehave_config)]
        misbehaving = Child("misbehave", argv, h.log_dir, events=True, env=h.env)
        stack.callback(misbehaving.stop)  # it stops by itself; this makes sure
        feeder = Feeder(server.stdin, LINE_SIZE)
        stack.callback(feeder.close)
        peak = {"fds": start.fds, "rss_kb": start.rss_kb}

        def sample() -> None:
            with contextlib.suppress(OSError):
                peak["fds"] = max(peak["fds"], probe.fd_count(server.pid))
                peak["rss_kb"] = max(peak["rss_kb"], rss_kb(server.pid))

        cpu = CpuWindow(
            {"server": server.pid, "loadgen": loadgen.pid, "misbehave": misbehaving.pid}
        )
        cpu.begin()
        began_ns = time.monotonic_ns()
        loadgen.send(f"start {began_ns}")
        feeder.paced(MEASURE_FROM, 1000, time.monotonic() + size.storm_seconds, sample)
        ended_ns = time.monotonic_ns()
        used = cpu.end()
        feeder.finish()
        last = feeder.written_seq
        loadgen.send(f"stop {last} {ended_ns}")
        delivered = loadgen.read_event("result", 30)
        runs = misbehaving.read_event("result", 90)["runs"]
        alive = server.alive()
        loadgen.send("quit")
        end = probe.settled(server.pid, port)
        text = log_text(server)

    lines = last - MEASURE_FROM + 1
    lost = delivered["expected"] - delivered["delivered"]
    latency = delivered["latency"]
    behaviours = summarise(runs, server_endings(text))
    unended = [r for r in runs if r["outcome"].startswith(("no end", "still connected"))]
    errors = [r for r in runs if r["outcome"].startswith("error")]

    result.update(
        {
            "lines": lines,
            "connected": connected["connected"],
            "lost_by_well_behaved": lost,
            "disorder": delivered["disorder"],
            "well_behaved_closed": connected["connected"] - delivered["clients_open_at_end"],
            "latency_ms": latency,
            "cpu_pct": {
                k[: -len("_cpu_pct")]: round(v) for k, v in used.items() if k.endswith("_cpu_pct")
            },
            "misbehaving_runs": len(runs),
            "start": start.__dict__,
            "peak": peak,
            "end": end.__dict__,
            "tracebacks": tracebacks(text),
            "behaviours": behaviours,
        }
    )
    result["unended"] = len(unended)
    result["errors"] = len(errors)
    result["server_alive"] = alive
    print(render_storm(result))
    check_storm(result, good, check)
    return result


def summarise(runs: list[dict[str, Any]], endings: dict[int, str]) -> Result:
    """Per misbehaviour: runs, what the clients saw, what the server logged, timings."""
    by_behaviour: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        run["server"] = endings.get(run["port"], "nothing logged")
        by_behaviour[run["behaviour"]].append(run)
    return {
        name: {
            "runs": len(group),
            "client_saw": dict(Counter(r["outcome"] for r in group)),
            "server_said": dict(Counter(r["server"] for r in group)),
            "median_s": statistics.median(r["seconds"] for r in group),
            "max_s": max(r["seconds"] for r in group),
        }
        for name, group in sorted(by_behaviour.items())
    }


def check_storm(r: Result, good: int, check: Checks) -> None:
    start, end = r["start"], r["end"]
    check(r["connected"] == good, f"{r['connected']}/{good} well-behaved connected")
    lost, lines = r["lost_by_well_behaved"], r["lines"]
    check(lost == 0, f"lines lost by well-behaved clients: {lost} of {lines * good:,}")
    check(r["disorder"] == 0, f"lines out of order: {r['disorder']}")
    check(r["well_behaved_closed"] == 0, "no well-behaved client disconnected")
    kinds = len(BEHAVIOURS)
    check(
        len(r["behaviours"]) == kinds,
        f"all {kinds} misbehaviours ran ({r['misbehaving_runs']} runs)",
    )
    check(r["unended"] == 0, f"every misbehaving connection ended ({r['unended']} did not)")
    check(r["errors"] == 0, f"misbehaving clients met no unexpected error ({r['errors']})")
    check(r["server_alive"], "the server kept running")
    check(end["open_connections"] == 0, f"connections open at the end: {end['open_connections']}")
    check(
        end["fds"] == start["fds"],
        f"server descriptors: {start['fds']} at start, {end['fds']} at the end",
    )
    check(
        end["tasks"] == start["tasks"],
        f"Trio tasks: {start['tasks']} at start, {end['tasks']} at the end",
    )
    check(r["tracebacks"] == 0, f"tracebacks in the server log: {r['tracebacks']}")


def render_storm(r: Result) -> str:
    lat = r["latency_ms"]
    rows = [
        "",
        "| well-behaved clients | lines each | lost | p50 / p99 / max latency |",
        "|---|---|---|---|",
        f"| {r['connected']} | {r['lines']:,} | {r['lost_by_well_behaved']} | "
        f"{_ms(lat['p50_ms'])} / {_ms(lat['p99_ms'])} / {_ms(lat['max_ms'])} ms |",
        "",
        "| misbehaviour | runs | what the client saw | what the server logged | time to end "
        "(median / max) |",
        "|---|---|---|---|---|",
    ]
    for name, b in r["behaviours"].items():
        rows.append(
            f"| {name} | {b['runs']} | {_counts(b['client_saw'])} | {_counts(b['server_said'])} "
            f"| {b['median_s']:.2f} / {b['max_s']:.2f} s |"
        )
    s, p, e = r["start"], r["peak"], r["end"]
    rows += [
        "",
        "| server | start | peak | end |",
        "|---|---|---|---|",
        f"| RSS | {s['rss_kb'] / 1024:.1f} MiB | {p['rss_kb'] / 1024:.1f} MiB "
        f"| {e['rss_kb'] / 1024:.1f} MiB |",
        f"| file descriptors | {s['fds']} | {p['fds']} | {e['fds']} |",
        f"| Trio tasks | {s['tasks']} | | {e['tasks']} |",
        "",
        "CPU during the storm (% of one core): "
        + ", ".join(f"{name} {pct}" for name, pct in r["cpu_pct"].items()),
    ]
    return "\n".join(rows)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{what} x{n}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------- phase 2: the resume storm


def resume_storm(h: Harness, size: Size, check: Checks) -> Result:
    """Every ``trio-broadcast.v1`` client reset at once mid-feed, then resumed at once."""
    n = size.resume_clients
    print(
        f"\nresume storm: {n} trio-broadcast.v1 clients, {size.resume_rate:,} lines/s, --retain "
        f"{size.resume_retain:,}; all reset (TCP RST) after {size.resume_before_seconds:g} s, "
        "all reconnect at once with ?since=",
        flush=True,
    )
    result: Result = {"clients": n, "rate": size.resume_rate, "retain": size.resume_retain}
    options = ("--retain", str(size.resume_retain))
    with contextlib.ExitStack() as stack:
        server, port = stack.enter_context(h.server("resume-server", *options))
        start = probe.settled(server.pid, port)
        config = {
            "url": f"ws://{HOST}:{port}/",
            "clients": n,
            "firstSeq": MEASURE_FROM,
            "connectConcurrency": 50,
            "connectTimeoutMs": 20_000,
            "retries": 5,
            "catchUpMs": RESUME_CATCH_UP * 1000,
            "drainMs": 20_000,
            "maxSeconds": size.resume_before_seconds + RESUME_CATCH_UP + 120,
        }
        argv = [*h.prefix(LOAD_CORE), "node", str(RESUME_CLIENTS), json.dumps(config)]
        clients = Child("resume-clients", argv, h.log_dir, events=True, env=h.env)
        stack.callback(clients.stop)
        connected = clients.read_event("connected", 60)
        feeder = Feeder(server.stdin, LINE_SIZE)
        stack.callback(feeder.close)
        peak = 0

        def sample() -> None:
            nonlocal peak
            peak = max(peak, rss_kb(server.pid))

        # The feed runs in slices of 0.1 s, and the storm's steps happen between
        # two slices, without waiting: the lines keep coming throughout.
        seq = MEASURE_FROM
        began = time.monotonic()
        while time.monotonic() < began + size.resume_before_seconds:
            seq = feeder.paced(seq, size.resume_rate, time.monotonic() + 0.1, sample)
        before = rss_kb(server.pid)
        clients.send("reset")
        reset_at = time.monotonic()
        caught_up = None
        while caught_up is None and time.monotonic() < reset_at + RESUME_CATCH_UP + 5:
            seq = feeder.paced(seq, size.resume_rate, time.monotonic() + 0.1, sample)
            caught_up = clients.poll_event("caught_up")
        storm_peak = peak
        settled_from = time.monotonic()
        while time.monotonic() < settled_from + size.resume_after_seconds:
            seq = feeder.paced(seq, size.resume_rate, time.monotonic() + 0.1, sample)
        after = rss_kb(server.pid)
        feeder.finish()
        last = feeder.written_seq
        clients.send(f"stop {last}")
        seen = clients.read_event("result", 60)
        clients.send("quit")
        clients.stop()
        end = probe.settled(server.pid, port)
        text = log_text(server)

    result.update(
        {
            "connected": connected["connected"],
            "lines": last - MEASURE_FROM + 1,
            "clients_with_whole_feed": seen["clients_with_whole_feed"],
            "missing": seen["missing"],
            "duplicates": seen["duplicates"],
            "first_bad_clients": seen["first_bad_clients"],
            "lines_before_reset": seen["lines_before_reset"],
            "reconnects": seen["reconnects"],
            "unexpected_ends": seen["unexpected_ends"],
            "connect_errors": seen["connect_errors"],
            "gap_notices": seen["gap_notices"],
            "hello_after_resume": seen["hello_after_resume"],
            "protocol_errors": seen["protocol_errors"],
            "first_protocol_errors": seen["first_protocol_errors"],
            "caught_up": caught_up,
            "rss_kb": {
                "start": start.rss_kb,
                "before_storm": before,
                "storm_peak": storm_peak,
                "after_catch_up": after,
                "after_leaving": end.rss_kb,
            },
            "start": start.__dict__,
            "end": end.__dict__,
            "tracebacks": tracebacks(text),
        }
    )
    print(render_resume(result))
    check_resume(result, check)
    return result


def check_resume(r: Result, check: Checks) -> None:
    n, lines = r["clients"], r["lines"]
    check(r["connected"] == n, f"{r['connected']}/{n} connected")
    whole = r["clients_with_whole_feed"]
    check(
        whole == n,
        f"clients with the whole feed ({lines:,} lines, each once, in order): {whole}/{n}"
        + ("" if whole == n else f"; first that did not: {r['first_bad_clients']}"),
    )
    check(r["missing"] == 0, f"lines missed: {r['missing']}")
    check(r["duplicates"] == 0, f"lines received twice: {r['duplicates']}")
    check(r["gap_notices"] == 0, f"gap notices: {r['gap_notices']} (every resume was retained)")
    ends = r["unexpected_ends"]
    check(not ends, f"no connection ended but by the reset ({_counts(ends) or 'none'})")
    check(
        r["protocol_errors"] == 0,
        f"messages that are not the subprotocol's: {r['protocol_errors']} "
        f"{r['first_protocol_errors'] or ''}",
    )
    caught = r["caught_up"]
    check(
        caught is not None and caught["complete"],
        f"all caught up within {RESUME_CATCH_UP:g} s of the reset",
    )
    rss = r["rss_kb"]
    limit = rss["before_storm"] * (1 + RESUME_RSS_TOLERANCE)
    check(
        rss["after_catch_up"] <= limit,
        f"server RSS after the catch-up {rss['after_catch_up'] / 1024:.1f} MiB, before the "
        f"storm {rss['before_storm'] / 1024:.1f} MiB (at most +{RESUME_RSS_TOLERANCE:.0%})",
    )
    start, end = r["start"], r["end"]
    check(
        (end["fds"], end["tasks"]) == (start["fds"], start["tasks"]),
        f"once all left: descriptors {start['fds']} → {end['fds']}, "
        f"Trio tasks {start['tasks']} → {end['tasks']}",
    )
    check(r["tracebacks"] == 0, f"tracebacks in the server log: {r['tracebacks']}")


def render_resume(r: Result) -> str:
    caught = r["caught_up"] or {}
    rss = {k: f"{v / 1024:.1f}" for k, v in r["rss_kb"].items()}
    before = r["lines_before_reset"]
    return "\n".join(
        [
            "",
            "| clients | lines each | with the whole feed | missed | twice | gap notices "
            "| all reconnected | caught up (median / all) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['connected']} | {r['lines']:,} | {r['clients_with_whole_feed']} "
            f"| {r['missing']} | {r['duplicates']} | {r['gap_notices']} "
            f"| {_s(caught.get('all_reopened_s'))} "
            f"| {_s(caught.get('median_s'))} / {_s(caught.get('max_s'))} |",
            "",
            f"lines each before the reset: {before['min']:,.0f} to {before['max']:,.0f}; "
            f"reconnections {r['reconnects']:,.0f}; failed attempts: "
            f"{_counts(r['connect_errors']) or 'none'}; other ends: "
            f"{_counts(r['unexpected_ends']) or 'none'}",
            f"server RSS (MiB): {rss['start']} at start, {rss['before_storm']} before the "
            f"storm, {rss['storm_peak']} peak, {rss['after_catch_up']} after the catch-up, "
            f"{rss['after_leaving']} once all left",
        ]
    )


def _s(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s"


# ---------------------------------------------------------------- phase 3: the limit


def descriptor_limit(h: Harness, check: Checks) -> Result:
    print(f"\ndescriptor limit: ulimit -n {FD_LIMIT}, {FD_ATTEMPTS} clients try", flush=True)
    if shutil.which("prlimit") is None:
        raise BenchError("prlimit (util-linux) is needed to lower the server's ulimit -n")
    with contextlib.ExitStack() as stack:
        server, port = stack.enter_context(h.server("limit-server", fd_limit=FD_LIMIT))
        start = probe.settled(server.pid, port)
        crowd = stack.enter_context(h.loadgen("limit-crowd", port, FD_ATTEMPTS, 120))
        first = crowd.read_event("connected", 60)
        refused = first["connect_errors"]
        warned = "out of file descriptors" in log_text(server)
        crowd.stop()  # every client of the first crowd leaves
        between = probe.settled(server.pid, port)
        second_crowd = stack.enter_context(
            h.loadgen("limit-second", port, first["connected"], 120)
        )
        second = second_crowd.read_event("connected", 60)
        second_crowd.stop()
        end = probe.settled(server.pid, port)
        text = log_text(server)
    result: Result = {
        "limit": FD_LIMIT,
        "attempts": FD_ATTEMPTS,
        "accepted": first["connected"],
        "refused": refused,
        "connect_s": first["connect_s"],
        "after_leaving_accepted": second["connected"],
        "after_leaving_refused": second["connect_errors"],
        "fds": [start.fds, between.fds, end.fds],
        "tracebacks": tracebacks(text),
    }
    print(
        f"  {first['connected']} accepted, refused: {_counts(refused) or 'none'} "
        f"(all attempts done in {first['connect_s']:.2f} s); after they left: "
        f"{second['connected']}/{first['connected']} accepted; "
        f"descriptors {start.fds} → {end.fds}"
    )
    check(0 < first["connected"] < FD_ATTEMPTS, "some clients got in, not all")
    check(
        set(refused) == {"HTTP 503"} and refused["HTTP 503"] == FD_ATTEMPTS - first["connected"],
        "every other attempt got a 503, none a timeout or a reset",
    )
    check(warned, "the server logged that it is out of file descriptors")
    check(second["connected"] == first["connected"], "as many got in again once clients left")
    check(end.fds == start.fds, f"descriptors back to {start.fds} (now {end.fds})")
    check(result["tracebacks"] == 0, f"tracebacks in the server log: {result['tracebacks']}")
    return result


# ---------------------------------------------------------------- phase 4: shutdown


def shutdown(h: Harness, size: Size, check: Checks) -> Result:
    n = size.shutdown_clients
    print(f"\nshutdown under load: {n} clients receiving at full speed", flush=True)
    result: Result = {"clients": n}
    with contextlib.ExitStack() as stack:
        server, port = stack.enter_context(h.server("shutdown-server", *FLOOD_OPTIONS))
        loadgen = stack.enter_context(h.loadgen("shutdown-loadgen", port, n, 120))
        connected = loadgen.read_event("connected", 60)
        feeder = Feeder(server.stdin, LINE_SIZE)
        stack.callback(feeder.close)
        loadgen.send(f"start {time.monotonic_ns()}")
        feeder.flood(MEASURE_FROM, time.monotonic() + 2.0)
        signalled_ns = time.monotonic_ns()
        server.proc.send_signal(signal.SIGTERM)
        status = _wait(server, 10)
        exited_s = (time.monotonic_ns() - signalled_ns) / 1e9
        loadgen.send(f"stop {feeder.written_seq} {time.monotonic_ns()}")
        seen = loadgen.read_event("result", 30)
        text = log_text(server)
    codes = seen["close_codes"]
    last_close = seen["last_close_ns"]
    within = None if last_close is None else (last_close - signalled_ns) / 1e9
    result.update(
        {
            "connected": connected["connected"],
            "close_codes": codes,
            "last_close_after_s": within,
            "exit_status": status,
            "exit_after_s": exited_s,
            "tracebacks": tracebacks(text),
            "messages_delivered": seen["total_messages"],
        }
    )
    print(
        f"  {seen['total_messages']:,} messages delivered in all; close codes: "
        f"{_counts(codes)}; last close {within if within is None else f'{within:.2f}'} s after "
        f"the signal; exit {status} after {exited_s:.2f} s"
    )
    check(connected["connected"] == n, f"{connected['connected']}/{n} connected")
    check(codes == {"1001": n}, f"every client got 1001 ({_counts(codes)})")
    check(within is not None and within <= CLOSE_WITHIN, f"all closed within {CLOSE_WITHIN:g} s")
    check(status == 0, f"exit status 0 (got {status})")
    check(result["tracebacks"] == 0, "no traceback")

    with contextlib.ExitStack() as stack:
        server, port = stack.enter_context(h.server("second-signal-server", *FLOOD_OPTIONS))
        loadgen = stack.enter_context(h.loadgen("second-signal-loadgen", port, n, 120))
        loadgen.read_event("connected", 60)
        feeder = Feeder(server.stdin, LINE_SIZE)
        stack.callback(feeder.close)
        feeder.flood(MEASURE_FROM, time.monotonic() + 1.0)
        server.proc.send_signal(signal.SIGTERM)
        # As an operator would: the log says the server is closing; signal again.
        handled = _wait_for_log(server, "SIGTERM: closing", 5.0)
        second_ns = time.monotonic_ns()
        server.proc.send_signal(signal.SIGTERM)
        status = _wait(server, 10)
        exited_s = (time.monotonic_ns() - second_ns) / 1e9
    result["second_signal"] = {"exit_status": status, "exit_after_s": exited_s}
    print(f"  second SIGTERM, once the first was logged: exit {status} after {exited_s:.3f} s")
    check(handled, "the first SIGTERM was logged within 5 s")
    check(status == 128 + signal.SIGTERM, f"a second SIGTERM exits with 143 (got {status})")
    check(exited_s < 1.0, f"and at once ({exited_s:.3f} s)")
    return result


def _wait_for_log(child: Child, text: str, timeout: float) -> bool:
    """Whether ``text`` appears in the child's log within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while text not in log_text(child):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)  # a log file has no event to wait on
    return True


def _wait(child: Child, timeout: float) -> int | None:
    try:
        return child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short form (CI)")
    parser.add_argument("--out", type=Path, help="where to write the JSON results")
    parser.add_argument(
        "--resume-storm",
        type=int,
        metavar="N",
        help="only the resume storm, with N clients (the bench's reconnect-storm figure: "
        "how long until N resuming clients have caught up)",
    )
    parser.add_argument(
        "--resume-rate",
        type=int,
        metavar="LINES",
        help="lines/s of the feed during the resume storm (default 1,000)",
    )
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.resume_storm is not None:
        size = dataclasses.replace(size, resume_clients=args.resume_storm)
    if args.resume_rate is not None:
        size = dataclasses.replace(size, resume_rate=args.resume_rate)
    began = time.monotonic()
    raise_fd_limit()
    pinning = setup_pinning()
    node_version, note = ensure_node()
    if node_version is None:
        print(f"cannot run: {note}; the well-behaved clients are Node's ws")
        return 1
    log_dir = LOGS / time.strftime("%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "PYTHONUNBUFFERED": "1"}
    h = Harness(log_dir, env, pinning.enabled)
    check = Checks()
    print(f"faults ({'quick' if args.quick else 'full'}); {pinning.note}; logs: {log_dir}")
    results: Result = {"quick": args.quick, "size": size.__dict__}
    try:
        if args.resume_storm is None:
            results["storm"] = storm(h, size, check)
        results["resume_storm"] = resume_storm(h, size, check)
        if args.resume_storm is None:
            results["descriptor_limit"] = descriptor_limit(h, check)
            results["shutdown"] = shutdown(h, size, check)
    except BenchError as exc:
        check(False, f"the run could not finish: {exc}")
    results["failed"] = check.failed
    results["run_seconds"] = round(time.monotonic() - began, 1)
    name = "resume-storm" if args.resume_storm is not None else "faults"
    out = args.out or RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    verdict = "FAILED: " + "; ".join(check.failed) if check.failed else "all checks passed"
    print(f"\n{verdict} ({results['run_seconds']:.0f} s; results: {out})")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
