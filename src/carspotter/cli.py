"""The `carspotter` command: parses arguments and dispatches to library functions. No work lives here."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from carspotter.errors import UserError
from carspotter.writable import check_output_file, check_writable

app = typer.Typer(
    name="carspotter",
    help="Train, compare and ship small, fast car make/model/year recognisers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Never hard-wrapped: a script reading stdout gets paths and commands whole (the terminal wraps long lines itself).
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", force=True)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "onnx_ir", "onnxscript",
                  "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")


def _print_version(value: bool) -> None:
    if value:
        from carspotter import __version__

        print(f"carspotter {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
def prepare(
    raw: Annotated[str, typer.Argument(help="Folder with the downloaded Stanford Cars files (either release, or the "
                                            "Hugging Face parquet files), hf://OWNER/NAME to fetch a Hugging Face "
                                            "dataset repository, or your photos in one folder per class "
                                            "(--layout folders).")],
    out: Annotated[Path, typer.Argument(help="Where to write the prepared dataset.")],
    layout: Annotated[str, typer.Option(help="auto, updated (car_ims.tgz + cars_annos.mat), original "
                                             "(cars_train/, cars_test/, devkit/), parquet (data/train-*.parquet, "
                                             "data/test-*.parquet) or folders (RAW/<class>/<images>, "
                                             "or RAW/train/<class>/ and RAW/test/<class>/).")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Rebuild OUT even if it is already complete.")] = False,
    test_fraction: Annotated[float | None, typer.Option(help="folders: share of each class held out for testing "
                                                             "(default 0.2; not used when RAW has its own train/ "
                                                             "and test/).")] = None,
    seed: Annotated[int | None, typer.Option(help="folders: seed of the train/test split (default 0).")] = None,
    class_names: Annotated[Path | None, typer.Option(help="parquet: the class names, one per line (line 1 is "
                                                          "label 0), for a release without a dataset card "
                                                          "(README.md); replaces the card's names.")] = None,
    revision: Annotated[str | None, typer.Option(help="hf://: branch, tag or commit of the repository "
                                                      "(default: main).")] = None,
) -> None:
    """Read a raw dataset (layout detected) into a prepared folder: images, train/test/classes CSVs, manifest.json.

    Archives are extracted safely; an interrupted run resumes when re-run. hf://OWNER/NAME downloads the
    repository's parquet files into the Hugging Face cache (HF_HOME; resumable; HF_HUB_OFFLINE=1 uses the cache).
    """
    from carspotter.data.prepare import prepare as prepare_dataset
    from carspotter.data.raw import listed

    report = prepare_dataset(raw, out, layout=layout, overwrite=overwrite, test_fraction=test_fraction, seed=seed,
                             class_names=class_names, revision=revision)
    if report.already_complete:
        err_console.print(f"{escape(str(out))} is already a complete prepared dataset, from the same RAW; left as it "
                          "is (--overwrite rebuilds it)", highlight=False)
    console.print(f"prepared ({report.layout} layout): {report.counts.get('train', 0)} train, "
                  f"{report.counts.get('test', 0)} test images, {report.num_classes} classes → {report.out}")
    for what, names in (("missing", report.missing), ("unreadable", report.unreadable)):
        if names:
            err_console.print(f"[yellow]skipped {len(names)} {what} image(s)[/yellow]: {escape(listed(names))} "
                              f"(all listed in {report.out / 'manifest.json'})", highlight=False)
    for line in report.warnings:
        err_console.print(f"[yellow]note[/yellow]: {escape(line)}", highlight=False)


@app.command()
def stats(
    prepared: Annotated[Path, typer.Argument(help="A prepared dataset folder.")],
    image_size: Annotated[int, typer.Option(min=1, help="Resize to this square size first, as training does.")] = 227,
    grayscale: Annotated[bool, typer.Option(help="Statistics of the grayscale images (data.grayscale).")] = False,
    plot: Annotated[Path | None, typer.Option(help="Class counts and image sizes PNG "
                                                   "(default: PREPARED-stats.png beside the folder).")] = None,
) -> None:
    """Exact per-channel mean and std of the training split (all pixels, after resizing), and a PNG of the data.

    Prints a snippet to paste into a training config (data.mean, data.std).
    """
    from carspotter.data.stats import compute_stats, plot_stats

    if plot is not None:  # a plot asked for by name must be writable: said before the work, not after
        check_output_file(plot, "plot")
    result = compute_stats(prepared, image_size=image_size, grayscale=grayscale)
    counts = list(result.class_counts["train"].values())
    err_console.print(f"{result.num_images} training images, {len(counts)} classes ({min(counts)} to {max(counts)} "
                      "images each)", highlight=False)
    print(result.yaml_snippet(), end="", flush=True)  # the results first: nothing below can lose them
    target = plot or prepared.parent / f"{prepared.resolve().name}-stats.png"
    try:
        png = plot_stats(result, check_output_file(target, "plot"))
    except (UserError, OSError) as exc:
        if plot is not None:
            raise
        why = exc if isinstance(exc, UserError) else f"{target}: {exc.strerror or exc}"
        err_console.print(f"[yellow]warning[/yellow]: no plot written ({escape(str(why))}); --plot FILE.png "
                          "chooses where", highlight=False)
        return
    err_console.print(f"plot: {escape(str(png))}", highlight=False)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="New folder for the synthetic raw dataset.")],
    layout: Annotated[str, typer.Option(help="updated, original or parquet (Hugging Face): the release to "
                                             "imitate.")] = "updated",
    classes: Annotated[int, typer.Option("--classes", min=1, help="Number of car classes.")] = 10,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Images per class (half go to test).")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    archives: Annotated[bool, typer.Option(help="Write .tgz archives like the real downloads (else folders).")] = True,
) -> None:
    """Write a synthetic raw Stanford Cars dataset (same file names and .mat structures) for demos and tests."""
    from carspotter.data.synth import synthesize

    check_writable(out, "synthetic dataset folder")
    report = synthesize(out, layout=layout, num_classes=classes, per_class=per_class, seed=seed, archives=archives)
    console.print(f"synthesised {report.counts['train']} train, {report.counts['test']} test images of "
                  f"{len(report.classes)} classes ({layout} layout) → {report.out}: {', '.join(report.files)}")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set trainer.max_epochs=2")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its folder.")] = None,
) -> None:
    """Train a model; writes a run folder with checkpoints, metrics.csv and summary.json."""
    from carspotter.config import load_config
    from carspotter.run_files import load_run_config
    from carspotter.training.run import TrainingInterrupted
    from carspotter.training.run import train as run_training

    _quiet_lightning()

    if resume is not None:
        cfg = load_run_config(resume, set_)
    else:
        if config is None:
            raise UserError("train needs --config FILE (e.g. configs/stanford_ghostnet.yaml) or --resume RUN_DIR")
        cfg = load_config(config, set_)
    try:
        result = run_training(cfg, resume=resume)
    except TrainingInterrupted as exc:  # Ctrl-C (typer would swallow it silently): say how to continue
        err_console.print(escape(str(exc)), highlight=False)
        raise typer.Exit(130) from None
    if not result.rank_zero:  # an extra DDP process: rank 0 reports
        return
    s = result.summary
    console.print(f"run folder: {result.run_dir}")
    console.print(
        f"best epoch {s['best_epoch']}: val top-1 {_pct(s['val_top1'])}; test top-1 {_pct(s['test_top1'])}"
        f" (top-5 {_pct(s['test_top5'])}, n={s['test_n']})"
    )


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
    as_json: Annotated[bool, typer.Option("--json", help="Print {top1, top5, n} as JSON.")] = False,
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
    for name, path in paths.items():
        console.print(f"  {name}: {path}")


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
    from carspotter.report import REPORT_FILE, write_run_report

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
) -> None:
    """Car make/model/year with probabilities for each image.

    An image that cannot be read gets an error line; the others are still predicted, and the exit code is 2.
    """
    from carspotter.inference import load_classifier
    from carspotter.predict import predict_images

    results = predict_images(load_classifier(model), images, top_k=top_k, tta_flip=tta_flip)
    failed = sum("error" in r for r in results)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                err_console.print(f"[red]error:[/red] {escape(r['error'])}", highlight=False)
                continue
            console.print(f"[bold]{r['image']}[/bold]")
            for p in r["predictions"]:
                console.print(f"  {p['probability']:7.2%}  {p['class_name']}")
    if failed:  # the others were still predicted and printed; an unreadable photo is a user error, like any other
        raise typer.Exit(2)


@app.command()
def export(
    ckpt: Annotated[Path, typer.Argument(help="A carspotter checkpoint (.ckpt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The exported file (.onnx or .pte).")],
    format_: Annotated[str, typer.Option("--format", help="onnx or executorch.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="ONNX: static int8 quantisation (needs --calib).")] = False,
    calib: Annotated[Path | None, typer.Option(help="Prepared dataset whose training images calibrate --int8.")] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset whose test images check the export "
                                                   "(default: the one the checkpoint was trained on).")] = None,
    embed_preprocessing: Annotated[bool, typer.Option(
        "--embed-preprocessing", help="ONNX: the model takes uint8 RGB pixels (N×H×W×3, any size) and resizes, "
                                      "scales and normalises them itself.")] = False,
    min_agreement: Annotated[float, typer.Option(
        "--min-agreement", min=0.0, max=1.0, help="--int8: fail below this top-1 agreement with PyTorch on the "
                                                  "check images.")] = 0.95,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file at --out (a link is replaced, never "
                                                 "written through).")] = False,
    check_random: Annotated[bool, typer.Option(help="Check the export on random images when no prepared dataset "
                                                    "is at hand (else the check needs real photos: --data).")] = False,
) -> None:
    """Export a checkpoint (self-describing ONNX fp32/int8, or ExecuTorch/XNNPACK) and check it against PyTorch."""
    if format_ == "onnx" and int8:
        if calib is None:
            raise UserError("--int8 needs --calib PREPARED (a prepared dataset whose training images calibrate it)")
        from carspotter.export.quantize import export as export_int8

        report = export_int8(ckpt, out, calib=calib, embed_preprocessing=embed_preprocessing,
                             min_agreement=min_agreement, overwrite=overwrite)
    elif format_ == "onnx":
        from carspotter.export.onnx import export as export_onnx

        report = export_onnx(ckpt, out, data=data, embed_preprocessing=embed_preprocessing, overwrite=overwrite,
                             random_check=check_random)
    elif format_ == "executorch":
        if int8 or embed_preprocessing:
            raise UserError("--int8 and --embed-preprocessing are for --format onnx; the ExecuTorch export is fp32")
        from carspotter.export.executorch import export as export_executorch

        report = export_executorch(ckpt, out, data=data, overwrite=overwrite, random_check=check_random)
    else:
        raise UserError(f"unknown --format {format_!r}; choose onnx or executorch")
    console.print(f"wrote {report.path} ({report.format}, {report.size_bytes / 1e6:.1f} MB)")
    a = report.agreement
    console.print(f"check against PyTorch on {report.check_source}: max |Δ logit| {a.max_abs_diff:.2e}, "
                  f"max |Δ probability| {a.max_prob_diff:.2e}, top-1 agreement {a.top1_agreement:.1%}")


@app.command("bench-infer")
def bench_infer(
    models: Annotated[list[Path], typer.Argument(help="The same model as .ckpt, .onnx (fp32/int8) and/or .pte.")],
    data: Annotated[Path | None, typer.Option(help="Prepared dataset: also report each format's top-1.")] = None,
    split: Annotated[str, typer.Option(help="test or train.")] = "test",
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for every runtime.")] = 1,
    repeats: Annotated[int, typer.Option(min=10, help="Timed batch-1 runs per format.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Batch-1 CPU latency (median, p90), throughput and, with --data, top-1 of each format, in one run."""
    from rich.table import Table

    from carspotter.bench_infer import bench_infer as run_bench

    result = run_bench(models, data=data, split=split, threads=threads, runs=repeats)
    if as_json:
        print(json.dumps({"threads": result.threads, "runs": result.runs, "split": result.split,
                          "n": result.n_eval, "formats": [f.to_json() for f in result.formats]}, indent=2))
        return
    caption = f"img/s at batch {result.throughput_batch}" + (
        f"; top-1 on {result.n_eval} {result.split} images" if result.split is not None else "")
    table = Table(title=f"batch-1 CPU latency, {result.threads} thread(s), {result.runs} runs", caption=caption)
    for column in ("format", "median ms", "p90 ms", "× eager", "img/s", "MB"):
        table.add_column(column, justify="left" if column == "format" else "right", no_wrap=column == "format")
    if result.split is not None:
        table.add_column("top-1", justify="right")
    for f in result.formats:
        row = [f.label, f"{f.median_ms:.2f}", f"{f.p90_ms:.2f}", "n/a" if f.speedup is None else f"{f.speedup:.2f}",
               f"{f.throughput:.0f}", f"{f.size_mb:.1f}"]
        if result.split is not None:
            row.append(_pct(f.top1))
        table.add_row(*row)
    console.print(table, soft_wrap=False)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="An exported model (.onnx).")],
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    max_bytes: Annotated[int, typer.Option(help="Largest upload accepted, in bytes.")] = 10 * 1024 * 1024,
    max_pixels: Annotated[int | None, typer.Option(min=1, help="Largest image accepted, in pixels [default: "
                                                              "CARSPOTTER_MAX_PIXELS, else 40000000].")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Another site allowed to call the "
                                                          "API from its pages, e.g. https://cars.example (repeat for "
                                                          "more); other sites' requests are refused.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option("--allowed-host", help="Another name this server is "
                                                           "reached by (cars.example, *.cars.example; repeat for "
                                                           "more): requests naming any other Host are refused.")
                            ] = None,
) -> None:
    """A web page and JSON API (POST /api/predict, GET /healthz) that recognise a car from a photo (ONNX Runtime)."""
    import uvicorn

    from carspotter.serve.app import create_app
    from carspotter.serve.server import allowed_hosts, bind_socket, exit_cleanly_on_sigterm, host_name

    hosts = allowed_hosts(host, allowed_host or ())
    web_app = create_app(model, max_bytes=max_bytes, max_pixels=max_pixels, cors_origins=cors_origin or (),
                         allowed_hosts=hosts)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    exit_cleanly_on_sigterm()
    console.print(f"serving {model} on http://{host_name(host)}:{bound_port}/ (Ctrl-C stops; answers Host "
                  f"{', '.join(hosts)})", soft_wrap=True)
    uvicorn.Server(uvicorn.Config(web_app, host=host, port=bound_port, log_level="info")).run(sockets=[sock])


@app.command("app")
def app_site(
    model: Annotated[Path, typer.Argument(help="An exported model (.onnx), with or without --embed-preprocessing.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The site folder to write (new, empty, or a site built "
                                                         "before, whose own files are replaced).")],
    title: Annotated[str, typer.Option(help="The app's name on the page and on the home screen.")] = "carspotter",
    overwrite: Annotated[bool, typer.Option(help="Write into a folder holding other files (they are kept).")
                         ] = False,
) -> None:
    """A static site that recognises cars on the phone itself: an installable PWA running the model in the browser
    (onnxruntime-web), offline after the first visit. Host the folder on any static web server."""
    from carspotter.serve.site import build_site

    site = build_site(model, out, title=title, overwrite=overwrite)
    wrapped = " (preprocessing graph added: the page feeds decoded pixels)" if site.wrapped else ""
    console.print(f"wrote {site.path}: {len(site.files)} files, {site.size_bytes / 1e6:.1f} MB{wrapped}")
    console.print(f"try it: python -m http.server -d {site.path} 8000, then open http://127.0.0.1:8000/")


@app.command("app-setup")
def app_setup() -> None:
    """Fetch onnxruntime-web, the app's in-browser runtime, once (npm ci of the pinned lock file; needs npm)."""
    from carspotter.serve.web_runtime import PACKAGE, install_runtime, pinned_version

    console.print(f"{PACKAGE} {pinned_version()} ready in {install_runtime()}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its data and runs.")] = Path("demo_out"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training config (default: configs/demo.yaml).")
                      ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key.")] = None,
) -> None:
    """Synthesise a small dataset, prepare it, train briefly on the CPU, evaluate and predict one image."""
    from carspotter.demo import run_demo

    _quiet_lightning()

    result = run_demo(workdir, config, set_ or [], echo=console.print)
    console.print(
        f"\n[bold green]demo test top-1: {_pct(result.test_top1)}[/bold green] (chance {_pct(1 / result.num_classes)})"
    )


@app.command()
def models(
    profile: Annotated[bool, typer.Option("--profile", help="Measure params, MACs, weights and CPU latency.")] = False,
    image_size: Annotated[int, typer.Option("--image-size", min=32, help="Input size for --profile.")] = 227,
    classes: Annotated[int, typer.Option("--classes", min=1, help="Classifier outputs for --profile.")] = 196,
    filter_: Annotated[str | None, typer.Option("--filter", help="Pattern: 'ghostnet*' or 'timm/NAME'.")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="Runs folder (output.runs_dir): add each model's best test "
                                                       "top-1.")] = None,
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
    profiles = profile_models(names, image_size, classes, runs_dir, threads=threads)
    with_acc = runs_dir is not None
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


@app.command()
def sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Base training config (YAML).")],
    space: Annotated[Path, typer.Option(help="Search space YAML (see configs/sweeps/).")],
    trials: Annotated[int, typer.Option(min=1, help="Trials this worker runs (the study may hold more).")] = 20,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL; default sqlite:///RUNS_DIR/optuna.db. "
                                                     "A PostgreSQL/MySQL URL lets workers on several machines join.")
                       ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the space file's name); "
                                                   "workers with the same name share trials.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a base config key.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where best_config.yaml goes (default RUNS_DIR/sweeps/STUDY).")
                   ] = None,
) -> None:
    """Search hyper-parameters with Optuna (TPE, median pruning on val top-1); every trial is a tracked run."""
    from carspotter.sweeps import run_sweep

    _quiet_lightning()
    result = run_sweep(config, space, trials, storage=storage, study_name=study, overrides=set_, out_dir=out,
                       progress=True)
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items())
    console.print(f"study {result.study_name!r} ({result.storage}): {counts}")
    if result.best_value is None:
        console.print("no completed trial yet")
        return
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    console.print(f"best val top-1 {_pct(result.best_value)}: {params}", highlight=False)
    console.print(f"  run: {result.best_run_dir}")
    if result.best_config is not None:
        console.print(f"  config: {result.best_config}  (carspotter train --config {result.best_config})")
    if result.importances:
        console.print("parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items()))


@app.command()
def runs(
    plot_runs: Annotated[list[str] | None, typer.Argument(help="With --plot: the runs (folders or run ids).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="The runs folder (output.runs_dir).")] = Path("runs"),
    sort: Annotated[str | None, typer.Option(help="Column to sort by; -column for descending: -best_val_top1.")] = None,
    filter_: Annotated[
        str | None, typer.Option("--filter", help="Comma-separated COLUMN OP VALUE; OP: = != < <= > >= ~ (contains).")
    ] = None,
    columns: Annotated[str | None, typer.Option(help="Comma-separated columns to show (default: as many as fit the "
                                                      "terminal; the headers are the names --sort/--filter take).")
                       ] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the table as CSV, every column.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write the curves of the given runs, overlaid, to a PNG.")] = None,
) -> None:
    """The runs table (the thesis's dashboard): one row per run folder with its settings and best metrics.

    For a browser view: mlflow ui --backend-store-uri sqlite:///RUNS_DIR/mlflow.db
    """
    from carspotter import runs_table

    if plot is not None:
        if not plot_runs:
            raise UserError("runs --plot OUT.png needs one or more runs (folders or run ids)")
        check_output_file(plot, "plot")
        out = runs_table.plot_runs([runs_table.resolve_run(r, runs_dir) for r in plot_runs], plot)
        console.print(f"curves of {len(plot_runs)} run(s) → {out}")
        return
    if plot_runs:
        raise UserError("runs takes run arguments only with --plot OUT.png")
    chosen = runs_table.parse_columns(columns) if columns else None
    rows = runs_table.sort_runs(runs_table.filter_runs(runs_table.collect_runs(runs_dir), filter_), sort)
    if as_csv:
        print(runs_table.runs_csv(rows), end="")
        return
    _print_runs_table(rows, runs_dir, chosen)


def _print_runs_table(rows: list[dict], runs_dir: Path, columns: list[str] | None) -> None:
    from rich import box
    from rich.table import Table

    from carspotter.runs_table import COLUMNS, fit_columns, format_cell

    shown = columns or fit_columns(rows, console.width)
    table = Table(title=f"{len(rows)} run(s) in {runs_dir} (best values over epochs)", header_style="bold",
                  box=box.SIMPLE_HEAD, title_justify="left")
    for column in shown:
        table.add_column(column, justify="left" if column in ("run_id", "tags", "model") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(*(format_cell(column, row[column]) for column in shown))
    console.print(table, soft_wrap=False)  # a table is laid out for the terminal's width
    hidden = [c for c in COLUMNS if c not in shown]
    if hidden and columns is None:
        console.print(f"not shown (too narrow): {', '.join(hidden)}; --columns chooses, --csv gives all",
                      style="dim", highlight=False, soft_wrap=False)  # a note beside the table: fits its width


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (GPU/TPU lines, a litlogger advert) would drown the progress line.

    Importing Lightning sets its ``lightning`` logger to INFO and gives it a handler of its own, while the messages
    also propagate to ours: each line came twice. So import it first, then take that back: its warnings still reach
    the user once, through the root handler.
    """
    import lightning.pytorch  # noqa: F401  (its import configures the loggers undone here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


def _close_progress_bars() -> None:
    """End the lines of the progress bars an error interrupted, so the `error:` line starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.flush()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def main() -> None:
    try:
        app()
    except UserError as exc:
        _close_progress_bars()
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
