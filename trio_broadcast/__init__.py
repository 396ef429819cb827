"""trio-broadcast: broadcast standard input to WebSocket clients, with Trio.

The public API is what the command is built from, so the server can be
embedded in another Trio program:

* :class:`Config` and :class:`OnFull`: the settings, validated on construction;
* :func:`serve` (``await nursery.start(serve, config)`` returns a :class:`Server`)
  and :class:`StartupError`;
* :func:`read_lines`: the standard-input line source;
* :class:`Fanout`, :class:`Subscription` and :class:`Overflow`: the fan-out,
  usable on its own with any source of messages;
* :class:`LineSplitter`: bytes to bounded, decoded lines, without I/O.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trio-broadcast")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

from .config import Config, OnFull
from .errors import StartupError
from .fanout import Fanout, Overflow, Subscription
from .lines import LineSplitter, Split
from .server import Server, serve
from .source import LineSource, Publish
from .stdin import read_lines

__all__ = [
    "Config",
    "Fanout",
    "LineSource",
    "LineSplitter",
    "OnFull",
    "Overflow",
    "Publish",
    "Server",
    "Split",
    "StartupError",
    "Subscription",
    "__version__",
    "read_lines",
    "serve",
]
