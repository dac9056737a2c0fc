"""``unseg`` command-line verbs of the library (the trainer adds ``train``).

Every verb is a thin wrapper: parse flags, call one SDK function, print a
one-line summary.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from fiftyone_unseg import sample_data


def _tqdm_progress(desc: str):
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="img")
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _cmd_sample_data(args) -> int:
    dataset = sample_data.create_sample_dataset(
        args.name,
        num=args.num,
        seed=args.seed,
        size=args.size,
        styles=args.styles,
        dataset_dir=args.dir,
        overwrite=args.overwrite,
        progress=_tqdm_progress("scenes"),
    )
    counts = dataset.count_sample_tags()
    splits = ", ".join(f"{counts.get(s, 0)} {s}" for s, _ in sample_data.SPLITS)
    print(
        f"Created dataset {dataset.name!r}: {len(dataset)} samples ({splits}), "
        f"files in {dataset.info['dataset_dir']}"
    )
    print(f"Open it in the App: fiftyone app launch {dataset.name!r}")
    return 0


def add_commands(subparsers) -> None:
    """Register the library's verbs on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "sample-data",
        help="create a realistic sample segmentation dataset (offline, deterministic)",
    )
    p.add_argument("--name", default="unseg-sample", help="FiftyOne dataset name")
    p.add_argument("--num", type=int, default=100, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument(
        "--styles",
        nargs="+",
        default=list(sample_data.DEFAULT_STYLES),
        choices=sample_data.STYLES,
        help="scene styles, assigned round-robin",
    )
    p.add_argument("--dir", default=None, help="where to write the image and mask files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=_cmd_sample_data)


def build_parser(extra_commands=()) -> argparse.ArgumentParser:
    """The ``unseg`` parser; ``extra_commands`` are more ``add_commands``-style callables."""
    parser = argparse.ArgumentParser(
        prog="unseg", description="Make image-segmentation datasets unlearnable (UnSeg)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (add_commands, *extra_commands):
        add(subparsers)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen verb; user errors exit with status 2."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"unseg {args.command}: error: {e}", file=sys.stderr)
        return 2
