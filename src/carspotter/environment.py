"""What carspotter sets in its process environment before PyTorch, ONNX Runtime or MLflow are imported.

- **No telemetry**: carspotter sends nothing anywhere unless the user asks. MLflow's client reports usage unless
  ``MLFLOW_DISABLE_TELEMETRY`` or ``DO_NOT_TRACK`` is set, and ONNX Runtime writes a telemetry session file (``.ses``)
  into the temp folder and a device id under ``~/.cache/Microsoft`` unless ``ORT_DISABLE_TELEMETRY`` is set. Both are
  turned off here; a value the user set in their own environment is left as it is and wins.
- **No leftovers**: importing PyTorch's compiler stack creates ``torchinductor_<user>`` in the temp folder. Unless the
  user chose ``TORCHINDUCTOR_CACHE_DIR``, it goes into a folder of this process's own, removed when it exits.

Child processes (DataLoader workers, DDP ranks) inherit these variables, so they share the parent's choices and the
parent, which made the folder, removes it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

INDUCTOR_PREFIX = "carspotter-torchinductor-"


def set_process_defaults() -> None:
    if "MLFLOW_DISABLE_TELEMETRY" not in os.environ and "DO_NOT_TRACK" not in os.environ:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        try:
            ours = tempfile.mkdtemp(prefix=INDUCTOR_PREFIX)
        except OSError:  # no writable temp folder: PyTorch will say so itself if it needs one
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = ours
        atexit.register(_remove_own_folder, ours, os.getpid())


def _remove_own_folder(path: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked child inherits the handler; only the process that made the folder removes it
        shutil.rmtree(path, ignore_errors=True)
