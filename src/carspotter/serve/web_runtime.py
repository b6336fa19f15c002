"""onnxruntime-web, the in-browser runtime of the app: a pinned npm version, fetched once with ``npm ci``.

Its WASM (14 MB) is not committed and not in the wheel: the package ships ``web/package.json`` and
``web/package-lock.json``, and `install_runtime` (``carspotter app-setup``, also run by ``make install``) runs
``npm ci`` against them in a cache folder (``$CARSPOTTER_WEB_RUNTIME``, else ``~/.cache/carspotter/onnxruntime-web-
<version>``). `runtime_files` names the two files a site needs; when they are missing it says which step to run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from carspotter.errors import UserError

log = logging.getLogger(__name__)

PACKAGE = "onnxruntime-web"
# The WASM-only ES module bundle (the Emscripten glue inside it) and the SIMD WASM binary it loads from beside itself.
FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
SETUP_STEP = "carspotter app-setup"


def _lock_files() -> list[Path]:
    web = resources.files("carspotter.serve").joinpath("web")
    return [Path(str(web.joinpath(name))) for name in ("package.json", "package-lock.json")]


def pinned_version() -> str:
    """The onnxruntime-web version in the shipped lock file."""
    lock = json.loads(_lock_files()[1].read_text())
    return lock["packages"][f"node_modules/{PACKAGE}"]["version"]


def runtime_dir() -> Path:
    """Where ``npm ci`` puts the runtime: ``$CARSPOTTER_WEB_RUNTIME``, else the user's cache."""
    if os.environ.get("CARSPOTTER_WEB_RUNTIME"):
        return Path(os.environ["CARSPOTTER_WEB_RUNTIME"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "carspotter" / f"{PACKAGE}-{pinned_version()}"


def runtime_files() -> list[Path]:
    """The runtime's JS and WASM, to copy into a site; missing or another version is a `UserError` naming the step."""
    dist = runtime_dir() / "node_modules" / PACKAGE
    want = pinned_version()
    try:
        found = json.loads((dist / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        found = None
    files = [dist / "dist" / name for name in FILES]
    if found != want or not all(f.is_file() for f in files):
        state = "is missing" if found is None else f"is version {found}" if found != want else "is incomplete"
        raise UserError(
            f"{PACKAGE} {want} (the app's in-browser runtime) {state} in {runtime_dir()}: run "
            f"`{SETUP_STEP}` once (needs Node.js/npm; `make install` does it)"
        )
    return files


def install_runtime() -> Path:
    """``npm ci`` of the shipped lock file into `runtime_dir` (once; a complete install is left as it is)."""
    target = runtime_dir()
    try:
        runtime_files()
        log.info("%s %s is already set up in %s", PACKAGE, pinned_version(), target)
        return target
    except UserError:
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"`{SETUP_STEP}` needs npm to fetch {PACKAGE}: install Node.js and npm (Debian/Ubuntu: "
            "`apt-get install nodejs npm`) and run it again"
        )
    target.mkdir(parents=True, exist_ok=True)
    for src in _lock_files():
        shutil.copyfile(src, target / src.name)
    cmd = [npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"]
    log.info("fetching %s %s into %s (npm ci)", PACKAGE, pinned_version(), target)
    done = subprocess.run(cmd, cwd=target, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise UserError(f"`npm ci` in {target} failed (exit {done.returncode}): {last[0]}")
    runtime_files()
    return target
