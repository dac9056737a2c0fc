"""How much a generator depends on its training draw, and which draw to ship.

Generators trained by one recipe with different seeds each protect the same scenes;
one victim (default: the semantic one) trains on the clean and on the protected images
and is tested on clean ones. Two scene sets:

- ``validation``: a seed of their own (4321) in the benchmark's styles. Neither the
  trainer nor ``benchmarks/effectiveness.py`` sees them, so choosing a draw on them
  does not bias the benchmark.
- ``benchmark``: the held-out scenes of ``benchmarks/effectiveness.py``, to report the
  chosen draw and the spread across draws on the benchmark's own scenes.

One victim training per generator and set measures a draw only roughly: on 60 scenes a
generator's ratio can move by 0.1 from one set to the other. ``--num`` and ``--seeds``
narrow that, at their cost in time.

Runs in a private FiftyOne database and temporary folder. Prints a table (one row per
generator, then mean, sample sd, min and max of each ratio, then the draw with the
lowest validation ratio) and writes ``benchmarks/results/history/recipe_spread.json``:
``{"victim", "num", "sets": {set: {"seed", "styles"}}, "generators": {id: {"path",
"training": {surrogate IoUs from the run's summary.json}, set: {"clean", "protected",
"ratio", "psnr"}}}, "spread": {set: {"mean", "sd", "min", "max", "n"}}, "chosen"}``.
``--update`` keeps the generators the file already holds, so draws can be measured as
they finish (the same victim and scene sets only).

    python benchmarks/recipe_spread.py runs/seed0/generator runs/seed1/generator
    python benchmarks/recipe_spread.py --sets validation --update runs/seed2/generator
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from effectiveness import RESULTS
from machine import machine_facts

from fiftyone_unseg import evaluate_protection, protect
from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import atomic_write_bytes
from fiftyone_unseg.sample_data import create_sample_dataset

SETS = {
    "validation": {"seed": 4321, "styles": "clutter+studio"},
    "benchmark": {"seed": 1234, "styles": "clutter+studio"},
}
SUMMARY_KEYS = ("iou_train_clean", "iou_train_perturbed", "iou_val_clean", "iou_val_perturbed")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generators", nargs="+", help="checkpoint directories")
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--victim", default="semantic")
    parser.add_argument("--epochs", type=int, help="victim epochs (default: its own)")
    parser.add_argument(
        "--seeds", type=int, default=1, help="victim trainings per variant (their mean scores)"
    )
    parser.add_argument("--num", type=int, default=60, help="scenes per set")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (results: 1)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "history", "recipe_spread.json"))
    parser.add_argument(
        "--update", action="store_true", help="keep the generators --out already holds"
    )
    parser.add_argument("--quick", action="store_true", help="12 scenes, 2 epochs: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.num, args.epochs = 12, 2
    return args


def training_summary(generator_dir: str) -> dict:
    """The surrogate IoUs the trainer wrote next to ``generator_dir`` (empty if none)."""
    path = os.path.join(os.path.dirname(os.path.abspath(generator_dir)), "summary.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        summary = json.load(f)
    return {key: summary[key] for key in SUMMARY_KEYS if key in summary}


def measure(args) -> dict:
    """``{generator id: {"path", "training", set: {...}}}`` for ``args.generators``."""
    torch.set_num_threads(args.threads)
    generators = {path: load_generator(path) for path in args.generators}
    rows = {
        g.generator_id: {"path": path, "training": training_summary(path)}
        for path, g in generators.items()
    }
    for set_name in args.sets:
        scenes = SETS[set_name]
        dataset = create_sample_dataset(
            f"spread-{set_name}",
            num=args.num,
            seed=scenes["seed"],
            size=args.size,
            styles=tuple(scenes["styles"].split("+")),
            overwrite=True,
        )
        for generator in generators.values():
            started = time.monotonic()
            protect(dataset, "instances", generator=generator, overwrite=True)
            result = evaluate_protection(
                dataset,
                "instances",
                victims=[args.victim],
                epochs=args.epochs,
                seeds=args.seeds,
                progress=tqdm_progress(f"{set_name} {generator.generator_id}", unit="epoch"),
            ).results[0]
            rows[generator.generator_id][set_name] = {
                "clean": result.scores["clean"],
                "protected": result.scores["protected"],
                "ratio": result.ratio("protected"),
                "psnr": float(np.mean(dataset.values("unseg.psnr"))),
                "seconds": time.monotonic() - started,
            }
    return rows


def summarise(results: dict) -> dict:
    """``results`` with the spread of each set's ratio and the chosen draw filled in."""
    spread = {}
    for set_name in SETS:
        ratios = [g[set_name]["ratio"] for g in results["generators"].values() if set_name in g]
        if ratios:
            spread[set_name] = {
                "mean": float(np.mean(ratios)),
                "sd": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else None,
                "min": float(np.min(ratios)),
                "max": float(np.max(ratios)),
                "n": len(ratios),
            }
    validated = {k: g for k, g in results["generators"].items() if "validation" in g}
    chosen = min(validated, key=lambda k: validated[k]["validation"]["ratio"], default=None)
    return dict(results, spread=spread, chosen=chosen)


def table(results: dict) -> str:
    def fmt(row, key):
        return f"{row[key]:6.3f}" if row and row.get(key) is not None else "   n/a"

    lines = [
        f"victim {results['victim']}; ratio = protected/clean, trained on each set's train "
        "split, tested on its clean test split",
        f"{'generator':<14} {'sur. val clean/pert.':>20} "
        + " ".join(f"{s + ' ratio':>17} {'psnr':>5}" for s in SETS),
    ]
    for gid, row in results["generators"].items():
        training = row["training"]
        surrogate = (
            f"{training['iou_val_clean']:.3f} / {training['iou_val_perturbed']:.3f}"
            if "iou_val_clean" in training
            else "n/a"
        )
        cells = []
        for set_name in SETS:
            r = row.get(set_name)
            psnr = f"{r['psnr']:5.1f}" if r else "  n/a"
            cells.append(f"{'':>11}{fmt(r, 'ratio')} {psnr}")
        lines.append(f"{gid:<14} {surrogate:>20} " + " ".join(cells))
    for stat in ("mean", "sd", "min", "max"):
        cells = [f"{'':>11}{fmt(results['spread'].get(s), stat)} {'':>5}" for s in SETS]
        lines.append(f"{stat:<14} {'':>20} " + " ".join(cells))
    lines.append(f"chosen on the validation scenes: {results['chosen']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rows = sandbox.measure(measure, args)
    results = {
        "victim": args.victim,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "num": args.num,
        "size": args.size,
        "threads": args.threads,
        "sets": SETS,
        "generators": {},
    }
    if args.update and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        for key in ("victim", "epochs", "seeds", "num", "size", "threads", "sets"):
            if old.get(key) != results[key]:
                raise SystemExit(f"--update: {key} differs ({old.get(key)} there, {results[key]})")
        results["generators"] = old["generators"]
    for gid, row in rows.items():
        results["generators"][gid] = {**results["generators"].get(gid, {}), **row}
    results = summarise(results)
    results["machine"] = machine_facts()
    results["seconds"] = time.monotonic() - started
    print(table(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_bytes(json.dumps(results, indent=2).encode(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
