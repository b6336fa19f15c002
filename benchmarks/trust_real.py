"""How far the recommended recipe's answers can be trusted on real photos: top-1 against make and model top-1, the
calibration error before and after the temperature, and how many test photos are answered at the "not sure"
threshold, with how many of those are right.

    .venv/bin/python benchmarks/trust_real.py --data ../shared/stanford_cars/odd98 --size 96 --epochs 60 \\
        --results benchmarks/results/trust_odd98.json

The recipe is trained as a user trains it (`real_accuracy.train`: ``carspotter train -c
configs/stanford_ghostnet.yaml``, resumable: a finished run with the same command is reused), or ``--run`` names a
finished run folder. Then ``carspotter calibrate RUN`` fits the temperature and threshold on the run's own validation
split (held out of train; the test split is never used to fit), and ``carspotter evaluate best.ckpt --json`` scores
the test split once. Machine, date, load, the command of every step and every figure go to ``--results``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from real_accuracy import CARSPOTTER, RECIPES, ROOT, command_line, load, machine, prepared, train

FIELDS = ("top1", "top5", "make_top1", "model_top1", "balanced_top1", "ece_uncalibrated", "ece", "coverage",
          "answered_top1")  # fmt: skip


def carspotter(*args: str) -> dict:
    """``carspotter ARGS --json``: its last stdout line, parsed; a failure stops the benchmark with its stderr."""
    done = subprocess.run([*CARSPOTTER, *args, "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"carspotter {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="raw dataset (any layout prepare reads) or prepared")
    ap.add_argument("--run", type=Path, help="a finished run folder to measure (default: train the recipe)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "trust")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "trust_odd98.json")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "command": command_line(),
        "machine": machine(),
        "load_before": load(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    data = prepared(args.data, args.workdir)
    if args.run is None:
        summary = train("recommended", RECIPES["recommended"], data, args.size, args.epochs, args.workdir, [], None)
        run = Path(summary["run_dir"])
        record["training"] = {k: summary.get(k) for k in ("command", "minutes", "test_top1", "image_size",
                                                          "epochs_run", "load_after_run")}  # fmt: skip
    else:
        run = args.run
    record["run_dir"] = str(run)
    record["calibrate_command"] = f"carspotter calibrate {run} --json"
    record["calibration"] = carspotter("calibrate", str(run))
    out = args.workdir / f"eval-{run.name}"
    record["evaluate_command"] = f"carspotter evaluate {run / 'best.ckpt'} --data {data} --out {out} --json"
    record["test"] = carspotter("evaluate", str(run / "best.ckpt"), "--data", str(data), "--out", str(out))
    record["load_after"] = load()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")

    cal, test = record["calibration"], record["test"]
    print(f"{record['machine']['cpu']}, load {record['load_before']} → {record['load_after']}; run {run.name}")
    print(f"temperature {cal['temperature']:.3g} and threshold {cal['min_confidence']:.2f} fitted on the "
          f"{cal['fitted_on']}")  # fmt: skip
    for key in FIELDS:
        value = test.get(key)
        print(f"  {key:<18} {'–' if value is None else f'{value:.4f}'}")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
