"""How `enroll` was chosen: imprint alone, imprint + margin, and imprint + fit + margin, judged on photos held out of
the base model's training, never on test (issue 31).

    .venv/bin/python benchmarks/enrol_choice.py --workdir benchmarks/out/own_streets

Reads what ``benchmarks/own_streets.py`` left in its workdir: the 88-class run (``runs/old-*``), ``old88`` and
``new10``. Old classes are scored on that run's own validation split (the photos of its train split it never trained
on); new classes on their train photos that were not enrolled (a seeded draw per class). Both are small (about 90 and
150 photos): the figures guide a default, they do not rank close variants. Writes
``benchmarks/results/enrol_choice_odd98.json`` (machine, date, load, command inside).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from real_accuracy import ROOT, command_line, load, machine

from carspotter.data.prepared import load_prepared, train_val_frames
from carspotter.inference.torch_backend import load_checkpoint
from carspotter.preprocessing import open_photo
from carspotter.training.enroll import embeddings, fit_rows, imprint, margin, reference_from

BUDGETS = (None, 0.005, 0.01, 0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "out" / "own_streets")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "enrol_choice_odd98.json")
    args = ap.parse_args()
    wd = args.workdir
    run = max((wd / "runs").glob("old-*"), key=lambda p: p.name)
    model, info = load_checkpoint(run / "best.ckpt")
    names, prep = list(info.class_names), info.preprocessing
    old, new = load_prepared(wd / "old88"), load_prepared(wd / "new10")
    record = {"command": command_line(), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": load(), "base_run": str(run), "results": {}}

    def embed(root: Path, frame) -> torch.Tensor:
        return embeddings(model, [open_photo(root / f) for f in frame["fname"]], prep, True).clone()

    ref = reference_from(model, prep, wd / "old88", True, names)
    _, val = train_val_frames(old.train, info.config.data.val_fraction, info.config.trainer.seed)
    val_x, val_y = embed(old.root, val), torch.tensor([names.index(old.classes[c]) for c in val["class_id"]])
    new_x, new_cls = embed(new.root, new.train), new.train["class_id"].to_numpy()
    clf = model.get_classifier()
    w, b = clf.weight.detach().double(), clf.bias.detach().double()

    def top1(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, biases: torch.Tensor) -> float:
        logits = torch.cat([x @ w.T + b, x @ rows.T + biases], dim=1)
        return round(float((logits.argmax(1) == y).double().mean()), 4)

    before = top1(val_x, val_y, torch.zeros(0, w.shape[1], dtype=w.dtype), torch.zeros(0, dtype=w.dtype))
    record["old_val_before"], record["old_val_n"] = before, len(val_y)
    for shots in (int(s) for s in args.shots.split(",")):
        enrol, held = [], []
        for k in range(new.num_classes):
            idx = np.flatnonzero(new_cls == k)
            order = np.random.default_rng([0, k]).permutation(len(idx))
            enrol.append(idx[order[:shots]])
            held.append(idx[order[shots:]])
        feats = [new_x[e] for e in enrol]
        rows = torch.stack([imprint(f, w, float(b.mean()), ref) for f in feats])
        biases = torch.full((new.num_classes,), float(b.mean()), dtype=w.dtype)
        fitted = fit_rows(ref, feats, torch.cat(feats) @ w.T + b, rows, biases)
        held_x = new_x[np.concatenate(held)]
        held_y = torch.tensor([len(names) + k for k, h in enumerate(held) for _ in h])
        out = {}
        for method, (r, bb) in {"imprint": (rows, biases), "imprint+fit": fitted}.items():
            for budget in BUDGETS:
                shifted = bb if budget is None else bb - margin(ref, r, bb, budget)
                out[f"{method}, margin {budget}"] = {"new_held_out_top1": top1(held_x, held_y, r, shifted),
                                                     "old_val_top1": top1(val_x, val_y, r, shifted)}  # fmt: skip
        record["results"][str(shots)] = {"held_out_new_n": len(held_y), **out}
        for k, v in out.items():
            print(f"{shots} photo(s)  {k:<28} new {v['new_held_out_top1']:.1%}  old {v['old_val_top1']:.1%} "
                  f"(before {before:.1%})", flush=True)  # fmt: skip
    record["load_after"] = load()
    args.results.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
