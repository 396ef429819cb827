"""The ``trio-broadcast`` command: arguments in, :class:`Config` out, signals, exit codes.

Exit codes: 0 after a clean stop (a signal, or the end of input with
``--exit-on-eof``); 1 when the server cannot start (the reason on one line);
2 for a bad option (argparse's convention); 128 + N when a second signal N
cuts a graceful stop short.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import trio

from . import __version__, redis_stream
from .client_text import LogFormatter
from .config import Config, OnFull
from .counters import Counters
from .errors import StartupError
from .server import Server, serve
from .signals import StopSignals
from .source import LineSource
from .stdin import read_lines

log = logging.getLogger("trio_broadcast")

PROG = "trio-broadcast"
TOKEN_VARIABLE = "TRIO_BROADCAST_TOKEN"


def _count(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, not {value}")
        return value

    return parse


def _seconds(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            lowest = "0 or more" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be {lowest} seconds, not {text}")
        return value

    return parse


def _port(text: str) -> int:
    value = _count(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Broadcast each line of standard input to every WebSocket client, "
        "and echo each client's messages back to it.",
    )
    add = parser.add_argument
    add("--host", default=defaults.host, help="bind address (default: %(default)s)")
    add(
        "--port",
        type=_port,
        default=defaults.port,
        help="TCP port, 0 for any (default: %(default)s)",
    )
    add(
        "--queue-size",
        type=_count(1),
        default=defaults.queue_size,
        metavar="N",
        help="broadcast batches (the lines of one read of stdin) a client may fall behind "
        "(default: %(default)s)",
    )
    add(
        "--on-full",
        choices=[p.value for p in OnFull],
        default=defaults.on_full.value,
        help="what happens to a client whose queue is full (default: %(default)s)",
    )
    add(
        "--history",
        type=_count(0),
        default=defaults.history,
        metavar="N",
        help="lines a new client receives first (default: %(default)s)",
    )
    add(
        "--max-clients",
        type=_count(1),
        default=None,
        metavar="N",
        help="refuse handshakes beyond N clients with HTTP 503 (default: unlimited)",
    )
    add(
        "--max-message-size",
        type=_count(1),
        default=defaults.max_message_size,
        metavar="BYTES",
        help="close with 1009 on larger messages (default: %(default)s)",
    )
    add(
        "--max-line-size",
        type=_count(1),
        default=defaults.max_line_size,
        metavar="BYTES",
        help="skip longer input lines (default: %(default)s)",
    )
    add(
        "--ping-interval",
        type=_seconds(allow_zero=True),
        default=defaults.ping_interval,
        metavar="SECONDS",
        help="keep-alive ping interval, 0 to disable (default: %(default)g)",
    )
    add(
        "--handshake-timeout",
        type=_seconds(allow_zero=False),
        default=defaults.handshake_timeout,
        metavar="SECONDS",
        help="drop connections that do not finish the handshake in time (default: %(default)g)",
    )
    add("--certfile", help="TLS certificate (PEM): serve wss://")
    add("--keyfile", help="TLS private key (PEM) for --certfile")
    add("--no-echo", action="store_true", help="do not echo client messages back")
    add(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept WebSocket handshakes from this browser origin (repeatable; "
        "the server's own origin is then allowed too; default: any origin)",
    )
    add(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a name clients use to reach this server (repeatable); requests for "
        "other names then get 403. IP addresses, localhost and the --host name need "
        "none. Under --allowed-origin, the page's own origin counts only for these",
    )
    add(
        "--require-origin",
        action="store_true",
        help="refuse handshakes without an Origin header (non-browser clients)",
    )
    add(
        "--token-file",
        metavar="PATH",
        help=f"require the token in this file for handshakes, the page and /metrics "
        f"(default: ${TOKEN_VARIABLE} if set)",
    )
    add("--no-page", action="store_true", help="do not serve the live page at /")
    add(
        "--redis",
        metavar="URL",
        help="share the feed with every instance using this Redis server, "
        "e.g. redis://localhost:6379/0 (needs trio-broadcast[redis])",
    )
    add(
        "--channel",
        default=defaults.channel,
        metavar="NAME",
        help="the feed's name in Redis (default: %(default)s)",
    )
    add(
        "--redis-maxlen",
        type=_count(1),
        default=defaults.redis_maxlen,
        metavar="N",
        help="lines the Redis stream keeps, about (default: %(default)s)",
    )
    add("--no-stdin", action="store_true", help="do not read standard input (serve only)")
    add(
        "--exit-on-eof",
        action="store_true",
        help="at the end of input, deliver what was read, close every client, exit",
    )
    add(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="(default: %(default)s)",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """Turn parsed arguments into a :class:`Config`; a bad combination exits with 2."""
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile must be given together")
    try:
        return Config(
            host=args.host,
            port=args.port,
            queue_size=args.queue_size,
            on_full=OnFull(args.on_full),
            history=args.history,
            max_clients=args.max_clients,
            max_message_size=args.max_message_size,
            max_line_size=args.max_line_size,
            ping_interval=args.ping_interval,
            handshake_timeout=args.handshake_timeout,
            certfile=args.certfile,
            keyfile=args.keyfile,
            echo=not args.no_echo,
            exit_on_eof=args.exit_on_eof,
            allowed_origins=tuple(args.allowed_origin),
            allowed_hosts=tuple(args.allowed_host),
            require_origin=args.require_origin,
            token=read_token(args.token_file, os.environ),
            page=not args.no_page,
            redis_url=args.redis,
            channel=args.channel,
            redis_maxlen=args.redis_maxlen,
        )
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
            server = await nursery.start(partial(serve, config, source, counters=counters))
            on_listening(server)
            if stop_requested:  # a signal came while starting up
                server.shutdown()


async def _run(config: Config, stdin: LineSource | None, counters: Counters) -> None:
    """:func:`run`, fed by standard input, or through Redis with ``--redis``."""
    if config.redis_url is None:
        await run(config, stdin, _announce, counters)
        return
    async with redis_stream.connect(
        config.redis_url, channel=config.channel, maxlen=config.redis_maxlen
    ) as stream:
        source = redis_stream.stream_source(
            stream,
            stdin,
            history=config.history,
            buffer=config.redis_buffer,
            exit_on_eof=config.exit_on_eof,
        )
        await run(config, source, _announce, counters)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(parser, args)
    except StartupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(f"{PROG}: %(levelname)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    _hold_stdin_slot()
    counters = Counters()
    # coredis logs each lost connection with a traceback; the reader and the
    # publisher report those themselves, once per change of state.
    logging.getLogger("coredis").setLevel(
        logging.DEBUG if args.log_level == "debug" else logging.CRITICAL
    )
    stdin: LineSource | None = None
    if not args.no_stdin:
        stdin = partial(read_lines, max_line_size=config.max_line_size, counters=counters)
    failure: str | None = None
    try:
        trio.run(_run, config, stdin, counters)
    except* StartupError as group:
        failure = str(group.exceptions[0])
    if failure is not None:
        print(f"{PROG}: error: {failure}", file=sys.stderr)
        return 1
    return 0
