"""`carspotter synth`: a synthetic raw Stanford Cars dataset, file for file like the real downloads.

The demo and the tests run on it, so `prepare` reads it through exactly the code path a real download takes. This
module only draws the cars (like torchvision's ``FakeData``, but learnable); the layouts' own modules write them out:
`stanford.write_stanford_raw` (same file names, ``.mat`` files through `stanford_mat`, same archives) and
`parquet.write_parquet_raw` (the Hugging Face release).

Images are procedurally drawn car-like objects. A class fixes a colour family, a body type (silhouette), a wheel
count, a window layout and proportions; every image then varies colour, size, aspect, position, direction,
background and noise, so neighbouring classes overlap and no single pixel gives the class away, while a small CNN
at 64×64 still learns them.
"""

from __future__ import annotations

import colorsys
import io
import logging
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from carspotter.data import parquet, stanford
from carspotter.data.raw import StanfordImage
from carspotter.errors import UserError

log = logging.getLogger(__name__)

LAYOUT_CHOICES = (*stanford.LAYOUT_NAMES, parquet.NAME)  # parquet: the Hugging Face release (data/*.parquet, card)
_MAKES = ("Synthmotors", "Pixelwagen", "Voxela", "Rasterra", "Bitline", "Kernelford", "Tensora")
_MODELS = ("Aurora", "Vega", "Orbit", "Comet", "Zephyr", "Nimbus", "Pulsar", "Quasar", "Nova", "Halo")
_BODIES = ("Sedan", "Coupe", "SUV", "Hatchback", "Van", "Pickup", "Wagon", "Convertible")


# ------------------------------------------------------------------------------------------------ class styles


@dataclass(frozen=True)
class ClassStyle:
    """What a class looks like; every image of the class varies around it."""

    name: str
    hue: float  # 0..1
    saturation: float
    value: float
    body: str  # one of _BODIES
    wheels: int  # visible wheels: 2 or 3
    windows: int  # side windows: 1..3
    length: float  # body length / body height
    roof: float  # cabin height relative to the body's lower part
    stripe: bool


def class_styles(num_classes: int) -> list[ClassStyle]:
    """Deterministic, distinct-looking classes with real-looking names ("Synthmotors Aurora Sedan 2012")."""
    styles: list[ClassStyle] = []
    names: set[str] = set()
    for k in range(num_classes):
        body = _BODIES[k % len(_BODIES)]
        # Hue: evenly spaced for few classes, golden-ratio spread for many; neighbours in hue differ in body.
        hue = (k / num_classes) if num_classes <= 12 else (k * 0.6180339887) % 1.0
        make = _MAKES[k % len(_MAKES)]
        model = _MODELS[(k // len(_MAKES)) % len(_MODELS)]
        year = 2005 + (k * 5) % 8
        name = f"{make} {model} {body} {year}"
        while name in names:
            year += 1
            name = f"{make} {model} {body} {year}"
        names.add(name)
        styles.append(
            ClassStyle(
                name=name,
                hue=hue,
                saturation=(0.85, 0.65, 0.75)[(k // 3) % 3],
                value=(0.85, 0.6, 0.75)[(k // 2) % 3],
                body=body,
                wheels=3 if body in ("Van", "Pickup") and k % 3 == 0 else 2,
                windows=1 + (k // len(_BODIES) + k) % 3,
                length={"SUV": 2.0, "Van": 1.9, "Pickup": 2.6, "Coupe": 2.6}.get(body, 2.3) + 0.15 * ((k // 5) % 3),
                roof={"SUV": 0.95, "Van": 1.15, "Coupe": 0.55, "Convertible": 0.35}.get(body, 0.75),
                stripe=(k // 4) % 2 == 1,
            )
        )
    return styles


# ------------------------------------------------------------------------------------------------------ drawing


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _muted(rng: np.random.Generator, saturated: float = 0.1) -> tuple[int, int, int]:
    """Mostly greyish scenery colours (sky, walls, road); now and then a vivid one that competes with the car."""
    vivid = rng.random() < saturated
    return _rgb(rng.random(), rng.uniform(0.5, 1.0) if vivid else rng.uniform(0.0, 0.3), rng.uniform(0.25, 0.95))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A two-colour vertical gradient (sky over ground), a few clutter shapes and a road."""
    top = np.array(_muted(rng), dtype=np.float32)
    bottom = np.array(_muted(rng), dtype=np.float32)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    grad = top * (1 - t) + bottom * t
    arr = np.broadcast_to(grad, (h, w, 3)).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.uniform(-0.2 * w, w), rng.uniform(-0.2 * h, h)
        sw, sh = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * h
        colour = _muted(rng, saturated=0.15)
        if rng.random() < 0.5:
            draw.rectangle([x0, y0, x0 + sw, y0 + sh], fill=colour)
        else:
            draw.ellipse([x0, y0, x0 + sw, y0 + sh], fill=colour)
    horizon = int(h * rng.uniform(0.55, 0.8))
    road = tuple(int(c) for c in rng.integers(60, 160, 1).repeat(3))
    draw.rectangle([0, horizon, w, h], fill=road)
    return img


def _car_polygons(style: ClassStyle, rng: np.random.Generator) -> dict[str, object]:
    """The car in unit coordinates: x 0..1 (front at 1), y 0 (roof) .. 1 (ground)."""
    body_top = 0.45 + 0.08 * (1 - min(style.roof, 1.0)) + rng.uniform(-0.03, 0.03)  # beltline
    body_bottom = 0.86
    roof_y = 0.05 + rng.uniform(0, 0.04) + (0.22 if style.body == "Convertible" else 0.0)
    if style.body == "Coupe":
        roof_y += 0.12
    if style.body == "Pickup":
        cab = (0.45, 0.78)
    elif style.body == "Van":
        cab = (0.03, 0.9)
    elif style.body in ("Hatchback", "SUV", "Wagon"):
        cab = (0.08, 0.74)
    else:
        cab = (0.2, 0.72)
    slant_f = {"Coupe": 0.16, "Van": 0.06, "SUV": 0.05}.get(style.body, 0.1) + rng.uniform(-0.02, 0.02)
    slant_b = {"Coupe": 0.18, "Sedan": 0.1, "Convertible": 0.05}.get(style.body, 0.03) + rng.uniform(-0.02, 0.02)
    nose = 0.04 if style.body != "Van" else 0.02
    body = [(0.0, body_top + 0.05), (0.02, body_top), (0.98 - nose, body_top), (1.0, body_top + 0.08),
            (1.0, body_bottom), (0.0, body_bottom)]
    cabin = [(cab[0], body_top), (cab[0] + slant_b, roof_y), (cab[1] - slant_f, roof_y), (cab[1], body_top)]
    return {"body": body, "cabin": cabin, "body_top": body_top, "roof_y": roof_y, "cab": cab,
            "slant": (slant_b, slant_f), "bottom": body_bottom}


def draw_car(style: ClassStyle, rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One image of a class and its box (MATLAB 1-based inclusive x1, y1, x2, y2)."""
    w = int(rng.integers(120, 361))
    h = int(round(w * rng.uniform(0.5, 0.78)))
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)

    car_w = w * rng.uniform(0.7, 0.96)
    car_h = car_w / style.length * (1.0 + 0.35 * style.roof) * rng.uniform(0.88, 1.12)
    if car_h > 0.9 * h:  # too tall for this image: shrink, keeping the proportions
        car_w, car_h = car_w * 0.9 * h / car_h, 0.9 * h
    x0 = rng.uniform(0.02 * w, w - car_w - 0.02 * w)
    y0 = rng.uniform(0.03 * h, h - car_h - 0.03 * h)
    flip = rng.random() < 0.5

    def px(p: tuple[float, float]) -> tuple[float, float]:
        u = 1.0 - p[0] if flip else p[0]
        return x0 + u * car_w, y0 + p[1] * car_h

    shape = _car_polygons(style, rng)
    paint = _rgb(style.hue + rng.uniform(-0.06, 0.06), style.saturation + rng.uniform(-0.15, 0.15),
                 style.value + rng.uniform(-0.2, 0.15))
    dark = tuple(int(c * 0.55) for c in paint)
    glass = _rgb(0.58 + rng.uniform(-0.05, 0.05), rng.uniform(0.1, 0.4), rng.uniform(0.15, 0.45))

    draw.polygon([px(p) for p in shape["cabin"]], fill=paint, outline=dark)
    draw.polygon([px(p) for p in shape["body"]], fill=paint, outline=dark)
    # windows: the cabin inset, cut into `windows` panes by pillars
    bt, ry = shape["body_top"], shape["roof_y"]
    c0, c1 = shape["cab"]
    sb, sf = shape["slant"]
    inset_y0, inset_y1 = ry + 0.05, bt - 0.03
    if style.body != "Convertible" and inset_y1 - inset_y0 > 0.04:
        left0, right0 = c0 + sb + 0.03, c1 - sf - 0.03
        left1, right1 = c0 + 0.04, c1 - 0.04
        n = style.windows
        for i in range(n):
            a, b = i / n, (i + 1) / n
            gap = 0.012
            top_l, top_r = left0 + (right0 - left0) * a + gap, left0 + (right0 - left0) * b - gap
            bot_l, bot_r = left1 + (right1 - left1) * a + gap, left1 + (right1 - left1) * b - gap
            draw.polygon([px((bot_l, inset_y1)), px((top_l, inset_y0)), px((top_r, inset_y0)), px((bot_r, inset_y1))],
                         fill=glass)
    if style.stripe:
        sy = bt + 0.12
        draw.rectangle([*px((0.03, sy)), *px((0.97, sy + 0.05))] if not flip else
                       [*px((0.97, sy)), *px((0.03, sy + 0.05))], fill=_rgb(0, 0, 0.97))
    # lights
    draw.rectangle([*px((0.95, bt + 0.1)), *px((0.99, bt + 0.17))] if not flip else
                   [*px((0.99, bt + 0.1)), *px((0.95, bt + 0.17))], fill=(250, 240, 170))
    draw.rectangle([*px((0.005, bt + 0.1)), *px((0.03, bt + 0.17))] if not flip else
                   [*px((0.03, bt + 0.1)), *px((0.005, bt + 0.17))], fill=(200, 20, 20))
    # wheels
    r = car_h * (0.15 if style.body in ("SUV", "Pickup", "Van") else 0.13) * rng.uniform(0.9, 1.1)
    cy = y0 + shape["bottom"] * car_h
    centres = [0.2, 0.8] if style.wheels == 2 else [0.16, 0.52, 0.84]
    for u in centres:
        cx = px((u, 0.0))[0]
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(22, 22, 22))
        rr = r * 0.5
        draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=(165, 165, 170))

    # box: roof to the bottom of the wheels, clipped; MATLAB 1-based inclusive
    xs = [x0, x0 + car_w]
    x1, x2 = max(1, int(math.floor(min(xs))) + 1), min(w, int(math.ceil(max(xs))))
    y1 = max(1, int(math.floor(y0 + shape["roof_y"] * car_h)) + 1)
    y2 = min(h, int(math.ceil(cy + r)))

    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    amplitude = int(rng.integers(3, 18))  # sensor noise, uniform (fast to draw): sigma 2..10 grey levels
    arr = rng.integers(-amplitude, amplitude + 1, size=(h, w, 3), dtype=np.int16)
    arr += np.asarray(img, dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "RGB")
    if rng.random() < 0.05:
        img = img.convert("L")
    return img, (x1, y1, x2, y2)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------- synthesize


@dataclass
class SynthReport:
    out: Path
    layout: str
    classes: list[str]
    counts: dict[str, int]
    files: list[str] = field(default_factory=list)  # what was written at the top of OUT


def synthesize(
    out: str | Path,
    *,
    layout: str,
    num_classes: int,
    per_class: int,
    seed: int,
    archives: bool = True,
    test_fraction: float = 0.5,
    nested: bool = False,
    test_labels_in_devkit: bool = False,
) -> SynthReport:
    """Write a synthetic raw Stanford Cars dataset to OUT (which must be absent or empty).

    Deterministic in ``seed``; a class's images do not depend on how many classes there are. About half of each
    class goes to the test split, like the real dataset (8,144 train / 8,041 test).
    """
    out = Path(out)
    if layout not in LAYOUT_CHOICES:
        raise UserError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
    if num_classes < 1 or per_class < 1:
        raise UserError(f"--classes and --per-class must be at least 1 (got {num_classes}, {per_class})")
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"test fraction must be in [0, 1), got {test_fraction}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder; choose a new OUT for the synthetic dataset")
    styles = class_styles(num_classes)
    order_rng = np.random.default_rng([seed, 1_000_003])
    n_test = int(round(per_class * test_fraction))
    if per_class >= 2 and test_fraction > 0:
        n_test = min(max(n_test, 1), per_class - 1)
    items: list[tuple[int, int, bool]] = []  # (class, index, test)
    for k in range(num_classes):
        test_idx = set(order_rng.permutation(per_class)[:n_test].tolist())
        items.extend((k, i, i in test_idx) for i in range(per_class))
    if layout != "updated":  # the original release (and the Hub's copies) number images in a shuffled order
        items = [items[j] for j in order_rng.permutation(len(items))]

    def render() -> Iterable[StanfordImage]:
        for k, i, test in items:
            rng = np.random.default_rng([seed, k, i])
            img, box = draw_car(styles[k], rng)
            yield StanfordImage(data=_jpeg(img, int(rng.integers(75, 96))), class_id=k, test=test, bbox=box)

    tmp = out.with_name(f".{out.name}.synth-partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        names = [s.name for s in styles]
        if layout == "parquet":  # two shards per split, like the Hub's Stanford Cars
            n_test_total = sum(test for *_, test in items)
            per_shard = max(1, math.ceil(max(n_test_total, len(items) - n_test_total) / 2))
            counts = parquet.write_parquet_raw(tmp, class_names=names, images=render(), rows_per_shard=per_shard)
        else:
            counts = stanford.write_stanford_raw(tmp, layout=layout, class_names=names, images=render(),
                                                 archives=archives, nested=nested,
                                                 test_labels_in_devkit=test_labels_in_devkit)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    log.debug("synthesised %s (%s layout): %s train, %s test images of %d classes", out, layout, counts["train"],
             counts["test"], num_classes)
    return SynthReport(out=out, layout=layout, classes=[s.name for s in styles], counts=counts, files=files)
