"""The graceful stop: one switch that cancels every scope registered with it.

The server's *work* (accepting, reading input, each handshake, each client's
race) runs in cancel scopes registered here while they run. :meth:`Shutdown.request`
cancels them all, and any scope registered afterwards is cancelled as it
arrives, so a connection accepted during the stop does not slip through. What
runs outside those scopes (closing each client with 1001) is left to finish,
bounded by its own timeouts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Shutdown:
    """The registry of cancel scopes that a graceful stop cancels."""

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self.requested = False
        """True once :meth:`request` has been called; it stays true."""

    def request(self) -> None:
        """Cancel every registered scope, now and from now on. Idempotent."""
        self.requested = True
        for scope in self._scopes:
            scope.cancel()

    @contextmanager
    def cancels(self, scope: trio.CancelScope) -> Iterator[trio.CancelScope]:
        """Make :meth:`request` cancel ``scope`` while in this block (at once, if it came)."""
        self._scopes.add(scope)
        if self.requested:
            scope.cancel()
        try:
            yield scope
        finally:
            self._scopes.discard(scope)
