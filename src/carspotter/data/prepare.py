"""`carspotter prepare RAW OUT`: detect the raw layout, read it, write the prepared folder.

A new raw layout is a `RawLayout` added to `LAYOUTS` (detected) or `NAMED_LAYOUTS` (only when asked for by
name, like ``folders``: almost any folder of images would pass for one folder per class).
"""

from __future__ import annotations

import logging
from pathlib import Path

from carspotter.data import folders, hub, parquet, stanford
from carspotter.data.raw import RawLayout
from carspotter.data.writer import PrepareReport, commit_pending, open_out, scratch_dir, write_prepared
from carspotter.errors import UserError
from carspotter.writable import check_writable

log = logging.getLogger(__name__)

# Detection order: the first layout whose files are all present wins ("updated" is the thesis's release).
LAYOUTS: tuple[RawLayout, ...] = (stanford.UPDATED, stanford.ORIGINAL, parquet.PARQUET)
NAMED_LAYOUTS: tuple[RawLayout, ...] = (folders.FOLDERS,)


def detect_layout(raw: Path, layout: str = "auto") -> RawLayout:
    """The layout of RAW (or check the one asked for); a `UserError` says what was found and what is expected."""
    raw = Path(raw)
    by_name = {lay.name: lay for lay in (*LAYOUTS, *NAMED_LAYOUTS)}
    if layout != "auto" and layout not in by_name:
        raise UserError(f"unknown layout {layout!r}; choose auto or one of {', '.join(by_name)}")
    candidates = LAYOUTS if layout == "auto" else (by_name[layout],)
    missing = {}
    for lay in candidates:
        lacks = lay.detect(raw)
        if not lacks:
            log.info("%s: %s layout", raw, lay.name)
            return lay
        missing[lay.name] = lacks
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in raw.iterdir() if not p.name.startswith("."))
    shown = ", ".join(found[:12]) + (" ..." if len(found) > 12 else "") if found else "nothing"
    lacking = "; ".join(f"{name} layout lacks {', '.join(lacks)}" for name, lacks in missing.items())
    raise UserError(
        f"{raw}: not a known raw dataset layout (found {shown}; {lacking}); see `carspotter prepare --help` "
        "(your own photos in one folder per class: --layout folders)"
    )


def prepare(
    raw: str | Path,
    out: str | Path,
    *,
    layout: str = "auto",
    overwrite: bool = False,
    test_fraction: float | None = None,
    seed: int | None = None,
    class_names: str | Path | None = None,
    revision: str | None = None,
) -> PrepareReport:
    """Turn the raw dataset in RAW into a prepared folder OUT (see `carspotter.data.prepared`).

    RAW may be ``hf://OWNER/NAME``: the Hugging Face dataset repository (at ``revision``) is fetched into the Hub
    cache first. ``class_names`` (one per line) names the parquet release's labels when it has no dataset card.
    Interrupted runs resume: archives extracted and images copied so far are kept in ``OUT/.partial``. A complete
    OUT is left as it is (the returned report says ``already_complete``) unless ``overwrite``.
    """
    fetched = None
    if hub.is_hub_url(raw):
        raw, fetched = hub.download_dataset(str(raw), revision)
    elif revision is not None:
        raise UserError("--revision is for hf://OWNER/NAME (a Hugging Face dataset repository)")
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise UserError(f"{raw}: no such folder; RAW must be the folder holding the downloaded dataset files")
    if out.resolve() == raw.resolve():
        raise UserError(f"{out}: OUT must differ from RAW; choose a new folder for the prepared dataset")
    check_writable(out, "prepared dataset folder")
    existing = open_out(out, overwrite=overwrite)
    if existing is not None:
        return existing
    finished = commit_pending(out)
    if finished is not None:
        return finished
    chosen = detect_layout(raw, layout)
    if chosen.name == folders.NAME:  # the only layout that draws its own split
        chosen = folders.folders_layout(
            test_fraction=folders.DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction,
            seed=folders.DEFAULT_SEED if seed is None else seed,
        )
    elif test_fraction is not None or seed is not None:
        raise UserError(f"{raw}: --test-fraction and --seed are for --layout folders; Stanford Cars comes split")
    if chosen.name == parquet.NAME:
        chosen = parquet.parquet_layout(None if class_names is None else Path(class_names))
    elif class_names is not None:
        raise UserError(f"{raw}: --class-names is for the parquet release; the {chosen.name} layout names its classes")
    dataset = chosen.read(raw, scratch_dir(out))
    if fetched is not None:
        dataset.details["hub"] = fetched
    if dataset.details.get("folders", {}).get("presplit") and (test_fraction is not None or seed is not None):
        dataset.details.setdefault("warnings", []).append(
            "--test-fraction and --seed were not used: RAW has its own train/ and test/ split, which is kept"
        )
    report = write_prepared(out, dataset, raw=raw)
    n = report.counts
    log.debug("prepared %s: %s train, %s test images, %d classes", out, n["train"], n["test"], report.num_classes)
    return report
