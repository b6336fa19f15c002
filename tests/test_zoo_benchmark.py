"""`benchmarks/zoo_real.py` end to end on tiny synthetic data (issue 29's smoke test): two models trained for one
epoch through `carspotter train`, exported to ONNX fp32 and int8, timed and scored; the CSV has exactly the issue's
columns, the picture and the provenance JSON are written, and a second call keeps the measured rows."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLUMNS = ["model", "top1", "top5", "int8_top1", "params_m", "macs_m", "macs_m_227", "latency_ms", "int8_latency_ms",
           "train_minutes", "image_size", "epochs", "seed", "setting", "config_sha256"]  # fmt: skip


@pytest.mark.slow
def test_the_zoo_benchmark_writes_every_column_for_two_models(four_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "zoo"
    command = [sys.executable, "zoo_real.py", "--data", str(four_classes), "--models",
               "ghostnet_050,mobilenetv3_small_100", "--size", "32", "--epochs", "1", "--workdir", str(out),
               "--csv", str(out / "zoo.csv"), "--plot", str(out / "zoo.png"), "--jobs", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]

    with (out / "zoo.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    assert sorted(r["model"] for r in rows) == ["ghostnet_050", "mobilenetv3_small_100"]
    for r in rows:
        assert all(r[c] != "" for c in COLUMNS), r
        assert 0.0 <= float(r["top1"]) <= float(r["top5"]) <= 1.0 and 0.0 <= float(r["int8_top1"]) <= 1.0
        assert float(r["params_m"]) > 0 and float(r["macs_m_227"]) > float(r["macs_m"]) > 0
        assert float(r["latency_ms"]) > 0 and float(r["int8_latency_ms"]) > 0
        assert (r["image_size"], r["epochs"], r["seed"], r["setting"]) == ("32", "1", "42", "recipe")
        assert len(r["config_sha256"]) == 64
    assert (out / "zoo.png").stat().st_size > 10_000
    record = json.loads((out / "zoo.json").read_text())
    latencies = [c["latency_ms"] for c in record["choice"]]
    assert record["choice"] and latencies == sorted(latencies)
    assert record["needs_screen"] == sorted(r["model"] for r in record["rows"] if r["train_top1"] < record["fit_floor"])
    assert record["stale_settings"] == []
    assert record["leaders"] == {m: [43, 44] for m in sorted(record["leaders"])}  # both models, seed 42 only
    assert len(record["leaders"]) == 2
    assert record["machine"]["cores"] and all(set(row["commands"]) >= {"train", "export", "export_int8", "bench"}
                                              for row in record["rows"])  # fmt: skip

    again = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-1500:]
    assert again.stdout.count("measured before") == 2 and ": training" not in again.stdout
    with (out / "zoo.csv").open() as f:
        assert list(csv.DictReader(f)) == rows  # kept, not measured again

    remeasure = [*command[:command.index("--models") + 1], "ghostnet_050", *command[command.index("--size"):],
                 "--remeasure", "--seeds", "42,43"]  # fmt: skip
    third = subprocess.run(remeasure, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300, env=env)
    assert third.returncode == 0, third.stderr[-1500:]
    assert "finished before, reused" in third.stdout and ": training" not in third.stdout  # not retrained
    assert "ghostnet_050@42: test top-1" in third.stdout and "measured before" not in third.stdout  # measured again
    assert "ghostnet_050@43: no finished run to measure again, skipped" in third.stdout  # a seed never trained
    record = json.loads((out / "zoo.json").read_text())
    assert record["timed_apart"] == ["ghostnet_050", "mobilenetv3_small_100"]  # each timed after its own run

    # --retime: every model in the table timed again in one sitting, from an architecture trained for one batch
    retime = [*command[:command.index("--models") + 1], "ghostnet_050", *command[command.index("--size"):],
              "--retime", "2"]  # fmt: skip
    fourth = subprocess.run(retime, cwd=BENCHMARKS, capture_output=True, text=True, timeout=600, env=env)
    assert fourth.returncode == 0, fourth.stderr[-1500:]
    assert fourth.stdout.count("retime: round") == 2 and "ghostnet_050@42: measured before" in fourth.stdout
    record = json.loads((out / "zoo.json").read_text())
    timed = record["timing"]["latency_ms"]
    assert sorted(timed) == ["ghostnet_050", "mobilenetv3_small_100"] and record["timed_apart"] == []
    for r in record["rows"]:
        assert (r["latency_ms"], r["int8_latency_ms"]) == (timed[r["model"]]["fp32"], timed[r["model"]]["int8"])
    assert all(len(v) == 2 for v in record["timing"]["round_spread"].values())
    # the trained rows' own exports were timed in the same rounds, against their untrained architecture
    assert sorted(record["timing"]["trained_over_untrained"]) == [
        f"{m}@42:{fmt}" for m in ("ghostnet_050", "mobilenetv3_small_100") for fmt in ("fp32", "int8")]
    with (out / "zoo.csv").open() as f:  # the CSV carries the sitting's latencies
        assert all(float(r["latency_ms"]) == timed[r["model"]]["fp32"] for r in csv.DictReader(f))


def test_the_choice_per_latency_budget_is_the_frontier_over_models_and_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from zoo_real import choice

    def row(model: str, seed: int, top1: float, int8_top1: float, ms: float, int8_ms: float) -> dict:
        return {"model": model, "seed": seed, "top1": top1, "int8_top1": int8_top1, "latency_ms": ms,
                "int8_latency_ms": int8_ms, "params_m": 1.0}  # fmt: skip

    rows = [
        row("chance", 42, 0.012, 0.012, 0.3, 0.2),  # at chance (1%): never a choice, however fast
        row("small", 42, 0.15, 0.10, 0.6, 0.5),  # int8 faster but 5 points worse: both on the frontier
        row("mid", 42, 0.30, 0.29, 1.0, 0.8),  # fp32 one point above its int8 (inside one SE): int8 is the choice
        row("big", 42, 0.30, 0.30, 3.0, 2.0),  # no better than mid, slower: not listed
        row("best", 42, 0.40, 0.20, 4.0, 3.0),
        row("best", 43, 0.44, 0.22, 4.2, 3.2),  # seeds are averaged: 42% at 4.1 ms
    ]
    picked = [(c["model"], c["format"]) for c in choice(rows, test_photos=2000, classes=100)]
    assert picked == [("small", "int8"), ("small", "fp32"), ("mid", "int8"), ("best", "fp32")]
    best = choice(rows, test_photos=2000, classes=100)[-1]
    assert (best["top1"], best["latency_ms"], best["seeds"]) == (0.42, 4.1, 2)
    # with a test split large enough, a one-point gain is real: mid's fp32 buys its latency over its int8
    assert ("mid", "fp32") in [(c["model"], c["format"]) for c in choice(rows, test_photos=1_000_000, classes=100)]


def test_a_family_needs_its_screen_when_its_recipe_row_cannot_fit_its_training_photos(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import zoo_real

    floor = zoo_real.FIT_FLOOR
    rows = [
        {"model": "efficientnet_b0", "setting": "recipe", "train_top1": floor - 0.01},  # underfits: screen it
        {"model": "mobilenetv2_100", "setting": "recipe", "train_top1": floor + 0.01},  # fits: its row stands
        {"model": "squeezenet1_1", "setting": "recipe", "train_top1": 0.01},  # its family had its screen already
        {"model": "ghostnetv2_100", "setting": "optimizer.params.lr=0.0003", "train_top1": 0.01},  # not the recipe
    ]
    assert zoo_real.needs_screen(rows, screened={"squeezenet", "ghostnetv2"}) == ["efficientnet_b0"]
    assert zoo_real.needs_screen(rows, screened=set()) == ["efficientnet_b0", "squeezenet1_1"]
    # a row trained before its family's setting was chosen stays in the table, named to be trained again
    monkeypatch.setattr(zoo_real, "FAMILY_SETTINGS", {"ghostnetv2": {"optimizer.params.lr": 0.0003}})
    assert zoo_real.stale_settings(rows) == []
    monkeypatch.setattr(zoo_real, "FAMILY_SETTINGS", {"squeezenet": {"optimizer.params.lr": 1e-4}})
    assert zoo_real.stale_settings(rows) == ["ghostnetv2_100", "squeezenet1_1"]


def test_the_leaders_are_the_best_models_by_mean_top1_with_the_seeds_each_lacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import zoo_real

    figures = {"latency_ms": 1.0, "int8_latency_ms": 1.0, "int8_top1": 0.0, "params_m": 1.0}
    rows = [
        {"model": "a", "seed": 42, "top1": 0.50}, {"model": "a", "seed": 43, "top1": 0.30},  # mean 0.40: second
        {"model": "b", "seed": 42, "top1": 0.45},  # first
        {"model": "c", "seed": 42, "top1": 0.35}, {"model": "c", "seed": 43, "top1": 0.35},
        {"model": "c", "seed": 44, "top1": 0.35},  # third, with every seed
        {"model": "d", "seed": 42, "top1": 0.34},  # fourth: not a leader
    ]  # fmt: skip
    found = zoo_real.leaders([{**figures, **r} for r in rows])
    assert found == {"b": [43, 44], "a": [44], "c": []} and list(found) == ["b", "a", "c"]  # best first


def test_the_family_settings_are_what_their_screens_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each committed family screen (results/zoo_screen_<family>.json): of the variants its rule adopted over the
    recipe, the best on held-out photos is the family's setting in `FAMILY_SETTINGS`; none adopted, none set."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from zoo_real import FAMILY_SETTINGS, screened_families

    from carspotter.evaluation.profile import model_family

    screens = sorted((BENCHMARKS / "results").glob("zoo_screen_*.json"))
    screened = set()
    for path in screens:
        record = json.loads(path.read_text())
        sets = {name: dict(s.split("=", 1) for s in variant) for name, variant in record["variants"].items()}
        family = model_family(next(iter(sets.values()))["model.name"])
        screened.add(family)
        adopted = [v for v, verdict in record["decision"].items() if verdict.startswith("adopted")]
        if not adopted:
            assert family not in FAMILY_SETTINGS, path.name
            continue
        held_out = record["results"]["all"]
        best = max(adopted, key=lambda v: held_out[v]["held_out_top1"])
        chosen = {k: json.loads(v) for k, v in sets[best].items()
                  if k not in ("model.name", "model.args", "loss.distillation")}  # fmt: skip
        assert FAMILY_SETTINGS.get(family) == chosen, path.name
    assert set(FAMILY_SETTINGS) <= screened  # no setting without its screen
    assert screened_families() == screened  # what needs_screen leaves out
