#!/usr/bin/env bash
# The GPU check, in one go (about 10 minutes on one H100): installs what is missing (offline), runs the training
# throughput benchmark on CUDA (plain vs fast pipeline), a 3-epoch training through the fast pipeline, and the
# recommended recipe's single stage on real photos (odd98, 227 px, 100 epochs: top-1, img/s, wall time; without its
# own-teacher stage, which would double the time a device loan allows), and prints a short table. Run from anywhere: `bash benchmarks/gpu_check.sh`. Results go to $OUT (if set) or /tmp.
#
# The GPU machine has PyTorch, torchvision, Lightning and timm, but no internet and no kornia. Before carrying the
# tree there, run `bash benchmarks/fetch_wheels.sh` on a machine with internet: it puts kornia and kornia_rs wheels
# into benchmarks/wheels/ (git-ignored), which this script installs from. Without them the fast pipeline cannot run:
# the script says so, still measures the plain pipeline, and trains through the classic pipeline.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=${OUT:-/tmp}/gpu_check
mkdir -p "$RESULTS"
T0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*"; }

# carspotter itself, without touching the installed torch (its pin is for the CPU machines); no build isolation,
# since that would need to download setuptools. If even that fails, run from the source tree.
if ! $PY -c "import carspotter" 2>/dev/null; then
  $PY -m pip install --no-deps --no-build-isolation -q -e . 2>"$RESULTS/pip_carspotter.log" \
    || { log "editable install failed (see $RESULTS/pip_carspotter.log): using PYTHONPATH=src"; export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; }
fi
if ! $PY -c "import kornia.augmentation" 2>/dev/null; then
  if ls benchmarks/wheels/kornia-*.whl >/dev/null 2>&1; then
    $PY -m pip install --no-index --no-deps -q --find-links benchmarks/wheels kornia kornia_rs \
      || log "kornia wheels did not install (Python $($PY -c 'import sys; print(sys.version.split()[0])'))"
  fi
fi
if ! $PY -c "import pytorch_optimizer" 2>/dev/null && ls benchmarks/wheels/pytorch_optimizer-*.whl >/dev/null 2>&1; then
  # optimizer.sam only: training without it does not import pytorch_optimizer
  $PY -m pip install --no-index --no-deps -q --find-links benchmarks/wheels pytorch_optimizer || log "pytorch_optimizer wheel did not install"
fi
KORNIA=yes
$PY -c "import kornia.augmentation" 2>/dev/null || { KORNIA=no; log "kornia missing: fast pipeline skipped (run benchmarks/fetch_wheels.sh first)"; }
MISSING=$($PY - <<'EOF'
import importlib
names = ["numpy", "pandas", "scipy", "PIL", "yaml", "pydantic", "tqdm", "lightning", "torchmetrics", "timm"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$MISSING" ]; then log "missing Python modules: $MISSING (put their wheels in benchmarks/wheels)"; exit 2; fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1

# 1. Throughput of the full training step, both pipelines, one process (without kornia: the plain one only).
log "benchmark: plain vs fast pipeline, GhostNet 227px batch 64"
timeout 150 $PY benchmarks/train_throughput.py --device cuda --json 2>&1 | grep -v "Warning\|warn(" \
  | tee "$RESULTS/train_throughput.txt"

# 2. A 3-epoch training run end to end (synthetic data, 227px, the thesis's config and augmentations).
log "3-epoch training"
PIPELINE=fast; [ "$KORNIA" = no ] && PIPELINE=classic
WORK=$(mktemp -d)
timeout 200 $PY - "$WORK" "$PIPELINE" <<'EOF' 2>&1 | grep -v "Warning\|warn(" | tee "$RESULTS/train_3_epochs.txt"
import json, logging, sys, time
from pathlib import Path
from carspotter.config import load_config
from carspotter.data.prepare import prepare
from carspotter.data.synth import synthesize
from carspotter.training.callbacks import read_epoch_metrics
from carspotter.training.run import train
logging.basicConfig(level=logging.WARNING)
work, pipeline = Path(sys.argv[1]), sys.argv[2]
synthesize(work / "raw", layout="updated", num_classes=20, per_class=60, seed=0)
prepare(work / "raw", work / "prepared")
cfg = load_config("configs/stanford_ghostnet.yaml", [f"data.path={work / 'prepared'}", f"output.runs_dir={work / 'runs'}",
    "trainer.max_epochs=3", f"data.pipeline={pipeline}", "data.num_workers=8", "logging.loggers=[csv]",
    "loss.distillation=null"])
t = time.perf_counter()
result = train(cfg, progress=False)
rows = read_epoch_metrics(result.run_dir / "metrics.csv")
s = result.summary
print(json.dumps({"pipeline": pipeline, "epochs": len(rows), "train_img_s": [float(r["img_s"]) for r in rows],
                  "val_top1": s["val_top1"], "test_top1": s["test_top1"], "wall_s": round(time.perf_counter() - t, 1)}))
EOF
rm -rf "$WORK"

# 2b. The recommended recipe on real photos: odd98 (98 Stanford Cars classes, raw layout) at 227 px for 100 epochs,
#     as a user runs it (configs/stanford_ghostnet.yaml by --set alone), in its single stage. ODD98 points at the raw
#     folder (default ../shared/stanford_cars/odd98); without it the step says so and is skipped.
ODD98=${ODD98:-../shared/stanford_cars/odd98}
REAL_EPOCHS=${REAL_EPOCHS:-100}
T2=$(date +%s)
if [ -f "$ODD98/cars_annos.mat" ]; then
  log "recommended recipe (single stage) on odd98, 227 px, $REAL_EPOCHS epochs"
  REAL=$(mktemp -d)
  $PY -m carspotter.cli prepare "$ODD98" "$REAL/prepared" >/dev/null 2>&1
  T1=$(date +%s)
  timeout 900 $PY -m carspotter.cli train -c configs/stanford_ghostnet.yaml --set "data.path=$REAL/prepared" \
    --set data.image_size=227 --set "trainer.max_epochs=$REAL_EPOCHS" --set "output.runs_dir=$REAL/runs" \
    --set data.num_workers=8 --set "logging.loggers=[csv]" --set loss.distillation=null \
    >"$RESULTS/odd98_train.log" 2>&1
  $PY - "$REAL/runs" "$(( $(date +%s) - T1 ))" <<'EOF' | tee "$RESULTS/odd98.txt"
import csv, json, sys
from pathlib import Path
runs, wall = Path(sys.argv[1]), int(sys.argv[2])
summaries = sorted(runs.glob("*/summary.json"))
if not summaries:
    print(json.dumps({"odd98": "training did not finish", "wall_s": wall}))
    sys.exit()
s = json.loads(summaries[-1].read_text())
rows = list(csv.DictReader(open(summaries[-1].parent / "metrics.csv")))
img_s = sorted(float(r["img_s"]) for r in rows if r.get("img_s"))
print(json.dumps({"odd98_test_top1": s["test_top1"], "odd98_val_top1": s["val_top1"], "selected_by": s["selected_by"],
                  "median_train_img_s": img_s[len(img_s) // 2] if img_s else None, "wall_s": wall}))
EOF
  rm -rf "$REAL"
else
  log "odd98 not found at $ODD98 (set ODD98=...): real-photo training skipped"
fi
REAL_S=$(( $(date +%s) - T2 ))

# 3. If time is left: the fast pipeline again with torch.compile (compilation takes a minute or more).
LEFT=$(( 280 - ($(date +%s) - T0) + REAL_S ))  # the odd98 run is not counted against the compile budget
if [ "$KORNIA" = yes ] && [ "$LEFT" -gt 90 ]; then
  log "benchmark with torch.compile (at most ${LEFT}s)"
  timeout "$LEFT" $PY benchmarks/train_throughput.py --device cuda --json --compile --no-breakdown --rounds 1 2>&1 \
    | grep -v "Warning\|warn(" | tee "$RESULTS/train_throughput_compiled.txt"
fi

# 4. The short table.
log "done"
$PY - "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path
res = Path(sys.argv[1])
def last_json(name):
    lines = [l for l in (res / name).read_text().splitlines() if l.startswith("{")] if (res / name).exists() else []
    return json.loads(lines[-1]) if lines else {}
b, t, c = last_json("train_throughput.txt"), last_json("train_3_epochs.txt"), last_json("train_throughput_compiled.txt")
r = last_json("odd98.txt")
print("\n| check | result |\n|---|---|")
print(f"| plain pipeline (PIL, fp32), img/s | {b.get('plain_img_s')} |")
print(f"| fast pipeline (cache, on-device aug, bf16, channels_last), img/s | {b.get('fast_img_s')} |")
print(f"| speedup | {b.get('speedup')} |")
if c.get("fast_compiled_img_s"):
    print(f"| fast pipeline + torch.compile, img/s | {c['fast_compiled_img_s']} |")
best = max(b.get("fast_img_s") or 0, c.get("fast_compiled_img_s") or 0)
print(f"| target >= 10,000 img/s | {'met' if best >= 10000 else 'NOT met'} ({best:.0f}) |")
if t:
    print(f"| 3-epoch training ({t['pipeline']}) img/s per epoch | {', '.join(f'{v:.0f}' for v in t['train_img_s'])} |")
    print(f"| 3-epoch training wall time, val/test top-1 | {t['wall_s']} s, {t['val_top1']}/{t['test_top1']} |")
if r.get("odd98_test_top1") is not None:
    print(f"| odd98, recommended recipe, 227 px: test top-1 ({r['selected_by']}) | {r['odd98_test_top1']:.2%} |")
    print(f"| odd98 training: median img/s, wall time | {r['median_train_img_s']}, {r['wall_s']} s |")
EOF
