"""Text a client chose, made fit for a log line: escaped and bounded.

A log line is read by people, in a terminal, and by programs, one line at a
time. A client that can put a newline into it can write a line of its own
(``client 1.2.3.4:5 connected``); one that can put an escape sequence into it
can retitle or clear the operator's terminal; one that can put 10 kB into it
fills the log.

* :func:`quote` is for every client-chosen string formatted into a log line (a
  close reason, an HTTP parser's complaint, a refusal that names the method):
  each control or non-printable character becomes an escape, and the result is
  at most ``limit`` characters.
* :class:`LogFormatter` is the command's log format. It escapes the
  non-printable characters of every record's message, whoever logged it.

Why both, and why escaping is done where client text enters a line rather than
only in the formatter: the call site knows which part of a line came from the
client, so only that part is bounded and marked as cut, and backslashes in it
are escaped too (so that ``\\n`` from a client cannot pass for an escaped
newline). The formatter is defence in depth for the lines the server does not
write itself: trio-websocket's debug line ``websocket closed …`` quotes the
client's close reason raw. It escapes only the message, never the traceback of
:meth:`logging.Logger.exception` (the server's own multi-line text, which it
would garble), and leaves backslashes alone, so that text already quoted passes
through unchanged. It cannot bound a library's line, but the protocol bounds
those (a close reason or a ping is at most 125 bytes).
"""

from __future__ import annotations

import logging

LIMIT = 200
"""The default bound on a quoted string, in characters, escapes included."""

CUT = "…"
"""Ends a string that :func:`quote` had to cut."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str, backslashes: bool) -> str:
    if char == "\\":
        return "\\\\" if backslashes else char
    if char.isprintable():
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(text: str, *, backslashes: bool = True) -> str:
    """``text`` with every non-printable character as a Python-style escape.

    Non-printable is :meth:`str.isprintable`'s sense: control characters (``\\n``,
    ``\\x1b``), line and paragraph separators (``\\u2028``), format characters
    such as bidi overrides (``\\u202e``), spaces other than the ASCII one
    (``\\xa0``), surrogates, unassigned code points. The result holds only
    printable characters. With ``backslashes`` (the default) a backslash
    becomes ``\\\\`` too, so that the escaping can be undone; without, text
    already escaped is left unchanged.
    """
    if text.isprintable() and (not backslashes or "\\" not in text):
        return text
    return "".join(_escaped(char, backslashes) for char in text)


def quote(text: str, limit: int = LIMIT) -> str:
    """``text`` as :func:`escape` writes it, cut to at most ``limit`` characters.

    A cut string ends with :data:`CUT`, counted in ``limit``; an escape is
    never cut in half. ``limit`` must be at least 1. The work done is bounded
    by ``limit``, not by the length of ``text``.
    """
    if limit < len(CUT):
        raise ValueError(f"limit must be at least {len(CUT)}")
    pieces: list[str] = []
    size = 0
    for char in text[: limit + 1]:
        piece = _escaped(char, backslashes=True)
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    else:  # every character fitted, so there were at most limit of them
        return "".join(pieces)
    while size + len(CUT) > limit:
        size -= len(pieces.pop())
    return "".join(pieces) + CUT


class LogFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that escapes non-printable characters in each message.

    The message is escaped after its ``%`` arguments are filled in, with
    :func:`escape` leaving backslashes alone; the prefix (time, level) and any
    traceback are formatted as usual.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message, backslashes=False)
        return super().formatMessage(record)
