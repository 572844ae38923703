"""`picovlm realset NAME --out DIR`: build a dataset of real images that are available offline."""

from __future__ import annotations

import argparse
import time


def cmd_realset(args: argparse.Namespace) -> int:
    from picovlm.data.realsets import REAL_SETS

    write, _ = REAL_SETS[args.name]
    start = time.perf_counter()
    out = write(args.out, n=args.n, seed=args.seed, image_size=args.image_size, mirror=args.mirror,
                split=not args.no_split, source_dir=args.source_dir, overwrite=args.overwrite)  # fmt: skip
    rows = args.n * (2 if args.mirror else 1)
    layout = "" if args.no_split else " (train/validation/test, grouped by source photo)"
    print(f"wrote {rows} rows from {args.n} {args.name} photos to {out}{layout} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


def add_parser(subparsers) -> None:
    from picovlm.data.realsets import REAL_SETS

    installs = "; ".join(f"{name}: `{install}`" for name, (_, install) in REAL_SETS.items())
    p = subparsers.add_parser(
        "realset",
        help="build a dataset of real photos available offline (Fashion-MNIST from a Debian package)",
        description="Build a cauldron-schema dataset from real images that install with a package "
        f"manager, one fixed question and a 30-45 word factual answer per photo. Sources: {installs}. "
        "The facts are stored in a `fields` column; see docs/datasets-real.md.",
    )
    p.add_argument("name", choices=sorted(REAL_SETS), help="which real-image set to build")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--n", type=int, default=3000, help="number of source photos, class-balanced (default 3000)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample, templates and split (default 0)")
    p.add_argument(
        "--image-size", type=int, default=112,
        help="side of the stored PNGs in pixels; 0 keeps the native 28 (default 112)",
    )  # fmt: skip
    p.add_argument(
        "--mirror", action="store_true",
        help="also add a left-right mirrored copy of each photo, in the same group (2 x --n rows)",
    )  # fmt: skip
    p.add_argument(
        "--no-split", action="store_true", help="save one Dataset instead of train/validation/test"
    )
    p.add_argument(
        "--source-dir",
        help="folder with the dataset's *-ubyte.gz files (default: where the Debian package puts them)",
    )
    p.set_defaults(func=cmd_realset)
