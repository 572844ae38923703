"""The deployment budget through HTTP: `picovlm serve` on one pinned core under a 2 GiB limit.

bench/deploy_budget.py measures the runtime library in a child process; this script measures what a
user deploys: the server process (`taskset -c 0 prlimit --as=2GiB python -m picovlm serve ...`),
spoken to over real HTTP from this process. The model is a trained picovlm folder (`--model`, e.g.
the `model/` of `picovlm demo` or of a `picovlm train` run: random weights would answer with an
end token at once), exported once to fp32 and int8 ONNX into --work and reused; the images are the
first rows of `--data`'s test split (else plain coloured squares).

    ready       process start -> GET /health answers (imports, loading the ONNX sessions)
    answer      POST /v1/answer (multipart PNG, 50 new tokens at most), client-side wall time
    TTFT        the same request with stream=true: request sent -> first text event
    tokens/s    text events after the first / time from the first to the last
    busy        8 requests at once: the server computes up to its max_concurrent (2), queues the rest
                and answers 429 only past its queue's size or wait limit (counts of 200 and 429)
    RSS         the server's resident memory when ready and its high-water mark at the end (VmHWM)
    torch       whether the server process has libtorch mapped (it must not: the runtime is torch-free)

    python bench/serve_budget.py --model runs/demo/model --data data/demo [--requests 20]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from deploy_budget import LIMIT_BYTES, NEW_TOKENS, QUESTION  # noqa: E402

IMAGES: list[bytes] = []  # PNG bytes the requests cycle through
BURST = 8  # requests sent at once to see the server refuse what it cannot compute now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def png_bytes(seed: int) -> bytes:
    if IMAGES:
        return IMAGES[seed % len(IMAGES)]
    image = Image.new("RGB", (224, 224), (40 + 20 * seed % 200, 200, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_images(data_dir: str, n: int) -> list[bytes]:
    from picovlm.data.cauldron import load_cauldron

    rows = load_cauldron(data_dir, split="test", max_rows=n)
    out = []
    for row in rows:
        buffer = io.BytesIO()
        row["images"][0].save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def exports_of(model_dir: Path, work: Path) -> dict[str, Path]:
    """fp32 and int8 ONNX exports of a picovlm model folder, made once and reused."""
    from picovlm.export.onnx import export_model

    exports = {
        "onnx fp32": work / f"{model_dir.parent.name}-onnx",
        "onnx int8": work / f"{model_dir.parent.name}-int8",
    }
    for label, directory in exports.items():
        if not (directory / "manifest.json").is_file():
            export_model(model_dir, directory, quantize="int8" if "int8" in label else None)
    return exports


def start_server(export_dir: Path, port: int) -> tuple[subprocess.Popen, float]:
    command = ["taskset", "-c", "0", "prlimit", f"--as={LIMIT_BYTES}", sys.executable, "-m", "picovlm",
               "serve", "--model", str(export_dir), "--port", str(port), "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while time.perf_counter() - started < 120:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server, time.perf_counter() - started
        except httpx.TransportError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("server not ready after 120 s")


def post_answer(url: str, seed: int, stream: bool = False) -> httpx.Response:
    files = {"image": ("x.png", png_bytes(seed), "image/png")}
    data = {"question": QUESTION, "max_new_tokens": str(NEW_TOKENS), "stream": "true" if stream else "false"}
    return httpx.post(f"{url}/v1/answer", files=files, data=data, timeout=120)


def streamed(url: str, seed: int) -> tuple[float, float, int]:
    """(seconds to the first text event, seconds from the first to the last, text events)."""
    files = {"image": ("x.png", png_bytes(seed), "image/png")}
    data = {"question": QUESTION, "max_new_tokens": str(NEW_TOKENS), "stream": "true"}
    sent = time.perf_counter()
    stamps = []
    with httpx.stream("POST", f"{url}/v1/answer", files=files, data=data, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and "text" in json.loads(line[6:]):
                stamps.append(time.perf_counter())
    return stamps[0] - sent, stamps[-1] - stamps[0], len(stamps)


def measure(export_dir: Path, requests: int) -> dict:
    port = free_port()
    server, ready_s = start_server(export_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        idle_mb = proc_status_mb(server.pid, "VmRSS")
        torch_mapped = "libtorch" in Path(f"/proc/{server.pid}/maps").read_text()
        post_answer(url, 0)  # warm-up: the first request pays one-off allocations
        latencies = []
        for k in range(requests):
            started = time.perf_counter()
            response = post_answer(url, k)
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
        streams = [streamed(url, k) for k in range(max(3, requests // 4))]
        with ThreadPoolExecutor(BURST) as pool:  # more at once than the server's slots
            codes = sorted(f.status_code for f in pool.map(lambda k: post_answer(url, k), range(BURST)))
        return {
            "ready_s": ready_s,
            "answer_ms_p50": 1000 * statistics.median(latencies),
            "answer_ms_p95": 1000 * sorted(latencies)[int(0.95 * (len(latencies) - 1))],
            "ttft_ms": 1000 * statistics.median(s[0] for s in streams),
            "tokens_per_s": statistics.median((s[2] - 1) / s[1] for s in streams if s[1] > 0),
            "tokens": statistics.median(s[2] for s in streams),
            "busy_codes": codes,
            "idle_rss_mb": idle_mb,
            "peak_rss_mb": proc_status_mb(server.pid, "VmHWM"),
            "torch_mapped": torch_mapped,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", required=True, help="trained picovlm model folder(s)")
    parser.add_argument("--data", help="dataset whose test images the requests send")
    parser.add_argument("--requests", type=int, default=20, help="sequential answers timed per export")
    parser.add_argument("--work", default="/tmp/picovlm-serve-budget", help="exports (reused)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    print(f"server pinned to core 0 (taskset), address space limit {LIMIT_BYTES / 1024**3:.0f} GiB (prlimit), "
          f"{NEW_TOKENS} new tokens at most, client in this process over HTTP on 127.0.0.1")  # fmt: skip
    header = (f"{'export':28s} {'ready s':>7s} {'answer ms p50/p95':>18s} {'TTFT ms':>8s} {'tok/s':>6s} "
              f"{'tokens':>6s} {'busy (8 at once)':>17s} {'RSS ready/peak MB':>18s} {'torch':>6s}")  # fmt: skip
    print(header)
    if args.data:
        IMAGES.extend(load_images(args.data, args.requests))
    results = {}
    for model_dir in map(Path, args.model):
        name = model_dir.parent.name
        for label, directory in exports_of(model_dir, Path(args.work)).items():
            r = measure(directory, args.requests)
            results[f"{name} {label}"] = r
            busy = " ".join(f"{r['busy_codes'].count(c)}x{c}" for c in sorted(set(r["busy_codes"])))
            print(f"{name + ' ' + label:28s} {r['ready_s']:7.2f} {r['answer_ms_p50']:8.0f} / {r['answer_ms_p95']:<7.0f} "
                  f"{r['ttft_ms']:8.0f} {r['tokens_per_s']:6.0f} {r['tokens']:6.0f} {busy:>17s} "
                  f"{r['idle_rss_mb']:8.0f} / {r['peak_rss_mb']:<7.0f} {'yes' if r['torch_mapped'] else 'no':>6s}",
                  flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
