"""Pretrained initialisation from local files: timm/torchvision state dicts and carspotter checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from carspotter.errors import UserError
from carspotter.models import create_model
from carspotter.models.weights import init_from_weights

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_timm_state_dict_with_changed_class_count(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    source = timm.create_model("ghostnet_100", pretrained=False, num_classes=1000)
    path = tmp_path / "ghostnet_100_imagenet.pth"
    torch.save(source.state_dict(), path)

    model = create_model("ghostnet_100", num_classes=196)
    fresh_classifier = model.classifier.weight.clone()
    report = init_from_weights(model, path)

    assert report.new == ["classifier.weight", "classifier.bias"]
    assert report.skipped == ["classifier.weight", "classifier.bias"]
    assert report.source_num_classes == 1000
    assert len(report.loaded) == len(model.state_dict()) - 2 and not report.unused
    ours, theirs = model.state_dict(), source.state_dict()
    assert all(_equal(ours[k], theirs[k]) for k in report.loaded)
    assert _equal(model.classifier.weight, fresh_classifier)  # the new head keeps its fresh initialisation
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 196)
    assert "classifier.weight" in str(report)


def test_carspotter_checkpoint_to_new_classes_and_grayscale(tmp_path: Path) -> None:
    """A Stanford Cars checkpoint fine-tuned on a user's 5 grayscale classes: backbone and hidden layer carry over."""
    source = create_model("ghostnet_thesis", num_classes=196, hidden_channels=320)
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
        "carspotter": {
            "format_version": 1,
            "model": {"name": "ghostnet_thesis", "args": {"hidden_channels": 320}, "num_classes": 196, "in_chans": 3},
            "class_names": [f"class {i}" for i in range(196)],
            "preprocessing": {},
            "config": {},
        },
        "epoch": 3,
    }
    path = tmp_path / "best.ckpt"
    torch.save(ckpt, path)

    model = create_model("ghostnet_thesis", num_classes=5, in_chans=1, hidden_channels=320)
    report = init_from_weights(model, path)

    assert "ghostnet_thesis" in report.source and report.source_num_classes == 196
    assert report.new == ["classifier.weight", "classifier.bias"]
    assert report.adapted == ["conv_stem.weight"]
    assert "head_fc.weight" in report.loaded and "head_bn.running_var" in report.loaded
    src = source.state_dict()
    assert _equal(model.head_fc.weight, src["head_fc.weight"])
    assert _equal(model.blocks[9][0].conv.weight, src["blocks.9.0.conv.weight"])
    assert torch.allclose(model.conv_stem.weight, src["conv_stem.weight"].sum(1, keepdim=True))


def test_torchvision_state_dict(tmp_path: Path) -> None:
    source = torchvision.models.squeezenet1_1(num_classes=1000)
    path = tmp_path / "squeezenet1_1.pth"
    torch.save({"model": source.state_dict()}, path)
    model = create_model("squeezenet1_1", num_classes=10)
    report = init_from_weights(model, path)
    assert report.new == ["classifier.1.weight", "classifier.1.bias"]
    assert _equal(model.features[0].weight, source.features[0].weight)


def test_same_class_count_loads_everything(tmp_path: Path) -> None:
    source = create_model("shufflenetv2_050", num_classes=196)
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = create_model("shufflenetv2_050", num_classes=196)
    report = init_from_weights(model, path)
    assert not report.new and not report.skipped
    assert all(_equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values(), strict=True))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        init_from_weights(create_model("ghostnet_050"), tmp_path / "nope.pth")


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        init_from_weights(create_model("ghostnet_050"), path)


def test_other_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g100.pth"
    torch.save(create_model("ghostnet_100").state_dict(), path)
    with pytest.raises(UserError, match="other shapes"):
        init_from_weights(create_model("ghostnet_050"), path)
    with pytest.raises(UserError, match="no tensor name matches"):
        init_from_weights(create_model("squeezenet1_1"), path)


def test_real_training_checkpoint(trained_checkpoint: Path) -> None:
    """A checkpoint written by `carspotter train` (the demo's ghostnet_thesis) starts a 3-class fine-tune."""
    meta = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)["carspotter"]["model"]
    model = create_model(meta["name"], num_classes=3, in_chans=meta["in_chans"], **meta["args"])
    report = init_from_weights(model, trained_checkpoint)
    assert meta["name"] in report.source
    assert report.new == ["classifier.weight", "classifier.bias"] and not report.adapted
    assert len(report.loaded) == len(model.state_dict()) - 2


# ------------------------------------------------------------------------------------- weights by Hub name


def _hub_cache_with(cache: Path, repo_id: str, tensors: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face cache (`HF_HUB_CACHE`) holding ``repo_id``'s ``model.safetensors`` at ``main``, laid out as
    `huggingface_hub` leaves it after a download: ``models--OWNER--NAME/{refs/main, snapshots/COMMIT/...}``."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


def test_hub_weights_by_name_train_offline_from_the_cache(synthetic_prepared: Path, tmp_path: Path) -> None:
    """Issue 34, item 5: `model.pretrained: hf-hub:timm/ghostnet_100.in1k` is read from the standard cache (filled
    here with a timm GhostNet's own tensors, as a download leaves them) with HF_HUB_OFFLINE=1, through the same
    loading as a local file: backbone from the file, a new classifier for the dataset's classes."""
    timm = pytest.importorskip("timm")
    import subprocess

    source = timm.create_model("ghostnet_100", pretrained=False, num_classes=1000)
    _hub_cache_with(tmp_path / "hub", "timm/ghostnet_100.in1k", source.state_dict())
    cmd = _hub_train_command(synthetic_prepared, tmp_path / "runs", "trainer.max_epochs=1", "data.image_size=32",
                             "trainer.limit_train_batches=1", "optimizer.params.lr=0.0", "logging.loggers=[csv]",
                             "data.num_workers=0")  # fmt: skip
    done = subprocess.run(cmd, env=_offline_env(tmp_path / "hub"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pretrained weights from hf-hub:timm/ghostnet_100.in1k: state dict: loaded" in done.stderr
    assert "new (file has 1000 classes): classifier.weight, classifier.bias" in done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    trained = ckpt.get("raw_state_dict", ckpt["state_dict"])
    assert _equal(trained["model.conv_stem.weight"], source.state_dict()["conv_stem.weight"])  # lr 0: as loaded


def test_hub_weights_offline_without_a_cached_copy_is_one_line(synthetic_prepared: Path, tmp_path: Path) -> None:
    import subprocess

    cmd = _hub_train_command(synthetic_prepared, tmp_path / "runs")
    done = subprocess.run(cmd, env=_offline_env(tmp_path / "empty-cache"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "hf-hub:timm/ghostnet_100.in1k: HF_HUB_OFFLINE is set and the weights are not in the Hugging Face " \
           f"cache {tmp_path / 'empty-cache'}" in line
    assert not (tmp_path / "runs").exists() and not any((tmp_path / "empty-cache").rglob("*.safetensors"))


def _hub_train_command(data: Path, runs: Path, *sets: str) -> list[str]:
    """`carspotter train` of GhostNet 1.0x from ``hf-hub:timm/ghostnet_100.in1k`` (demo config), in a process of its
    own: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported."""
    import sys

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    sets = (f"data.path={data}", f"output.runs_dir={runs}", "model.name=ghostnet_100", "model.args={}",
            "model.pretrained=hf-hub:timm/ghostnet_100.in1k", *sets)  # fmt: skip
    return [sys.executable, "-m", "carspotter.cli", "train", "-c", str(demo), *(a for s in sets for a in ("--set", s))]


def _offline_env(cache: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
