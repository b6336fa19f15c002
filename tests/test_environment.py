"""carspotter sends nothing anywhere and leaves nothing in the temp folder, unless the user's environment says so.

Each case runs a fresh interpreter with its own temp folder and home, and without the CI variables under which
MLflow turns its telemetry off by itself, so the result is carspotter's doing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# What carspotter's commands import: PyTorch's compiler stack (creates torchinductor_<user>), ONNX Runtime (its
# telemetry writes .ses into the temp folder and a device id under ~/.cache/Microsoft) and MLflow's client.
PROBE = """
import sys
if sys.argv[1] == "carspotter":
    import carspotter
import onnxruntime, torch._dynamo
from mlflow.telemetry.utils import is_telemetry_disabled
print(is_telemetry_disabled())
"""
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def run_probe(tmp_path: Path, first: str, **env: str) -> tuple[bool, list[str], list[str]]:
    """(MLflow telemetry disabled?, what is left in the temp folder, what is left in the home folder)."""
    temp, home = tmp_path / "tmp", tmp_path / "home"
    temp.mkdir()
    home.mkdir()
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in CI_MARKERS
        and k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "ORT_DISABLE_TELEMETRY", "TORCHINDUCTOR_CACHE_DIR")
    }
    clean |= {"TMPDIR": str(temp), "HOME": str(home), **env}
    proc = subprocess.run([sys.executable, "-c", PROBE, first], env=clean, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    left = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    return proc.stdout.strip().splitlines()[-1] == "True", left(temp), left(home)


def test_without_carspotter_the_libraries_phone_home_and_leave_files(tmp_path: Path) -> None:
    """The baseline that makes the next test meaningful."""
    disabled, temp, home = run_probe(tmp_path, "libraries only")
    assert not disabled
    assert ".ses" in temp and any(t.startswith("torchinductor_") for t in temp)
    assert any("Microsoft" in h for h in home)


def test_carspotter_turns_telemetry_off_and_leaves_nothing(tmp_path: Path) -> None:
    disabled, temp, home = run_probe(tmp_path, "carspotter")
    assert disabled
    assert temp == [] and home == []


@pytest.mark.parametrize("user_env", [{"MLFLOW_DISABLE_TELEMETRY": "false"}, {"DO_NOT_TRACK": "false"}])
def test_the_users_own_telemetry_setting_wins(tmp_path: Path, user_env: dict[str, str]) -> None:
    disabled, _, _ = run_probe(tmp_path, "carspotter", **user_env)
    assert not disabled


def test_a_cache_folder_the_user_chose_is_kept(tmp_path: Path) -> None:
    chosen = tmp_path / "inductor-cache"
    run_probe(tmp_path, "carspotter", TORCHINDUCTOR_CACHE_DIR=str(chosen))
    assert chosen.is_dir()
