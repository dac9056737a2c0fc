"""The held-out scenes the strength benchmarks share: a seed and scene styles that the
default generator never saw in training (``unseg train``'s data are seeds 0 and 1,
styles ``photo+texture``)."""

import argparse

from fiftyone_unseg.sample_data import create_sample_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--num``, ``--seed``, ``--styles`` and ``--size``, with the benchmarks' defaults."""
    parser.add_argument("--num", type=int, default=60, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=1234, help="held-out scene seed")
    parser.add_argument(
        "--styles", default="clutter+studio", help="held-out scene styles, joined by +"
    )
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")


def describe(args: argparse.Namespace) -> dict:
    """The scenes' settings, as the results files record them."""
    return {"num": args.num, "seed": args.seed, "styles": args.styles, "size": args.size}


def create(name: str, args: argparse.Namespace):
    """A new sample dataset ``name`` of those scenes (replacing one of that name)."""
    return create_sample_dataset(
        name,
        num=args.num,
        seed=args.seed,
        size=args.size,
        styles=tuple(args.styles.split("+")),
        overwrite=True,
    )
