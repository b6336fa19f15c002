"""Which small network to ship for cars: the zoo trained on real photos at one budget, by test top-1, int8 top-1,
size, compute and CPU latency.

    .venv/bin/python benchmarks/zoo_real.py --data ../shared/stanford_cars/odd98 [--models a,b] [--seeds 42] [--jobs 2]

Each row is one architecture trained through ``carspotter train -c configs/stanford_ghostnet.yaml``, changed by
``--set model.name=... --set model.args=...`` only (plus a family's documented setting, `FAMILY_SETTINGS`, when the
recipe as it is fails that family; the ``setting`` column says so), at ``--size`` px for ``--epochs`` epochs
(96 / 60), seed 42, in the recipe's single stage (``loss.distillation=null``: its own-teacher stage would train every
network twice, and adds to any of them). Then, for each row:

- its test top-1 and top-5 (fp32), from the run's summary: the test split scored once, at the end;
- parameters and MACs at the training size and at 227 px (`carspotter.evaluation.profile.count_macs`);
- ``carspotter export`` to ONNX fp32 and to int8 (``--int8 --calib`` on the training split, ``--min-agreement 0``:
  the int8 file is kept and its accuracy reported whatever it is), both timed at batch 1 on one thread in one
  ``carspotter bench-infer`` run (the same harness for every row), and the int8 file's test top-1 scored in its own
  runtime by ``carspotter evaluate``;
- the training minutes, the machine and the load (``os.getloadavg``) after the run;
- the best epoch's training top-1 (``train_top1``, on augmented photos, in the JSON): a row trained with the recipe as
  it is that fits under `FIT_FLOOR` of its own training photos names its family in ``needs_screen``.

Rows train side by side (``--jobs``); their exports are timed afterwards, one row at a time, with nothing else
running.

It resumes: a row measured before with the same recipe (its sha256), size, epochs, seed and setting is kept
(``<workdir>/rows/<row>.json``, seeded from the committed results JSON on a machine without the workdir), a row whose
run finished is not retrained (``real_accuracy.train`` reuses it), so the table can be built over several sittings
and ``--models`` picks rows; ``--remeasure`` exports, times and scores the picked rows again from their finished runs
(after timings taken while something else ran; it never trains a row). Every sitting rewrites, from all rows
measured so far, ``--csv`` (default ``benchmarks/results/zoo_odd98.csv``, the columns in `COLUMNS`, top-1 as
fractions), a JSON beside it with the machine, the dates and every command, and ``--plot`` (default
``benchmarks/results/zoo_odd98.png``: test top-1 against fp32 latency on a log scale, marker area by parameters, the
Pareto frontier drawn, int8 beside fp32).
A row records the sha256 of the recipe it was trained with (as it resolves, comments aside): re-run the rows when
the recipe changes.

Leaders get more seeds: ``--models A,B,C --seeds 43,44`` adds those rows (one row per seed in the CSV); the JSON's
``leaders`` names the three best models by mean test top-1 and the seeds of 42, 43, 44 each still lacks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from real_accuracy import CARSPOTTER, RECIPES, ROOT, command_line, load, machine, prepared, train

from carspotter.config import load_config
from carspotter.evaluation.profile import model_family

ROWS = [
    "ghostnet_thesis", "ghostnet_050", "ghostnet_100", "ghostnet_130", "ghostnetv2_100", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "mobilenetv2_100", "efficientnet_b0", "shufflenetv2_100", "squeezenet1_1",
    "squeezenext23_100", "hardnet39ds", "timm/resnet18",
]  # fmt: skip
# A family's setting where the recipe as it is fails it (validation near chance), chosen by one short screen on
# photos held out of train (never test): of the variants `size_screen.py`'s rule adopts over the recipe, the best on
# held-out photos. Each screen's command and every figure are in benchmarks/results/zoo_screen_<family>.json
# (rendered on docs/architectures.md); tests/test_zoo_benchmark.py checks that these settings are what they chose.
# The recipe fails a family when that family's row, trained with the recipe as it is, fits under this fraction of its
# own training photos (the best epoch's training top-1, augmented): it underfits, and its test top-1 says little about
# the network. Such a family gets its screen (`needs_screen`, in the results JSON and on docs/architectures.md).
FIT_FLOOR = 0.15
# The leaders (the best `LEADERS` models by mean test top-1) are trained with every seed in `LEADER_SEEDS`; the
# results JSON names them and what each still lacks (`leaders`).
LEADERS = 3
LEADER_SEEDS = (42, 43, 44)
SCREENS = ROOT / "benchmarks" / "results"  # where the family screens' zoo_screen_<family>.json are
FAMILY_SETTINGS: dict[str, dict[str, object]] = {
    "squeezenet": {"optimizer.params.lr": 0.0001, "optimizer.params.weight_decay": 0.05},
    "ghostnetv2": {"optimizer.params.lr": 0.0003, "optimizer.params.weight_decay": 0.05},
    "efficientnet": {"optimizer.params.weight_decay": 0.05},
}
COLUMNS = ["model", "top1", "top5", "int8_top1", "params_m", "macs_m", "macs_m_227", "latency_ms", "int8_latency_ms",
           "train_minutes", "image_size", "epochs", "seed", "setting", "config_sha256"]  # fmt: skip


def dataset_name(prepared_folder: Path) -> str:
    """The raw dataset's folder name (``odd98``) that a prepared folder was made from, else the folder's own."""
    try:
        return Path(json.loads((prepared_folder / "manifest.json").read_text())["source"]["raw"]).name
    except (OSError, KeyError, TypeError, ValueError):
        return prepared_folder.resolve().name


# Every row trains the recipe's single stage: its `loss.distillation: {teacher: self}` would train each network twice
# (its own run, then again from it); distillation adds to any architecture, and the zoo compares architectures.
SINGLE_STAGE = ["loss.distillation=null"]


def row_name(model: str, seed: int | str) -> str:
    """A row's name in the workdir (its log, run folder, exports and ``rows/<name>.json``): ``timm-resnet18@43``."""
    return f"{model.replace('/', '-')}@{seed}"


def config_sha256(path: Path, overrides: list[str] | None = None) -> str:
    """The hash of the recipe as it resolves (every key and default), so that editing a comment keeps the rows."""
    resolved = json.dumps(load_config(path, overrides).to_dict(), sort_keys=True)
    return hashlib.sha256(resolved.encode()).hexdigest()


def model_args(name: str) -> dict[str, object]:
    """The recipe's own arguments for its model; ``drop_rate`` of the recipe for every other one."""
    recipe = load_config(RECIPES["recommended"]).model
    return dict(recipe.args) if name == recipe.name else {"drop_rate": recipe.args.get("drop_rate", 0.2)}


def size_and_compute(name: str, args: dict[str, object], classes: int, size: int) -> dict[str, float]:
    import torch

    from carspotter.evaluation.profile import count_macs
    from carspotter.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, **args).eval()
    return {
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "macs_m": round(count_macs(model, size) / 1e6, 1),
        "macs_m_227": round(count_macs(model, 227) / 1e6, 1),
    }


def cli(*args: str, json_out: bool = False) -> dict | None:
    done = subprocess.run([*CARSPOTTER, *args, *(["--json"] if json_out else [])], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"carspotter {' '.join(args)} failed:\n{done.stderr[-1500:]}")
    if json_out:  # bench-infer prints indented JSON, evaluate one line last
        text = done.stdout.strip()
        return json.loads(text[text.index("{"):] if text.startswith("{") else text.splitlines()[-1])
    return None


def measure(row: str, summary: dict, data: Path, wd: Path, size: int, classes: int) -> dict:
    """Everything after training: exports, their latency, the int8 accuracy, size and compute."""
    run_dir = Path(summary["run_dir"])
    ckpt = run_dir / "best.ckpt"
    exports = wd / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    fp32, int8 = exports / f"{row}.onnx", exports / f"{row}-int8.onnx"
    commands = {
        "export": ["export", str(ckpt), "--format", "onnx", "--data", str(data), "-o", str(fp32), "--overwrite"],
        "export_int8": ["export", str(ckpt), "--format", "onnx", "--int8", "--calib", str(data), "--min-agreement",
                        "0", "--data", str(data), "-o", str(int8), "--overwrite"],
        "bench": ["bench-infer", str(fp32), str(int8), "--threads", "1", "--repeats", "200"],
        "evaluate_int8": ["evaluate", str(int8), "--data", str(data), "--out", str(wd / "eval" / row)],
    }  # fmt: skip
    cli(*commands["export"])
    cli(*commands["export_int8"])
    bench = cli(*commands["bench"], json_out=True)
    latency = {f["label"]: f["median_ms"] for f in bench["formats"]}
    int8_eval = cli(*commands["evaluate_int8"], json_out=True)
    name, args = summary["model"]["name"], summary["model"]["args"]
    return {
        "model": name,
        "top1": summary["test_top1"],
        "top5": summary["test_top5"],
        "int8_top1": int8_eval["top1"],
        **size_and_compute(name, args, classes, size),
        "latency_ms": round(latency["onnx-fp32"], 3),
        "int8_latency_ms": round(latency["onnx-int8"], 3),
        "train_minutes": summary["minutes"],
        "train_top1": summary["best_train_top1"],
        "commands": {"train": summary["command"],
                     **{k: shlex.join(["carspotter", *v, *(["--json"] if k in ("bench", "evaluate_int8") else [])])
                        for k, v in commands.items()}},  # fmt: skip
        "load_after_run": summary["load_after_run"],
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }


def retime(rows: list[dict], data: Path, wd: Path, size: int, rounds: int) -> dict:
    """Every model's fp32 and int8 ONNX latency from one sitting: each architecture is trained for one batch (its
    latency is its graph's, not its weights'), exported as its rows are (fp32, and int8 calibrated on the training
    split), and all the files are timed together by ``carspotter bench-infer``, ``rounds`` times in a shuffled
    order, nothing else running; a file's latency is the median of its rounds' medians. Latencies timed in different
    sittings are not comparable on a shared machine (one file's rounds, minutes apart, differ: ``round_spread``): the
    frontier compares these. Trained rows' own exports still in ``<wd>/exports`` are timed in the same rounds, as a
    check that the weights do not change the latency (``trained_over_untrained``)."""
    import random

    load_before = load()
    out = wd / "retime"
    out.mkdir(parents=True, exist_ok=True)
    formats = {"fp32": "", "int8": "-int8"}
    models = sorted({r["model"] for r in rows})
    paths: dict[str, Path] = {}  # "model:format" (its untrained architecture) or "row:format" (a trained export)
    commands: dict[str, list[str]] = {}
    for name in models:
        row = row_name(name, "untrained")
        sets = [f"model.name={name}", f"model.args={json.dumps(model_args(name))}", "logging.loggers=[csv]",
                "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", *SINGLE_STAGE]  # fmt: skip
        summary = train(row, RECIPES["recommended"], data, size, 1, out, sets, None)
        ckpt = Path(summary["run_dir"]) / "best.ckpt"
        fp32, int8 = out / f"{row}.onnx", out / f"{row}-int8.onnx"
        if not int8.is_file():
            cli("export", str(ckpt), "--format", "onnx", "--data", str(data), "-o", str(fp32), "--overwrite")
            cli("export", str(ckpt), "--format", "onnx", "--int8", "--calib", str(data), "--min-agreement", "0",
                "--data", str(data), "-o", str(int8), "--overwrite")  # fmt: skip
        paths[f"{name}:fp32"], paths[f"{name}:int8"] = fp32, int8
        commands[name] = [summary["command"]]
    beside: dict[str, str] = {}  # a trained row's own export still on disk -> its untrained architecture's
    for r in rows:
        for fmt, suffix in formats.items():
            export = wd / "exports" / f"{row_name(r['model'], r['seed'])}{suffix}.onnx"
            if export.is_file():
                key = f"{row_name(r['model'], r['seed'])}:{fmt}"
                paths[key], beside[key] = export, f"{r['model']}:{fmt}"
    medians: dict[str, list[float]] = {k: [] for k in paths}
    rng = random.Random(0)
    for i in range(rounds):
        order = list(paths)
        rng.shuffle(order)
        bench = cli("bench-infer", *(str(paths[k]) for k in order), "--threads", "1", "--repeats", "200",
                    json_out=True)  # fmt: skip
        for key, f in zip(order, bench["formats"], strict=True):
            medians[key].append(f["median_ms"])
        print(f"[{time.strftime('%H:%M:%S')}] retime: round {i + 1}/{rounds} of {len(paths)} files", flush=True)
    latency = {k: statistics.median(v) for k, v in medians.items()}
    return {
        "command": command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_before": load_before,
        "load_after": load(),
        "rounds": rounds,
        "latency_ms": {m: {fmt: round(latency[f"{m}:{fmt}"], 3) for fmt in formats} for m in models},
        "round_spread": {k: [round(x, 3) for x in v] for k, v in medians.items() if k not in beside},
        "trained_over_untrained": {k: round(latency[k] / latency[v], 3) for k, v in beside.items()},
        "untrained_runs": commands,
    }


def pareto(
    points: list[tuple[float, float]], margin: Callable[[float], float] | None = None, floor: float = -math.inf
) -> list[int]:
    """Indices of the points no other point beats on both (lower latency, higher top-1), by latency. With a
    ``margin`` (of the best top-1 so far, starting at ``floor``), a slower point counts only when it beats every
    faster one, and the floor, by more."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = floor
    for i in order:
        if points[i][1] > best + (margin(best) if margin and best > -math.inf else 0.0):
            front.append(i)
            best = points[i][1]
    return front


def model_means(rows: list[dict]) -> dict[str, dict[str, float]]:
    """One point per model: the mean over its seeds of every figure the choice and the plot use, and the seed count."""
    seeded: dict[str, list[dict]] = {}
    for r in rows:
        seeded.setdefault(r["model"], []).append(r)
    keys = ("top1", "int8_top1", "latency_ms", "int8_latency_ms", "params_m")
    return {m: {**{k: statistics.fmean(r[k] for r in rs) for k in keys}, "seeds": len(rs)} for m, rs in seeded.items()}


def choice(rows: list[dict], test_photos: int, classes: int) -> list[dict]:
    """What to ship for a latency budget: the Pareto frontier over every (model, format) pair, fp32 and int8 ONNX
    alike (mean over seeds), fastest first. A slower deployment is listed only when its test top-1 is higher than every
    faster one's by more than one standard error of the test split (sqrt(p(1 - p) / n) at the best faster top-1): a
    gain inside the noise does not buy latency; the fastest must beat chance (1 / classes) so. For a budget between
    two entries, the faster one is the answer."""
    points = [
        {"model": m, "format": fmt, "latency_ms": round(f[f"{prefix}latency_ms"], 3),
         "top1": round(f[f"{prefix}top1"], 4), "seeds": f["seeds"]}
        for m, f in model_means(rows).items() for fmt, prefix in (("fp32", ""), ("int8", "int8_"))
    ]  # fmt: skip

    def standard_error(top1: float) -> float:
        return math.sqrt(top1 * (1 - top1) / test_photos)

    front = pareto([(p["latency_ms"], p["top1"]) for p in points], standard_error, floor=1 / classes)
    return [points[i] for i in front]


def setting_label(model: str) -> str:
    """The ``setting`` column of a row of ``model`` trained now: its family's setting, else ``recipe``."""
    return "; ".join(f"{k}={v}" for k, v in FAMILY_SETTINGS.get(model_family(model), {}).items()) or "recipe"


def stale_settings(rows: list[dict]) -> list[str]:
    """The models with a row trained before their family's screen chose a setting: still in the table, to retrain."""
    return sorted({r["model"] for r in rows if r["setting"] != setting_label(r["model"])})


def screened_families(results: Path = SCREENS) -> set[str]:
    """The families that had their screen (a ``zoo_screen_<family>.json`` in ``results``), whatever it adopted."""
    families = set()
    for path in results.glob("zoo_screen_*.json"):
        first_variant = next(iter(json.loads(path.read_text())["variants"].values()))
        families.add(model_family(dict(s.split("=", 1) for s in first_variant)["model.name"]))
    return families


def needs_screen(rows: list[dict], screened: set[str]) -> list[str]:
    """The models whose rows, trained with the recipe as it is, fit under `FIT_FLOOR` of their own training photos
    and whose family has not had its screen (``screened``): the recipe fails them, and their family gets one. A
    family whose screen adopted nothing keeps its recipe row."""
    return sorted({r["model"] for r in rows if r["setting"] == "recipe" and r["train_top1"] < FIT_FLOOR
                   and model_family(r["model"]) not in screened})  # fmt: skip


def leaders(rows: list[dict]) -> dict[str, list[int]]:
    """The leaders (the `LEADERS` best models by mean test top-1) and the seeds of `LEADER_SEEDS` each still lacks;
    a leader with all of them is listed with none, so the JSON says who the leaders are."""
    means = model_means(rows)
    best = sorted(means, key=lambda m: -means[m]["top1"])[:LEADERS]
    return {m: sorted(set(LEADER_SEEDS) - {r["seed"] for r in rows if r["model"] == m}) for m in best}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = model_means(rows)
    models = sorted(mean)
    fig, ax = plt.subplots(figsize=(10, 6.5))
    xs = [mean[m]["latency_ms"] for m in models]
    ys = [100 * mean[m]["top1"] for m in models]
    sizes = [30 + 25 * mean[m]["params_m"] for m in models]
    ax.scatter(xs, ys, s=sizes, alpha=0.55, color="tab:blue", label="fp32 ONNX (area: parameters)")
    ax.scatter([mean[m]["int8_latency_ms"] for m in models], [100 * mean[m]["int8_top1"] for m in models],
               s=sizes, alpha=0.35, color="tab:orange", marker="s", label="int8 ONNX")  # fmt: skip
    for m in models:
        ax.plot([mean[m]["latency_ms"], mean[m]["int8_latency_ms"]], [100 * mean[m]["top1"],
                100 * mean[m]["int8_top1"]], color="grey", lw=0.6, alpha=0.6)  # fmt: skip
        ax.annotate(m, (mean[m]["latency_ms"], 100 * mean[m]["top1"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    front = pareto(list(zip(xs, ys, strict=True)))
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:blue", lw=1.2, ls="--",
            label="Pareto frontier (fp32)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 CPU latency, one thread (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[dict], csv_path: Path, record: dict, plot_path: Path) -> None:
    import csv

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (-r["top1"], r["seed"])))
    csv_path.with_suffix(".json").write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")
    cpu = record["machine"]["cpu"]
    plot(rows, plot_path, f"{record['dataset']} ({record['classes']} classes), {record['image_size']} px, "
                          f"{record['epochs']} epochs; latency on {cpu}, 1 thread")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="raw dataset (any layout prepare reads) or prepared")
    ap.add_argument("--models", default=",".join(ROWS), help="comma-separated rows (registry names)")
    ap.add_argument("--seeds", default="42", help="comma-separated trainer.seed values, one row each")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--jobs", type=int, default=1, help="rows trained at once (each with cores/jobs threads)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "zoo_real")
    ap.add_argument("--remeasure", action="store_true",
                    help="export, time and score the chosen rows again (their finished runs are reused, not retrained):"
                         " after timings taken while something else ran")  # fmt: skip
    ap.add_argument("--retime", type=int, default=0, metavar="ROUNDS",
                    help="time every model in the table again in one sitting, ROUNDS rounds of one bench-infer run over"
                         " all their exports (an architecture trained for one batch each): the latencies the table "
                         "and the frontier compare")  # fmt: skip
    ap.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "zoo_odd98.csv")
    ap.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "zoo_odd98.png")
    args = ap.parse_args()
    wd = args.workdir
    (wd / "rows").mkdir(parents=True, exist_ok=True)
    load_before = load()
    data = prepared(args.data, wd)
    from carspotter.data.prepared import load_prepared

    dataset = load_prepared(data)
    classes, test_photos = dataset.num_classes, len(dataset.test)
    recipe_hash = config_sha256(RECIPES["recommended"], SINGLE_STAGE)
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    jobs = []
    for name in models:
        for seed in seeds:
            row = row_name(name, seed)
            setting = FAMILY_SETTINGS.get(model_family(name), {})
            sets = [f"model.name={name}", f"model.args={json.dumps(model_args(name))}", f"trainer.seed={seed}",
                    "logging.loggers=[csv]", *SINGLE_STAGE,
                    *(f"{k}={json.dumps(v)}" for k, v in setting.items())]  # fmt: skip
            jobs.append((row, name, seed, sets, setting_label(name)))
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

    # Rows of an earlier sitting, also from the committed results file when this machine has no workdir: a row
    # measured with the same recipe, size, epochs, seed and setting is not trained again.
    earlier = args.csv.with_suffix(".json")
    earlier_record = json.loads(earlier.read_text()) if earlier.is_file() else {}
    for kept in earlier_record.get("rows", []):
        row_file = wd / "rows" / f"{row_name(kept['model'], kept['seed'])}.json"
        if not row_file.is_file():
            row_file.write_text(json.dumps(kept, indent=2) + "\n")

    def kept(job: tuple) -> bool:
        row, _, seed, _, setting = job
        row_file = wd / "rows" / f"{row}.json"
        if args.remeasure or not row_file.is_file():
            return False
        old = json.loads(row_file.read_text())
        if (old["config_sha256"], old["image_size"], old["epochs"], old["seed"], old["setting"]) != (
            recipe_hash, args.size, args.epochs, seed, setting
        ):
            return False
        print(f"{row}: measured before ({old['measured']}), kept", flush=True)
        return True

    def measure_row(job: tuple, summary: dict) -> None:
        row, _, seed, _, setting = job
        try:
            measured = measure(row, summary, data, wd, args.size, classes)
        except RuntimeError as exc:  # one row's failure is reported; the others go on
            print(f"{row}: {exc}", file=sys.stderr, flush=True)
            return
        result = {**measured, "image_size": args.size, "epochs": args.epochs, "seed": seed, "setting": setting,
                  "config_sha256": recipe_hash}  # fmt: skip
        (wd / "rows" / f"{row}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {row}: test top-1 {result['top1']:.1%}, int8 {result['int8_top1']:.1%}, "
              f"{result['latency_ms']:.2f} ms fp32, {result['int8_latency_ms']:.2f} ms int8", flush=True)  # fmt: skip

    # Training side by side (--jobs), then every export timed alone, one row after another: a latency taken while
    # another row trains would measure the other row too.
    todo = [job for job in jobs if not kept(job)]
    if args.remeasure:  # it never trains: a row with no finished run is named and left out
        for job in [job for job in todo if not (wd / f"{job[0]}.done.json").is_file()]:
            print(f"{job[0]}: no finished run to measure again, skipped (train it without --remeasure)", flush=True)
            todo.remove(job)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        summaries = list(pool.map(
            lambda job: train(job[0], RECIPES["recommended"], data, args.size, args.epochs, wd, job[3], threads), todo
        ))  # fmt: skip
    for job, summary in zip(todo, summaries, strict=True):
        measure_row(job, summary)
    # The table holds every row measured so far with this recipe, from this sitting or an earlier one.
    rows = [json.loads(p.read_text()) for p in sorted((wd / "rows").glob("*.json"))]
    rows = [r for r in rows if r["config_sha256"] == recipe_hash and r["image_size"] == args.size
            and r["epochs"] == args.epochs]  # fmt: skip
    if not rows:
        sys.exit("no row measured")
    timing = earlier_record.get("timing")
    if args.retime:
        timing = retime(rows, data, wd, args.size, args.retime)
        for r in rows:
            timed = timing["latency_ms"][r["model"]]
            r.update(latency_ms=timed["fp32"], int8_latency_ms=timed["int8"], latency_timed=timing["date"])
            (wd / "rows" / f"{row_name(r['model'], r['seed'])}.json").write_text(json.dumps(r, indent=2) + "\n")
    record = {
        "command": command_line(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_before": load_before,
        "load_after": load(),
        "dataset": dataset_name(data),
        "classes": classes,
        "image_size": args.size,
        "epochs": args.epochs,
        "recipe": str(RECIPES["recommended"].relative_to(ROOT)),
        "family_settings": FAMILY_SETTINGS,
        "test_photos": test_photos,
        "choice": choice(rows, test_photos, classes),
        "fit_floor": FIT_FLOOR,
        "needs_screen": needs_screen(rows, screened_families()),
        "stale_settings": stale_settings(rows),
        "timing": timing,
        "timed_apart": sorted({r["model"] for r in rows if r.get("latency_timed") != (timing or {}).get("date", "-")}),
        "leader_seeds": list(LEADER_SEEDS),
        "leaders": leaders(rows),
    }
    write(rows, args.csv, record, args.plot)
    for r in sorted(rows, key=lambda r: -r["top1"]):
        print(f"{r['model']:<24} seed {r['seed']}  top-1 {r['top1']:.1%}  int8 {r['int8_top1']:.1%}  "
              f"{r['params_m']:.2f} M  {r['macs_m']:.0f} MMACs  {r['latency_ms']:.2f}/{r['int8_latency_ms']:.2f} ms")
    print(f"results: {args.csv}, {args.plot}")


if __name__ == "__main__":
    main()
