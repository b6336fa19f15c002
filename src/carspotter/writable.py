"""Refuse an output folder that cannot be written before any work starts, not with a traceback at the end.

``os.access`` alone is not enough: root ignores the permission bits (chmod 555 stops nobody here) while a read-only
mount, a folder under a file or ``/proc`` still refuse root. So after ``os.access`` a real probe file is created
and removed in the folder, or in its nearest existing parent when the folder is yet to be made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from carspotter.errors import UserError

_PROBE_PREFIX = ".carspotter-write-probe-"


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """A `UserError` naming ``folder`` if carspotter could not create it or write files into it."""
    folder = Path(folder)
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{folder}: cannot be used as the {what}: {existing} is a file, not a folder; choose another {what}"
        )
    why = None
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "no write permission"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=existing)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
        else:
            os.close(fd)
            os.unlink(probe)
    if why is not None:
        where = "" if existing == folder else f" (in {existing})"
        raise UserError(
            f"{folder}: cannot write the {what} here{where}: {why}; choose another {what} or fix its permissions"
        )
