"""A broken connection's error, made to let go of the connection (Python 3.12 and later).

trio turns a socket's ``OSError`` into ``BrokenResourceError`` in a context
manager (``trio._highlevel_socket._translate_socket_errors_to_stream_errors``,
and alike in ``trio.SSLStream``), raising the new error ``from`` the old. From
Python 3.12, the generator frame of that context manager, finished by the
error thrown into it, keeps ``f_back`` to the frame of ``contextlib``'s
``__exit__``, whose ``value`` is the ``OSError``, whose traceback holds the
generator frame: a reference cycle. Through ``f_back`` it reaches up to the
frame that called the socket, so a connection ended by a reset kept its
reader, its wsproto state and everything they held until a full pass of the
cyclic garbage collector. (Python 3.11 does not keep that ``f_back``.)

:func:`forget_cause_tracebacks` is called where such an error is caught or
passes by; the error itself and its message are kept, the causes' tracebacks
(which nothing here prints) are not. :class:`suppress_broken` is
``contextlib.suppress`` for a broken or closed stream, calling it.
"""

from __future__ import annotations

from types import TracebackType

import trio

MAX_DEPTH = 8
"""Causes followed down one chain, at most."""


def forget_cause_tracebacks(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc``'s causes (``raise ... from``), and of those in a group.

    Only explicit causes are touched, never ``__context__`` (whatever was being
    handled elsewhere) or ``exc``'s own traceback; frames are left as they are.
    """
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            forget_cause_tracebacks(inner)
        return
    cause = exc.__cause__
    for _ in range(MAX_DEPTH):
        if cause is None:
            return
        cause.__traceback__ = None
        cause = cause.__cause__


class suppress_broken:
    """``contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)``,
    dropping the suppressed error's causes' tracebacks.

    A class, not a generator-based context manager: an error thrown into a
    generator is what makes the cycle in the first place.
    """

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
            forget_cause_tracebacks(exc)
            return True
        return False
