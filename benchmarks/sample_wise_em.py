"""Can per-image error-minimising noise do better than the generator on these scenes?

An upper bound for an amortised generator: sample-wise error-minimising noise (min-min,
Huang et al. 2021) optimised directly on the very training images a victim will learn
from, at the protection budgets (8/255 on object pixels, 2/255 elsewhere). On the
effectiveness benchmark's held-out scenes, rounds alternate between a few Adam steps of
a small semantic UNet on the perturbed training images and signed-gradient steps that
lower its loss on every image's noise (``--reset-every N``: a fresh surrogate every N
rounds, as the generator's trainer does). Then the audit's victim trains on clean and on
those images and is tested on clean images, as in ``effectiveness.py``.

``--objective targeted`` swaps the min-min for adversarial poisoning (Fowl et al. 2021):
the surrogate trains on the clean images, and the noise makes it see every labelled
pixel as the next class (``min_min.py``).

``--real camvid`` asks the same of real photographs: CamVid's 367 training frames
(480x360, read from ``--data``, default ``../shared/data``), the real benchmark's
semantic victim (12 epochs on 128 px crops, tested on the 233 frames of SegNet's test split),
with the victim's own LRASPP-MobileNetV3 as the surrogate (``--surrogate victim``, a
white-box bound) trained on crops as the victim is, and the noise stepped on random
``--crop`` px crops of every frame (the frames are too large for whole-image steps on a
CPU). ``--seeds`` victim seeds.

The optimisation itself is ``min_min.py``, which needs no FiftyOne: ``--export FILE``
writes the training frames' paths and class maps for it to run on a machine with a GPU
(``--device cuda``), and ``--noise DIR`` audits the noise it wrote there.

Prints a table and writes ``benchmarks/results/history/sample_wise_em.json`` (with
``--real``: ``benchmarks/results/real/sample_wise_em_<real>.json``): ``{"variants":
[{"reset_every", "surrogate_accuracy": {"clean", "perturbed"}, "psnr", "victim",
"clean", "protected", "ratio", "spread", "min_min": {"rounds_done", "settings",
"device"}}], "settings", "dataset"}`` plus machine facts.

    python benchmarks/sample_wise_em.py --reset-every 0 8
    python benchmarks/sample_wise_em.py --real camvid --surrogate victim --reset-every 0 \
        --rounds 20 --surrogate-steps 20 --noise-steps 2 --crop 256 --step 0.25 --seeds 2
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import math
import os
import sys
import time

import held_out
import min_min
import numpy as np
import real_data
import torch
from machine import machine_facts, publish
from PIL import Image
from real_effectiveness import STRESS

from fiftyone_unseg import evaluate_protection
from fiftyone_unseg.audit.targets import resolve_targets
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import atomic_write_image, read_rgb
from fiftyone_unseg.settings import DEFAULT_EPS, DEFAULT_EPS_BG

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    held_out.add_arguments(parser)
    min_min.add_arguments(parser)
    parser.add_argument("--victim", default="semantic")
    parser.add_argument("--victim-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="victim seeds")
    parser.add_argument("--epochs", type=int, help="victim epochs (default: its own)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--real", choices=["camvid"], help="real photographs instead of scenes")
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    parser.add_argument(
        "--export",
        metavar="FILE",
        help="write the training frames' paths (relative to --data) and class maps to FILE "
        "(.npz) for min_min.py on another machine, and stop",
    )
    parser.add_argument(
        "--noise",
        metavar="DIR",
        help="audit the noise min_min.py wrote to DIR instead of computing it",
    )
    parser.add_argument(
        "--countermeasure",
        metavar="NAME",
        help="train the victim on the noisy frames after this counter-measure (a stress "
        "name of real_effectiveness.py, e.g. jpeg75), and on the clean ones after it alone",
    )
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.countermeasure and args.countermeasure not in STRESS:
        parser.error(f"--countermeasure: one of {sorted(STRESS)}")
    if args.export and not args.real:
        parser.error("--export needs --real")
    if args.out is None:
        name = (
            f"real/sample_wise_em_{args.real}.json" if args.real else "history/sample_wise_em.json"
        )
        args.out = os.path.join(RESULTS, name)
    return args


REAL_TASKS = {"camvid": {"epochs": 12, "image_size": 128}}  # the real benchmark's semantic task


def _training_set(args):
    """(dataset, label field, its training split, Targets, the victim's settings) of the
    held-out scenes or of ``args.real``."""
    if args.real:
        dataset = real_data.load_camvid(real_data.data_dir(args.data), "em-camvid")
        field, task = "ground_truth", REAL_TASKS[args.real]
    else:
        dataset, field, task = held_out.create("bench-sample-wise-em", args), "instances", {}
    task = {**task, **({"epochs": args.epochs} if args.epochs else {})}
    train = dataset.match_tags("train")
    return dataset, field, train, resolve_targets(dataset, field), task


def _frames(args):
    """(dataset, label field, training view, images Nx3xHxW in [0, 1], class maps NxHxW
    uint8, number of classes, the victim's settings)."""
    dataset, field, train, targets, task = _training_set(args)
    paths = train.values("filepath")
    images = torch.stack([torch.from_numpy(read_rgb(p)).permute(2, 0, 1) for p in paths])
    class_map = targets.semantic if args.real else targets.instance_class_map
    classes = torch.stack(
        [
            torch.from_numpy(class_map({field: labels}, *images.shape[-2:]))
            for labels in train.values(field)
        ]
    )
    num_classes = len(targets.semantic_classes if args.real else targets.instance_classes) + 1
    return dataset, field, train, images, classes, num_classes, task


def export(args) -> None:
    """``--export``: the training frames for ``min_min.py`` on another machine."""
    _, _, train, _, classes, num_classes, _ = _frames(args)
    root = real_data.data_dir(args.data)
    paths = [os.path.relpath(p, root) for p in train.values("filepath")]
    np.savez_compressed(
        args.export, paths=np.array(paths), classes=classes.numpy(), num_classes=num_classes
    )
    print(f"{len(paths)} frames and class maps to {args.export} (paths relative to {root})")


def _noise(args, images, classes, num_classes, reset_every):
    """(int8 NxHxWx3 pixel noise, the min-min's record) of one variant: computed here, or
    read from ``args.noise``."""
    objects = min_min.object_mask(classes)
    if args.noise:
        pixels, record = min_min.load_noise(
            args.noise, min_min.variant_name(args.objective, reset_every)
        )
        if pixels.shape[:3] != tuple(classes.shape):
            raise SystemExit(
                f"{args.noise}: noise of shape {pixels.shape} for frames {classes.shape}"
            )
        return pixels, record
    noise, accuracy, rounds = min_min.sample_wise_noise(
        images, objects, classes, num_classes, reset_every, args
    )
    settings = ("objective", "rounds", "surrogate_steps", "noise_steps", "step", "batch", "lr")
    settings += ("surrogate",)
    settings += ("crop", "noise_crop", "device", "seconds")
    record = {
        "surrogate_accuracy": accuracy,
        "rounds_done": rounds,
        "settings": {name: getattr(args, name) for name in settings},
        "device": "cpu",
    }
    return min_min.pixel_noise(noise, objects), record


def run(args) -> dict:
    """The measurements as the JSON document described in the module docstring."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    dataset, field, train, images, classes, num_classes, task = _frames(args)
    originals = images.mul(255).round().permute(0, 2, 3, 1)
    variants = []
    for reset_every in args.reset_every:
        noise, record = _noise(args, images, classes, num_classes, reset_every)
        pixels = (originals + torch.from_numpy(noise).float()).clamp(0, 255).to(torch.uint8)
        name = min_min.variant_name(args.objective, reset_every)
        noisy = f"{name}_filepath"
        written = {}
        for sample_id, image in zip(train.values("id"), pixels.numpy()):
            written[sample_id] = os.path.join(sandbox.TMP, noisy, f"{sample_id}.png")
            atomic_write_image(Image.fromarray(image), written[sample_id])
        dataset.set_values(noisy, written, key_field="id")
        mse = (pixels.float() - originals).div(255).square().mean((1, 2, 3))
        measure = STRESS.get(args.countermeasure)
        report = evaluate_protection(
            dataset, field, victims=[args.victim], protected_field=noisy, **task,
            seed=args.victim_seed, seeds=args.seeds, run_key=name,
            countermeasure=measure, baselines=("none",) if measure else (),
            progress=tqdm_progress("audit", unit="epoch"),
        )  # fmt: skip
        result = report.results[0]
        variants.append(
            {
                "reset_every": reset_every,
                "surrogate_accuracy": record["surrogate_accuracy"],
                "min_min": {k: record[k] for k in ("rounds_done", "settings", "device")},
                "psnr": float(np.mean([10 * math.log10(1 / m) for m in mse.tolist()])),
                "victim": args.victim,
                "metric": result.metric,
                "chance": result.chance,
                "clean": result.scores["clean"],
                "protected": result.scores["protected"],
                "ratio": result.ratio("protected"),
                "countermeasure": measure,
                "countermeasure_ratio": result.ratio("none") if measure else None,
                "spread": max(result.spread.get(v, 0.0) for v in ("clean", "protected")),
                "seeds": args.seeds,
            }
        )
    return {
        "variants": variants,
        "settings": variants[0]["min_min"]["settings"],
        "eps": DEFAULT_EPS,
        "eps_bg": DEFAULT_EPS_BG,
        "victim_seed": args.victim_seed,
        "dataset": (
            {"real": args.real, "train": len(train), "test": len(dataset.match_tags("test"))}
            if args.real
            else held_out.describe(args)
        ),
        "victim_settings": task,
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }


def table(results: dict) -> str:
    objective = results["settings"].get("objective", "min-min")
    kind = {"targeted": "targeted adversarial", "untargeted": "error-maximising"}.get(
        objective, "error-minimising"
    )
    lines = [
        f"sample-wise {kind} noise on {results['dataset']}, surrogate "
        f"{results['settings'].get('surrogate', 'unet')}",
        f"{'reset every':>11} {'surr. acc clean':>15} {'perturbed':>9} {'PSNR':>6} "
        f"{'victim':<9} {'clean':>6} {'prot.':>6} {'ratio':>6} {'sd':>6} seeds rounds device",
    ]
    for v in results["variants"]:
        acc = v["surrogate_accuracy"]
        lines.append(
            f"{v['reset_every']:>11} {acc['clean']:15.3f} {acc['perturbed']:9.3f} "
            f"{v['psnr']:6.2f} {v['victim']:<9} {v['clean']:6.3f} {v['protected']:6.3f} "
            f"{v['ratio']:6.2f} {v.get('spread', 0.0):6.3f} {v.get('seeds', 1):>5} "
            f"{v.get('min_min', {}).get('rounds_done', '-'):>6} {v.get('min_min', {}).get('device', '')}"
        )
        if v.get("countermeasure"):
            lines.append(
                f"{'':>11} the victim trained after {v['countermeasure']}: ratio {v['ratio']:.2f}"
                f", the counter-measure alone {v['countermeasure_ratio']:.2f}"
            )
    lines.append(
        "reset every 0: one surrogate throughout"
        + (" (classic min-min)" if objective == "min-min" else ", trained on the clean frames")
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export:
        sandbox.measure(export, args)
        return 0
    results = sandbox.measure(run, args)
    publish(results, table(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
