"""The ``trio-broadcast.v1`` subprotocol: what its clients are sent, as JSON payloads.

A client that offers ``Sec-WebSocket-Protocol: trio-broadcast.v1`` gets one
JSON object per text frame instead of bare lines, so that it can tell a
broadcast line from an echo, and knows the ID of every line, which it sends
back as ``?since=ID`` when it reconnects (:mod:`trio_broadcast.retention`).
The messages, in the order a connection sees them:

* ``{"type": "hello", "id": ID}``: first, always: the position just before
  the first line this connection will be sent. Resuming from it misses nothing;
* ``{"type": "gap", "since": ID, "missed": COUNT}``: next, only when a resume
  from ``since`` could not be exact; ``missed`` is ``null`` when the count is
  not known;
* ``{"type": "line", "id": ID, "line": TEXT}``: a broadcast line;
* ``{"type": "echo", "data": TEXT}``: the echo of the client's text message (a
  binary message is echoed as the same binary frame, as for plain clients).

IDs are opaque strings to clients. New fields may be added later; clients
ignore what they do not know. Pure functions, no I/O: the payloads are framed
by :func:`trio_broadcast.frames.text_frame`, once for all clients.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

NAME = "trio-broadcast.v1"
"""The subprotocol's name, as offered in ``Sec-WebSocket-Protocol``."""
SINCE = "since"
"""The query parameter that asks to resume after an ID."""

_text = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def chosen(offered: Iterable[str]) -> str | None:
    """The subprotocol to accept among those a client offers: :data:`NAME`, or none."""
    return NAME if NAME in offered else None


def hello(position: str) -> bytes:
    """The first message: the position just before the first line to come."""
    return ('{"type":"hello","id":' + _text(position) + "}").encode()


def gap(since: str, missed: int | None) -> bytes:
    """A resume from ``since`` that could not be exact; ``missed=None``: count unknown."""
    count = "null" if missed is None else str(missed)
    return ('{"type":"gap","since":' + _text(since) + ',"missed":' + count + "}").encode()


def line(position: str, text: str) -> bytes:
    """A broadcast line and its ID.

    The hot path (once per line for all clients): ``position`` is one of the
    server's own IDs, letters, digits, ``-`` and ``:``, so it needs no escaping.
    """
    return ('{"type":"line","id":"' + position + '","line":' + _text(text) + "}").encode()


def echo(text: str) -> bytes:
    """The echo of a client's text message."""
    return ('{"type":"echo","data":' + _text(text) + "}").encode()
