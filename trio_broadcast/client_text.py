"""Text a client chose, made fit to show: escaped, bounded, without the token.

In a log line above all, and also where an answer quotes the request back
(a 400 naming the bad target, a 405 naming the method): :func:`shown` there.

A log line is read by people, in a terminal, and by programs, one line at a
time. A client that can put a newline into it can write a line of its own
(``client 1.2.3.4:5 connected``); one that can put an escape sequence into it
can retitle or clear the operator's terminal; one that can put 10 kB into it
fills the log. And the access token must never be written, even when a
malformed request that carries it is quoted back by the HTTP parser.

* :func:`quote` is for every client-chosen string formatted into a log line (a
  close reason, an HTTP parser's complaint, a refusal that names the method):
  each control or non-printable character becomes an escape, and the result is
  at most ``limit`` characters.
* :func:`redact` is for text that may hold a request (a request line, a header
  line): it takes out the token before :func:`quote` sees it.
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
import re
from urllib.parse import unquote_plus

LIMIT = 200
"""The default bound on a quoted string, in characters, escapes included."""

SHOWN = 100
"""The bound on client text quoted back in an HTTP answer."""

CUT = "…"
"""Ends a string that :func:`quote` had to cut."""

REDACTED = "[redacted]"
"""What :func:`redact` puts in place of a credential."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_PARAMETER_NAME = re.compile(r"(?<![^\s=&?;#])[^\s=&?;#]+(?==)")  # whole names: linear time
_WHITESPACE = re.compile(r"\s")
_AUTHORIZATION = re.compile(r"authorization\s*:?\s*([^\r\n]*)", re.IGNORECASE)


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


def quote(text: str, limit: int = LIMIT, *, backslashes: bool = True) -> str:
    """``text`` as :func:`escape` writes it, cut to at most ``limit`` characters.

    A cut string ends with :data:`CUT`, counted in ``limit``; an escape is
    never cut in half. ``limit`` must be at least 1. The work done is bounded
    by ``limit``, not by the length of ``text``. ``backslashes`` as for
    :func:`escape`: a log line needs them escaped (so that a client cannot
    write what looks like an escape), an answer to the client itself does not,
    and then quotes text that is already escaped (an HTTP parser's message)
    without doubling them.
    """
    if limit < len(CUT):
        raise ValueError(f"limit must be at least {len(CUT)}")
    pieces: list[str] = []
    size = 0
    for char in text[: limit + 1]:
        piece = _escaped(char, backslashes)
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    else:  # every character fitted, so there were at most limit of them
        return "".join(pieces)
    while size + len(CUT) > limit:
        size -= len(pieces.pop())
    return "".join(pieces) + CUT


def shown(text: str, limit: int = SHOWN) -> str:
    """Client text quoted back in an HTTP answer: :func:`quote`, without doubling
    backslashes, at most :data:`SHOWN` characters unless ``limit`` says otherwise."""
    return quote(text, limit, backslashes=False)


def redact(text: str) -> str:
    """``text`` without the credentials a request line or header line may carry.

    * The value of a query parameter whose name, percent-decoded, ends in
      ``token`` (``?token=``, ``&%74oken=``, ``?access_token=``), up to the next
      whitespace: a token has none (see :class:`~trio_broadcast.config.Config`),
      so this takes all of it even where it holds ``&``, ``#`` or quotes, or is
      shown escaped (``bytearray(b'…')``, as h11 quotes a bad line).
    * Whatever follows ``Authorization`` (any case, also ``Proxy-Authorization``)
      and its separator on the same line, whatever the scheme.

    Each credential found in ``text`` is taken out whole, even where it holds
    or overlaps another, and each stretch taken out becomes :data:`REDACTED`.
    It errs on the side of taking out too much: the rest of a target after the
    token goes, and so does what follows the word "authorization" anywhere.
    Only for text from a request: the server's own messages name these
    parameters and headers, and would be garbled. Linear time.
    """
    spans = [match.span(1) for match in _AUTHORIZATION.finditer(text)]
    covered = 0  # a token parameter inside another's value would end where it does
    for name in _PARAMETER_NAME.finditer(text):
        if name.start() >= covered and unquote_plus(name[0]).strip().lower().endswith("token"):
            start = name.end() + 1  # after the "="
            space = _WHITESPACE.search(text, start)
            covered = len(text) if space is None else space.start()
            spans.append((start, covered))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if start == end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    pieces: list[str] = []
    kept = 0
    for start, end in merged:
        pieces += [text[kept:start], REDACTED]
        kept = end
    pieces.append(text[kept:])
    return "".join(pieces)


class LogFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that escapes non-printable characters in each message.

    The message is escaped after its ``%`` arguments are filled in, with
    :func:`escape` leaving backslashes alone; the prefix (time, level) and any
    traceback are formatted as usual.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message, backslashes=False)
        return super().formatMessage(record)
