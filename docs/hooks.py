"""MkDocs hook: the parts of the documentation that are generated, not written twice.

A page asks for them with a marker on a line of its own:

- ``<!-- include: PATH -->``: a Markdown file of the repository (README.md, benchmarks/README.md), its links mended
  for the site (``docs/X.md`` → ``X.md``; links to other repository files become code spans);
- ``<!-- generated: configuration -->``: every config key with its type, default and description
  (`carspotter.config.reference_markdown`, from the pydantic models);
- ``<!-- generated: commands -->``: every command with its options (`carspotter.cli.reference.markdown`, from the
  typer app);
- ``<!-- results: NAME -->``: a table rendered from ``benchmarks/results/``, the files the benchmark scripts write
  (machine, date and command inside), with a "reproduce by" line under it. NAME is a key of `RESULTS`, or a file
  written by `benchmarks/record.py` (``NAME.json``, a table as the script printed it).

The README keeps its headline results between ``<!-- results: headline -->`` and ``<!-- /results -->``, rendered
from the same files: ``python docs/hooks.py`` rewrites that block, and ``tests/test_docs.py`` fails when it is stale.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- (include|generated|results): ([\w./-]+) -->$", re.MULTILINE)
README_BLOCK = re.compile(r"(<!-- results: headline -->\n)(.*?)(<!-- /results -->)", re.DOTALL)
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS_DIR / name).read_text())


def provenance(record: dict[str, Any], name: str) -> str:
    """The line under a table: the machine, the date and load, the command, and the file it came from."""
    machine = record.get("machine", {})
    where = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores" + (
        f", {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    )
    load_ = f"load {record.get('load_before', '?')} → {record['load_after']}" if "load_after" in record else ""
    return (
        f"*{where}; {record.get('date', '?')}; {load_}. Reproduce by: `{record['command']}`; every figure and the "
        f"command of every run in `benchmarks/results/{name}`.*"
    )


def table(header: list[str], rows: list[list[str]], right_from: int = 1, right_to: int | None = None) -> str:
    """A Markdown table; columns right_from..right_to (numbers) are right-aligned."""
    right_to = len(header) if right_to is None else right_to
    align = ["---:" if right_from <= i < right_to else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def real_accuracy(name: str) -> str:
    record = load(name)
    rows = []
    for run_name, run in record["runs"].items():
        recipe = run_name.split("@")[0]
        rows.append([
            f"{recipe} (seed {run_name.split('@')[1]})" if "@" in run_name else recipe,
            f"{run['image_size'][0]} px, {run['epochs_run']} epochs",
            f"{pct(run['test_top1'])} ({pct(run['test_top5'])})",
            f"epoch {run['best_epoch']}, {run['selected_by']}",
            f"{run['minutes']}",
        ])  # fmt: skip
    header = ["recipe", "budget", f"test top-1 (top-5), n = {next(iter(record['runs'].values()))['test_n']:,}",
              "checkpoint", "minutes"]  # fmt: skip
    return table(header, rows, right_from=2) + "\n\n" + provenance(record, name)


def trust(*names: str) -> str:
    rows, notes = [], []
    for name in names:
        record = load(name)
        t = record["test"]
        size = record.get("training", {}).get("image_size", ["?"])[0]
        epochs = record.get("training", {}).get("epochs_run", "?")
        rows.append([
            f"{size} px, {epochs} epochs", pct(t["top1"]), pct(t["make_top1"]), pct(t["model_top1"]),
            pct(t["balanced_top1"]), f"{t['ece_uncalibrated']:.3f} → {t['ece']:.3f} (T {t['temperature']:.2f})",
            f"{t['min_confidence']:.2f}: {pct(t['coverage'])}", pct(t["answered_top1"]),
        ])  # fmt: skip
        notes.append(provenance(record, name))
    header = ["model", "test top-1", "make top-1", "model top-1 (any year)", "balanced top-1", "ECE before → after",
              "threshold: photos answered", "their top-1"]  # fmt: skip
    return table(header, rows) + "\n\n" + "\n\n".join(notes)


def size_screen(name: str = "size_screen.json") -> str:
    record = load(name)
    at_sizes = sorted({int(k) for v in record["results"].values() for r in v.values()
                       for k in r.get("held_out_top1_at_size", {})} - {record["image_size"]})  # fmt: skip
    rows = []
    for size, variants in record["results"].items():
        for i, (variant, r) in enumerate(variants.items()):
            se = f" ± {100 * r['held_out_se']:.1f}" if i == 0 else ""
            label = f"**{variant}**" if record["decision"].get(variant, "").startswith("adopted") else variant
            rows.append([
                f"{size} ({r['train_photos']:,}, {r['held_out_n']})" if i == 0 else "", label,
                f"{r['weight_decay_per_step']:.2f}", f"{pct(r['held_out_top1'])}{se}", pct(r["held_out_last10_mean"]),
                pct(r["train_top1_last_epoch"], 0),
                *(pct(r.get("held_out_top1_at_size", {}).get(str(px))) for px in at_sizes),
            ])  # fmt: skip
    header = ["size (training photos, held out)", "variant", "decay per step", "held-out top-1 (± s.e.)",
              "mean of last 10 epochs", "train top-1 at the end",
              *(f"held-out top-1 fed at {px} px" for px in at_sizes)]  # fmt: skip
    verdict = "; ".join(f"{k}: {v}" for k, v in record["decision"].items())
    return table(header, rows, right_from=2) + f"\n\nVerdict by the rule: {verdict}.\n\n" + provenance(record, name)


def own_streets(name: str = "own_streets_odd98.json") -> str:
    if not (RESULTS_DIR / name).is_file():
        return f"*Not measured yet: `python benchmarks/own_streets.py --data ../shared/stanford_cars/odd98` writes " \
               f"`benchmarks/results/{name}`.*"  # fmt: skip
    record = load(name)
    parts = []
    enrol = record.get("enrol")
    if enrol:
        n_new, n_all = len(enrol["new_classes"]), enrol["num_classes"]
        rows = [[f"the {n_all - n_new}-class model, before", "–", pct(enrol["base"]["old_top1"]),
                 f"{enrol['base']['minutes']} min (training)"]]  # fmt: skip
        rows += [[f"enrolled from {shots} photo(s) per new class", pct(e["new_top1"]), pct(e["old_top1"]),
                  f"{e['seconds']:.0f} s"] for shots, e in enrol["enrolled"].items()]  # fmt: skip
        f = enrol["finetune"]
        rows.append([f"fine-tuned on every class's training photos, {f['epochs']} epochs", pct(f["new_top1"]),
                     pct(f["old_top1"]), f"{f['minutes']} min"])  # fmt: skip
        header = [f"{n_new} new classes added to a {n_all - n_new}-class model (chance {pct(enrol['chance'])})",
                  "new classes' test top-1", "old classes' test top-1", "time"]  # fmt: skip
        parts.append(table(header, rows))
    imbalance = record.get("imbalance")
    if imbalance:
        big, small = imbalance["largest_smallest"]
        rows = [[f"`{mode}`", pct(r["test_top1"]), pct(r["balanced_top1"]), pct(r["rare_top1"]),
                 pct(r["common_top1"]), f"{r['minutes']}"] for mode, r in imbalance["runs"].items()]  # fmt: skip
        header = [f"`data.class_balance` ({imbalance['train_photos']:,} training photos, {big} to {small} a class)",
                  "test top-1", "balanced top-1", "rare classes' top-1", "common classes' top-1", "minutes"]
        parts.append(table(header, rows))
    measured = {p: record[p]["measured"] for p in ("enrol", "imbalance") if record.get(p, {}).get("measured")}
    if len(set(measured.values())) > 1:  # re-run part by part (--parts): each table's own date
        parts.append("Measured: " + "; ".join(f"{part} {date}" for part, date in measured.items()) + ".")
    return "\n\n".join(parts) + "\n\n" + provenance(record, name)


def sd(fractions: list[float]) -> str:
    """The standard deviation of fractions 0-1 as " ± x.x" points; empty for fewer than two values."""
    return f" ± {100 * statistics.stdev(fractions):.1f}" if len(fractions) > 1 else ""


def recipe_rows(zoo_record: dict[str, Any]) -> list[dict[str, Any]]:
    """The zoo's rows of the recommended recipe itself: its model with its setting, the config unchanged."""
    return [r for r in zoo_record["rows"] if r["model"] == "ghostnet_thesis" and r["setting"] == "recipe"]


def recipe_96px(name: str = "odd98_96px_60ep.json") -> str:
    """The recommended recipe at 96 px / 60 epochs, mean ± sd over seeds, in one line with every seed and the file."""
    if not (RESULTS_DIR / name).is_file():
        return f"*not measured yet (`benchmarks/real_accuracy.py --results benchmarks/results/{name}`)*"
    record = load(name)
    seeds = [(k.partition("@")[2], r) for k, r in record["runs"].items() if k.startswith("recommended")]
    top1 = [r["test_top1"] for _, r in seeds]
    thesis = record["test_top1_by_recipe"].get("thesis", [])
    each = ", ".join(f"seed {s}: {pct(r['test_top1'])}" for s, r in seeds)
    return (f"**{pct(statistics.fmean(top1))}{sd(top1)}** test top-1 over {len(top1)} seeds ({each}; the thesis recipe "
            f"{pct(statistics.fmean(thesis))} in the same run), {record['machine']['cpu']}, "
            f"{record['machine']['cores']} cores, {record['date'][:10]}; every run's command in "
            f"`benchmarks/results/{name}`")  # fmt: skip


def recipes_96px(name: str = "odd98_96px_60ep.json") -> str:
    """Both recipes at 96 px / 60 epochs on odd98, side by side in one `real_accuracy.py` run over seeds: each seed's
    test top-1, the mean ± sd, its own minutes, and, for a recipe that distils, its teacher's top-1 and minutes."""
    if not (RESULTS_DIR / name).is_file():
        return (f"*Not measured yet: `python benchmarks/real_accuracy.py --data PREPARED --size 96 --epochs 60 "
                f"--jobs 2 --seeds 42,43,44 --results benchmarks/results/{name}`.*")  # fmt: skip
    record = load(name)
    runs: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, run in record["runs"].items():
        recipe, _, seed = key.partition("@")
        runs.setdefault(recipe, []).append((seed, run))
    rows = []
    for recipe, seeds in runs.items():
        top1 = [r["test_top1"] for _, r in seeds]
        teachers = [r["teacher"] for _, r in seeds if "teacher" in r]
        teacher = (f"{pct(statistics.fmean(t['test_top1'] for t in teachers))}, "
                   f"{statistics.fmean(t['wall_time_s'] for t in teachers) / 60:.0f} min") if teachers else "–"
        rows.append([f"`{recipe}`", f"**{pct(statistics.fmean(top1))}**{sd(top1)}",
                     ", ".join(f"{s or '–'}: {pct(r['test_top1'])}" for s, r in seeds),
                     f"{statistics.fmean(r['minutes'] for _, r in seeds):.0f}", teacher])  # fmt: skip
    header = ["recipe", "test top-1 (mean)", "each seed", "minutes (its own)", "its teacher: top-1, minutes"]
    return table(header, rows, right_from=1, right_to=2) + "\n\n" + provenance(record, name)


def generic(name: str) -> str:
    """A results file written by `benchmarks/record.py`: its table as it was printed, the note, the provenance."""
    if not (RESULTS_DIR / name).is_file():
        return f"*Not measured yet: the script above writes `benchmarks/results/{name}` with `--results`.*"
    record = load(name)
    header, rows = record["table"]["header"], record["table"]["rows"]
    number = re.compile(r"[-+−×]?[\d.,]+\s*(%|pt|ms|s|×)?")
    numeric = [all(number.fullmatch(str(r[i])) for r in rows) for i in range(len(header))]
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    note = f"{record['note'].rstrip('.')}. " if record.get("note") else ""
    return "\n".join(lines) + f"\n\n{note}" + provenance(record, name)


def zoo_profile(name: str = "zoo_profile/models_227px_196cls.json") -> str:
    """Every architecture's size, compute and CPU latency (`carspotter models --profile`), cheapest first."""
    if not (RESULTS_DIR / name).is_file():
        return f"*Not measured yet: `carspotter models --profile --image-size 227 --classes 196 --threads 1 --out " \
               f"benchmarks/results/zoo_profile` writes `benchmarks/results/{name}`.*"  # fmt: skip
    record = load(name)
    rows = [[m["name"], m["family"], f"{m['params'] / 1e6:.2f}", f"{m['macs'] / 1e6:,.0f}", f"{m['weights_mb']:.1f}",
             f"{m['latency_ms']:.1f}"] for m in sorted(record["models"], key=lambda m: m["macs"])]  # fmt: skip
    size, classes = record["models"][0]["image_size"], record["models"][0]["num_classes"]
    header = ["model", "family", "params (M)", f"MACs @{size} (M)", "weights (MB)", "CPU latency (ms)"]
    return (
        table(header, rows, right_from=2)
        + f"\n\n*{record['machine']}; {classes} classes, batch 1, median of repeated runs; {record['date']}, load "
        f"{record['load']}. Reproduce by: `{record['command']}`; the CSV, JSON and plot are in "
        f"`benchmarks/results/{Path(name).parent}/`.*"
    )


def zoo(name: str = "zoo_odd98.json") -> str:
    """The zoo trained on real photos (`benchmarks/zoo_real.py`): one line per model (mean ± sd over its seeds), the
    plot embedded (the site stays one folder, offline)."""
    if not (RESULTS_DIR / name).is_file():
        return "*Not measured yet: `python benchmarks/zoo_real.py --data ../shared/stanford_cars/odd98` writes " \
               "`benchmarks/results/zoo_odd98.csv`.*"  # fmt: skip
    import base64

    record = load(name)
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in record["rows"]:
        by_model.setdefault(row["model"], []).append(row)

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    lines = []
    for model, rows in sorted(by_model.items(), key=lambda kv: -mean(kv[1], "top1")):
        top1 = pct(mean(rows, "top1"))
        if len(rows) > 1:
            top1 += f"{sd([r['top1'] for r in rows])} ({len(rows)} seeds)"
        int8_cost = 100 * (mean(rows, "int8_top1") - mean(rows, "top1"))
        lines.append([
            model, top1, pct(mean(rows, "top5")), pct(mean(rows, "int8_top1")), f"{int8_cost:+.1f}",
            f"{mean(rows, 'params_m'):.2f}", f"{mean(rows, 'macs_m'):,.0f}", f"{mean(rows, 'macs_m_227'):,.0f}",
            f"{mean(rows, 'latency_ms'):.2f}", f"{mean(rows, 'int8_latency_ms'):.2f}",
            f"{mean(rows, 'latency_ms') / mean(rows, 'int8_latency_ms'):.2f}×", f"{mean(rows, 'train_minutes'):.0f}",
            pct(mean(rows, "train_top1")), rows[0]["setting"],
        ])  # fmt: skip
    size = record["image_size"]
    header = ["model", "test top-1", "top-5", "int8 top-1", "int8 − fp32 (pt)", "params (M)", f"MACs @{size} (M)",
              "MACs @227 (M)", "fp32 ms", "int8 ms", "int8 speed-up", "train min", "train top-1",
              "setting"]  # fmt: skip
    png = RESULTS_DIR / Path(name).with_suffix(".png").name
    picture = ""
    if png.is_file():
        data = base64.b64encode(png.read_bytes()).decode()
        picture = f'\n\n<img alt="test top-1 against CPU latency" src="data:image/png;base64,{data}">'
    note = (f"\n\n*{record['dataset']} ({record['classes']} classes), {size} px, {record['epochs']} epochs, the "
            f"recipe `{record['recipe']}`; latency: batch 1, one thread, ONNX Runtime. ")  # fmt: skip
    commands = [[f"`{model}`", f"`python benchmarks/zoo_real.py --data ../shared/stanford_cars/{record['dataset']} "
                 f"--models {model} --seeds {','.join(str(r['seed']) for r in rows)}`"]
                for model, rows in sorted(by_model.items())]  # fmt: skip
    return (
        table(header, lines, right_from=1, right_to=13) + picture + note + provenance(record, name)[1:]
        + zoo_timing(record) + zoo_int8_speed(by_model) + zoo_leaders(record)
        + "\n\nThe command that reproduces each row (it trains, exports, times and scores; the `carspotter` commands "
        "it runs, with every setting, are under each row's `commands` in the results file):\n\n"
        + table(["model", "reproduce by"], commands, right_from=2)
    )


def zoo_timing(record: dict[str, Any]) -> str:
    """Where the zoo's latencies come from: one sitting that timed every network together (``timing``, written by
    ``zoo_real.py --retime``), and the networks timed apart from it (``timed_apart``)."""
    timing = record.get("timing")
    apart = ", ".join(f"`{m}`" for m in record.get("timed_apart", []))
    if not timing:
        return f"\n\n*Each network's latency timed after its own run, in its own sitting: {apart}.*" * bool(apart)
    spread = max(max(v) / min(v) for v in timing["round_spread"].values())
    ratios = list(timing["trained_over_untrained"].values())
    check = (f" The trained rows' own exports, timed in the same rounds, run at {min(ratios):.2f}–{max(ratios):.2f}× "
             "their untrained architecture's latency: the weights do not set the speed.") if ratios else ""  # fmt: skip
    later = f" Timed apart from that sitting (after their own runs): {apart}." if apart else ""
    return (
        f"\n\n*Latencies: every network's fp32 and int8 export timed together in one sitting ({timing['date']}, load "
        f"{timing['load_before']} → {timing['load_after']}), {timing['rounds']} rounds of one `carspotter bench-infer` "
        "run over all the files in a shuffled order, each file's latency the median of its rounds; the exports are "
        "of each architecture trained for one batch, as latency is the graph's, not the weights'. On this shared "
        f"machine one file's rounds, minutes apart, differed by up to {spread:.2f}×: latencies from different "
        f"sittings are not compared.{check}{later} Reproduce by: `{timing['command']}`.*"
    )


def zoo_int8_speed(by_model: dict[str, list[dict[str, Any]]]) -> str:
    """Which networks int8 speeds up and which it slows down (mean latencies of the table), by name."""
    ratio = {m: statistics.fmean(r["latency_ms"] for r in rows) / statistics.fmean(r["int8_latency_ms"] for r in rows)
             for m, rows in by_model.items()}  # fmt: skip
    faster = ", ".join(f"`{m}`" for m in sorted(ratio, key=ratio.get, reverse=True) if ratio[m] > 1)
    slower = ", ".join(f"`{m}`" for m in sorted(ratio, key=ratio.get) if ratio[m] <= 1)
    return f"\n\n*int8 is faster than fp32 for {faster or 'none'}; as fast or slower for {slower or 'none'}.*"


def zoo_leaders(record: dict[str, Any]) -> str:
    """The zoo's leaders (``leaders``: the best models by mean test top-1) and the seeds of ``leader_seeds`` each
    still lacks."""
    if "leaders" not in record:
        return ""
    names = ", ".join(f"`{m}`" for m in record["leaders"])
    seeds = ", ".join(map(str, record["leader_seeds"]))
    missing = "; ".join(f"`{m}` seed {', '.join(map(str, lacks))}" for m, lacks in record["leaders"].items() if lacks)
    return (f"\n\n*The leaders, the {len(record['leaders'])} best by mean test top-1, are trained with seeds {seeds}: "
            f"{names}. "
            + (f"Still to train: {missing}.*" if missing else "Each has them all.*"))


def zoo_choice(name: str = "zoo_odd98.json") -> str:
    """Which deployment to ship for a latency budget: the zoo benchmark's frontier over models and formats (its
    ``choice``, computed by `benchmarks/zoo_real.py` from the rows, never typed)."""
    record = load(name) if (RESULTS_DIR / name).is_file() else {}
    if "choice" not in record:
        return "*Not measured yet: `python benchmarks/zoo_real.py` writes the choice with the table.*"
    choice = record["choice"]
    rows = []
    for entry, faster in zip(choice, [None, *choice[:-1]], strict=True):
        gain = f"+{100 * (entry['top1'] - faster['top1']):.1f} pt over the row above" if faster else "the fastest"
        seeds = f"{entry['seeds']} seeds" if entry["seeds"] > 1 else "1 seed"
        rows.append([f"{entry['latency_ms']:.2f} ms", f"`{entry['model']}`", entry["format"], pct(entry["top1"]),
                     seeds, gain])  # fmt: skip
    header = ["budget from (batch 1, 1 thread)", "ship", "ONNX", "test top-1", "measured over", "what it buys"]
    return (
        table(header, rows, right_from=3, right_to=4)
        + f"\n\n*From the rows above ({record['dataset']}, {record['test_photos']} test photos; one standard error "
        f"is about {100 * (0.4 * 0.6 / record['test_photos']) ** 0.5:.1f} points at 40%): every (model, ONNX format) "
        "pair by its mean test top-1 and batch-1 latency on one thread; a slower one is listed only when it is more "
        "accurate than every faster one by more than one standard error. For your budget, ship the last row whose "
        "latency fits it. Written by `benchmarks/zoo_real.py` (`choice` in the results file).*"
    )


def zoo_needs_screen(name: str = "zoo_odd98.json") -> str:
    """The families the recipe fails by the zoo benchmark's rule that have no screen yet (``needs_screen``), and the
    rows trained before their family's screen chose its setting (``stale_settings``)."""
    record = load(name) if (RESULTS_DIR / name).is_file() else {}
    if "needs_screen" not in record:
        return "*Not measured yet: `python benchmarks/zoo_real.py` writes it with the table.*"
    rule = f"a row trained with the recipe as it is fits under {pct(record['fit_floor'], 0)} of its training photos"
    stale = ", ".join(f"`{m}`" for m in record.get("stale_settings", []))
    retrain = f" Still to be trained again with the setting its family's screen chose: {stale}." if stale else ""
    if not record["needs_screen"]:
        return f"*No family left to screen: where {rule}, its family's screen is below.{retrain}*"
    names = ", ".join(f"`{m}`" for m in record["needs_screen"])
    return f"*Still to be screened ({rule}): {names}.{retrain}*"


def zoo_headline(record: dict[str, Any]) -> list[str]:
    """The README's line on the zoo: how many networks were trained alike, the leader and the runner-up."""
    means = {m: statistics.fmean(r["top1"] for r in record["rows"] if r["model"] == m)
             for m in {r["model"] for r in record["rows"]}}  # fmt: skip
    first, second = sorted(means, key=means.get, reverse=True)[:2]
    return [f"the zoo: {len(means)} architectures trained alike (the single stage, 96 px, 60 epochs): the best, "
            f"`{first}`, and the runner-up, `{second}`", f"{pct(means[first])} / {pct(means[second])}",
            "[Choosing an architecture](docs/architectures.md)", "`benchmarks/results/zoo_odd98.json`"]  # fmt: skip


def headline() -> str:
    """The README's results: the recipes against each other, trust, and your own cars."""
    acc = load("odd98_128px_100ep.json")
    runs = {k.split("@")[0]: v for k, v in acc["runs"].items()}
    trust96 = load("trust_odd98.json")["test"]
    zoo_file = RESULTS_DIR / "zoo_odd98.json"
    zoo_record = load(zoo_file.name) if zoo_file.is_file() else None
    zoo96 = [r["top1"] for r in recipe_rows(zoo_record)] if zoo_record else []
    by_recipe = load("odd98_96px_60ep.json")["test_top1_by_recipe"]
    rec, thesis = by_recipe["recommended"], by_recipe["thesis"]
    rows = [
        [f"recommended recipe (`configs/stanford_ghostnet.yaml`: its own teacher, then itself), 96 px, 60 epochs, "
         f"CPU, {len(rec)} seeds", f"**{pct(statistics.fmean(rec))}**{sd(rec)}", "[Training](docs/training.md)",
         "`benchmarks/results/odd98_96px_60ep.json`"],
        ["thesis recipe (`configs/thesis_c50.yaml`), the same run", f"{pct(statistics.fmean(thesis))}{sd(thesis)}",
         "[Training](docs/training.md)", "the same file"],
        *([[f"the recipe's single stage (no teacher), 96 px, 60 epochs, CPU, {len(zoo96)} seeds (the zoo's "
            "`ghostnet_thesis` rows)", f"{pct(statistics.fmean(zoo96))}{sd(zoo96)}",
            "[Choosing an architecture](docs/architectures.md)", "`benchmarks/results/zoo_odd98.json`"]]
          if len(zoo96) > 1 else []),
        *([zoo_headline(zoo_record)] if zoo_record else []),
        ["the recipe's single stage, 128 px, 100 epochs, CPU", pct(runs["recommended"]["test_top1"]),
         "[Training](docs/training.md)", "`benchmarks/results/odd98_128px_100ep.json`"],
        ["thesis recipe, the same run", pct(runs["thesis"]["test_top1"]), "[Training](docs/training.md)",
         "the same file"],
        ["the recipe's single stage, 96 px, 60 epochs, CPU: make top-1 / calibration error after temperature",
         f"{pct(trust96['top1'])}; make {pct(trust96['make_top1'])}; ECE {trust96['ece']:.3f}",
         "[Trusting an answer](docs/trust.md)", "`benchmarks/results/trust_odd98.json`"],
    ]  # fmt: skip
    if (RESULTS_DIR / "own_streets_odd98.json").is_file():
        enrol = load("own_streets_odd98.json").get("enrol")
        if enrol:
            shots = sorted(enrol["enrolled"], key=int)
            few, many = enrol["enrolled"][shots[0]], enrol["enrolled"][shots[-1]]
            rows.append([f"{len(enrol['new_classes'])} car models enrolled without training, from {shots[0]} and "
                         f"{shots[-1]} photos each (chance {pct(enrol['chance'])})",
                         f"new {pct(few['new_top1'])} / {pct(many['new_top1'])}; old {pct(few['old_top1'])} / "
                         f"{pct(many['old_top1'])} (before {pct(enrol['base']['old_top1'])})",
                         "[Your own cars](docs/own-cars.md)", "`benchmarks/results/own_streets_odd98.json`"])
    header = ["what (odd98: 98 real Stanford Cars classes, 2,028 test photos, scored once)", "test top-1",
              "details", "results file"]  # fmt: skip
    return table(header, rows, right_from=1, right_to=2)


RESULTS: dict[str, Callable[[], str]] = {
    "headline": headline,
    "odd98_128px_100ep": lambda: real_accuracy("odd98_128px_100ep.json"),
    "trust": lambda: trust("trust_odd98.json", "trust_odd98_128px.json"),
    "size_screen": size_screen,
    "climb_screen": lambda: size_screen("climb_screen.json"),
    "climb_screen_sam": lambda: size_screen("climb_screen_sam.json"),
    "climb_screen_kd": lambda: size_screen("climb_screen_kd.json"),
    "own_streets": own_streets,
    "zoo_profile": zoo_profile,
    "zoo": zoo,
    "zoo_choice": zoo_choice,
    "zoo_needs_screen": zoo_needs_screen,
    # one table per family screen that was run (benchmarks/results/zoo_screen_<family>.json)
    **{path.stem: functools.partial(size_screen, path.name) for path in RESULTS_DIR.glob("zoo_screen_*.json")},
    "recipe_96px": recipe_96px,
    "recipes_96px": recipes_96px,
}


def generated(name: str) -> str:
    if name == "configuration":
        from carspotter.config import reference_markdown

        return reference_markdown()
    if name == "commands":
        from carspotter.cli.reference import markdown

        return markdown()
    raise ValueError(f"unknown generated section {name!r}")


def include(path: str, docs: Path) -> str:
    """A repository Markdown file, its links mended for the site (pages stay links, other files code spans)."""
    source = ROOT / path
    text = render(source.read_text(), docs)  # its own markers first (the README's results block), then its links
    if text.startswith("# "):
        text = text.split("\n", 1)[1]  # the page has its own title

    def mend(match: re.Match[str]) -> str:
        label, target = match.groups()
        if target.startswith(("http://", "https://", "#", "mailto:")):
            return match.group(0)
        file, _, anchor = target.partition("#")
        resolved = (source.parent / file).resolve()
        if resolved.suffix == ".md" and resolved.is_relative_to(docs):
            page = resolved.relative_to(docs).as_posix()
            return f"[{label}]({page}{'#' + anchor if anchor else ''})"
        return label if label.startswith("`") else f"{label} (`{resolved.relative_to(ROOT).as_posix()}`)"

    return LINK.sub(mend, text)


def render(markdown: str, docs: Path) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, name = match.groups()
        if kind == "include":
            return include(name, docs)
        if kind == "generated":
            return generated(name)
        return RESULTS[name]() if name in RESULTS else generic(name)

    markdown = README_BLOCK.sub(lambda m: m.group(1), markdown)  # a block rendered before is rendered afresh
    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # MkDocs calls this for each page
    return render(markdown, Path(config["docs_dir"]).resolve())


def update_readme(readme: Path = ROOT / "README.md") -> bool:
    """Rewrite the README's headline block from the results files; True when it changed."""
    text = readme.read_text()
    new = README_BLOCK.sub(lambda m: m.group(1) + "\n" + headline() + "\n\n" + m.group(3), text)
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    print("README.md updated" if update_readme() else "README.md already up to date")
