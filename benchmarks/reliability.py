"""The reliability figures of README.md's "Reliability" section, measured on real processes.

    .venv/bin/python benchmarks/reliability.py prepare-kill [--points 7]
    .venv/bin/python benchmarks/reliability.py serve-load [--requests 2000] [--concurrency 16]
    .venv/bin/python benchmarks/reliability.py train-kill [--points 6]

- ``prepare-kill``: `carspotter prepare` of a synthetic raw dataset (archives, updated layout) is killed with
  SIGKILL at evenly spaced moments of an uninterrupted run, then run again; every resumed OUT must equal the
  uninterrupted one (every image's bytes, the CSVs, the manifest but its creation time) with no ``.partial`` left.
- ``serve-load``: `carspotter serve` (a real uvicorn process) answers a mix of good photos and hostile requests
  (non-images, truncated JPEGs, a decompression bomb's header, oversize bodies, wrong content types, another site's
  Origin) from several client threads; counts server errors (5xx), dropped connections and wrong answers.

- ``train-kill``: `carspotter train` (the recommended recipe shrunk to seconds: EMA, per-step cosine, MixUp/CutMix,
  MLflow on; both pipelines) is killed with SIGKILL at evenly spaced moments between its first checkpoint and its
  end, then continued with ``train --resume``; the resumed run's metrics.csv (timing columns aside), summary.json
  (wall time aside), last.ckpt weights and MLflow points must equal the uninterrupted run's, with no point twice.

Everything happens in a temporary folder, removed at the end. Prints one line of figures per check. Each check's
``--results FILE`` also writes its figures as a table, with the conditions, the machine, the date, the load before and
after, the command and the raw figures, into FILE (`record.Record`), from which the documentation renders it:

    .venv/bin/python benchmarks/reliability.py prepare-kill --results benchmarks/results/reliability_prepare_kill.json
    .venv/bin/python benchmarks/reliability.py serve-load --results benchmarks/results/reliability_serve_load.json
    .venv/bin/python benchmarks/reliability.py train-kill --results benchmarks/results/reliability_train_kill.json
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "carspotter.cli"]
RESULTS = Path("benchmarks") / "results"


def _tree(out: Path) -> dict[str, str]:
    """Every file of a prepared folder with its SHA-256; the manifest without its creation time and OUT's path."""
    found = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "manifest.json":
                manifest = json.loads(data.replace(str(out).encode(), b"OUT"))
                manifest.pop("created")
                data = json.dumps(manifest, sort_keys=True).encode()
            found[p.relative_to(out).as_posix()] = hashlib.sha256(data).hexdigest()
    return found


def _timed_prepare(raw: Path, out: Path) -> tuple[float, float]:
    """Run an uninterrupted prepare; (seconds until OUT appears, total seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen([*CLI, "prepare", raw, out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not out.exists() and proc.poll() is None:
        time.sleep(0.01)
    begins = time.perf_counter() - start  # before this, the interpreter is only starting: nothing to interrupt
    if proc.wait() != 0:
        raise SystemExit("the uninterrupted prepare failed")
    return begins, time.perf_counter() - start


def prepare_kill(points: int) -> dict[str, Any]:
    """Prints a line per kill point and the summary; returns the figures."""
    from carspotter.data.synth import synthesize

    classes, per_class = 10, 150
    kills = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "raw", layout="updated", num_classes=classes, per_class=per_class, seed=0, archives=True)
        _timed_prepare(work / "raw", work / "warm-up")  # the first run also warms the file cache: time the second
        begins, duration = _timed_prepare(work / "raw", work / "reference")
        reference = _tree(work / "reference")  # OUT's own path is normalised away
        identical = 0
        for k in range(1, points + 1):
            out = work / f"killed-{k}"
            at = begins + (duration - begins) * k / (points + 1)
            proc = subprocess.Popen(
                [*CLI, "prepare", work / "raw", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(at)
            proc.send_signal(signal.SIGKILL)
            killed = proc.wait() == -signal.SIGKILL
            state = (
                "partial"
                if (out / ".partial").exists()
                else "complete"
                if (out / "manifest.json").exists()
                else "empty"
            )
            subprocess.run([*CLI, "prepare", work / "raw", out], check=True, capture_output=True)
            resumed = _tree(out)
            same = resumed == reference and not (out / ".partial").exists()
            if not same:
                print(
                    "    differs:",
                    sorted(k for k in reference.keys() | resumed.keys() if reference.get(k) != resumed.get(k))[:5],
                )
            identical += same
            kills.append({"at_s": round(at, 3), "killed": killed, "out": state, "identical": same})
            print(
                f"  kill at {at:5.2f}s ({'killed' if killed else 'had finished'}, OUT {state}): "
                f"{'identical' if same else 'DIFFERENT'}"
            )
        print(
            f"prepare-kill: {identical} of {points} kill points gave output identical to the uninterrupted run "
            f"({len(reference)} files; uninterrupted run {duration:.1f}s, writing from {begins:.1f}s)"
        )
    return {"points": points, "identical": identical, "images": classes * per_class, "classes": classes,
            "files": len(reference), "uninterrupted_s": round(duration, 3), "writing_from_s": round(begins, 3),
            "kills": kills}  # fmt: skip


OUT_STATES = {"partial": "with OUT/.partial", "complete": "with OUT complete", "empty": "with OUT empty or absent"}


def prepare_kill_table(fig: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    killed = [k for k in fig["kills"] if k["killed"]]
    states = Counter(k["out"] for k in killed)
    header = ["kill points", "identical to the uninterrupted run", "killed mid-way", "OUT when killed",
              "files compared", "uninterrupted run s", "writing from s"]  # fmt: skip
    row = [str(fig["points"]), f"{fig['identical']} of {fig['points']}", f"{len(killed)} of {fig['points']}",
           ", ".join(f"{states[s]} {words}" for s, words in OUT_STATES.items() if states[s]) or "–", str(fig["files"]),
           f"{fig['uninterrupted_s']:.1f}", f"{fig['writing_from_s']:.1f}"]  # fmt: skip
    note = (f"`carspotter prepare` of a synthetic raw dataset ({fig['images']:,} images, {fig['classes']} classes, "
            f"updated layout, in archives) killed with SIGKILL at {fig['points']} evenly spaced moments between the "
            "start of writing and the end of an uninterrupted run (timed after a warm-up run), then run again; "
            "identical: every image's bytes, the CSVs and the manifest (creation time aside) equal the uninterrupted "
            "output's, with no .partial left; a run not killed had finished before its kill time")  # fmt: skip
    return header, [row], note


def _train_args(data: Path, runs: Path, pipeline: str) -> list[str]:
    recipe = Path(__file__).resolve().parents[1] / "configs" / "stanford_ghostnet.yaml"
    sets = [
        f"data.path={data}", f"output.runs_dir={runs}", "output.run_name=run", f"data.pipeline={pipeline}",
        "data.image_size=32", "trainer.max_epochs=6", "trainer.batch_size=8", "data.num_workers=2",
        "trainer.ema.decay=0.9", "logging.loggers=[mlflow]",
        "data.batch_augmentations=[{MixUp: {alpha: 0.4}}, {CutMix: {alpha: 1.0}}]",
    ]  # fmt: skip
    return [*CLI, "train", "--config", str(recipe), *[a for s in sets for a in ("--set", s)]]


def _run_record(run: Path) -> dict[str, object]:
    """What must not depend on interruptions: metrics (timing aside), summary (wall time aside), weights, MLflow."""
    import torch
    from mlflow.tracking import MlflowClient

    rows = [line.split(",")[:7] for line in (run / "metrics.csv").read_text().splitlines()]
    summary = {k: v for k, v in json.loads((run / "summary.json").read_text()).items()
               if k not in ("wall_time_s", "run_dir", "run_id")}  # fmt: skip
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    weights = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    client = MlflowClient(tracking_uri=f"sqlite:///{run.parent / 'mlflow.db'}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("carspotter").experiment_id])
    points = [(key, m.step, m.value) for key in sorted(mlrun.data.metrics) if key != "summary/wall_time_s"
              for m in client.get_metric_history(mlrun.info.run_id, key)]  # fmt: skip
    twice = sum(points.count(p) > 1 for p in points if p[0] != "epoch")  # Lightning itself logs `epoch` twice
    return {"rows": rows, "summary": summary, "weights": weights, "mlflow": sorted(set(points)), "twice": twice}


def train_kill(points: int, pipelines: list[str]) -> dict[str, Any]:
    """Prints a line per kill point, per pipeline and the summary; returns the figures."""
    from carspotter.data.prepare import prepare
    from carspotter.data.synth import synthesize

    figures: dict[str, Any] = {"points": points, "pipelines": {}}

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "raw", layout="updated", num_classes=4, per_class=24, seed=0)
        prepare(work / "raw", work / "data")
        total = same_all = 0
        for pipeline in pipelines:
            start = time.perf_counter()
            proc = subprocess.Popen(_train_args(work / "data", work / f"ref-{pipeline}", pipeline), **quiet)
            while not (work / f"ref-{pipeline}" / "run" / "last.ckpt").exists() and proc.poll() is None:
                time.sleep(0.05)
            first = time.perf_counter() - start
            if proc.wait() != 0:
                raise SystemExit("the uninterrupted training failed")
            duration = time.perf_counter() - start
            reference = _run_record(work / f"ref-{pipeline}" / "run")
            kills: list[dict[str, Any]] = []
            for k in range(1, points + 1):
                runs = work / f"killed-{pipeline}-{k}"
                at = first + (duration - first) * k / (points + 1)
                proc = subprocess.Popen(_train_args(work / "data", runs, pipeline), **quiet)
                time.sleep(at)
                proc.send_signal(signal.SIGKILL)
                killed = proc.wait() == -signal.SIGKILL
                csv = runs / "run" / "metrics.csv"
                epochs = len(csv.read_text().splitlines()) - 1 if csv.exists() else 0
                if (runs / "run" / "last.ckpt").exists():
                    subprocess.run([*CLI, "train", "--resume", str(runs / "run")], check=True, capture_output=True,
                                   env=env)  # fmt: skip
                else:  # killed before its first checkpoint: nothing to resume, the user starts it again
                    subprocess.run(_train_args(work / "data", work / f"again-{pipeline}-{k}", pipeline), check=True,
                                   capture_output=True, env=env)  # fmt: skip
                    runs = work / f"again-{pipeline}-{k}"
                resumed = _run_record(runs / "run")
                same = resumed == reference
                differs = [key for key in reference if reference[key] != resumed[key]]
                total += 1
                same_all += same
                outcome = "identical" if same else "DIFFERENT: " + ", ".join(differs)
                if "mlflow" in differs:
                    want, got = set(reference["mlflow"]), set(resumed["mlflow"])  # type: ignore[arg-type]
                    outcome += f" (missing {sorted(want - got)[:4]}, extra {sorted(got - want)[:4]})"
                state = "killed" if killed else "had finished"
                kills.append({"at_s": round(at, 3), "killed": killed, "epochs_logged": epochs, "identical": same,
                              "differs": differs})  # fmt: skip
                print(f"  {pipeline}: kill at {at:5.2f}s ({state} after {epochs} epochs): {outcome}", flush=True)
            print(f"  {pipeline}: uninterrupted run {duration:.1f}s, first checkpoint at {first:.1f}s", flush=True)
            figures["pipelines"][pipeline] = {
                "uninterrupted_s": round(duration, 3), "first_checkpoint_s": round(first, 3), "kills": kills,
            }  # fmt: skip
        print(f"train-kill: {same_all} of {total} kill points resumed to a run identical to the uninterrupted one "
              "(metrics, summary, weights, MLflow points; none twice)")  # fmt: skip
    return {**figures, "identical": same_all, "total": total}


def train_kill_table(fig: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    header = ["pipeline", "kill points", "identical to the uninterrupted run", "killed mid-way", "uninterrupted run s",
              "first checkpoint s"]  # fmt: skip
    rows = []
    for pipeline, p in fig["pipelines"].items():
        n = len(p["kills"])
        rows.append([pipeline, str(n), f"{sum(k['identical'] for k in p['kills'])} of {n}",
                     f"{sum(k['killed'] for k in p['kills'])} of {n}", f"{p['uninterrupted_s']:.1f}",
                     f"{p['first_checkpoint_s']:.1f}"])  # fmt: skip
    note = ("`carspotter train` of the recommended recipe shrunk to seconds (32 px, 6 epochs, batch 8, EMA 0.9, "
            "MixUp/CutMix, MLflow; 4 synthetic classes × 24 images; OMP_NUM_THREADS=1) killed with SIGKILL at "
            f"{fig['points']} evenly spaced moments between its first checkpoint and the end of an uninterrupted run, "
            "then continued with `train --resume` (or started again when killed before its first checkpoint); "
            "identical: metrics.csv (timing columns aside), summary.json (wall time aside), last.ckpt weights and "
            "MLflow points equal the uninterrupted run's, none twice; a run not killed had finished before its kill "
            "time")  # fmt: skip
    return header, rows, note


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _model(work: Path) -> tuple[Path, bytes]:
    """A tiny model trained on synthetic data and exported to ONNX, and one of its test photos."""
    from carspotter.config import load_config
    from carspotter.data.prepare import prepare
    from carspotter.data.synth import synthesize
    from carspotter.export.onnx import export
    from carspotter.training.run import train

    synthesize(work / "raw", layout="original", num_classes=5, per_class=12, seed=0, archives=False)
    prepare(work / "raw", work / "prepared")
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(
        demo,
        [
            f"data.path={work / 'prepared'}",
            f"output.runs_dir={work / 'runs'}",
            "trainer.max_epochs=1",
            "data.image_size=[48,48]",
            "data.num_workers=0",
            "logging.loggers=[csv]",
        ],
    )
    onnx = export(train(cfg, progress=False).best_ckpt, work / "model.onnx").path
    return onnx, next((work / "prepared" / "test").glob("*.jpg")).read_bytes()


def serve_load(requests: int, concurrency: int) -> dict[str, Any]:
    """Prints the summary line; returns the figures."""
    import httpx
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx, photo = _model(work)
        noise = io.BytesIO()
        Image.frombytes("RGB", (2000, 2000), os.urandom(12_000_000)).save(noise, "PNG")  # 12 MB: over 10 MiB
        # kind -> (request arguments, expected status)
        kinds = {
            "photo": ({"files": {"file": ("car.jpg", photo, "image/jpeg")}}, 200),
            "not-an-image": ({"files": {"file": ("x.jpg", b"not a picture", "image/jpeg")}}, 400),
            "truncated": ({"files": {"file": ("cut.jpg", photo[: len(photo) // 2], "image/jpeg")}}, 400),
            "bomb-header": ({"files": {"file": ("bomb.png", _png_header(100_000, 100_000), "image/png")}}, 413),
            "oversize": ({"files": {"file": ("big.png", noise.getvalue(), "image/png")}}, 413),
            "json-body": ({"json": {"file": "car.jpg"}}, 415),
            "text-part": ({"files": {"file": ("car.txt", photo, "text/plain")}}, 415),
            "no-file-field": ({"files": {"photo": ("car.jpg", photo, "image/jpeg")}}, 422),
            "foreign-origin": (
                {"files": {"file": ("car.jpg", photo, "image/jpeg")}, "headers": {"origin": "https://evil.example"}},
                403,
            ),
        }
        port = 18000 + os.getpid() % 1000
        server = subprocess.Popen(
            [*CLI, "serve", onnx, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            names = list(kinds)
            plan = [names[i % len(names)] for i in range(requests)]
            outcomes: Counter[str] = Counter()

            def send(kind: str) -> None:
                args, expected = kinds[kind]
                try:
                    with httpx.Client(timeout=60) as client:
                        status = client.post(f"{url}/api/predict", **args).status_code
                except httpx.TransportError:  # the server may answer 413 and close while an oversize body streams in
                    outcomes["oversize closed mid-upload" if kind == "oversize" else "dropped"] += 1
                    return
                outcomes["5xx" if status >= 500 else "as expected" if status == expected else f"{kind}: {status}"] += 1

            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(send, plan))
            elapsed = time.perf_counter() - start
            alive = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(
            f"serve-load: {requests} requests ({len(kinds)} kinds, {concurrency} client threads) in {elapsed:.0f}s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            + f"; 5xx {outcomes['5xx']}, dropped {outcomes['dropped']}; still serving afterwards: {alive}"
        )
    return {
        "requests": requests, "concurrency": concurrency, "kinds": {k: want for k, (_, want) in kinds.items()},
        "seconds": round(elapsed, 2), "outcomes": dict(sorted(outcomes.items())), "still_serving": alive,
    }  # fmt: skip


def serve_load_table(fig: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    outcomes = fig["outcomes"]
    other = {k: v for k, v in outcomes.items() if k not in ("as expected", "5xx", "dropped")}
    header = ["requests", "client threads", "answered as expected", "5xx", "dropped", "other outcomes", "s",
              "still serving"]  # fmt: skip
    row = [f"{fig['requests']:,}", str(fig["concurrency"]),
           f"{outcomes.get('as expected', 0):,} of {fig['requests']:,}", str(outcomes.get("5xx", 0)),
           str(outcomes.get("dropped", 0)), ", ".join(f"{k} {v}" for k, v in other.items()) or "none",
           f"{fig['seconds']:.0f}", "yes" if fig["still_serving"] else "no"]  # fmt: skip
    kinds = ", ".join(f"{kind} ({status})" for kind, status in fig["kinds"].items())
    note = ("`carspotter serve` (one uvicorn process) with a GhostNet (thesis variant, demo config, 48×48, 1 epoch "
            f"on synthetic data, ONNX), sent {fig['requests']:,} requests in turn of {len(fig['kinds'])} kinds, "
            f"with the status each expects: {kinds}, from {fig['concurrency']} client threads, one connection per "
            "request; 5xx: server errors; dropped: connections closed without an answer")  # fmt: skip
    return header, [row], note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    kill = sub.add_parser("prepare-kill")
    kill.add_argument("--points", type=int, default=7)
    load = sub.add_parser("serve-load")
    load.add_argument("--requests", type=int, default=2000)
    load.add_argument("--concurrency", type=int, default=16)
    train = sub.add_parser("train-kill")
    train.add_argument("--points", type=int, default=6)
    train.add_argument("--pipelines", nargs="+", default=["fast", "classic"], choices=["fast", "classic"])
    for check, sub_parser in (("prepare_kill", kill), ("serve_load", load), ("train_kill", train)):
        sub_parser.add_argument("--results", type=Path, help="also write the table, machine, date, load and command "
                                f"(JSON), e.g. {RESULTS / f'reliability_{check}.json'}")  # fmt: skip
    args = parser.parse_args()
    record = None
    if args.results:  # the load before the measurement, and the command
        from record import Record

        record = Record()
    if args.check == "prepare-kill":
        figures, table = prepare_kill(args.points), prepare_kill_table
    elif args.check == "train-kill":
        figures, table = train_kill(args.points, args.pipelines), train_kill_table
    else:
        figures, table = serve_load(args.requests, args.concurrency), serve_load_table
    if record is not None:
        header, rows, note = table(figures)
        record.save(args.results, header, rows, note=note, figures=figures)


if __name__ == "__main__":
    main()
