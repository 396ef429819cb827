"""Tests for the settings: :class:`trio_broadcast.Config` validation and the command line.

Covered: the defaults (the documented table, identical for :class:`Config` and
for the command with no options); every bad :class:`Config` value raising
``ValueError``/``TypeError`` with a message naming the setting, and the
boundary values that are accepted; every command-line option landing in its
:class:`Config` field; bad options (out of range, not numbers, unknown choices,
``--certfile`` without ``--keyfile``) exiting with code 2 and one
``trio-broadcast: error: ...`` line on stderr; ``--version``. No server is
started: :func:`trio_broadcast.cli.main` is only called with arguments that
make it exit before that.
"""

from __future__ import annotations

import dataclasses
import math
from importlib.metadata import version
from typing import Any

import pytest

from trio_broadcast import __version__
from trio_broadcast.cli import PROG, build_parser, config_from_args, main
from trio_broadcast.config import Config, MiB, OnFull, RedisSettings
from trio_broadcast.options import settings_from

DEFAULTS: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": 8000,
    "queue_size": 16,
    "on_full": OnFull.DISCONNECT,
    "max_wait": 5.0,
    "history": 0,
    "retain": 10_000,
    "retain_bytes": 16 * 1024 * 1024,
    "max_clients": None,
    "max_message_size": 1024 * 1024,
    "max_line_size": 1024 * 1024,
    "ping_interval": 20.0,
    "echo": True,
    "exit_on_eof": False,
    "certfile": None,
    "keyfile": None,
    "handshake_timeout": 10.0,
}


def parse(*argv: str) -> Config:
    parser = build_parser()
    return config_from_args(parser, parser.parse_args(argv))


def error_line(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the command with ``argv``; it must exit with 2 and one error line."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    # argparse's convention: the usage synopsis, then the error on the last line.
    lines = err.splitlines()
    errors = [line for line in lines if f"{PROG}: error:" in line]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    assert errors[0].startswith(f"{PROG}: error: "), err
    assert lines[0].startswith(f"usage: {PROG} "), err
    assert "Traceback" not in err
    return errors[0]


# ---------------------------------------------------------------------- Config


def test_mib() -> None:
    assert MiB == 1024 * 1024


@pytest.mark.parametrize(("name", "expected"), DEFAULTS.items())
def test_config_defaults(name: str, expected: object) -> None:
    assert getattr(Config(), name) == expected


def test_config_default_tls_off_and_frozen() -> None:
    config = Config()
    assert not config.tls
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("port", -1, ValueError),
        ("port", 65536, ValueError),
        ("port", 70000, ValueError),
        ("port", "8000", TypeError),
        ("port", 80.0, TypeError),
        ("port", True, TypeError),
        ("queue_size", 0, ValueError),
        ("queue_size", -16, ValueError),
        ("queue_size", None, TypeError),
        ("history", -1, ValueError),
        ("history", 1.5, TypeError),
        ("retain", -1, ValueError),
        ("retain_bytes", -1, ValueError),
        ("max_clients", 0, ValueError),
        ("max_clients", -1, ValueError),
        ("max_clients", "10", TypeError),
        ("max_message_size", 0, ValueError),
        ("max_message_size", False, TypeError),
        ("max_line_size", 0, ValueError),
        ("max_line_size", -1, ValueError),
        ("max_request_head", 255, ValueError),
        ("ping_interval", -1, ValueError),
        ("ping_interval", -0.5, ValueError),
        ("ping_interval", math.nan, ValueError),
        ("ping_interval", math.inf, ValueError),
        ("ping_interval", "20", TypeError),
        ("ping_interval", None, TypeError),
        ("handshake_timeout", 0, ValueError),
        ("handshake_timeout", -1.0, ValueError),
        ("handshake_timeout", math.inf, ValueError),
        ("handshake_timeout", "10", TypeError),
        ("send_timeout", 0.0, ValueError),
        ("send_timeout", math.nan, ValueError),
        ("send_timeout", None, TypeError),
        ("close_timeout", -0.1, ValueError),
        ("close_timeout", [1.0], TypeError),
        ("host", "", ValueError),
        ("on_full", "drop", TypeError),
        ("on_full", None, TypeError),
        ("max_wait", 0, ValueError),
        ("max_wait", -1.0, ValueError),
        ("max_wait", math.inf, ValueError),
        ("max_wait", math.nan, ValueError),
        ("max_wait", "5", TypeError),
    ],
)
def test_config_rejects_bad_value_naming_it(
    name: str, value: object, error: type[Exception]
) -> None:
    settings: dict[str, Any] = {name: value}
    with pytest.raises(error) as raised:
        Config(**settings)
    assert type(raised.value) is error
    assert name in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("url", "http://localhost", ValueError),
        ("url", "redis://", ValueError),
        ("url", "redis://host:port/0", ValueError),
        ("url", "redis://host/db0", ValueError),
        ("url", "unix://", ValueError),
        ("url", 6379, TypeError),
        ("channel", "", ValueError),
        ("channel", "two words", ValueError),
        ("maxlen", 0, ValueError),
        ("buffer", 0, ValueError),
    ],
)
def test_redis_settings_reject_bad_value_naming_it(
    name: str, value: object, error: type[Exception]
) -> None:
    settings: dict[str, Any] = {name: value}
    with pytest.raises(error) as raised:
        RedisSettings(**settings)
    assert type(raised.value) is error
    assert name in str(raised.value)


def test_redis_settings_defaults() -> None:
    assert RedisSettings() == RedisSettings(
        url=None, channel="trio-broadcast", maxlen=100_000, buffer=256
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("certfile", "cert.pem"),
        ("keyfile", "key.pem"),
    ],
)
def test_config_tls_files_come_in_pairs(name: str, value: str) -> None:
    settings: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match="certfile and keyfile"):
        Config(**settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("port", 0),
        ("port", 65535),
        ("queue_size", 1),
        ("history", 0),
        ("history", 10_000),
        ("retain", 0),
        ("retain_bytes", 0),
        ("max_clients", None),
        ("max_clients", 1),
        ("max_message_size", 1),
        ("max_line_size", 1),
        ("max_request_head", 256),
        ("ping_interval", 0),
        ("ping_interval", 0.0),
        ("ping_interval", 0.25),
        ("handshake_timeout", 0.001),
        ("handshake_timeout", 3),
        ("send_timeout", 1e-6),
        ("close_timeout", 60.0),
        ("host", "::1"),
        ("on_full", OnFull.DROP),
        ("on_full", OnFull.WAIT),
        ("max_wait", 0.001),
    ],
)
def test_config_accepts_boundary_values(name: str, value: object) -> None:
    settings: dict[str, Any] = {name: value}
    assert getattr(Config(**settings), name) == value


def test_config_with_both_tls_files() -> None:
    config = Config(certfile="cert.pem", keyfile="key.pem")
    assert config.tls


# ------------------------------------------------------------------ command line


def test_no_options_give_the_documented_defaults() -> None:
    config = parse()
    assert config == Config()
    for name, expected in DEFAULTS.items():
        assert getattr(config, name) == expected, name


@pytest.mark.parametrize(
    ("argv", "changes"),
    [
        (["--host", "127.0.0.1"], {"host": "127.0.0.1"}),
        (["--host", "::1"], {"host": "::1"}),
        (["--port", "0"], {"port": 0}),
        (["--port", "65535"], {"port": 65535}),
        (["--port", "9001"], {"port": 9001}),
        (["--queue-size", "1"], {"queue_size": 1}),
        (["--queue-size", "500"], {"queue_size": 500}),
        (["--on-full", "drop"], {"on_full": OnFull.DROP}),
        (["--on-full", "disconnect"], {"on_full": OnFull.DISCONNECT}),
        (["--on-full", "wait"], {"on_full": OnFull.WAIT}),
        (["--max-wait", "0.5"], {"max_wait": 0.5}),
        (["--max-wait", "30"], {"max_wait": 30.0}),
        (["--history", "0"], {"history": 0}),
        (["--history", "25"], {"history": 25}),
        (["--retain", "0"], {"retain": 0}),
        (["--retain", "50", "--history", "50"], {"retain": 50, "history": 50}),
        (["--retain-bytes", "4096"], {"retain_bytes": 4096}),
        (["--max-clients", "1"], {"max_clients": 1}),
        (["--max-clients", "300"], {"max_clients": 300}),
        (["--max-message-size", "1"], {"max_message_size": 1}),
        (["--max-message-size", "4096"], {"max_message_size": 4096}),
        (["--max-line-size", "1"], {"max_line_size": 1}),
        (["--max-line-size", "80"], {"max_line_size": 80}),
        (["--ping-interval", "0"], {"ping_interval": 0.0}),
        (["--ping-interval", "2.5"], {"ping_interval": 2.5}),
        (["--handshake-timeout", "0.5"], {"handshake_timeout": 0.5}),
        (["--handshake-timeout", "30"], {"handshake_timeout": 30.0}),
        (["--no-echo"], {"echo": False}),
        (["--exit-on-eof"], {"exit_on_eof": True}),
        (
            ["--certfile", "c.pem", "--keyfile", "k.pem"],
            {"certfile": "c.pem", "keyfile": "k.pem"},
        ),
        (["--host=10.0.0.1"], {"host": "10.0.0.1"}),
        (["--port=1234"], {"port": 1234}),
        (["--no-stdin"], {}),
        (["--redis", "redis://localhost:6379/0"], {}),
    ],
)
def test_option_maps_to_config_field(argv: list[str], changes: dict[str, Any]) -> None:
    config = parse(*argv)
    # The named fields change, and nothing else.
    assert config == Config(**changes)
    for name, expected in changes.items():
        assert type(getattr(config, name)) is type(expected)


@pytest.mark.parametrize(
    ("argv", "changes"),
    [
        (["--redis", "redis://localhost:6379/0"], {"url": "redis://localhost:6379/0"}),
        (["--redis", "unix:///run/redis.sock"], {"url": "unix:///run/redis.sock"}),
        (["--channel", "news"], {"channel": "news"}),
        (["--redis-maxlen", "10"], {"maxlen": 10}),
        (["--no-stdin"], {}),
        (["--host", "::1"], {}),
    ],
)
def test_option_maps_to_redis_settings_field(argv: list[str], changes: dict[str, Any]) -> None:
    parser = build_parser()
    redis = settings_from(parser.parse_args(argv), RedisSettings)
    assert redis == RedisSettings(**changes)


def test_all_options_together() -> None:
    config = parse(
        "--host",
        "::1",
        "--port",
        "0",
        "--queue-size",
        "3",
        "--on-full",
        "drop",
        "--history",
        "7",
        "--max-clients",
        "9",
        "--max-message-size",
        "100",
        "--max-line-size",
        "200",
        "--ping-interval",
        "0",
        "--handshake-timeout",
        "1.5",
        "--certfile",
        "c.pem",
        "--keyfile",
        "k.pem",
        "--no-echo",
        "--exit-on-eof",
        "--log-level",
        "debug",
    )
    assert config == Config(
        host="::1",
        port=0,
        queue_size=3,
        on_full=OnFull.DROP,
        history=7,
        max_clients=9,
        max_message_size=100,
        max_line_size=200,
        ping_interval=0.0,
        handshake_timeout=1.5,
        certfile="c.pem",
        keyfile="k.pem",
        echo=False,
        exit_on_eof=True,
    )
    assert config.tls


def test_every_option_is_covered() -> None:
    """A new option must be added to the mapping tests above."""
    options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    assert options == {
        "--help",
        "--version",
        "--host",
        "--port",
        "--queue-size",
        "--on-full",
        "--max-wait",
        "--history",
        "--retain",
        "--retain-bytes",
        "--max-clients",
        "--max-message-size",
        "--max-line-size",
        "--ping-interval",
        "--handshake-timeout",
        "--certfile",
        "--keyfile",
        "--no-echo",
        "--exit-on-eof",
        "--log-level",
        "--allowed-origin",
        "--allowed-host",
        "--require-origin",
        "--token-file",
        "--no-page",
        "--redis",
        "--channel",
        "--redis-maxlen",
        "--no-stdin",
    }


@pytest.mark.parametrize(("text", "expected"), [("debug", "debug"), ("WARNING", "warning")])
def test_log_level_is_case_insensitive(text: str, expected: str) -> None:
    assert build_parser().parse_args(["--log-level", text]).log_level == expected


def test_log_level_default() -> None:
    assert build_parser().parse_args([]).log_level == "info"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--port", "70000"], ["--port", "65535", "70000"]),
        (["--port", "65536"], ["--port", "65536"]),
        (["--port", "-1"], ["--port", "-1"]),
        (["--port", "http"], ["--port", "'http'"]),
        (["--queue-size", "0"], ["--queue-size", "at least 1"]),
        (["--queue-size", "-3"], ["--queue-size", "-3"]),
        (["--queue-size", "many"], ["--queue-size", "'many'"]),
        (["--queue-size", "1.5"], ["--queue-size", "'1.5'"]),
        (["--history", "-1"], ["--history", "at least 0"]),
        (["--history", "lots"], ["--history", "'lots'"]),
        (["--history", "20", "--retain", "10"], ["--history is 20", "--retain"]),
        (["--retain", "-1"], ["--retain", "at least 0"]),
        (["--retain-bytes", "16MiB"], ["--retain-bytes", "'16MiB'"]),
        (["--max-clients", "0"], ["--max-clients", "at least 1"]),
        (["--max-clients", "-5"], ["--max-clients", "-5"]),
        (["--max-message-size", "0"], ["--max-message-size", "at least 1"]),
        (["--max-message-size", "1MiB"], ["--max-message-size", "'1MiB'"]),
        (["--max-line-size", "0"], ["--max-line-size", "at least 1"]),
        (["--max-line-size", "-1"], ["--max-line-size", "-1"]),
        (["--on-full", "nonsense"], ["--on-full", "'nonsense'"]),
        (["--on-full", "DROP"], ["--on-full", "'DROP'"]),
        (["--max-wait", "0"], ["--max-wait", "more than 0"]),
        (["--max-wait", "-1"], ["--max-wait", "-1"]),
        (["--max-wait", "inf"], ["--max-wait", "inf"]),
        (["--max-wait", "forever"], ["--max-wait", "'forever'"]),
        (["--ping-interval", "-1"], ["--ping-interval", "-1"]),
        (["--ping-interval", "nan"], ["--ping-interval", "nan"]),
        (["--ping-interval", "inf"], ["--ping-interval", "inf"]),
        (["--ping-interval", "soon"], ["--ping-interval", "'soon'"]),
        (["--handshake-timeout", "0"], ["--handshake-timeout", "more than 0"]),
        (["--handshake-timeout", "-2"], ["--handshake-timeout", "-2"]),
        (["--handshake-timeout", "inf"], ["--handshake-timeout", "inf"]),
        (["--certfile", "c.pem"], ["--certfile", "--keyfile"]),
        (["--keyfile", "k.pem"], ["--certfile", "--keyfile"]),
        (["--host", ""], ["host", "empty"]),
        (["--log-level", "loud"], ["--log-level", "'loud'"]),
        (["--port"], ["--port"]),
        (["--bogus"], ["--bogus"]),
        (["extra"], ["extra"]),
    ],
)
def test_bad_option_exits_2_with_one_error_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragments: list[str]
) -> None:
    line = error_line(capsys, *argv)
    for fragment in fragments:
        assert fragment in line, line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out, err = capsys.readouterr()
    assert out == f"{PROG} {__version__}\n"
    assert __version__ == version("trio-broadcast")
    assert err == ""


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out, _ = capsys.readouterr()
    for option in ("--port", "--on-full", "--history", "--no-echo", "--exit-on-eof"):
        assert option in out
    assert "{disconnect,drop,wait}" in out
