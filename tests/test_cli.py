"""The command line's names: one name per idea across commands, and `--version`."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from carspotter import __version__
from carspotter.cli import app


def _options(*command: str) -> set[str]:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", result.output))


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"carspotter {__version__}"


def test_one_name_per_idea_across_commands() -> None:
    assert "--runs-dir" in _options("runs") and "--runs-dir" in _options("models")
    assert "--runs" not in _options("models") and "--runs" not in _options("bench-infer")
    assert "--repeats" in _options("bench-infer")
    for command in ("train", "demo", "sweep"):
        assert {"--config", "-c"} <= _options(command), command


def test_help_shows_the_defaults_of_options_without_one_in_the_signature() -> None:
    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "(default 0.2;" in result.output and "(default 0)" in result.output
