"""The `carspotter` app: its options, logging, the helpers the command groups share, and `main` (one `error:` line
for a `UserError`, exit 2)."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from carspotter.defaults import DEFAULT_IMAGE_SIZE
from carspotter.errors import UserError

app = typer.Typer(
    name="carspotter",
    help="Train, compare and ship small, fast car make/model/year recognisers.",
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

