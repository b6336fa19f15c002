"""The command line's names (one name per idea across commands, `--version`) and its output as scripts read it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import run_main
from typer.testing import CliRunner

from carspotter import __version__
from carspotter.cli import app
from carspotter.data.synth import synthesize

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _options(*command: str) -> set[str]:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", result.output))


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"carspotter {__version__}"


def test_one_name_per_idea_across_commands() -> None:
    assert "--runs-dir" in _options("runs") and "--runs-dir" in _options("models")
    assert "--runs" not in _options("models") and "--runs" not in _options("bench-infer")
    assert "--repeats" in _options("bench-infer")
    for command in ("train", "demo", "sweep"):
        assert {"--config", "-c"} <= _options(command), command


def test_help_shows_the_defaults_of_options_without_one_in_the_signature() -> None:
    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "(default 0.2;" in result.output and "(default 0)" in result.output


# ------------------------------------------------------------------------------------------ output for scripts


def _run(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    return out, err


def test_output_for_scripts_is_whole_lines_each_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 35, item 10: with stdout a pipe, a path is never cut by a hard wrap at 80 columns, and a note is said
    once (it was said on stdout and again on stderr)."""
    deep = tmp_path / ("a-folder-name-long-enough-that-the-result-line-is-wider-than-eighty-columns" * 2)
    raw = deep / "raw"
    synthesize(raw, layout="updated", num_classes=2, per_class=4, seed=0, archives=False)
    (raw / "car_ims" / "000002.jpg").write_bytes(b"not a jpeg")
    out, err = _run(["prepare", str(raw), str(deep / "prepared")], capsys, monkeypatch)
    assert f"→ {deep / 'prepared'}\n" in out  # whole, on the result line
    assert (out + err).count("000002.jpg") == 1 and (out + err).count("unreadable") == 1
    out, err = _run(["prepare", str(raw), str(deep / "prepared")], capsys, monkeypatch)
    assert (out + err).count("already a complete prepared dataset") == 1 and "already" in err


def test_training_progress_goes_to_stderr(
    synthetic_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, err = _run(["train", "-c", str(DEMO), "--set", f"data.path={synthetic_prepared}", "--set",
                     f"output.runs_dir={tmp_path}", "--set", "trainer.max_epochs=1", "--set", "data.image_size=16",
                     "--set", "logging.loggers=[csv]", "--set", "data.num_workers=0"], capsys, monkeypatch)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("run folder: ") and lines[1].startswith("best epoch 0: ")
    assert "Epoch 0" in err and "Testing" in err
