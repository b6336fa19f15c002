"""Fine-tuning a checkpoint trained on (synthetic) Stanford-layout data onto a user's folder dataset, and the
optimizer's parameter groups (classifier versus backbone, no weight decay on norms and biases)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from recipe_support import RECOMMENDED

from carspotter.config import load_config
from carspotter.data.prepare import prepare
from carspotter.data.prepared import load_prepared
from carspotter.data.synth import synthesize
from carspotter.formats.checkpoint import model_state_dict, read_checkpoint
from carspotter.formats.run_dir import read_epoch_metrics
from carspotter.inference import load_classifier
from carspotter.inference.predict import predict_images
from carspotter.models import create_model
from carspotter.training.finetune import parameter_groups, split_parameters
from carspotter.training.run import build_model, load_run_config, train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
SMALL = [
    "data.num_workers=0",
    "data.image_size=[32,32]",
    "data.image_augmentations=[]",
    "model.args.hidden_channels=128",
    "trainer.precision=32-true",
]


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def config(data: Path, runs: Path, *extra: str):
    return load_config(DEMO, [f"data.path={data}", f"output.runs_dir={runs}", *SMALL, *extra])


@pytest.fixture(scope="module")
def stanford_run(tmp_path_factory: pytest.TempPathFactory):
    """A small GhostNet trained on a synthetic raw dataset in the Stanford Cars (updated) layout."""
    root = tmp_path_factory.mktemp("stanford")
    synthesize(root / "raw", layout="updated", num_classes=4, per_class=50, seed=0, test_fraction=0.4)
    prepare(root / "raw", root / "prepared")
    cfg = config(
        root / "prepared", root / "runs", "trainer.max_epochs=12", "scheduler.params.T_max=12", "trainer.batch_size=16"
    )
    return train(cfg, progress=False), root / "prepared"


@pytest.fixture(scope="module")
def user_folders(stanford_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of photos in a user's class folders, under other names, in another class order."""
    _, stanford = stanford_run
    data = load_prepared(stanford)
    raw = tmp_path_factory.mktemp("user") / "photos"
    for row in data.train.itertuples():
        dest = raw / f"My car {chr(ord('Z') - row.class_id)}" / Path(row.fname).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data.root / row.fname, dest)
    prepare(raw, raw.parent / "prepared", layout="folders", test_fraction=0.3, seed=0)
    return raw.parent / "prepared"


@pytest.mark.slow
def test_build_model_starts_from_the_checkpoint_with_a_new_classifier(stanford_run, user_folders: Path) -> None:
    run, _ = stanford_run
    source = model_state_dict(read_checkpoint(run.best_ckpt))
    names = load_prepared(user_folders).classes
    assert len(names) == 4 and names[0] == "My car W"  # same count as the checkpoint, other classes
    cfg = config(user_folders, user_folders.parent / "runs", f"model.pretrained={run.best_ckpt}")
    model = build_model(cfg, len(names), names)
    state = model.state_dict()
    backbone = [k for k in state if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(state[k], source[k]) for k in backbone)
    assert not torch.equal(state["classifier.weight"], source["classifier.weight"])  # not the old classes' rows
    # Continuing on the checkpoint's own classes keeps its classifier.
    same = build_model(cfg, len(names), load_prepared(stanford_run[1]).classes)
    assert torch.equal(same.state_dict()["classifier.weight"], source["classifier.weight"])


@pytest.mark.slow
def test_fine_tuning_beats_training_from_scratch_after_one_epoch(stanford_run, user_folders: Path) -> None:
    """Same data, seed and settings; only the starting weights differ. The frozen first epoch trains the classifier
    alone, on the checkpoint's features; then `--resume` continues with the whole network."""
    run, _ = stanford_run
    runs = user_folders.parent / "runs"
    common = ["trainer.max_epochs=1", "scheduler.name=null", "trainer.batch_size=8", "data.val_fraction=0.2"]
    tuned = train(
        config(
            user_folders,
            runs,
            *common,
            f"model.pretrained={run.best_ckpt}",
            "trainer.freeze_backbone_epochs=1",
            "optimizer.backbone_lr=0.0003",
        ),
        progress=False,
    )
    scratch = train(config(user_folders, runs, *common), progress=False)
    ft = read_epoch_metrics(tuned.run_dir / "metrics.csv")[0]
    sc = read_epoch_metrics(scratch.run_dir / "metrics.csv")[0]
    print(
        f"epoch 1 val loss / top-1: fine-tuned {ft['val_loss']} / {ft['val_top1']}, "
        f"scratch {sc['val_loss']} / {sc['val_top1']}"
    )
    # Since GhostNet's bottlenecks start as their shortcut (zero_init_last), training from scratch on these easy
    # synthetic cars reaches about the same val loss in one epoch (0.861 vs 0.860 measured); the fine-tuned model,
    # which trained only its classifier, still classifies more of the held-out photos right (15/16 vs 13/16).
    assert float(ft["val_top1"]) > float(sc["val_top1"])

    # The frozen epoch left every backbone tensor (BatchNorm statistics included) as the checkpoint had it.
    source = model_state_dict(read_checkpoint(run.best_ckpt))
    after = model_state_dict(read_checkpoint(tuned.run_dir / "last.ckpt"))
    backbone = [k for k in after if not k.startswith("classifier.")]
    assert all(torch.equal(after[k], source[k]) for k in backbone)
    # Unfrozen from the second epoch on (here through --resume), at the backbone's own learning rate.
    resumed = train(load_run_config(tuned.run_dir, ["trainer.max_epochs=2"]), resume=tuned.run_dir, progress=False)
    later = model_state_dict(read_checkpoint(resumed.run_dir / "last.ckpt"))
    assert not torch.equal(later["conv_stem.weight"], source["conv_stem.weight"])
    lrs = [g["lr"] for g in read_checkpoint(resumed.run_dir / "last.ckpt")["optimizer_states"][0]["param_groups"]]
    assert lrs == [pytest.approx(0.003), pytest.approx(0.0003)]  # classifier, backbone

    # The fine-tuned model predicts the user's folder names.
    data = load_prepared(user_folders)
    preds = predict_images(load_classifier(resumed.best_ckpt), [data.root / f for f in data.test["fname"][:4]])
    assert {p["predictions"][0]["class_name"] for p in preds} <= set(data.classes)
    assert read_checkpoint(resumed.best_ckpt)["carspotter"]["class_names"] == data.classes


def test_parameter_groups_split_the_classifier_from_the_backbone() -> None:
    model = create_model("ghostnet_thesis", num_classes=7, hidden_channels=64)
    head, backbone = split_parameters(model)
    assert [id(p) for p in head] == [id(model.classifier.weight), id(model.classifier.bias)]
    assert len(head) + len(backbone) == len(list(model.parameters()))
    cfg = load_config(DEMO, ["optimizer.backbone_lr=0.0001"])
    groups = parameter_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=0.003)
    assert [g["lr"] for g in optimizer.param_groups] == [0.003, 0.0001]
    assert parameter_groups(model, load_config(DEMO)) == [{"params": list(model.parameters())}]


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = create_model("ghostnet_100", num_classes=5)
    cfg = load_config(RECOMMENDED, ["optimizer.weight_decay_norm_and_bias=false"])
    groups = parameter_groups(model, cfg)
    undecayed = [p for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]]
    decayed = [p for g in groups if "weight_decay" not in g for p in g["params"]]
    assert undecayed and all(p.ndim == 1 for p in undecayed) and all(p.ndim > 1 for p in decayed)
    assert len(undecayed) + len(decayed) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05)
    assert sorted({g["weight_decay"] for g in optimizer.param_groups}) == [0.0, 0.05]
    # with a backbone learning rate too: four groups, the classifier's first
    both = parameter_groups(model, cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(
        update={"backbone_lr": 1e-4})}))  # fmt: skip
    assert [g.get("lr") for g in both] == [None, None, 1e-4, 1e-4] and both[1]["weight_decay"] == 0.0
    # the switch off (the recipe's own setting): one group, decayed as the optimizer says
    assert load_config(RECOMMENDED).optimizer.weight_decay_norm_and_bias
    assert len(parameter_groups(model, load_config(RECOMMENDED))) == 1


def test_a_model_without_the_head_api_is_a_clear_error() -> None:
    from carspotter.errors import UserError

    with pytest.raises(UserError, match="get_classifier"):
        split_parameters(nn.Linear(3, 2))


def test_shipped_finetune_config_is_valid() -> None:
    cfg = load_config(ROOT / "configs" / "finetune_folders.yaml")
    assert cfg.model.pretrained is not None and cfg.optimizer.backbone_lr == 0.0001
    assert cfg.trainer.freeze_backbone_epochs == 3 and cfg.data.mean is None
