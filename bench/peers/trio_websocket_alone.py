"""Floor server: trio-websocket alone, accepting and echoing, nothing else.

The reference column for what a connection costs (issue 14): trio-broadcast is
built on trio-websocket, so its memory per idle connection, its connect rate
and its echo rate cannot be better than this server's, and the gap between the
two is what trio-broadcast adds. The handler accepts, then echoes each message
back; trio-websocket's defaults stand, except the ones trio-broadcast's bench
runs change as well (no keep-alive pings: trio-websocket sends none anyway).
It does not read standard input and broadcasts nothing, so the bench runs it in
the connection-cost scenarios only (S3's memory and connect rate, S5, C1).

    python trio_websocket_alone.py --port 8000 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket


async def echo(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def main(host: str, port: int) -> None:
    await serve_websocket(echo, host, port, ssl_context=None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(partial(main, args.host, args.port))
