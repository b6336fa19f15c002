"""Outputs that never lose a user's files: checked before any work starts, written whole, never over what carspotter
did not write.

- `check_writable`: a folder carspotter could not create or write into is a `UserError` up front, not a traceback at
  the end. ``os.access`` alone is not enough: root ignores the permission bits (chmod 555 stops nobody here) while a
  read-only mount, a folder under a file or ``/proc`` still refuse root. So after ``os.access`` a real probe file is
  created and removed in the folder, or in its nearest existing parent when the folder is yet to be made.
- `check_output_file` and `replacing`: an output file is not a folder, replaces an existing file only when allowed,
  and appears whole or not at all, by a rename that replaces a symbolic link itself, never its target.
- `claim_output_folder` and `publish_folder`: a command writes into a folder only if the folder is new, empty, or
  holds its own record (`OWNER_FILE`) of what it wrote there before (or the user said ``--overwrite``); it replaces
  and removes only the files of that record, and keeps every other file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def check_output_file(path: str | Path, what: str, *, overwrite: bool = True) -> Path:
    """``path`` as a file carspotter may write: not a folder, in a writable folder, and, unless ``overwrite``, not
    there yet (``--overwrite`` allows replacing it). A `UserError` before any work starts."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; the {what} needs a file name, e.g. {path / 'out'}{path.suffix}")
    if not overwrite and os.path.lexists(path):
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise UserError(f"{path}: {kind} of that name exists; --overwrite replaces it, or choose another name")
    check_writable(path.parent, f"{what} folder")
    return path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Write ``path`` as a whole or not at all: the caller writes to the yielded path, in a private folder beside
    ``path``; when the block ends without an exception every file written there (the file and any companion, such as
    an ExecuTorch program's ``.json``) is renamed into place. A rename replaces a symbolic link at ``path`` itself,
    never the file it points to; a failure leaves whatever was at ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield staging / path.name
        for staged in sorted(staging.iterdir()):
            os.replace(staged, path.parent / staged.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------ output folders

OWNER_FILE = ".carspotter-output.json"  # what a command wrote into a folder: it may replace those files, no others


def owned_files(folder: str | Path, command: str) -> list[str] | None:
    """The files ``command`` recorded writing into ``folder`` (relative), or None if it has no such record."""
    record = Path(folder) / OWNER_FILE
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("command") != command or not isinstance(data.get("files"), list):
        return None
    return [str(f) for f in data["files"]]


def claim_output_folder(folder: str | Path, command: str, *, overwrite: bool, legacy: bool = False) -> list[str]:
    """Check that ``command`` may write into ``folder``: absent, empty, written by ``command`` before (its record, or
    ``legacy``: an older build recognised by the caller), or ``overwrite`` given. Returns the files recorded there
    before (to replace). Nothing is deleted here; a folder holding other files is refused in one line."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; choose a new folder")
    check_writable(folder, "output folder")
    if not folder.is_dir():
        return []
    previous = owned_files(folder, command)
    if previous is not None or legacy:
        return previous or []
    others = sorted(p.name for p in folder.iterdir())
    if others and not overwrite:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise UserError(
            f"{folder}: exists, holds files carspotter {command} did not write ({shown}); choose a new or empty "
            f"folder, or add --overwrite to write into it (files of other names are kept)"
        )
    return []


def publish_folder(staging: Path, folder: Path, command: str, previous: list[str]) -> list[str]:
    """Move every file built in ``staging`` into ``folder`` (made if absent, with the user's usual permissions),
    replacing files of the same names; delete the files ``previous`` recorded that this build no longer has, and
    nothing else; record what was written. Returns the files written (relative, sorted)."""
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        dest = folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir() and not dest.is_symlink():
            raise UserError(f"{dest}: is a folder where carspotter {command} writes a file; move it away")
        os.replace(staging / name, dest)
    for name in set(previous) - set(files):
        stale = folder / name
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
        _remove_empty_parents(stale.parent, folder)
    record = folder / OWNER_FILE
    record.write_text(json.dumps({"command": command, "files": files}, indent=1) + "\n")
    return files


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
