"""`build_site(model, out)`: the app that runs on the phone, as a static site any web server can host.

The site is an installable PWA: ``index.html`` + ``app.js`` (the page), ``manifest.webmanifest`` and ``icons/``,
``sw.js`` (a service worker that stores every file on the first visit, so the app then works offline),
``model.onnx`` (taking uint8 RGB pixels: a plain export is wrapped here with `carspotter.export.pixels`, no PyTorch
needed), ``model.json`` (class names, input and output names) and ``ort/`` (onnxruntime-web's JS and WASM, copied
from `carspotter.serve.web_runtime`). Nothing is fetched from elsewhere. `carspotter serve` serves the same site.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import onnx
from PIL import Image, ImageDraw

from carspotter.errors import UserError
from carspotter.export import pixels
from carspotter.formats import metadata
from carspotter.serve import web_runtime
from carspotter.writable import claim_output_folder, publish_folder

log = logging.getLogger(__name__)

PAGE_FILES = ("index.html", "app.js")  # copied from serve/static/ as they are; sw.js is a template
ICON_SIZES = (192, 512)
ACCENT = (37, 99, 235)  # the page's --accent
COMMAND = "app"  # the owner recorded in the site folder (`carspotter.writable`)
WORKER_SIGNATURE = 'const CACHE = "carspotter-'  # in sw.js: the folder is a site built before (a rebuild replaces it)


@dataclass(frozen=True)
class Site:
    path: Path
    files: list[str]  # relative to ``path``, as the service worker lists them
    size_bytes: int
    wrapped: bool  # the model had no preprocessing in its graph and was given it here


def pixels_model(model_path: str | Path) -> tuple[onnx.ModelProto, dict[str, Any], bool]:
    """The exported model as the browser feeds it (uint8 N×H×W×3 ``pixels``), its metadata, and whether it was
    wrapped with the preprocessing graph here."""
    path = Path(model_path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        raise UserError(f"{path}: no such .onnx file; the app runs an exported model (`carspotter export`)")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises protobuf's own errors for unreadable files
        raise UserError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None
    values = metadata.parse({p.key: p.value for p in proto.metadata_props}, path)
    if metadata.takes_pixels(values):
        return proto, values, False
    prep = metadata.preprocessing_of(values)
    try:
        proto = pixels.embed_preprocessing(proto, prep, values["input_name"])
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; re-export it with `carspotter export --embed-preprocessing`") from None
    if values.get("runtime", {}).get("precision") == "int8":
        log.warning(
            "%s: int8 without the preprocessing graph; wrapped here, its probabilities may move by ~1e-2 "
            "from `predict` on this file (int8 amplifies one-level resize differences); export with "
            "--int8 --embed-preprocessing to give the app and `predict` the same input",
            path,
        )
    values = {**values, "input_name": metadata.PIXELS, "input": metadata.input_description(prep, in_graph=True)}
    metadata.set_metadata(proto, {k: json.dumps(v) for k, v in values.items()})
    onnx.checker.check_model(proto)
    return proto, values, True


def build_site(model_path: str | Path, out: str | Path, *, title: str = "carspotter", overwrite: bool = False) -> Site:
    """Write the static site for ``model_path`` into ``out``: absent, empty, a site built before, or (``overwrite``)
    any folder. Only the site's own files are replaced; files it did not write (a ``CNAME``, a ``.git/``) are kept."""
    out = Path(out)
    ort_files = web_runtime.runtime_files()  # first: a missing runtime is the commonest mistake
    previous = claim_output_folder(out, COMMAND, overwrite=overwrite, legacy=out.is_dir() and _is_site(out))
    proto, values, wrapped = pixels_model(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_site(staging, proto, values, ort_files, title)
        files = publish_folder(staging, out, COMMAND, previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Site(out, files, sum((out / f).stat().st_size for f in files), wrapped)


def _write_site(root: Path, proto: onnx.ModelProto, values: dict[str, Any], ort_files: list[Path], title: str) -> None:
    static = resources.files("carspotter.serve").joinpath("static")
    for name in PAGE_FILES:
        (root / name).write_bytes(static.joinpath(name).read_bytes())
    page = (root / "index.html").read_text(encoding="utf-8")
    for tag in ("title", "h1"):
        page = page.replace(f"<{tag}>carspotter</{tag}>", f"<{tag}>{html.escape(title)}</{tag}>")
    (root / "index.html").write_text(page, encoding="utf-8")
    (root / "ort").mkdir()
    for src in ort_files:
        shutil.copyfile(src, root / "ort" / src.name)
    onnx.save_model(proto, str(root / "model.onnx"))
    app_meta = {k: values[k] for k in ("class_names", "input_name", "output_name", "input", "model")}
    app_meta["classes"] = [c.to_dict() for c in metadata.classes_of(values)]  # make, model, year per class
    app_meta["calibration"] = metadata.calibration_of(values, root / "model.onnx").to_dict()  # temperature, threshold
    (root / "model.json").write_text(json.dumps(app_meta, indent=1) + "\n")
    (root / "icons").mkdir()
    for size in ICON_SIZES:
        (root / "icons" / f"icon-{size}.png").write_bytes(_icon_png(size))
    (root / "manifest.webmanifest").write_text(json.dumps(_manifest(title), indent=1) + "\n")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    precache = ["./", *files]
    worker = static.joinpath("sw.js").read_text(encoding="utf-8")
    worker = worker.replace("__VERSION__", digest.hexdigest()[:16]).replace("__FILES__", json.dumps(precache))
    (root / "sw.js").write_text(worker)


def _is_site(folder: Path) -> bool:
    """Whether ``folder`` is a site `build_site` wrote (its service worker and model description are there)."""
    worker = folder / "sw.js"
    return (
        (folder / "model.json").is_file()
        and worker.is_file()
        and WORKER_SIGNATURE in worker.read_text("utf-8", "replace")
    )


def _manifest(title: str) -> dict[str, Any]:
    icons = [
        {"src": f"icons/icon-{s}.png", "sizes": f"{s}x{s}", "type": "image/png", "purpose": purpose}
        for s in ICON_SIZES
        for purpose in ("any", "maskable")
    ]
    return {
        "name": title,
        "short_name": title[:12],
        "description": "Recognise a car's make, model and year from a photo, on this device.",
        "start_url": "./",
        "scope": "./",
        "display": "standalone",
        "background_color": "#f8fafc",
        "theme_color": "#2563eb",
        "icons": icons,
    }


def _icon_png(size: int) -> bytes:
    """A white car on the accent colour, drawn inside the maskable safe zone (the middle 80%)."""
    img = Image.new("RGB", (size, size), ACCENT)
    draw = ImageDraw.Draw(img)
    s = size / 100
    draw.rounded_rectangle([22 * s, 48 * s, 78 * s, 64 * s], radius=5 * s, fill="white")  # body
    draw.polygon([(32 * s, 48 * s), (39 * s, 36 * s), (61 * s, 36 * s), (68 * s, 48 * s)], fill="white")  # cabin
    for cx in (34, 66):  # wheels
        draw.ellipse([(cx - 7) * s, 57 * s, (cx + 7) * s, 71 * s], fill=ACCENT)
        draw.ellipse([(cx - 5) * s, 59 * s, (cx + 5) * s, 69 * s], fill="white")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
