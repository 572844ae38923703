"""Generation speed on one CPU thread: picovlm's KV-cache `generate` against a no-cache loop.

super-small-11 (blog iteration 11, vocab 49152) with random weights, one 224 px image, 50 new tokens
(the end token is disabled so every run makes exactly 50). Each method runs in its own child process so
its peak RSS is its own. Prints time to first token (vision + prefill + first pick), decode tokens/s
(the 49 tokens after the first) and peak RSS.

    python bench/generate_cpu.py [--preset super-small-11] [--new-tokens 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PROMPT_TEXT_TOKENS = 12


def measure(preset: str, method: str, new_tokens: int) -> dict:
    import torch

    from picovlm.config import preset as make_config
    from picovlm.model.vlm import VLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = make_config(preset, image_token_id=0, pad_token_id=1, eos_token_id=None)
    model = VLM(cfg).eval()
    prompt = [2, 3] + [0] * cfg.mp_image_token_length + list(range(10, 10 + PROMPT_TEXT_TOKENS))
    input_ids = torch.tensor([prompt])
    pixels = torch.rand(1, 3, cfg.vit_img_size, cfg.vit_img_size) * 2 - 1
    stamps: list[float] = []
    start = time.perf_counter()
    with torch.inference_mode():
        if method == "kv-cache":
            model.generate(
                input_ids,
                pixels,
                max_new_tokens=new_tokens,
                on_token=lambda t: stamps.append(time.perf_counter()),
            )
        else:  # the straightforward loop: the whole model on the whole sequence for every new token
            ids = input_ids
            for _ in range(new_tokens):
                logits = model(ids, pixels).logits[:, -1]
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
                stamps.append(time.perf_counter())
    return {
        "method": method,
        "ttft_s": stamps[0] - start,
        "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "total_s": stamps[-1] - start,
        "tokens": len(stamps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="super-small-11")
    parser.add_argument("--new-tokens", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.preset, args.child, args.new_tokens)))
        return
    print(f"{args.preset}, random weights, one 224 px image, {args.new_tokens} new tokens, 1 thread")
    print(f"{'method':10s} {'TTFT ms':>9s} {'decode tok/s':>13s} {'total ms':>9s} {'peak RSS MB':>12s}")
    for method in ("kv-cache", "no-cache"):
        command = [
            sys.executable,
            __file__,
            "--preset",
            args.preset,
            "--new-tokens",
            str(args.new_tokens),
            "--child",
            method,
        ]
        r = json.loads(
            subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        print(
            f"{method:10s} {r['ttft_s'] * 1e3:9.1f} {r['decode_tok_s']:13.1f} {r['total_s'] * 1e3:9.1f} {r['peak_rss_mb']:12.0f}"
        )


if __name__ == "__main__":
    main()
