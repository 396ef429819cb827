"""Tests for the declared options: :mod:`trio_broadcast.setting`, :mod:`trio_broadcast.options`.

Covered: every option of the parser is declared once, with help, and shows up
in ``--help`` and the README's table, which equals the generated one (rewrite
it with ``python -m trio_broadcast.options --readme``); the parser's defaults
are the settings' defaults; each kind of value reads text and checks values
with the same words for the command and for the settings; a rule between two
settings is worded with their options for the command.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trio_broadcast import options
from trio_broadcast.cli import build_parser, main
from trio_broadcast.config import Config, OnFull, RedisSettings
from trio_broadcast.options import CommandSettings, every_option, settings_from, with_table
from trio_broadcast.setting import Choice, Count, Member, Seconds, SettingError

README = Path(__file__).parent.parent / "README.md"


def test_the_readme_table_is_generated_from_the_declarations() -> None:
    """If this fails: ``python -m trio_broadcast.options --readme``, then review the diff."""
    readme = README.read_text()
    assert with_table(readme) == readme


def test_the_readme_table_has_one_row_per_option() -> None:
    rows = options.readme_rows()
    flags = [row.split("`")[1].split()[0] for row in rows]
    parser_flags = [
        flag
        for action in build_parser()._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    ]
    assert flags == parser_flags
    assert len(set(flags)) == len(flags)


def test_the_generator_rewrites_a_stale_table(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    text = README.read_text()
    stale.write_text(text.replace("| `--port` | `8000` |", "| `--port` | `80` |"))
    assert options.main(["--readme", str(stale)]) == 0
    assert stale.read_text() == text
    assert options.main([]) == 2


def test_every_option_has_help_shown_by_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for each in every_option():
        assert each.option.help
        assert each.option.flag in out
        first_words = " ".join(options._plain(each.option.help).split()[:4])
        assert first_words.replace("%%", "%") in out, each.option.flag
    assert "(default: 8000)" in out
    assert "(default: unlimited)" in out


def test_the_parser_defaults_are_the_settings_defaults() -> None:
    args = build_parser().parse_args([])
    assert settings_from(args, Config) == Config()
    assert settings_from(args, RedisSettings) == RedisSettings()
    assert settings_from(args, CommandSettings) == CommandSettings()


def test_a_rule_between_settings_names_the_options() -> None:
    with pytest.raises(SettingError) as raised:
        Config(keyfile="k.pem")
    assert str(raised.value) == "certfile and keyfile must be given together"
    assert raised.value.names == ("certfile", "keyfile")
    assert options.in_flags(raised.value) == "--certfile and --keyfile must be given together"


@pytest.mark.parametrize(
    ("kind", "text", "problem"),
    [
        (Count(1), "0", "must be at least 1, not 0"),
        (Count(0, 65535), "65536", "must be at most 65535, not 65536"),
        (Count(0), "1.5", "'1.5' is not a whole number"),
        (Seconds(), "0", "must be more than 0 seconds, not 0"),
        (Seconds(zero_allowed=True), "-1", "must be 0 or more seconds, not -1"),
        (Seconds(zero_allowed=True), "inf", "must be 0 or more seconds, not inf"),
        (Seconds(), "soon", "'soon' is not a number of seconds"),
        (Choice(("a", "b")), "c", "invalid choice: 'c' (choose from 'a', 'b')"),
        (
            Member(OnFull),
            "DROP",
            "invalid choice: 'DROP' (choose from 'disconnect', 'drop', 'wait')",
        ),
    ],
)
def test_a_kind_reads_text_with_the_words_of_its_check(
    kind: Count | Seconds | Choice | Member, text: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=r".") as raised:
        kind.parse(text)
    assert str(raised.value) == problem


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (Count(1), "7", 7),
        (Seconds(zero_allowed=True), "0", 0.0),
        (Seconds(), "2.5", 2.5),
        (Choice(("debug", "info"), fold_case=True), "DEBUG", "debug"),
        (Member(OnFull), "drop", OnFull.DROP),
    ],
)
def test_a_kind_reads_good_text(
    kind: Count | Seconds | Choice | Member, text: str, value: object
) -> None:
    assert kind.parse(text) == value


def test_a_setting_names_itself_in_its_check() -> None:
    with pytest.raises(ValueError, match=r"^ping_interval must be 0 or more seconds, not nan$"):
        Config(ping_interval=math.nan)
    with pytest.raises(TypeError, match=r"^on_full must be an OnFull, not 'drop'$"):
        Config(on_full="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^log_level must be one of"):
        CommandSettings(log_level="loud")


def test_a_bad_option_is_reported_before_a_missing_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 for the option, as before, not 1 for the token file."""
    missing = str(tmp_path / "missing")
    for argv in (["--certfile", "c.pem"], ["--queue-size", "0"]):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--token-file", missing])
        assert exited.value.code == 2
        assert "token file" not in capsys.readouterr().err
    assert main(["--token-file", missing]) == 1
    assert "cannot read the token file" in capsys.readouterr().err
