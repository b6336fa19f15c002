"""ms per photo of the app (`carspotter app`) in desktop headless Chromium, with the real model size.

    .venv/bin/python benchmarks/app_latency.py [--sample ../shared/stanford_cars/sample] [--every 10]

Builds the thesis's GhostNet at 227×227 (`configs/stanford_ghostnet.yaml`, one training step on a small synthetic
dataset: the weights do not change the time), exports it as plain fp32 ONNX, builds the app (which adds the
preprocessing graph), serves it with Python's static file server and uploads photos through the page: every
``--every``-th real sample photo (≤ 400 px) and synthetic phone-sized JPEGs (1 MP, 12 MP). The time is the page's
own, from the chosen file to the top-5 on screen (decode + pixels + model), and the model call alone. Needs
Chromium + chromedriver (Debian) and `carspotter app-setup`.

    .venv/bin/python benchmarks/app_latency.py --results benchmarks/results/app_latency.json

``--results FILE`` also writes the printed table (the same columns and figures), the conditions (Chromium,
onnxruntime-web, threads, model, input size), the machine, the date, the load before and after, the command and every
photo's times into FILE (`record.Record`), from which the documentation renders it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from carspotter.config import load_config
from carspotter.data.prepare import prepare
from carspotter.data.synth import synthesize
from carspotter.export.onnx import export
from carspotter.serve.site import build_site
from carspotter.serve.web_runtime import pinned_version
from carspotter.training.run import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser_support import classify, start_chromium, wait_ready  # noqa: E402 - the tests' helpers
from serve_support import static_server  # noqa: E402

DEFAULT_SAMPLE = ROOT.parent / "shared" / "stanford_cars" / "sample"
CONFIG = ROOT / "configs" / "stanford_ghostnet.yaml"
PHONE_SIZES = {"1 MP (1152×864)": (864, 1152), "12 MP (4000×3000)": (3000, 4000)}
PHONE_PHOTOS = 3  # per size


def model_227(work: Path) -> Path:
    """A plain fp32 ONNX export of the thesis's GhostNet at 227×227 (one training step)."""
    synthesize(work / "raw", layout="original", num_classes=10, per_class=6, seed=0)
    data = prepare(work / "raw", work / "prepared").out
    overrides = [
        f"data.path={data}",
        f"output.runs_dir={work / 'runs'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.batch_size=8",
        "data.num_workers=0",
        "logging.loggers=[csv]",
    ]
    ckpt = train(load_config(CONFIG, overrides), progress=False).best_ckpt
    return export(ckpt, work / "model.onnx", data=data).path


def phone_photo(path: Path, height: int, width: int) -> Path:
    """A smooth synthetic scene (JPEG, quality 90) of a phone photo's size."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 97), 128 + 100 * np.cos(y / 131), 128 + 60 * np.sin((x + y) / 53)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--every", type=int, default=10, help="time every N-th sample photo")
    parser.add_argument("--results", type=Path, help="also write the table, machine, date, load and command (JSON), "
                        "e.g. benchmarks/results/app_latency.json")
    args = parser.parse_args()
    record = None
    if args.results:  # the load before the measurement, and the command
        from record import Record

        record = Record()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        site = build_site(model_227(work), work / "site")
        groups: dict[str, list[Path]] = {}
        if (args.sample / "images").is_dir():
            groups["real sample photos (≤ 400 px)"] = sorted((args.sample / "images").glob("*.jpg"))[:: args.every]
        for name, (h, w) in PHONE_SIZES.items():
            groups[f"synthetic {name}"] = [phone_photo(work / f"phone-{h}-{i}.jpg", h, w) for i in range(PHONE_PHOTOS)]
        driver = start_chromium(work / "profile")
        try:
            with static_server(site.path) as (url, _):
                driver.get(url + "/")
                wait_ready(driver)
                version = driver.capabilities.get("browserVersion", "?")
                # app.js: threads only on a cross-origin-isolated page (COOP/COEP), which this static server is not
                threads = int(driver.execute_script(
                    "return self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1"))
                classify(driver, groups[next(iter(groups))][0])  # warm-up: first run compiles the WASM kernels
                rows = []
                times: dict[str, dict[str, list[float]]] = {}
                for name, photos in groups.items():
                    total, model = [], []
                    for photo in photos:
                        classify(driver, photo)
                        total.append(float(driver.execute_script("return document.body.dataset.ms")))
                        model.append(float(driver.execute_script("return document.body.dataset.modelMs")))
                    rows.append((name, len(photos), statistics.median(total), statistics.median(model)))
                    times[name] = {"ms": total, "model_ms": model}
        finally:
            driver.quit()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(
        f"\nChromium {version} headless, {platform.machine()} {cpu_name}, onnxruntime-web WASM, "
        f"{threads} thread{'s' if threads > 1 else ''}; site {site.size_bytes / 1e6:.1f} MB"
    )
    header = ["photos", "n", "ms per photo (median, file → top-5)", "model ms (median)"]
    table = [[name, str(n), f"{total:.0f}", f"{model:.0f}"] for name, n, total, model in rows]
    print("| " + " | ".join(header) + " |\n|---|---:|---:|---:|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    if record is not None:
        height, width = load_config(CONFIG).data.image_size
        sample = os.path.relpath(args.sample.resolve(), ROOT)
        every = "every photo" if args.every == 1 else f"every {args.every}th photo"
        real = f"{every} of {sample} and " if (args.sample / "images").is_dir() else ""
        record.save(
            args.results, header, table,
            note=f"the page built by `carspotter app` in desktop Chromium {version} headless (Selenium), "
                 f"onnxruntime-web {pinned_version()} WASM on {threads} thread{'s' if threads > 1 else ''}, "
                 f"the thesis's GhostNet at {height}×{width} (plain fp32 ONNX, one training step on synthetic data, "
                 f"site {site.size_bytes / 1e6:.1f} MB), on {platform.machine()} {cpu_name}; {real}{PHONE_PHOTOS} "
                 "synthetic JPEGs (quality 90) per phone size; medians of the page's own times after one warm-up "
                 "photo, from the chosen file to the top-5 on screen, and of the model call alone (the graph's resize "
                 "included)",
            browser=f"Chromium {version}", onnxruntime_web=pinned_version(), threads=threads,
            model={"config": os.path.relpath(CONFIG, ROOT), "image_size": [height, width], "format": "onnx-fp32"},
            site_bytes=site.size_bytes, every=args.every, times=times,
        )  # fmt: skip


if __name__ == "__main__":
    main()
