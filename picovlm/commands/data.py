"""`picovlm data <import|check|stats|facts|split|mix|demo>`: datasets in the_cauldron's schema."""

from __future__ import annotations

import argparse
import json

from picovlm.commands.progress import ProgressBar
from picovlm.config import DEFAULT_QUESTION
from picovlm.errors import DataError


def _load_tokenizer(name: str | None):
    if not name:
        return None
    from picovlm.data.tokenizer import load_tokenizer

    return load_tokenizer(name)


def cmd_import(args: argparse.Namespace) -> int:
    from picovlm.data.cauldron import save_cauldron
    from picovlm.data.importers import import_dataset, import_folder

    if args.source_dataset:
        rows = import_dataset(
            args.source_dataset, args.out, subset=args.subset, split=args.split, streaming=args.streaming,
            max_rows=args.max_rows, source_name=args.source, overwrite=args.overwrite, parquet=args.parquet,
            num_shards=args.num_shards,
        )  # fmt: skip
        print(f"wrote {rows} rows to {args.out}")
        return 0
    if not (args.images and args.table):
        raise DataError("picovlm data import: give --images DIR and --table FILE, or --from DATASET")
    with ProgressBar("importing", unit="row") as progress:
        dataset, report = import_folder(
            args.images, args.table, default_question=args.question, source=args.source,
            image_column=args.image_column, question_column=args.question_column,
            answer_column=args.answer_column, group_column=args.group_column, progress=progress,
            fact_columns=None if args.fact_columns is None else [c for c in args.fact_columns.split(",") if c],
        )  # fmt: skip
    save_cauldron(
        dataset, args.out, overwrite=args.overwrite, parquet=args.parquet, num_shards=args.num_shards
    )
    print(
        f"read {report.rows_read} rows, wrote {report.rows_written} to {args.out}, skipped {len(report.skipped)}"
    )
    for skipped in report.skipped[:50]:
        print(f"  skipped row {skipped['row']}: {skipped['reason']}")
    if len(report.skipped) > 50:
        print(f"  ... and {len(report.skipped) - 50} more")
    return 0


def _chosen_splits(args: argparse.Namespace, **load) -> dict:
    """{split: Dataset} to report on: the --split asked for, else every split of the folder (a folder of
    several splits is reported split by split, never as one pile of rows)."""
    from pathlib import Path

    from picovlm.data.cauldron import load_cauldron, split_names

    if args.split or not Path(args.data).exists():
        return {args.split or "train": load_cauldron(args.data, split=args.split, **load)}
    names = split_names(args.data)
    if len(names) <= 1:  # none: load_cauldron says what a dataset folder holds
        return {names[0] if names else "train": load_cauldron(args.data, **load)}
    return {name: load_cauldron(args.data, split=name, **load) for name in names}


def cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from picovlm.data.check import check_dataset, fix_dataset
    from picovlm.utils import atomic_path

    splits = _chosen_splits(args, allow_non_string_text=True)
    several = len(splits) > 1
    if args.fix and several and Path(args.fix).exists() and not args.overwrite:
        raise DataError(f"{args.fix} already exists: choose another --fix folder or pass --overwrite")
    reports = {}
    for name, dataset in splits.items():
        with ProgressBar(f"checking {name}" if several else "checking", unit="row") as progress:
            reports[name] = check_dataset(
                dataset, source=f"{args.data} (split {name!r})" if several else str(args.data),
                max_answer_tokens=args.max_answer_tokens, tokenizer=_load_tokenizer(args.tokenizer),
                max_pixels=args.max_pixels, near_duplicate_threshold=args.near_duplicate_threshold,
                num_proc=args.num_proc, progress=progress,
            )  # fmt: skip
    for name, report in reports.items():
        indent = "  " if several else ""
        heading = f"split {name!r}: " if several else ""
        print(f"{heading}{report.rows} rows, {report.images} images")
        for kind, entries in report.issues.items():
            rows = ", ".join(str(e["row"]) for e in entries[:10]) + (" ..." if len(entries) > 10 else "")
            print(f"{indent}  {kind:24s} {len(entries):7d}  {rows}")
    overlaps = _print_leakage(splits) if several else []
    if args.report:
        for name, report in reports.items():
            for path in report.write(Path(args.report) / name if several else args.report):
                print(f"report: {path}")
        if overlaps:
            from dataclasses import asdict

            from picovlm.utils import atomic_write_text

            leakage = [{**asdict(o), "leaks": o.leaks} for o in overlaps]
            atomic_write_text(Path(args.report) / "leakage.json", json.dumps(leakage, indent=2))
            print(f"report: {Path(args.report) / 'leakage.json'}")
    if args.fix and not several:
        name = next(iter(splits))
        _print_fixed(args.fix, fix_dataset(splits[name], reports[name], args.fix, overwrite=args.overwrite))
    elif args.fix:  # one cleaned folder per split: the layout reads back as the same splits
        with atomic_path(args.fix) as out:
            summaries = {name: fix_dataset(splits[name], reports[name], out / name) for name in splits}
        for name, summary in summaries.items():
            _print_fixed(f"{args.fix}/{name}", summary)
    return 0


def _print_fixed(out, summary: dict) -> None:
    print(f"fixed copy: {out} ({summary['rows_out']} of {summary['rows_in']} rows kept, "
          f"{summary['converted_rows']} rows with images converted to RGB); report inside it")  # fmt: skip


def _print_leakage(splits: dict) -> list:
    """Print how much of every other split also sits in the training split; return the overlaps."""
    from picovlm.data.cauldron import match_split
    from picovlm.data.leakage import LEAKAGE_THRESHOLD, splits_overlap

    try:
        train_split = match_split("train", splits, "")
    except DataError:
        return []  # no training split to leak into
    overlaps = splits_overlap(splits, train_split)
    print(f"leakage: rows of each split whose picture or answer is also in {train_split!r}")
    for overlap in overlaps:
        verdict = (
            f"  LEAK: above {LEAKAGE_THRESHOLD:.0%}, `picovlm train` refuses it; re-split with `picovlm data split`"
            if overlap.leaks
            else ""
        )
        print(f"  {overlap.sentence()}{verdict}")
    return overlaps


def cmd_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from picovlm.data.stats import dataset_stats, format_stats, plot_histograms

    splits = _chosen_splits(args)
    tokenizer = _load_tokenizer(args.tokenizer)
    stats = {name: dataset_stats(dataset, tokenizer=tokenizer) for name, dataset in splits.items()}
    several = len(stats) > 1
    for name, split_stats in stats.items():
        if several:
            print(f"== split {name!r} ==")
        print(format_stats(split_stats))
    if args.json:
        from picovlm.utils import atomic_write_text

        # one split: its statistics; several: {"splits": {name: statistics}}
        document = {"splits": stats} if several else next(iter(stats.values()))
        atomic_write_text(args.json, json.dumps(document, indent=2))
        print(f"json: {args.json}")
    if args.plot:
        for name, split_stats in stats.items():
            plot = Path(args.plot)
            path = plot.with_name(f"{plot.stem}-{name}{plot.suffix}") if several else plot
            print(f"histogram: {plot_histograms(split_stats, path)}")
    return 0


def cmd_facts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from picovlm.data.cauldron import load_cauldron, split_names
    from picovlm.eval.fact_visibility import fact_visibility

    held_split = args.split
    if held_split is None and not Path(args.data).exists():
        held_split = "validation"  # a Hub id (loading says what is wrong with any other source)
    if held_split is None:  # validation where there is one: the test split stays for the final figures
        names = split_names(args.data)
        held_split = next((name for name in ("validation", "val", "test") if name in names), None)
        if held_split is None or args.train_split not in names:
            raise DataError(
                f"{args.data} has the splits {names}: scoring which facts the pictures show needs a "
                f"training split ({args.train_split!r}) and a held-out one (validation or test) whose "
                "objects training never saw. Make them with `picovlm data split`, or name them with "
                "--train-split and --split"
            )
    train = load_cauldron(args.data, split=args.train_split)
    held = load_cauldron(args.data, split=held_split)
    with ProgressBar("reading the facts", unit="step") as progress:
        result = fact_visibility(train, held, held_split, progress=progress)
    print(result.markdown())
    if result.index:
        print(f"\n{result.index}")
    if args.json:
        from picovlm.utils import atomic_write_text

        atomic_write_text(args.json, result.to_json())
        print(f"json: {args.json}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from picovlm.data.cauldron import load_cauldron, save_cauldron
    from picovlm.data.split import split_dataset

    dataset = load_cauldron(args.data, split=args.split)
    splits = split_dataset(
        dataset, seed=args.seed, fractions=tuple(args.fractions), stratify_by_source=args.stratify_by_source,
        group_by_image=not args.no_image_grouping,
    )  # fmt: skip
    save_cauldron(splits, args.out, overwrite=args.overwrite)
    print(", ".join(f"{name}: {len(split)} rows" for name, split in splits.items()) + f" -> {args.out}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    from picovlm.data.cauldron import save_cauldron
    from picovlm.data.mix import MixInput, mix_datasets

    mixed = mix_datasets([MixInput.parse(spec) for spec in args.inputs], seed=args.seed, total=args.total,
                         shuffle=not args.no_shuffle)  # fmt: skip
    save_cauldron(mixed, args.out, overwrite=args.overwrite, parquet=args.parquet, num_shards=args.num_shards)
    print(f"wrote {len(mixed)} rows to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from picovlm.data.scenes import write_demo

    out = write_demo(args.out, n=args.n, seed=args.seed, image_size=args.image_size, split=not args.no_split,
                     num_proc=args.num_proc, overwrite=args.overwrite)  # fmt: skip
    print(f"wrote {args.n} demo scenes to {out}" + ("" if args.no_split else " (train/validation/test)"))
    return 0


def add_parser(subparsers) -> None:
    data = subparsers.add_parser(
        "data", help="import, check, describe, split and mix datasets in the_cauldron's schema",
        description="Datasets in the_cauldron's schema: images (list of Image) + texts (list of "
        "{user, assistant, source}) + an optional `group` column. See docs/data.md.",
    )  # fmt: skip
    verbs = data.add_subparsers(dest="data_verb", metavar="<sub>")
    data.set_defaults(func=lambda _args: data.print_help() or 2)
    for add_verb in (_add_import, _add_check, _add_stats, _add_facts, _add_split, _add_mix, _add_demo):
        add_verb(verbs)


def _input(parser: argparse.ArgumentParser, split_help: str) -> None:
    parser.add_argument("data", help="dataset folder or parquet path")
    parser.add_argument("--split", help=split_help)


def _output(parser: argparse.ArgumentParser, parquet: bool = False) -> None:
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    if parquet:
        parser.add_argument(
            "--parquet", action="store_true", help="write parquet shards instead of a save_to_disk folder"
        )
        parser.add_argument("--num-shards", type=int, default=1, help="number of output shards (default 1)")


def _add_import(verbs) -> None:
    p = verbs.add_parser(
        "import", help="images folder + CSV/JSONL, or a Hub/parquet/disk dataset -> cauldron dataset",
        description="Import into the cauldron schema. Either --images DIR --table FILE (CSV/TSV/JSONL; "
        "rows with a missing image or empty answer are skipped and reported), or --from SOURCE "
        "(Hub id with --subset, a parquet file/folder, or a save_to_disk folder).",
    )  # fmt: skip
    p.add_argument("--images", help="folder the table's image paths are relative to")
    p.add_argument("--table", help="CSV, TSV or JSONL file, one row per item")
    p.add_argument("--question", default=DEFAULT_QUESTION, help="question for rows without one")
    p.add_argument(
        "--source", help="`source` written into each turn (default: import:<table name> or the id)"
    )
    p.add_argument(
        "--image-column", default="image", help="column with image path(s); ';'-separated or a JSON list"
    )
    p.add_argument("--question-column", default="question", help="column with the question (optional)")
    p.add_argument("--answer-column", default="answer", help="column with the answer")
    p.add_argument("--group-column", default="group", help="column with a group id (optional)")
    p.add_argument(
        "--fact-columns",
        help="comma-separated table columns kept as the row's facts in `fields` (default: every other "
        "column; '' for none): field accuracy and the verdict then score them",
    )
    p.add_argument("--from", dest="source_dataset", help="Hub id, parquet file/folder or save_to_disk folder")
    p.add_argument("--subset", help="Hub subset (config), e.g. localized_narratives")
    p.add_argument("--split", help="split to read (default: train)")
    p.add_argument("--streaming", action="store_true", help="stream from the Hub instead of downloading all")
    p.add_argument("--max-rows", type=int, help="keep only the first N rows")
    _output(p, parquet=True)
    p.set_defaults(func=cmd_import)


def _add_check(verbs) -> None:
    p = verbs.add_parser(
        "check", help="find bad images, bad texts, over-long answers and duplicates; --fix writes a cleaned copy",
        description="Read every row and report problems by kind with row ids. The input is never modified.",
    )  # fmt: skip
    only = "check only this split (default: every split of the folder, each on its own, and the held-out"
    _input(p, f"{only} splits' overlap with train)")
    p.add_argument(
        "--max-answer-tokens", type=int, help="flag answers longer than this (the model's lm_max_length)"
    )
    p.add_argument(
        "--tokenizer", help="tokenizer folder/file/Hub id for token counts (default: whitespace words)"
    )
    p.add_argument("--max-pixels", type=int, default=89_478_485, help="larger images are decompression bombs")
    p.add_argument(
        "--near-duplicate-threshold", type=float, default=0.8, help="word 3-gram Jaccard (default 0.8)"
    )
    p.add_argument("--num-proc", type=int, default=1, help="processes for image decoding (default 1)")
    p.add_argument(
        "--report",
        help="folder for check-report.json and check-report.md (several splits: one folder "
        "each, and leakage.json)",
    )
    p.add_argument(
        "--fix",
        metavar="OUT",
        help="write a cleaned copy (and the report) to this folder (several splits: OUT/<split>/ each)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the --fix folder if it exists")
    p.set_defaults(func=cmd_check)


def _add_stats(verbs) -> None:
    p = verbs.add_parser("stats", help="rows, images, answer lengths, vocabulary, sources, redundancy",
                         description="Describe a dataset; optionally save JSON and a histogram PNG.")  # fmt: skip
    _input(p, "describe only this split (default: every split of the folder, each on its own)")
    p.add_argument("--tokenizer", help="tokenizer for answer lengths in tokens")
    p.add_argument(
        "--json", help='write the statistics to this JSON file (several splits: {"splits": {name: ...}})'
    )
    p.add_argument(
        "--plot", help="write the answer-length histogram to this PNG file (several splits: FILE-<split>.png)"
    )
    p.set_defaults(func=cmd_stats)


def _add_facts(verbs) -> None:
    p = verbs.add_parser(
        "facts", help="which facts in `fields` the pictures show: probes and the nearest picture vs a guess",
        description="For each fact field of the rows' `fields`, fit the readers a retrieving run fits (a "
        "probe over the picture vectors, the nearest training picture) on the training split and score "
        "them on a held-out split against always guessing the most common value. A field the pictures do "
        "not show is one no model trained on them will read. See docs/data.md.",
    )  # fmt: skip
    p.add_argument("data", help="dataset folder with a training split and a held-out split")
    p.add_argument("--split", help="held-out split to score (default: validation, else test)")
    p.add_argument("--train-split", default="train", help="split the readers learn from (default: train)")
    p.add_argument("--json", help="also write the table as JSON to this file")
    p.set_defaults(func=cmd_facts)


def _add_split(verbs) -> None:
    p = verbs.add_parser(
        "split", help="train/validation/test without leakage (grouped by image hash and group id)",
        description="Rows sharing an image (content hash) or a `group` id always land in the same split.",
    )  # fmt: skip
    _input(p, "split to read when the folder holds several")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"),
                   help="split sizes, summing to 1 (default 0.8 0.1 0.1)")  # fmt: skip
    p.add_argument("--stratify-by-source", action="store_true", help="split each source separately")
    p.add_argument("--no-image-grouping", action="store_true", help="group by `group` id only")
    _output(p)
    p.set_defaults(func=cmd_split)


def _add_mix(verbs) -> None:
    p = verbs.add_parser(
        "mix", help="combine datasets with caps or ratios, keeping provenance",
        description="Each input is PATH[:cap=N][:ratio=R][:name=NAME][:split=S]. Ratios are shares of the "
        "mix (with --total, or the largest mix without repeats); caps limit rows per input.",
    )  # fmt: skip
    p.add_argument("inputs", nargs="+", help="PATH[:cap=N][:ratio=R][:name=NAME][:split=S]")
    p.add_argument("--total", type=int, help="rows in the mix when ratios are given")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling and shuffling")
    p.add_argument("--no-shuffle", action="store_true", help="keep inputs in order instead of shuffling")
    _output(p, parquet=True)
    p.set_defaults(func=cmd_mix)


def _add_demo(verbs) -> None:
    p = verbs.add_parser(
        "demo", help="generate the built-in demo set of drawn shapes (the default training data)",
        description="Deterministic scenes of 1-3 coloured shapes with a 10-50 word factual answer each.",
    )  # fmt: skip
    p.add_argument("--n", type=int, default=3000, help="number of scenes (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument(
        "--no-split", action="store_true", help="write one dataset instead of train/validation/test"
    )
    p.add_argument("--num-proc", type=int, default=1, help="processes for drawing (default 1)")
    _output(p)
    p.set_defaults(func=cmd_demo)
