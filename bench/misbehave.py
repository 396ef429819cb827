"""Misbehaving WebSocket clients, for the fault storm (``bench/faults.py``).

Usage: ``python bench/misbehave.py '<json config>'`` with the config keys
``host``, ``port``, ``slots``, ``seconds`` and ``ping_interval`` (the server's,
to know how long a half-open client should take to be dropped).

Each of ``slots`` tasks runs one misbehaviour after another, in rotation (slot
*k* starts at the *k*-th), until ``seconds`` have passed, with a short pause
between two. Every run is bounded in time. At the end one JSON object goes to
stdout: for each run, the behaviour, the client's local port (which the
server's log names), what the client saw, and how long that took.

The clients speak raw TCP, written by hand: a misbehaving client has to do
what no WebSocket library lets it do.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.wire
from tests.wire import (
    Frame,
    ProtocolViolation,
    ServerFrameParser,
    masked_frame,
    masked_header,
    upgrade_request,
)

SOURCE = "127.0.0.2"
"""Misbehaving clients connect from here, so the server's log tells them apart
from the well-behaved ones (which come from 127.0.0.1)."""
SOURCE_HEX = "0200007F"
PAUSE = 0.5
"""Seconds between two runs of one slot: the storm's pacing, not a synchronisation."""
OVERSIZED = 2 << 20
"""Bytes in an oversized message: twice the server's default --max-message-size."""
FLOOD_FRAMES = 2_000_000
"""Empty continuation frames a fragment flood sends at most (12 MB): the review's
flood, which the server once took whole without refusing it."""
CLOSE = 0x8
TEXT, PING, PONG = 0x1, 0x9, 0xA
TALK_SECONDS = 6.0
"""How long a slow talker stays, if the server does not cut it off first."""


@dataclass
class Run:
    behaviour: str
    port: int
    outcome: str
    seconds: float


class Peer:
    """One raw connection to the server."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buffer = bytearray()
        """Bytes read and not yet parsed: the answer to the handshake, or a frame's start."""
        self.parser = ServerFrameParser()
        self._frames: deque[Frame] = deque()
        self.port = int(sock.getsockname()[1])

    @classmethod
    async def connect(cls, host: str, port: int, rcvbuf: int | None = None) -> Peer:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            await sock.bind((SOURCE, 0))
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def handshake(self, host: str, port: int) -> None:
        """Send an upgrade request and read the 101 (anything else raises)."""
        await self.send(request(host, port))
        while b"\r\n\r\n" not in self.buffer:
            if not await self.fill():
                raise ConnectionError(f"closed in the handshake: {bytes(self.buffer[:60])!r}")
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise ConnectionError(f"handshake refused: {head[:40]!r}")
        self.buffer = bytearray(rest)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def fill(self) -> bool:
        """Read more; False at the end of the connection (FIN or reset)."""
        try:
            data = await self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buffer += data
        return bool(data)

    def parsed(self) -> Frame | None:
        """The next whole frame in what was read so far, if any.

        Strictly checked (:class:`~tests.wire.ServerFrameParser`): raises
        :class:`~tests.wire.ProtocolViolation` on bytes that are not whole,
        valid server frames, such as a frame written inside another one.
        """
        if self.buffer:
            self._frames.extend(self.parser.feed(bytes(self.buffer)))
            self.buffer.clear()
        return self._frames.popleft() if self._frames else None

    async def frame(self) -> Frame | None:
        """The next frame from the server, or ``None`` when the connection ends."""
        while (frame := self.parsed()) is None:
            if not await self.fill():
                return None
        return frame

    async def until_closed(self) -> str:
        """Read, ignoring pings, until the server closes; how it did."""
        while (frame := await self.frame()) is not None:
            if frame.opcode == CLOSE:
                return f"close frame {_code(frame)}"
        return "dropped without a close frame"

    def reset(self) -> None:
        """Vanish with a TCP reset (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def request(host: str, port: int) -> bytes:
    """The upgrade request to the server at ``host``:``port``, with a fresh key."""
    return upgrade_request(host=f"{host}:{port}")


def _code(close: Frame) -> int:
    """A close frame's code; 1005 (RFC 6455 7.1.5) when it has none."""
    code = close.close_code
    return 1005 if code is None else code


# ---------------------------------------------------------------- the misbehaviours
# Each returns what the client saw; the caller bounds its time and times it.


async def never_read(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Complete the handshake, then stop reading: the server must cut it off.

    A client that does not read cannot see the server close (the FIN waits
    behind the data it does not read), so this watches the server's end of
    the connection in ``/proc/net/tcp``, then reads what was queued to see
    how the connection ended.
    """
    await peer.handshake(host, port)
    deadline = trio.current_time() + config["hold"]
    while server_holds(port, peer.port):
        if trio.current_time() >= deadline:
            return f"still connected after {config['hold']:g} s"
        await trio.sleep(0.2)  # the kernel has no event for the far end's state
    return await peer.until_closed()


def server_holds(server_port: int, client_port: int) -> bool:
    """Whether the server process still holds its end of this connection open."""
    local, remote = f"0100007F:{server_port:04X}", f"{SOURCE_HEX}:{client_port:04X}"
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                # ESTABLISHED or CLOSE_WAIT, with an inode: a socket a process holds.
                return fields[3] in ("01", "08") and fields[9] != "0"
    return False


async def reset_mid_frame(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Send half a frame, then vanish with a TCP reset."""
    await peer.handshake(host, port)
    mask = b"\0\0\0\0"  # so that the half sent is valid UTF-8 ("xxx...")
    await peer.send(masked_header(0x1, 1000, mask) + b"x" * 400)
    peer.reset()
    return "reset sent"


async def half_open(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Read everything but never answer a ping: keep-alive must drop it."""
    await peer.handshake(host, port)
    return await peer.until_closed()


async def slowloris(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Send the request head a byte a second: the handshake timeout must drop it."""
    head = request(host, port)
    async with trio.open_nursery() as nursery:

        async def dribble() -> None:
            try:
                for i in range(len(head) - 2):  # never the final CRLF
                    await peer.send(head[i : i + 1])
                    await trio.sleep(1.0)
            except OSError:
                pass  # the server hung up: the reader below sees it too

        nursery.start_soon(dribble)
        while await peer.fill():
            pass
        nursery.cancel_scope.cancel()
    answer = bytes(peer.buffer[:12]).decode(errors="replace")
    return f"closed by the server{': ' + answer if answer else ''}"


async def oversized(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Send a message twice the size limit: the server must close with 1009."""
    await peer.handshake(host, port)
    mask = b"\0\0\0\0"  # a zero key leaves the payload as is
    chunk = b"\0" * 65536
    head = masked_header(0x2, OVERSIZED, mask)
    return await send_until_closed(peer, head, chunk, OVERSIZED // len(chunk))


async def fragment_flood(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Start a text message, then continue it with empty frames: the server must refuse it.

    Each empty continuation frame is 6 bytes; the server allows a message one
    fragment per 64 bytes of its limit (16,384 for the default 1 MiB) and
    closes with 1008 after that.
    """
    await peer.handshake(host, port)
    mask = b"\0\0\0\0"
    batch = 10_000
    frames = masked_header(0x0, 0, mask, fin=False) * batch
    head = masked_header(0x1, 0, mask, fin=False)
    return await send_until_closed(peer, head, frames, FLOOD_FRAMES // batch)


async def send_until_closed(peer: Peer, head: bytes, body: bytes, times: int) -> str:
    """Send ``head``, then ``body`` ``times`` times, while reading until the server closes."""
    async with trio.open_nursery() as nursery:

        async def send_it() -> None:
            try:
                await peer.send(head)
                for _ in range(times):
                    await peer.send(body)
            except OSError:
                pass  # the server closed while we were still sending

        nursery.start_soon(send_it)
        outcome = await peer.until_closed()
        nursery.cancel_scope.cancel()
    return outcome


class CorruptStream(Exception):
    """The server's frames, though well-formed, are not what this client was sent."""


async def slow_talker(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Read slowly and irregularly through a tiny buffer, while pinging and sending messages.

    The client that once got a pong or an echo written inside a broadcast
    frame: every frame must arrive whole (text frames valid UTF-8), its echoes
    in order; the server may cut it off (1008) or serve it until it leaves.
    """
    await peer.handshake(host, port)
    try:
        return await _talk(peer)
    except (ConnectionResetError, BrokenPipeError):
        return "dropped without a close frame"


async def _talk(peer: Peer) -> str:
    sent: list[bytes] = []
    echoed = 0
    reads = 0
    deadline = trio.current_time() + TALK_SECONDS
    while trio.current_time() < deadline:
        reads += 1
        frame = peer.parsed()
        if frame is None:
            # Catching up (large reads) and lagging (small reads, pauses) in turn,
            # so that the server's socket often fills in the middle of a frame.
            lagging = (reads // 40) % 2 == 1
            sizes = (7, 100, 700, 1500) if lagging else (2900, 5000, 65536)
            data = await peer.sock.recv(sizes[reads % len(sizes)])
            if not data:
                return "dropped without a close frame"
            peer.buffer += data
            if lagging and reads % 2:
                await trio.sleep(0.001 * (reads % 5))
            if reads % 4 == 0:
                sent.append(b"talk %d" % reads)
                kind = PING if reads % 8 else TEXT
                await peer.send(masked_frame(kind, sent[-1] if kind == TEXT else b"p"))
                if kind != TEXT:
                    sent.pop()
            continue
        opcode, payload = frame.opcode, frame.payload
        if opcode == CLOSE:
            return f"close frame {_code(frame)}"
        if opcode == PING:
            await peer.send(masked_frame(PONG, payload))
        elif opcode == TEXT and payload.startswith(b"talk "):
            if echoed >= len(sent) or payload != sent[echoed]:
                raise CorruptStream(f"echo out of order: {payload[:24]!r}")
            echoed += 1
    await peer.send(masked_frame(CLOSE, struct.pack("!H", 1000)))
    return "served, then left"


async def invalid_utf8(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Send a text message that is not UTF-8: the server must end the connection."""
    await peer.handshake(host, port)
    await peer.send(masked_frame(0x1, b"caf\xc3\x28 \xff"))
    return await peer.until_closed()


async def no_handshake(peer: Peer, host: str, port: int, config: dict[str, Any]) -> str:
    """Connect and close without a word."""
    peer.close()
    return "closed without a handshake"


Behaviour = Callable[[Peer, str, int, dict[str, Any]], Awaitable[str]]
BEHAVIOURS: dict[str, Behaviour] = {
    "never_read": never_read,
    "reset_mid_frame": reset_mid_frame,
    "half_open": half_open,
    "slowloris": slowloris,
    "oversized": oversized,
    "fragment_flood": fragment_flood,
    "invalid_utf8": invalid_utf8,
    "no_handshake": no_handshake,
    "slow_talker": slow_talker,
}


async def one_run(name: str, host: str, port: int, config: dict[str, Any]) -> Run:
    began = time.monotonic()
    peer: Peer | None = None
    try:
        with trio.move_on_after(config["run_timeout"]) as bounded:
            rcvbuf = {"never_read": 4096, "slow_talker": 2048}.get(name)
            peer = await Peer.connect(host, port, rcvbuf=rcvbuf)
            outcome = await BEHAVIOURS[name](peer, host, port, config)
        if bounded.cancelled_caught:
            outcome = f"no end within {config['run_timeout']:g} s"
    except OSError as exc:
        outcome = f"error: {type(exc).__name__}"
    except (CorruptStream, ProtocolViolation) as exc:
        outcome = f"error: corrupt stream: {exc}"
    finally:
        if peer is not None:
            peer.close()
    return Run(name, peer.port if peer else 0, outcome, round(time.monotonic() - began, 3))


async def main(config: dict[str, Any]) -> list[Run]:
    host, port = config["host"], config["port"]
    # Bounds: how long a never-reading client waits to be cut off, and any run.
    config.setdefault("hold", 20.0)
    config.setdefault("run_timeout", max(30.0, 3 * config["ping_interval"] + 15))
    names = list(BEHAVIOURS)
    runs: list[Run] = []
    deadline = trio.current_time() + config["seconds"]

    async def slot(k: int) -> None:
        for i in itertools.count(k):
            if trio.current_time() >= deadline:
                return
            runs.append(await one_run(names[i % len(names)], host, port, config))
            await trio.sleep(PAUSE)

    async with trio.open_nursery() as nursery:
        for k in range(config["slots"]):
            nursery.start_soon(slot, k)
    return runs


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    finished = trio.run(main, settings)
    print(json.dumps({"event": "result", "runs": [asdict(r) for r in finished]}), flush=True)
