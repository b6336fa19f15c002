"""Safe, resumable extraction of the tar archives Stanford Cars ships as (`car_ims.tgz`, `car_devkit.tgz`, ...).

A downloaded archive is untrusted input: a member with an absolute path, a `..` component or a link that points
outside the target could write anywhere on the user's disk. Every member is checked before it is written, and
tarfile's `data` filter is applied on top. Extraction goes to a temporary folder that is renamed into place only when
complete, so an interrupted run never leaves a folder that looks finished, and a re-run reuses a finished one.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from carspotter.errors import UserError

log = logging.getLogger(__name__)

DONE_STAMP = ".extracted.json"


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a member that could write outside the extraction folder, or that is not a file, folder or safe link."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        _refuse(archive, member, "has an absolute path")
    path = PurePosixPath(name.replace("\\", "/"))
    if ".." in path.parts:
        _refuse(archive, member, "contains '..'")
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
            _refuse(archive, member, f"is a link to the absolute path {member.linkname!r}")
        # A symlink resolves from its own folder, a hard link from the archive root.
        base = path.parent if member.issym() else PurePosixPath()
        depth: list[str] = []
        for part in (base / target).parts:
            if part == "..":
                if not depth:
                    _refuse(archive, member, f"is a link pointing outside the archive ({member.linkname!r})")
                depth.pop()
            elif part != ".":
                depth.append(part)
    elif not (member.isfile() or member.isdir()):
        _refuse(archive, member, "is a device, pipe or other special file")


def _refuse(archive: Path, member: tarfile.TarInfo, why: str) -> None:
    raise UserError(
        f"{archive}: refusing to extract member {member.name!r}: it {why}; "
        "the archive is damaged or hostile, download it again from a trusted source"
    )


def _checked_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    for member in tqdm(tar, desc=f"extract {archive.name}", unit="file", disable=None, leave=False):
        check_member(member, archive)
        yield member


def _stamp(archive: Path) -> dict[str, object]:
    st = archive.stat()
    return {"archive": archive.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into the folder ``dest``; reuse ``dest`` if a previous run already extracted this archive.

    Work happens in ``dest.tmp`` (removed on failure) and is renamed to ``dest`` only when every member is out.
    """
    archive, dest = Path(archive), Path(dest)
    stamp = _stamp(archive)
    done = dest / DONE_STAMP
    if done.is_file():
        try:
            if json.loads(done.read_text()) == stamp:
                log.info("reusing %s, already extracted from %s", dest, archive)
                return dest
        except (OSError, json.JSONDecodeError):
            pass
    tmp = dest.with_name(dest.name + ".tmp")
    for stale in (tmp, dest):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    log.info("extracting %s", archive)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, members=_checked_members(tar, archive), filter="data")
    except tarfile.FilterError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        member = getattr(exc, "tarinfo", None)
        what = repr(member.name) if member is not None else "a member"
        raise UserError(
            f"{archive}: refusing to extract {what} ({exc}); the archive is damaged or hostile, download it again"
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and _is_disk_error(exc):
            raise
        raise UserError(f"{archive}: not a readable tar archive ({exc}); download it again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / DONE_STAMP).write_text(json.dumps(stamp))
    tmp.rename(dest)
    return dest


def _is_disk_error(exc: OSError) -> bool:
    """A full disk or a permission problem is about OUT, not the archive: let it through as it is."""
    return exc.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT)


def archive_names(archive: Path) -> list[str]:
    """Member names of a (small) archive, for layout detection without extracting it."""
    try:
        with tarfile.open(archive) as tar:
            return tar.getnames()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"{archive}: not a readable tar archive ({exc}); download it again") from None
