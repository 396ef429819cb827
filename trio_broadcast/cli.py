"""The ``trio-broadcast`` command: arguments in, :class:`Config` out, exit codes.

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
import sys
from collections.abc import Callable, Sequence
from functools import partial

import trio

from . import __version__
from .config import Config, OnFull
from .server import Server, StartupError, run
from .stdin import read_lines

PROG = "trio-broadcast"


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
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"{PROG}: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    _hold_stdin_slot()
    source = partial(read_lines, max_line_size=config.max_line_size)
    failure: str | None = None
    try:
        trio.run(run, config, source, _announce)
    except* StartupError as group:
        failure = str(group.exceptions[0])
    if failure is not None:
        print(f"{PROG}: error: {failure}", file=sys.stderr)
        return 1
    return 0
