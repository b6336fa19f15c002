"""Real-photo accuracy of the thesis recipe and the recommended recipe, trained the way a user trains them.

    .venv/bin/python benchmarks/real_accuracy.py --data ../shared/stanford_cars/odd98 --size 96 --epochs 60 --json

Each recipe is trained by ``carspotter train -c <recipe> --set data.path=.. --set data.image_size=.. --set
trainer.max_epochs=..`` (nothing else changed but where the run folder goes), one after the other, on the same
prepared data, each carving its own validation split from train with seed 42 (the thesis's 10%, which selects its
checkpoint; the recommended 5%, one photo per class, which only reports), and the test split is scored once with
the checkpoint each recipe selects. ``--data`` is a raw dataset (any layout ``prepare`` reads; it
is prepared into ``--workdir`` first) or a prepared folder. ``--bf16`` adds the recommended recipe in bf16 autocast
(the measurement behind ``precision: auto``). The machine, its load before and after, and every figure go to
``<workdir>/real_accuracy.json``; ``--jobs 2`` trains two recipes at once, one thread each (their minutes are then
measured side by side). ``--seeds 42,43,44`` trains every recipe once per seed (``--set trainer.seed=S``: the
validation split, the order, augmentation and initialisation all change), since one run at a small budget moves by
about two points; each recipe's figure is then the mean over its seeds, and the table shows every seed, the mean and
the standard deviation. With ``--json`` the last line printed is
``{"size", "epochs", "thesis_top1", "recommended_top1", "minutes"}``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "thesis": ROOT / "configs" / "thesis_c50.yaml",
    "recommended": ROOT / "configs" / "stanford_ghostnet.yaml",
}
CARSPOTTER = [sys.executable, "-m", "carspotter.cli"]


def machine() -> dict[str, object]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def command_line() -> str:
    """This benchmark's command line, each argument quoted as a shell reads it (paths as they were given)."""
    return shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepared(data: Path, workdir: Path) -> Path:
    if (data / "manifest.json").is_file():
        return data
    out = workdir / "prepared"
    subprocess.run([*CARSPOTTER, "prepare", str(data), str(out)], check=True)
    return out


def same_config(run_dir: Path, config: Path, sets: list[str]) -> bool:
    """Whether the run in ``run_dir`` was trained with what ``config`` and ``sets`` resolve to now (its data path
    resolved, its folder aside): the same command with an edited recipe file is a different run, and a command that
    spells the same settings otherwise (``--set loss.distillation=null`` where the recipe had none) is the same run."""
    from carspotter.config import load_config
    from carspotter.errors import UserError

    def resolved(path: Path, overrides: list[str]) -> tuple[Path, dict]:
        cfg = load_config(path, overrides).to_dict()
        del cfg["output"]
        return Path(cfg["data"].pop("path")).resolve(), cfg

    try:
        return resolved(run_dir / "config.yaml", []) == resolved(config, sets)
    except (OSError, UserError):  # a missing, unreadable or outdated config: train again
        return False


def train(
    name: str, config: Path, data: Path, size: int, epochs: int, workdir: Path, extra: list[str], threads: int | None
) -> dict:
    """One ``carspotter train`` run; its progress goes to ``<workdir>/<name>.log``, its summary is returned.

    A finished run is recorded in ``<workdir>/<name>.done.json``; while its run folder is there, the same name again on
    the same data, with the recipe and sets resolving as the run's own ``config.yaml`` does, is not retrained: its
    summary is returned (``"reused": true``), so a benchmark can be built over several sittings and an interrupted one
    re-run."""
    runs = workdir / "runs"
    sets = [f"data.path={data}", f"data.image_size={size}", f"trainer.max_epochs={epochs}",
            f"output.runs_dir={runs}", *extra]  # fmt: skip
    command = ["carspotter", "train", "-c", str(config), *[a for s in sets for a in ("--set", s)]]
    done_file = workdir / f"{name}.done.json"
    if done_file.is_file():
        done = json.loads(done_file.read_text())
        summary_file = Path(done["run_dir"]) / "summary.json"
        if summary_file.is_file() and same_config(Path(done["run_dir"]), config, sets):
            summary = {**json.loads(summary_file.read_text()), **done["added"], "reused": True}
            print(f"[{time.strftime('%H:%M:%S')}] {name}: finished before, reused ({done['run_dir']})", flush=True)
            return summary
    run_name = f"{name}-{size}px-{epochs}ep-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [*CARSPOTTER, *command[1:], "--set", f"output.run_name={run_name}"]
    log_path = workdir / f"{name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: training ({log_path})", flush=True)
    started = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    summary_file = runs / run_name / "summary.json"
    if done.returncode != 0 or not summary_file.is_file():  # failed, or stopped (SIGTERM ends Lightning with 0)
        sys.exit(f"{name}: carspotter train did not finish (exit {done.returncode}); see {log_path}")
    added = {
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "command": "carspotter " + " ".join(cmd[len(CARSPOTTER) :]),
        "threads": threads,
        "load_after_run": load(),
    }
    done_file.write_text(json.dumps({"command": command, "run_dir": str(runs / run_name), "added": added}, indent=2))
    summary = {**json.loads(summary_file.read_text()), **added}
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: test top-1 {summary['test_top1']:.2%}"
        f" (top-5 {summary['test_top5']:.2%}, n={summary['test_n']}),"
        f" val top-1 {summary['val_top1']:.2%} at epoch {summary['best_epoch']}"
        f" ({summary['selected_by']}), {summary['minutes']} min",
        flush=True,
    )
    return summary


def teacher_set(teachers: dict[str, str], job: str) -> list[str]:
    """The ``--set`` naming the distillation teacher of the run ``job`` (``recipe@seed``) from ``--teacher``; none
    when its recipe has no teacher given."""
    recipe, _, seed = job.partition("@")
    if recipe not in teachers:
        return []
    pattern = teachers[recipe].replace("{seed}", seed or "*")
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        sys.exit(f"--teacher {recipe}={teachers[recipe]}: {pattern} matches {len(found)} files, not one")
    return [f"loss.distillation.teacher={Path(found[0]).resolve()}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="raw dataset (any layout prepare reads) or prepared folder"
    )
    ap.add_argument("--size", type=int, default=96, help="data.image_size")
    ap.add_argument("--epochs", type=int, default=60, help="trainer.max_epochs")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "real_accuracy")
    ap.add_argument("--recipes", default="thesis,recommended", help="comma-separated: thesis, recommended")
    ap.add_argument("--recipe", action="append", default=[], metavar="NAME=CONFIG",
                    help="another recipe (a config file), trained besides --recipes ('': only these)")  # fmt: skip
    ap.add_argument("--bf16", action="store_true", help="also the recommended recipe with trainer.precision=bf16-mixed")
    ap.add_argument("--jobs", type=int, default=1, help="recipes trained at once (each with cores/jobs threads)")
    ap.add_argument(
        "--seeds", default="", help="comma-separated trainer.seed values, one run each (default: the configs' own seed)"
    )
    ap.add_argument(
        "--teacher", action="append", default=[], metavar="RECIPE=CHECKPOINT",
        help="RECIPE's runs distil from CHECKPOINT (loss.distillation.teacher; {seed} is the run's seed, a glob must "
        "match one file): a teacher trained before, e.g. the recipe's own run at that seed, instead of `self`",
    )
    ap.add_argument("--json", action="store_true", help="print the one-line JSON result last")
    ap.add_argument("--results", type=Path, help="also write the record (machine, date, command, runs) to this file")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, object] = {
        "command": command_line(),
        "machine": machine(),
        "load_before": load(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    data = prepared(args.data, args.workdir)
    recipes = {**RECIPES, **dict((k, Path(v)) for k, _, v in (r.partition("=") for r in args.recipe))}
    names = [n for n in args.recipes.split(",") if n] + [k for k, _, _ in (r.partition("=") for r in args.recipe)]
    recipe_jobs = [(name, recipes.get(name), []) for name in dict.fromkeys(names)]  # each once, in the order given
    if args.bf16:
        recipe_jobs.append(("recommended_bf16", RECIPES["recommended"], ["trainer.precision=bf16-mixed"]))
    for name, config, _ in recipe_jobs:
        if config is None:
            sys.exit(f"unknown recipe {name!r}; choose from {', '.join(recipes)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    jobs = recipe_jobs
    if seeds:  # seed by seed, so that --jobs 2 trains the recipes of one seed side by side
        jobs = [
            (f"{n}@{seed}", config, [*extra, f"trainer.seed={seed}"]) for seed in seeds for n, config, extra in jobs
        ]
    teachers = dict(t.partition("=")[::2] for t in args.teacher)
    jobs = [(n, config, [*extra, *teacher_set(teachers, n)]) for n, config, extra in jobs]
    # --jobs N: N runs at once, each with cores/N threads (on a small CPU two 1-thread runs beat one 2-thread run).
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    record["jobs"] = args.jobs
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            name: pool.submit(train, name, config, data, args.size, args.epochs, args.workdir, extra, threads)
            for name, config, extra in jobs
        }
        runs = {name: f.result() for name, f in futures.items()}
    record["load_after"] = load()
    record["runs"] = runs
    by_recipe: dict[str, list[float]] = {}
    for name, summary in runs.items():
        by_recipe.setdefault(name.split("@")[0], []).append(summary["test_top1"])
    record["test_top1_by_recipe"] = by_recipe
    result = {"size": args.size, "epochs": args.epochs}
    result.update({f"{name}_top1": round(statistics.fmean(v), 4) for name, v in by_recipe.items()})
    result["minutes"] = round((time.perf_counter() - started) / 60, 1)
    record["result"] = result
    (args.workdir / "real_accuracy.json").write_text(json.dumps(record, indent=2))
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(record, indent=2) + "\n")

    print(f"\n{record['machine']['cpu']}, {record['machine']['cores']} cores; load {record['load_before']} → "
          f"{record['load_after']}")  # fmt: skip
    print(f"{'recipe':<22} {'test top-1':>10} {'top-5':>7} {'val top-1':>9} {'epoch':>5} {'minutes':>7}")
    for name, s in runs.items():
        print(f"{name:<22} {s['test_top1']:>10.2%} {s['test_top5']:>7.2%} {s['val_top1']:>9.2%} "
              f"{s['best_epoch']:>5} {s['minutes']:>7}")  # fmt: skip
    for name, values in by_recipe.items():
        if len(values) > 1:
            print(
                f"{name:<22} mean {statistics.fmean(values):.2%} ± {statistics.stdev(values):.2%} (sd) over "
                f"{len(values)} seeds"
            )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
