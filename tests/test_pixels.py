"""Models that travel: preprocessing inside the ONNX graph (uint8 pixels of any size in, logits out), checked on
real photos in ONNX Runtime and in onnx's reference evaluator; portable int8 and its `--min-agreement` gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from ranking_support import assert_ranking_matches
from synthetic_support import CARSPOTTER

from carspotter.errors import UserError
from carspotter.evaluation.metrics import evaluate_on_dataset
from carspotter.inference import load_classifier
from carspotter.inference.onnx_backend import OnnxClassifier
from carspotter.inference.predict import predict_images
from carspotter.preprocessing import open_image, softmax


@pytest.fixture(scope="module")
def pixels_onnx(responsive_checkpoint: Path, synthetic_prepared: Path, tmp_path_factory) -> Path:
    from carspotter.export.onnx import export

    out = tmp_path_factory.mktemp("pixels") / "model-pixels.onnx"
    report = export(responsive_checkpoint, out, data=synthetic_prepared, embed_preprocessing=True)
    assert report.agreement.max_prob_diff <= 1e-2
    return out


def test_pixels_model_describes_its_input(pixels_onnx: Path) -> None:
    proto = onnx.load(str(pixels_onnx))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    (graph_input,) = proto.graph.input
    assert graph_input.name == meta["input_name"] == "pixels"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [
        "batch",
        "height",
        "width",
        3,
    ]
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["channel_order"] == "RGB"
    assert meta["input"]["graph_does"]["resize"]["antialias"] is True and meta["format_version"] == 2
    assert "uint8 RGB pixels, layout NHWC" in proto.doc_string
    resize = next(n for n in proto.graph.node if n.op_type == "Resize")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}["antialias"] == 1


@pytest.mark.realdata
def test_pixels_model_matches_predict_on_real_photos(
    stanford_shared: Path, responsive_checkpoint: Path, pixels_onnx: Path
) -> None:
    """Every real sample photo, PIL-decoded at its own size, straight into the model: same top-1 as `predict` on the
    checkpoint (up to ties within the numerical difference, `ranking_support`), probabilities within 1e-2, in ONNX
    Runtime and in onnx's reference evaluator."""
    photos = sorted((stanford_shared / "sample" / "images").glob("*.jpg"))
    assert len(photos) > 400
    expected = predict_images(load_classifier(responsive_checkpoint), photos, top_k=1000)
    want = np.array(
        [[p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class_id"])] for r in expected]
    )
    session = OnnxClassifier(pixels_onnx)
    pixels = [np.asarray(open_image(p))[None] for p in photos]
    assert len({x.shape for x in pixels}) > 50  # photos of many sizes, none resized by the client
    evaluator = ReferenceEvaluator(str(pixels_onnx))
    some = range(0, len(photos), 14)  # the reference evaluator is plain NumPy: every 14th photo
    for consumer, indices, logits in (
        ("ONNX Runtime", range(len(photos)), lambda i: session.logits(pixels[i])),
        ("onnx ReferenceEvaluator", some, lambda i: evaluator.run(None, {"pixels": pixels[i]})[0]),
    ):
        results = []
        for i in indices:
            probs = softmax(logits(i) / session.calibration.temperature)[0]  # as predict: the stored temperature
            top1 = int(probs.argmax())
            diff = float(np.abs(probs - want[i]).max())
            shown = [(top1, float(probs[top1]))]
            results.append(assert_ranking_matches(shown, dict(enumerate(want[i])), photos[i].name, diff))
        print(
            f"\n{consumer}, {len(results)} photos: max |Δ probability| = {max(d for d, _ in results):.2e}, "
            f"top-1 equal on all but {sum(s for _, s in results)} (ties within twice that)"
        )


def test_pixels_model_through_predict_and_bench(
    responsive_checkpoint: Path, pixels_onnx: Path, synthetic_prepared: Path
) -> None:
    from carspotter.data.prepared import load_prepared
    from carspotter.inference.bench_infer import bench_infer

    images = [synthetic_prepared / f for f in load_prepared(synthetic_prepared).test["fname"][:4]]
    a = predict_images(load_classifier(responsive_checkpoint), images, top_k=3)
    b = predict_images(load_classifier(pixels_onnx), images, top_k=3)
    assert [p["class_id"] for r in a for p in r["predictions"]] == [p["class_id"] for r in b for p in r["predictions"]]
    result = bench_infer([pixels_onnx, responsive_checkpoint], data=synthetic_prepared, runs=10, warmup=1)
    eager, pixels = result.formats
    assert pixels.label == "onnx-fp32-pixels" and pixels.top1 == eager.top1
    with pytest.raises(UserError, match="resizes photos itself.*bench-infer --data"):
        evaluate_on_dataset(pixels_onnx, synthetic_prepared, progress=False)


@pytest.mark.slow
def test_int8_is_portable(int8_pixels: tuple[Path, object]) -> None:
    out, _ = int8_pixels
    proto = onnx.load(str(out))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 21)]
    assert any(n.op_type == "DequantizeLinear" for n in proto.graph.node)
    x = np.random.default_rng(0).integers(0, 256, (1, 90, 130, 3), dtype=np.uint8)
    ort_logits = OnnxClassifier(out).logits(x)
    ref_logits = ReferenceEvaluator(str(out)).run(None, {"pixels": x})[0]
    # The two runtimes' Resize may land a pixel a level apart at a rounding tie, which can move an int8 activation
    # by one quantisation step: the logits may differ by a couple of steps of the last quantised activation (its
    # size depends on the trained model's logit range), never more, and the answer is the same.
    step = last_activation_step(proto)
    np.testing.assert_allclose(ref_logits, ort_logits, atol=2.01 * step)
    # the same answer, up to classes tied within those steps (a 2-epoch test model's logits are close together)
    assert ort_logits[0, ref_logits.argmax()] >= ort_logits.max() - 2.01 * step


def last_activation_step(proto: onnx.ModelProto) -> float:
    """The quantisation step (scale) of the last int8 activation in the graph: the resolution of the logits."""
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    last = next(n for n in reversed(proto.graph.node) if n.op_type == "DequantizeLinear" and n.input[0] not in weights)
    return float(np.max(weights[last.input[1]]))


@pytest.fixture(scope="module")
def int8_pixels(trained_checkpoint: Path, synthetic_prepared: Path, tmp_path_factory):
    from carspotter.export.quantize import export

    out = tmp_path_factory.mktemp("int8px") / "int8-pixels.onnx"
    report = export(trained_checkpoint, out, calib=synthetic_prepared, embed_preprocessing=True, min_agreement=0.5)
    return out, report


def test_min_agreement_fails_the_export_with_the_measured_figure(
    trained_checkpoint: Path, synthetic_prepared: Path, int8_pixels, tmp_path: Path
) -> None:
    from carspotter.export.onnx import Agreement
    from carspotter.export.quantize import require_agreement

    _, report = int8_pixels
    agreement = report.agreement.top1_agreement
    print(f"\nint8 top-1 agreement with PyTorch: {agreement:.1%}")
    assert OnnxClassifier(int8_pixels[0]).takes_pixels and agreement >= 0.5
    out = tmp_path / "strict.onnx"
    # This small model's int8 agrees on every check photo; the gate itself, at the 87.5%:
    with pytest.raises(
        UserError,
        match=r"int8 top-1 agreement with PyTorch is 87\.5% on 64 test images of x, below "
        r"--min-agreement 95%; .*strict.onnx not written",
    ):
        require_agreement(Agreement(0.4, 0.2, 0.875), 0.95, "64 test images of x", out)
    require_agreement(Agreement(0.4, 0.2, 0.875), 0.85, "64 test images of x", out)
    cli = [*CARSPOTTER, "export", str(trained_checkpoint), "--int8", "--calib", str(synthetic_prepared),
           "--min-agreement", "1.5", "-o", str(out)]  # fmt: skip
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "min-agreement" in proc.stderr


def test_readme_snippet_runs_with_plain_onnxruntime(
    pixels_onnx: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """The documentation's five lines (docs/deployment.md), verbatim, in a fresh interpreter: the top-1 class name,
    as `predict` says."""
    from carspotter.data.prepared import load_prepared

    readme = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    start = readme.index("  import json, numpy as np, onnxruntime as ort")
    snippet = "\n".join(line[2:] for line in readme[start : readme.index("```", start)].splitlines())
    assert len(snippet.strip().splitlines()) == 5
    photo = synthetic_prepared / load_prepared(synthetic_prepared).test["fname"].iloc[0]
    (tmp_path / "car.jpg").write_bytes(photo.read_bytes())
    (tmp_path / "model-pixels.onnx").write_bytes(pixels_onnx.read_bytes())
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (expected,) = predict_images(load_classifier(pixels_onnx), [photo], top_k=1)
    assert proc.stdout.strip() == expected["predictions"][0]["class_name"]
