"""Start-up time of the commands that do not train, against `import lightning` (what `runs` used to pay).

    python benchmarks/cli_startup.py [--repeats 5] [--results benchmarks/results/cli_startup.json]

Each command runs as a fresh process (``python -m carspotter.cli ...``), ``--repeats`` times, interleaved; the
median wall time is printed with the machine and its load average, so a number never travels without its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _seconds(argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, help="also write the table, machine, date, load and command (JSON)")
    args = parser.parse_args()
    record = None
    if args.results:
        from record import Record

        record = Record()
    with tempfile.TemporaryDirectory() as empty:
        commands = {
            "carspotter --help": [sys.executable, "-m", "carspotter.cli", "--help"],
            "carspotter runs (empty folder)": [sys.executable, "-m", "carspotter.cli", "runs", "--runs-dir", empty],
            "python -c 'import lightning'": [sys.executable, "-c", "import lightning"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(_seconds(argv))
        load_after = os.getloadavg()[0]
    print(
        f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} before, {load_after:.1f} after; median of {args.repeats}"
    )
    for name, values in times.items():
        print(f"{statistics.median(values):7.2f} s  (min {min(values):.2f})  {name}")
    if record is not None:
        record.save(args.results, ["command", "median s", "min s"],
                    [[f"`{name}`", f"{statistics.median(v):.2f}", f"{min(v):.2f}"] for name, v in times.items()],
                    note=f"fresh processes, interleaved, median of {args.repeats}")  # fmt: skip


if __name__ == "__main__":
    main()
