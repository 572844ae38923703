"""`picovlm export` and `picovlm serve`: ONNX export (+ int8) or a transformers folder, and the HTTP server
over the torch-free runtime."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from picovlm.commands.progress import ProgressBar
from picovlm.errors import PicovlmError
from picovlm.generation import add_generation_arguments, generation_flags


def add_parser(subparsers) -> None:
    _add_export(subparsers)
    _add_serve(subparsers)


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX for the torch-free runtime, or as a transformers (Idefics3) folder",
        description="Export a save_pretrained folder to ONNX: vision tower + projector, a decoder step with the "
        "KV cache as explicit inputs/outputs, the embedding matrix (.npy), tokenizer.json and manifest.json. "
        "Each graph is checked against the torch model (max abs difference, relative to the output scale "
        "above 1, printed; the export fails over the tolerance). --quantize int8 applies onnxruntime dynamic "
        "quantisation and answers N rows (--eval-items) of the model's own validation data with the fp32 and "
        "the int8 graphs: identical answers, token F1 and exact match of each against the references, and "
        "field accuracy where the rows have facts. The data is the run folder's train.data_dir (the model "
        "folder's parent holds config.yaml), or --data DIR; without either the export stops and says so. "
        "--format transformers writes instead a folder that transformers' AutoModelForImageTextToText and "
        "AutoProcessor load (Idefics3, SmolVLM's architecture), checked against picovlm when transformers is installed.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="folder written by save_pretrained (config.json, model.safetensors, tokenizer.json)",
    )
    p.add_argument("--out", required=True, help="output folder (written atomically; replaced if it exists)")
    p.add_argument(
        "--format",
        choices=["onnx", "transformers"],
        default="onnx",
        help="onnx (default): graphs for picovlm's runtime and server; transformers: an Idefics3 folder for "
        "transformers and what builds on it",
    )
    p.add_argument(
        "--quantize", choices=["int8"], help="int8 weights for every MatMul (dynamic quantisation)"
    )
    p.add_argument(
        "--eval-items",
        type=int,
        default=32,
        help="with --quantize: validation rows answered by fp32 and int8 (0 = skip; default 32)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="with --quantize: the dataset fp32 and int8 are compared on (default: train.data_dir in the "
        "run folder's config.yaml)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="with --quantize: the split compared on (default: the run's train.val_split, else validation)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="max difference allowed between fp32 graphs and torch, relative to the output scale above 1 "
        "(default 1e-3)",
    )
    add_generation_arguments(
        p,
        "How the exported model answers by default (kept in manifest.json; flags left out keep the model's own "
        "generation.json): the runtime, `picovlm serve` "
        "and `picovlm eval` of the folder use it unless told otherwise.",
    )
    p.set_defaults(func=run_export)


def _add_serve(subparsers) -> None:
    s = subparsers.add_parser(
        "serve",
        help="HTTP server: /v1/answer, OpenAI-style /v1/chat/completions, /health and a web page",
        description="Serve an exported folder (or a save_pretrained folder, exported on the fly into a cache "
        "folder) over HTTP with the torch-free runtime: POST /v1/answer, POST /v1/chat/completions (stream: "
        "true for server-sent events), GET /health, and a web page at /.",
    )
    s.add_argument(
        "--model",
        required=True,
        help="exported folder (manifest.json), or a save_pretrained folder to export first",
    )
    s.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument(
        "--threads", type=int, default=1, help="onnxruntime threads per request (default 1: one core)"
    )
    s.add_argument("--quantize", choices=["int8"], help="when exporting on the fly: quantise to int8")
    s.add_argument(
        "--cache-dir", default=None, help="where on-the-fly exports go (default ~/.cache/picovlm/exported)"
    )
    s.add_argument(
        "--max-request-bytes",
        type=int,
        default=10 * 1024 * 1024,
        help="largest request body (default 10 MiB)",
    )
    s.add_argument(
        "--max-image-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40M)"
    )
    s.add_argument(
        "--max-new-tokens-limit",
        type=int,
        default=256,
        help="largest max_new_tokens a request may ask (default 256; raised to --max-new-tokens if below)",
    )
    s.add_argument(
        "--max-concurrent",
        type=int,
        default=2,
        help="generations in flight; more wait in the queue (default 2)",
    )
    s.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests waiting for a free slot, first come first served; more get 429 at once (default 32)",
    )
    s.add_argument(
        "--max-wait-seconds",
        type=float,
        default=10.0,
        help="longest a queued request waits for a slot before it gets 429 (default 10)",
    )
    add_generation_arguments(
        s,
        "The server's answers, over the exported folder's own config (manifest.json); a request's "
        "fields override them.",
    )
    s.set_defaults(func=run_serve)


def run_export(args: argparse.Namespace) -> int:
    from picovlm.export.onnx import export_model
    from picovlm.export.quality import format_comparison

    if args.format == "transformers" and args.quantize:
        raise PicovlmError(
            "--quantize applies to --format onnx only; a transformers folder holds fp32 weights."
        )
    if (args.data or args.split) and not args.quantize:
        raise PicovlmError(
            "--data and --split choose the rows int8 is compared with fp32 on: add --quantize int8."
        )
    if args.format == "transformers":
        from picovlm.export.transformers import export_transformers

        with ProgressBar("exporting", unit="step") as progress:
            report = export_transformers(args.model, args.out, progress=progress)
        checked = report["checked"]
        if isinstance(checked, dict):
            print(f"checked with transformers {checked['transformers']}: same prompt ids, pixels max diff "
                  f"{checked['pixels_max_diff']:.3g}, logits max diff {checked['logits_max_diff']:.3g}, "
                  f"same greedy tokens {checked['same_greedy_tokens']}")  # fmt: skip
        else:
            print(checked)
        sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in report["file_sizes"].items() if v > 100_000)
        print(f"wrote {args.out} in {report['seconds']} s ({sizes}): load it with "
              f"AutoModelForImageTextToText / AutoProcessor.from_pretrained({args.out!r})")  # fmt: skip
        return 0

    with ProgressBar("exporting", unit="step") as progress:
        manifest = export_model(
            args.model, args.out, quantize=args.quantize, tolerance=args.tolerance,
            eval_items=args.eval_items if args.quantize else 0, eval_data=args.data, eval_split=args.split,
            progress=progress, **generation_flags(args),  # over the model's own generation.json
        )  # fmt: skip
    for name, diff in manifest["parity"]["fp32_vs_torch"].items():
        print(f"parity fp32 {name:16s} max diff {diff:.3g} (tolerance {args.tolerance:g})")
    quant = manifest.get("quantization")
    if quant:
        for name, diff in manifest["parity"]["int8_vs_torch"].items():
            print(f"parity int8 {name:16s} max diff {diff:.3g} (reported, not enforced)")
        if "eval" in quant:
            print(format_comparison(quant["eval"]))
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in manifest["file_sizes"].items())
    print(f"wrote {args.out} in {manifest['export_seconds']} s: {sizes}")
    return 0


def exported_dir_for(model_dir: Path, quantize: str | None, cache_dir: str | None) -> Path:
    """The cache folder for an on-the-fly export, keyed by the weights' path, size and time, the model's
    own generation.json (the manifest keeps it) and the options."""
    from picovlm.generation import GENERATION_FILE

    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    generation = model_dir / GENERATION_FILE
    answers = generation.read_text() if generation.is_file() else ""
    key = f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{quantize}|{answers}"
    root = (
        Path(cache_dir)
        if cache_dir
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "picovlm" / "exported"
    )
    return root / f"{model_dir.name}-{quantize or 'fp32'}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def resolve_served_dir(model: str, quantize: str | None, cache_dir: str | None) -> Path:
    """An exported folder as is; a save_pretrained folder exported first, in a child process so the
    server itself never imports torch (which alone costs ~230 MB)."""
    directory = Path(model)
    if (directory / "manifest.json").is_file():
        return directory
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise PicovlmError(f"{directory} is neither an exported folder (manifest.json) nor a save_pretrained folder "
                           f"(config.json + model.safetensors).")  # fmt: skip
    target = exported_dir_for(directory, quantize, cache_dir)
    if not (target / "manifest.json").is_file():
        print(f"exporting {directory} to {target} ...", file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "picovlm",
            "export",
            "--model",
            str(directory),
            "--out",
            str(target),
            "--eval-items",
            "0",
        ]
        if quantize:
            command += ["--quantize", quantize]
        if subprocess.run(command).returncode != 0:
            raise PicovlmError(f"exporting {directory} failed (see above).")
    return target


def run_serve(args: argparse.Namespace) -> int:
    from picovlm.runtime import Runtime
    from picovlm.serve.app import ServeLimits, serve

    # Built first, so a bad flag fails before the model loads.
    flags = generation_flags(args)
    limits = ServeLimits(
        max_request_bytes=args.max_request_bytes, max_image_pixels=args.max_image_pixels,
        max_new_tokens=args.max_new_tokens_limit, max_concurrent=args.max_concurrent,
        max_queue=args.max_queue, max_wait_seconds=args.max_wait_seconds,
    )  # fmt: skip
    directory = resolve_served_dir(args.model, args.quantize, args.cache_dir)
    runtime = Runtime.load(directory, threads=args.threads)
    generation = runtime.generation.replace(**flags)
    # The limit is at least the server's own answer length, so `--max-new-tokens 512` alone just works.
    limits = dataclasses.replace(limits, max_new_tokens=max(limits.max_new_tokens, generation.max_new_tokens))
    facts = {"serving": str(directory), "url": f"http://{args.host}:{args.port}/"}
    facts.update(quantization=runtime.quantization, generation=generation.to_dict())
    print(json.dumps(facts), flush=True)
    serve(runtime, args.host, args.port, limits, generation)
    return 0
