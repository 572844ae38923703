"""Training input pipeline throughput on the demo set: images/s and the share of padding tokens,
with padding to the longest item and with packing.

    python bench/data_pipeline.py --n 1000 --batch-size 32 --workers 0 1 2

Builds the demo set in memory, trains a small BPE tokenizer on its answers, encodes with the project's
Processor at the config's image size, and times full passes of make_dataloader (decode PNG, resize,
normalise, tokenise, collate). Prints one line per (packing, workers) setting.
"""

from __future__ import annotations

import argparse
import time

import torch

from picovlm.config import VLMConfig
from picovlm.data.demo import make_demo_dataset
from picovlm.data.pipeline import CauldronTorchDataset, make_dataloader
from picovlm.data.processor import Processor
from picovlm.data.tokenizer import train_tokenizer


def run(dataset: CauldronTorchDataset, batch_size: int, workers: int, packing: bool, max_length: int) -> dict:
    loader = make_dataloader(dataset, batch_size=batch_size, seed=0, num_workers=workers, packing=packing,
                             max_length=max_length)  # fmt: skip
    images = real = total = rows = 0
    start = time.perf_counter()
    for batch in loader:
        images += batch["pixel_values"].shape[0]
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
        rows += batch["input_ids"].shape[0]
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "padding_share": 1 - real / max(1, total), "rows": rows,
            "seconds": seconds}  # fmt: skip


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
        for workers in args.workers:
            r = run(dataset, args.batch_size, workers, packing, pack_length)
            print(f"packing={packing!s:5} workers={workers}: {r['images_per_s']:7.1f} images/s, "
                  f"padding {r['padding_share']:.1%}, {r['rows']} rows in {r['seconds']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
