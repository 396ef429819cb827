"""error_cycles: a broken stream's causes lose their tracebacks, and nothing else changes."""

from __future__ import annotations

import pytest
import trio

from trio_broadcast.error_cycles import MAX_DEPTH, forget_cause_tracebacks, suppress_broken


def _raised_from(cause: BaseException) -> trio.BrokenResourceError:
    """A BrokenResourceError raised ``from`` ``cause`` (which was raised, so has a traceback)."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise trio.BrokenResourceError("broken") from exc
    except trio.BrokenResourceError as broken:
        return broken


def test_the_causes_lose_their_tracebacks_and_the_error_keeps_its_own() -> None:
    error = _raised_from(_raised_from(ConnectionResetError(104, "reset")))
    forget_cause_tracebacks(error)
    assert error.__traceback__ is not None
    assert error.__cause__ is not None
    assert error.__cause__.__traceback__ is None
    inner = error.__cause__.__cause__
    assert isinstance(inner, ConnectionResetError)
    assert inner.__traceback__ is None


def test_each_error_of_a_group_and_a_bounded_chain() -> None:
    errors = [_raised_from(OSError("a")), _raised_from(OSError("b"))]
    forget_cause_tracebacks(BaseExceptionGroup("lost", errors))
    assert [e.__cause__.__traceback__ for e in errors] == [None, None]  # type: ignore[union-attr]
    chain: BaseException = OSError("root")
    for _ in range(MAX_DEPTH + 2):
        chain = _raised_from(chain)
    forget_cause_tracebacks(chain)
    depth, cause = 0, chain.__cause__
    while cause is not None and cause.__traceback__ is None:
        depth, cause = depth + 1, cause.__cause__
    assert depth == MAX_DEPTH


def test_suppress_broken_suppresses_what_contextlib_suppress_would() -> None:
    for kind in (trio.BrokenResourceError, trio.ClosedResourceError):
        error = kind("gone")
        error.__cause__ = _raised_from(OSError("reset"))
        with suppress_broken():
            raise error
        assert error.__cause__.__traceback__ is None
    with pytest.raises(ValueError, match="not a stream's"), suppress_broken():
        raise ValueError("not a stream's")
