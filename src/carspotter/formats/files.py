"""File fingerprints: what a prepared dataset's manifest and an export's ``source_checkpoint`` record."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
