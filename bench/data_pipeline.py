"""Training input pipeline throughput on the demo set: images/s and the share of padding tokens,
with padding to the longest item and with packing, each with and without length grouping.

    python bench/data_pipeline.py --n 1000 --batch-size 32 --workers 0 1 2

Builds the demo set in memory, trains a small BPE tokenizer on its answers, encodes with the project's
Processor at the config's image size, and times full passes of make_dataloader (decode PNG, resize,
normalise, tokenise, collate). Prints one line per (packing, grouping, workers) setting, with the
number of distinct batch shapes (each one is a recompile for torch.compile without dynamic shapes).
The last line times the sample cache (train.sample_cache_mb): a first pass that fills it and a
second that reads it, padding to the longest item, no workers.
"""

from __future__ import annotations

import argparse
import time

import torch

from picovlm.config import VLMConfig
from picovlm.data.pipeline import CauldronTorchDataset, make_dataloader
from picovlm.data.processor import Processor
from picovlm.data.scenes import make_demo_dataset
from picovlm.data.tokenizer import train_tokenizer


def run(
    dataset: CauldronTorchDataset,
    batch_size: int,
    workers: int,
    packing: bool,
    max_length: int,
    grouped: bool,
) -> dict:
    start = time.perf_counter()  # includes computing the lengths (once per dataset) when grouped
    loader = make_dataloader(dataset, batch_size=batch_size, seed=0, num_workers=workers, packing=packing,
                             max_length=max_length, group_by_length=grouped)  # fmt: skip
    images = real = total = rows = 0
    shapes = set()
    for batch in loader:
        images += batch["pixel_values"].shape[0]
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
        rows += batch["input_ids"].shape[0]
        shapes.add(tuple(batch["input_ids"].shape))
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "padding_share": 1 - real / max(1, total), "rows": rows,
            "seconds": seconds, "shapes": len(shapes)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="demo rows to stream (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--image-size", type=int, default=224, help="demo image size (the ViT input is 224)")
    parser.add_argument(
        "--pack-length", type=int, default=None, help="packed row length (default lm_max_length)"
    )
    parser.add_argument("--cache-mb", type=int, default=1024, help="the sample cache's cap (default 1024)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    config = VLMConfig()
    hf_dataset = make_demo_dataset(args.n, seed=0, image_size=args.image_size)
    tokenizer = train_tokenizer([t[0]["assistant"] for t in hf_dataset["texts"]], vocab_size=1024)
    processor = Processor.from_config(tokenizer, config)
    dataset = CauldronTorchDataset(hf_dataset, processor)
    pack_length = args.pack_length or config.lm_max_length
    print(f"demo rows: {args.n}, batch {args.batch_size}, vit_img_size {config.vit_img_size}, "
          f"image tokens {config.mp_image_token_length}, lm_max_length {config.lm_max_length}, "
          f"pack length {pack_length}, torch threads 1")  # fmt: skip
    for packing in (False, True):
        for grouped in (False, True):
            for workers in args.workers:
                r = run(dataset, args.batch_size, workers, packing, pack_length, grouped)
                print(f"packing={packing!s:5} group_by_length={grouped!s:5} workers={workers}: "
                      f"{r['images_per_s']:7.1f} images/s, padding {r['padding_share']:.1%}, "
                      f"{r['rows']} rows in {r['seconds']:.1f} s, {r['shapes']} batch shapes")  # fmt: skip
    cap = args.cache_mb * 2**20
    cached = CauldronTorchDataset(hf_dataset, processor, cache_bytes=cap)
    filling, reading = (run(cached, args.batch_size, 0, False, pack_length, False) for _ in range(2))
    print(f"sample cache ({args.cache_mb} MB): {filling['images_per_s']:7.1f} images/s filling it, "
          f"{reading['images_per_s']:7.1f} reading it ({reading['images_per_s'] / filling['images_per_s']:.1f}x), "
          f"{(cap - cached.cache_room) / 2**20:.0f} MB held for {cached.cached_rows} rows")  # fmt: skip


if __name__ == "__main__":
    main()
