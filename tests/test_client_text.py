"""Unit and property tests for :mod:`trio_broadcast.client_text`: client text fit for a log line.

Covered: :func:`quote` escapes every non-printable character (controls, U+2028,
bidi overrides, surrogates) and backslashes, cuts to its limit with a marker and
never in the middle of an escape; :func:`redact` takes out the token from query
parameters (any spelling of the name) and whatever follows ``Authorization``,
on plain text and on h11's quoting of a bad line; :class:`LogFormatter` escapes
a record's message, not its traceback. Hypothesis checks that quoted text is
printable, bounded and can be unescaped back into the text (or a prefix of it,
when cut), that the formatter's escaping leaves quoted text alone, and that
what :func:`redact` leaves does not depend on the token.
"""

from __future__ import annotations

import codecs
import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_broadcast.client_text import CUT, LIMIT, REDACTED, LogFormatter, escape, quote, redact

from .conftest import budget

FORGED = "\r\nclient 1.2.3.4:5 connected (9 clients)\x1b]0;pwned\x07\x1b[2J\u2028\u202e"
TEXT = st.text(st.characters(exclude_categories=()))
"""Any text, lone surrogates included (a str may hold them, from ``surrogateescape``)."""
TOKENS = st.from_regex(r"[!-~]+", fullmatch=True)
"""Every token the server accepts (printable ASCII, no spaces)."""


def unescape(text: str) -> str:
    """Undo :func:`escape`: Python's own reading of backslash escapes."""
    return codecs.decode(text.encode("ascii", "backslashreplace"), "unicode_escape")


# --- quote ----------------------------------------------------------------------------


def test_quote_escapes_a_forged_line_and_terminal_controls() -> None:
    assert quote(FORGED) == (
        r"\r\nclient 1.2.3.4:5 connected (9 clients)\x1b]0;pwned\x07\x1b[2J\u2028\u202e"
    )


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("plain text, é and 😀 stay", "plain text, é and 😀 stay"),
        ("\t\x00\x7f\x85\xa0", r"\t\x00\x7f\x85\xa0"),
        ("a\\nb", r"a\\nb"),
        ("\u2029\u2066\ufeff\ud800\U000e0001", r"\u2029\u2066\ufeff\ud800\U000e0001"),
        ("", ""),
    ],
    ids=["printable", "controls", "backslash", "unicode", "empty"],
)
def test_quote_escapes_what_is_not_printable(text: str, quoted: str) -> None:
    assert quote(text) == quoted


def test_quote_cuts_long_text_with_a_marker_and_never_inside_an_escape() -> None:
    assert quote("x" * LIMIT) == "x" * LIMIT
    assert quote("x" * (LIMIT + 1)) == "x" * (LIMIT - 1) + CUT
    assert quote("x" * 10**6, 10) == "x" * 9 + CUT
    assert quote("abcd\x1b", 7) == "abcd" + CUT  # not "abcd\\x1" + CUT
    assert quote("ab", 1) == CUT
    with pytest.raises(ValueError, match="at least 1"):
        quote("ab", 0)


@budget(500)
@given(TEXT, st.integers(1, 300))
def test_quote_is_printable_bounded_and_undoes_into_the_text(text: str, limit: int) -> None:
    quoted = quote(text, limit)
    assert quoted.isprintable()
    assert len(quoted) <= limit
    if len(escape(text)) <= limit:
        assert quoted == escape(text)
        assert unescape(quoted) == text
    else:
        assert quoted.endswith(CUT)
        kept = unescape(quoted[: -len(CUT)])
        assert len(kept) < len(text)
        assert text.startswith(kept)
        # It kept all it could: one more character would not have fitted.
        assert len(escape(text[: len(kept) + 1])) > limit - len(CUT)


@budget(300)
@given(TEXT)
def test_escape_without_backslashes_leaves_quoted_text_alone(text: str) -> None:
    once = escape(text, backslashes=False)
    assert once.isprintable()
    assert escape(once, backslashes=False) == once
    assert escape(quote(text), backslashes=False) == quote(text)


# --- redact ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("GET /?token=abc HTTP/1.1", f"GET /?token={REDACTED} HTTP/1.1"),
        ("GET /?a=1&token=abc&b=2#c HTTP/1.1", f"GET /?a=1&token={REDACTED} HTTP/1.1"),
        ("GET /?%74oK%65n=abc", f"GET /?%74oK%65n={REDACTED}"),
        ("GET /?access_token=abc", f"GET /?access_token={REDACTED}"),
        ("GET /?x=token=abc y", f"GET /?x=token={REDACTED} y"),
        ("GET /?token=a&token=b c", f"GET /?token={REDACTED} c"),
        ("Authorization: Bearer abc\r\nHost: x", f"Authorization: {REDACTED}\r\nHost: x"),
        ("AUTHORIZATION:Basic dXNlcjpw\nok", f"AUTHORIZATION:{REDACTED}\nok"),
        ("Proxy-Authorization: Digest x", f"Proxy-Authorization: {REDACTED}"),
        ("?token=xAuthorization: Bearer abc", f"?token={REDACTED} {REDACTED}"),
        (
            r"illegal request line: bytearray(b'GET /?token=a\x01b HTTP/1.1')",
            f"illegal request line: bytearray(b'GET /?token={REDACTED} HTTP/1.1')",
        ),
        (
            "illegal header line: bytearray(b'Authorization Bearer abc')",
            f"illegal header line: bytearray(b'Authorization {REDACTED}",
        ),
        ("GET /?tokens=1&x=token&token= HTTP/1.1", "GET /?tokens=1&x=token&token= HTTP/1.1"),
    ],
)
def test_redact_takes_out_the_token(text: str, redacted: str) -> None:
    assert redact(text) == redacted


# A credential runs to the end of its line (the header) or the next whitespace
# (the parameter): with a newline after the token, what redact() leaves of the
# rest cannot depend on the token either, so the whole result must not.
REQUESTISH = st.lists(
    st.sampled_from(["?", "&", "=", " ", "\n", "%74", "token", "Token=", "Authorization", ":"])
    | st.text(max_size=3)
).map("".join)
"""Text with pieces of query strings and headers, so that credentials meet and overlap."""
AFTER = st.tuples(st.sampled_from(["\n", "\r\n"]), REQUESTISH).map("".join)


@budget(300)
@given(REQUESTISH, TOKENS, TOKENS, AFTER)
def test_redact_leaves_nothing_of_a_query_token(
    before: str, token: str, other: str, after: str
) -> None:
    assert redact(f"{before}token={token}{after}") == redact(f"{before}token={other}{after}")


@budget(300)
@given(REQUESTISH, st.sampled_from(["Bearer ", "Basic ", "", "bearer\t"]), TOKENS, TOKENS, AFTER)
def test_redact_leaves_nothing_of_an_authorization_header(
    before: str, scheme: str, token: str, other: str, after: str
) -> None:
    header = f"{before}Authorization: {scheme}"
    assert redact(header + token + after) == redact(header + other + after)


# --- the formatter --------------------------------------------------------------------


def test_the_formatter_escapes_the_message_but_not_the_traceback() -> None:
    formatter = LogFormatter("prefix: %(levelname)s: %(message)s")
    try:
        raise ValueError("the server's own\nmulti-line traceback")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "trio-websocket", logging.DEBUG, __file__, 1, "closed %s", (FORGED,), exc_info
    )
    first, *traceback = formatter.format(record).split("\n")
    assert first == (
        r"prefix: DEBUG: closed \r\nclient 1.2.3.4:5 connected (9 clients)"
        r"\x1b]0;pwned\x07\x1b[2J\u2028\u202e"
    )
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-2:] == ["ValueError: the server's own", "multi-line traceback"]
