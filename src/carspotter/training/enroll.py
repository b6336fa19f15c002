"""`carspotter enroll`: new car models from a few photos each, without retraining (imprinted weights, Qi, Brown and
Lowe 2018, "Low-Shot Learning with Imprinted Weights").

Each new class gets a classifier row imprinted from its photos' embeddings (the input of the final ``Linear``:
``forward_head(..., pre_logits=True)``, with the checkpoint's own preprocessing, averaged with the mirror image's
unless ``flip=False``). Our classifiers are plain linear layers on ReLU features, not the paper's cosine classifier,
so the imprint is fitted to them with a sample of the photos the model was trained on (``reference``: by default
the train split of the dataset in the checkpoint's config, when it is at hand):

- **direction**: the mean of the L2-normalised embeddings *minus the reference mean* (what every car shares would
  otherwise raise the new class's score on every photo), normalised;
- **scale**: the new class's mean logit on its own photos equals the mean top logit the old classes give their
  reference photos, with the mean of the old biases.

Without reference photos the row is scaled to the mean norm of the old rows, uncentred, and the report says that old
classes may lose accuracy: on synthetic cars the norm-matched imprint recognised the new classes better but took
the old classes' accuracy down by about half, while the fitted imprint keeps them within a few points
(`tests/test_enroll.py` holds it to 5 points and the new classes to at least three times chance).

The other rows are untouched. The result is an ordinary checkpoint (`predict`, `evaluate`, `export`, `serve`, `app`
and fine-tuning from it all work); it records which classes were enrolled, from how many photos and from which
checkpoint, and carries no optimizer state (it is a new model, not a run to resume). Its calibration (temperature,
threshold) is the original model's: `carspotter calibrate` refits it on a validation set with the new classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from carspotter.data.folders import IMAGE_EXTENSIONS
from carspotter.data.prepared import load_prepared
from carspotter.errors import UserError
from carspotter.formats.car_names import car_names
from carspotter.formats.checkpoint import RAW_WEIGHTS_KEY, STATE_PREFIX, read_checkpoint
from carspotter.formats.files import sha256_file
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.preprocessing import Preprocessing, image_to_array, open_photo
from carspotter.writable import check_output_file, replacing

log = logging.getLogger(__name__)

REFERENCE_PHOTOS = 200
RESUME_ONLY_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", RAW_WEIGHTS_KEY)


@dataclass
class EnrollReport:
    out: Path
    enrolled: list[dict[str, Any]]  # {"class_name", "photos", "replaced"}
    unreadable: list[str] = field(default_factory=list)
    num_classes: int = 0
    reference: str | None = None  # the photos the imprint was fitted to (None: norm-matched, uncentred)


def class_photos(photos: Path) -> dict[str, list[Path]]:
    """PHOTOS/<class name>/<photos> → class name → its image files (sorted; hidden files and non-images left out)."""
    photos = Path(photos)
    if not photos.is_dir():
        raise UserError(f"{photos}: no such folder; give a folder with one sub-folder of photos per new class")
    folders = sorted(p for p in photos.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"{photos}: no class folders; expected {photos}/<class name>/<photos>")
    found = {
        d.name: sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                       and not f.name.startswith("."))
        for d in folders
    }  # fmt: skip
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise UserError(f"{photos / empty[0]}: no photos (.jpg, .png, ...) in this class folder")
    return found


@torch.inference_mode()
def embeddings(model: nn.Module, images: list, prep: Preprocessing, flip: bool, batch: int = 32) -> torch.Tensor:
    """The photos' classifier inputs (N × features, float64), each averaged with its mirror image's if ``flip``."""
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.stack([image_to_array(img, prep) for img in images[start : start + batch]]))
        feats = model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
        if flip:
            feats = (feats + model.forward_head(model.forward_features(x.flip(-1)), pre_logits=True).flatten(1)) / 2
        out.append(feats.double())
    return torch.cat(out)


@dataclass(frozen=True)
class Reference:
    """What the old classes look like to the classifier, from a sample of the photos the model learnt them on."""

    mean: torch.Tensor  # mean embedding
    top_logit: float  # mean top logit the old classes give those photos
    source: str


def reference_from(model: nn.Module, prep: Preprocessing, data: Path, flip: bool, n: int = REFERENCE_PHOTOS):
    """`Reference` from up to ``n`` train photos of the prepared dataset ``data`` (every k-th: all classes)."""
    dataset = load_prepared(data)
    frame = dataset.train.iloc[:: max(1, len(dataset.train) // n)][:n]
    images = [open_photo(dataset.root / f) for f in frame["fname"]]
    feats = embeddings(model, images, prep, flip)
    classifier = model.get_classifier()
    logits = feats @ classifier.weight.detach().double().T
    if classifier.bias is not None:
        logits = logits + classifier.bias.detach().double()
    source = f"{len(images)} train photos of {Path(data).resolve().name}"
    return Reference(mean=feats.mean(0), top_logit=float(logits.max(1).values.mean()), source=source)


def imprint(feats: torch.Tensor, weight: torch.Tensor, bias: float, ref: Reference | None) -> torch.Tensor:
    """One new classifier row from its photos' embeddings (module docstring: centred and logit-matched with a
    reference, else norm-matched)."""
    centred = feats - ref.mean if ref is not None else feats
    direction = nn.functional.normalize(nn.functional.normalize(centred, dim=1).mean(0), dim=0)
    if ref is not None:
        own = float((feats @ direction).mean())
        if own > 0:
            return direction * (ref.top_logit - bias) / own
    return direction * weight.norm(dim=1).mean()


def enroll(
    ckpt: str | Path, photos: str | Path, out: str | Path, *, replace: bool = False, flip: bool = True,
    overwrite: bool = False, reference: str | Path | None = None,
) -> EnrollReport:  # fmt: skip
    """Write ``out``: ``ckpt`` with a classifier row imprinted for every class folder in ``photos``. ``reference``:
    a prepared dataset of the old classes (default: the checkpoint's training data, if it is there)."""
    ckpt, out = Path(ckpt), Path(out)
    if out.resolve() == ckpt.resolve():
        raise UserError(f"{out}: is the checkpoint enrolled into; write the enrolled model to another file")
    check_output_file(out, "enrolled checkpoint", overwrite=overwrite)
    wanted = class_photos(Path(photos))
    model, info = load_checkpoint(ckpt)
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise UserError(f"{ckpt}: its classifier is a {type(classifier).__name__}, not a Linear layer to add rows to")
    existing = [n for n in wanted if n in info.class_names]
    if existing and not replace:
        raise UserError(f"class {existing[0]!r} is one of the model's already; --replace imprints it afresh")

    report = EnrollReport(out=out, enrolled=[])
    weight = classifier.weight.detach().double()
    bias = classifier.bias.detach().double() if classifier.bias is not None else None
    new_bias = bias.mean() if bias is not None else None
    if reference is None and info.config is not None and (Path(info.config.data.path) / "manifest.json").is_file():
        reference = info.config.data.path
    ref = reference_from(model, info.preprocessing, Path(reference), flip) if reference is not None else None
    if ref is None:
        log.warning("no photos of the model's own classes at hand (--reference PREPARED): the new rows are scaled "
                    "to the old rows' mean norm, and the old classes may lose accuracy")  # fmt: skip
    report.reference = ref.source if ref is not None else None
    names = list(info.class_names)
    rows, biases = list(weight), list(bias) if bias is not None else []
    for name, files in wanted.items():
        images = []
        for f in files:
            try:
                images.append(open_photo(f))
            except UserError as exc:
                report.unreadable.append(str(exc))
        if not images:
            raise UserError(f"{Path(photos) / name}: none of its {len(files)} photo(s) could be read")
        feats = embeddings(model, images, info.preprocessing, flip)
        row = imprint(feats, weight, float(new_bias) if new_bias is not None else 0.0, ref)
        if name in names:
            rows[names.index(name)] = row
            if bias is not None:
                biases[names.index(name)] = new_bias
        else:
            names.append(name)
            rows.append(row)
            if bias is not None:
                biases.append(new_bias)
        report.enrolled.append({"class_name": name, "photos": len(images), "replaced": name in existing})
    for line in report.unreadable:
        log.debug("skipped: %s", line)  # the report lists them; the CLI prints them

    raw = read_checkpoint(ckpt)
    key = next(n for n, m in model.named_modules() if m is classifier)
    state = raw["state_dict"]
    state[f"{STATE_PREFIX}{key}.weight"] = torch.stack(rows).to(classifier.weight.dtype)
    if bias is not None:
        state[f"{STATE_PREFIX}{key}.bias"] = torch.stack(biases).to(classifier.bias.dtype)
    for k in RESUME_ONLY_KEYS:
        raw.pop(k, None)
    meta = raw["carspotter"]
    given = {n: c for n, c in zip(info.class_names, info.car_names, strict=True)}
    meta["model"]["num_classes"] = len(names)
    meta["class_names"] = names
    meta["classes"] = [given.get(n, parsed).to_dict() for n, parsed in zip(names, car_names(names), strict=True)]
    source = {"name": ckpt.name, "sha256": sha256_file(ckpt)}
    meta["enrolled"] = [
        *meta.get("enrolled", []),
        *({**e, "from": source, "reference": report.reference} for e in report.enrolled),
    ]
    with replacing(out) as staged:
        torch.save(raw, staged)
    report.num_classes = len(names)
    return report
