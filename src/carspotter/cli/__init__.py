"""The `carspotter` command: parses arguments and dispatches to library functions. No work lives here.

One module per command group (`data`, `training`, `evaluation`, `deploy`); importing them registers their commands
on `app`. The console script and ``python -m carspotter.cli`` both run `main`.
"""

from carspotter.cli import data, training, evaluation, deploy  # noqa: F401, I001  (registers the commands, in this order)
from carspotter.cli._app import app, main

__all__ = ["app", "main"]
