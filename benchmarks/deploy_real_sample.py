"""Deployment numbers on real photos: train GhostNet (thesis variant) on the Stanford Cars sample, export it to
ONNX fp32, ONNX int8 and ExecuTorch, and compare batch-1 CPU latency and held-out top-1 in one `bench-infer` run.

    .venv/bin/python benchmarks/deploy_real_sample.py [--sample ../shared/stanford_cars/sample] [--epochs 30]

The sample (418 photos, 10 classes, ``labels.csv``) is arranged into a prepared dataset in a temporary folder with a
stratified, seeded train/test split; nothing derived from the photos is written outside that folder (``--keep``
keeps it and prints where). Prints the table as Markdown for README.md and benchmarks/README.md, and a JSON line.

    .venv/bin/python benchmarks/deploy_real_sample.py --results benchmarks/results/deploy_real_sample.json

``--results FILE`` also writes that table (the same columns and figures), the conditions, the machine, the date, the
load before and after, the command and the printed JSON into FILE (`record.Record`), from which the documentation
renders it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from carspotter.config import load_config
from carspotter.data.prepared import COLUMNS, FORMAT_NAME, FORMAT_VERSION, MANIFEST
from carspotter.export import executorch as export_executorch
from carspotter.export import onnx as export_onnx
from carspotter.export import quantize as export_int8
from carspotter.inference.bench_infer import bench_infer
from carspotter.training.run import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = ROOT.parent / "shared" / "stanford_cars" / "sample"


def arrange_sample(sample: Path, out: Path, test_fraction: float, seed: int) -> Path:
    """The sample's ``labels.csv`` + ``images/`` → a prepared folder (`carspotter.data.prepared`'s format)."""
    labels = pd.read_csv(sample / "labels.csv")
    original_ids = sorted(labels["class_id"].unique())
    remap = {cid: i for i, cid in enumerate(original_ids)}
    names = labels.drop_duplicates("class_id").set_index("class_id")["class_name"]
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for cid in original_ids:
        group = labels[labels["class_id"] == cid].sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
        n_test = int(round(test_fraction * len(group)))
        for k, (_, r) in enumerate(group.iterrows()):
            split = "test" if k < n_test else "train"
            (out / split).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample / "images" / r["fname"], out / split / r["fname"])
            rows[split].append({"fname": f"{split}/{r['fname']}", "class_id": remap[cid], "class_name": names[cid],
                                "bbox_x1": "", "bbox_y1": "", "bbox_x2": "", "bbox_y2": "",
                                "width": r["width"], "height": r["height"]})
    for split, split_rows in rows.items():
        pd.DataFrame(split_rows, columns=COLUMNS).to_csv(out / f"{split}.csv", index=False)
    pd.DataFrame({"class_id": range(len(original_ids)), "class_name": [names[c] for c in original_ids]}).to_csv(
        out / "classes.csv", index=False)
    (out / MANIFEST).write_text(json.dumps({
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "source_layout": "stanford-cars-sample",
        "num_classes": len(original_ids), "counts": {s: len(r) for s, r in rows.items()},
    }, indent=2))
    return out


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=64, help="square input size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--no-executorch", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, run, exports)")
    parser.add_argument("--results", type=Path, help="also write the table, machine, date, load and command (JSON), "
                        "e.g. benchmarks/results/deploy_real_sample.json")
    args = parser.parse_args()
    record = None
    if args.results:  # the load before the measurement, and the command
        from record import Record

        record = Record()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="carspotter-deploy-"))
    started = time.time()
    try:
        prepared = arrange_sample(args.sample, work / "prepared", test_fraction=0.25, seed=0)
        cfg = load_config(ROOT / "configs" / "demo.yaml", [
            f"data.path={prepared}", f"output.runs_dir={work / 'runs'}", f"data.image_size=[{args.size},{args.size}]",
            "data.num_workers=1", f"trainer.max_epochs={args.epochs}", f"scheduler.params.T_max={args.epochs}",
            "output.tags=[deploy-benchmark]", "output.description=Stanford Cars sample, deployment benchmark",
        ])
        result = train(cfg, progress=False)
        ckpt = result.best_ckpt
        reports = [
            export_onnx.export(ckpt, work / "model.onnx", data=prepared),
            export_int8.export(ckpt, work / "model-int8.onnx", calib=prepared),
        ]
        if not args.no_executorch:
            reports.append(export_executorch.export(ckpt, work / "model.pte", data=prepared))
        bench = bench_infer([ckpt, *(r.path for r in reports)], data=prepared, split="test", threads=args.threads,
                            runs=args.runs)
        eager = next(f for f in bench.formats if f.label == "pytorch-eager")
        n_train, wall = len(pd.read_csv(prepared / "train.csv")), time.time() - started
        print(f"\nmachine: {cpu_name()}, {args.threads} thread(s); GhostNet (thesis variant) {args.size}×{args.size}, "
              f"{args.epochs} epochs on {n_train} sample photos; "
              f"test n={bench.n_eval}; wall {wall:.0f} s")
        for r in reports:
            print(f"{r.format}: max |Δ logit| vs PyTorch {r.agreement.max_abs_diff:.2e}, top-1 agreement "
                  f"{r.agreement.top1_agreement:.1%} on {r.check_source.replace(str(prepared), 'the sample')}")
        rows = [[f.label, f"{f.median_ms:.2f}", f"{f.p90_ms:.2f}", f"{f.speedup:.2f}", f"{f.throughput:.0f}",
                 f"{f.size_mb:.1f}", f"{f.top1:.2%}", f"{100 * (f.top1 - eager.top1):+.2f} pt"] for f in bench.formats]
        print("\n| format | median ms | p90 ms | × eager | img/s (batch 16) | MB | top-1 | Δ top-1 vs eager |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        summary = {"machine": cpu_name(), "threads": args.threads, "size": args.size, "epochs": args.epochs,
                   "formats": [f.to_json() for f in bench.formats],
                   "parity": {r.format: r.agreement.max_abs_diff for r in reports}}  # fmt: skip
        print(json.dumps(summary))
        if record is not None:
            sample = os.path.relpath(args.sample.resolve(), ROOT)
            record.save(
                args.results,
                ["format", "median ms", "p90 ms", "× eager", f"img/s (batch {bench.throughput_batch})", "MB",
                 f"top-1 (n={bench.n_eval})", "Δ top-1 vs eager"],
                rows,
                note=f"GhostNet (thesis variant) trained from scratch on {sample} ({n_train} train photos) at "
                     f"{args.size}×{args.size} for {args.epochs} epochs, then batch-1 CPU latency over {bench.runs} "
                     f"interleaved runs per format with {bench.threads} thread(s) per runtime on {cpu_name()}, and "
                     f"top-1 on the n={bench.n_eval} held-out photos (stratified, seeded 25% split); wall "
                     f"{wall / 60:.0f} min"
                     + (f"; ExecuTorch's program has a fixed batch of 1, so its batch-{bench.throughput_batch} "
                        f"throughput is {bench.throughput_batch} single-image calls" if not args.no_executorch else ""),
                result=summary, n_train=n_train, n_test=bench.n_eval, runs=bench.runs, wall_s=round(wall, 1),
                exports={r.format: {"max_abs_diff": r.agreement.max_abs_diff,
                                    "top1_agreement": r.agreement.top1_agreement, "n_check": r.n_check,
                                    "checked_on": r.check_source.replace(str(prepared), "the sample")}
                         for r in reports},
            )  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
