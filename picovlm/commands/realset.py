"""`picovlm realset NAME --out DIR`: build a dataset of real images that are available offline."""

from __future__ import annotations

import argparse
import time


def cmd_realset(args: argparse.Namespace) -> int:
    from picovlm.data.realsets import PAIR_SOURCE, REAL_SETS
    from picovlm.data.realsets_games import GAME_SETS, saved_summary

    write, _ = REAL_SETS[args.name]
    start = time.perf_counter()
    out = write(args.out, n=args.n, seed=args.seed, image_size=args.image_size, mirror=args.mirror,
                split=not args.no_split, source_dir=args.source_dir, overwrite=args.overwrite)  # fmt: skip
    if args.name in GAME_SETS:  # --n is an upper bound there: say what was written
        print(f"wrote {args.name} to {out}: {saved_summary(out)} in {time.perf_counter() - start:.1f} s")
        return 0
    rows = args.n * (2 if args.mirror else 1)
    pictures = "pictures of two photos" if args.name == PAIR_SOURCE else "photos"
    layout = "" if args.no_split else " (train/validation/test, grouped by source photo)"
    print(f"wrote {rows} rows from {args.n} {args.name} {pictures} to {out}{layout} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


def add_parser(subparsers) -> None:
    from picovlm.data.realsets import REAL_SETS

    by_install: dict[str, list[str]] = {}
    for name, (_, install) in REAL_SETS.items():
        by_install.setdefault(install, []).append(name)
    installs = "; ".join(f"{', '.join(names)}: `{install}`" for install, names in by_install.items())
    p = subparsers.add_parser(
        "realset",
        help="build a dataset of real photos available offline (Fashion-MNIST from a Debian package)",
        description="Build a cauldron-schema dataset from real images that install with a package "
        "manager, one fixed question and a 33-50 word factual answer per picture: one photo "
        "(fashion-mnist) or two side by side (fashion-mnist-pairs). Sources: "
        f"{installs}. The facts are stored in a `fields` column; see docs/datasets-real.md.",
    )
    p.add_argument("name", choices=sorted(REAL_SETS), help="which real-image set to build")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--n",
        type=int,
        default=3000,
        help="number of pictures (one or two class-balanced photos each; default 3000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, templates and split (default 0)")
    p.add_argument(
        "--image-size", type=int, default=112,
        help="side of the stored PNGs in pixels; 0 keeps the native 28, or 112 for pairs (default 112)",
    )  # fmt: skip
    p.add_argument(
        "--mirror", action="store_true",
        help="also add a left-right mirrored copy of each picture, in the same group (2 x --n rows; "
        "a mirrored pair swaps its sides)",
    )  # fmt: skip
    p.add_argument(
        "--no-split", action="store_true", help="save one Dataset instead of train/validation/test"
    )
    p.add_argument(
        "--source-dir",
        help="folder with the dataset's *-ubyte.gz files (default: where the Debian package puts them)",
    )
    p.set_defaults(func=cmd_realset)
