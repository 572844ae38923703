"""Training throughput: tokens/s, peak memory and model-FLOPs utilisation (MFU) per configuration.

    python bench/train_throughput.py              # CPU (and CUDA when available), a few minutes
    python bench/train_throughput.py --quick      # fewer configurations

Each configuration runs in its own subprocess, so its peak RSS is its own. A step is forward + backward
+ AdamW on demo-set batches (1 image + ~50 text tokens per sample). Tokens = text + image tokens that are
not padding; tokens/s is over the step time (data is prepared beforehand).

"straightforward" is the comparison the issue asks for: every batch padded to lm_max_length and the
full LM head (49,152 rows) computed at every position, image and padding tokens included, then a
cross-entropy over all of it. picovlm's path pads to the longest sample (or packs) and applies the head
only at supervised positions, in chunks.

MFU = model FLOPs per second / measured fp32 matmul FLOP/s of this machine (a 1024^3 matmul, all
threads). Model FLOPs of a step: 6 x (ViT params x patches + projector params x image tokens + LM
non-embedding params x tokens + head rows x D x supervised tokens) + attention (12 x blocks x T x D per
token, both towers).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def matmul_flops(device: str, seconds: float = 1.5) -> float:
    a = torch.randn(1024, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def make_batches(
    cfg, batch_size: int, n_batches: int, packing: bool, fixed_length: bool, grouped: bool = False
):
    from picovlm.data.collate import pack_collate, pad_collate
    from picovlm.data.processor import Processor
    from picovlm.data.scenes import make_demo_dataset
    from picovlm.data.tokenizer import train_tokenizer

    rows = make_demo_dataset(batch_size * n_batches, seed=1, image_size=cfg.vit_img_size)
    tokenizer = train_tokenizer([t["assistant"] for r in rows for t in r["texts"]], 2048)
    processor = Processor.from_config(tokenizer, cfg)
    samples = [processor.encode_example(r) for r in rows]
    if grouped:  # what the trainer does by default (train.group_by_length): similar lengths per batch
        from picovlm.data.pipeline import group_by_length

        lengths = [len(s["input_ids"]) for s in samples]
        order = group_by_length(
            list(range(len(samples))), lengths, batch_size, torch.Generator().manual_seed(0)
        )
        samples = [samples[i] for i in order]
    batches = []
    for i in range(n_batches):
        chunk = samples[i * batch_size : (i + 1) * batch_size]
        if packing:
            batches.append(pack_collate(chunk, tokenizer.pad_token_id, cfg.lm_max_length))
        elif fixed_length:  # pad to lm_max_length, as a straightforward implementation does
            padded = [dict(s, input_ids=s["input_ids"] + [tokenizer.pad_token_id] * (cfg.lm_max_length - len(s["input_ids"])),
                           labels=s["labels"] + [-100] * (cfg.lm_max_length - len(s["labels"]))) for s in chunk]  # fmt: skip
            batch = pad_collate(padded, tokenizer.pad_token_id)
            batch["attention_mask"] = (batch["input_ids"] != tokenizer.pad_token_id).long()
            batches.append(batch)
        else:
            batches.append(pad_collate(chunk, tokenizer.pad_token_id))
    return tokenizer, batches


def straightforward_loss(model, batch):
    """Full logits (B, T, V) at every position, then cross-entropy: what the bench compares against."""
    import torch.nn.functional as F

    embeds = model.embed(batch["input_ids"], batch["pixel_values"])
    positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
    hidden = model.decoder(embeds, positions)
    logits = model.decoder.lm_head(hidden)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1))


def step_flops(cfg, report, batch) -> float:
    n_images = batch["pixel_values"].shape[0]
    tokens = int(batch["attention_mask"].sum())
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    T = batch["input_ids"].shape[1]
    dense = (report.vit * cfg.vit_n_patches * n_images + report.projector * cfg.mp_image_token_length * n_images
             + report.lm_non_embedding * tokens + cfg.lm_vocab_size * cfg.lm_hidden_dim * supervised)  # fmt: skip
    attention = 12 * cfg.lm_n_blocks * T * cfg.lm_hidden_dim * tokens
    attention += 12 * cfg.vit_n_blocks * cfg.vit_n_patches * cfg.vit_hidden_dim * cfg.vit_n_patches * n_images
    return 6 * dense + attention


def run_one(spec: dict) -> dict:
    from picovlm.config import preset
    from picovlm.model.params import param_report
    from picovlm.model.vlm import VLM

    torch.manual_seed(0)
    device = spec["device"]
    cfg = preset(spec["preset"])  # 49,152-token vocabulary, as in the blog
    tokenizer, batches = make_batches(
        cfg,
        spec["batch"],
        spec["steps"] + 1,
        spec["packing"],
        spec["mode"] == "straightforward",
        spec.get("grouped", False),
    )
    model = VLM(cfg, tokenizer=tokenizer).to(device)
    report = param_report(model.cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if spec["compile"] else model
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids", "segment_ids")
    times, tokens, slots, flops = [], 0, 0, 0.0
    for i, batch in enumerate(batches):
        inputs = {k: batch[k].to(device) for k in keys if batch.get(k) is not None}
        start = time.perf_counter()
        if spec["mode"] == "straightforward":
            loss = straightforward_loss(model, inputs)
        else:
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up (allocations, compilation)
            times.append(time.perf_counter() - start)
            tokens += int(batch["attention_mask"].sum())
            slots += batch["input_ids"].numel()
            flops += step_flops(model.cfg, report, batch)
    step_time = sum(times)
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {**spec, "tokens_per_s": tokens / step_time, "step_s": step_time / len(times),
            "padding_share": 1 - tokens / slots, "model_flops_per_s": flops / step_time,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_cuda_mb": peak_cuda}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    parser.add_argument("--quick", action="store_true", help="only the batch-60 comparison and nanovlm-222m")
    parser.add_argument(
        "--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)"
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    specs = []
    for device in devices:
        base = dict(
            preset="super-small-11",
            device=device,
            packing=False,
            compile=False,
            mode="picovlm",
            steps=args.steps,
        )
        specs += [
            dict(base, batch=60),
            dict(base, batch=60, mode="straightforward"),
            dict(base, batch=60, packing=True),
            dict(base, batch=60, grouped=True),
        ]
        if not args.quick:
            specs += [dict(base, batch=16), dict(base, batch=16, compile=True)]
        specs.append(
            dict(
                base,
                preset="nanovlm-222m",
                batch=4 if device == "cpu" else 32,
                steps=1 if device == "cpu" else 3,
            )
        )
    peak = {d: matmul_flops(d) for d in devices}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak: "
          + ", ".join(f"{d} {v / 1e9:,.0f} GFLOP/s" for d, v in peak.items()))  # fmt: skip
    header = f"{'preset':<16}{'dev':<5}{'batch':>6} {'mode':<16}{'pack':<6}{'compile':<8}{'tok/s':>9}{'step s':>8}{'pad %':>7}{'MFU %':>7}{'RSS MB':>8}{'CUDA MB':>8}"
    print(header)
    results = []
    for spec in specs:
        out = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True
        )
        if out.returncode != 0:
            print(
                f"{spec}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
            )
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["mfu"] = r["model_flops_per_s"] / peak[r["device"]]
        results.append(r)
        cuda = f"{r['peak_cuda_mb']:,.0f}" if r["peak_cuda_mb"] else "-"
        mode = r["mode"] + ("+grouped" if r.get("grouped") else "")
        print(f"{r['preset']:<16}{r['device']:<5}{r['batch']:>6} {mode:<16}{str(r['packing']):<6}{str(r['compile']):<8}"
              f"{r['tokens_per_s']:>9,.0f}{r['step_s']:>8.2f}{100 * r['padding_share']:>7.1f}{100 * r['mfu']:>7.1f}"
              f"{r['peak_rss_mb']:>8,.0f}{cuda:>8}", flush=True)  # fmt: skip
    for device in devices:
        ours = next(
            (
                r
                for r in results
                if r["device"] == device and r["batch"] == 60 and r["mode"] == "picovlm" and not r["packing"]
            ),
            None,
        )
        naive = next((r for r in results if r["device"] == device and r["mode"] == "straightforward"), None)
        if ours and naive:
            print(f"{device}: super-small-11 batch 60: {ours['tokens_per_s'] / naive['tokens_per_s']:.1f}x the tokens/s "
                  f"of the straightforward implementation at {ours['peak_rss_mb'] / naive['peak_rss_mb']:.2f}x its peak RSS")  # fmt: skip


if __name__ == "__main__":
    main()
