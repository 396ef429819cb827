"""The graceful stop: one switch that cancels every scope registered with it.

The server's *work* (accepting, reading input, each handshake, each client's
race) runs in cancel scopes registered here while they run. :meth:`Shutdown.request`
cancels them all, and any scope registered afterwards is cancelled as it
arrives, so a connection accepted during the stop does not slip through. What
runs outside those scopes (closing each client with 1001) is left to finish,
bounded by its own timeouts.
"""

from __future__ import annotations

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

    def cancels(self, scope: trio.CancelScope) -> _Registered:
        """Make :meth:`request` cancel ``scope`` while in this block (at once, if it came).

        Use it as ``with shutdown.cancels(scope) as scope:``; it gives ``scope`` back.
        """
        return _Registered(self, scope)


class _Registered:
    """A scope registered with a :class:`Shutdown` while its block runs.

    A small class rather than a ``@contextmanager`` generator: each client's
    race is registered for as long as the client is connected, and a
    suspended generator costs a connection about 0.5 KB more (issue 14).
    """

    __slots__ = ("_scope", "_shutdown")

    def __init__(self, shutdown: Shutdown, scope: trio.CancelScope) -> None:
        self._shutdown = shutdown
        self._scope = scope

    def __enter__(self) -> trio.CancelScope:
        self._shutdown._scopes.add(self._scope)
        if self._shutdown.requested:
            self._scope.cancel()
        return self._scope

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown._scopes.discard(self._scope)
