"""`--help` as a user reads it at 80 columns (every option name whole, flags as flags), and the generated Markdown
command reference (`carspotter.cli.reference.markdown`)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import typer
from synthetic_support import CARSPOTTER

from carspotter.cli import app
from carspotter.cli.reference import markdown, root, walk

TOP, TOP_CTX = root()
COMMANDS = {ctx.command_path.split(" ", 1)[1]: command for command, ctx in walk(TOP, TOP_CTX)}


def _names(command: typer.core.TyperCommand) -> list[str]:
    """Every option name of `command` (`--long`, `--no-long`, `-x`), from the click command's parameters."""
    return [name for p in command.params if p.param_type_name == "option" for name in (*p.opts, *p.secondary_opts)]


def _whole(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("path", ["", *COMMANDS])
def test_help_at_80_columns_shows_every_name_whole_and_flags_as_flags(path: str) -> None:
    command = COMMANDS[path] if path else TOP
    proc = subprocess.run([*CARSPOTTER, *path.split(), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "80"})  # stdout a pipe: not a terminal either
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout
    names = _names(command) + (list(getattr(command, "commands", {})) if not path else [])
    assert not [name for name in names if not _whole(name, shown)], shown
    for cut_or_typed in ("…", "<bool>", "BOOLEAN"):
        assert cut_or_typed not in shown, shown
    assert max(map(len, shown.splitlines())) <= 80, shown


def test_help_shows_a_negatable_flag_as_its_two_names() -> None:
    proc = subprocess.run([*CARSPOTTER, "export", "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "80"})
    assert "--check-random / --no-check-random" in proc.stdout and "--overwrite / --no-overwrite" in proc.stdout
    assert re.search(r"^  --int8 +ONNX", proc.stdout, re.MULTILINE), proc.stdout


def test_reference_has_a_section_and_every_name_of_every_command() -> None:
    text = markdown()
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert len(headings) == len(set(headings))
    for name, command in typer.main.get_command(app).commands.items():
        assert f"carspotter {name}" in headings, name
        section = text.split(f"## carspotter {name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"```text\ncarspotter {name} [OPTIONS]" in section, section
        for option in _names(command):
            assert f"`{option}`" in section, (name, option)
        assert "`--help`" not in section and "<bool>" not in section


def test_reference_is_valid_markdown_tables() -> None:
    text = markdown()
    assert text.startswith("Every `carspotter` command") and text.endswith("\n")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|"):
            cells = re.split(r"(?<!\\)\|", line)
            header = next(lines[j] for j in range(i, -1, -1) if not lines[j - 1].startswith("|"))
            assert len(cells) == len(re.split(r"(?<!\\)\|", header)), line
            assert lines[i - 1].startswith("|") or lines[i - 1] == "", line  # a blank line before a table
            assert i + 1 < len(lines) and (lines[i + 1].startswith("|") or lines[i + 1] == ""), line
        if line.startswith("```") and line != "```":
            assert lines[i - 1] == "" and lines[i + 2] == "```" and lines[i + 3:i + 4] in ([], [""]), lines[i:i + 4]
    assert "| `--overwrite` / `--no-overwrite` | flag | `--no-overwrite` |" in text
    assert "| `-o`, `--out` | `path` | required |" in text
    assert "| `--json` | flag | off |" in text and "| `--min-agreement` | `float, 0.0<=x<=1.0` | `0.95` |" in text
    assert r"\[default: CARSPOTTER\_MAX\_PIXELS, else 40000000\]" in text  # brackets kept, not read as markup
