"""The command's options, built from the settings' own declarations.

Each option is a field of :class:`~trio_broadcast.config.Config`,
:class:`~trio_broadcast.config.RedisSettings` or :class:`CommandSettings`,
declared there with its default, check and help. This module turns those
fields into the argparse parser, reads parsed arguments back into settings,
and renders the README's options table, so that the table, ``--help`` and the
parser cannot drift apart (a test compares them)::

    python -m trio_broadcast.options --readme    # rewrite README.md's table
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .config import Config, RedisSettings
from .setting import (
    Choice,
    Kind,
    Many,
    Member,
    MiB,
    Option,
    SettingError,
    Switch,
    Text,
    check_fields,
    setting,
)

TOKEN_VARIABLE = "TRIO_BROADCAST_TOKEN"


@dataclass(frozen=True, kw_only=True)
class CommandSettings:
    """What only the command needs: where the token comes from, stdin, the log level."""

    token_file: str | None = setting(
        None,
        None,
        Option(
            "--token-file",
            "handshakes, the page and `/metrics` need this token (`401` otherwise); the file "
            "wins over the variable; an empty token is an error",
            metavar="PATH",
            shown=f"`${TOKEN_VARIABLE}`",
        ),
    )
    stdin: bool = setting(
        True,
        Switch(),
        Option(
            "--no-stdin",
            "do not read standard input: an instance that only serves clients (with "
            "`--redis`, the stream's lines)",
        ),
    )
    log_level: str = setting(
        "info",
        Choice(("debug", "info", "warning", "error"), fold_case=True),
        Option(
            "--log-level",
            "`debug`, `info` (one line per connect and disconnect, with address and close "
            "code), `warning`, `error`",
            metavar="LEVEL",
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self)


SETTINGS = (Config, RedisSettings, CommandSettings)
"""The settings the command builds, in the order of ``--help`` and the README."""

VERSION = Option("--version", "print the version")


@dataclass(frozen=True)
class Declared:
    """One option and the field it sets."""

    option: Option
    field: dataclasses.Field[Any]
    kind: Kind | None

    @property
    def dest(self) -> str:
        return self.field.name

    @property
    def usage(self) -> str:
        """``--queue-size N``: the option as the README names it."""
        if isinstance(self.kind, Member | Choice) and self.option.metavar is None:
            values = self.kind.values
            return f"{self.option.flag} {{{','.join(values)}}}"
        if self.option.metavar is None:
            return self.option.flag
        return f"{self.option.flag} {self.option.metavar}"

    @property
    def shown(self) -> str:
        """The default, as the README shows it."""
        default = self.field.default
        if self.option.shown is not None:
            return self.option.shown
        if isinstance(self.kind, Switch):
            return "off"
        if default is None:
            return "none"
        if isinstance(default, int) and default >= MiB and default % MiB == 0:
            return f"{default // MiB} MiB"
        if isinstance(default, float):
            return f"`{default:g}`"
        return f"`{getattr(default, 'value', default)}`"


def declared(settings: type[Any]) -> Iterator[Declared]:
    """The options of the settings class ``settings``, in field order."""
    for field in dataclasses.fields(settings):
        option = field.metadata.get("option")
        if option is not None:
            yield Declared(option, field, field.metadata.get("kind"))


def every_option() -> list[Declared]:
    return [each for settings in SETTINGS for each in declared(settings)]


def _argparse_type(kind: Kind) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _plain(markdown: str) -> str:
    """Help for ``--help``: no backquotes, links as their text, ``%`` as argparse needs it."""
    text = re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", markdown).replace("`", "")
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add every declared option to ``parser``."""
    for each in every_option():
        option, kind = each.option, each.kind
        text = _plain(option.help)
        if isinstance(kind, Switch):
            action = "store_false" if each.field.default else "store_true"
            parser.add_argument(option.flag, dest=each.dest, action=action, help=text)
            continue
        text += f" (default: {_plain(each.shown)})"
        metavar = option.metavar
        if isinstance(kind, Member | Choice):
            metavar = metavar or f"{{{','.join(kind.values)}}}"
        parser.add_argument(
            option.flag,
            dest=each.dest,
            type=_argparse_type(kind or Text()),
            default=[] if isinstance(kind, Many) else each.field.default,
            action="append" if isinstance(kind, Many) else "store",
            metavar=metavar,
            help=text,
        )


S = TypeVar("S")


def settings_from(args: argparse.Namespace, settings: type[S], **more: Any) -> S:
    """The ``settings`` value the parsed ``args`` (and ``more`` fields) describe.

    Each option's value was read and checked by the parser; what is left to
    fail is a rule between settings (:class:`~trio_broadcast.setting.SettingError`).
    """
    values = {each.dest: getattr(args, each.dest) for each in declared(settings)}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return settings(**values, **more)


def in_flags(error: SettingError) -> str:
    """``error`` worded for the command: ``--certfile and --keyfile must be given together``."""
    flags = {each.dest: each.option.flag for each in every_option()}
    return f"{' and '.join(flags.get(name, name) for name in error.names)} {error.problem}"


# ----------------------------------------------------------------- the README


def readme_rows() -> list[str]:
    """The rows of the README's options table, one per option, ``--version`` last."""
    rows = [f"| `{each.usage}` | {each.shown} | {each.option.help} |" for each in every_option()]
    rows.append(f"| `{VERSION.flag}` | | {VERSION.help} |")
    return rows


_HEADER = "| option | default | meaning |\n|---|---|---|\n"


def with_table(readme: str) -> str:
    """``readme`` with its options table replaced by the generated one."""
    start = readme.index(_HEADER) + len(_HEADER)
    end = readme.find("\n\n", start)
    return readme[:start] + "\n".join(readme_rows()) + readme[end:]


def main(argv: Sequence[str]) -> int:
    """``--readme [PATH]``: rewrite the options table of README.md (or PATH)."""
    if not argv or argv[0] != "--readme" or len(argv) > 2:
        print("usage: python -m trio_broadcast.options --readme [README.md]", file=sys.stderr)
        return 2
    path = Path(argv[1] if len(argv) > 1 else "README.md")
    path.write_text(with_table(path.read_text()))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as python -m
    sys.exit(main(sys.argv[1:]))
