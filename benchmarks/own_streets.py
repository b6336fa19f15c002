"""Your own streets, on real photos: car models enrolled from a few photos each against fine-tuning, and unbalanced
classes trained with ``data.class_balance`` none, sampler and loss.

    .venv/bin/python benchmarks/own_streets.py --data ../shared/stanford_cars/odd98 --jobs 2

**Enrolment.** ``--new`` classes (10; drawn with ``--seed`` among those whose names can be folder names) are held
out, and the recommended recipe (``configs/stanford_ghostnet.yaml``, ``--size`` px / ``--epochs`` epochs) is trained
on the others. ``carspotter enroll`` then adds the held-out classes from 1, 5 and 20 of their training photos each
(drawn with the seed; the 5 include the 1), and ``carspotter evaluate`` scores each enrolled checkpoint on the old
classes' test photos and on the new classes' test photos (a dataset of some of the model's classes is matched by
name). Beside it, the old-class checkpoint is fine-tuned on every class's training photos for ``--finetune-epochs``
(``configs/finetune_folders.yaml`` at the same size, the model's own name and arguments) and scored on the same
photos. Chance is 1 / (all classes).

**Imbalance.** Half of the classes (drawn with the seed) keep 25% of their training photos (at least 2); the recipe
is trained with ``data.class_balance`` none, sampler and loss, at the same size and epochs, seed 42. Reported: test
top-1, balanced top-1 (the mean of the per-class accuracies) and the top-1 on the rare and on the common classes'
test photos (from ``evaluate``'s per-class CSV).

Every run goes through the CLI as a user types it and is resumable (``real_accuracy.train``: a finished run with the
same command is reused), so the benchmark can be stopped and re-run. Subsets are prepared folders of links
(``subsets.subset``), never copies. Machine, date, load, the command of every step and every figure go to
``--results`` (default ``benchmarks/results/own_streets_odd98.json``: numbers and class names only, no photo).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from real_accuracy import CARSPOTTER, RECIPES, ROOT, command_line, load, machine, prepared, train
from subsets import subset
from trust_real import carspotter

from carspotter.config import load_config
from carspotter.data.prepared import load_prepared

FINETUNE = ROOT / "configs" / "finetune_folders.yaml"
SHOTS = (1, 5, 20)
BALANCE = ("none", "sampler", "loss")


def enrolment_photos(ds, new_ids: list[int], shots: int, seed: int, out: Path) -> Path:
    """``out/<class name>/`` with links to ``shots`` training photos of each new class (a seeded prefix)."""
    if out.exists():
        return out
    partial = out.with_name(out.name + ".partial")
    for class_id in new_ids:
        rows = ds.train[ds.train["class_id"] == class_id]
        order = np.random.default_rng([seed, class_id]).permutation(len(rows))[:shots]
        folder = partial / ds.classes[class_id]
        folder.mkdir(parents=True, exist_ok=True)
        for fname in rows["fname"].iloc[np.sort(order)]:
            link = folder / Path(fname).name
            if not link.exists():
                link.symlink_to((ds.root / fname).resolve())
    partial.rename(out)
    return out


def rare_and_common(report: Path, rare: set[int]) -> dict[str, float]:
    """Top-1 over the rare and over the common classes' test photos, from evaluate's per-class CSV."""
    per_class = pd.read_csv(report / "per_class_accuracy.csv")
    is_rare = per_class["class_id"].isin(rare)
    return {
        "rare_top1": float(per_class[is_rare]["correct"].sum() / per_class[is_rare]["n"].sum()),
        "common_top1": float(per_class[~is_rare]["correct"].sum() / per_class[~is_rare]["n"].sum()),
    }


def evaluate(ckpt: Path, data: Path, out: Path) -> dict:
    """``carspotter evaluate CKPT --data DATA --out OUT --json``, and the command as typed."""
    result = carspotter("evaluate", str(ckpt), "--data", str(data), "--out", str(out))
    return {**result, "command": f"carspotter evaluate {ckpt} --data {data} --out {out} --json", "report": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="raw dataset (any layout prepare reads) or prepared")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--new", type=int, default=10, help="classes held out of training and enrolled")
    ap.add_argument("--seed", type=int, default=0, help="draws the new classes, the rare classes and the photos")
    ap.add_argument("--parts", default="enrol,imbalance", help="comma-separated: enrol, imbalance")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (each with cores/jobs threads)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "own_streets")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "own_streets_odd98.json")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "command": command_line(),
        "machine": machine(),
        "load_before": load(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "image_size": args.size,
        "epochs": args.epochs,
        "jobs": args.jobs,
    }
    data = prepared(args.data, wd)
    ds = load_prepared(data)
    rng = np.random.default_rng(args.seed)
    nameable = [i for i, name in enumerate(ds.classes) if "/" not in name and not name.startswith(".")]
    new_ids = sorted(int(i) for i in rng.choice(nameable, args.new, replace=False))
    old_ids = [i for i in range(ds.num_classes) if i not in new_ids]
    rare = sorted(int(i) for i in rng.choice(ds.num_classes, ds.num_classes // 2, replace=False))
    old = subset(data, wd / f"old{len(old_ids)}", classes=old_ids)
    new = subset(data, wd / f"new{len(new_ids)}", classes=new_ids)
    unbalanced = subset(data, wd / "unbalanced", photo_fraction=dict.fromkeys(rare, 0.25), seed=args.seed)

    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    recipe = RECIPES["recommended"]
    jobs = {}
    if "enrol" in parts:
        jobs["old"] = (recipe, old, [])
    if "imbalance" in parts:
        jobs.update({f"unbalanced-{mode}": (recipe, unbalanced, [f"data.class_balance={mode}"]) for mode in BALANCE})
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {name: pool.submit(train, name, config, folder, args.size, args.epochs, wd, extra, threads)
                   for name, (config, folder, extra) in jobs.items()}  # fmt: skip
        runs = {name: f.result() for name, f in futures.items()}

    if "enrol" in parts:
        record["enrol"] = enrol_part(args, wd, ds, data, old, new, new_ids, runs["old"], recipe)
    if "imbalance" in parts:
        counts = load_prepared(unbalanced).train["class_id"].value_counts()
        record["imbalance"] = {
            "rare_classes": [ds.classes[i] for i in rare],
            "train_photos": int(counts.sum()),
            "largest_smallest": [int(counts.max()), int(counts.min())],
            "runs": {},
        }
        for mode in BALANCE:
            summary = runs[f"unbalanced-{mode}"]
            run_dir = Path(summary["run_dir"])
            scored = evaluate(run_dir / "best.ckpt", unbalanced, wd / f"eval-unbalanced-{mode}")
            record["imbalance"]["runs"][mode] = {
                "test_top1": scored["top1"],
                "balanced_top1": scored["balanced_top1"],
                **rare_and_common(Path(scored["report"]), set(rare)),
                "minutes": summary["minutes"],
                "train_command": summary["command"],
                "evaluate_command": scored["command"],
                "load_after_run": summary["load_after_run"],
            }
    record["load_after"] = load()
    if args.results.is_file():  # a part not re-run this time keeps its figures (and says when they were measured)
        kept = json.loads(args.results.read_text())
        for part in ("enrol", "imbalance"):
            if part not in record and part in kept:
                record[part] = {**kept[part], "measured": kept[part].get("measured", kept.get("date"))}
    for part in ("enrol", "imbalance"):
        if part in record and part in parts:
            record[part]["measured"] = record["date"]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    print_tables(record)
    print(f"results: {args.results}")


def enrol_part(args, wd: Path, ds, data: Path, old: Path, new: Path, new_ids, base: dict, recipe: Path) -> dict:
    base_ckpt = Path(base["run_dir"]) / "best.ckpt"
    before = evaluate(base_ckpt, old, wd / "eval-old-before")
    out: dict[str, object] = {
        "new_classes": [ds.classes[i] for i in new_ids],
        "num_classes": ds.num_classes,
        "chance": 1 / ds.num_classes,
        "base": {"train_command": base["command"], "minutes": base["minutes"], "old_top1": before["top1"],
                 "evaluate_command": before["command"], "load_after_run": base["load_after_run"]},
        "enrolled": {},
    }  # fmt: skip
    for shots in SHOTS:
        photos = enrolment_photos(ds, new_ids, shots, args.seed, wd / f"enrol-{shots}")
        ckpt = wd / f"enrolled-{shots}.ckpt"
        command = ["enroll", str(base_ckpt), str(photos), "-o", str(ckpt), "--overwrite"]
        started = time.perf_counter()
        done = subprocess.run([*CARSPOTTER, *command], check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        out["enrolled"][str(shots)] = {
            "enroll_said": done.stdout.strip().splitlines()[-1],  # the old classes' top-1 on the reference photos
            "old_top1": evaluate(ckpt, old, wd / f"eval-enrolled-{shots}-old")["top1"],
            "new_top1": evaluate(ckpt, new, wd / f"eval-enrolled-{shots}-new")["top1"],
            "seconds": round(seconds, 1),
            "command": "carspotter " + " ".join(command),
        }
    model = load_config(recipe).model
    extra = [f"model.pretrained={base_ckpt}", f"model.name={model.name}", f"model.args={json.dumps(model.args)}",
             f"scheduler.params.T_max={args.finetune_epochs}", "logging.loggers=[csv]"]  # fmt: skip
    tuned = train("finetune", FINETUNE, data, args.size, args.finetune_epochs, wd, extra, None)
    tuned_ckpt = Path(tuned["run_dir"]) / "best.ckpt"
    out["finetune"] = {
        "old_top1": evaluate(tuned_ckpt, old, wd / "eval-finetune-old")["top1"],
        "new_top1": evaluate(tuned_ckpt, new, wd / "eval-finetune-new")["top1"],
        "minutes": tuned["minutes"],
        "epochs": args.finetune_epochs,
        "command": tuned["command"],
        "load_after_run": tuned["load_after_run"],
    }
    return out


def print_tables(record: dict) -> None:
    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; load {record['load_before']} → "
          f"{record['load_after']}; {record['image_size']} px, {record['epochs']} epochs")  # fmt: skip
    enrol = record.get("enrol")
    if enrol:
        n_new = len(enrol["new_classes"])
        print(f"\nenrolling {n_new} classes into a {enrol['num_classes'] - n_new}-class model "
              f"(chance {enrol['chance']:.1%}); old classes before: {enrol['base']['old_top1']:.1%}")  # fmt: skip
        print(f"{'':<24} {'new classes':>11} {'old classes':>11} {'time':>10}")
        for shots, e in enrol["enrolled"].items():
            print(f"{'enrol, ' + shots + ' photo(s) each':<24} {e['new_top1']:>11.1%} {e['old_top1']:>11.1%} "
                  f"{e['seconds']:>9.0f}s")  # fmt: skip
        f = enrol["finetune"]
        print(f"{'fine-tune, ' + str(f['epochs']) + ' epochs':<24} {f['new_top1']:>11.1%} {f['old_top1']:>11.1%} "
              f"{f['minutes']:>7} min")  # fmt: skip
    imbalance = record.get("imbalance")
    if imbalance:
        big, small = imbalance["largest_smallest"]
        print(f"\nunbalanced: {imbalance['train_photos']} training photos, {big} to {small} per class")
        print(f"{'class_balance':<14} {'top-1':>7} {'balanced':>9} {'rare':>7} {'common':>7} {'minutes':>8}")
        for mode, r in imbalance["runs"].items():
            print(f"{mode:<14} {r['test_top1']:>7.1%} {r['balanced_top1']:>9.1%} {r['rare_top1']:>7.1%} "
                  f"{r['common_top1']:>7.1%} {r['minutes']:>8}")  # fmt: skip
        tops = [r["balanced_top1"] for r in imbalance["runs"].values()]
        print(f"balanced top-1 spread: {max(tops) - min(tops):.1%} (sd {statistics.pstdev(tops):.1%})")


if __name__ == "__main__":
    main()
