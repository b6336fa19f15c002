"""Training and its runs: `train`, `sweep`, `runs`, `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from carspotter.cli._app import _pct, _quiet_lightning, app, console, err_console
from carspotter.defaults import ENROLL_MAX_OLD_LOSS
from carspotter.errors import UserError
from carspotter.writable import check_output_file


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set trainer.max_epochs=2")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its folder.")] = None,
) -> None:
    """Train a model; writes a run folder with checkpoints, metrics.csv and summary.json.

    --resume RUN_DIR continues an interrupted run (Ctrl-C, kill -9, a crash) from its last.ckpt: an epoch cut short is
    re-done from its start, and with the same trainer.max_epochs the result equals the uninterrupted run (each
    epoch's order, augmentation and dropout are drawn from (seed, epoch) alone). With --resume, --set may change only
    trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches and data.num_workers.
    """
    from carspotter.config import load_config
    from carspotter.formats.run_dir import load_run_config
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
def enroll(
    ckpt: Annotated[Path, typer.Argument(help="The checkpoint (.ckpt) to add classes to; it is never changed.")],
    photos: Annotated[Path, typer.Argument(help="A folder per new class: PHOTOS/<class name>/<photos> (1 or more).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new checkpoint (.ckpt).")],
    replace: Annotated[bool, typer.Option("--replace", help="Re-imprint a class the model has already.")] = False,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Average each photo's embedding with its mirror "
                                                                 "image's.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    reference: Annotated[Path | None, typer.Option(help="Prepared dataset of the model's own classes, to fit the new "
                                                        "rows to (default: its training data, when present).")
                         ] = None,
    max_old_loss: Annotated[float, typer.Option(min=0.0, max=0.99, help="The share of the reference photos the new "
                                                    "classes may take from the old ones (0.01: one point).")
                            ] = ENROLL_MAX_OLD_LOSS,
) -> None:
    """Add car models from a few photos each, without retraining: each new class gets a classifier row imprinted
    from its photos' mean embedding (Qi et al. 2018); the model's other classes are untouched.

    The result is an ordinary checkpoint: predict, evaluate, export, serve, app and fine-tuning take it.
    """
    from carspotter.training.enroll import enroll as enroll_classes

    report = enroll_classes(ckpt, photos, out, replace=replace, flip=flip, overwrite=overwrite, reference=reference,
                            max_old_loss=max_old_loss, progress=True)  # fmt: skip
    for e in report.enrolled:
        verb = "re-imprinted" if e["replaced"] else "enrolled"
        console.print(f"{verb} {escape(e['class_name'])} from {e['photos']} photo(s)", highlight=False)
    for line in report.unreadable:
        err_console.print(f"skipped: {escape(line)}", highlight=False)
    fitted = f"fitted to {report.reference}" if report.reference else "norm-matched (no reference photos)"
    console.print(f"{report.out}: {report.num_classes} classes; new rows {fitted}", highlight=False)
    if report.reference_top1 is not None:
        before, after = report.reference_top1
        console.print(f"old classes on the reference photos: top-1 {_pct(before)} before, {_pct(after)} after "
                      f"(new rows' bias lowered by {report.bias_shift:.3g})", highlight=False)  # fmt: skip

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
    from carspotter.experiments.sweeps import run_sweep

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
    from carspotter.experiments import runs_table

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

    from carspotter.experiments.runs_table import COLUMNS, fit_columns, format_cell

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
