"""The ``trio-broadcast`` command: arguments in, :class:`Config` out, signals, exit codes.

Exit codes: 0 after a clean stop (a signal, or the end of input with
``--exit-on-eof``); 1 when the server cannot start (the reason on one line);
2 for a bad option (argparse's convention); 128 + N when a second signal N
cuts a graceful stop short.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

import trio

from . import __version__, redis_stream
from .client_text import LogFormatter
from .config import Config, RedisSettings
from .counters import Counters
from .errors import StartupError
from .options import TOKEN_VARIABLE, CommandSettings, add_options, in_flags, settings_from
from .retention import History
from .server import Server, serve
from .setting import SettingError
from .signals import StopSignals
from .source import LineSource
from .stdin import read_lines

__all__ = ["PROG", "TOKEN_VARIABLE", "build_parser", "config_from_args", "main", "read_token"]

log = logging.getLogger("trio_broadcast")

PROG = "trio-broadcast"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every option (see :mod:`trio_broadcast.options`), and ``--version``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Broadcast each line of standard input to every WebSocket client, "
        "and echo each client's messages back to it.",
    )
    add_options(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed arguments, with the token; a bad combination exits with 2.

    The token is read after the other settings are checked, so a bad option is
    reported (exit 2) before a missing token file (exit 1).
    """
    try:
        config = settings_from(args, Config)
        token = read_token(args.token_file, os.environ)
        return config if token is None else dataclasses.replace(config, token=token)
    except SettingError as exc:
        parser.error(in_flags(exc))
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def read_token(path: str | None, environ: Mapping[str, str]) -> str | None:
    """The access token: from the file at ``path`` if given, else from the environment.

    Surrounding whitespace (the file's trailing newline) is stripped. An empty
    token raises :class:`StartupError`: it would otherwise look like protection
    while letting nobody in, or (worse, if taken as "no token") everybody.
    """
    if path is not None:
        try:
            with open(path, encoding="utf-8") as file:
                token = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise StartupError(f"cannot read the token file {path!r}: {why}") from None
        if not token:
            raise StartupError(f"the token file {path!r} is empty")
        return token
    if TOKEN_VARIABLE not in environ:
        return None
    token = environ[TOKEN_VARIABLE].strip()
    if not token:
        raise StartupError(f"{TOKEN_VARIABLE} is set but empty")
    return token


def _announce(server: Server) -> None:
    for url in server.urls:
        print(f"{PROG}: listening on {url}", file=sys.stderr, flush=True)


def _hold_stdin_slot() -> None:
    """If fd 0 is closed, put /dev/null there.

    Otherwise the first file Trio opens (its epoll instance) would become fd 0
    and be read as standard input.
    """
    try:
        os.fstat(0)
    except OSError:
        fd = os.open(os.devnull, os.O_RDONLY)
        if fd != 0:  # pragma: no cover - fd 0 is the lowest free descriptor
            os.dup2(fd, 0)
            os.close(fd)


async def run(
    config: Config,
    source: LineSource | None,
    on_listening: Callable[[Server], None],
    counters: Counters | None = None,
    history: History | None = None,
) -> None:
    """:func:`~trio_broadcast.serve`, stopped gracefully by SIGINT or SIGTERM.

    A second signal exits at once, with the status 128+N that a shell reports
    for a process killed by signal N; see :mod:`trio_broadcast.signals` for why
    a plain handler.
    """
    server: Server | None = None
    stop_requested = False

    def stop(signum: signal.Signals) -> None:
        nonlocal stop_requested
        stop_requested = True
        log.info("%s: closing %d clients", signum.name, server.clients if server else 0)
        if server is not None:
            server.shutdown()

    with StopSignals(stop):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve, config, source, counters=counters, history=history)
            )
            on_listening(server)
            if stop_requested:  # a signal came while starting up
                server.shutdown()


async def _run(
    config: Config, redis: RedisSettings, stdin: LineSource | None, counters: Counters
) -> None:
    """:func:`run`, fed by standard input, or through Redis with ``--redis``."""
    if redis.url is None:
        await run(config, stdin, _announce, counters)
        return
    async with redis_stream.connect(
        redis.url, channel=redis.channel, maxlen=redis.maxlen, append=stdin is not None
    ) as stream:
        resume = redis_stream.StreamHistory(stream)
        source = redis_stream.stream_source(
            stream,
            stdin,
            history=config.history,
            buffer=redis.buffer,
            exit_on_eof=config.exit_on_eof,
            resume=resume,
        )
        await run(config, source, _announce, counters, resume)


FULL_COLLECTION_EVERY = 100
"""Middle-generation collections between two full ones, at least (Python's
``threshold2``; its default is 10). See :func:`_collector_for_a_server`."""


@contextmanager
def _collector_for_a_server() -> Iterator[None]:
    """The cyclic garbage collector, set for a process holding many long-lived connections.

    A full collection walks every object the collector tracks, and a server
    holding thousands of connections tracks about 130 objects for each. With
    Python 3.11's and 3.12's defaults, a full collection comes after about
    70,000 new objects, or once the tracked objects have grown by a quarter if
    that is later; opening 5,000 clients ran seven, about 270 of the 800 µs
    of CPU a connect cost (issue 14; trio-websocket alone pays the same). Here:

    * what start-up made (modules, classes, the settings), which lives as long as
      the server, is frozen out of the collector's sight (unless the caller has
      frozen objects of its own: those are left as they are);
    * a full collection waits for ten times as many new objects (about
      700,000 on 3.11 and 3.12; 3.13 starts from 2,000 young objects, not 700),
      or the quarter's growth, which decides past about 21,000 connections (by
      default past about 2,000): none in a burst of 5,000 connects.
      Python 3.14's incremental collector has no such threshold and ignores
      it; there, only the freeze applies.

    Young garbage is collected as before, and an ended connection's objects
    are freed by reference counting, not by the collector
    (:func:`~trio_broadcast.protocol_errors.break_cycles`); what waits longer is
    only garbage in cycles that had grown old. Undone on the way out, for a
    caller of :func:`main` that goes on running.
    """
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()
        gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], FULL_COLLECTION_EVERY)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(parser, args)
        redis = settings_from(args, RedisSettings)
        command = settings_from(args, CommandSettings)
    except StartupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(f"{PROG}: %(levelname)s: %(message)s"))
    logging.basicConfig(level=command.log_level.upper(), handlers=[handler])
    _hold_stdin_slot()
    counters = Counters()
    # coredis logs each lost connection with a traceback; the reader and the
    # publisher report those themselves, once per change of state.
    logging.getLogger("coredis").setLevel(
        logging.DEBUG if command.log_level == "debug" else logging.CRITICAL
    )
    stdin: LineSource | None = None
    if command.stdin:
        stdin = partial(read_lines, max_line_size=config.max_line_size, counters=counters)
    failure: str | None = None
    with _collector_for_a_server():
        try:
            trio.run(_run, config, redis, stdin, counters)
        except* StartupError as group:
            failure = str(group.exceptions[0])
    if failure is not None:
        print(f"{PROG}: error: {failure}", file=sys.stderr)
        return 1
    return 0
