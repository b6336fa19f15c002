"""Getting the data: `prepare`, `stats`, `synth`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from carspotter.cli._app import DEFAULT_SIDE, app, console, err_console
from carspotter.errors import UserError
from carspotter.writable import check_output_file, check_writable


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
    image_size: Annotated[int, typer.Option(min=1, help="Resize to this square size first, as training does.")] = (
        DEFAULT_SIDE
    ),
    grayscale: Annotated[bool, typer.Option(help="Statistics of the grayscale images (data.grayscale).")] = False,
    plot: Annotated[Path | None, typer.Option(help="Class counts and image sizes PNG "
                                                   "(default: PREPARED-stats.png beside the folder).")] = None,
) -> None:
    """Exact per-channel mean and std of the training split (all pixels, after resizing), and a PNG of the data.

    Prints a snippet to paste into a training config (data.mean, data.std).
    """
    from carspotter.data.balance import IMBALANCED, imbalance
    from carspotter.data.stats import compute_stats, plot_stats

    if plot is not None:  # a plot asked for by name must be writable: said before the work, not after
        check_output_file(plot, "plot")
    result = compute_stats(prepared, image_size=image_size, grayscale=grayscale)
    counts = list(result.class_counts["train"].values())
    ratio = imbalance(counts)
    err_console.print(f"{result.num_images} training images, {len(counts)} classes ({min(counts)} to {max(counts)} "
                      f"images each; largest/smallest class {ratio:.1f}x)", highlight=False)
    if ratio >= IMBALANCED:
        err_console.print("[yellow]note[/yellow]: the classes are unbalanced; data.class_balance: sampler (draw every "
                          "class equally often) or loss (weight the loss by 1/frequency) may help the rare ones, "
                          "and evaluate's balanced top-1 tells", highlight=False)
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
