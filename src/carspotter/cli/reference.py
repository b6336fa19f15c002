"""The command reference in Markdown (for MkDocs), generated from the app itself: every command, its help, usage
and a table of its arguments and options, so the documentation cannot drift from `carspotter COMMAND --help`.

    python -c "from carspotter.cli.reference import markdown; print(markdown())" > docs/cli.md
"""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any

import typer
from rich.errors import StyleSyntaxError
from rich.style import Style

from carspotter.cli import app  # the package, not `_app`: importing it registers every command
from carspotter.cli._app import summary

if TYPE_CHECKING:
    from typer._click import Command, Parameter  # the click that typer bundles

PROG = "carspotter"
NONE = "–"  # the default column of a parameter without a default
_WIDE = 10_000  # terminal width for `get_usage`: one line, whatever the terminal
_TAG = re.compile(r"(?<!\\)\[(/?)([^\[\]]*)\]")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]])")


def _is_style(text: str) -> bool:
    try:
        Style.parse(text)
    except StyleSyntaxError:
        return False
    return bool(text.strip())


def plain(text: str) -> str:
    """`text` without Rich markup tags (``[yellow]``, ``[/]``, ``[bold red]``); a bracket that is no style, such as
    ``[default: 3]``, stays."""
    return _TAG.sub(lambda m: "" if _is_style(m[2]) or (m[1] and not m[2]) else m[0], text).replace("\\[", "[")


def _escape(text: str) -> str:
    """Literal text in Markdown, also inside a table cell."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("|", r"\|")


def _code(text: str) -> str:
    """`text` as a code span, or as escaped text where a code span cannot hold it in a table cell."""
    return f"`{text}`" if text and "`" not in text and "|" not in text else _escape(text)


def _one_line(text: str | None) -> str:
    return _escape(" ".join(plain(text or "").split()))


def _help_text(command: Command) -> str:
    """The command's whole help as Markdown paragraphs (up to click's ``\\f`` cut; ``\\b`` markers dropped)."""
    text = inspect.cleandoc(plain(command.help or "")).partition("\f")[0]
    paragraphs = [[line for line in block.splitlines() if line.strip() != "\b"] for block in text.split("\n\n")]
    return "\n\n".join("\n".join(_escape(line.rstrip()) for line in lines) for lines in paragraphs if lines)


def _names(param: Parameter) -> str:
    """`` `-o`, `--out` `` (short names first), `` `--flip` / `--no-flip` ``; an argument: its name."""
    if param.param_type_name == "argument":
        name = getattr(param, "display_name_raw", None) or param.name or ""
        return _code(name + ("..." if param.nargs == -1 else ""))

    def joined(opts: list[str]) -> str:
        return ", ".join(_code(opt) for opt in sorted(opts, key=lambda opt: len(opt) - len(opt.lstrip("-/+"))))

    return " / ".join(joined(opts) for opts in (param.opts, param.secondary_opts) if opts)


def _is_flag(param: Parameter) -> bool:
    return param.param_type_name == "option" and bool(getattr(param, "is_flag", False))


def _type(param: Parameter, ctx: typer.Context) -> str:
    if _is_flag(param):
        return "flag"
    if getattr(param, "count", False):
        return "count"
    if hasattr(param, "display_type"):  # typer's own parameters: `<int range>`, `<list[str]>`, `<a|b>`
        label = param.display_type(ctx).removeprefix("<").removesuffix(">")
    else:
        label = getattr(param.type, "name", str(param.type))
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:
        bounds = f"{low}<=x<={high}" if low is not None and high is not None else (
            f"x>={low}" if low is not None else f"x<={high}")
        label = f"{label.removesuffix(' range')}, {bounds}"
    return _code(label)


def _default(param: Parameter, ctx: typer.Context) -> str:
    if param.required:
        return "required"
    show = getattr(param, "show_default", None)
    if isinstance(show, str):
        return _one_line(show)
    if show is False and not ctx.show_default:
        return NONE
    value: Any = param.default
    if _is_flag(param) and getattr(param, "is_bool_flag", isinstance(value, bool)):
        if param.secondary_opts:  # the name in force: `--no-flip`
            return _code((param.opts if value else param.secondary_opts)[0])
        return "on" if value else "off"
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return NONE
    if callable(value):
        return "(dynamic)"
    if isinstance(value, (list, tuple)):
        return ", ".join(_code(str(v.value if isinstance(v, Enum) else v)) for v in value)
    return _code(str(value.value if isinstance(value, Enum) else value))


def _table(command: Command, ctx: typer.Context) -> list[str]:
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    params.sort(key=lambda p: p.param_type_name != "argument")  # arguments first, each kind in its order
    if not params:
        return []
    rows = [f"| {_names(p)} | {_type(p, ctx)} | {_default(p, ctx)} | {_one_line(getattr(p, 'help', None))} |"
            for p in params]
    return ["| argument or option | type | default | help |", "| --- | --- | --- | --- |", *rows, ""]


def walk(command: Command, ctx: typer.Context) -> Iterator[tuple[Command, typer.Context]]:
    """Every command under `command` (not itself), depth first in the order the help lists them, with its context."""
    for name in getattr(command, "commands", {}):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        sub_ctx = typer.Context(sub, info_name=name, parent=ctx)
        yield sub, sub_ctx
        yield from walk(sub, sub_ctx)


def root() -> tuple[Command, typer.Context]:
    """The click command of the app and its context (wide, so a usage line is never wrapped)."""
    command = typer.main.get_command(app)
    return command, typer.Context(command, info_name=PROG, terminal_width=_WIDE, max_content_width=_WIDE)


def _anchor(path: str) -> str:
    return "#" + re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", path).strip().lower())


def markdown() -> str:
    """The command reference: a table of the commands, then per command a ``## carspotter COMMAND`` section with its
    help, its usage line and a table of its arguments and options."""
    top, top_ctx = root()
    commands = list(walk(top, top_ctx))
    own = [p for p in top.params if not getattr(p, "hidden", False)]
    lines = [
        f"Every `{PROG}` command, generated from the command line itself (`{PROG} COMMAND --help` says the same). "
        f"Options of `{PROG}` itself go before the command: "
        + "; ".join(f"{_names(p)} ({_one_line(getattr(p, 'help', None)).rstrip('.')})" for p in own) + ".",
        "",
        "| command | what it does |",
        "| --- | --- |",
        *(f"| [{_code(ctx.command_path.removeprefix(PROG + ' '))}]({_anchor(ctx.command_path)}) | "
          f"{_one_line(summary(command))} |" for command, ctx in commands),
        "",
    ]
    for command, ctx in commands:
        usage = command.get_usage(ctx).strip().removeprefix("Usage:").strip()
        lines += [f"## {ctx.command_path}", ""]
        if help_text := _help_text(command):
            lines += [help_text, ""]
        lines += ["```text", usage, "```", ""]
        lines += _table(command, ctx)
    return "\n".join(lines).rstrip("\n") + "\n"
