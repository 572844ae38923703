"""`picovlm generate` (answer image files), `picovlm eval` (metrics, verdict and reports on a split) and
`picovlm choose-generation` (how a model answers, chosen on validation rows)."""

from __future__ import annotations

import argparse
import json

from picovlm.commands.progress import ProgressBar
from picovlm.config import DEFAULT_QUESTION
from picovlm.generation import add_generation_arguments, generation_flags, generation_from_args


def add_answering_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags (picovlm.generation, shared with serve and export) and where answers run."""
    add_generation_arguments(parser)
    add_running_arguments(parser, batch_size=True)


def add_running_arguments(parser: argparse.ArgumentParser, batch_size: bool) -> None:
    """--device and --threads (and --batch-size): where a torch model answers."""
    group = parser.add_argument_group("running")
    if batch_size:
        group.add_argument("--batch-size", type=int, default=16, help="images answered at once (default 16)")
    group.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    group.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="answer a question about one or more images",
        description="Answer a question about each image with a trained model. One image: the answer streams "
        "to the terminal token by token. Several images: answered in batches, one 'path<TAB>answer' line each.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="model folder written by `picovlm train` (or save_pretrained), or a folder from `picovlm export` "
        "(answered by the torch-free runtime)",
    )
    p.add_argument("--image", required=True, nargs="+", metavar="PATH", help="one or more image files")
    p.add_argument(
        "--question", default=DEFAULT_QUESTION, help=f"the question (default: {DEFAULT_QUESTION!r})"
    )
    p.add_argument("--json", action="store_true", help="print one JSON list of {image, answer} instead")
    add_answering_arguments(p)
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser(
        "eval",
        help="metrics, collapse verdict and HTML report for one or more models on a dataset split",
        description="Evaluate models on a split: loss and perplexity; generated answers scored by exact match, "
        "token F1, ROUGE-L, BLEU, chrF, length, multiple-choice and field accuracy; collapse signals (distinct "
        "answers per image, most repeated answers, copies of training answers, train-test loss gap); and "
        "image reliance (loss with true vs shuffled vs blank images, answers that change with the image). "
        "Writes metrics.json, predictions.jsonl, report.md and a self-contained report.html to --out, and "
        "prints each model's verdict in plain words. An exported folder (picovlm export, fp32 or int8) is "
        "answered and scored through the torch-free runtime that `picovlm serve` runs, with the same "
        "metrics, so a deployed model can be compared with the torch model it came from (there --threads sets "
        "onnxruntime's threads, default 1, and --device does not apply).",
    )
    p.add_argument(
        "--model",
        required=True,
        nargs="+",
        metavar="DIR",
        help="model folder(s) from `picovlm train`, or exported folders from `picovlm export` (fp32 or int8, "
        "answered by the torch-free runtime); several = side by side",
    )
    p.add_argument(
        "--data", required=True, help="dataset folder (e.g. from `picovlm demo` or `picovlm data import`)"
    )
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument(
        "--train-split",
        default="train",
        help="split holding the training answers, for the copy rate, train loss and baseline (default: train; "
        "'none' to skip)",
    )
    p.add_argument(
        "--baseline", choices=["nearest"], default=None, help="also score a nearest-training-image lookup"
    )
    p.add_argument("--max-items", type=int, default=None, help="evaluate only the first N rows of the split")
    p.add_argument(
        "--swap-items", type=int, default=64, help="rows re-answered with a swapped image (default 64)"
    )
    p.add_argument(
        "--out",
        help="folder for metrics.json, predictions.jsonl, report.md, report.html (default: RUN/eval-SPLIT "
        "when every --model is a folder of one `picovlm train` run, e.g. RUN/model and RUN/best)",
    )
    p.add_argument("--title", default="picovlm evaluation", help="title of the report")
    add_answering_arguments(p)
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "choose-generation",
        help="choose how a retrieving model answers (greedy, the neighbours' light vote or vote, the "
        "weighed vote) on validation rows and save it as its generation.json",
        description="Answer the first --items rows of a split greedily, with the neighbours' light vote "
        "(copy_bias 4) and vote (copy_bias 8) and with the vote weighed by the model's fact probes (copy_bias 16, copy_fact_weight "
        "0.5), score each by token F1 + field accuracy, and save the simplest within one standard error of the "
        "best (counted over the rows' objects, their `group`) as the model folder's generation.json: what "
        "generate, eval, export and serve then start from. `picovlm train` does this "
        "itself after training (train.choose_generation_items); this verb is for folders trained before, or "
        "other rows. Choose on a validation split, never on the test split you report.",
    )
    p.add_argument(
        "--model", required=True, help="model folder written by `picovlm train` (or save_pretrained)"
    )
    p.add_argument("--data", required=True, help="dataset folder with the split to choose on")
    p.add_argument("--split", default="validation", help="split to choose on (default: validation)")
    p.add_argument("--items", type=int, default=256, help="rows answered per candidate (default 256)")
    p.add_argument("--dry-run", action="store_true", help="print the table, leave generation.json as it is")
    add_running_arguments(p, batch_size=False)
    p.set_defaults(func=run_choose_generation)


def _setup_torch(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def run_generate(args: argparse.Namespace) -> int:
    from picovlm.eval.exported import is_exported_dir

    if is_exported_dir(args.model):
        answer_many, stream_one = _exported_answering(args)
    else:
        answer_many, stream_one = _torch_answering(args)
    if len(args.image) == 1 and not args.json:
        stream_one(args.image[0], lambda piece: print(piece, end="", flush=True))
        print()
        return 0
    answers = answer_many(args.image)
    if args.json:
        pairs = [{"image": path, "answer": answer} for path, answer in zip(args.image, answers)]
        print(json.dumps(pairs, ensure_ascii=False))
    else:
        for path, answer in zip(args.image, answers):
            print(f"{path}\t{answer}")
    return 0


def _torch_answering(args: argparse.Namespace):
    """(answer many image files, stream one) with a torch model folder or Hub id."""
    from picovlm.eval.generate import answer_files, stream_answer
    from picovlm.model.vlm import VisionLanguageModel

    _setup_torch(args)
    model = VisionLanguageModel.from_pretrained(args.model, device=args.device)
    generation = generation_from_args(args, base=model.generation)  # the flags over the model's own

    def answer_many(paths):
        return answer_files(model, paths, args.question, batch_size=args.batch_size, generation=generation)

    def stream_one(path, on_text):
        stream_answer(model, path, args.question, on_text=on_text, generation=generation)

    return answer_many, stream_one


def _exported_answering(args: argparse.Namespace):
    """(answer many image files, stream one) with a folder from `picovlm export`: the torch-free runtime,
    with the folder's own generation config under the flags given, as `picovlm serve` answers."""
    from picovlm.eval.generate import load_image
    from picovlm.runtime import Runtime

    runtime = Runtime.load(args.model, threads=args.threads or 1)
    generation = generation_from_args(args, base=runtime.generation)

    def answer_many(paths):
        return [runtime.answer(load_image(path), args.question, generation) for path in paths]

    def stream_one(path, on_text):
        for piece in runtime.stream(load_image(path), args.question, generation):
            on_text(piece)

    return answer_many, stream_one


def run_eval(args: argparse.Namespace) -> int:
    from picovlm.eval.evaluate import evaluate_many
    from picovlm.eval.report import default_report_dir, write_report

    out = args.out or default_report_dir(args.model, args.split)  # decided before minutes of answering
    _setup_torch(args)
    results = evaluate_many(
        args.model,
        args.data,
        progress_for=lambda label: ProgressBar(label, unit="item", leave=False),
        split=args.split,
        train_split=None if args.train_split.lower() == "none" else args.train_split,
        max_items=args.max_items,
        batch_size=args.batch_size,
        baseline=args.baseline,
        swap_items=args.swap_items,
        device=args.device,
        threads=args.threads,
        **generation_flags(args),  # over an exported folder's own config, as `picovlm serve` applies them
    )
    paths = write_report(results, out, title=args.title)
    for result in results:
        m = result["metrics"]
        print(f"{result['name']}: {m['verdict']}")
        print(
            f"  loss {m['loss']:.3f} (image gap shuffled {m['image_gap_shuffled']:+.3f} ± "
            f"{m['image_gap_shuffled_error']:.3f}, {m['image_gap_shuffled_calibrated']:+.3f} ± "
            f"{m['image_gap_shuffled_calibrated_error']:.3f} at temperature {m['calibrated_temperature']:g}; "
            f"± over {m['objects']} objects) · token F1 {m['token_f1']:.3f} · ROUGE-L {m['rouge_l']:.3f} · "
            f"BLEU {m['bleu']:.1f} · chrF {m['chrf']:.1f}"
            + (f" · field acc. {m['field_accuracy']:.3f}" if "field_accuracy" in m else "")
        )
        if m.get("leakage_shared_image_rows") or m.get("leakage_shared_answer_rows"):
            print(
                f"  overlap with {args.train_split!r}: {m['leakage_shared_image_rows']} of {m['leakage_compared_rows']} rows "
                f"share a picture ({m['leakage_shared_image_share']:.1%}), {m['leakage_shared_answer_rows']} "
                f"an identical answer ({m['leakage_shared_answer_share']:.1%})"
            )
        for name, baseline in result["baselines"].items():
            fields = baseline["metrics"].get("field_accuracy")
            facts = f" · field acc. {fields:.3f}" if fields is not None else ""
            print(
                f"  baseline {name}: token F1 {baseline['metrics']['token_f1']:.3f}{facts}{_lead(baseline, m)}"
            )
    print(f"report: {paths['report.html']}  metrics: {paths['metrics.json']}")
    return 0


def _lead(baseline: dict, metrics: dict) -> str:
    """The end of a lookup's printed line: the model's lead over it, ± its error over the test objects."""
    margin = baseline.get("margin")
    if not margin:
        return ""
    lead = (
        f"token F1 {margin['baseline_margin_token_f1']:+.3f} ± {margin['baseline_margin_token_f1_error']:.3f}"
    )
    if "baseline_margin_field_accuracy" in margin:
        lead += (f", facts {margin['baseline_margin_field_accuracy']:+.3f} ± "
                 f"{margin['baseline_margin_field_accuracy_error']:.3f}")  # fmt: skip
    return f" · the model's lead: {lead} (over {metrics['objects']} objects)"


def run_choose_generation(args: argparse.Namespace) -> int:
    from picovlm.eval.choose import choose_generation_for

    _setup_torch(args)
    with ProgressBar("choosing", unit="candidate", leave=False) as progress:
        choice = choose_generation_for(
            args.model, args.data, args.split, args.items, write=not args.dry_run, device=args.device,
            progress=progress,
        )  # fmt: skip
    if not choice.candidates:
        print(f"{args.model} does not retrieve: greedy is its only way to answer; nothing to choose.")
        return 0
    print(f"{args.model}: {choice.name}, on {choice.rows} rows of {args.split!r}")
    print(choice.table())
    where = "left as it was (--dry-run)" if args.dry_run else "saved"
    print(f"generation.json {where}: {json.dumps(choice.generation.to_dict())}")
    return 0
