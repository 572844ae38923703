"""The deployment budget: one core, 2 GB, for super-small-11 and nanovlm-222m, torch vs onnxruntime fp32 vs int8.

For each model (random weights; a byte-level BPE tokenizer trained on demo answers, 2048 tokens, while
the model keeps its preset vocabulary of 49152 rows, as in the blog) this script saves the model,
exports it (fp32 and int8), then runs one child process per backend pinned to core 0 (`taskset -c 0`)
under a 2 GiB address-space limit (`prlimit --as`). Each child imports what it needs, loads the model,
answers one 224 px image with exactly 50 new tokens (end token ignored) and reports:

    load      process start -> model ready (imports included: `import torch` alone is most of it)
    TTFT      image in -> first token (preprocess, vision, prefill, first pick)
    decode    tokens/s over the 49 tokens after the first
    e2e       image in -> 50th token
    peak RSS  the child's high-water mark (ru_maxrss)

Beside each time: its compute floor = the model's FLOPs for that work / this machine's measured
single-core fp32 matmul FLOP/s, and the ratio measured / floor (1.0 = as fast as a matmul can go).
Peak RSS is shown beside the weights' bytes.

    python bench/deploy_budget.py [--models super-small-11 nanovlm-222m] [--work /tmp/picovlm-budget]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from picovlm.config import DEFAULT_QUESTION

START = time.perf_counter()
NEW_TOKENS = 50
QUESTION = DEFAULT_QUESTION
LIMIT_BYTES = 2 * 1024**3


# --- Children: one measurement each --------------------------------------------------------------


def child(backend: str, directory: str) -> dict:
    from PIL import Image

    image = Image.new("RGB", (224, 224), (200, 40, 40))
    stamps: list[float] = []
    if backend == "torch":
        import torch

        from picovlm.model.vlm import VLM

        torch.set_num_threads(1)
        model = VLM.from_pretrained(directory)
        model.cfg.eos_token_id = None  # exactly NEW_TOKENS tokens

        def run() -> None:
            batch = model.prepare_prompts([image], [QUESTION])
            model.generate(
                **batch, max_new_tokens=NEW_TOKENS, on_token=lambda t: stamps.append(time.perf_counter())
            )

    else:
        from picovlm.runtime import GenerationConfig, Runtime

        runtime = Runtime.load(directory, threads=1)
        options = GenerationConfig(max_new_tokens=NEW_TOKENS, stop_at_eos=False)

        def run() -> None:
            for _ in runtime.generate_ids(image, QUESTION, options):
                stamps.append(time.perf_counter())

    loaded = time.perf_counter()
    run()  # the first answer after loading: what a freshly started CLI pays
    first = list(stamps)
    stamps.clear()
    warm_start = time.perf_counter()
    run()  # the second: what a running server pays per request
    return {
        "load_s": loaded - START,
        "ttft_s": first[0] - loaded,
        "decode_tok_s": (len(first) - 1) / (first[-1] - first[0]),
        "e2e_s": first[-1] - loaded,
        "tokens": len(first),
        "warm_e2e_s": stamps[-1] - warm_start,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM). Not ru_maxrss: Linux keeps that across exec, so a
    child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_flops() -> float:
    """Single-core fp32 matmul FLOP/s (numpy/OpenBLAS, 1024^3, best of 5)."""
    import numpy as np

    a, b = np.random.rand(1024, 1024).astype(np.float32), np.random.rand(1024, 1024).astype(np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 1024**3 / best


def read_bandwidth() -> float:
    """Single-core bytes/s streamed through a matrix-vector product (fp32, 256 MB: far over the cache)."""
    import numpy as np

    matrix, vector = np.random.rand(8192, 8192).astype(np.float32), np.random.rand(8192).astype(np.float32)
    matrix @ vector
    return matrix.nbytes / min(_timed(lambda: matrix @ vector) for _ in range(5))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- FLOPs of the work -----------------------------------------------------------------------------


def work_flops(cfg, prompt_len: int) -> dict[str, float]:
    """Multiply-adds x 2 of vision + projector, prefill (LM head on the last position only), one decode step."""
    N, D, H, P = cfg.vit_n_patches, cfg.vit_hidden_dim, cfg.vit_inter_dim, cfg.vit_patch_size
    vision = (
        2 * N * (3 * P * P * D + cfg.vit_n_blocks * (4 * D * D + 2 * D * H))
        + cfg.vit_n_blocks * 4 * N * N * D
    )
    E, F, L, V = cfg.lm_hidden_dim, cfg.lm_inter_dim, cfg.mp_image_token_length, cfg.lm_vocab_size
    vision += 2 * L * cfg.mp_pixel_shuffle_factor**2 * D * E
    kv = cfg.lm_n_kv_heads * cfg.lm_head_dim
    per_token = cfg.lm_n_blocks * 2 * (2 * E * E + 2 * E * kv + 3 * E * F)
    attention = lambda q, s: cfg.lm_n_blocks * 4 * q * s * E  # noqa: E731 - QK^T and AV
    prefill = prompt_len * per_token + attention(prompt_len, prompt_len) / 2 + 2 * E * V
    decode = per_token + attention(1, prompt_len + NEW_TOKENS // 2) + 2 * E * V
    # A decode step is a matrix-vector product: every weight is read once for 2 FLOPs, so memory
    # bandwidth, not FLOP/s, bounds it. Weights read per step (LM blocks + head), in parameters:
    decode_params = per_token / 2 + E * V
    return {"vision": vision, "prefill": prefill, "decode": decode, "decode_params": decode_params}


# --- Parent ------------------------------------------------------------------------------------------


def prepare(preset_name: str, work: Path) -> tuple[Path, dict[str, Path]]:
    import torch

    from picovlm.config import preset
    from picovlm.data.scenes import make_scene, scene_answer
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.export.onnx import export_model
    from picovlm.model.vlm import VLM

    model_dir = work / preset_name
    if not (model_dir / "model.safetensors").is_file():
        torch.manual_seed(0)
        tokenizer = train_tokenizer(
            [scene_answer(make_scene(0, i)) for i in range(2000)] + [QUESTION], vocab_size=2048
        )
        VLM(preset(preset_name), tokenizer=tokenizer).save_pretrained(model_dir)
    exports = {"onnx fp32": work / f"{preset_name}-onnx", "onnx int8": work / f"{preset_name}-int8"}
    for label, directory in exports.items():
        if not (directory / "manifest.json").is_file():
            export_model(model_dir, directory, quantize="int8" if "int8" in label else None)
    return model_dir, exports


def run_child(args: list[str]) -> dict:
    command = ["taskset", "-c", "0", "prlimit", f"--as={LIMIT_BYTES}", sys.executable, __file__, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return {"error": (result.stderr or result.stdout).strip().splitlines()[-1:]}
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["super-small-11", "nanovlm-222m"])
    parser.add_argument(
        "--work", default="/tmp/picovlm-budget", help="where models and exports are kept (reused)"
    )
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.matmul:
        print(json.dumps({"flops": matmul_flops(), "bandwidth": read_bandwidth()}))
        return

    from picovlm.config import preset

    machine = run_child(["--matmul"])
    flops, bandwidth = machine["flops"], machine["bandwidth"]
    print(
        f"machine: {os.cpu_count()} cores; one pinned (taskset -c 0), address space limit 2 GiB (prlimit --as)"
    )
    print(f"single-core fp32 matmul: {flops / 1e9:.1f} GFLOP/s (numpy 1024^3); compute floors = FLOPs / this")
    print(
        f"single-core read bandwidth: {bandwidth / 1e9:.1f} GB/s (fp32 GEMV over 256 MB); decode memory floor = "
        f"weight bytes read per token / this\n"
    )
    work = Path(args.work)
    for name in args.models:
        model_dir, exports = prepare(name, work)
        cfg = preset(name)
        manifest = json.loads((exports["onnx fp32"] / "manifest.json").read_text())
        prompt_len = cfg.mp_image_token_length + 15  # image tokens, their 3-token wrapper, the chat template
        f = work_flops(cfg, prompt_len)
        floor = {
            "ttft": (f["vision"] + f["prefill"]) / flops,
            "decode": f["decode"] / flops,
            "e2e": (f["vision"] + f["prefill"] + NEW_TOKENS * f["decode"]) / flops,
        }
        n_params = sum(v for k, v in manifest["file_sizes"].items() if k.endswith(".onnx")) / 4
        print(
            f"== {name}: ~{n_params / 1e6:.1f}M params in the graphs, vocab {cfg.lm_vocab_size}, prompt {prompt_len} tokens, {NEW_TOKENS} new"
        )
        print(f"{'backend':10s} {'peak RSS MB':>12s} {'load s':>7s} {'TTFT ms (floor, x)':>22s} "
              f"{'decode tok/s (compute | memory floor, x)':>40s} {'e2e ms (floor, x)':>22s} {'warm e2e ms':>12s}")  # fmt: skip
        for label, backend, directory in [
            ("torch fp32", "torch", model_dir),
            *((k, "onnx", v) for k, v in exports.items()),
        ]:
            r = run_child(["--child", backend, str(directory)])
            if "error" in r:
                print(f"{label:10s} failed: {r['error']}")
                continue
            weight_bytes = 1 if "int8" in label else 4
            memory_tok_s = bandwidth / (f["decode_params"] * weight_bytes)
            weights_mb = (
                sum(
                    p.stat().st_size
                    for p in Path(directory).iterdir()
                    if p.suffix in (".onnx", ".safetensors")
                )
                / 1e6
            )
            print(
                f"{label:10s} {r['peak_rss_mb']:6.0f} ({weights_mb:4.0f}) {r['load_s']:7.2f} "
                f"{r['ttft_s'] * 1e3:8.1f} ({floor['ttft'] * 1e3:5.1f}, {r['ttft_s'] / floor['ttft']:4.1f}x) "
                f"{r['decode_tok_s']:9.1f} ({1 / floor['decode']:6.0f}, {1 / floor['decode'] / r['decode_tok_s']:4.1f}x"
                f" | {memory_tok_s:6.0f}, {memory_tok_s / r['decode_tok_s']:4.1f}x) "
                f"{r['e2e_s'] * 1e3:8.1f} ({floor['e2e'] * 1e3:5.1f}, {r['e2e_s'] / floor['e2e']:4.1f}x) {r['warm_e2e_s'] * 1e3:12.1f}"
            )
        print(
            "(peak RSS: measured (weights on disk, MB); x = measured / floor; e2e = first answer after load,"
        )
        print(
            " warm e2e = the second answer in the same process; the memory floor counts int8 weights as 1 byte)\n"
        )


if __name__ == "__main__":
    main()
