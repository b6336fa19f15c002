"""The ``parquet`` raw layout: Stanford Cars as the Hugging Face dataset repositories ship it.

Repositories such as ``tanganke/stanford_cars`` hold ``data/train-00000-of-00002.parquet``, ``data/test-*.parquet``
(or ``train/0000.parquet``, as the Hub's parquet conversion names them) with an ``image`` column ``{bytes, path}`` and
an integer ``label``; the class names are the ``class_label`` names of the ``label`` feature in the dataset card
(``README.md``), and ``datasets`` also writes them into each file's schema metadata. ``--class-names FILE`` gives
them when neither is there.

The files are read with pyarrow a few rows at a time, and each image's bytes are written to the scratch folder, so
a 2 GB release never sits in memory. A shard unpacked by an interrupted run is reused (its stamp lists the rows).
There are no boxes: each image's box is the whole image. `write_parquet_raw` writes such a release (shards, schema
metadata, card) from images and labels: `synth` and the tests make parquet datasets with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from carspotter.data.raw import RawDataset, RawImage, RawLayout, StanfordImage
from carspotter.errors import UserError

log = logging.getLogger(__name__)

NAME = "parquet"
SPLITS = ("train", "test")
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
CARD = "README.md"
_SEARCH_DEPTH = 3  # RAW/x.parquet, RAW/data/x.parquet, RAW/<repo>/data/x.parquet, RAW/<repo>/<config>/train/x.parquet
_ROWS_PER_BATCH = 16  # rows decoded at a time: memory is a few images, whatever the size of a shard
_STREAM_BUFFER = 1 << 20  # read column chunks through a 1 MiB buffer instead of whole
_STAMP = ".unpacked.json"
_SPLIT_NAME = re.compile(r"^(train|test)(?:[-_.]|$)")
_SAFE_NAME = re.compile(r"^[\w][\w.\- ]*\.(?:jpe?g|png|bmp|gif|webp|tiff?)$", re.IGNORECASE)


# ------------------------------------------------------------------------------------------------- finding files


def find_shards(raw: Path) -> dict[str, list[Path]]:
    """The parquet files under RAW by split (``train-*.parquet``, ``train/*.parquet``; others under ``""``)."""
    shards: dict[str, list[Path]] = {}
    level = [Path(raw)]
    for _ in range(_SEARCH_DEPTH + 1):
        nxt = []
        for folder in level:
            try:
                entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
            except OSError:
                continue
            for p in entries:
                if p.is_dir():
                    nxt.append(p)
                elif p.suffix == ".parquet":
                    shards.setdefault(_split_of(p), []).append(p)
        level = nxt
    return shards


def _split_of(path: Path) -> str:
    m = _SPLIT_NAME.match(path.name.lower())
    if m:
        return m.group(1)
    return path.parent.name.lower() if path.parent.name.lower() in SPLITS else ""


def detect(raw: Path) -> list[str]:
    shards = find_shards(raw)
    return [f"{s}-*.parquet (in RAW/ or RAW/data/)" for s in SPLITS if not shards.get(s)]


# -------------------------------------------------------------------------------------------------- class names


def _card_path(shards: list[Path], raw: Path) -> Path | None:
    """The dataset card: ``README.md`` in the shards' folder or a folder above it, up to RAW."""
    folder = Path(os.path.commonpath([p.parent for p in shards]))
    raw = Path(raw)
    while True:
        if (folder / CARD).is_file():
            return folder / CARD
        if folder == raw or raw not in folder.parents:
            return None
        folder = folder.parent


def _names_from_card(card: Path) -> list[str] | None:
    """The ``class_label`` names of the ``label`` feature in the card's YAML header (None: the card has none)."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(card) or {}
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{card}: unreadable dataset card header ({exc}); download it again") from None
    infos = meta.get("dataset_info") or []
    for info in [infos] if isinstance(infos, dict) else infos:
        features = info.get("features") if isinstance(info, dict) else None
        for feature in features if isinstance(features, list) else []:
            dtype = feature.get("dtype") if isinstance(feature, dict) else None
            if isinstance(dtype, dict) and feature.get("name") == LABEL_COLUMN and "class_label" in dtype:
                names = (dtype["class_label"] or {}).get("names")
                if isinstance(names, dict):  # {'0': 'AM General Hummer SUV 2000', ...}
                    try:
                        by_id = {int(k): str(v) for k, v in names.items()}
                    except ValueError:
                        raise UserError(f"{card}: class_label names must be keyed 0, 1, ...") from None
                    if sorted(by_id) != list(range(len(by_id))):
                        raise UserError(f"{card}: class_label names must be keyed 0..{len(by_id) - 1} without gaps")
                    return [by_id[i] for i in range(len(by_id))]
                if isinstance(names, list):
                    return [str(n) for n in names]
    return None


def _names_from_schema(shard: Path) -> list[str] | None:
    """The ClassLabel names ``datasets`` writes into a parquet file's ``huggingface`` schema metadata."""
    meta = (_parquet_file(shard).schema_arrow.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][LABEL_COLUMN]
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


def read_class_names_file(path: Path) -> list[str]:
    """One class name per line; line 1 is label 0."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the class names file ({exc})") from None
    while names and not names[-1]:
        names.pop()
    if not names or not all(names):
        raise UserError(f"{path}: expected one class name per line (line 1 is label 0), without blank lines")
    return names


def _class_names(shards: list[Path], raw: Path, names_file: Path | None) -> tuple[list[str], str]:
    if names_file is not None:
        return read_class_names_file(names_file), str(names_file)
    card = _card_path(shards, raw)
    names = _names_from_card(card) if card is not None else None
    if names:
        return names, str(card)
    names = _names_from_schema(shards[0])
    if names:
        return names, f"{shards[0]} (schema metadata)"
    where = f"{card} has no class_label names for '{LABEL_COLUMN}'" if card else f"no dataset card ({CARD})"
    raise UserError(
        f"{raw}: no class names ({where}, none in the parquet metadata); download the repository's {CARD} too, "
        "or pass --class-names FILE (one name per line, line 1 is label 0)"
    )


# ------------------------------------------------------------------------------------------------------ reading


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pre_buffer (pyarrow's default) reads whole row groups, and more, at once: 287 MB for a 219 MB shard; off
        # and streamed through a buffer, a shard's reading stays near 60 MB whatever its size (tests/test_parquet.py).
        return pq.ParquetFile(path, buffer_size=_STREAM_BUFFER, pre_buffer=False)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc}); download it again") from None


def _check_schema(pf: Any, shard: Path) -> None:
    import pyarrow as pa

    schema = pf.schema_arrow
    names = schema.names
    image = schema.field(IMAGE_COLUMN).type if IMAGE_COLUMN in names else None
    if image is None or not pa.types.is_struct(image) or image.get_field_index("bytes") < 0:
        raise UserError(
            f"{shard}: no '{IMAGE_COLUMN}' column holding {{bytes, path}} (columns: {', '.join(names)}); "
            "is this an image-classification parquet release?"
        )
    if LABEL_COLUMN not in names or not pa.types.is_integer(schema.field(LABEL_COLUMN).type):
        raise UserError(f"{shard}: no integer '{LABEL_COLUMN}' column (columns: {', '.join(names)})")


def _stamp(shard: Path) -> dict[str, Any]:
    st = shard.stat()
    return {"shard": shard.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _file_name(path: Any, used: set[str]) -> str:
    """The release's own file name when it is a plain, unused image name; else the image's number in its split."""
    number = f"{len(used) + 1:05d}"
    base = PurePosixPath(str(path or "").replace("\\", "/")).name
    name = base if _SAFE_NAME.match(base) else f"{number}.jpg"
    while name in used:
        name = f"{number}-{name}"
    used.add(name)
    return name


def _unpack_shard(shard: Path, dest: Path, num_classes: int, used: set[str]) -> list[list[Any]]:
    """Write every row's image bytes to ``dest``; rows as [file name, label, row]. Reuses a finished unpack."""
    stamp = _stamp(shard)
    done = dest / _STAMP
    if done.is_file():
        try:
            saved = json.loads(done.read_text())
            if {k: saved.get(k) for k in stamp} == stamp:
                used.update(r[0] for r in saved["rows"])
                return saved["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    pf = _parquet_file(shard)
    _check_schema(pf, shard)
    tmp = dest.with_name(dest.name + ".tmp")
    for stale in (tmp, dest):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(parents=True)
    rows: list[list[Any]] = []
    import pyarrow as pa

    try:
        for batch in pf.iter_batches(batch_size=_ROWS_PER_BATCH, columns=[IMAGE_COLUMN, LABEL_COLUMN]):
            images = batch.column(IMAGE_COLUMN)
            paths = images.field("path").to_pylist() if images.type.get_field_index("path") >= 0 else None
            for i, (data, label) in enumerate(
                zip(images.field("bytes").to_pylist(), batch.column(LABEL_COLUMN).to_pylist(), strict=True)
            ):
                row = len(rows)
                if label is None or not 0 <= label < num_classes:
                    raise UserError(
                        f"{shard}: row {row} has label {label}, outside 0..{num_classes - 1}; the class names do not "
                        "belong to this release (check --class-names or the dataset card)"
                    )
                name = _file_name(paths[i] if paths else None, used)
                (tmp / name).write_bytes(data or b"")  # no bytes: an empty file, which the writer lists as unreadable
                rows.append([name, int(label), row])
    except pa.ArrowException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{shard}: not a readable parquet file ({exc}); download it again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / _STAMP).write_text(json.dumps({**stamp, "rows": rows}))
    tmp.rename(dest)
    return rows


def read_parquet(raw: Path, scratch: Path, *, class_names: Path | None = None) -> RawDataset:
    """List the release's images (unpacked into ``scratch``) with their labels and splits."""
    raw = Path(raw)
    shards = find_shards(raw)
    lacking = [s for s in SPLITS if not shards.get(s)]
    if lacking:
        raise UserError(f"{raw}: no {' and no '.join(f'{s}-*.parquet' for s in lacking)} found")
    split_shards = [p for s in SPLITS for p in shards[s]]
    classes, names_from = _class_names(split_shards, raw, class_names)
    images: list[RawImage] = []
    for split in SPLITS:
        used: set[str] = set()
        for k, shard in enumerate(shards[split]):
            dest = Path(scratch) / NAME / split / f"{k:05d}-{shard.stem}"
            for name, label, row in _unpack_shard(shard, dest, len(classes), used):
                images.append(
                    RawImage(
                        split=split,
                        fname=name,
                        source=dest / name,
                        class_id=label,
                        bbox=None,
                        name=f"{shard.name} row {row} ({name})",
                        movable=True,
                    )
                )
    details: dict[str, Any] = {
        "class_names": names_from,
        "shards": {s: [str(p) for p in shards[s]] for s in SPLITS},
    }
    ignored = [str(p) for s, files in shards.items() if s not in SPLITS for p in files]
    if ignored:
        details["warnings"] = [f"ignored parquet file(s) that are neither train nor test: {', '.join(ignored)}"]
    return RawDataset(layout=NAME, classes=classes, images=images, details=details)


PARQUET = RawLayout(
    name=NAME,
    expects="data/train-*.parquet and data/test-*.parquet (image {bytes, path}, label) and README.md",
    detect=detect,
    read=read_parquet,
    options=("class_names",),
)


# ------------------------------------------------------------------------------------------- writing (synth, tests)


def _card(class_names: list[str], counts: dict[str, int]) -> str:
    """A dataset card whose YAML header is what the Hub's Stanford Cars repositories carry."""
    import yaml

    header = {
        "dataset_info": {
            "features": [
                {"name": IMAGE_COLUMN, "dtype": "image"},
                {
                    "name": LABEL_COLUMN,
                    "dtype": {"class_label": {"names": {str(i): n for i, n in enumerate(class_names)}}},
                },
            ],
            "splits": [{"name": s, "num_examples": n} for s, n in counts.items()],
        },
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in counts]}],
    }
    body = "# Synthetic Stanford Cars\n\nProcedurally drawn cars written by `carspotter synth --layout parquet`.\n"
    return f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n{body}"


def write_parquet_raw(
    out: Path,
    *,
    class_names: list[str],
    images: Iterable[StanfordImage],
    rows_per_shard: int = 1000,
    rows_per_group: int = 100,
    card: bool = True,
) -> dict[str, int]:
    """Write the Hugging Face parquet release into the existing folder ``out``: ``data/{split}-0000k-of-0000n.parquet``
    (``image`` {bytes, path}, ``label``; ``rows_per_group`` rows per row group, as `datasets` writes image data) and,
    with ``card``, ``README.md`` and the ``huggingface`` schema metadata naming the classes. Returns split counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {IMAGE_COLUMN: {"_type": "Image"}, LABEL_COLUMN: {"names": class_names, "_type": "ClassLabel"}}
    schema = pa.schema(
        [
            pa.field(IMAGE_COLUMN, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            pa.field(LABEL_COLUMN, pa.int64()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": features}})} if card else None,
    )
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    counts = {s: 0 for s in SPLITS}
    shards: dict[str, list[Path]] = {s: [] for s in SPLITS}
    writers: dict[str, pq.ParquetWriter] = {}
    pending: dict[str, list[StanfordImage]] = {s: [] for s in SPLITS}

    def flush(split: str) -> None:
        rows = pending[split]
        if not rows:
            return
        start = counts[split] - len(rows)
        table = pa.table(
            {
                IMAGE_COLUMN: [
                    {"bytes": r.data, "path": r.name or f"{start + j + 1:05d}.jpg"} for j, r in enumerate(rows)
                ],
                LABEL_COLUMN: [r.class_id for r in rows],
            },
            schema=schema,
        )
        writers[split].write_table(table, row_group_size=rows_per_group)
        rows.clear()

    for img in images:
        split = "test" if img.test else "train"
        if counts[split] % rows_per_shard == 0:
            flush(split)
            if split in writers:
                writers[split].close()
            shards[split].append(data / f"{split}-{len(shards[split]):05d}.partial")
            writers[split] = pq.ParquetWriter(shards[split][-1], schema)
        pending[split].append(img)
        counts[split] += 1
        if len(pending[split]) == rows_per_group:
            flush(split)
    for split, writer in writers.items():
        flush(split)
        writer.close()
        for k, path in enumerate(shards[split]):
            path.rename(data / f"{split}-{k:05d}-of-{len(shards[split]):05d}.parquet")
    if card:
        (Path(out) / CARD).write_text(_card(class_names, counts))
    return counts
