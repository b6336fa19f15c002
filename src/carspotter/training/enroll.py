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
  reference photos, with the mean of the old biases;
- **fit**: the imprinted rows (and their biases) are then refined, the old rows frozen, by a few hundred steps of
  cross-entropy over the reference photos (labelled with their old classes) and the new photos, pulled toward the
  imprint (an L2 term), so a new row learns what tells its class *apart* from the cars the model knows; seconds on
  a CPU, on embeddings computed once;
- **margin**: then every new row's bias is lowered by one shift, the smallest that lets the new classes take at most
  ``max_old_loss`` (default 1%) of the reference photos the model gets right.

Without fit and margin, the new rows, whose mean embeddings sit nearer the middle of all cars than any trained row,
took photos from the old classes (on odd98, 10 classes enrolled into 88 from 20 photos each, up to a third of the
old classes' accuracy); the margin alone kept them but left the new classes near chance. The reference photos are
the model's own training photos, on which it is surer than on new photos, so the old classes lose somewhat more than
``max_old_loss`` on photos it has not seen (docs/own-cars.md has the figures).

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

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from carspotter.data.folders import IMAGE_EXTENSIONS
from carspotter.data.prepared import load_prepared
from carspotter.defaults import ENROLL_MAX_OLD_LOSS
from carspotter.errors import UserError
from carspotter.formats.car_names import car_names
from carspotter.formats.checkpoint import RAW_WEIGHTS_KEY, STATE_PREFIX, read_checkpoint
from carspotter.formats.files import sha256_file
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.preprocessing import Preprocessing, image_to_array, open_photo
from carspotter.writable import check_output_file, replacing

log = logging.getLogger(__name__)

REFERENCE_PHOTOS = 1000
FIT_STEPS = 300  # Adam steps (lr 0.01) refining the new rows on the embeddings
FIT_PULL = 1e-3  # the L2 pull toward the imprinted rows
RESUME_ONLY_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", RAW_WEIGHTS_KEY)


@dataclass
class EnrollReport:
    out: Path
    enrolled: list[dict[str, Any]]  # {"class_name", "photos", "replaced"}
    unreadable: list[str] = field(default_factory=list)
    num_classes: int = 0
    reference: str | None = None  # the photos the imprint was fitted to (None: norm-matched, uncentred)
    bias_shift: float = 0.0  # subtracted from every new row's bias (the margin)
    reference_top1: tuple[float, float] | None = None  # the old classes' top-1 on the reference photos, before/after


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
def embeddings(
    model: nn.Module, images: list, prep: Preprocessing, flip: bool, batch: int = 32, progress: str | None = None
) -> torch.Tensor:
    """The photos' classifier inputs (N × features, float64), each averaged with its mirror image's if ``flip``
    (``progress``: a bar with this label)."""
    out = []
    starts = range(0, len(images), batch)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, leave=False):
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
    feats: torch.Tensor  # the photos' embeddings (N × features)
    logits: torch.Tensor  # the old classes' logits on them (N × classes)
    labels: torch.Tensor  # each photo's class as the model's index (-1: a class the model does not have)


def reference_from(
    model: nn.Module, prep: Preprocessing, data: Path, flip: bool, class_names: list[str], n: int = REFERENCE_PHOTOS,
    progress: bool = False,
) -> Reference:  # fmt: skip
    """`Reference` from up to ``n`` train photos of the prepared dataset ``data`` (every k-th: all classes)."""
    dataset = load_prepared(data)
    frame = dataset.train.iloc[:: max(1, len(dataset.train) // n)][:n]
    images = [open_photo(dataset.root / f) for f in frame["fname"]]
    feats = embeddings(model, images, prep, flip, progress=f"{len(images)} reference photos" if progress else None)
    classifier = model.get_classifier()
    logits = feats @ classifier.weight.detach().double().T
    if classifier.bias is not None:
        logits = logits + classifier.bias.detach().double()
    index = {name: i for i, name in enumerate(class_names)}
    labels = torch.tensor([index.get(dataset.classes[c], -1) for c in frame["class_id"]])
    source = f"{len(images)} train photos of {Path(data).resolve().name}"
    return Reference(mean=feats.mean(0), top_logit=float(logits.max(1).values.mean()), source=source, feats=feats,
                     logits=logits, labels=labels)  # fmt: skip


def margin(ref: Reference, rows: torch.Tensor, biases: torch.Tensor, max_old_loss: float) -> float:
    """The smallest shift ``d >= 0`` such that, with ``biases - d``, the new ``rows`` take at most ``max_old_loss``
    (a fraction) of the reference photos from the old classes that get them right."""
    right = ref.logits.argmax(1) == ref.labels
    if not bool(right.any()):
        return 0.0
    own = ref.logits[right].max(1).values
    newcomer = (ref.feats[right] @ rows.T + biases).max(1).values
    excess = (newcomer - own).sort(descending=True).values  # a photo is taken while the shift is below its excess
    allowed = int(max_old_loss * len(ref.labels))
    if allowed >= len(excess):
        return 0.0
    edge = float(excess[allowed])
    return max(0.0, edge + 1e-5 * max(1.0, abs(edge)))  # past it by more than float32 rounds: the edge photo stays


def fit_rows(
    ref: Reference, feats: list[torch.Tensor], feats_old_logits: torch.Tensor, rows: torch.Tensor,
    biases: torch.Tensor, steps: int = FIT_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The new ``rows`` and ``biases`` refined by cross-entropy over the reference photos and the new classes' photos
    (``feats[k]``: class k's; ``feats_old_logits``: the old classes' logits on them, in order), the old classes'
    logits fixed, with an L2 pull toward the imprinted rows."""
    old = ref.labels >= 0
    if not bool(old.any()):  # none of the reference photos is of the model's classes: nothing to tell apart
        return rows, biases
    x = torch.cat([ref.feats[old], *feats]).clone()  # out of inference mode: autograd needs ordinary tensors
    fixed = torch.cat([ref.logits[old], feats_old_logits]).clone()
    width = ref.logits.shape[1]
    labels = torch.cat([ref.labels[old], *(torch.full((len(f),), width + k) for k, f in enumerate(feats))])
    start = rows.detach().clone()
    w, b = start.clone().requires_grad_(True), biases.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w, b], lr=0.01)
    is_new = labels >= width
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            logits = torch.cat([fixed, x @ w.T + b], dim=1)
            loss = (nn.functional.cross_entropy(logits[~is_new], labels[~is_new])
                    + nn.functional.cross_entropy(logits[is_new], labels[is_new])
                    + FIT_PULL * ((w - start) ** 2).sum())  # fmt: skip
            loss.backward()
            optimizer.step()
    return w.detach(), b.detach()


def restricted_to(ref: Reference, kept: list[int]) -> Reference:
    """``ref`` seen by the old classes ``kept`` only (a re-imprinted class is scored as a new row, not an old one)."""
    remap = torch.full((ref.logits.shape[1] + 1,), -1, dtype=torch.long)
    remap[torch.tensor(kept)] = torch.arange(len(kept))
    labels = remap[ref.labels.where(ref.labels >= 0, ref.logits.shape[1])]
    return dataclasses.replace(ref, logits=ref.logits[:, kept], labels=labels)


def reference_top1(ref: Reference, rows: torch.Tensor | None = None, biases: torch.Tensor | None = None) -> float:
    """The model's top-1 on the reference photos, with the new ``rows`` (and ``biases``) added when given."""
    logits = ref.logits if rows is None else torch.cat([ref.logits, ref.feats @ rows.T + biases], dim=1)
    return float((logits.argmax(1) == ref.labels).double().mean())


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
    overwrite: bool = False, reference: str | Path | None = None, max_old_loss: float = ENROLL_MAX_OLD_LOSS,
    progress: bool = False,
) -> EnrollReport:  # fmt: skip
    """Write ``out``: ``ckpt`` with a classifier row imprinted for every class folder in ``photos``. ``reference``:
    a prepared dataset of the old classes (default: the checkpoint's training data, if it is there);
    ``max_old_loss``: the fraction of those photos the new rows may take from the old classes (module docstring)."""
    if not 0.0 <= max_old_loss < 1.0:
        raise UserError(f"--max-old-loss must be a fraction in [0, 1), got {max_old_loss}")
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
    ref = None
    if reference is not None:
        ref = reference_from(model, info.preprocessing, Path(reference), flip, list(info.class_names),
                             progress=progress)  # fmt: skip
    if ref is None:
        log.warning("no photos of the model's own classes at hand (--reference PREPARED): the new rows are scaled "
                    "to the old rows' mean norm, and the old classes may lose accuracy")  # fmt: skip
    report.reference = ref.source if ref is not None else None
    names = list(info.class_names)
    rows, biases = list(weight), list(bias) if bias is not None else []
    new_feats: list[torch.Tensor] = []  # each new class's photos' embeddings
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
        new_feats.append(feats)
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
    added = [names.index(e["class_name"]) for e in report.enrolled]
    if ref is not None and bias is not None:
        kept = [i for i in range(len(info.class_names)) if i not in added]  # --replace: a re-imprinted row is new
        ref = restricted_to(ref, kept)
        new_rows, new_biases = torch.stack([rows[i] for i in added]), torch.stack([biases[i] for i in added])
        new_x = torch.cat(new_feats)
        new_old_logits = new_x @ weight[kept].T + bias[kept]
        new_rows, new_biases = fit_rows(ref, new_feats, new_old_logits, new_rows, new_biases)
        report.bias_shift = margin(ref, new_rows, new_biases, max_old_loss)
        new_biases = new_biases - report.bias_shift
        for j, i in enumerate(added):
            rows[i], biases[i] = new_rows[j], new_biases[j]
        report.reference_top1 = (reference_top1(ref), reference_top1(ref, new_rows, new_biases))

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
        *({**e, "from": source, "reference": report.reference, "bias_shift": report.bias_shift,
           "max_old_loss": max_old_loss if report.reference_top1 is not None else None} for e in report.enrolled),
    ]
    with replacing(out) as staged:
        torch.save(raw, staged)
    report.num_classes = len(names)
    return report

