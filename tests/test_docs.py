"""The documentation site builds with ``mkdocs build --strict`` (no broken link or anchor, no page outside the
navigation, no warning), offline (nothing fetched from a font service or a CDN), with its generated parts complete;
the README stays a front page whose results block matches the results files."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = [sys.executable, "-m", "mkdocs"]
REMOTE = re.compile(r"""(?:src|href)=["'](https?:)?//|@import\s+url\(["']?https?:|url\(["']?https?://""")


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not about the site
    proc = subprocess.run([*MKDOCS, "build", "--strict", "--site-dir", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    return out


def test_the_site_builds_strict_and_every_page_is_in_it(site: Path) -> None:
    pages = sorted(p.stem for p in (ROOT / "docs").glob("*.md"))
    assert pages and all((site / f"{page}.html").is_file() for page in pages), pages


def test_the_site_fetches_nothing_from_elsewhere(site: Path) -> None:
    """No web font, stylesheet or script from another host: the site works offline, from the file system too."""
    remote = []
    for path in site.rglob("*"):
        if path.suffix in {".html", ".css", ".js"}:
            text = path.read_text(errors="replace")
            remote += [f"{path.relative_to(site)}: {m.group(0)}" for m in REMOTE.finditer(text)
                       if "fonts.g" in text[m.start(): m.start() + 200] or path.suffix != ".html"
                       or "<script" in text[max(0, m.start() - 40): m.start()]
                       or "stylesheet" in text[max(0, m.start() - 60): m.start()]]  # fmt: skip
    assert not remote, remote[:10]
    assert "fonts.googleapis" not in (site / "index.html").read_text()


def test_generated_references_are_in_the_site(site: Path) -> None:
    import typer

    from carspotter.cli import app
    from carspotter.config import Config

    config_page = (site / "configuration.html").read_text()
    for section, field in Config.model_fields.items():
        assert f"{section}.{next(iter(field.annotation.model_fields))}" in config_page
    commands_page = (site / "commands.html").read_text()
    for name in typer.main.get_command(app).commands:
        assert f"carspotter {name}" in commands_page, name


def test_results_tables_are_rendered_from_the_results_files(site: Path) -> None:
    hooks = load_hooks()
    record = hooks.load("odd98_128px_100ep.json")
    recommended = next(r for k, r in record["runs"].items() if k.startswith("recommended"))
    training = (site / "training.html").read_text()
    assert f"{100 * recommended['test_top1']:.1f}%" in training and record["command"] in training
    assert "<!-- results:" not in training and "<!-- generated:" not in (site / "commands.html").read_text()


def test_the_readme_is_a_front_page_with_current_results() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 450
    assert "make demo" in readme and "make test" in readme
    block = load_hooks().README_BLOCK.search(readme)
    assert block is not None and block.group(2).strip() == load_hooks().headline().strip(), (
        "README.md's results block is stale: run `python docs/hooks.py`"
    )
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target
