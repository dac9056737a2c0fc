"""How much protection hurts models trained on protected data, against baselines.

On a held-out sample dataset (a seed and scene styles the default generator never
saw in training), protect every image with the generator (``--class-mix``: with
``protect``'s class keys), then audit with every victim of ``unseg evaluate``: clean,
protected, uniform random noise and the fixed mask-aligned pattern at the same budgets
(``--class-pattern``: also one tile per class; ``--random-flat``: also the uniform noise
at the object budget on every pixel), all tested on clean images. Then the
stress tests: one victim trained on protected, pattern and clean images after a
counter-measure (JPEG 75, Gaussian blur sigma 1, half-scale down/up); the clean row
(``countermeasure_ratio``) is what the counter-measure alone costs.

Runs in a private FiftyOne database and temporary folder that are removed
afterwards. Prints a table and writes ``benchmarks/results/effectiveness.json``:
``{"victims": {name: {"metric", "clean", "protected", "ratio", "random_ratio",
"pattern_ratio"}}, "psnr", "ssim", "stress": {name: {"victim", "ratio",
"pattern_ratio", "countermeasure_ratio"}}}`` (and ``class_pattern_ratio`` /
``random_flat_ratio`` with those options) plus the settings and machine facts.

    python benchmarks/effectiveness.py                      # the shipped default
    python benchmarks/effectiveness.py --generator runs/x/generator --quick
    python benchmarks/effectiveness.py --stress             # the main audit only, then
    python benchmarks/effectiveness.py --victims --update   # add the stress tests to it
    python benchmarks/effectiveness.py --victims --stress blur1 --victim-seed 1 --out x.json
    python benchmarks/effectiveness.py --class-mix 0.5 --class-pattern --out y.json
    python benchmarks/effectiveness.py --victims semantic --stress --eps-bg 8/255 --out z.json
    python benchmarks/effectiveness.py --generator runs/x/generator --baselines --stress ...
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import os
import sys
import time

import held_out
import numpy as np
import torch
from machine import (
    add_protection_arguments,
    machine_facts,
    merge_results,
    output_path,
    protection_generator,
    resolve_protection,
)

from fiftyone_unseg import evaluate_protection, protect
from fiftyone_unseg.audit.baselines import BASELINES
from fiftyone_unseg.cli import tqdm_progress

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
STRESS = {"jpeg75": "jpeg:75", "blur1": "blur:1.0", "half_scale": "downscale:0.5"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    held_out.add_arguments(parser)
    add_protection_arguments(parser)
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=list(BASELINES),
        default=["random", "pattern"],
        help="the victims' baselines (leave some out to measure only the protection of "
        "another generator at the same settings); the stress tests train the pattern when "
        "it is named and, unless the list is empty, clean images through the counter-measure",
    )
    parser.add_argument(
        "--class-pattern",
        action="store_true",
        help="add the class_pattern baseline (one tile per class) to every audit",
    )
    parser.add_argument(
        "--random-flat",
        action="store_true",
        help="add the random_flat baseline (uniform noise at the object budget everywhere) "
        "to the victims' audit",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; the committed results used 1 (with other counts kernels sum in "
        "another order and single trainings move by a few points)",
    )
    parser.add_argument("--victims", nargs="*", default=["yolo", "sam", "semantic"])
    parser.add_argument("--stress-victim", default="semantic")
    parser.add_argument("--stress", nargs="*", choices=list(STRESS), default=list(STRESS))
    parser.add_argument("--epochs", type=int, help="for every victim (default: theirs)")
    parser.add_argument("--seeds", type=int, default=1, help="trainings per variant (mean, sd)")
    parser.add_argument(
        "--victim-seed", type=int, default=0, help="seed of the first training of each variant"
    )
    parser.add_argument("--quick", action="store_true", help="12 scenes, 2 epochs: a smoke run")
    parser.add_argument(
        "--out",
        help=f"default: {os.path.relpath(RESULTS)}/effectiveness.json (with --quick: required)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep what --out holds (same generator and scenes) and replace only what "
        "this run measures (its victims and stress tests)",
    )
    args = parser.parse_args(argv)
    resolve_protection(parser, args)
    args.out = output_path(parser, args, os.path.join(RESULTS, "effectiveness.json"))
    if args.quick:
        args.num, args.epochs = 12, 2
    return args


def run(args) -> dict:
    """The measurements as the JSON document described in the module docstring."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    generator, generator_id = protection_generator(args)
    dataset = held_out.create("bench-effectiveness", args)
    protect(
        dataset,
        "instances",
        generator=generator,
        eps=args.eps,
        eps_bg=args.eps_bg,
        class_mix=args.class_mix,
        class_style=args.class_style,
        progress=tqdm_progress("protect"),
    )
    psnr = dataset.values("unseg.psnr")
    ssim = dataset.values("unseg.ssim")
    results = []
    extra = ("class_pattern",) if args.class_pattern else ()
    flat = ("random_flat",) if args.random_flat else ()
    baselines = (*args.baselines, *extra, *flat)
    if args.victims:
        results = evaluate_protection(
            dataset, "instances", victims=args.victims,
            baselines=baselines,
            epochs=args.epochs, seed=args.victim_seed, seeds=args.seeds,
            progress=tqdm_progress("audit", unit="epoch"),
        ).results  # fmt: skip
    victims = {}
    for result in results:
        victims[result.victim] = {
            "metric": result.metric,
            "clean": result.scores["clean"],
            "protected": result.scores["protected"],
            "chance": result.chance,
            "ratio": result.ratio("protected"),
            "spread": result.spread,
            "settings": result.settings,
            **_extra(result, baselines),
        }
    stress = {}
    # Under stress: the pattern when --baselines names it, and clean images through the
    # counter-measure ("none") unless --baselines names nothing.
    under_stress = (*(("pattern",) if "pattern" in args.baselines else ()), *extra)
    through = ("none",) if args.baselines else ()
    for name in args.stress:
        countermeasure = STRESS[name]
        report = evaluate_protection(
            dataset,
            "instances",
            victims=[args.stress_victim],
            baselines=(*under_stress, *through),
            countermeasure=countermeasure,
            epochs=args.epochs,
            seed=args.victim_seed,
            seeds=args.seeds,
            run_key=f"stress_{name}",
            progress=tqdm_progress(f"stress {name}", unit="epoch"),
        )
        result = report.results[0]
        stress[name] = {
            "victim": args.stress_victim,
            "countermeasure": countermeasure,
            "clean": result.scores["clean"],
            "protected": result.scores["protected"],
            "ratio": result.ratio("protected"),
            **_extra(result, under_stress),
        }
        if through:
            stress[name]["clean_countermeasure"] = result.scores["none"]
            stress[name]["countermeasure_ratio"] = result.ratio("none")
    return {
        "generator": generator_id,
        "dataset": held_out.describe(args),
        "eps": dataset.first()["unseg"]["eps"],
        "eps_bg": dataset.first()["unseg"]["eps_bg"],
        "class_mix": args.class_mix,
        "class_style": args.class_style,
        "preset": args.preset,
        "victims": victims,
        "psnr": float(np.mean([p for p in psnr if p is not None])),
        "ssim": float(np.mean([s for s in ssim if s is not None])),
        "stress": stress,
        "victim_seed": args.victim_seed,
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }


def _extra(result, baselines) -> dict:
    """Scores and ratios of the baselines."""
    out = {}
    for name in baselines:
        out[name], out[f"{name}_ratio"] = result.scores[name], result.ratio(name)
    return out


def table(results: dict) -> str:
    def fmt(x):
        return "  n/a" if x is None else f"{x:5.3f}"

    lines = [
        f"generator {results['generator']}, class mix {results['class_mix']}, "
        f"held-out scenes {results['dataset']}",
        f"{'victim':<10} {'metric':<22} {'clean':>6} {'prot.':>6} {'ratio':>6} "
        f"{'random':>7} {'pattern':>8} {'cl.pat.':>8} {'flat':>6}",
    ]
    for name, v in results["victims"].items():
        lines.append(
            f"{name:<10} {v['metric']:<22} {fmt(v['clean']):>6} {fmt(v['protected']):>6} "
            f"{fmt(v['ratio']):>6} {fmt(v.get('random_ratio')):>7} {fmt(v.get('pattern_ratio')):>8} "
            f"{fmt(v.get('class_pattern_ratio')):>8} {fmt(v.get('random_flat_ratio')):>6}"
        )
    lines.append(f"mean PSNR {results['psnr']:.2f} dB, mean SSIM {results['ssim']:.4f}")
    lines.append(
        f"{'stress':<12} {'victim':<10} {'ratio':>6} {'pattern':>8} {'cl.pat.':>8} {'clean':>6}"
    )
    for name, s in results["stress"].items():
        lines.append(
            f"{name:<12} {s['victim']:<10} {fmt(s['ratio']):>6} {fmt(s.get('pattern_ratio')):>8} "
            f"{fmt(s.get('class_pattern_ratio')):>8} {fmt(s.get('countermeasure_ratio')):>6}"
        )
    lines.append(
        "ratio = protected/clean metric; random, pattern, cl.pat. (class pattern), flat "
        "(random flat) = the baselines' ratios; under stress, clean = clean images through "
        "the counter-measure"
    )
    return "\n".join(lines)


def merge(old: dict, new: dict) -> dict:
    """``old`` with the victims and stress tests that ``new`` measured replaced."""
    old = {"victim_seed": 0, "class_mix": 0.0, "class_style": "texture", **old}  # older files
    same = ("generator", "dataset", "eps", "eps_bg", "class_mix", "class_style", "victim_seed")
    return merge_results(old, new, same, ("victims", "stress"))


def main(argv=None) -> int:
    return sandbox.measure_and_publish(run, parse_args(argv), merge, table)


if __name__ == "__main__":
    sys.exit(main())
