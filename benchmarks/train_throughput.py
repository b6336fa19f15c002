"""Training-step throughput: the plain per-image PIL pipeline against the fast pipeline, measured in one run.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--json] [--steps N] [--warmup N] [--compile]

Both pipelines train the same model (GhostNet, thesis variant, the thesis's C-50 head: 320 hidden channels, 196
classes) at 227×227, batch 64, with the thesis's augmentations (flip, affine, colour jitter) and the same AdamW, on a
synthetic dataset that the script synthesises and prepares itself. A step is the full training step: next batch
from the loader (+ augmentation and normalisation) + forward + backward + optimizer. Warm-up steps are not timed.

- plain: ``CarsDataModule``'s training loader (JPEG decode + PIL transforms per image in DataLoader workers), fp32.
- fast (fp32): the decoded-image cache + batched per-sample augmentation on the device, still fp32 and NCHW, to show
  what the data path alone gives.
- fast (fp32, channels_last): what `carspotter train` runs on a CPU (``precision: auto`` is fp32 there: bf16 learned
  worse on real photos; the fast pipeline brings channels_last).
- fast (bf16, channels_last): what it runs on CUDA; on a CPU with native bf16 (AVX512-BF16/AMX) too, to show what
  bf16 would buy there (training does not use it on a CPU).

A table goes to stdout (and with ``--results FILE``, e.g. ``benchmarks/results/train_throughput_cpu.json``, into a
results file with the machine, date, load and command); with ``--json`` its last line is
``{"device": .., "plain_img_s": .., "fast_img_s": .., "speedup": ..}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler

from carspotter.config import Config, load_config
from carspotter.data.dataset import CarImages, CarsDataModule
from carspotter.data.fast import FastCarsDataModule
from carspotter.data.prepare import prepare
from carspotter.data.synth import synthesize
from carspotter.data.transforms import TrainTransform
from carspotter.models import create_model
from carspotter.training.optimization import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
THESIS_CONFIG = ROOT / "configs" / "thesis_c50.yaml"
NUM_CLASSES = 196


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 among the CPU's flags (Linux's /proc/cpuinfo; False elsewhere): bf16 runs at full
    speed here. carspotter's training never asks (`precision: auto` is fp32 on any CPU); this benchmark's fast row
    does."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def make_dataset(work: Path, classes: int, per_class: int) -> Path:
    """A synthetic raw dataset (half of each class is train), prepared as `carspotter prepare` would."""
    synthesize(work / "raw", layout="updated", num_classes=classes, per_class=per_class, seed=0)
    prepare(work / "raw", work / "prepared")
    return work / "prepared"


def batches_forever(make_iter: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make_iter()


def time_steps(
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    bf16: bool,
    channels_last: bool,
    compile_model: bool,
    cfg: Config,
    warmup: int,
    steps: int,
) -> float:
    """Images/s of ``steps`` full training steps after ``warmup`` untimed ones, on a fresh model."""
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=NUM_CLASSES, in_chans=3, **cfg.model.args).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model.compile()
    optimizer = build_optimizer(cfg, model.parameters())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> int:
        x, y = next_batch()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(y)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    images = sum(step() for _ in range(steps))
    _sync(device)
    return images / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--results", type=Path, help="also write the table, machine, date, load and command (JSON)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row and round (cpu: 3, cuda: 40)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (cpu: 1, cuda: 10)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="plain DataLoader workers")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=None, help="synthetic images per class (half are train)")
    parser.add_argument("--compile", action="store_true", help="also time the fast pipeline with torch.compile")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the fast fp32 NCHW row")
    parser.add_argument("--rounds", type=int, default=3, help="rows are interleaved per round; median reported")
    parser.add_argument("--plain-only", action="store_true", help="only the plain pipeline (also without kornia)")
    args = parser.parse_args(argv)
    record = None
    if args.results:  # the load before the measurement, and the command
        from record import Record

        record = Record()
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (40 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    per_class = args.per_class or (48 if cuda else 24)
    fast_bf16 = cuda or cpu_has_native_bf16()

    with tempfile.TemporaryDirectory(prefix="carspotter-bench-") as tmp:
        t0 = time.perf_counter()
        prepared = make_dataset(Path(tmp), args.classes, per_class)
        overrides = [
            f"data.path={prepared}",
            f"data.image_size={args.image_size}",
            f"data.num_workers={args.workers}",
            f"trainer.batch_size={args.batch_size}",
            "data.val_fraction=0.05",
        ]
        cfg = load_config(THESIS_CONFIG, overrides)
        took = time.perf_counter() - t0
        print(f"synthetic data: {args.classes} classes, {per_class // 2} train images each ({took:.0f} s)")

        common = {"cfg": cfg, "warmup": warmup, "steps": steps}
        # CarsDataModule's training loader, except that its sampler draws enough images for every step, so the
        # timing never includes an epoch boundary of a dataset that is small only to keep synthesis short.
        plain_dm = CarsDataModule(cfg.data, args.batch_size, seed=0)
        loader = DataLoader(
            CarImages(plain_dm.dataset.root, plain_dm.train_frame, TrainTransform(cfg.data)),
            batch_size=args.batch_size,
            sampler=RandomSampler(plain_dm.train_frame.index, replacement=True,
                                  num_samples=(warmup + steps + 4) * args.batch_size),
            num_workers=args.workers,
            pin_memory=cuda,
            drop_last=True,
        )  # fmt: skip
        plain: dict[str, Iterator] = {}

        def plain_batch() -> tuple[torch.Tensor, torch.Tensor]:
            x, y = next(plain["iter"])
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        def plain_row() -> float:
            plain["iter"] = iter(loader)  # fresh workers per round, dropped (stopped) before the fast rows run
            try:
                return time_steps(plain_batch, device, bf16=False, channels_last=False, compile_model=False, **common)
            finally:
                plain.clear()

        rows: list[tuple[str, str, Callable[[], float]]] = [("plain", "fp32, NCHW", plain_row)]
        fast_ok = not args.plain_only and importlib.util.find_spec("kornia") is not None
        if not fast_ok:
            print("fast pipeline skipped: " + ("--plain-only" if args.plain_only else "kornia is not installed"))
        else:
            t0 = time.perf_counter()
            fast_dm = FastCarsDataModule(cfg.data, args.batch_size, seed=0, progress=False, device=str(device))
            fast_loader = fast_dm.train_dataloader()
            fast_iter = batches_forever(lambda: iter(fast_loader))
            augment = fast_dm.batch_transform.to(device)
            print(f"image cache built and loaded in {time.perf_counter() - t0:.1f} s (once per dataset and settings)")

            def fast_batch() -> tuple[torch.Tensor, torch.Tensor]:
                x, y = next(fast_iter)
                return augment(x.to(device, non_blocking=True), train=True), y.to(device, non_blocking=True)

            def fast_row(bf16: bool, channels_last: bool, compile_model: bool = False) -> Callable[[], float]:
                extra = {**common, "warmup": max(warmup, 3)} if compile_model else common
                return lambda: time_steps(fast_batch, device, bf16=bf16, channels_last=channels_last,
                                          compile_model=compile_model, **extra)  # fmt: skip

            if not args.no_breakdown:
                rows.append(("fast", "fp32, NCHW", fast_row(False, False)))
            if not cuda:  # what `carspotter train` runs on a CPU
                rows.append(("fast", "fp32, channels_last", fast_row(False, True)))
            layout = f"{'bf16' if fast_bf16 else 'fp32'}, channels_last"
            if fast_bf16:
                rows.append(("fast", layout, fast_row(True, True)))
            if args.compile:
                rows.append(("fast", layout + ", compiled", fast_row(fast_bf16, True, compile_model=True)))

        # Rows interleaved round by round, so that a change in the machine's load hits every row alike; median.
        samples: list[list[float]] = [[] for _ in rows]
        for r in range(args.rounds):
            for i, (name, what, measure) in enumerate(rows):
                samples[i].append(measure())
                logging.getLogger("benchmark").info("round %d %s %s: %.1f img/s", r, name, what, samples[i][-1])
        measured = [(name, what, statistics.median(v)) for (name, what, _), v in zip(rows, samples, strict=True)]
        fast_img_s = next((v for n, w, v in measured if n == "fast" and "channels_last" in w and "compiled" not in w),
                          None)  # fmt: skip
        compiled = next((v for n, w, v in measured if "compiled" in w), None)
        rows = measured  # type: ignore[assignment]
    return report(args, rows, fast_img_s, compiled, machine_name(args.device), steps, warmup, record)


def report(args, rows, fast_img_s, compiled, machine, steps, warmup, record=None) -> dict[str, object]:
    """The table; with --json, then one JSON line (the fast figure is the default, uncompiled fast pipeline)."""
    plain_img_s = rows[0][2]
    size = f"{args.image_size}x{args.image_size}"
    print(f"\ntraining-step throughput, GhostNet (thesis) {size}, batch {args.batch_size}, {steps} timed steps after "
          f"{warmup} warm-up per row, median of {args.rounds} interleaved round(s), on {machine} "
          f"(torch {torch.__version__})")  # fmt: skip
    print(f"{'pipeline':<10}{'precision, layout':<32}{'img/s':>10}{'x plain':>10}")
    for name, what, img_s in rows:
        print(f"{name:<10}{what:<32}{img_s:>10.1f}{img_s / plain_img_s:>10.2f}")
    result: dict[str, object] = {
        "device": args.device,
        "plain_img_s": round(plain_img_s, 2),
        "fast_img_s": None if fast_img_s is None else round(fast_img_s, 2),
        "speedup": None if fast_img_s is None else round(fast_img_s / plain_img_s, 3),
    }
    if compiled is not None:
        result["fast_compiled_img_s"] = round(compiled, 2)
    if args.json:
        print(json.dumps(result))
    if record is not None:
        record.save(
            args.results, ["pipeline", "precision, layout", "img/s", "× plain"],
            [[name, what, f"{img_s:.1f}", f"{img_s / plain_img_s:.2f}"] for name, what, img_s in rows],
            note=f"training-step throughput, GhostNet (thesis) {size}, batch {args.batch_size}, {steps} timed steps "
                 f"after {warmup} warm-up per row, median of {args.rounds} interleaved round(s), on {machine}, "
                 f"device {args.device}, torch {torch.__version__}", result=result,
        )  # fmt: skip
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
