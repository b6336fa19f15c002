"""The demo: synth → prepare → short CPU training → evaluate → predict, on the embedded synthetic dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carspotter.config import load_config, packaged_configs

DEMO_CLASSES = 10
DEMO_PER_CLASS = 100
DEMO_SEED = 0


def default_demo_config() -> Path:
    """``configs/demo.yaml`` as packaged with carspotter (a pip install has it too)."""
    return packaged_configs()["demo"]


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    test_top1: float | None
    num_classes: int
    prediction: dict


def run_demo(
    workdir: Path, config: Path | None, overrides: list[str], echo: Callable[[str], None] = print
) -> DemoResult:
    from carspotter.data.prepare import prepare
    from carspotter.data.synth import synthesize
    from carspotter.evaluation.metrics import evaluate_on_dataset, write_report
    from carspotter.inference import load_classifier
    from carspotter.inference.predict import predict_images
    from carspotter.training.run import train

    workdir = Path(workdir)
    raw, prepared = workdir / "raw", workdir / "prepared"
    if not (raw / "cars_annos.mat").is_file():
        echo(f"1/5 synthesising {DEMO_CLASSES} car classes × {DEMO_PER_CLASS} images (updated layout) → {raw}")
        synthesize(raw, layout="updated", num_classes=DEMO_CLASSES, per_class=DEMO_PER_CLASS, seed=DEMO_SEED)
    else:
        echo(f"1/5 synthetic raw data already in {raw}")
    echo(f"2/5 preparing → {prepared}")
    prepare(raw, prepared)
    cfg = load_config(
        config or default_demo_config(), [f"data.path={prepared}", f"output.runs_dir={workdir / 'runs'}", *overrides]
    )
    echo(f"3/5 training {cfg.model.name} for {cfg.trainer.max_epochs} epochs on the CPU")
    result = train(cfg)
    echo(f"    run folder: {result.run_dir}")
    echo("4/5 evaluating the selected checkpoint on the test split")
    evaluation = evaluate_on_dataset(result.best_ckpt, prepared, "test", progress=False)
    report = write_report(evaluation, result.run_dir / "eval-test")
    echo(
        f"    top-1 {evaluation.top1:.2%}, top-5 {evaluation.top5:.2%} on {evaluation.n} test images; "
        f"confusion matrix: {report['confusion_png']}"
    )
    from carspotter.data.prepared import load_prepared

    sample = load_prepared(prepared).test.iloc[0]
    image = prepared / sample["fname"]
    prediction = predict_images(load_classifier(result.best_ckpt), [image], top_k=3)[0]
    best = prediction["predictions"][0]
    echo(f"5/5 predicted {image}: {best['class_name']} ({best['probability']:.1%}); true: {sample['class_name']}")
    return DemoResult(result.run_dir, evaluation.top1, len(evaluation.class_names), prediction)
