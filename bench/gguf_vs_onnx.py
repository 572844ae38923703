"""llama.cpp (GGUF) against picovlm's ONNX runtime: one core, a 50-token answer, latency and peak RSS.

The models of bench/deploy_budget.py (random weights; a 2,048-token byte-level BPE trained on demo answers;
the preset's own vocabulary rows), exported by `picovlm.export.gguf` (fp32, and q8_0: the language model's
matrices in llama.cpp's 8-bit blocks, the mmproj fp32) and by `picovlm export` (ONNX fp32 and int8). Each backend runs as its own process pinned to core 0 (`taskset -c 0`), one thread, on
one 224 px picture, generating exactly 50 tokens (end token ignored):

    process   start -> exit of a one-shot CLI answer (load included), and its peak RSS (GNU time's %M)
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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_budget  # noqa: E402 - the same models, ONNX exports and ONNX child as the deployment budget

NEW_TOKENS = deploy_budget.NEW_TOKENS
QUESTION = deploy_budget.QUESTION
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def timed_process(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run pinned to core 0; return (result, wall seconds, peak RSS MB of that process alone).

    The peak comes from GNU time (%M), whose child starts from time's few MB: wait4 here would report this
    Python process's own peak, which Linux carries across exec. Output goes to files, not pipes: llama.cpp
    loses the end of its output at exit far more often into a pipe (picovlm.export.gguf.llama_mtmd_answer)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss, out, err = (Path(tmp) / name for name in ("rss", "out", "err"))
        started = time.perf_counter()
        with out.open("w") as stdout, err.open("w") as stderr:
            code = subprocess.run(
                ["/usr/bin/time", "-o", str(rss), "-f", "%M", "taskset", "-c", "0", *command],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=ENV,
            ).returncode
        wall = time.perf_counter() - started
        rss_kb = rss.read_text().strip().splitlines()[-1]
        result = subprocess.CompletedProcess(command, code, out.read_text(), err.read_text())
    return result, wall, int(rss_kb) / 1024 if rss_kb.isdigit() else float("nan")


def log_seconds(stderr: str, text: str) -> float | None:
    """When llama.cpp logged the first line holding `text`: its -lv 4 prefix is minutes.seconds.ms.us."""
    for line in stderr.splitlines():
        stamp = re.match(r"(\d+)\.(\d+)\.(\d+)\.(\d+) ", line)
        if stamp and text in line:
            minutes, seconds, ms, us = (int(g) for g in stamp.groups())
            return minutes * 60 + seconds + ms / 1e3 + us / 1e6
    return None


def run_llama_cpp(cli: str, gguf_dir: Path, image: Path, tries: int = 5) -> dict:
    """One-shot llama-mtmd-cli. answer = from the line it logs before reading the picture ("experimental
    CLI") to its first timing line, logged after the 50th token: picture in -> last token, load excluded.
    (Its own per-phase timings overlap one another, so they are not summed.)"""
    from picovlm.export.gguf import LLAMA_CPP_LAST_LOG, llama_mtmd_command

    command = llama_mtmd_command(cli, gguf_dir, image, QUESTION, NEW_TOKENS, threads=1)
    command += ["--ignore-eos", "-lv", "4"]  # 50 tokens whatever the weights; -lv 4: timestamps, timings
    for _ in range(tries):  # llama.cpp may drop its last log lines at exit (see llama_mtmd_answer): rerun
        result, wall, rss = timed_process(command)
        if result.returncode != 0:
            return {"error": result.stderr.strip().splitlines()[-3:]}
        start = log_seconds(result.stderr, "experimental CLI")
        end = log_seconds(result.stderr, "llama_perf_context_print")
        if LLAMA_CPP_LAST_LOG in result.stderr and start is not None and end is not None:
            encode = re.search(r"mtmd batch encoding done in (\d+) ms", result.stderr)
            return {
                "process_s": wall,
                "answer_s": end - start,
                "load_s": start,
                "peak_rss_mb": rss,
                "image_encode_ms": float(encode.group(1)) if encode else None,
            }
    return {"error": ["no timings printed"]}


def run_onnx(directory: Path) -> dict:
    command = [sys.executable, deploy_budget.__file__, "--child", "onnx", str(directory)]
    result, wall, rss = timed_process(command)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-3:]}
    child = json.loads(result.stdout.splitlines()[-1])
    return {
        "process_s": wall,
        "answer_s": child["e2e_s"],
        "warm_answer_s": child["warm_e2e_s"],
        "peak_rss_mb": rss,
        "load_s": child["load_s"],
    }


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
    parser.add_argument("--repeats", type=int, default=5, help="runs per backend; each figure's best is kept")
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
        size = preset(name).vit_img_size
        image = work / f"red-{size}.png"
        Image.new("RGB", (size, size), (200, 40, 40)).save(image)  # deploy_budget's picture
        runs = {}
        for outtype, suffix in (("f32", "gguf"), ("q8_0", "gguf-q8_0")):
            gguf_dir = work / f"{name}-{suffix}"
            if not (gguf_dir / "model.gguf").is_file():
                export_gguf(model_dir, gguf_dir, outtype=outtype)
            runs[f"llama.cpp gguf {outtype}"] = lambda g=gguf_dir, i=image: run_llama_cpp(cli, g, i)
        runs.update({label: (lambda d=d: run_onnx(d)) for label, d in exports.items()})
        for label, run in runs.items():
            results = [run() for _ in range(args.repeats)]
            ok = [r for r in results if "error" not in r]
            # best of the runs, each figure on its own: the machine is shared, the noise only adds
            best = (
                {k: min(r[k] for r in ok) for k in ok[0] if isinstance(ok[0][k], float)} if ok else results[0]
            )
            rows.append({"model": name, "backend": label, **best})
            print(json.dumps(rows[-1]), flush=True)

    print("\n| model | backend | peak RSS | one-shot process (load + answer) | 50-token answer, loaded |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['backend']} | error: {r['error']} | | |")
            continue
        print(
            f"| {r['model']} | {r['backend']} | {r['peak_rss_mb']:.0f} MB | {r['process_s'] * 1000:.0f} ms "
            f"| {r['answer_s'] * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
