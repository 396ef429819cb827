"""The one error the server reports to whoever starts it."""

from __future__ import annotations


class StartupError(Exception):
    """The server cannot start; the message says why in one line.

    Raised before anything is served: a port in use, an unreadable certificate,
    an empty token file, a Redis server that refuses the credentials. The
    command prints the message and exits with status 1.
    """
