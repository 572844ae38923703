"""Can the fact reader that weighs a retrieving model's vote read unseen objects' facts better?

docs/recipes.md finding 44. A run that answers with the weighed vote states the facts its fact
probes read off the picture, so a better reader would be more facts in its answers. This fits, on the training split of each set, the index a run builds, then scores on the
validation split (objects unseen in training) every reader of a small grid against the default probe:

    probe l2=L scale=S    `fit_fact_probes` with PROBE_L2 = L and PROBE_SCALE = S (the default: 1e-3, 10)
    knn k=K t=T           the neighbours' vote: the K most similar training pictures' values, each
                          weighted exp((similarity - the nearest's) / T)
    mix k=K t=T a=A       (1 - A) x the default probe's probabilities + A x that vote's shares

Each row's score is its share of fields named right; "±" is the paired standard error of the
difference over the rows' objects (`picovlm.eval.metrics.paired_standard_error`, as a run's choice counts it). Only validation is read.

    python bench/recipes/reader_sweep.py /work/data/emoji /work/data/cjk ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import load_from_disk

import picovlm.train.facts as facts
from picovlm.eval.facts import row_facts
from picovlm.eval.metrics import flatten_fields, paired_standard_error
from picovlm.retrieval import READS_PICTURES, _row_groups, build_training_index, first_images

PROBE_GRID = [(l2, scale) for l2 in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2) for scale in (10.0, 30.0)]
VOTE_GRID = [(k, t) for k in (1, 5, 10, 20) for t in (0.01, 0.03, 0.1)]
MIX_SHARES = (0.3, 0.5, 0.7)


def probe_probabilities(index, vocabulary, vectors, l2: float, scale: float) -> list[np.ndarray]:
    """Each field's (n, classes) probabilities by probes fitted as a run fits them, at this L2 and scale."""
    saved = facts.PROBE_L2, facts.PROBE_SCALE
    facts.PROBE_L2, facts.PROBE_SCALE = l2, scale
    try:
        counts = [len(values) for values in vocabulary.values.values()]
        heads = facts.fit_fact_probes(index.table, index.facts.classes, counts)
    finally:
        facts.PROBE_L2, facts.PROBE_SCALE = saved
    reader = index.facts.with_heads(heads, READS_PICTURES)
    return [np.exp(log_probs) for log_probs in reader.log_probabilities(vectors)]


def vote_shares(index, similarities: np.ndarray, k: int, temperature: float) -> list[np.ndarray]:
    """Each field's (n, classes) shares of the k nearest training pictures' values, weighted by similarity."""
    top = np.argsort(-similarities, axis=1)[:, :k]
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


def row_scores(probabilities: list[np.ndarray], truth: np.ndarray) -> np.ndarray:
    """Each row's share of its known fields named right (truth -1 = the row lacks the field)."""
    right = np.stack([p.argmax(axis=1) == truth[:, j] for j, p in enumerate(probabilities)], axis=1)
    known = truth >= 0
    return (right & known).sum(axis=1) / np.maximum(known.sum(axis=1), 1)


def sweep(data_dir: str) -> dict[str, tuple[float, float, float]]:
    data = load_from_disk(data_dir)
    train, held = data["train"], data["validation"]
    vocabulary = facts.FactVocabulary.from_rows(train["fields"])
    index = build_training_index(train, 1, vocabulary.encode, "auto", "auto", report=lambda _: None)
    facts.attach_fact_probes(index, vocabulary)
    rows, images = first_images(held)
    class_of = [{v: c for c, v in enumerate(values)} for values in vocabulary.values.values()]
    truth = np.array(
        [
            [cls.get(flatten_fields(row_facts({"fields": held["fields"][r]}) or {}).get(path), -1)
             for path, cls in zip(vocabulary.values, class_of)]
            for r in rows
        ]
    )  # fmt: skip
    keep = (truth >= 0).any(axis=1)
    rows, truth = [r for r, k in zip(rows, keep) if k], truth[keep]
    vectors = index.vectors_of([im for im, k in zip(images, keep) if k])
    all_groups = _row_groups(held)
    groups = [all_groups[r] for r in rows]
    similarities = vectors @ index.table.T

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
        shares = vote_shares(index, similarities, k, t)
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
            paired_standard_error(difference, groups),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_dirs", nargs="+")
    parser.add_argument("--json", type=Path, help="also write every reader's figures here")
    args = parser.parse_args()
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
