"""Rows per second of `picovlm similar`'s text embedding (all-MiniLM-L6-v2) on the CPU.

    python bench/similar_speed.py --rows 512 --threads 1

Embeds demo-set answers (questions + answers, ~30 words each) in batches, with no cache, and prints
rows/s; then the scoring step (centroid + coverage) for a user set against the embedded rows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from picovlm.data.scenes import DEMO_QUESTION, make_scene, scene_answer
    from picovlm.grow.similar import EmbeddingCache, TextEmbedder, embed_all, score_pair

    torch.set_num_threads(args.threads)
    texts = [f"{DEMO_QUESTION}\n{scene_answer(make_scene(0, i))}" for i in range(args.rows)]
    embedder = TextEmbedder(batch_size=args.batch_size)
    embedder.embed(texts[:8])  # warm-up
    start = time.perf_counter()
    vectors = embed_all(embedder, texts, [str(i) for i in range(len(texts))], EmbeddingCache(None))
    seconds = time.perf_counter() - start
    print(f"text embedding: {args.rows} rows in {seconds:.2f} s = {args.rows / seconds:.0f} rows/s "
          f"(batch {args.batch_size}, {args.threads} thread(s))")  # fmt: skip
    start = time.perf_counter()
    user = vectors[: args.rows // 4]
    scores = score_pair(user, vectors, threshold=0.6)
    print(f"scoring {len(user)} x {len(vectors)}: {(time.perf_counter() - start) * 1000:.1f} ms {scores}")
    assert np.isfinite(vectors).all()


if __name__ == "__main__":
    main()
