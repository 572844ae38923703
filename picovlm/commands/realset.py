"""`picovlm realset NAME --out DIR`: build a dataset of real images that are available offline."""

from __future__ import annotations

import argparse
import inspect
import time

# Options only some writers take: flag -> the writer's keyword.
_SET_OPTIONS = {"--mirror": "mirror", "--source-dir": "source_dir"}


def _takes(write, keyword: str) -> bool:
    parameters = inspect.signature(write).parameters.values()
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def default_n(write) -> str:
    """A writer's default --n as the help says it ("3000", or "all" where it takes every item)."""
    default = inspect.signature(write).parameters["n"].default
    return "all" if default is None else str(default)


def cmd_realset(args: argparse.Namespace) -> int:
    from picovlm.data.cauldron import load_cauldron_splits
    from picovlm.data.realsets import REAL_SETS
    from picovlm.errors import PicovlmError

    write, _ = REAL_SETS[args.name]
    options = {"seed": args.seed, "split": not args.no_split, "overwrite": args.overwrite}
    if args.n is not None:
        if args.n < 1:
            raise PicovlmError(f"--n must be at least 1, got {args.n}")
        options["n"] = args.n
    if args.image_size is not None:
        options["image_size"] = args.image_size
    for flag, keyword in _SET_OPTIONS.items():
        value = getattr(args, keyword)
        if value in (None, False):
            continue
        if not _takes(write, keyword):
            raise PicovlmError(f"{flag} does not apply to `picovlm realset {args.name}`: leave it out")
        options[keyword] = value
    start = time.perf_counter()
    out = write(args.out, **options)
    seconds = time.perf_counter() - start
    # count what was written, not what was asked for: a set may give several rows per item
    splits = load_cauldron_splits(out)
    counts = {name: len(split) for name, split in splits.items()}
    groups = {g for split in splits.values() if "group" in split.column_names for g in split["group"]}
    layout = "" if args.no_split else " (" + " / ".join(f"{name} {n:,}" for name, n in counts.items()) + ")"
    print(f"wrote {sum(counts.values()):,} rows of {args.name} ({len(groups):,} groups) to {out}{layout} "
          f"in {seconds:.1f} s")  # fmt: skip
    return 0


def add_parser(subparsers) -> None:
    from picovlm.data.realsets import REAL_SETS

    by_install: dict[str, list[str]] = {}
    for name, (_, install) in REAL_SETS.items():
        by_install.setdefault(install, []).append(name)
    installs = "; ".join(f"{', '.join(names)}: `{install}`" for install, names in by_install.items())
    defaults = ", ".join(f"{name} {default_n(write)}" for name, (write, _) in REAL_SETS.items())
    p = subparsers.add_parser(
        "realset",
        help="build a dataset of real pictures available offline (Debian packages: Fashion-MNIST, "
        "emoji, CJK characters, game data)",
        description="Build a cauldron-schema dataset from real pictures and reference text that install "
        "with a package manager, one fixed question and a 10-50 word factual answer per picture: "
        "Fashion-MNIST photos, one (fashion-mnist) or two side by side (fashion-mnist-pairs); Noto Color "
        "Emoji with Unicode's groups and CLDR's keywords (emoji); common Chinese characters in three "
        f"typefaces with their Unihan meaning, reading, radical and strokes (cjk); Battle for Wesnoth unit sprites with their race, alignment, level, movement and description (wesnoth); Freeciv nation flags with their region, era, city style and legend (freeciv-flags); FreeOrion's pictures of its technologies, buildings, ship hulls and parts, species and specials with their kind, category and description (freeorion). Sources: {installs}. "
        "The facts are stored in a `fields` column and splits are grouped by the underlying item; see "
        "docs/datasets-real.md.",
    )
    p.add_argument("name", choices=sorted(REAL_SETS), help="which real-image set to build")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of items: photos, pictures of two photos, emoji, or characters (3 rows each: one per "
        f"typeface); rows for the game sets; default per set: {defaults}",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, templates and split (default 0)")
    p.add_argument(
        "--image-size", type=int, default=None,
        help="side of the stored PNGs in pixels (default 112); 0 keeps the size they are made at: 28 for "
        "fashion-mnist, 112 for fashion-mnist-pairs and cjk, 144 for emoji",
    )  # fmt: skip
    p.add_argument(
        "--mirror", action="store_true",
        help="fashion-mnist sets and wesnoth: also add a left-right mirrored copy of each picture, in the "
        "same group (2 x --n rows; a mirrored pair swaps its sides); freeciv-flags and freeorion refuse it",
    )  # fmt: skip
    p.add_argument(
        "--no-split", action="store_true", help="save one Dataset instead of train/validation/test"
    )
    p.add_argument(
        "--source-dir",
        help="where the set's source files are when not where the Debian package puts them: the "
        "*-ubyte.gz files (fashion-mnist sets), Wesnoth's data/core, Freeciv's data folder, FreeOrion's "
        "`default` folder",
    )
    p.set_defaults(func=cmd_realset)
