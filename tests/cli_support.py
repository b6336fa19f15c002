"""The `carspotter` command run in the test's own process through its real entry point (`carspotter.cli.main`),
with stdout and stderr captured as pipes (not a terminal), as a script that reads its output sees them."""

from __future__ import annotations

import sys

import pytest


def run_main(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """``carspotter ARGS``: (exit code, stdout, stderr)."""
    from carspotter.cli import main

    monkeypatch.setattr(sys, "argv", ["carspotter", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
        sys.exit(0)
    code = done.value.code
    out = capsys.readouterr()
    return (code if isinstance(code, int) else 0 if code is None else 1), out.out, out.err
