"""Peer server: the ``websockets`` library's native Trio server (websockets 15+).

Broadcasts each line of standard input to every connected client and echoes each
client's messages back. This is the straightforward code a user would write:
read standard input in chunks, split lines, and for each line ``await`` the
library's ``broadcast()`` helper (``websockets.trio.server.broadcast``), which
writes the message to every open connection, one task per connection, and
returns when all writes are done.

    python websockets_trio.py --port 8000
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import trio
from websockets.trio.server import Server, ServerConnection, broadcast, serve


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        # Same footing as the other servers: no compression, no keepalive pings.
        server: Server = await nursery.start(
            partial(serve, echo, port, host=host, compression=None, ping_interval=None)
        )
        stdin = trio.lowlevel.FdStream(os.dup(0))
        partial_line = b""
        while chunk := await stdin.receive_some(65536):
            *lines, partial_line = (partial_line + chunk).split(b"\n")
            for line in lines:
                await broadcast(server.connections, line.decode(errors="replace"))
        # The end of input does not stop the server: the nursery keeps serving.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(main, args.host, args.port)
