"""Screen recipe changes quickly on real photos: a bare PyTorch loop on a prepared dataset's TRAIN split only.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_screen.py --data PREPARED --size 96 --epochs 30 \
        --val-fraction 0.3 --model ghostnet_thesis --batch-size 64 --lr 1e-3

Images are decoded once, resized to a square and kept as uint8 in memory; each epoch draws RandomResizedCrop
(scale SCALE-1) + flip per image, AdamW (biases and norms undecayed), linear warm-up over 5% of the steps then
cosine to 1%, label smoothing 0.1. The held-out part of TRAIN (``--val-fraction``, seed 0; 0.3 = 624 photos on
odd98, so a point of accuracy is about one standard error) scores the last epoch. The test split is never read:
this is for choosing, `benchmarks/real_accuracy.py` (through ``carspotter train``) is for reporting. It is a
screen, not the recipe: no EMA, no colour jitter, no checkpoint. ``--decay-norms``, ``--optimizer sgd``, ``--mix``,
``--trivial-augment``, ``--erase`` and ``--source-size`` try the variants in the README's tables. Prints one line per
epoch and a RESULT line.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torchvision.transforms.v2 as T
from PIL import Image

from carspotter.config import load_config
from carspotter.models import create_model
from carspotter.training.finetune import parameter_groups

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_train(data: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = pd.read_csv(data / "train.csv")
    x = torch.empty(len(rows), 3, size, size, dtype=torch.uint8)
    for i, fname in enumerate(rows["fname"]):
        with Image.open(data / fname) as im:
            x[i] = torch.from_numpy(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))).permute(2, 0, 1)
    return x, torch.as_tensor(rows["class_id"].to_numpy(), dtype=torch.long)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset (carspotter prepare)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--model", default="ghostnet_thesis")
    ap.add_argument(
        "--model-arg", action="append", default=[], metavar="KEY=NUMBER", help="e.g. hidden_channels=320, drop_rate=0.5"
    )
    ap.add_argument("--no-zero-init-last", action="store_true", help="GhostNet: residual branches start non-zero")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--decay-norms", action="store_true", help="weight decay on biases and norms too (as the thesis)")
    ap.add_argument("--scale", type=float, default=0.6, help="RandomResizedCrop's smallest crop")
    ap.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="sgd: momentum 0.9, Nesterov")
    ap.add_argument("--mix", action="store_true", help="MixUp (alpha 0.2) or CutMix (alpha 1), one drawn per batch")
    ap.add_argument(
        "--source-size",
        type=int,
        default=0,
        help="crop training images from a copy decoded at this size (default: --size)",
    )
    ap.add_argument("--trivial-augment", action="store_true", help="TrivialAugmentWide after the crop")
    ap.add_argument("--erase", type=float, default=0.0, help="RandomErasing probability (after normalising)")
    args = ap.parse_args()

    torch.manual_seed(0)
    x, y = load_train(args.data, args.size)
    source = load_train(args.data, args.source_size)[0] if args.source_size else x
    num_classes = int(y.max()) + 1
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = int(len(y) * args.val_fraction)
    val, train = order[:n_val], order[n_val:]
    kwargs = {k: float(v) if "." in v else int(v) for k, _, v in (a.partition("=") for a in args.model_arg)}
    if args.no_zero_init_last:
        kwargs["zero_init_last"] = False
    model = create_model(args.model, num_classes=num_classes, **kwargs).to(memory_format=torch.channels_last)
    # the pipeline's own groups: biases and norms undecayed unless --decay-norms
    decay_rule = load_config("stanford_ghostnet", [f"optimizer.weight_decay_norm_and_bias={args.decay_norms}"])
    groups = parameter_groups(model, decay_rule)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    total = math.ceil(len(train) / args.batch_size) * args.epochs
    warm = int(0.05 * total)

    def factor(step: int) -> float:  # the recipe's schedule: linear warm-up, cosine to 1% of the lr
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.01 + 0.495 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    steps = [T.RandomResizedCrop(args.size, scale=(args.scale, 1.0)), T.RandomHorizontalFlip()]
    augment = T.Compose(steps + ([T.TrivialAugmentWide()] if args.trivial_augment else []))
    erase = T.RandomErasing(p=args.erase) if args.erase else nn.Identity()
    mix = T.RandomChoice([T.MixUp(alpha=0.2, num_classes=num_classes), T.CutMix(alpha=1.0, num_classes=num_classes)])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        seen = hits = 0
        loss_sum = 0.0
        for idx in train[torch.randperm(len(train))].split(args.batch_size):
            if len(idx) < 2:
                continue
            images = torch.cat([erase(normalise(augment(source[i])[None])) for i in idx])  # erase: one box per image
            images, targets = images.contiguous(memory_format=torch.channels_last), y[idx]
            if args.mix:
                images, targets = mix(images, targets)
            logits = model(images)
            loss = loss_fn(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
            hits += int((logits.argmax(1) == y[idx]).sum())
            seen += len(idx)
        model.eval()
        with torch.no_grad():
            val_top1 = sum(int((model(normalise(x[b])).argmax(1) == y[b]).sum()) for b in val.split(128)) / len(val)
        print(f"epoch {epoch} loss {loss_sum / seen:.3f} train top-1 {hits / seen:.3f} val top-1 {val_top1:.3f} "
              f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    print(f"RESULT {vars(args)} val top-1 {val_top1:.3f} (n={len(val)}) train top-1 {hits / seen:.3f}", flush=True)


if __name__ == "__main__":
    main()
