"""llama.cpp (GGUF) against picovlm's ONNX runtime: one core, a 50-token answer, latency and peak RSS.

The models of bench/deploy_budget.py (random weights; a 2,048-token byte-level BPE trained on demo answers;
the preset's own vocabulary rows), exported by `picovlm.export.gguf` (fp32) and by `picovlm export` (ONNX
fp32 and int8). Each backend runs as its own process pinned to core 0 (`taskset -c 0`), one thread, on
one 224 px picture, generating exactly 50 tokens (end token ignored):

    process   start -> exit of a one-shot CLI answer (load included), and its peak RSS (VmHWM, from wait4)
    answer    picture in -> 50th token, the model already loaded: llama.cpp's own timings (image encode
              + image decode + prompt eval + eval), the ONNX runtime's first answer after load

llama-mtmd-cli needs the patched build (bench/build_llama_cpp.sh --patched): stock llama.cpp aborts on
picovlm's vocabularies (docs/deploy.md, "GGUF / llama.cpp").

    python bench/gguf_vs_onnx.py --llama-cpp DIR [--models super-small-11] [--work /tmp/picovlm-gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_budget  # noqa: E402 - the same models, ONNX exports and ONNX child as the deployment budget

NEW_TOKENS = deploy_budget.NEW_TOKENS
QUESTION = deploy_budget.QUESTION
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed_process(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run pinned to core 0; return (result, wall seconds, peak RSS MB of that process alone)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    out, err = proc.stdout.read(), proc.stderr.read()  # small outputs: no pipe deadlock
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess(command, proc.returncode, out, err), wall, usage.ru_maxrss / 1024


def llama_cpp_timings(stderr: str) -> dict[str, float]:
    """ms figures llama-mtmd-cli prints: image encode/decode, prompt eval, eval (one line each)."""
    found = {}
    for key, pattern in {
        "image_encode_ms": r"image slice encoded in (\d+) ms",
        "image_decode_ms": r"image decoded \(batch \d+/\d+\) in (\d+) ms",
        "load_ms": r"load time =\s+([\d.]+) ms",
        "prompt_eval_ms": r"prompt eval time =\s+([\d.]+) ms",
        "eval_ms": r"\beval time =\s+([\d.]+) ms",
    }.items():
        values = re.findall(pattern, stderr)
        if values:
            found[key] = float(values[-1])
    return found


def run_llama_cpp(cli: str, gguf_dir: Path, image: Path) -> dict:
    from picovlm.export.gguf import llama_mtmd_command

    command = llama_mtmd_command(cli, gguf_dir, image, QUESTION, NEW_TOKENS, threads=1) + ["--ignore-eos"]
    result, wall, rss = timed_process(command)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-3:]}
    t = llama_cpp_timings(result.stderr)
    answer_ms = sum(
        t.get(k, 0.0) for k in ("image_encode_ms", "image_decode_ms", "prompt_eval_ms", "eval_ms")
    )
    return {"process_s": wall, "answer_s": answer_ms / 1000, "peak_rss_mb": rss, **t}


def run_onnx(directory: Path) -> dict:
    command = [sys.executable, deploy_budget.__file__, "--child", "onnx", str(directory)]
    result, wall, rss = timed_process(command)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-3:]}
    child = json.loads(result.stdout.splitlines()[-1])
    return {"process_s": wall, "answer_s": child["e2e_s"], "warm_answer_s": child["warm_e2e_s"],
            "peak_rss_mb": rss, "load_s": child["load_s"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--llama-cpp", default=os.environ.get("PICOVLM_LLAMA_CPP"), help="folder of llama-mtmd-cli"
    )
    parser.add_argument("--models", nargs="+", default=["super-small-11"])
    parser.add_argument(
        "--work", default="/tmp/picovlm-gguf", help="where models and exports are kept (reused)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per backend; the fastest is kept")
    args = parser.parse_args()
    if not args.llama_cpp:
        parser.error(
            "--llama-cpp DIR (or PICOVLM_LLAMA_CPP): build it with bench/build_llama_cpp.sh --patched"
        )
    cli = str(Path(args.llama_cpp) / "llama-mtmd-cli")

    from PIL import Image

    from picovlm.config import preset
    from picovlm.export.gguf import export_gguf

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        model_dir, exports = deploy_budget.prepare(name, work)
        gguf_dir = work / f"{name}-gguf"
        if not (gguf_dir / "model.gguf").is_file():
            export_gguf(model_dir, gguf_dir)
        size = preset(name).vit_img_size
        image = work / f"red-{size}.png"
        Image.new("RGB", (size, size), (200, 40, 40)).save(image)  # deploy_budget's picture
        runs = {"llama.cpp gguf fp32": lambda g=gguf_dir, i=image: run_llama_cpp(cli, g, i)}
        runs.update({label: (lambda d=d: run_onnx(d)) for label, d in exports.items()})
        for label, run in runs.items():
            results = [run() for _ in range(args.repeats)]
            ok = [r for r in results if "error" not in r]
            best = min(ok, key=lambda r: r["process_s"]) if ok else results[0]
            rows.append({"model": name, "backend": label, **best})
            print(json.dumps(rows[-1]), flush=True)

    print("\n| model | backend | peak RSS | one-shot process (load + answer) | 50-token answer, loaded |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['backend']} | error: {r['error']} | | |")
            continue
        print(f"| {r['model']} | {r['backend']} | {r['peak_rss_mb']:.0f} MB | {r['process_s'] * 1000:.0f} ms "
              f"| {r['answer_s'] * 1000:.0f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
