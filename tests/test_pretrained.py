"""Pretrained initialisation from local files: timm/torchvision state dicts and carspotter checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from carspotter.checkpoint import init_from_weights
from carspotter.errors import UserError
from carspotter.models import create_model

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
