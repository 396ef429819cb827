"""Peer server: the ``websockets`` library's asyncio server, as a user would write it.

Broadcasts each line of standard input to every connected client with
``websockets.asyncio.server.broadcast()`` and echoes each client's messages back.
Standard input is read with asyncio (``connect_read_pipe``, a ``StreamReader``).

    python websockets_asyncio.py --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def main(host: str, port: int) -> None:
    # Same footing as the other servers: no compression, no keepalive pings.
    async with serve(echo, host, port, compression=None, ping_interval=None) as server:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            broadcast(server.connections, line.rstrip(b"\n").decode(errors="replace"))
        await server.serve_forever()  # the end of input does not stop the server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
