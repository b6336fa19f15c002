"""Screen recipe variants at several dataset sizes built from one real dataset, selecting on held-out train photos.

    .venv/bin/python benchmarks/size_screen.py --data ../shared/stanford_cars/odd98 --jobs 2

A recipe fitted to one data size is not a recipe (issue 34): a variant is judged at every size, and one that is best
at one size and worse at another is not adopted. The sizes are built from the prepared dataset (``--data``: a raw
dataset, prepared into ``--workdir`` first, or a prepared folder) without copying a photo: a subset folder holds
filtered CSVs and links to the original images.

- ``all``: every class, every training photo;
- ``half-classes``: every other class (ids 0, 2, 4, ...), renumbered, all their photos;
- ``half-photos``: every class, half of each class's training photos (seeded; the test split unchanged);
- ``sample``: ``../shared/stanford_cars/sample`` if given with ``--sample`` (10 real classes, the small end).

Every variant (``--variant 'NAME=KEY=VALUE;KEY=VALUE'``; defaults below) is trained by ``carspotter train -c
configs/stanford_ghostnet.yaml`` at every size, with ``data.val_fraction`` (default 0.3) of the training photos held
out, seed 42; the figure that decides is the held-out top-1 of the last epoch (what ``trainer.select: last`` keeps),
beside the mean of the last 10 epochs and the training top-1 at the end (from the run's ``metrics.csv``). The test
split is scored by every run too (the pipeline always does); those figures are recorded and never used to choose.

The rule, fixed before any run: a variant is adopted over the reference (the first variant) only if at every size its
held-out top-1 is at least the reference's minus one standard error of that size's held-out split
(sqrt(p(1 - p) / n)), and at one size or more it is above the reference's plus one standard error.

A variant's value may name ``{reference_ckpt}``: the reference's ``best.ckpt`` at the same size (trained first),
for knowledge distillation from a teacher that has not seen that size's held-out photos.

``--eval-sizes 112,128`` also scores each run's held-out photos at other input sizes than it trained at (the
"test at a higher resolution" of FixRes: a random-resized crop makes a car look bigger in training than in a whole
photo), with the checkpoint the run kept; recorded beside the held-out top-1 at the training size, scored the same way.

Everything (machine, load before and after, date, the command of every run, every figure) goes to ``--results``
(default ``benchmarks/results/size_screen.json``, kept in the repository: numbers only, no photo) and to
``<workdir>/size_screen.json``; the table is printed at the end (``--json``: the last line is the JSON summary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from real_accuracy import ROOT, command_line, load, machine, prepared, train
from subsets import subset

from carspotter.data.prepared import load_prepared
from carspotter.formats.run_dir import METRICS_FILE, read_epoch_metrics

RECIPE = ROOT / "configs" / "stanford_ghostnet.yaml"
VARIANTS = {  # the reference first
    "unscaled": ["optimizer.weight_decay_scaling=null"],  # 1.2 per step, whatever the run's size
    "power-1": [],  # the recipe as its file says: the same decay in all as 1.2 x 7,440 steps
    "power-0.5": ["optimizer.weight_decay_scaling.power=0.5"],  # the AdamW paper's normalised decay
}
SIZES = ("all", "half-classes", "half-photos")
# In a variant's value, the reference's checkpoint at the same size: a teacher trained without that size's held-out
# photos, e.g. --variant 'kd=loss.distillation={teacher: {reference_ckpt}}' (distillation from the recipe itself).
REFERENCE_CKPT = "{reference_ckpt}"


def held_out(summary: dict, run_dir: Path, n_held: int) -> dict:
    rows = read_epoch_metrics(run_dir / METRICS_FILE)
    last10 = [float(r["val_top1"]) for r in rows[-10:] if r.get("val_top1")]
    top1 = summary["val_top1"]
    return {
        "held_out_top1": top1,
        "held_out_se": math.sqrt(top1 * (1 - top1) / n_held) if n_held else None,
        "held_out_n": n_held,
        "held_out_last10_mean": round(sum(last10) / len(last10), 4) if last10 else None,
        "train_top1_last_epoch": float(rows[-1]["train_top1"]) if rows and rows[-1].get("train_top1") else None,
        "weight_decay_per_step": summary.get("weight_decay_per_step"),
        "optimizer_steps": summary.get("optimizer_steps"),
        "test_top1_not_used": summary["test_top1"],
        "minutes": summary["minutes"],
        "command": summary["command"],
    }


def held_out_at_sizes(run_dir: Path, folder: Path, sizes: list[int], fraction: float, seed: int) -> dict[int, float]:
    """Top-1 of ``run_dir/best.ckpt`` on the held-out photos of ``folder``'s train split, fed at each input size."""
    import dataclasses

    from carspotter.data.prepared import stratified_split
    from carspotter.evaluation.metrics import evaluate_classifier
    from carspotter.inference import load_classifier

    classifier = load_classifier(run_dir / "best.ckpt", device="cpu")
    ds = load_prepared(folder)
    _, held = stratified_split(ds.train["class_id"].to_numpy(), fraction, seed)
    ds = dataclasses.replace(ds, test=ds.train.iloc[held].reset_index(drop=True))  # scored as "test" below
    trained_at = classifier.preprocessing
    scores = {}
    for size in sizes:
        classifier.preprocessing = dataclasses.replace(trained_at, image_size=(size, size))
        scores[size] = round(evaluate_classifier(classifier, ds, "test", progress=False).top1, 4)
    return scores


def decide(results: dict[str, dict[str, dict]], variants: list[str], sizes: list[str]) -> dict[str, str]:
    """The rule of the module docstring, variant by variant against the first."""
    ref, verdicts = variants[0], {}
    for name in variants[1:]:
        worse = [s for s in sizes if results[s][name]["held_out_top1"]
                 < results[s][ref]["held_out_top1"] - results[s][ref]["held_out_se"]]  # fmt: skip
        better = [s for s in sizes if results[s][name]["held_out_top1"]
                  > results[s][ref]["held_out_top1"] + results[s][ref]["held_out_se"]]  # fmt: skip
        if worse:
            verdicts[name] = f"not adopted: worse than {ref} by more than one s.e. at {', '.join(worse)}"
        elif better:
            verdicts[name] = f"adopted over {ref}: no worse at any size, better at {', '.join(better)}"
        else:
            verdicts[name] = f"not adopted: within one s.e. of {ref} at every size"
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="raw dataset (any layout prepare reads) or prepared")
    ap.add_argument("--sample", type=Path, help="a second, small real dataset as the 'sample' size (raw or prepared)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "size_screen")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "size_screen.json")
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)} (and sample)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE;...",
                    help="a variant (--set overrides, separated by ';'; '' for the recipe as it is); the first is the "
                         f"reference; default: {', '.join(VARIANTS)}")  # fmt: skip
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each with cores/jobs threads)")
    ap.add_argument("--eval-sizes", default="", help="comma-separated input sizes to score the held-out photos at too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    variants = dict(VARIANTS)
    if args.variant:
        variants = {}
        for spec in args.variant:
            name, _, sets = spec.partition("=")
            variants[name] = [s.strip() for s in sets.split(";") if s.strip()]
    started = time.perf_counter()
    record: dict = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command_line(),
        "load_before": load(),
        "image_size": args.size,
        "epochs": args.epochs,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "variants": variants,
    }
    base = prepared(args.data, args.workdir)
    every_other = list(range(0, load_prepared(base).num_classes, 2))
    folders = {
        "all": base,
        "half-classes": subset(base, args.workdir / "half-classes", classes=every_other),
        "half-photos": subset(base, args.workdir / "half-photos", photo_fraction=0.5),
    }
    if args.sample is not None:
        folders["sample"] = prepared(args.sample, args.workdir / "sample-raw")
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in folders]
    if unknown:
        sys.exit(f"unknown size(s) {unknown}; choose from {', '.join(folders)}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    jobs = [(size, name) for size in sizes for name in variants]
    common = [f"data.val_fraction={args.val_fraction}", f"trainer.seed={args.seed}", "logging.loggers=[csv]"]
    reference = next(iter(variants))

    def run(size: str, name: str, futures: dict) -> dict:
        sets = variants[name]
        if any(REFERENCE_CKPT in s for s in sets):  # a teacher: the reference's run at this size, trained first
            ckpt = Path(futures[size, reference].result()["run_dir"]) / "best.ckpt"
            sets = [s.replace(REFERENCE_CKPT, str(ckpt.resolve())) for s in sets]
        return train(f"{size}-{name}", RECIPE, folders[size], args.size, args.epochs, args.workdir,
                     [*common, *sets], threads)  # fmt: skip

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures: dict = {}
        for size, name in jobs:  # the reference first at every size, so a student never waits on a queued teacher
            futures[size, name] = pool.submit(run, size, name, futures)
        summaries = {key: f.result() for key, f in futures.items()}
    record["load_after"] = load()
    results: dict[str, dict[str, dict]] = {}
    for (size, name), summary in summaries.items():
        ds = load_prepared(folders[size])
        n_held = _held_out_count(ds, args.val_fraction, args.seed)
        results.setdefault(size, {})[name] = held_out(summary, Path(summary["run_dir"]), n_held)
        results[size][name]["train_photos"] = len(ds.train) - n_held
        results[size][name]["classes"] = ds.num_classes
        eval_sizes = [int(x) for x in args.eval_sizes.split(",") if x.strip()]
        if eval_sizes:
            scores = held_out_at_sizes(Path(summary["run_dir"]), folders[size], [args.size, *eval_sizes],
                                       args.val_fraction, args.seed)  # fmt: skip
            results[size][name]["held_out_top1_at_size"] = scores
    record["results"] = results
    record["decision"] = decide(results, list(variants), sizes)
    record["minutes"] = round((time.perf_counter() - started) / 60, 1)
    for path in (args.workdir / "size_screen.json", args.results):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; load {record['load_before']} → "
          f"{record['load_after']}; {record['minutes']} min")  # fmt: skip
    print(f"{'size':<13} {'variant':<14} {'classes':>7} {'train':>6} {'wd/step':>8} {'held-out':>9} {'± se':>6} "
          f"{'last 10':>8} {'train top-1':>11}")  # fmt: skip
    for size in sizes:
        for name in variants:
            r = results[size][name]
            print(f"{size:<13} {name:<14} {r['classes']:>7} {r['train_photos']:>6} {r['weight_decay_per_step']:>8.3g} "
                  f"{r['held_out_top1']:>9.1%} {r['held_out_se']:>6.1%} {r['held_out_last10_mean']:>8.1%} "
                  f"{r['train_top1_last_epoch']:>11.0%}")  # fmt: skip
    for size in sizes:
        for name in variants:
            if "held_out_top1_at_size" in results[size][name]:
                at = ", ".join(f"{k} px {v:.1%}" for k, v in results[size][name]["held_out_top1_at_size"].items())
                print(f"{size} {name}: held-out top-1 at input size {at}")
    for name, verdict in record["decision"].items():
        print(f"{name}: {verdict}")
    if args.json:
        print(json.dumps({"decision": record["decision"], "minutes": record["minutes"]}))


def _held_out_count(ds, fraction: float, seed: int) -> int:
    from carspotter.data.prepared import stratified_split

    _, held = stratified_split(ds.train["class_id"].to_numpy(), fraction, seed)
    return len(held)


if __name__ == "__main__":
    main()
