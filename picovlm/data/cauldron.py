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

import os
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


def _parquet_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    return sorted(str(p) for p in path.rglob("*.parquet"))


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

    source: a `save_to_disk` folder (Dataset or DatasetDict), a parquet file or folder of parquet files
    (a DatasetDict saved as parquet keeps one sub-folder per split), or a Hub id such as
    "HuggingFaceM4/the_cauldron" with `subset` (e.g. "localized_narratives").
    split: needed when a folder holds several splits; Hub datasets default to "train".
    max_rows: keep only the first max_rows rows (cheap: nothing else is read when streaming).
    """
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(str(path))
            dataset = _pick_split(loaded, split, path)
            if streaming:
                dataset = dataset.to_iterable_dataset()
        elif path.is_dir() and (path / "state.json").exists():
            dataset = datasets.load_from_disk(str(path))
            if streaming:
                dataset = dataset.to_iterable_dataset()
        elif path.exists():
            if split and (path / split).is_dir():
                path = path / split
            files = _parquet_files(path)
            if not files:
                raise DataError(
                    f"{source}: no dataset here: expected a `save_to_disk` folder (with state.json or "
                    "dataset_dict.json) or parquet files"
                )
            dataset = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
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


def _pick_split(dataset_dict, split: str | None, path: Path):
    if split is None:
        if len(dataset_dict) == 1:
            return next(iter(dataset_dict.values()))
        raise DataError(f"{path} holds the splits {list(dataset_dict)}: choose one with --split NAME")
    if split not in dataset_dict:
        raise DataError(f"{path} has no split {split!r}; it holds {list(dataset_dict)}")
    return dataset_dict[split]


def load_cauldron_splits(source: str | Path) -> dict:
    """All splits of a saved dataset as {name: Dataset}; a single Dataset comes back as {"train": ...}."""
    import datasets

    path = Path(source)
    if path.is_dir() and (path / "dataset_dict.json").exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:
            raise DataError(f"cannot load dataset {source}: {type(err).__name__}: {err}") from err
        validate_schema(loaded, source)
        return dict(loaded)
    return {"train": load_cauldron(source)}


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


def image_hash(data: bytes | None) -> str:
    """Content hash of an encoded image (exact duplicates only; a re-encoded copy hashes differently)."""
    import hashlib

    return hashlib.blake2b(data or b"", digest_size=16).hexdigest()


def row_sources(texts: list[dict] | None) -> str:
    """The source of a row: its first turn's `source`, or "unknown"."""
    if texts and isinstance(texts[0], dict) and texts[0].get("source"):
        return str(texts[0]["source"])
    return "unknown"
