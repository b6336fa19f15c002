"""`carspotter report RUN`: one self-contained HTML page about a run, to look at rather than to parse.

Summary and config, the training curves (``results.png``, drawn from ``metrics.csv`` when the run folder lacks it),
how far to trust an answer (reliability diagram and coverage against accuracy, make and model top-1), per-class
test accuracy (a sortable table), the most confused pairs with example photos, and a grid of test photos
with their top-3 and whether the model was right. Every picture is embedded as a ``data:`` URI and the page's
Content-Security-Policy forbids any other source: it opens offline, from a mail attachment, forever.
"""

from __future__ import annotations

import base64
import html
import io
import json
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.evaluation.calibration import expected_calibration_error, trust_scores
from carspotter.evaluation.metrics import as_model_classes, check_classes
from carspotter.evaluation.plots import confused_pairs, plot_training_curves, plot_trust
from carspotter.formats.run_dir import (
    BEST_CKPT,
    CONFIG_FILE,
    CURVES_PNG,
    METRICS_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    load_run_config,
)
from carspotter.inference import Classifier, load_classifier
from carspotter.inference.predict import predict_images
from carspotter.preprocessing import open_image, softmax

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def write_run_report(
    run_dir: str | Path,
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    examples: int = 24,
    pairs: int = 10,
    seed: int = 0,
) -> Path:
    """Score the run's ``best.ckpt`` on the test split of ``data`` (default: the dataset it trained on) and write
    the page to ``out`` (default ``RUN/report.html``); returns its path."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, BEST_CKPT):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir}: not a finished run folder (no {name})")
    config_text = (run_dir / CONFIG_FILE).read_text()
    summary_path = run_dir / SUMMARY_FILE
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    curves = run_dir / CURVES_PNG
    if not curves.is_file() and (run_dir / METRICS_FILE).is_file():
        plot_training_curves(run_dir / METRICS_FILE, curves)

    classifier = load_classifier(run_dir / BEST_CKPT)
    data = Path(data if data is not None else load_run_config(run_dir).data.path)
    dataset = load_prepared(data)
    if check_classes(classifier.class_names, dataset.classes, data) == "subset":
        dataset = as_model_classes(dataset, classifier.class_names)
    test = dataset.test
    photos = [dataset.root / f for f in test["fname"]]
    truth = test["class_id"].to_numpy()
    n = len(classifier.class_names)
    predictions = predict_images(classifier, photos, top_k=n)  # every class: the calibration plots need them all
    scored = [i for i, p in enumerate(predictions) if "predictions" in p]
    confusion = np.zeros((n, n), dtype=np.int64)
    for i in scored:
        confusion[truth[i], predictions[i]["predictions"][0]["class_id"]] += 1

    top_pairs = confused_pairs(confusion, classifier.class_names, limit=pairs)
    pair_photos = {
        (p["true_id"], p["predicted_id"]): [
            photos[i]
            for i in scored
            if truth[i] == p["true_id"] and predictions[i]["predictions"][0]["class_id"] == p["predicted_id"]
        ][:3]
        for p in top_pairs
    }
    grid = sorted(random.Random(seed).sample(scored, min(examples, len(scored))))
    sections = [
        _summary_section(run_dir, summary, confusion, data),
        _curves_section(curves),
        _trust_section(classifier, [predictions[i]["predictions"] for i in scored], truth[scored]),
        _per_class_section(confusion, classifier.class_names),
        _pairs_section(top_pairs, pair_photos),
        _grid_section(
            [(photos[i], classifier.class_names[truth[i]], predictions[i]["predictions"][:3]) for i in grid]
        ),
        f"<h2>Config</h2><pre>{html.escape(config_text)}</pre>",
    ]
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_page(f"carspotter run {run_dir.name}", "\n".join(sections)))
    return out


def _data_uri(png_or_jpeg: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(png_or_jpeg).decode('ascii')}"


def _thumbnail(path: Path, size: int = 160) -> str:
    img = open_image(path)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return _data_uri(buf.getvalue(), "image/jpeg")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.2%}"


def _summary_section(run_dir: Path, summary: dict[str, Any], confusion: np.ndarray, data: Path) -> str:
    n = int(confusion.sum())
    top1 = float(np.trace(confusion) / n) if n else None
    model = summary.get("model", {})
    rows = [
        ("run", run_dir.name),
        ("model", f"{model.get('name', '?')} {json.dumps(model.get('args', {}))}"),
        ("parameters", f"{summary['num_parameters']:,}" if "num_parameters" in summary else "n/a"),
        ("epochs run (best)", f"{summary.get('epochs_run', 'n/a')} ({summary.get('best_epoch', 'n/a')})"),
        ("best val top-1", _pct(summary.get("val_top1"))),
        (f"test top-1 here ({n} photos of {data})", _pct(top1)),
        ("test top-5 at the end of training", _pct(summary.get("test_top5"))),
        ("wall time", f"{summary['wall_time_s']:.0f} s" if "wall_time_s" in summary else "n/a"),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f'<h2>Summary</h2><table class="summary">{body}</table>'


def _curves_section(curves: Path) -> str:
    if not curves.is_file():
        return "<h2>Training curves</h2><p>No epochs recorded (no metrics.csv).</p>"
    uri = _data_uri(curves.read_bytes(), "image/png")
    return f'<h2>Training curves</h2><img class="curves" alt="loss, top-1 and learning rate by epoch" src="{uri}">'


def _trust_section(classifier: Classifier, ranked: list[list[dict[str, Any]]], truth: np.ndarray) -> str:
    """The reliability diagram and coverage against accuracy of the test photos, with the calibration's figures."""
    if not ranked:
        return ""
    probs = np.zeros((len(ranked), len(classifier.class_names)))
    for row, preds in zip(probs, ranked, strict=True):
        row[[p["class_id"] for p in preds]] = [p["probability"] for p in preds]
    cal = classifier.calibration
    raw = softmax(cal.temperature * np.log(np.maximum(probs, 1e-38)))  # the softmax before the temperature
    scores = trust_scores(np.log(np.maximum(probs, 1e-38)), truth, classifier.classes, replace(cal, temperature=1.0))
    title = f"test split: ECE {scores['ece']:.3f} (uncalibrated {expected_calibration_error(raw, truth):.3f})"
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_trust(probs, raw, truth, cal.min_confidence, title, Path(tmp) / "trust.png")
        uri = _data_uri(png.read_bytes(), "image/png")
    if cal.fitted:
        said = (
            f"Temperature {cal.temperature:.3g}, fitted on the {html.escape(cal.fitted_on)}; answers below "
            f"{cal.min_confidence:.2f} are marked not sure: on the test split that answers "
            f"{_pct(scores['coverage'])} of the photos, {_pct(scores['answered_top1'])} of them right."
        )
    else:
        said = "This checkpoint has no calibration (temperature 1): run `carspotter calibrate` on its run folder."
    return (
        "<h2>How far to trust an answer</h2>"
        f"<p>Make top-1 {_pct(scores['make_top1'])}, model top-1 (any year) {_pct(scores['model_top1'])}, "
        f"balanced top-1 {_pct(scores['balanced_top1'])}. {said}</p>"
        f'<img class="curves" alt="reliability diagram and coverage against accuracy" src="{uri}">'
    )


def _per_class_section(confusion: np.ndarray, class_names: list[str]) -> str:
    totals = confusion.sum(axis=1)
    rows = []
    for i, name in enumerate(class_names):
        acc = confusion[i, i] / totals[i] if totals[i] else float("nan")
        value = "" if np.isnan(acc) else f"{acc:.4f}"
        rows.append(
            f"<tr><td data-value='{i}'>{i}</td><td>{html.escape(name)}</td>"
            f"<td data-value='{totals[i]}'>{totals[i]}</td><td data-value='{value}'>{_pct(float(acc))}</td></tr>"
        )
    return (
        "<h2>Per-class test accuracy</h2><p>Click a column header to sort.</p>"
        '<table class="sortable" id="per-class"><thead><tr><th>id</th><th>class</th><th>photos</th>'
        f"<th>accuracy</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _pairs_section(pairs: list[dict[str, Any]], photos: dict[tuple[int, int], list[Path]]) -> str:
    if not pairs:
        return "<h2>Most confused pairs</h2><p>No mistakes on the test split.</p>"
    items = []
    for p in pairs:
        images = "".join(
            f'<img alt="{html.escape(path.name)}" src="{_thumbnail(path)}">'
            for path in photos[(p["true_id"], p["predicted_id"])]
        )
        items.append(
            f"<li><b>{html.escape(p['true_name'])}</b> taken for <b>{html.escape(p['predicted_name'])}</b>: "
            f"{p['count']} photo(s), {p['share']:.0%} of the class<div class='photos'>{images}</div></li>"
        )
    return f"<h2>Most confused pairs</h2><ol class='pairs'>{''.join(items)}</ol>"


def _grid_section(cells: list[tuple[Path, str, list[dict[str, Any]]]]) -> str:
    figures = []
    for path, true_name, top3 in cells:
        right = top3[0]["class_name"] == true_name
        ranked = "".join(f"<li>{p['probability']:.0%} {html.escape(p['class_name'])}</li>" for p in top3)
        figures.append(
            f"<figure class='{'right' if right else 'wrong'}'><img alt='{html.escape(path.name)}' "
            f"src='{_thumbnail(path)}'><figcaption>{'right' if right else 'wrong'}: {html.escape(true_name)}"
            f"<ol>{ranked}</ol></figcaption></figure>"
        )
    return f"<h2>Test photos and their top-3</h2><div class='grid'>{''.join(figures)}</div>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; } th, td { padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd; }
table.sortable th { cursor: pointer; background: #f3f3f3; } img.curves { max-width: 100%; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
figure { margin: 0; padding: 6px; border: 3px solid; font-size: 12px; } figure ol { padding-left: 1.4em; margin: 0; }
figure.right { border-color: #3a3; } figure.wrong { border-color: #c33; }
.photos img { margin: 4px 4px 0 0; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""

_SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const ascending = th.dataset.order !== "asc";
  th.dataset.order = ascending ? "asc" : "desc";
  const key = (row) => {
    const cell = row.cells[col];
    const number = parseFloat(cell.dataset.value);
    return cell.dataset.value === undefined ? cell.textContent : (isNaN(number) ? -Infinity : number);
  };
  [...body.rows]
    .sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (ascending ? 1 : -1))
    .forEach((row) => body.appendChild(row));
}));
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n<script>{_SORT_SCRIPT}</script></body></html>\n"
    )
