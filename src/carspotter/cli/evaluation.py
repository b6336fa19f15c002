"""Judging a model: `evaluate`, `report`, `predict`, `models`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from carspotter.cli._app import DEFAULT_SIDE, _pct, app, console, err_console
from carspotter.errors import UserError
from carspotter.writable import check_output_file, check_writable


@app.command()
def evaluate(
    ckpt: Annotated[Path, typer.Argument(help="A checkpoint (.ckpt), or its export (.onnx fp32/int8, .pte).")],
    data: Annotated[Path, typer.Option(help="Prepared dataset folder.")],
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Report folder (default: eval-CKPT-DATASET-SPLIT beside the "
                                                  "checkpoint); an existing one is kept and a -2, -3 ... folder made.")
                   ] = None,
    batch_size: Annotated[int, typer.Option()] = 64,
    allow_class_mismatch: Annotated[bool, typer.Option(help="Evaluate on a dataset whose class names differ from "
                                                            "the checkpoint's (class ids compared as they are); one "
                                                            "with some of the model's classes is matched by name "
                                                            "without it.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print {top1, top5, n, make_top1, model_top1, "
                                                         "balanced_top1, ece, ece_uncalibrated, temperature, "
                                                         "min_confidence, coverage, answered_top1} as JSON.")] = False,
    tta_flip: Annotated[bool, typer.Option("--tta-flip", help="Test-time flip: average each photo's prediction "
                                                              "with its mirror image's (twice the compute).")] = False,
) -> None:
    """Top-1/top-5, per-class accuracy CSV and a confusion-matrix PNG of a model on a prepared split."""
    from carspotter.evaluation.metrics import evaluate_on_dataset, new_report_dir, write_report

    report_dir = new_report_dir(ckpt, data, split, out)
    check_writable(report_dir, "report folder")
    result = evaluate_on_dataset(ckpt, data, split, allow_class_mismatch=allow_class_mismatch,
                                 batch_size=batch_size, progress=not as_json, tta_flip=tta_flip)
    paths = write_report(result, report_dir)
    if as_json:
        print(json.dumps(result.to_json()))
        return
    console.print(f"{split}: top-1 {_pct(result.top1)}, top-5 {_pct(result.top5)} on {result.n} images")
    if result.trust:
        t = result.trust
        console.print(f"  make top-1 {_pct(t['make_top1'])}, model top-1 (any year) {_pct(t['model_top1'])}, "
                      f"balanced top-1 {_pct(t['balanced_top1'])}")
        console.print(f"  calibration error (ECE, 15 bins) {t['ece']:.3f} at temperature {t['temperature']:.3g} "
                      f"(uncalibrated {t['ece_uncalibrated']:.3f})")
        if t["coverage"] is not None:
            console.print(f"  sure answers (top probability >= {t['min_confidence']:.2f}): {_pct(t['coverage'])} of "
                          f"the photos, {_pct(t['answered_top1'])} of them right")
    for name, path in paths.items():
        console.print(f"  {name}: {path}")

@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="A run folder (its best.ckpt) or a checkpoint (.ckpt).")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset (default: the one the run trained on).")] = None,
    split: Annotated[str, typer.Option(help="val: the validation photos the run held out of train (default); "
                                            "train or test: a whole split of --data (another validation set).")
                     ] = "val",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored calibration as JSON.")] = False,
) -> None:
    """Fit the temperature and the "not sure" threshold of a checkpoint on held-out photos and store them in it.

    Training does this at its end on the validation split; run it for older checkpoints or another validation set.
    Export again afterwards: exports carry the calibration of the checkpoint they were made from.
    """
    from carspotter.data.prepared import load_prepared
    from carspotter.evaluation.calibration import calibrate_checkpoint, validation_frame
    from carspotter.formats.checkpoint import read_checkpoint_info
    from carspotter.formats.run_dir import RunDir

    ckpt = RunDir(model).best_ckpt if model.is_dir() else model
    if split not in ("val", "train", "test"):
        raise UserError(f"--split {split!r}: choose val, train or test")
    info = read_checkpoint_info(ckpt)
    if data is None:
        if info.config is None:
            raise UserError(f"{ckpt}: its run's dataset is unknown; name it with --data")
        data = Path(info.config.data.path)
    dataset = load_prepared(data)
    if dataset.classes != info.class_names:
        raise UserError(f"{data}: its classes are not the checkpoint's (same names, same order); calibrate on the "
                        "dataset the model was trained on")  # fmt: skip
    if split == "test":
        err_console.print("warning: calibrating on the test split makes its calibration figures optimistic")
    frame = validation_frame(dataset, info) if split == "val" else dataset.split(split)
    check_writable(ckpt.parent, "checkpoint folder")
    where = f"{'validation' if split == 'val' else split} split of {Path(data).resolve().name}"
    cal = calibrate_checkpoint(ckpt, dataset, frame, where, batch_size=batch_size, progress=not as_json)
    if as_json:
        print(json.dumps(cal.to_dict()))
        return
    console.print(f"{ckpt}: temperature {cal.temperature:.4g}, not sure below {cal.min_confidence:.2f} "
                  f"(fitted on the {cal.fitted_on}); ECE {cal.ece_before:.3f} → {cal.ece_after:.3f}")

@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder (with best.ckpt).")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset whose test split is shown "
                                                   "(default: the one the run trained on).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The HTML file (default RUN/report.html).")] = None,
    examples: Annotated[int, typer.Option(min=0, help="Test photos in the grid.")] = 24,
) -> None:
    """One self-contained HTML page about a run: summary, config, curves, per-class accuracy, confused pairs, photos.

    Opens offline (no CDN, every image embedded); draws RUN/results.png from metrics.csv if the run lacks it.
    """
    from carspotter.experiments.report import write_run_report
    from carspotter.formats.run_dir import REPORT_FILE

    check_output_file(out if out is not None else run / REPORT_FILE, "report")
    console.print(f"report: {write_run_report(run, data, out, examples=examples)}")

@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A checkpoint (.ckpt), an exported .onnx or an ExecuTorch .pte.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per image, as a list.")] = False,
    tta_flip: Annotated[bool, typer.Option("--tta-flip", help="Test-time flip: average each photo's prediction "
                                                              "with its mirror image's (twice the compute).")] = False,
    min_confidence: Annotated[float | None, typer.Option(
        "--min-confidence", help="Mark an answer unsure when its top probability is below this (0 to 1; default: "
                                 "the threshold fitted with the model's temperature, 0 if it has none).")] = None,
) -> None:
    """Car make/model/year with calibrated probabilities for each image, the most likely make and model, and
    whether the answer is sure.

    An image that cannot be read gets an error line; the others are still predicted, and the exit code is 2.
    """
    from carspotter.formats.calibration import check_min_confidence
    from carspotter.inference import load_classifier
    from carspotter.inference.predict import predict_images

    if min_confidence is not None:
        check_min_confidence(min_confidence)  # before the model is loaded
    results = predict_images(load_classifier(model), images, top_k=top_k, tta_flip=tta_flip,
                             min_confidence=min_confidence)  # fmt: skip
    failed = sum("error" in r for r in results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                err_console.print(f"[red]error:[/red] {escape(r['error'])}", highlight=False)
                continue
            console.print(f"[bold]{escape(r['image'])}[/bold]: {escape(r['answer'])}", highlight=False)
            console.print(f"  make {escape(r['make']['name'])} {r['make']['probability']:.0%}, "
                          f"model {escape(r['model']['name'])} {r['model']['probability']:.0%}", highlight=False)
            for p in r["predictions"]:
                console.print(f"  {p['probability']:7.2%}  {p['class_name']}")
    if failed:  # the others were still predicted and printed; an unreadable photo is a user error, like any other
        raise typer.Exit(2)

@app.command()
def models(
    profile: Annotated[bool, typer.Option("--profile", help="Measure params, MACs, weights and CPU latency.")] = False,
    image_size: Annotated[int, typer.Option("--image-size", min=32, help="Input size for --profile.")] = DEFAULT_SIDE,
    classes: Annotated[int, typer.Option("--classes", min=1, help="Classifier outputs for --profile.")] = 196,
    filter_: Annotated[str | None, typer.Option("--filter", help="Pattern: 'ghostnet*' or 'timm/NAME'.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Runs folder (output.runs_dir): add each model's best test "
                                                       "top-1.")] = None,
    results: Annotated[Path | None, typer.Option(help="A zoo results CSV (benchmarks/results/zoo_odd98.csv): add "
                                                      "each model's test top-1 on real photos.")] = None,
    out: Annotated[Path, typer.Option(help="Where --profile writes its CSV, JSON, PNG and Markdown.")] = Path(
        "model_profile"
    ),
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for latency (1: steadier on a busy machine).")] = 1,
) -> None:
    """List the registered architectures; with --profile, measure each one (table + CSV, JSON, scatter plot)."""
    from rich.table import Table

    from carspotter.evaluation.profile import machine_description, model_family, profile_models, write_profiles
    from carspotter.models import list_models, model_arg_names

    names = list_models(filter_)
    if not names and filter_ and filter_.startswith("timm/"):
        names = [filter_]
    if not names:
        raise UserError(f"no registered model matches {filter_!r}; run `carspotter models` for the list")
    if not profile:
        table = Table("model", "family", "arguments (besides num_classes, in_chans)")
        for name in names:
            table.add_row(name, model_family(name), ", ".join(model_arg_names(name) or ["any timm argument"]))
        console.print(table, soft_wrap=False)
        console.print("Any timm architecture is also available as 'timm/<name>'.")
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; --out names the folder for the profile's files")
    check_writable(out, "profile folder")
    profiles = profile_models(names, image_size, classes, runs_dir, results=results, threads=threads)
    with_acc = runs_dir is not None or results is not None
    table = Table(title=f"{classes} classes, {image_size}x{image_size}; CPU latency at batch 1 (median)")
    table.add_column("model", no_wrap=True)
    for column in ("params M", "MACs M", "MB", "ms") + (("test top-1",) if with_acc else ()):
        table.add_column(column, justify="right", no_wrap=True)
    for p in profiles:
        row = [p.label, f"{p.params / 1e6:.2f}", f"{p.macs / 1e6:,.0f}", f"{p.weights_mb:.1f}", f"{p.latency_ms:.1f}"]
        if with_acc:
            row.append(_pct(p.best_test_top1))
        table.add_row(*row)
    console.print(table, soft_wrap=False)
    console.print(f"machine: {machine_description(threads)}")
    for kind, path in write_profiles(profiles, out).items():
        console.print(f"  {kind}: {path}")
