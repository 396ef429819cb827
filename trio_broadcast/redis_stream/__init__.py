"""Many instances, one feed: lines shared through a capped Redis Stream.

With ``--redis``, an instance no longer hands standard input straight to its
fan-out. Its lines are appended to a Redis Stream, one entry per line
(``XADD key MAXLEN ~ N * line <text>``), and every instance, this one included,
reads that stream from where it left off (``XREAD BLOCK``) and publishes what it
reads into its own :class:`~trio_broadcast.fanout.Fanout`. The stream's order is
the order every client on every instance sees; history, the slow-client policy
and shutdown stay where they are, in the fan-out and the server.

The package is in layers, each module importing only from those below:

* :mod:`~trio_broadcast.redis_stream.feed`: the publisher (:func:`append_from`),
  the reader (:class:`Follower`) and the line source joining them
  (:func:`stream_source`);
* :mod:`~trio_broadcast.redis_stream.history`: :class:`StreamHistory`, the
  stream as the history that resuming clients read, by entry ID;
* :mod:`~trio_broadcast.redis_stream.adapter`: :func:`connect` and
  :class:`RedisStream`, one method per conversation with Redis; the only
  module that imports coredis (an optional extra, imported when
  :func:`connect` runs), which runs start-up and the cold commands;
* :mod:`~trio_broadcast.redis_stream.resp_connection`: the connection of our
  own that the hot commands (the append's ``EVAL``, the read's ``XREAD``) run
  on, one request then its reply, over a Trio stream;
* pure, tested in the default test session without Redis or coredis:
  :mod:`~trio_broadcast.redis_stream.entries` (:class:`EntryId`, a line and its
  entry, the :class:`Cursor` and its count of trimmed entries),
  :mod:`~trio_broadcast.redis_stream.resp` (RESP2: a command's bytes, and an
  incremental reply parser) and
  :mod:`~trio_broadcast.redis_stream.retrying` (the :class:`Backoff` schedule,
  and the one retry loop both sides use, with an error hook).

Once running, an unreachable Redis never ends anything: each side retries with
capped exponential backoff and jitter, logging once when Redis goes away and
once when it is back. The publisher keeps what it could not append, in order;
the reader keeps its clients connected and resumes after the last entry it
delivered, so nothing still in the stream is lost or delivered twice.
"""

from .adapter import CONNECT_TIMEOUT, INSTALL_HINT, REQUEST_TIMEOUT, RedisStream, connect
from .entries import (
    FIELD,
    KEY_PREFIX,
    ORIGIN,
    Cursor,
    EntryId,
    Gap,
    decode_entry,
    encode_line,
    stream_key,
)
from .feed import APPEND_LINES, BLOCK_MS, READ_COUNT, Follower, append_from, stream_source
from .history import StreamHistory
from .retrying import Backoff

__all__ = [
    "APPEND_LINES",
    "BLOCK_MS",
    "CONNECT_TIMEOUT",
    "FIELD",
    "INSTALL_HINT",
    "KEY_PREFIX",
    "ORIGIN",
    "READ_COUNT",
    "REQUEST_TIMEOUT",
    "Backoff",
    "Cursor",
    "EntryId",
    "Follower",
    "Gap",
    "RedisStream",
    "StreamHistory",
    "append_from",
    "connect",
    "decode_entry",
    "encode_line",
    "stream_key",
    "stream_source",
]
