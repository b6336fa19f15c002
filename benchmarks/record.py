"""A results file for benchmarks that print a table: the table itself, with the machine, the date, the load before
and after, and the command that made it, as JSON under ``benchmarks/results/``. The documentation renders the table
from the file (``<!-- results: NAME.json -->``), so a figure is never typed twice."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from real_accuracy import command_line, load, machine


class Record:
    """Start one when the benchmark starts (the load before), `save` it at the end."""

    def __init__(self) -> None:
        self.started = {"command": command_line(), "machine": machine(), "load_before": load(),
                        "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip

    def save(self, path: Path, header: list[str], rows: list[list[Any]], note: str = "", **extra: Any) -> Path:
        """``rows`` as the table shows them (strings or numbers); ``note``: one line under the table."""
        record = {**self.started, "load_after": load(), "table": {"header": header, "rows": rows}, "note": note,
                  **extra}  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"results: {path}")
        return path
