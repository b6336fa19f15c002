"""`carspotter prepare RAW OUT`: detect the raw layout, read it, write the prepared folder.

Every raw layout plugs in the same way: a `RawLayout` (see `carspotter.data.raw`) in `LAYOUTS`. Nothing here knows a
layout by name: ``layout="auto"`` tries the layouts marked ``detected`` in order, each layout gets exactly the options
it declares, an option given for a layout that does not take it is refused, and the errors quote the layouts' own
``expects``.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from carspotter.data import folders, hub, parquet, stanford
from carspotter.data.raw import RawLayout, fingerprint
from carspotter.data.writer import PrepareReport, commit_pending, open_out, scratch_dir, write_prepared
from carspotter.errors import UserError
from carspotter.writable import check_writable

log = logging.getLogger(__name__)

# Every layout, in detection order: the first detected layout whose files are all present wins ("updated" is the
# thesis's release). `folders` is never detected (almost any folder of images would pass): only when named.
LAYOUTS: tuple[RawLayout, ...] = (stanford.UPDATED, stanford.ORIGINAL, parquet.PARQUET, folders.FOLDERS)
# The layout-specific options of `prepare` (a layout declares the ones it takes in `RawLayout.options`) as typed.
_FLAGS = {"test_fraction": "--test-fraction", "seed": "--seed", "class_names": "--class-names"}


def _layouts_by_name() -> dict[str, RawLayout]:
    by_name: dict[str, RawLayout] = {}
    for lay in LAYOUTS:
        if lay.name in by_name or lay.name == "auto":
            raise ValueError(f"layout name {lay.name!r} is taken")
        unknown = set(lay.options) - set(_FLAGS)
        if unknown:
            raise ValueError(f"layout {lay.name!r} declares options prepare does not have: {sorted(unknown)}")
        by_name[lay.name] = lay
    return by_name


def list_layouts() -> list[str]:
    """The layout names `prepare` accepts (besides ``auto``), in detection order."""
    return list(_layouts_by_name())


def get_layout(name: str) -> RawLayout:
    """The layout called ``name``; an unknown name is a `UserError` naming the close matches and every layout."""
    by_name = _layouts_by_name()
    if name in by_name:
        return by_name[name]
    close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise UserError(f"unknown layout {name!r}{hint}; choose auto or one of {', '.join(by_name)}")


def detect_layout(raw: Path, layout: str = "auto") -> RawLayout:
    """The layout of RAW (or check the one asked for); a `UserError` says what was found and what is expected."""
    raw = Path(raw)
    candidates = [lay for lay in LAYOUTS if lay.detected] if layout == "auto" else [get_layout(layout)]
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
    if layout != "auto":
        raise UserError(
            f"{raw}: not the {layout} layout (found {shown}; {lacking}); it expects {candidates[0].expects}"
        )
    named_only = "".join(f"; --layout {lay.name} reads {lay.expects}" for lay in LAYOUTS if not lay.detected)
    raise UserError(
        f"{raw}: not a known raw dataset layout (found {shown}; {lacking}); see `carspotter prepare --help`{named_only}"
    )


def _layout_options(raw: Path, layout: RawLayout, options: dict[str, Any]) -> dict[str, Any]:
    """The options ``layout`` takes (None: not given); one given for a layout that does not take it is refused."""
    foreign = [name for name, value in options.items() if value is not None and name not in layout.options]
    if foreign:
        flags = " and ".join(_FLAGS[name] for name in foreign)
        owners = [lay for lay in LAYOUTS if set(foreign) & set(lay.options)]
        takers = " or ".join(f"the {o.name} layout" if o.detected else f"--layout {o.name}" for o in owners)
        one = len(foreign) == 1
        raise UserError(
            f"{raw}: {flags} {'is' if one else 'are'} for {takers}, not the {layout.name} layout; "
            f"leave {'it' if one else 'them'} out"
        )
    return {name: options[name] for name in layout.options}


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
    check_writable(out, "prepared dataset folder")
    refuse_nesting(raw, out)
    given = {
        "test_fraction": test_fraction,
        "seed": seed,
        "class_names": None if class_names is None else str(Path(class_names).resolve()),
    }
    source = {"raw": str(raw.resolve()), "layout_asked": layout, "options": given, "fingerprint": fingerprint(raw)}
    existing = open_out(out, overwrite=overwrite, source=source)
    if existing is not None:
        return existing
    finished = commit_pending(out)
    if finished is not None:
        return finished
    chosen = detect_layout(raw, layout)
    options = {**given, "class_names": None if class_names is None else Path(class_names)}
    dataset = chosen.read(raw, scratch_dir(out), **_layout_options(raw, chosen, options))
    if fetched is not None:
        dataset.details["hub"] = fetched
    report = write_prepared(out, dataset, raw=raw, source=source)
    n = report.counts
    log.debug("prepared %s: %s train, %s test images, %d classes", out, n["train"], n["test"], report.num_classes)
    return report


def refuse_nesting(raw: Path, out: Path) -> None:
    """OUT inside RAW would be read back as part of the raw data by the next prepare (a class called ``out``);
    RAW inside OUT would be mixed with the prepared files. Both are refused before anything is written."""
    raw_r, out_r = raw.resolve(), out.resolve()
    if out_r == raw_r:
        raise UserError(f"{out}: OUT must differ from RAW; choose a new folder for the prepared dataset")
    if out_r.is_relative_to(raw_r):
        raise UserError(
            f"{out}: OUT lies inside RAW ({raw}), where the next prepare would read it as raw data; "
            "choose a folder outside RAW for the prepared dataset"
        )
    if raw_r.is_relative_to(out_r):
        raise UserError(f"{out}: OUT contains RAW ({raw}); choose a folder for the prepared dataset outside RAW's")
