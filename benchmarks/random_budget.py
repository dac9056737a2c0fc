"""Is the random-noise baseline's cost the noise's, or its budget map's?

Protection budgets are mask-aligned (8/255 on object pixels, 2/255 elsewhere), so uniform
noise at those budgets has four times the amplitude on objects: its energy alone
outlines them. On the effectiveness benchmark's held-out scenes, each victim trains on
clean images, on that noise (``random``) and on the same noise at the object budget on
every pixel (``random_flat``), for each victim seed, all tested on clean images. If
``random_flat`` keeps the ratio near 1 where ``random`` does not, the victim set-up is
sound and what ``random`` costs is the outline.

Prints a table and writes ``benchmarks/results/history/random_budget.json``: ``{"runs":
[{"victim", "victim_seed", "metric", "clean", "random", "random_flat", "random_ratio",
"random_flat_ratio"}], "eps", "eps_bg", "dataset"}`` plus machine facts.

    python benchmarks/random_budget.py --victims yolo --victim-seeds 0 1 2
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import os
import sys
import time

import held_out
import torch
from machine import machine_facts, publish

from fiftyone_unseg import evaluate_protection
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.protect import DEFAULT_EPS, DEFAULT_EPS_BG

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BASELINES = ("random", "random_flat")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    held_out.add_arguments(parser)
    parser.add_argument("--victims", nargs="+", default=["yolo", "semantic"])
    parser.add_argument("--victim-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, help="for every victim (default: theirs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=os.path.join(RESULTS, "history", "random_budget.json"))
    return parser.parse_args(argv)


def run(args) -> dict:
    """The measurements as the JSON document described in the module docstring."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    dataset = held_out.create("bench-random-budget", args)
    runs = []
    for victim_seed in args.victim_seeds:
        report = evaluate_protection(
            dataset, "instances", victims=args.victims, protected_field=None,
            baselines=BASELINES, eps=DEFAULT_EPS, eps_bg=DEFAULT_EPS_BG, epochs=args.epochs, seed=victim_seed,
            run_key=f"random_budget_{victim_seed}",
            progress=tqdm_progress(f"victim seed {victim_seed}", unit="epoch"),
        )  # fmt: skip
        for result in report.results:
            runs.append(
                {
                    "victim": result.victim,
                    "victim_seed": victim_seed,
                    "metric": result.metric,
                    "clean": result.scores["clean"],
                    **{name: result.scores[name] for name in BASELINES},
                    **{f"{name}_ratio": result.ratio(name) for name in BASELINES},
                }
            )
    return {
        "runs": runs,
        "eps": DEFAULT_EPS,
        "eps_bg": DEFAULT_EPS_BG,
        "dataset": held_out.describe(args),
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }


def table(results: dict) -> str:
    def fmt(x, width: int, digits: int = 3) -> str:
        return f"{'n/a':>{width}}" if x is None else f"{x:{width}.{digits}f}"

    lines = [
        f"held-out scenes {results['dataset']}, budgets {results['eps'] * 255:g}/255 on "
        f"objects, {results['eps_bg'] * 255:g}/255 elsewhere",
        f"{'victim':<10} {'seed':>4} {'clean':>6} {'random':>7} {'flat':>6} "
        f"{'random ratio':>13} {'flat ratio':>11}",
    ]
    for r in results["runs"]:
        lines.append(
            f"{r['victim']:<10} {r['victim_seed']:>4} {fmt(r['clean'], 6)} "
            f"{fmt(r['random'], 7)} {fmt(r['random_flat'], 6)} "
            f"{fmt(r['random_ratio'], 13, 2)} {fmt(r['random_flat_ratio'], 11, 2)}"
        )
    lines.append("flat = the same uniform noise at the object budget on every pixel")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = sandbox.measure(run, args)
    publish(results, table(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
