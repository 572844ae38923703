"""The dataset format of the whole project: the_cauldron's schema, and how to load, validate and save it.

    Features({
        "images": Sequence(Image()),                       # one or more images per row
        "texts": [{"user": Value("string"),                # one dict per turn of the conversation
                   "assistant": Value("string"),
                   "source": Value("string")}],            # where the turn came from
        "group": Value("string"),                          # OPTIONAL: rows sharing it stay in one split
    })

Other top-level string columns (e.g. the demo set's `fields`) are kept and ignored. A dataset can be
read from a `save_to_disk` folder, a parquet file or folder, or a Hugging Face Hub id plus subset
(optionally streaming, with a row cap). Saving is atomic: it writes a temporary folder and renames it,
so an interrupted save never leaves a half-written dataset under the final name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from picovlm.errors import DataError
from picovlm.utils import atomic_path

TEXT_KEYS = ("user", "assistant", "source")

EXPECTED_SCHEMA = """Features({
    "images": Sequence(Image()),
    "texts": [{"user": Value("string"), "assistant": Value("string"), "source": Value("string")}],
    "group": Value("string"),  # optional: rows with the same group id land in the same split
})"""


def cauldron_features(group: bool = False, fields: bool = False):
    """The datasets.Features of the cauldron schema, optionally with the `group` and `fields` columns."""
    from datasets import Features, Image, Sequence, Value

    features = {
        "images": Sequence(Image()),
        "texts": [{key: Value("string") for key in TEXT_KEYS}],
    }
    if group:
        features["group"] = Value("string")
    if fields:
        features["fields"] = Value("string")
    return Features(features)


# ---------------------------------------------------------------------------------------------------
# Validation: a clear message naming the field, never a traceback from inside `datasets`


def _is_list(feature) -> bool:
    from datasets import LargeList, List

    return isinstance(feature, (List, LargeList, list))


def _inner(feature):
    return feature[0] if isinstance(feature, list) else feature.feature


def _is_string(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _schema_error(path: str | Path, problem: str) -> DataError:
    return DataError(
        f"{path}: not in the cauldron schema: {problem}.\nExpected schema:\n{EXPECTED_SCHEMA}\n"
        "Import raw files with `picovlm data import`, or rename/cast the columns to match."
    )


def validate_schema(dataset, path: str | Path = "dataset", allow_non_string_text: bool = False) -> None:
    """Raise DataError naming the missing or mistyped field if `dataset` is not in the cauldron schema.

    allow_non_string_text lets `data check` read a dataset whose text fields have another scalar type
    (e.g. numbers), so it can report those rows instead of refusing the whole file.
    """
    from datasets import DatasetDict, Image, IterableDatasetDict, Value

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        for split_name, split in dataset.items():
            validate_schema(split, f"{path} (split {split_name!r})", allow_non_string_text)
        return
    features = dataset.features
    if features is None:  # a streaming dataset whose schema is only known after the first row
        return
    for column in ("images", "texts"):
        if column not in features:
            raise _schema_error(path, f"missing column {column!r} (found columns: {sorted(features)})")
    images = features["images"]
    if not (_is_list(images) and isinstance(_inner(images), Image)):
        raise _schema_error(path, f"column 'images' must be a list of Image(), found {images}")
    texts = features["texts"]
    if not (_is_list(texts) and isinstance(_inner(texts), dict)):
        raise _schema_error(
            path, f"column 'texts' must be a list of {{user, assistant, source}} dicts, found {texts}"
        )
    turn = _inner(texts)
    for key in TEXT_KEYS:
        if key not in turn:
            raise _schema_error(path, f"field 'texts[].{key}' is missing (found fields: {sorted(turn)})")
        scalar_ok = allow_non_string_text and isinstance(turn[key], Value)
        if not (_is_string(turn[key]) or scalar_ok):
            raise _schema_error(path, f"field 'texts[].{key}' must be Value('string'), found {turn[key]}")
    if "group" in features and not _is_string(features["group"]):
        raise _schema_error(path, f"column 'group' must be Value('string'), found {features['group']}")


# ---------------------------------------------------------------------------------------------------
# Loading


# Split names as `datasets` reads them from folder and file names: each alias maps to its split.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}  # fmt: skip
# The file formats that carry the cauldron schema's Image feature, by suffix, with their datasets builder.
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
_SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\b")  # push_to_hub: train-00000-of-00003
_NAME_SEPARATORS = re.compile(r"[-._ 0-9]+")
UNSPLIT = "train"  # a dataset without split names is one split, called "train" (as `datasets` calls it)


def canonical_split(name: str) -> str:
    """The split a folder, file or requested name stands for: "val"/"dev" -> "validation", ..."""
    return SPLIT_ALIASES.get(name.lower(), name)


def _split_of_file(parts: tuple[str, ...]) -> str | None:
    """The split a data file belongs to, from its path below the dataset folder; None if it names none.

    A folder named after a split decides first, so `final/validation/train/train-00000-of-00001.parquet`
    (what `data mix --parquet --out final/validation` writes) is validation. Then the file name: a
    push_to_hub shard `{split}-00000-of-00003` (any split name), or a split keyword between separators
    (`test.parquet`, `mnist_train.parquet`).
    """
    for folder in parts[:-1]:
        if folder.lower() in SPLIT_ALIASES:
            return canonical_split(folder)
    name = parts[-1]
    shard = _SHARD_NAME.match(name)
    if shard and shard["split"] != "data":  # save_to_disk's own data-00000-of-00001.arrow names no split
        return canonical_split(shard["split"])
    named = {
        SPLIT_ALIASES[word]
        for word in _NAME_SEPARATORS.split(Path(name).stem.lower())
        if word in SPLIT_ALIASES
    }
    return named.pop() if len(named) == 1 else None


def find_splits(source: str | Path) -> dict[str, tuple[str, list[Path]]]:
    """The splits of a local dataset as {split: (how to read it, paths)}; "how" is "disk" (one
    `save_to_disk` folder) or a datasets builder ("parquet", "arrow") for a list of files.

    Layouts, as `datasets` and the Hub name them:
      - a `save_to_disk` DatasetDict (dataset_dict.json): its own split names;
      - a `save_to_disk` Dataset (state.json), a single file, or files that name no split: one split, "train";
      - one folder per split (`train/`, `validation/`, `test/`, holding parquet/arrow files or a
        `save_to_disk` Dataset);
      - splits in file names: `{split}-00000-of-00003.parquet`, `{split}.parquet`, also under `data/`
        (what push_to_hub writes and a Hub download holds).
    Files that name no split beside files that do are an error: reading them into one split is how a
    model ends up validated on its training rows.
    """
    path = Path(source)
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{source}: not a dataset file (expected {' or '.join(DATA_FILE_BUILDERS)})")
        return {_split_of_file((path.name,)) or UNSPLIT: (builder, [path])}
    if (path / "dataset_dict.json").exists():
        import json

        names = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        return {name: ("disk", [path / name]) for name in names}
    if (path / "state.json").exists():
        return {UNSPLIT: ("disk", [path])}
    splits: dict[str, tuple[str, list[Path]]] = {}
    unnamed: list[Path] = []
    for folder, subfolders, files in os.walk(path):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "_")))  # .cache, __pycache__
        relative = here.relative_to(path).parts
        if "state.json" in files and relative:  # a save_to_disk Dataset per split: its folder names it
            subfolders[:] = []
            name = next((canonical_split(f) for f in relative if f.lower() in SPLIT_ALIASES), here.name)
            _add_split_part(splits, name, "disk", here, source)
            continue
        for file in sorted(files):
            builder = DATA_FILE_BUILDERS.get(Path(file).suffix.lower())
            if builder is None:
                continue
            name = _split_of_file((*relative, file))
            if name is None:
                unnamed.append(here / file)
            else:
                _add_split_part(splits, name, builder, here / file, source)
    if unnamed and splits:
        listed = ", ".join(str(p.relative_to(path)) for p in unnamed[:5]) + (
            " ..." if len(unnamed) > 5 else ""
        )
        raise DataError(
            f"{source}: found the splits {sorted(splits)}, but {len(unnamed)} file(s) name no split: "
            f"{listed}. Rename them `<split>-00000-of-00001.parquet` or move them into a <split>/ folder, "
            "so no rows land in a split they do not belong to."
        )
    if unnamed:
        builders = {DATA_FILE_BUILDERS[p.suffix.lower()] for p in unnamed}
        if len(builders) > 1:
            raise DataError(f"{source}: mixes {' and '.join(sorted(builders))} files; keep one format")
        return {UNSPLIT: (builders.pop(), unnamed)}
    return _in_split_order(splits)


def _in_split_order(splits: dict) -> dict:
    """train, validation, test first (the order errors and reports list them in), then others by name."""
    rank = {name: index for index, name in enumerate(dict.fromkeys(SPLIT_ALIASES.values()))}
    return dict(sorted(splits.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


def _add_split_part(splits: dict, name: str, how: str, part: Path, source) -> None:
    known_how, parts = splits.setdefault(name, (how, []))
    if known_how != how or how == "disk" and parts:
        raise DataError(
            f"{source}: split {name!r} is stored in more than one way ({parts[0]} and {part}); "
            "keep one folder or one set of parquet/arrow files per split"
        )
    parts.append(part)


def match_split(requested: str | None, available, source) -> str:
    """The name among `available` that `requested` means (exact, else the same alias); a clear error
    listing the splits found when it is not there, or when None is asked of several splits."""
    available = list(available)
    if requested is None:
        if len(available) == 1:
            return available[0]
        raise DataError(f"{source} holds the splits {available}: choose one with --split NAME")
    if requested in available:
        return requested
    for name in available:
        if canonical_split(name) == canonical_split(requested):
            return name
    hint = ""
    if available == [UNSPLIT]:
        hint = (
            f" (its files name no split, so all of it is {UNSPLIT!r}): pass --split {UNSPLIT}, or "
            "make held-out splits with `picovlm data split`"
        )
    raise DataError(f"{source} has no split {requested!r}; it holds {available}{hint}")


def _read_split(how: str, paths: list[Path], streaming: bool):
    import datasets

    if how == "disk":
        dataset = datasets.load_from_disk(str(paths[0]))
        return dataset.to_iterable_dataset() if streaming else dataset
    files = [str(p) for p in paths]
    return datasets.load_dataset(how, data_files=files, split="train", streaming=streaming)


def load_cauldron(
    source: str | Path,
    subset: str | None = None,
    split: str | None = None,
    streaming: bool = False,
    max_rows: int | None = None,
    validate: bool = True,
    allow_non_string_text: bool = False,
):
    """Load one split of a cauldron-schema dataset and return a datasets.Dataset (IterableDataset when
    streaming).

    source: a local dataset in any layout `find_splits` knows (save_to_disk, one folder per split,
    split names in file names as the Hub writes them), or a Hub id such as
    "HuggingFaceM4/the_cauldron" with `subset` (e.g. "localized_narratives").
    split: needed when a folder holds several splits (a missing one is an error listing those found);
    Hub datasets default to "train".
    max_rows: keep only the first max_rows rows (cheap: nothing else is read when streaming).
    """
    import datasets

    path = Path(source)
    try:
        if path.exists():
            splits = find_splits(path)
            if not splits:
                raise DataError(
                    f"{source}: no dataset here: expected a `save_to_disk` folder (with state.json or "
                    "dataset_dict.json) or parquet/arrow files"
                )
            how, paths = splits[match_split(split, splits, source)]
            dataset = _read_split(how, paths, streaming)
        else:
            dataset = datasets.load_dataset(str(source), subset, split=split or "train", streaming=streaming)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the path and the reason
        hint = "" if path.exists() else " (not a local path, so it was tried as a Hub dataset id)"
        raise DataError(f"cannot load dataset {source}{hint}: {type(err).__name__}: {err}") from err
    if validate:
        validate_schema(dataset, source, allow_non_string_text)
    if max_rows is not None:
        if streaming:
            dataset = dataset.take(max_rows)
        elif max_rows < len(dataset):
            dataset = dataset.select(range(max_rows))
    return dataset


def split_names(source: str | Path) -> list[str]:
    """The split names of a local dataset (["train"] for one without split names)."""
    return list(find_splits(source))


def load_cauldron_splits(source: str | Path, allow_non_string_text: bool = False) -> dict:
    """All splits of a local dataset as {name: Dataset}; one without split names (or a Hub id) comes back
    as {"train": ...}."""
    if not Path(source).exists():
        return {UNSPLIT: load_cauldron(source, allow_non_string_text=allow_non_string_text)}
    return {
        name: load_cauldron(source, split=name, allow_non_string_text=allow_non_string_text)
        for name in split_names(source)
    }


def materialize(dataset):
    """Turn an IterableDataset (e.g. a capped stream from the Hub) into an Arrow-backed Dataset."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return dataset
    features = dataset.features

    def rows():
        yield from dataset

    return datasets.Dataset.from_generator(rows, features=features)


# ---------------------------------------------------------------------------------------------------
# Saving (atomic)


def save_cauldron(
    dataset,
    out_dir: str | Path,
    overwrite: bool = False,
    parquet: bool = False,
    num_shards: int = 1,
) -> Path:
    """Save a Dataset or DatasetDict to out_dir atomically and return out_dir.

    Default: a `save_to_disk` folder (fast to reopen, memory-mapped). parquet=True writes
    `<split>/<split>-00000-of-0000N.parquet` shards instead (the Hub's layout; portable).
    """
    import datasets

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} already exists: choose another --out or pass --overwrite")
    if isinstance(dataset, datasets.IterableDataset):
        dataset = materialize(dataset)
    with atomic_path(out_dir) as tmp_dir:  # a crash leaves the old folder (or none), never half of one
        if parquet:
            splits = dataset if isinstance(dataset, datasets.DatasetDict) else {"train": dataset}
            for split_name, split in splits.items():
                (tmp_dir / split_name).mkdir(parents=True)
                for index in range(num_shards):
                    shard = split.shard(num_shards, index, contiguous=True)
                    shard.to_parquet(
                        str(tmp_dir / split_name / f"{split_name}-{index:05d}-of-{num_shards:05d}.parquet")
                    )
        else:
            dataset.save_to_disk(str(tmp_dir), num_shards=_shards_arg(dataset, num_shards))
    return out_dir


def picture_row(
    picture: bytes, file_name: str, question: str, answer: str, source: str, facts: dict | str, group: str
) -> dict:
    """One row of a generated set: one picture (encoded bytes), one question-answer turn, its facts as
    JSON (`fields`, keys sorted) and its group (the rows of one group never straddle splits)."""
    return {
        "images": [{"bytes": picture, "path": file_name}],
        "texts": [{"user": question, "assistant": answer, "source": source}],
        "fields": facts if isinstance(facts, str) else json.dumps(facts, sort_keys=True),
        "group": group,
    }


def rows_to_dataset(rows: list[dict], columns: tuple[str, ...] = ("images", "texts", "fields", "group")):
    """Generated rows (dicts with those keys) as a Dataset in the cauldron schema with group and fields."""
    from datasets import Dataset

    data = {key: [row[key] for row in rows] for key in columns}
    return Dataset.from_dict(
        data, features=cauldron_features(group="group" in columns, fields="fields" in columns)
    )


def _shards_arg(dataset, num_shards: int):
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return {name: min(num_shards, max(1, len(split))) for name, split in dataset.items()}
    return min(num_shards, max(1, len(dataset)))


# ---------------------------------------------------------------------------------------------------
# Reading columns fast: Arrow batches, no image decoding


def iter_column_batches(dataset, columns: list[str], batch_size: int = 1000):
    """Yield (first_row_index, {column: python list}) batches of the raw column values.

    Images come back undecoded as {"bytes": ..., "path": ...} dicts, which is what hashing and
    checking need, and is ~100x faster than decoding every image.
    """
    arrow_view = dataset.select_columns(columns).with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        table = arrow_view[start : start + batch_size]
        yield start, {column: table.column(column).to_pylist() for column in columns}


def image_bytes(image: dict | None) -> bytes | None:
    """The encoded bytes of one undecoded image ({"bytes", "path"}), reading the file if only a path is
    stored; None if neither can be read."""
    if not image:
        return None
    if image.get("bytes") is not None:
        return image["bytes"]
    path = image.get("path")
    if path and os.path.isfile(path):
        return Path(path).read_bytes()
    return None


def largest_image_side(dataset) -> int:
    """The longest side, in pixels, of any image in a cauldron split (0 if none can be read). Reads
    only each image's header, not its pixels."""
    import io

    from PIL import Image

    largest = 0
    for _, batch in iter_column_batches(dataset, ["images"]):
        for images in batch["images"]:
            for image in images or []:
                data = image_bytes(image)
                if not data:
                    continue
                try:
                    with Image.open(io.BytesIO(data)) as picture:
                        width, height = picture.size
                except Exception:  # an unreadable image: `picovlm data check` names it, training skips it
                    continue
                largest = max(largest, width, height)
    return largest


def image_hash(data: bytes | None) -> str:
    """Content hash of an encoded image (exact duplicates only; a re-encoded copy hashes differently)."""
    import hashlib

    return hashlib.blake2b(data or b"", digest_size=16).hexdigest()


def row_sources(texts: list[dict] | None) -> str:
    """The source of a row: its first turn's `source`, or "unknown"."""
    if texts and isinstance(texts[0], dict) and texts[0].get("source"):
        return str(texts[0]["source"])
    return "unknown"
