"""Can the fact reader that weighs a retrieving model's vote read unseen objects' facts better?

docs/recipes.md finding 44. A run that answers with the weighed vote states the facts its fact
probes read off the picture, so a better reader would be more facts in its answers. This builds on
each set's training split the index a run builds, then scores on the validation split (objects
unseen in training) every reader of a small grid against the default probe:

    probe l2=L scale=S    `fit_fact_probes(..., l2=L, scale=S)` (the default: PROBE_L2 1e-3, PROBE_SCALE 10)
    knn k=K t=T           the neighbours' vote: the K most similar training pictures' values, each
                          weighted exp((similarity - the nearest's) / T)
    mix k=K t=T a=A       (1 - A) x the default probe's probabilities + A x that vote's shares

With --features it scores picture features instead of readers: random convolutional features
(training-free: 256 random 5x5 RGB kernels over the picture at 64 px, ReLU, max-pooled over a 4x4
grid, each dimension standardised on the training pictures), alone and beside the index's vectors
at weight 0.5, 1 and 2, each by its nearest training picture's answer (token F1) and facts and by a
default probe fitted over it, against the index's own vectors.

With --per-field it chooses each field's reader on validation (finding 45): the default probe, unless
one of FIELD_VOTES (the vote of the 5 or 20 nearest pictures, as half of the reader or all of it) names
that field right more often by more than one paired error over objects, as a run chooses how it answers;
with --test it scores that choice on the test split against the probe.

Each row's score is its share of fields named right; "±" is the paired standard error of the
difference over the rows' objects (`picovlm.eval.metrics.paired_standard_error`, as a run's choice
counts it). Only validation is read, but by --per-field --test.

    python bench/recipes/reader_sweep.py /work/data/emoji /work/data/cjk ... [--features | --per-field [--test]]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from PIL import Image

import picovlm.train.facts as facts
from picovlm.eval.metrics import paired_standard_error, token_f1
from picovlm.retrieval import (
    READS_PICTURES,
    _rgb,
    _row_groups,
    build_training_index,
    first_images,
    indexed_pictures,
)

PROBE_GRID = [(l2, scale) for l2 in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2) for scale in (10.0, 30.0)]
VOTE_GRID = [(k, t) for k in (1, 5, 10, 20) for t in (0.01, 0.03, 0.1)]
MIX_SHARES = (0.3, 0.5, 0.7)
FIELD_VOTES = [
    (5, 0.03, 0.5),
    (5, 0.03, 1.0),
    (20, 0.1, 0.5),
    (20, 0.1, 1.0),
]  # (k, T, share) for --per-field


def probe_probabilities(index, vocabulary, vectors, l2: float, scale: float) -> list[np.ndarray]:
    """Each field's (n, classes) probabilities by probes fitted as a run fits them, at this L2 and scale."""
    counts = [len(values) for values in vocabulary.values.values()]
    heads = facts.fit_fact_probes(index.table, index.facts.classes, counts, l2=l2, scale=scale)
    reader = index.facts.with_heads(heads, READS_PICTURES)
    return [np.exp(log_probs) for log_probs in reader.log_probabilities(vectors)]


def ranked(index, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's similarity to every indexed picture, and its `depth` most similar ones, most similar
    first: sorted once for every k a vote reads."""
    similarities = vectors @ index.table.T
    return similarities, np.argsort(-similarities, axis=1)[:, :depth]


def vote_shares(
    index, similarities: np.ndarray, order: np.ndarray, k: int, temperature: float
) -> list[np.ndarray]:
    """Each field's (n, classes) shares of the k nearest training pictures' values, weighted by similarity
    (order: each row's training pictures, most similar first, at least k of them)."""
    top = order[:, :k]
    near = np.take_along_axis(similarities, top, axis=1)
    weights = np.exp((near - near[:, :1]) / temperature)  # (n, k)
    shares = []
    for field in range(index.facts.classes.shape[1]):
        classes = index.facts.classes[top, field]  # (n, k), -1 = unknown
        n_classes = len(index.facts.biases[field])
        share = np.zeros((len(top), n_classes))
        rows = np.repeat(np.arange(len(top)), k)
        np.add.at(share, (rows, np.maximum(classes, 0).ravel()), (weights * (classes >= 0)).ravel())
        shares.append(share / np.maximum(share.sum(axis=1, keepdims=True), 1e-12))
    return shares


def right(probabilities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """1 where a field's likeliest class is the row's class, else 0 (a row that does not state the field,
    class negative, is never right)."""
    return (probabilities.argmax(axis=1) == classes).astype(float)


def row_scores(probabilities: list[np.ndarray], truth: np.ndarray) -> np.ndarray:
    """Each row's share of its known fields named right (truth negative = the row does not state it)."""
    named = np.stack([right(p, truth[:, j]) for j, p in enumerate(probabilities)], axis=1)
    known = truth >= 0
    return named.sum(axis=1) / np.maximum(known.sum(axis=1), 1)


def held_out(data_dir: str) -> dict:
    """The set (`data`), the index a run builds on its training split (with its fact probes), and the
    validation rows that state a fact: their pictures, vectors, answers, class per field (negative =
    not stated) and objects."""
    data = load_from_disk(data_dir)
    train = data["train"]
    vocabulary = facts.FactVocabulary.from_rows(train["fields"])
    index = build_training_index(train, 1, vocabulary.encode, "auto", "auto", report=lambda _: None)
    facts.attach_fact_probes(index, vocabulary)
    return {
        "data": data,
        "train": train,
        "vocabulary": vocabulary,
        "index": index,
        **stating_rows(data["validation"], vocabulary, index),
    }


def stating_rows(held, vocabulary, index) -> dict:
    """`held`'s rows that state a fact, as `held_out` gives them."""
    rows, images = first_images(held)
    fields, texts = held["fields"], held["texts"]
    truth = np.array([vocabulary.encode(fields[r]) for r in rows])  # negative: the row does not state it
    keep = (truth >= 0).any(axis=1)
    rows, truth = [r for r, k in zip(rows, keep) if k], truth[keep]
    images = [im for im, k in zip(images, keep) if k]
    all_groups = _row_groups(held)
    return {
        "images": images, "truth": truth, "vectors": index.vectors_of(images),
        "groups": [all_groups[r] for r in rows], "answers": [texts[r][0]["assistant"] for r in rows],
    }  # fmt: skip


def sweep(data_dir: str) -> dict[str, tuple[float, float, float]]:
    """Every reader's mean score, and its difference from the default probe ± the paired error."""
    rows = held_out(data_dir)
    index, vocabulary, vectors, truth = rows["index"], rows["vocabulary"], rows["vectors"], rows["truth"]
    similarities, order = ranked(index, vectors, max(k for k, _ in VOTE_GRID))

    default_probs = [
        np.exp(log_probs) for log_probs in index.facts.log_probabilities(vectors)
    ]  # as a run fits them
    default = row_scores(default_probs, truth)
    readers: dict[str, list[np.ndarray]] = {}
    for l2, scale in PROBE_GRID:
        readers[f"probe l2={l2:g} scale={scale:g}"] = probe_probabilities(
            index, vocabulary, vectors, l2, scale
        )
    for k, t in VOTE_GRID:
        shares = vote_shares(index, similarities, order, k, t)
        readers[f"knn k={k} t={t:g}"] = shares
        for a in MIX_SHARES:
            readers[f"mix k={k} t={t:g} a={a:g}"] = [
                (1 - a) * p + a * s for p, s in zip(default_probs, shares)
            ]
    out = {}
    for name, probs in readers.items():
        scores = row_scores(probs, truth)
        difference = scores - default
        out[name] = (
            float(scores.mean()),
            float(difference.mean()),
            paired_standard_error(difference, rows["groups"]),
        )
    return out


def per_field(data_dir: str, test_split: str | None = None) -> dict:
    """Each field's reader chosen on the validation rows: the default probe, unless one of FIELD_VOTES
    (the vote of the k nearest pictures at temperature T, as its share A beside the probe) names the
    field right more often by more than one paired error over objects, as a run chooses how it answers.
    {"fields": {field: {"probe", "nearest", "vote", "lead", "error", "kept"}}, "test": None}; with
    `test_split`, each field also gets "test probe" and "test kept", and "test" is that split's rows'
    share of fields right by the kept readers: (mean, its difference from the probe's, the paired error)."""
    rows = held_out(data_dir)
    index, truth, groups = rows["index"], rows["truth"], rows["groups"]
    depth = max(k for k, _, _ in FIELD_VOTES)

    def readers(vectors: np.ndarray) -> dict:
        similarities, order = ranked(index, vectors, depth)
        probe = [np.exp(lp) for lp in index.facts.log_probabilities(vectors)]
        out = {"probe": probe, "nearest": vote_shares(index, similarities, order, 1, 1.0)}
        shares = {(k, t): vote_shares(index, similarities, order, k, t) for k, t, _ in FIELD_VOTES}
        for k, t, a in FIELD_VOTES:  # each (k, T) vote counted once, whatever shares it is mixed at
            out[(k, t, a)] = [(1 - a) * p + a * v for p, v in zip(probe, shares[(k, t)])]
        return out

    by_validation = readers(rows["vectors"])
    out: dict[str, dict] = {}  # field -> its figures
    for j, field in enumerate(rows["vocabulary"].values):
        stated = truth[:, j] >= 0
        field_groups = [g for g, s in zip(groups, stated) if s]
        probe = right(by_validation["probe"][j], truth[:, j])[stated]
        leads = {v: right(by_validation[v][j], truth[:, j])[stated] - probe for v in FIELD_VOTES}
        vote = max(FIELD_VOTES, key=lambda v: leads[v].mean())
        error = paired_standard_error(leads[vote], field_groups)
        out[field] = {
            "probe": float(probe.mean()),
            "nearest": float(right(by_validation["nearest"][j], truth[:, j])[stated].mean()),
            "vote": vote, "lead": float(leads[vote].mean()), "error": error,
            "kept": vote if leads[vote].mean() > error else "probe",
        }  # fmt: skip
    test = None
    if test_split:
        tested = stating_rows(rows["data"][test_split], rows["vocabulary"], index)
        by_test = readers(tested["vectors"])
        kept = [by_test[out[field]["kept"]][j] for j, field in enumerate(out)]
        for j, field in enumerate(out):
            stated = tested["truth"][:, j] >= 0
            for name, probs in (("test probe", by_test["probe"][j]), ("test kept", kept[j])):
                out[field][name] = float(right(probs, tested["truth"][:, j])[stated].mean())
        chosen = row_scores(kept, tested["truth"])
        difference = chosen - row_scores(by_test["probe"], tested["truth"])
        test = (
            float(chosen.mean()),
            float(difference.mean()),
            paired_standard_error(difference, tested["groups"]),
        )
    return {"fields": out, "test": test}


def random_conv_features(images, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """(n, 256 x 4 x 4) training-free features: 256 random zero-mean 5x5 RGB kernels over the picture
    at 64 px (white = 0), ReLU, the maximum over each cell of a 4x4 grid."""
    generator = torch.Generator().manual_seed(seed)
    kernels = torch.randn(256, 3, 5, 5, generator=generator)
    kernels -= kernels.mean(dim=(1, 2, 3), keepdim=True)
    kernels /= kernels.flatten(1).norm(dim=1)[:, None, None, None]
    bias = torch.rand(256, generator=generator) * 0.5 - 0.25
    out = []
    for start in range(0, len(images), chunk):
        pixels = np.stack(
            [np.asarray(_rgb(im).resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255.0
             for im in images[start : start + chunk]]
        )  # fmt: skip
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2) - 1.0
        out.append(F.adaptive_max_pool2d(F.relu(F.conv2d(x, kernels, bias, padding=2)), 4).flatten(1).numpy())
    return np.concatenate(out)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


def compare_features(data_dir: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{features: {"answer F1" | "nearest facts" | "probe facts": (mean, difference from the index's
    vectors, paired error)}} on the validation rows."""
    rows = held_out(data_dir)
    index, truth, groups = rows["index"], rows["truth"], rows["groups"]
    _, indexed = indexed_pictures(rows["train"])  # the index's pictures, in its order
    train_random, held_random = random_conv_features(indexed), random_conv_features(rows["images"])
    mean, spread = train_random.mean(axis=0), train_random.std(axis=0) + 1e-6
    train_random, held_random = unit((train_random - mean) / spread), unit((held_random - mean) / spread)
    counts = [len(values) for values in rows["vocabulary"].values.values()]
    known = truth >= 0

    def scores(held: np.ndarray, table: np.ndarray) -> dict[str, np.ndarray]:
        nearest = (held @ table.T).argmax(axis=1)
        probes = facts.fit_fact_probes(table, index.facts.classes, counts)
        named = np.stack([(held @ w.T + b).argmax(axis=1) for w, b in probes], axis=1)
        return {
            "answer F1": np.array([token_f1(index.answers[j], a) for j, a in zip(nearest, rows["answers"])]),
            "nearest facts": ((index.facts.classes[nearest] == truth) & known).sum(1) / known.sum(1),
            "probe facts": ((named == truth) & known).sum(1) / known.sum(1),
        }

    tables = {
        "the index's vectors": (rows["vectors"], index.table),
        "random conv": (held_random, train_random),
    }
    for weight in (0.5, 1.0, 2.0):
        tables[f"index + {weight:g} x random conv"] = tuple(
            unit(np.concatenate([ours, np.sqrt(weight) * theirs], axis=1))
            for ours, theirs in ((rows["vectors"], held_random), (index.table, train_random))
        )
    scored = {name: scores(*pair) for name, pair in tables.items()}
    base = scored["the index's vectors"]
    return {
        name: {
            what: (
                float(v.mean()),
                float((v - base[what]).mean()),
                paired_standard_error(v - base[what], groups),
            )
            for what, v in by_what.items()
        }
        for name, by_what in scored.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dirs", nargs="+")
    parser.add_argument("--json", type=Path, help="also write every reader's figures here")
    parser.add_argument("--features", action="store_true", help="score picture features, not readers")
    parser.add_argument("--per-field", action="store_true", help="choose each field's reader on validation")
    parser.add_argument("--test", action="store_true", help="with --per-field: score the choice on test too")
    args = parser.parse_args()
    if args.per_field:
        by_set = {Path(d).name: per_field(d, "test" if args.test else None) for d in args.data_dirs}
        print(
            "| set | field | probe | nearest | best vote (k, T, share) | lead ± error | kept | test: probe, kept |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, chosen in by_set.items():
            for field, f in chosen["fields"].items():
                tested = f"{f['test probe']:.3f}, {f['test kept']:.3f}" if "test kept" in f else ""
                print(f"| {name} | {field} | {f['probe']:.3f} | {f['nearest']:.3f} | {f['vote']} | "
                      f"{f['lead']:+.3f} ± {f['error']:.3f} | {f['kept']} | {tested} |")  # fmt: skip
            if chosen["test"]:
                mean, difference, error = chosen["test"]
                print(f"| {name} | the test rows' share of fields right | | | | | | "
                      f"{mean:.3f} ({difference:+.3f} ± {error:.3f}) |")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(by_set, indent=1, default=str))
        return
    if args.features:
        by_set = {Path(d).name: compare_features(d) for d in args.data_dirs}
        print("| set | features | nearest answer's token F1 | nearest's facts | probe's facts |")
        print("|---|---|---|---|---|")
        for name, by_features in by_set.items():
            for features, by_what in by_features.items():
                cells = [f"{m:.3f} ({d:+.3f} ± {e:.3f})" for m, d, e in by_what.values()]
                print(f"| {name} | {features} | " + " | ".join(cells) + " |")
        if args.json:
            args.json.write_text(json.dumps(by_set, indent=1))
        return
    results = {Path(d).name: sweep(d) for d in args.data_dirs}
    names = list(next(iter(results.values())))
    worst = {n: min(r[n][1] for r in results.values()) for n in names}
    print("| reader | " + " | ".join(f"{s}: facts (diff ± error)" for s in results) + " |")
    print("|---|" + "---|" * len(results))
    default = f"probe l2={facts.PROBE_L2:g} scale={facts.PROBE_SCALE:g}"
    for name in [default] + sorted((n for n in names if n != default), key=lambda n: -worst[n])[:12]:
        cells = [f"{r[name][0]:.3f} ({r[name][1]:+.3f} ± {r[name][2]:.3f})" for r in results.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
