"""`picovlm data check`: read every row, report problems by kind with row ids, optionally write a fix.

Kinds of problems (ISSUE_KINDS below says what each means and what `--fix` does with it):
images that are missing, unreadable, truncated, zero-size, decompression bombs, or not RGB; texts that
are missing, empty or not strings; answers longer than the model's token budget; exact duplicate
images, duplicate rows, duplicate answers and near-duplicate answers (word 3-gram MinHash).

The input is never modified: `fix_dataset` writes a cleaned copy (bad rows dropped, images converted to
RGB) into a new folder, plus the report as JSON and Markdown.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from picovlm.data.cauldron import (
    TEXT_KEYS,
    cauldron_features,
    image_bytes,
    image_hash,
    iter_column_batches,
    save_cauldron,
)
from picovlm.data.processor import to_rgb
from picovlm.utils import ProgressFn, no_progress

# kind -> (what it means, what --fix does)
ISSUE_KINDS = {
    "missing_image": ("row has no image, or an image with neither bytes nor a readable file", "row dropped"),
    "zero_size_image": ("image file is empty (0 bytes) or has 0 pixels", "row dropped"),
    "unreadable_image": ("bytes are not an image format Pillow can open", "row dropped"),
    "truncated_image": ("image header opens but the pixel data is cut short or corrupt", "row dropped"),
    "decompression_bomb": (
        "image has more pixels than max_pixels (decoding it could exhaust memory)",
        "row dropped",
    ),
    "non_rgb_image": ("image mode is not RGB (P, RGBA, CMYK, L, I;16, ...)", "converted to RGB (PNG)"),
    "missing_text": (
        "row has no turns, or a turn lacks user/assistant/source",
        "row dropped (missing source: set to 'unknown')",
    ),
    "empty_text": ("user or assistant text is empty or only whitespace", "row dropped"),
    "non_string_text": ("a text field holds a non-string value (e.g. a number)", "row dropped"),
    "answer_too_long": ("an answer has more tokens than max_answer_tokens", "row dropped"),
    "duplicate_row": ("same images and same texts as an earlier row", "row dropped"),
    "duplicate_image": ("same image content (hash) as an earlier row", "kept (reported)"),
    "duplicate_answer": ("same answer text (case and spacing ignored) as an earlier row", "kept (reported)"),
    "near_duplicate_answer": (
        "answer's word 3-grams overlap an earlier row's (estimated Jaccard >= threshold)",
        "kept (reported)",
    ),
}
DROPPED_KINDS = {kind for kind, (_, action) in ISSUE_KINDS.items() if action.startswith("row dropped")}
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own bomb threshold


@dataclass
class CheckReport:
    source: str
    rows: int = 0
    images: int = 0
    issues: dict[str, list[dict]] = field(default_factory=lambda: {kind: [] for kind in ISSUE_KINDS})
    settings: dict = field(default_factory=dict)

    def add(self, kind: str, row: int, detail: str = "") -> None:
        self.issues[kind].append({"row": row, "detail": detail})

    def counts(self) -> dict[str, int]:
        return {kind: len(entries) for kind, entries in self.issues.items()}

    def rows_with(self, kinds) -> set[int]:
        return {entry["row"] for kind in kinds for entry in self.issues[kind]}

    @property
    def ok(self) -> bool:
        return not any(self.issues.values())

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "rows": self.rows,
            "images": self.images,
            "settings": self.settings,
            "counts": self.counts(),
            "issues": self.issues,
        }

    def to_markdown(self, max_rows_listed: int = 20) -> str:
        lines = [
            f"# Data check: {self.source}",
            "",
            f"{self.rows} rows, {self.images} images.",
            "",
            "| kind | rows | meaning | --fix | example rows |",
            "|---|---|---|---|---|",
        ]
        for kind, (meaning, action) in ISSUE_KINDS.items():
            entries = self.issues[kind]
            example = ", ".join(str(e["row"]) for e in entries[:max_rows_listed])
            example += " ..." if len(entries) > max_rows_listed else ""
            lines.append(f"| {kind} | {len(entries)} | {meaning} | {action} | {example} |")
        lines += ["", "## Details", ""]
        for kind, entries in self.issues.items():
            for entry in entries[:max_rows_listed]:
                lines.append(f"- `{kind}` row {entry['row']}: {entry['detail']}")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write check-report.json and check-report.md into out_dir (atomically each)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = (out_dir / "check-report.json", out_dir / "check-report.md")
        for path, text in zip(paths, (json.dumps(self.to_dict(), indent=2), self.to_markdown())):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return paths


# ---------------------------------------------------------------------------------------------------
# Images


def inspect_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str | None, str]:
    """(issue kind or None, detail) for one encoded image. Reads the header before decoding, so a
    decompression bomb is caught without allocating its pixels."""
    if data is None:
        return "missing_image", "no bytes and no readable file"
    if len(data) == 0:
        return "zero_size_image", "0 bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        return "decompression_bomb", str(err)
    except Exception as err:  # UnidentifiedImageError and friends: not an image at all
        return "unreadable_image", f"{type(err).__name__}: {err}"
    width, height = image.size
    if width * height == 0:
        return "zero_size_image", f"{width}x{height} pixels"
    if width * height > max_pixels:
        return "decompression_bomb", f"{width}x{height} = {width * height} pixels > {max_pixels}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Exception as err:  # OSError "image file is truncated", SyntaxError "broken PNG file", ...
        return "truncated_image", f"{type(err).__name__}: {err}"
    if image.mode != "RGB":
        return "non_rgb_image", f"mode {image.mode}"
    return None, ""


def _inspect_row_images(args: tuple[list, int]) -> list[tuple[str | None, str, str]]:
    images, max_pixels = args
    results = []
    for image in images or []:
        data = image_bytes(image)
        kind, detail = inspect_image(data, max_pixels)
        results.append((kind, detail, image_hash(data)))
    return results


# ---------------------------------------------------------------------------------------------------
# Texts


def count_tokens(texts: list[str], tokenizer=None) -> list[int]:
    """Token counts with a `tokenizers.Tokenizer`, a transformers tokenizer, or anything with
    encode(text); without a tokenizer, whitespace-separated words (a rough lower bound)."""
    if tokenizer is None:
        return [len(text.split()) for text in texts]
    if hasattr(tokenizer, "encode_batch"):  # picovlm's TextTokenizer (lists) or tokenizers' (Encodings)
        return [len(getattr(encoded, "ids", encoded)) for encoded in tokenizer.encode_batch(texts)]
    counts = []
    for text in texts:
        encoded = tokenizer.encode(text)
        counts.append(len(getattr(encoded, "ids", encoded)))
    return counts


def squeeze_lower(text: str) -> str:
    """Lower-cased, whitespace squeezed: the data checks' "same answer" (punctuation and articles still
    count, unlike the looser picovlm.eval.metrics.normalize_answer that scoring uses)."""
    return " ".join(text.lower().split())


def near_duplicate_pairs(
    texts: list[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16, seed: int = 0
) -> list[tuple[int, int, float]]:
    """(row, earlier_row, estimated_jaccard) for texts whose word 3-gram sets overlap >= threshold.

    MinHash + LSH, vectorised with numpy so 230k answers take seconds: each text becomes num_perm
    minimum hashes of its 3-grams; texts agreeing on all rows of any of `bands` bands are candidates;
    a candidate counts when the share of equal minhashes (an estimate of Jaccard) reaches threshold.
    Each row is compared with the first row of its bucket, so it is linear, not quadratic.
    """
    vocabulary: dict[str, int] = {}
    word_ids: list[int] = []
    starts, lengths = [], []
    for text in texts:
        words = squeeze_lower(text).split()
        starts.append(len(word_ids))
        lengths.append(len(words))
        word_ids.extend(vocabulary.setdefault(w, zlib.crc32(w.encode()) | 1) for w in words)
    usable = [i for i, length in enumerate(lengths) if length >= 3]
    if len(usable) < 2:
        return []
    ids = np.asarray(word_ids, dtype=np.uint64)
    # hash of the 3-gram starting at every word position (wrap-around uint64 arithmetic is fine here)
    with np.errstate(over="ignore"):
        grams = ids[:-2] * np.uint64(0x9E3779B97F4A7C15) + ids[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F) + ids[2:]
    rng = np.random.default_rng(seed)
    mult = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    add = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    signatures = np.empty((len(usable), num_perm), dtype=np.uint32)
    chunk = 4096  # texts per block: bounds the (grams x num_perm) temporary
    for block in range(0, len(usable), chunk):
        rows = usable[block : block + chunk]
        gram_index = np.concatenate([np.arange(starts[r], starts[r] + lengths[r] - 2) for r in rows])
        offsets = np.cumsum([0] + [lengths[r] - 2 for r in rows[:-1]])
        block_grams = grams[gram_index]  # 3-grams never cross texts: each text has >= 3 words
        with np.errstate(over="ignore"):
            hashed = (block_grams[:, None] * mult[None, :] + add[None, :]) >> np.uint64(32)
        signatures[block : block + len(rows)] = np.minimum.reduceat(hashed, offsets, axis=0).astype(np.uint32)
    rows_per_band = num_perm // bands
    best: dict[int, tuple[int, float]] = {}
    for band in range(bands):
        keys = signatures[:, band * rows_per_band : (band + 1) * rows_per_band]
        keys = (
            np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize * rows_per_band))).ravel()
        )
        order = np.argsort(keys, kind="stable")  # stable: equal keys stay in row order
        sorted_keys = keys[order]
        is_new = np.ones(len(order), dtype=bool)
        is_new[1:] = sorted_keys[1:] != sorted_keys[:-1]
        bucket_first = order[np.maximum.accumulate(np.where(is_new, np.arange(len(order)), 0))]
        members = np.nonzero(~is_new)[0]
        if len(members) == 0:
            continue
        a, b = order[members], bucket_first[members]
        similarity = (signatures[a] == signatures[b]).mean(axis=1)
        for i, j, s in zip(a.tolist(), b.tolist(), similarity.tolist()):
            if s >= threshold and (i not in best or s > best[i][1]):
                best[i] = (j, s)
    return sorted((usable[i], usable[j], round(s, 3)) for i, (j, s) in best.items())


# ---------------------------------------------------------------------------------------------------
# The check


def check_dataset(
    dataset,
    source: str = "dataset",
    max_answer_tokens: int | None = None,
    tokenizer=None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    near_duplicate_threshold: float = 0.8,
    num_proc: int = 1,
    progress: ProgressFn = no_progress,
) -> CheckReport:
    """Read every row of a cauldron-schema Dataset and return a CheckReport.

    max_answer_tokens: usually the model's lm_max_length; counted with `tokenizer` (whitespace words
    when None). progress(rows_done, total, message) is called after each batch of rows.
    """
    report = CheckReport(source=source, rows=len(dataset))
    report.settings = {
        "max_answer_tokens": max_answer_tokens,
        "max_pixels": max_pixels,
        "tokenizer": type(tokenizer).__name__ if tokenizer is not None else "whitespace",
        "near_duplicate_threshold": near_duplicate_threshold,
    }
    first_row_with_image: dict[str, int] = {}
    first_row_with_answer: dict[str, int] = {}
    first_row_with_content: dict[tuple, int] = {}
    answers: list[str] = []  # one per row, "" when the row has no usable answer
    pool = ProcessPoolExecutor(num_proc) if num_proc > 1 else None
    progress(0, len(dataset), "checking rows")  # the clock starts before the first batch, not after it
    try:
        for start, batch in iter_column_batches(dataset, ["images", "texts"], batch_size=256):
            jobs = [(images, max_pixels) for images in batch["images"]]
            results = (
                pool.map(_inspect_row_images, jobs, chunksize=16) if pool else map(_inspect_row_images, jobs)
            )
            for offset, (image_results, texts) in enumerate(zip(results, batch["texts"])):
                row = start + offset
                _check_images(report, row, image_results, first_row_with_image)
                answer = _check_texts(report, row, texts)
                answers.append(answer)
                key = (tuple(h for *_, h in image_results), json.dumps(texts, sort_keys=True, default=str))
                if key in first_row_with_content:
                    report.add("duplicate_row", row, f"same as row {first_row_with_content[key]}")
                else:
                    first_row_with_content[key] = row
                normalized = squeeze_lower(answer)
                if normalized and normalized in first_row_with_answer:
                    report.add(
                        "duplicate_answer", row, f"same answer as row {first_row_with_answer[normalized]}"
                    )
                elif normalized:
                    first_row_with_answer[normalized] = row
            progress(start + len(batch["texts"]), len(dataset), "checking rows")
    finally:
        if pool:
            pool.shutdown()
    if max_answer_tokens is not None:
        for row, count in enumerate(count_tokens(answers, tokenizer)):
            if count > max_answer_tokens:
                report.add("answer_too_long", row, f"{count} tokens > {max_answer_tokens}")
    exact_duplicates = report.rows_with(["duplicate_answer"])
    unique_texts = [answer if row not in exact_duplicates else "" for row, answer in enumerate(answers)]
    for row, earlier, similarity in near_duplicate_pairs(unique_texts, near_duplicate_threshold):
        report.add("near_duplicate_answer", row, f"like row {earlier} (Jaccard ~{similarity:.2f})")
    for entries in report.issues.values():
        entries.sort(key=lambda entry: entry["row"])
    return report


def _check_images(report: CheckReport, row: int, image_results: list, first_row_with_image: dict) -> None:
    if not image_results:
        report.add("missing_image", row, "row has no images")
    for index, (kind, detail, digest) in enumerate(image_results):
        report.images += 1
        if kind:
            report.add(kind, row, f"image {index}: {detail}")
        if kind in (None, "non_rgb_image"):
            if digest in first_row_with_image and first_row_with_image[digest] != row:
                report.add(
                    "duplicate_image", row, f"image {index} same as in row {first_row_with_image[digest]}"
                )
            first_row_with_image.setdefault(digest, row)


def _check_texts(report: CheckReport, row: int, texts) -> str:
    """Report text problems of one row; return its answers joined (for length and duplicate checks)."""
    if not texts:
        report.add("missing_text", row, "row has no turns")
        return ""
    answers = []
    for turn_index, turn in enumerate(texts):
        for key in TEXT_KEYS:
            value = (turn or {}).get(key)
            where = f"texts[{turn_index}].{key}"
            if value is None:
                report.add("missing_text", row, f"{where} is missing")
            elif not isinstance(value, str):
                report.add("non_string_text", row, f"{where} is {type(value).__name__}: {value!r:.40}")
            elif not value.strip() and key != "source":
                report.add("empty_text", row, f"{where} is empty")
            elif key == "assistant":
                answers.append(value)
    return " ".join(answers)


# ---------------------------------------------------------------------------------------------------
# The fix


def fix_dataset(dataset, report: CheckReport, out_dir: str | Path, overwrite: bool = False) -> dict:
    """Write a cleaned copy of `dataset` to out_dir plus check-report.{json,md}; return a summary.

    Rows with a kind in DROPPED_KINDS are dropped (a missing `source` alone is filled with "unknown");
    non-RGB images are converted to RGB PNG. The input dataset and its files are not touched.
    """
    from datasets import Image as ImageFeature
    from datasets import List

    fatal = set(DROPPED_KINDS) - {"missing_text"}
    drop = report.rows_with(fatal)
    drop |= {
        e["row"] for e in report.issues["missing_text"] if not e["detail"].endswith(".source is missing")
    }
    keep = [row for row in range(len(dataset)) if row not in drop]
    convert = report.rows_with(["non_rgb_image"]) - drop

    def clean(example: dict, index: int) -> dict:
        original_row = keep[index]
        if original_row in convert:
            fixed = []
            for image in example["images"]:
                rgb = to_rgb(Image.open(io.BytesIO(image_bytes(image))))
                buffer = io.BytesIO()
                rgb.save(buffer, format="PNG")
                fixed.append({"bytes": buffer.getvalue(), "path": image.get("path")})
            example["images"] = fixed
        example["texts"] = [{**turn, "source": turn.get("source") or "unknown"} for turn in example["texts"]]
        return example

    features = cauldron_features(
        group="group" in dataset.column_names, fields="fields" in dataset.column_names
    )
    raw_features = features.copy()
    raw_features["images"] = List(ImageFeature(decode=False))
    extra = [c for c in dataset.column_names if c not in features]
    with tempfile.TemporaryDirectory(prefix="picovlm-fix-") as tmp:
        # explicit cache files keep `cast` and `map` from writing next to the input's own Arrow files
        raw = dataset.remove_columns(extra).select(keep, keep_in_memory=True)
        raw = raw.cast(raw_features, cache_file_name=str(Path(tmp) / "raw.arrow"))
        cleaned = raw.map(
            clean, with_indices=True, features=features, cache_file_name=str(Path(tmp) / "clean.arrow")
        )
        save_cauldron(cleaned, out_dir, overwrite=overwrite)
    report.write(out_dir)
    return {
        "rows_in": len(dataset),
        "rows_out": len(keep),
        "dropped": len(drop),
        "converted_rows": len(convert),
    }
