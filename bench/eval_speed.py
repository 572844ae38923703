"""Answers per second on CPU for the `super-small-11` shape (random weights, 49,152-token vocabulary).

    python bench/eval_speed.py [--threads 1] [--batch-sizes 1 8 32] [--new-tokens 64] [--answers 32]

Random weights never emit the end token, so every answer runs the full --new-tokens: the figures are
the worst case for answers of that length (64 tokens is about a 45-word answer with a domain tokenizer).
The demo set's images and question are used; a small tokenizer is trained on its answers, while the
model keeps the preset's 49,152-row LM head, which dominates each decoding step.
"""

from __future__ import annotations

import argparse
import time

import torch

from picovlm.config import preset
from picovlm.data.scenes import DEMO_QUESTION, draw_scene, make_scene, scene_answer
from picovlm.data.tokenizer import train_tokenizer
from picovlm.model.vlm import VisionLanguageModel


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="super-small-11")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--answers", type=int, default=32, help="answers generated per batch size")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scenes = [make_scene(0, i) for i in range(args.answers)]
    tokenizer = train_tokenizer([scene_answer(make_scene(0, i)) for i in range(500)], vocab_size=1024)
    model = VisionLanguageModel(preset(args.preset), tokenizer).eval()
    images = [draw_scene(scene) for scene in scenes]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters, vocab {model.cfg.lm_vocab_size}, "
          f"{args.threads} thread(s), {args.new_tokens} new tokens per answer, torch {torch.__version__}")  # fmt: skip
    model.answer(images[:2], [DEMO_QUESTION] * 2, max_new_tokens=4)  # warm-up
    print(f"{'batch':>5}  {'answers/s':>9}  {'tokens/s':>8}  {'s/answer':>8}")
    for batch_size in args.batch_sizes:
        tokens = 0
        start = time.perf_counter()
        for offset in range(0, args.answers, batch_size):
            batch = images[offset : offset + batch_size]
            prompts = model.prepare_prompts(batch, [DEMO_QUESTION] * len(batch))
            out = model.generate(**prompts, max_new_tokens=args.new_tokens)
            tokens += out.numel()
        seconds = time.perf_counter() - start
        print(
            f"{batch_size:>5}  {args.answers / seconds:>9.2f}  {tokens / seconds:>8.0f}  {seconds / args.answers:>8.3f}"
        )


if __name__ == "__main__":
    main()
