#!/usr/bin/env python3
"""What one connection costs a server, and how fast every client comes back after a restart.

    python bench/connection_cost.py memory  [--clients 1000] [--servers ...]
    python bench/connection_cost.py profile [--clients 1000] [--servers ...]
    python bench/connection_cost.py storm   [--clients 5000] [--servers ...]
    python bench/connection_cost.py instructions [--clients 300] [--servers ...]

``memory``: each server (trio-broadcast, and the floor: trio-websocket alone,
``peers/trio_websocket_alone.py``) runs in a subprocess; this script opens
``--clients`` idle WebSocket clients against it and has the server take two
readings, before and after, from a signal handler: its RSS and a census of the
objects the garbage collector tracks (by type), and, in a second run under
``tracemalloc``, a snapshot of every live allocation. The difference divided by
the number of clients is the cost of one idle connection, broken down by who
asked for the memory: the innermost frame of the allocation's traceback that is
in trio_broadcast (or the floor's handler), trio-websocket, wsproto or h11, else
trio or the standard library.

``profile``: cProfile in the server, switched on and off by signals around a
burst of ``--clients`` connects (64 handshakes in flight); the top functions by
own time and by cumulative time, and own time summed by package.

``storm``: ``--clients`` clients (default 5,000) connect; the server gets
SIGTERM; once it has exited a new one starts on the same port, and when it
listens every client reconnects at once. Reported: the old server's exit, the
new one's start, and the time until every client had its 101 and (servers that
broadcast) its first broadcast line; the harness writes a line every 10 ms to
the new server's standard input. A client reconnects to :func:`reconnect_target`
(``/`` today; a resuming variant will ask for ``/?since=<last id>``).

``instructions``: the server runs under valgrind's callgrind, counting nothing
until the warm-up is over; it counts the instructions the server executes
over a burst of ``--clients`` connects (64 in flight), divided by the number
of connects. Unlike a rate or a CPU time, the count does not move with other
load on the machine (two runs agree within 0.5 %), so a change of a few
per cent shows. It weighs every instruction alike (not cache misses); the
burst is slow under valgrind (about 10 s per 300 connects). Needs ``valgrind``.

Every phase is bounded in time; the server runs on core 0 and this script on
core 1 when ``taskset`` and two cores are there. ``RLIMIT_NOFILE`` is raised to
its hard limit here and in the servers. Loopback only. Run it while nothing else
is measuring (``flock /work/notes/bench.lock`` on the shared benchmark machine).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import trio
from run import free_port, raise_fd_limit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.wire
from tests.wire import (
    Frame,
    ServerFrameParser,
    masked_frame,
    upgrade_request,
)

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SERVERS = ("trio-broadcast", "trio-websocket-alone")
CONNECT_CONCURRENCY = 64
"""Handshakes in flight while connecting, as in bench/run.py."""
SERVER_CORE, CLIENT_CORE = 0, 1
TRACE_FRAMES = 40
MARK_TIMEOUT = 120.0
"""A reading under tracemalloc walks every live allocation: seconds, not milliseconds."""

Result = dict[str, Any]


class CostError(Exception):
    """A measurement could not be taken; the message says why."""


# ---------------------------------------------------------------- inside the server


def _server_argv(kind: str, port: int) -> tuple[Callable[[], object], list[str]]:
    """What the ``_serve`` wrapper runs in its own process: (main, its argv)."""
    if kind == "trio-broadcast":
        from trio_broadcast.cli import main as broadcast_main  # noqa: PLC0415

        argv = ["--host", HOST, "--port", str(port), "--ping-interval", "0"]
        argv += ["--log-level", "warning"]
        return (lambda: broadcast_main(argv)), argv
    sys.path.insert(0, str(BENCH / "peers"))
    floor = importlib.import_module("trio_websocket_alone")
    return (lambda: trio.run(floor.main, HOST, port)), []


def _census() -> dict[str, list[int]]:
    """Objects the garbage collector tracks: per type, [count, bytes (shallow)]."""
    gc.collect()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for obj in gc.get_objects():
        kind = type(obj)
        entry = counts[f"{kind.__module__}.{kind.__qualname__}"]
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    return dict(counts)


def _rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise CostError("no VmRSS")


def serve(kind: str, port: int, marks: Path, *, trace: bool, profile: bool) -> int:
    """The server, in this process, taking readings when signalled.

    SIGUSR1: write ``marks/mark-<n>.json`` (RSS, the census) and, under
    tracemalloc, ``mark-<n>.snapshot``, then ``mark-<n>.done``. SIGUSR2 (with
    ``profile``): the first starts cProfile, the second stops it and writes
    ``profile.pstats``, ``profile.json`` (time in the cyclic garbage collector
    meanwhile, per generation) and ``profile.done``. The handlers run in the main
    thread, between two bytecodes, so the readings see the Trio loop at rest.
    """
    run, _ = _server_argv(kind, port)
    if trace:
        tracemalloc.start(TRACE_FRAMES)
    taken = 0
    profiler = cProfile.Profile()
    profiling = False
    collecting: list[float] = [0.0]
    gc_seconds = [0.0, 0.0, 0.0]
    gc_runs = [0, 0, 0]

    def time_gc(phase: str, info: dict[str, int]) -> None:
        if not profiling:
            return
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            gc_seconds[info["generation"]] += time.perf_counter() - collecting[0]
            gc_runs[info["generation"]] += 1

    def mark(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        name = marks / f"mark-{taken}"
        taken += 1
        reading = {"rss_kb": _rss_kb(), "census": _census()}
        if trace:
            tracemalloc.take_snapshot().dump(f"{name}.snapshot")
        Path(f"{name}.json").write_text(json.dumps(reading))
        Path(f"{name}.done").touch()

    def toggle(signum: int, frame: FrameType | None) -> None:
        nonlocal profiling
        if not profiling:
            profiling = True
            profiler.enable()
            return
        profiler.disable()
        profiling = False
        profiler.dump_stats(marks / "profile.pstats")
        gc_time = {"gc_seconds": gc_seconds, "gc_runs": gc_runs}
        (marks / "profile.json").write_text(json.dumps(gc_time))
        (marks / "profile.done").touch()

    signal.signal(signal.SIGUSR1, mark)
    if profile:
        signal.signal(signal.SIGUSR2, toggle)
        gc.callbacks.append(time_gc)
    code = run()
    return code if isinstance(code, int) else 0


# ---------------------------------------------------------------- the server process


class Server:
    """The ``_serve`` wrapper in a subprocess (pinned to the server core), stopped for sure."""

    def __init__(
        self,
        kind: str,
        port: int,
        marks: Path,
        *,
        trace: bool,
        profile: bool,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.kind, self.port, self.marks = kind, port, marks
        argv = [*wrapper, sys.executable, __file__, "_serve", kind, str(port), str(marks)]
        argv += [*(["--trace"] if trace else []), *(["--profile"] if profile else [])]
        self.log = (marks / f"{kind}.log").open("wb")
        self.proc = subprocess.Popen(
            pin(SERVER_CORE) + argv, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log
        )
        self.readings = 0

    async def listening(self, within: float = 20.0) -> None:
        with trio.move_on_after(within):
            while self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    sock = trio.socket.socket()
                    with sock:
                        await sock.connect((HOST, self.port))
                        return
                await trio.sleep(0.02)
        raise CostError(f"{self.kind} is not listening on {self.port} (see {self.log.name})")

    async def exited(self) -> None:
        """Until the process has exited (a thread waits for it)."""
        await trio.to_thread.run_sync(self.proc.wait, abandon_on_cancel=True)

    async def _signal_and_wait(self, signum: int, done: Path, within: float) -> None:
        """Signal the server, and wait for the file its handler writes when done."""
        self.proc.send_signal(signum)
        with trio.move_on_after(within):
            while not await trio.Path(done).exists():
                if self.proc.poll() is not None:
                    raise CostError(f"{self.kind} exited (see {self.log.name})")
                await trio.sleep(0.05)
            return
        raise CostError(f"{self.kind}: no {done.name} within {within:g} s")

    async def reading(self) -> tuple[Result, tracemalloc.Snapshot | None]:
        """A reading of the server's memory (and its tracemalloc snapshot, if tracing)."""
        name = self.marks / f"mark-{self.readings}"
        self.readings += 1
        await self._signal_and_wait(signal.SIGUSR1, Path(f"{name}.done"), MARK_TIMEOUT)
        data: Result = json.loads(await trio.Path(f"{name}.json").read_text())
        snapshot_path = trio.Path(f"{name}.snapshot")
        snapshot = (
            tracemalloc.Snapshot.load(str(snapshot_path)) if await snapshot_path.exists() else None
        )
        return data, snapshot

    async def toggle_profile(self, *, stop: bool) -> None:
        if not stop:
            self.proc.send_signal(signal.SIGUSR2)
            await trio.sleep(0.2)  # the handler runs at the loop's next wake
            return
        await self._signal_and_wait(signal.SIGUSR2, self.marks / "profile.done", 60)

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, BlockingIOError):
            os.write(self.proc.stdin.fileno(), data)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self.log.close()


@contextlib.contextmanager
def server(
    kind: str, port: int, marks: Path, *, trace: bool = False, profile: bool = False
) -> Iterator[Server]:
    running = Server(kind, port, marks, trace=trace, profile=profile)
    try:
        yield running
    finally:
        running.stop()


def pin(core: int) -> list[str]:
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(core)]


# ---------------------------------------------------------------- clients


class HandshakeFailed(Exception):
    pass


async def open_client(port: int, target: str = "/") -> tuple[trio.SocketStream, bytes]:
    """A raw WebSocket client past its 101: the stream, and what came after the head."""
    sock = trio.socket.socket()
    try:
        await sock.connect((HOST, port))
    except OSError:
        sock.close()
        raise
    stream = trio.SocketStream(sock)
    try:
        await stream.send_all(upgrade_request(target, host=f"{HOST}:{port}"))
        head, rest = await _response_head(stream)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if not head.startswith(b"HTTP/1.1 101"):
        await trio.aclose_forcefully(stream)
        raise HandshakeFailed(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return stream, rest


async def _response_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await stream.receive_some(4096)
        if not chunk or len(received) > 16384:
            raise HandshakeFailed("no complete response head")
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


@dataclass
class Idle:
    connected: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


@contextlib.asynccontextmanager
async def idle_clients(port: int, count: int, within: float) -> AsyncIterator[Idle]:
    """``count`` clients past their handshake, held open (not read) until the block ends."""
    done = Idle()
    release = trio.Event()
    limit = trio.Semaphore(CONNECT_CONCURRENCY)
    all_tried = trio.Event()
    tried = 0

    async def one() -> None:
        nonlocal tried
        try:
            async with limit:
                stream, _ = await open_client(port)
        except (OSError, HandshakeFailed, trio.BrokenResourceError) as exc:
            done.failed[type(exc).__name__] += 1
            stream = None
        else:
            done.connected += 1
        tried += 1
        if tried == count:
            all_tried.set()
        if stream is not None:
            async with stream:
                await release.wait()

    async with trio.open_nursery() as nursery:
        began = trio.current_time()
        for _ in range(count):
            nursery.start_soon(one)
        with trio.move_on_after(within):
            await all_tried.wait()
        done.seconds = trio.current_time() - began
        try:
            yield done
        finally:
            release.set()


# ---------------------------------------------------------------- who asked for it

STDLIB = sysconfig.get_paths()["stdlib"]
LIBRARIES = ("trio_broadcast", "peer", "trio_websocket", "wsproto/h11")
"""The packages a connection's memory and time are charged to, closest first."""


def package(filename: str) -> str:
    """The package a source file belongs to, for the breakdowns."""
    path = filename.replace(os.sep, "/")
    for name, marker in (
        ("trio_broadcast", "/trio_broadcast/"),
        ("trio_websocket", "/trio_websocket/"),
        ("wsproto/h11", "/wsproto/"),
        ("wsproto/h11", "/h11/"),
        ("trio", "/trio/"),
        ("peer", "/bench/peers/"),
    ):
        if marker in path:
            return name
    if path.startswith(STDLIB) and "site-packages" not in path:
        return "stdlib"
    if path == "~":  # cProfile's name for C functions
        return "C functions"
    if path.startswith("<attrs generated methods "):  # trio's attrs classes
        return type_package(path.removeprefix("<attrs generated methods ").rstrip(">"))
    if path.startswith("<"):
        return "builtin"
    return "other"


def charged_to(frames: list[str]) -> str:
    """The innermost frame's package among :data:`LIBRARIES`, else the innermost's own.

    Memory that trio or the standard library allocates on behalf of trio-websocket
    (a task, a buffer) is trio-websocket's; what trio_broadcast asks trio-websocket
    for is trio-websocket's too: the nearest caller that chose to allocate pays.
    """
    packages = [package(f) for f in frames]
    for name in packages:
        if name in LIBRARIES:
            return name
    return packages[0] if packages else "other"


def type_package(qualified: str) -> str:
    module = qualified.rsplit(".", 1)[0]
    top = module.split(".", 1)[0]
    return {
        "trio_broadcast": "trio_broadcast",
        "trio_websocket": "trio_websocket",
        "wsproto": "wsproto/h11",
        "h11": "wsproto/h11",
        "trio": "trio",
        "trio_websocket_alone": "peer",
        "builtins": "builtins",
    }.get(top, "stdlib/other")


# ---------------------------------------------------------------- memory


async def memory(kind: str, clients: int, work: Path) -> Result:
    """RSS and census per idle connection (plain run), then tracemalloc (traced run)."""
    out: Result = {"server": kind, "clients": clients}
    for traced in (False, True):
        marks = work / f"{kind}-{'traced' if traced else 'plain'}"
        marks.mkdir()
        port = free_port()
        with server(kind, port, marks, trace=traced) as running:
            await running.listening()
            await trio.sleep(0.3)
            before, snap0 = await running.reading()
            async with idle_clients(port, clients, within=30 + clients / 20) as held:
                if held.connected == 0:
                    raise CostError(f"{kind}: no client connected ({dict(held.failed)})")
                await trio.sleep(0.5)
                after, snap1 = await running.reading()
        n = held.connected
        if not traced:
            out["connected"] = n
            out["connect_s"] = held.seconds
            out["failed"] = dict(held.failed)
            out["rss_per_connection_kb"] = (after["rss_kb"] - before["rss_kb"]) / n
            out["census"] = _census_diff(before["census"], after["census"], n)
        else:
            assert snap0 is not None
            assert snap1 is not None
            out["traced_connected"] = n
            out["tracemalloc"] = _traced_diff(snap0, snap1, n)
    return out


def _census_diff(before: Result, after: Result, n: int) -> Result:
    per_type = {}
    for name, (count, size) in after.items():
        count0, size0 = before.get(name, (0, 0))
        if count - count0 >= n // 2:  # present about once per connection or more
            per_type[name] = ((count - count0) / n, (size - size0) / n)
    by_package: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for name, (count, size) in after.items():
        count0, size0 = before.get(name, (0, 0))
        entry = by_package[type_package(name)]
        entry[0] += (count - count0) / n
        entry[1] += (size - size0) / n
    return {"types": per_type, "packages": dict(by_package)}


def _traced_diff(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int) -> Result:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    charged: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    allocated_in: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for stat in after.compare_to(before, "traceback"):
        # A Traceback lists the oldest frame first: innermost first here.
        frames = [frame.filename for frame in reversed(stat.traceback)]
        for table, key in ((charged, charged_to(frames)), (allocated_in, package(frames[0]))):
            table[key][0] += stat.size_diff / n
            table[key][1] += stat.count_diff / n
    lines = []
    for stat in after.compare_to(before, "lineno")[:60]:
        frame = stat.traceback[0]
        if abs(stat.size_diff) / n < 16:
            continue
        where = _short(frame.filename)
        lines.append([f"{where}:{frame.lineno}", stat.size_diff / n, stat.count_diff / n])
    total = sum(size for size, _ in charged.values())
    return {
        "bytes_per_connection": total,
        "charged_to": dict(charged),
        "allocated_in": dict(allocated_in),
        "top_lines": lines[:25],
    }


def _short(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    for marker in ("/site-packages/", "/bench/", f"{STDLIB}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    for marker in ("/trio_broadcast/",):
        if marker in path:
            return "trio_broadcast/" + path.split(marker, 1)[1]
    return path


# ---------------------------------------------------------------- profile

IDLE = "idle (waiting in epoll)"


async def profile(kind: str, clients: int, work: Path, top: int) -> Result:
    """cProfile of the server over a burst of ``clients`` connects, 64 in flight."""
    marks = work / f"{kind}-profile"
    marks.mkdir()
    port = free_port()
    with server(kind, port, marks, profile=True) as running:
        await running.listening()
        async with idle_clients(port, CONNECT_CONCURRENCY, within=30):
            pass  # warm-up: first-use costs (imports, caches) stay out of the profile
        await trio.sleep(0.3)
        await running.toggle_profile(stop=False)
        async with idle_clients(port, clients, within=30 + clients / 20) as held:
            await running.toggle_profile(stop=True)
    stats = pstats.Stats(str(marks / "profile.pstats"))
    gc_time = json.loads((marks / "profile.json").read_text())
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    raw = stats.stats  # type: ignore[attr-defined]
    n = max(held.connected, 1)
    own: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in raw.items():
        name = IDLE if "'poll' of 'select.epoll'" in function else package(filename)
        own[name] += tottime
        rows.append((f"{_short(filename)}:{line}({function})", name, calls, tottime, cumtime))
    total = sum(own.values()) - own[IDLE]

    def per_conn(rows_: list[tuple[str, str, int, float, float]], col: int) -> list[list[Any]]:
        ranked = sorted(rows_, key=lambda r: -float(r[col]))[:top]
        return [[r[0], r[1], r[2] / n, r[3] / n * 1e6, r[4] / n * 1e6] for r in ranked]

    return {
        "server": kind,
        "clients": held.connected,
        "burst_s": held.seconds,
        "profiled_us_per_connection": total / n * 1e6,
        "gc_us_per_connection": [t / n * 1e6 for t in gc_time["gc_seconds"]],
        "gc_runs": gc_time["gc_runs"],
        "own_us_per_connection": {
            k: v / n * 1e6 for k, v in sorted(own.items(), key=lambda kv: -kv[1])
        },
        "by_tottime": per_conn(rows, 3),
        "by_cumtime": per_conn(rows, 4),
    }


# ---------------------------------------------------------------- instructions


async def instructions(kind: str, clients: int, work: Path) -> Result:
    """Instructions the server executes per connect (callgrind), over a burst of ``clients``."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise CostError("instructions needs valgrind (callgrind and callgrind_control)")
    marks = work / f"{kind}-instructions"
    marks.mkdir()
    counts = marks / "callgrind.out"
    callgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no")
    port = free_port()
    running = Server(
        kind,
        port,
        marks,
        trace=False,
        profile=False,
        wrapper=(*callgrind, f"--callgrind-out-file={counts}"),
    )
    try:
        await running.listening(within=120)
        async with idle_clients(port, CONNECT_CONCURRENCY, within=120):
            pass  # warm-up, not counted
        await trio.sleep(1)
        switch = ["callgrind_control", "--instr=on", str(running.proc.pid)]
        await trio.run_process(switch, capture_stdout=True, capture_stderr=True)
        async with idle_clients(port, clients, within=60 + clients / 10) as held:
            switch[1] = "--instr=off"
            await trio.run_process(switch, capture_stdout=True, capture_stderr=True)
    finally:
        running.stop(timeout=120)  # callgrind writes the counts as the server exits
    totals = re.search(r"^totals:\s*(\d+)", counts.read_text(errors="replace"), re.MULTILINE)
    if totals is None or not held.connected:
        raise CostError(f"{kind}: no instruction counts (see {running.log.name})")
    return {
        "server": kind,
        "clients": held.connected,
        "failed": dict(held.failed),
        "instructions_per_connection": int(totals.group(1)) / held.connected,
    }


def render_instructions(results: list[Result]) -> str:
    last = results[-1]["instructions_per_connection"]
    return _table(
        [
            "connect path, instructions executed by the server (callgrind)",
            *(r["server"] for r in results),
        ],
        [
            ["connects counted", *(f"{r['clients']:,}" for r in results)],
            [
                "instructions per connect",
                *(f"{r['instructions_per_connection'] / 1e3:,.0f} k" for r in results),
            ],
            [
                f"÷ {results[-1]['server']}'s",
                *(f"{r['instructions_per_connection'] / last:.2f}\u00d7" for r in results),
            ],
        ],
    )


# ---------------------------------------------------------------- storm


def reconnect_target(last_line: bytes | None) -> str:
    """Where a client reconnects after the restart: ``/``, whatever it saw before.

    The one place a resuming variant changes: with resume (issue 13) a client
    asks for ``/?since=<the ID of its last line>`` (a ``--resume`` flag of the storm).
    """
    return "/"


@dataclass
class StormClient:
    last_line: bytes | None = None
    connected: bool = False
    upgraded_at: float | None = None
    served_at: float | None = None
    attempts: int = 0


class FrameReader:
    """The frames a server sends on one connection, one at a time (strictly parsed)."""

    def __init__(self, stream: trio.SocketStream, rest: bytes) -> None:
        self.stream = stream
        self.parser = ServerFrameParser()
        self.pending = deque(self.parser.feed(rest))

    async def next(self) -> Frame | None:
        """The next frame; ``None`` at the end of the connection."""
        while not self.pending:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self.pending.extend(self.parser.feed(data))
        return self.pending.popleft()

    async def answer_close(self, frame: Frame) -> None:
        """A client's answer to a close frame (the server's graceful stop waits for it)."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(masked_frame(0x8, frame.payload[:2]))


async def _until_closed(reader: FrameReader, me: StormClient) -> None:
    while (frame := await reader.next()) is not None:
        if frame.opcode == 0x1:
            me.last_line = frame.payload
        elif frame.opcode == 0x8:
            await reader.answer_close(frame)
            return


async def _first_line(reader: FrameReader, me: StormClient) -> bool:
    while (frame := await reader.next()) is not None:
        if frame.opcode == 0x1:
            me.last_line = frame.payload
            return True
        if frame.opcode == 0x8:
            await reader.answer_close(frame)
            return False
    return False


STORM_LINE_INTERVAL = 0.1
"""Seconds between two lines to the restarted server (S3's 10 lines/s): a client counts
as served at its first line, so "served" is late by up to this much."""
RETRY_AFTER = 0.05


class Tally:
    """How many clients reached a stage; an event when all of them have."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.all = trio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.total:
            self.all.set()


@dataclass
class Storm:
    """The clients of one storm, and where they are."""

    port: int
    broadcasts: bool
    clients: list[StormClient]
    settled: Tally
    """First connection made or failed."""
    down: Tally
    """Connection to the old server ended (or never made)."""
    back: Tally
    """Served by the new server (or never connected to the old one)."""
    restarted: trio.Event = field(default_factory=trio.Event)
    failed: int = 0
    limit: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(CONNECT_CONCURRENCY))

    async def client(self, me: StormClient) -> None:
        """Connect, stay until the server goes, then come back when it listens again."""
        try:
            async with self.limit:
                stream, rest = await open_client(self.port)
        except (OSError, HandshakeFailed, trio.BrokenResourceError):
            self.failed += 1
            for tally in (self.settled, self.down, self.back):
                tally.add()
            return
        me.connected = True
        self.settled.add()
        async with stream:
            await _until_closed(FrameReader(stream, rest), me)
        self.down.add()
        await self.restarted.wait()
        while True:  # every client at once; a refused or reset attempt retries
            me.attempts += 1
            try:
                stream, rest = await open_client(self.port, reconnect_target(me.last_line))
            except (OSError, HandshakeFailed, trio.BrokenResourceError):
                await trio.sleep(RETRY_AFTER)
                continue
            me.upgraded_at = trio.current_time()
            async with stream:
                if not self.broadcasts or await _first_line(FrameReader(stream, rest), me):
                    me.served_at = trio.current_time()
                    self.back.add()
                    await trio.sleep_forever()
            await trio.sleep(RETRY_AFTER)


async def _feed(running: Server) -> None:
    """A line every :data:`STORM_LINE_INTERVAL` to the server's standard input."""
    for n in range(10**9):
        running.write(b"storm %d\n" % n)
        await trio.sleep(STORM_LINE_INTERVAL)


async def storm(kind: str, clients: int, work: Path, deadline: float) -> Result:
    """Connect ``clients``, restart the server on its port, time every client's return."""
    marks = work / f"{kind}-storm"
    marks.mkdir()
    port = free_port()
    run = Storm(
        port,
        kind == "trio-broadcast",
        [StormClient() for _ in range(clients)],
        Tally(clients),
        Tally(clients),
        Tally(clients),
    )
    result: Result = {"server": kind, "clients": clients, "resume": False}
    when: dict[str, float] = {}
    with trio.move_on_at(deadline) as scope:
        async with trio.open_nursery() as nursery:
            with server(kind, port, marks) as old:
                await old.listening()
                began = trio.current_time()
                for me in run.clients:
                    nursery.start_soon(run.client, me)
                await run.settled.all.wait()
                result["connected"] = clients - run.failed
                result["connect_s"] = trio.current_time() - began
                await trio.sleep(0.5)
                when["term"] = trio.current_time()
                old.proc.terminate()
                await old.exited()
                when["exited"] = trio.current_time()
            with trio.move_on_after(10):
                await run.down.all.wait()
            with server(kind, port, marks) as new:
                await new.listening()
                when["listening"] = trio.current_time()
                if run.broadcasts:
                    nursery.start_soon(_feed, new)
                run.restarted.set()
                await run.back.all.wait()
                nursery.cancel_scope.cancel()
    result["timed_out"] = scope.cancelled_caught
    result.update(_storm_figures(run, when))
    return result


def _storm_figures(run: Storm, when: dict[str, float]) -> Result:
    go = when.get("listening")
    exited = when.get("exited")
    upgraded = sorted(c.upgraded_at - go for c in run.clients if c.upgraded_at and go)
    served = sorted(c.served_at - go for c in run.clients if c.served_at and go)
    everyone = len(run.clients) - run.failed
    return {
        "failed_first_connect": run.failed,
        "old_exit_s": exited - when["term"] if exited else None,
        "restart_to_listening_s": go - exited if go and exited else None,
        "reconnected": len(upgraded),
        "served": len(served),
        "all_upgraded_s": upgraded[-1] if upgraded and len(upgraded) == everyone else None,
        "all_served_s": served[-1] if served and len(served) == everyone else None,
        "upgraded_p50_s": _quantile(upgraded, 0.5),
        "upgraded_p99_s": _quantile(upgraded, 0.99),
        "served_p50_s": _quantile(served, 0.5),
        "served_p99_s": _quantile(served, 0.99),
        "attempts_max": max((c.attempts for c in run.clients), default=0),
        "broadcasts": run.broadcasts,
        "line_interval_s": STORM_LINE_INTERVAL if run.broadcasts else None,
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


# ---------------------------------------------------------------- the report


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _b(value: float) -> str:
    return f"{value:,.0f}"


def render_memory(results: list[Result]) -> str:
    names = [r["server"] for r in results]
    parts = [
        _table(
            ["per idle connection", *names],
            [
                ["clients", *(f"{r['connected']:,}" for r in results)],
                [
                    "RSS (VmRSS after - before) ÷ clients",
                    *(f"{r['rss_per_connection_kb']:.1f} KB" for r in results),
                ],
                [
                    "tracemalloc: live bytes ÷ clients",
                    *(_b(r["tracemalloc"]["bytes_per_connection"]) + " B" for r in results),
                ],
                [
                    "gc-tracked objects ÷ clients",
                    *(
                        f"{sum(v[0] for v in r['census']['packages'].values()):.0f}"
                        for r in results
                    ),
                ],
            ],
        )
    ]
    packages = sorted(
        {k for r in results for k in r["tracemalloc"]["charged_to"]},
        key=lambda k: -max(r["tracemalloc"]["charged_to"].get(k, [0, 0])[0] for r in results),
    )

    def cell(r: Result, key: str, table: str) -> str:
        size, blocks = r["tracemalloc"][table].get(key, [0.0, 0.0])
        return f"{_b(size)} B ({blocks:.0f} blocks)"

    parts.append(
        "tracemalloc, bytes per connection by who asked for them (the innermost frame in "
        "trio_broadcast / the floor's handler, trio_websocket, wsproto or h11; else trio or the "
        "standard library):\n\n"
        + _table(
            ["charged to", *names],
            [[k, *(cell(r, k, "charged_to") for r in results)] for k in packages],
        )
    )
    packages = sorted({k for r in results for k in r["tracemalloc"]["allocated_in"]})
    parts.append(
        "tracemalloc, by the package of the line that allocated:\n\n"
        + _table(
            ["allocated in", *names],
            [[k, *(cell(r, k, "allocated_in") for r in results)] for k in packages],
        )
    )
    kinds = sorted({k for r in results for k in r["census"]["packages"]})
    parts.append(
        "Objects the garbage collector tracks (containers and instances; not str, bytes or int), "
        "per connection, by the package of their type: count, and shallow bytes "
        "(`sys.getsizeof`):\n\n"
        + _table(
            ["types from", *names],
            [
                [k, *(_count_size(r["census"]["packages"].get(k, [0, 0])) for r in results)]
                for k in kinds
            ],
        )
    )
    for r in results:
        types = sorted(r["census"]["types"].items(), key=lambda kv: -kv[1][1])[:20]
        parts.append(
            f"{r['server']}: types with at least one object per two connections\n\n"
            + _table(["type", "per connection"], [[f"`{k}`", _count_size(v)] for k, v in types])
        )
        parts.append(
            f"{r['server']}: tracemalloc, top lines (bytes and blocks per connection)\n\n"
            + _table(
                ["line", "bytes", "blocks"],
                [
                    [f"`{line}`", _b(size), f"{blocks:.1f}"]
                    for line, size, blocks in r["tracemalloc"]["top_lines"][:15]
                ],
            )
        )
    return "\n\n".join(parts)


def _count_size(entry: list[float]) -> str:
    return f"{entry[0]:.1f} ({_b(entry[1])} B)"


def render_profile(results: list[Result]) -> str:
    names = [r["server"] for r in results]
    packages = sorted({k for r in results for k in r["own_us_per_connection"]})
    parts = [
        _table(
            ["connect path, µs of own time per connection (under cProfile)", *names],
            [
                ["clients in the burst", *(f"{r['clients']:,}" for r in results)],
                ["burst wall time", *(f"{r['burst_s']:.2f} s" for r in results)],
                [
                    "all profiled time but the waits",
                    *(f"{r['profiled_us_per_connection']:.0f}" for r in results),
                ],
                [
                    "of which in the cyclic GC (gen 0 / 1 / 2), and its runs in the burst",
                    *(_gc(r) for r in results),
                ],
                *(
                    [k, *(f"{r['own_us_per_connection'].get(k, 0):.0f}" for r in results)]
                    for k in packages
                ),
            ],
        )
    ]
    for r in results:
        for key, what in (("by_tottime", "own time"), ("by_cumtime", "cumulative time")):
            parts.append(
                f"{r['server']}: top functions by {what} (per connection)\n\n"
                + _table(
                    ["function", "package", "calls", "own µs", "cumulative µs"],
                    [
                        [f"`{f}`", p, f"{c:.1f}", f"{t:.1f}", f"{u:.1f}"]
                        for f, p, c, t, u in r[key]
                    ],
                )
            )
    return "\n\n".join(parts)


NONE = "\u2013"  # en dash: nothing to show


def _gc(r: Result) -> str:
    times = " / ".join(f"{t:.0f}" for t in r["gc_us_per_connection"])
    runs = " / ".join(str(n) for n in r["gc_runs"])
    return f"{times} ({runs} runs)"


def _s(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f} s"


def render_storm(results: list[Result]) -> str:
    names = [r["server"] for r in results]
    rows = [
        ["clients connected before the restart", *(f"{r.get('connected', 0):,}" for r in results)],
        ["their connect time (64 in flight)", *(_s(r.get("connect_s")) for r in results)],
        ["SIGTERM → old server exited", *(_s(r.get("old_exit_s")) for r in results)],
        ["exited → new server listening", *(_s(r.get("restart_to_listening_s")) for r in results)],
        ["listening → every client's 101", *(_s(r.get("all_upgraded_s")) for r in results)],
        [
            "… p50 / p99 of the 101s",
            *(f"{_s(r.get('upgraded_p50_s'))} / {_s(r.get('upgraded_p99_s'))}" for r in results),
        ],
        [
            "listening → every client served (101 and a line)",
            *(
                _s(r.get("all_served_s")) if r["broadcasts"] else f"{NONE} (no broadcast)"
                for r in results
            ),
        ],
        [
            "… p50 / p99 served",
            *(
                f"{_s(r.get('served_p50_s'))} / {_s(r.get('served_p99_s'))}"
                if r["broadcasts"]
                else NONE
                for r in results
            ),
        ],
        ["reconnected / served", *(f"{r['reconnected']:,} / {r['served']:,}" for r in results)],
        ["most connection attempts by one client", *(str(r["attempts_max"]) for r in results)],
        ["timed out", *(str(r["timed_out"]) for r in results)],
    ]
    return _table(["reconnect storm", *names], rows)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.mode == "_serve":
        return serve(args.kind, args.port, args.marks, trace=args.trace, profile=args.profile)
    fd_limit = raise_fd_limit()
    needed = args.clients + 200
    if fd_limit < needed:
        print(f"RLIMIT_NOFILE is {fd_limit}: too low for {args.clients} clients")
        return 1
    if pin(CLIENT_CORE):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {CLIENT_CORE})
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="connection-cost-") as work:
        results = trio.run(_measure, args, servers, Path(work))
    render = {
        "memory": render_memory,
        "profile": render_profile,
        "storm": render_storm,
        "instructions": render_instructions,
    }[args.mode]
    print(render(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


async def _measure(args: argparse.Namespace, servers: list[str], work: Path) -> list[Result]:
    results = []
    for kind in servers:
        began = time.monotonic()
        if args.mode == "memory":
            results.append(await memory(kind, args.clients, work))
        elif args.mode == "profile":
            results.append(await profile(kind, args.clients, work, args.top))
        elif args.mode == "instructions":
            results.append(await instructions(kind, args.clients, work))
        else:
            results.append(
                await storm(kind, args.clients, work, trio.current_time() + args.timeout)
            )
        print(f"{args.mode} {kind}: {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    modes = parser.add_subparsers(dest="mode", required=True)
    for mode, clients in (
        ("memory", 1000),
        ("profile", 1000),
        ("storm", 5000),
        ("instructions", 300),
    ):
        sub = modes.add_parser(mode)
        sub.add_argument("--clients", type=int, default=clients, help=f"(default: {clients:,})")
        sub.add_argument("--servers", default=",".join(SERVERS), help="(default: both)")
        sub.add_argument("--out", type=Path, help="also write the figures as JSON here")
        if mode == "profile":
            sub.add_argument("--top", type=int, default=15, help="functions listed (default: 15)")
        if mode == "storm":
            sub.add_argument(
                "--timeout", type=float, default=120.0, help="per server (default: 120 s)"
            )
    serving = modes.add_parser("_serve", help=argparse.SUPPRESS)
    serving.add_argument("kind", choices=SERVERS)
    serving.add_argument("port", type=int)
    serving.add_argument("marks", type=Path)
    serving.add_argument("--trace", action="store_true")
    serving.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    unknown = set(getattr(args, "servers", "").split(",")) - set(SERVERS) - {""}
    if unknown:
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    return args


if __name__ == "__main__":
    sys.exit(main())
