"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import start_chromium
from synthetic_support import make_synthetic_prepared


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test`'s workers (pytest-xdist), one thread each, for the commands the tests start too: two
    workers share the two cores instead of four threads thrashing on them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# Real Stanford Cars material beside the repository (never committed); tests that read it are marked `realdata`.
STANFORD_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "stanford_cars"


@pytest.fixture(scope="session")
def synthetic_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared dataset of 10 synthetic classes × 30 images (original layout, half train, half test)."""
    return make_synthetic_prepared(tmp_path_factory.mktemp("synthetic"), layout="original", per_class=30, seed=0)


@pytest.fixture(scope="session")
def learnable_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic classes × 80 images (updated layout): enough images per class to learn in a few CPU epochs."""
    return make_synthetic_prepared(tmp_path_factory.mktemp("learnable"), layout="updated", per_class=80, seed=1)


@pytest.fixture(scope="session")
def four_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic classes × 24 images (updated layout): the recommended recipe's tests train on it in seconds."""
    return make_synthetic_prepared(
        tmp_path_factory.mktemp("four"), layout="updated", per_class=24, seed=3, num_classes=4
    )


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny CPU batches run fastest on one thread, and several threads thrash badly on a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def stanford_shared() -> Path:
    """``../shared/stanford_cars`` (genuine devkit + real sample images); the test is skipped without it."""
    if not (STANFORD_SHARED / "devkit" / "cars_meta.mat").is_file():
        pytest.skip(f"{STANFORD_SHARED} not present (real Stanford Cars files are not part of the repository)")
    return STANFORD_SHARED


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.ckpt`` of a tiny 2-epoch GhostNet run (48×48) on `synthetic_prepared`: for export, serve, predict."""
    from carspotter.config import load_config
    from carspotter.training.run import train

    runs = tmp_path_factory.mktemp("trained_runs")
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(demo, [f"data.path={synthetic_prepared}", f"output.runs_dir={runs}", "trainer.max_epochs=2",
                             "data.image_size=[48,48]", "data.num_workers=0"])
    return train(cfg, progress=False).best_ckpt


@pytest.fixture(scope="session")
def responsive_checkpoint(synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose answer depends on the photo, for comparing runtimes: `trained_checkpoint` gives every photo
    nearly the same probabilities (logits move by 3e-4 from photo to photo), which would hide any difference.
    6 epochs without weight decay or augmentation (48×48), about 20 s; label smoothing as users train (without it the
    logits grow until the in-graph resize's one-level pixel differences move a probability by more than 1e-2)."""
    from carspotter.config import load_config
    from carspotter.training.run import train

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(
        demo,
        [
            f"data.path={synthetic_prepared}",
            f"output.runs_dir={tmp_path_factory.mktemp('runs')}",
            "trainer.max_epochs=6",
            "data.image_size=[48,48]",
            "data.num_workers=0",
            "data.image_augmentations=[]",
            "scheduler.name=null",
            "optimizer.params.weight_decay=0.0",
            "logging.loggers=[csv]",
        ],
    )
    return train(cfg, progress=False).best_ckpt


@pytest.fixture(scope="session")
def exported_onnx(trained_checkpoint: Path, synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trained_checkpoint` exported to fp32 ONNX (checked against PyTorch on the synthetic test images)."""
    from carspotter.export.onnx import export

    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    export(trained_checkpoint, out, data=synthetic_prepared)
    return out


@pytest.fixture(scope="session")
def responsive_onnx(
    responsive_checkpoint: Path, synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`responsive_checkpoint` exported to fp32 ONNX (checked against PyTorch by the export itself)."""
    from carspotter.export.onnx import export

    out = tmp_path_factory.mktemp("responsive-onnx") / "model.onnx"
    export(responsive_checkpoint, out, data=synthetic_prepared)
    return out


@pytest.fixture(scope="session")
def exported_pte(
    responsive_checkpoint: Path, synthetic_prepared: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`responsive_checkpoint` lowered to an ExecuTorch program (checked against PyTorch by the export itself)."""
    pytest.importorskip("executorch.exir")
    from carspotter.export.executorch import export

    out = tmp_path_factory.mktemp("exported-pte") / "model.pte"
    report = export(responsive_checkpoint, out, data=synthetic_prepared)
    assert report.agreement.max_abs_diff < 1e-3
    return out


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium (Selenium), its own profile; skipped without Selenium."""
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    driver = start_chromium(tmp_path / "profile")
    try:
        yield driver
    finally:
        driver.quit()
