"""The `carspotter` app: its options, logging, the helpers the command groups share, and `main` (one `error:` line
for a `UserError`, exit 2)."""

from __future__ import annotations

import inspect
import logging
import shutil
import sys
import warnings
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from carspotter.defaults import DEFAULT_IMAGE_SIZE
from carspotter.errors import UserError

if TYPE_CHECKING:
    from typer._click import Command, HelpFormatter  # the click that typer bundles


def summary(command: Command) -> str:
    """A command's one-line summary: the first paragraph of its help, on one line."""
    paragraph = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0]
    return " ".join(paragraph.split())


class _Group(TyperGroup):
    """Help as wide as the terminal (COLUMNS, else the terminal's width; 80 for a pipe), up to 120 columns; click's own
    cap is 80, and its test runner forces 80 whatever COLUMNS says. The top-level help lists each command with its
    whole summary (click cuts it short with "...")."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        if parent is None:  # the subcommands' contexts inherit it
            extra.setdefault("terminal_width", max(min(shutil.get_terminal_size().columns, 120) - 2, 50))
        return super().make_context(info_name, args, parent, **extra)

    def format_commands(self, ctx: typer.Context, formatter: HelpFormatter) -> None:
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, summary(command)) for name, command in commands if command and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Plain click help (`rich_markup_mode=None`), not typer's Rich panels: at 80 columns those cut option names short
# ("--embed-prepro…": a seven-column table whose unbreakable names Rich shrinks with the rest when the row is too
# wide), show every flag's type ("<bool>"), and read help text as Rich markup (a "[default: ...]" in it vanished).
# Click's formatter never cuts a name: it wraps the help beside it, or starts it on the next line.
app = typer.Typer(
    name="carspotter",
    help="Train, compare and ship small, fast car make/model/year recognisers.",
    cls=_Group,
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Never hard-wrapped: a script reading stdout gets paths and commands whole (the terminal wraps long lines itself).
console = Console(soft_wrap=True)
DEFAULT_SIDE = DEFAULT_IMAGE_SIZE[0]  # a square side, for the options that take one number
err_console = Console(stderr=True, soft_wrap=True)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "onnx_ir", "onnxscript",
                  "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")

def _print_version(value: bool) -> None:
    if value:
        from carspotter import __version__

        print(f"carspotter {__version__}")
        raise typer.Exit()

@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _setup_logging(verbose)

def _quiet_lightning() -> None:
    """Lightning's start-up chatter (GPU/TPU lines, a litlogger advert) would drown the progress line.

    Importing Lightning sets its ``lightning`` logger to INFO and gives it a handler of its own, while the messages
    also propagate to ours: each line came twice. So import it first, then take that back: its warnings still reach
    the user once, through the root handler.
    """
    import lightning.pytorch  # noqa: F401  (its import configures the loggers undone here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)

def _close_progress_bars() -> None:
    """End the lines of the progress bars an error interrupted, so the `error:` line starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.flush()

def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def main() -> None:
    try:
        app()
    except UserError as exc:
        _close_progress_bars()
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)

