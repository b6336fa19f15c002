"""``prepare hf://OWNER/NAME``: fetch a Hugging Face dataset repository's parquet files and card.

`huggingface_hub.snapshot_download` does the work: files land in its cache (``HF_HOME``, ``HF_HUB_CACHE``), an
interrupted download resumes, a repository already cached is not fetched again, and with ``HF_HUB_OFFLINE=1`` (or
without a network) the cached copy is used. Only ``*.parquet`` and the card (``README.md``) are fetched.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from carspotter.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "hf://"
PATTERNS = ["*.parquet", "README.md"]
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


def is_hub_url(raw: str | Path) -> bool:
    return str(raw).startswith(PREFIX)


def repo_id_of(url: str) -> str:
    """``hf://OWNER/NAME`` or ``hf://datasets/OWNER/NAME`` (the Hub's fsspec spelling) -> ``OWNER/NAME``."""
    rest = url[len(PREFIX) :].strip("/")
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/") :]
    if not _REPO_ID.match(rest):
        raise UserError(f"{url}: expected hf://OWNER/NAME, a Hugging Face dataset repository (e.g. hf://owner/cars)")
    return rest


def download_dataset(url: str, revision: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The local folder holding the repository's files, and where they came from (for the manifest)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = repo_id_of(url)
    at = f"{url} (revision {revision})" if revision else url
    log.info("fetching %s into the Hugging Face cache %s", at, constants.HF_HUB_CACHE)
    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=PATTERNS)
    except RevisionNotFoundError:
        raise UserError(f"{at}: no such revision in the repository; check --revision") from None
    except GatedRepoError:
        raise UserError(f"{at}: the repository is gated; accept its terms on the Hub, then `hf auth login`") from None
    except RepositoryNotFoundError:
        raise UserError(f"{at}: no such dataset repository on the Hub (or it is private: log in first)") from None
    except (LocalEntryNotFoundError, IncompleteSnapshotError):
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise UserError(
            f"{at}: the Hub cannot be reached{offline} and the repository is not (completely) in the cache "
            f"{constants.HF_HUB_CACHE}; connect and re-run (the download resumes), or download the files and run "
            "`carspotter prepare FOLDER OUT`"
        ) from None
    except (HfHubHTTPError, HFValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{at}: download failed ({first}); re-run to resume") from None
    folder = Path(folder)
    return folder, {"repository": repo_id, "revision": revision, "commit": folder.name, "folder": str(folder)}
