"""How a setting is declared: its default, its kind, and the command-line option, in one place.

A settings class (:class:`~trio_broadcast.config.Config`,
:class:`~trio_broadcast.config.RedisSettings`) declares each field with
:func:`setting`. The field's *kind* is the one check its value must pass, and
knows how to read it from text; the class runs the checks on construction
(:func:`check_fields`), and the command builds its parser and the README's
options table from the same fields (:mod:`trio_broadcast.options`). So an
option's name, default, type, check and help are written once, side by side.

A kind's messages follow the setting's name, so that both callers can name
it their own way: ``queue_size must be at least 1, not 0`` from
:class:`~trio_broadcast.config.Config`, ``argument --queue-size: must be at
least 1, not 0`` from the command.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

MiB = 1024 * 1024


class Kind(Protocol):
    """What values a setting takes: read from the command line, then checked."""

    def parse(self, text: str) -> Any:
        """The value written as ``text``, checked; ``ValueError`` (the problem) if it is not."""

    def check(self, value: object, label: str) -> None:
        """Raise ``TypeError`` or ``ValueError`` (``label`` then the problem) for a bad value."""


def _fail(error: type[Exception], label: str, problem: str) -> Exception:
    return error(f"{label} {problem}".lstrip())


@dataclass(frozen=True)
class Option:
    """The command-line side of a setting."""

    flag: str
    """``--queue-size``; for a switch (a ``bool`` setting), giving it flips the default."""
    help: str
    """One text for ``--help`` and the README (Markdown: backquotes and links)."""
    metavar: str | None = None
    shown: str | None = None
    """The default as the README and ``--help`` show it, when the value alone says too little."""


def setting(
    default: T, kind: Kind | None = None, option: Option | None = None, *, repr: bool = True
) -> T:
    """A dataclass field: ``default``, checked by ``kind``, set by the command-line ``option``.

    ``None`` is accepted without a check where it is the default (no limit, no file).
    """
    metadata = {"kind": kind, "option": option}
    return dataclasses.field(default=default, metadata=metadata, repr=repr)


def check_fields(settings: Any) -> None:
    """Check each field of the dataclass instance ``settings`` against its kind."""
    for field in dataclasses.fields(settings):
        kind = field.metadata.get("kind")
        value = getattr(settings, field.name)
        if kind is None or (value is None and field.default is None):
            continue
        kind.check(value, field.name)


class SettingError(ValueError):
    """Settings that are wrong together; :attr:`names` are the fields at fault."""

    def __init__(self, names: tuple[str, ...], problem: str) -> None:
        super().__init__(f"{' and '.join(names)} {problem}")
        self.names = names
        self.problem = problem


# ---------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Count:
    """A whole number from ``lowest`` to ``highest`` (if any)."""

    lowest: int
    highest: int | None = None

    def parse(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        self.check(value, "")
        return value

    def check(self, value: object, label: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(TypeError, label, f"must be an integer, not {value!r}")
        if value < self.lowest:
            raise _fail(ValueError, label, f"must be at least {self.lowest}, not {value}")
        if self.highest is not None and value > self.highest:
            raise _fail(ValueError, label, f"must be at most {self.highest}, not {value}")


@dataclass(frozen=True)
class Seconds:
    """A finite duration: more than 0 seconds, or 0 or more with ``zero_allowed``."""

    zero_allowed: bool = False

    def parse(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of seconds") from None
        self.check(value, "")
        return value

    def check(self, value: object, label: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(TypeError, label, f"must be a number, not {value!r}")
        if not math.isfinite(value) or value < 0 or (value == 0 and not self.zero_allowed):
            lowest = "0 or more" if self.zero_allowed else "more than 0"
            raise _fail(ValueError, label, f"must be {lowest} seconds, not {value:g}")


@dataclass(frozen=True)
class Text:
    """Any text, or text that passes ``rule`` (which returns the problem, or ``None``)."""

    rule: Callable[[str], str | None] | None = None

    def parse(self, text: str) -> str:
        self.check(text, "")
        return text

    def check(self, value: object, label: str) -> None:
        if self.rule is None:
            return
        if not isinstance(value, str):
            raise _fail(TypeError, label, f"must be a string, not {value!r}")
        problem = self.rule(value)
        if problem is not None:
            raise _fail(ValueError, label, problem)


@dataclass(frozen=True)
class Choice:
    """One of ``values``, written as the value itself (``fold_case``: in any case)."""

    values: tuple[str, ...]
    fold_case: bool = False

    def parse(self, text: str) -> str:
        value = text.lower() if self.fold_case else text
        if value not in self.values:
            choices = ", ".join(map(repr, self.values))
            raise ValueError(f"invalid choice: {text!r} (choose from {choices})")
        return value

    def check(self, value: object, label: str) -> None:
        if value not in self.values:
            raise _fail(ValueError, label, f"must be one of {self.values}, not {value!r}")


@dataclass(frozen=True)
class Member:
    """A member of the enumeration ``members``, written as its value."""

    members: type[enum.Enum]

    def parse(self, text: str) -> enum.Enum:
        return self.members(Choice(self.values).parse(text))

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(member.value for member in self.members)

    def check(self, value: object, label: str) -> None:
        if not isinstance(value, self.members):
            raise _fail(TypeError, label, f"must be an {self.members.__name__}, not {value!r}")


@dataclass(frozen=True)
class Switch:
    """On or off; the command-line option flips the default."""

    def parse(self, text: str) -> bool:  # pragma: no cover - a switch takes no value
        raise ValueError(f"{text!r}: this option takes no value")

    def check(self, value: object, label: str) -> None:
        """Any value: it is used for its truth, as it always was."""


@dataclass(frozen=True)
class Many:
    """A tuple of ``each``, each named ``noun`` in messages; the option may be repeated."""

    each: Kind
    noun: str

    def parse(self, text: str) -> str:
        self.each.check(text, self.noun)
        return text

    def check(self, value: object, label: str) -> None:
        for item in value:  # type: ignore[attr-defined]
            if not isinstance(item, str):
                raise TypeError(f"{self.noun}s must be strings, not {item!r}")
            self.each.check(item, self.noun)
