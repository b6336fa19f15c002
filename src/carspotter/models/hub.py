"""``model.pretrained: hf-hub:timm/ghostnet_100.in1k``: weights by their Hugging Face Hub name, timm's own spelling.

The file is fetched once by `huggingface_hub.hf_hub_download` into the standard Hugging Face cache (``HF_HOME``,
``HF_HUB_CACHE``) and then read like any local weights file (`carspotter.models.weights.read_weights`): the same tensor
matching, the classifier re-initialised when the classes differ, the same report of loaded and new tensors. A
repository already cached is not fetched again; with ``HF_HUB_OFFLINE=1`` (or no network) the cached copy is used,
and without one the run stops before anything is written, in one line naming the model and the cache folder.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from carspotter.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "hf-hub:"
# What timm publishes on the Hub, most wanted first: safetensors, else a pickled state dict (read weights_only).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


def is_hub_name(value: str | Path | None) -> bool:
    return value is not None and str(value).startswith(PREFIX)


def repo_id_of(name: str) -> tuple[str, str | None]:
    """``hf-hub:OWNER/NAME[@REVISION]`` -> (``OWNER/NAME``, revision or None)."""
    rest = name[len(PREFIX) :].strip()
    repo_id, _, revision = rest.partition("@")
    if not _REPO_ID.match(repo_id):
        raise UserError(f"model.pretrained {name!r}: expected hf-hub:OWNER/NAME, e.g. hf-hub:timm/ghostnet_100.in1k")
    return repo_id, revision or None


def fetch_weights(name: str) -> Path:
    """The local path of the weights ``name`` names, downloaded into the Hugging Face cache unless already there."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = repo_id_of(name)
    offline = False
    for filename in WEIGHT_FILES:
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision))
        except LocalEntryNotFoundError:  # (an EntryNotFoundError too: caught first)
            offline = True  # not cached and the Hub cannot be reached: another file name may be cached
            continue
        except EntryNotFoundError:
            continue  # the repository has no file of that name: try the next kind
        except RevisionNotFoundError:
            raise UserError(f"model.pretrained {name}: no such revision on the Hub") from None
        except GatedRepoError:
            raise UserError(f"model.pretrained {name}: the repository is gated; accept its terms, then "
                            "`hf auth login`") from None
        except RepositoryNotFoundError:
            raise UserError(f"model.pretrained {name}: no such model repository on the Hub (or it is private: "
                            "log in first)") from None
        except (HfHubHTTPError, HFValidationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"model.pretrained {name}: download failed ({first}); re-run to resume") from None
        log.info("model.pretrained %s: %s", name, path)
        return path
    if offline:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise UserError(
            f"model.pretrained {name}: {why} and the weights are not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE}; connect once (they are then kept there), or give a local weights file"
        )
    raise UserError(f"model.pretrained {name}: the repository has none of {', '.join(WEIGHT_FILES)}")
