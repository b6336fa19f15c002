"""Exported models: ONNX fp32 round-trip parity with its metadata, int8 close to fp32, ExecuTorch parity, the
torch-free ONNX predict path, and `bench-infer`'s table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from synthetic_support import CARSPOTTER

from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.export.onnx import FP32_TOLERANCE
from carspotter.inference import load_classifier
from carspotter.inference.inputs import prepared_images, prepared_inputs
from carspotter.inference.onnx_backend import OnnxClassifier
from carspotter.inference.predict import predict_images
from carspotter.inference.torch_backend import TorchClassifier, load_checkpoint


@pytest.fixture(scope="module")
def test_images(synthetic_prepared: Path, trained_checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    _, info = load_checkpoint(trained_checkpoint)
    return prepared_inputs(synthetic_prepared, "test", info.preprocessing)


@pytest.fixture(scope="module")
def int8_onnx(trained_checkpoint: Path, exported_onnx: Path, synthetic_prepared: Path, tmp_path_factory) -> Path:
    from carspotter.export.quantize import export

    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    # A 2-epoch model is unsure of itself: int8 rounding flips some of its close calls, so the default gate is lowered.
    report = export(trained_checkpoint, out, calib=synthetic_prepared, fp32=exported_onnx, min_agreement=0.5)
    assert report.format == "onnx-int8" and out.is_file()
    return out


def test_onnx_fp32_round_trip_matches_pytorch(trained_checkpoint: Path, exported_onnx: Path, test_images) -> None:
    x, _ = test_images
    torch_clf, onnx_clf = TorchClassifier.from_checkpoint(trained_checkpoint), OnnxClassifier(exported_onnx)
    diff = np.abs(torch_clf.logits(x) - onnx_clf.logits(x)).max()
    assert diff < FP32_TOLERANCE
    # The batch axis is dynamic: one image and an odd batch give the same logits as the full batch.
    np.testing.assert_allclose(onnx_clf.logits(x[:1]), onnx_clf.logits(x)[:1], atol=1e-5)
    np.testing.assert_allclose(onnx_clf.logits(x[:3]), onnx_clf.logits(x)[:3], atol=1e-5)


def test_onnx_describes_itself(trained_checkpoint: Path, exported_onnx: Path) -> None:
    _, info = load_checkpoint(trained_checkpoint)
    proto = onnx.load(str(exported_onnx))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["class_names"] == info.class_names
    assert meta["preprocessing"] == info.preprocessing.to_dict()
    assert meta["channels"] == 3 and meta["preprocessing"]["resize"] == "stretch"
    assert any(o.domain in ("", "ai.onnx") and o.version == meta["runtime"]["opset"] for o in proto.opset_import)
    source = meta["source_checkpoint"]
    assert source == {"name": trained_checkpoint.name, "sha256": source["sha256"]} and len(source["sha256"]) == 64
    assert str(trained_checkpoint.parent) not in str(proto.metadata_props) + proto.doc_string  # no local paths
    assert meta["input"]["layout"] == "NCHW" and meta["input"]["client_must"]["resize"]["antialias"] is True
    assert meta["input"]["client_must"]["scale"].startswith("x / 255") and meta["input"]["channel_order"] == "RGB"
    assert "float32 NCHW" in proto.doc_string and "mean" in proto.doc_string
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"], "BN must be folded"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch axis must be dynamic"
    clf = OnnxClassifier(exported_onnx)
    assert clf.preprocessing == info.preprocessing and clf.class_names == info.class_names


def test_onnx_and_checkpoint_predict_alike(trained_checkpoint: Path, exported_onnx: Path, synthetic_prepared) -> None:
    images = [synthetic_prepared / f for f in load_prepared(synthetic_prepared).test["fname"][:4]]
    a = predict_images(load_classifier(trained_checkpoint), images, top_k=3)
    b = predict_images(load_classifier(exported_onnx), images, top_k=3)
    for ra, rb in zip(a, b, strict=True):
        assert [p["class_id"] for p in ra["predictions"]] == [p["class_id"] for p in rb["predictions"]]
        assert ra["predictions"][0]["probability"] == pytest.approx(rb["predictions"][0]["probability"], abs=1e-4)


def test_onnx_predict_imports_no_torch(exported_onnx: Path, synthetic_prepared: Path) -> None:
    image = synthetic_prepared / load_prepared(synthetic_prepared).test["fname"].iloc[0]
    code = (
        "import sys, json, io, contextlib\n"
        "from carspotter.cli import main\n"
        f"sys.argv = ['carspotter', 'predict', {str(exported_onnx)!r}, {str(image)!r}, '--json']\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'lightning', 'timm') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'out': json.loads(buf.getvalue())}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    (entry,) = result["out"]
    assert entry["image"] == str(image) and len(entry["predictions"]) == 5
    assert set(entry["predictions"][0]) == {"class_id", "class_name", "probability"}


def test_int8_top1_stays_close_to_fp32(exported_onnx: Path, int8_onnx: Path, test_images) -> None:
    x, y = test_images
    fp32, int8 = OnnxClassifier(exported_onnx), OnnxClassifier(int8_onnx)
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert int8_onnx.stat().st_size < 0.5 * exported_onnx.stat().st_size
    assert any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in onnx.load(str(int8_onnx)).graph.node)
    p32, p8 = fp32.logits(x).argmax(1), int8.logits(x).argmax(1)
    assert (p32 == p8).mean() >= 0.85
    assert abs((p32 == y).mean() - (p8 == y).mean()) <= 0.1


def test_bench_infer_times_every_format(trained_checkpoint, exported_onnx, int8_onnx, synthetic_prepared) -> None:
    from carspotter.inference.bench_infer import bench_infer

    result = bench_infer([exported_onnx, int8_onnx, trained_checkpoint], data=synthetic_prepared, runs=20, warmup=2)
    labels = [f.label for f in result.formats]
    assert labels == ["pytorch-eager", "onnx-fp32", "onnx-int8"]  # eager first, the reference of the ratios
    eager, fp32, int8 = result.formats
    assert eager.speedup == 1.0  # the reference of the ratios, measured in this run
    for f in result.formats:  # a format faster than eager has a ratio above 1, a slower one below
        assert (f.speedup > 1.0) == (f.median_ms < eager.median_ms) and f.speedup > 0
    assert all(f.median_ms > 0 and f.p90_ms >= f.median_ms and f.throughput > 0 for f in result.formats)
    assert fp32.top1 == eager.top1  # parity: same predictions on every test image
    assert result.n_eval == len(load_prepared(synthetic_prepared).test)
    # eager's MB is its weights, like the exports' (the .ckpt file also holds the optimizer state)
    assert eager.size_mb == pytest.approx(fp32.size_mb, rel=0.1)
    assert eager.size_mb < trained_checkpoint.stat().st_size / 1e6


def test_export_mistakes_are_one_line_errors(trained_checkpoint: Path, tmp_path: Path) -> None:
    from carspotter.export.onnx import export

    with pytest.raises(UserError, match="must end in .onnx"):
        export(trained_checkpoint, tmp_path / "model.bin")
    not_ours = tmp_path / "foreign.onnx"
    h = onnx.helper
    io = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("x", "y")]
    onnx.save_model(
        h.make_model(h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:])), str(not_ours)
    )
    with pytest.raises(UserError, match="not a carspotter export"):
        OnnxClassifier(not_ours)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        load_classifier(junk)
    cli = [*CARSPOTTER, "export", str(trained_checkpoint), "--int8", "-o", str(tmp_path / "q.onnx")]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--int8 needs --calib" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_executorch_round_trip_matches_pytorch(
    responsive_checkpoint: Path, exported_pte: Path, synthetic_prepared: Path, tmp_path: Path,
    capfd: pytest.CaptureFixture,
) -> None:
    from carspotter.inference.executorch_backend import ExecuTorchClassifier

    out = exported_pte
    assert out.with_name("model.pte.json").is_file()
    images, _ = prepared_images(synthetic_prepared, "test", limit=8)
    capfd.readouterr()
    et = ExecuTorchClassifier(out)
    quiet = capfd.readouterr()
    assert "midr" not in quiet.err and "KernelPreference" not in quiet.err, quiet.err  # the runtime's cpuinfo probe
    broken = tmp_path / "broken.pte"
    broken.write_bytes(out.read_bytes()[:1000])
    (tmp_path / "broken.pte.json").write_text(out.with_name("model.pte.json").read_text())
    with pytest.raises(UserError, match="broken.pte: ExecuTorch cannot load"):
        ExecuTorchClassifier(broken)
    assert "File size is too small" in capfd.readouterr().err  # on failure the runtime's own words are shown
    reference = TorchClassifier.from_checkpoint(responsive_checkpoint)
    assert np.abs(reference.image_logits(images) - et.image_logits(images)).max() < 1e-3
    _, info = load_checkpoint(responsive_checkpoint)
    assert et.class_names == info.class_names and et.preprocessing == info.preprocessing


def test_export_replaces_a_file_only_when_told_and_never_writes_through_a_link(
    trained_checkpoint: Path, synthetic_prepared: Path, tmp_path: Path
) -> None:
    """Issue 35, item 5: `export -o` over an existing file overwrote it silently, and over a link wrote through it."""
    from carspotter.export.onnx import export

    target = tmp_path / "elsewhere.onnx"
    target.write_text("the link's target")
    link = tmp_path / "model.onnx"
    link.symlink_to(target)
    with pytest.raises(UserError, match="model.onnx: a symbolic link of that name exists; --overwrite replaces it"):
        export(trained_checkpoint, link, data=synthetic_prepared)
    report = export(trained_checkpoint, link, data=synthetic_prepared, overwrite=True)
    assert not link.is_symlink() and target.read_text() == "the link's target"
    assert OnnxClassifier(report.path).class_names == load_prepared(synthetic_prepared).classes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.onnx", "model.onnx"]  # no staging left behind
