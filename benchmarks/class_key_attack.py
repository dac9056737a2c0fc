"""Can someone who knows the method remove class keys without knowing the key?

On the effectiveness benchmark's held-out scenes, protect with the default generator and
``--class-mix``, then play an adversary who knows everything but the key (8x8 tiles from
the image origin, the mix, the budgets) and has the labels they are about to train on:
for each class and tile phase, the mean high-pass residual (image minus a Gaussian blur
of sigma 1) over the protected training images estimates the sign of the class's
texture; they subtract ``mix x budget x sign`` and train a victim on the result, tested
on clean images as in the audit (clean and attacked training).

Prints how often the estimated signs match the true textures and the victim's ratio
(attacked / clean), and writes ``benchmarks/results/history/class_key_attack.json`` (a
sample-scene experiment of ``docs/GENERATOR_HISTORY.md``).

    python benchmarks/class_key_attack.py --victim semantic
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
from machine import machine_facts, publish
from PIL import Image
from scipy import ndimage

from fiftyone_unseg import evaluate_protection, protect
from fiftyone_unseg.audit.targets import resolve_targets
from fiftyone_unseg.class_keys import TILE, ClassKeys, default_class_key
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import atomic_write_image, read_rgb

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--victim", default="semantic")
    parser.add_argument("--class-mix", type=float, default=0.5)
    held_out.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, help="victim epochs (default: its own)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "history", "class_key_attack.json"))
    return parser.parse_args(argv)


def _phases(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(height) % TILE, np.arange(width) % TILE, indexing="ij")


def estimate_signs(images: list, maps: list, num_classes: int) -> np.ndarray:
    """(num_classes + 1) x 8 x 8 x 3 signs of the mean high-pass residual per class and phase."""
    sums = np.zeros((num_classes + 1, TILE, TILE, 3))
    for image, class_map in zip(images, maps):
        residual = image - ndimage.gaussian_filter(image, (1, 1, 0))
        rows, cols = _phases(*class_map.shape)
        np.add.at(sums, (class_map, rows, cols), residual)
    return np.sign(sums)


def run(args) -> dict:
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    dataset = held_out.create("bench-class-key-attack", args)
    protect(dataset, "instances", class_mix=args.class_mix, progress=tqdm_progress("protect"))
    targets = resolve_targets(dataset, "instances")
    protected = {i: read_rgb(p) for i, p in zip(*dataset.values(["id", "protected_filepath"]))}
    maps = {
        s.id: targets.instance_class_map({"instances": s.instances}, *protected[s.id].shape[:2])
        for s in dataset.select_fields("instances")
    }
    train = dataset.match_tags("train").values("id")
    signs = estimate_signs(
        [protected[i] for i in train], [maps[i] for i in train], len(targets.instance_classes)
    )
    keys = ClassKeys(default_class_key(dataset), args.class_mix)
    names = [None, *targets.instance_classes]
    truth = np.stack([keys.texture(n).permute(1, 2, 0).numpy() for n in names])
    agreement = {
        str(n or "background"): float(a) for n, a in zip(names, (signs == truth).mean((1, 2, 3)))
    }
    eps, eps_bg = dataset.first()["unseg"]["eps"], dataset.first()["unseg"]["eps_bg"]
    folder = os.path.join(sandbox.TMP, "attacked")
    attacked = {}
    for sample_id, image in protected.items():
        class_map = maps[sample_id]
        rows, cols = _phases(*class_map.shape)
        amplitude = args.class_mix * np.where(class_map > 0, eps, eps_bg)[..., None]
        cleaned = np.clip(image - amplitude * signs[class_map, rows, cols], 0, 1)
        attacked[sample_id] = os.path.join(folder, f"{sample_id}.png")
        pixels = (cleaned * 255).round().astype(np.uint8)
        atomic_write_image(Image.fromarray(pixels), attacked[sample_id])
    dataset.set_values("attacked_filepath", attacked, key_field="id")
    report = evaluate_protection(
        dataset, "instances", victims=[args.victim], protected_field="attacked_filepath",
        epochs=args.epochs, progress=tqdm_progress("audit", unit="epoch"),
    )  # fmt: skip
    result = report.results[0]
    return {
        "victim": args.victim,
        "class_mix": args.class_mix,
        "dataset": held_out.describe(args),
        "sign_agreement": agreement,
        "clean": result.scores["clean"],
        "attacked": result.scores["protected"],
        "attacked_ratio": result.ratio("protected"),
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }


def table(results: dict) -> str:
    agreement = ", ".join(f"{k} {v:.3f}" for k, v in results["sign_agreement"].items())
    return "\n".join(
        [
            f"estimated texture signs that match the key: {agreement}",
            f"{'victim':<10} {'clean':>6} {'attacked':>9} {'ratio':>6}",
            f"{results['victim']:<10} {results['clean']:6.3f} {results['attacked']:9.3f} "
            f"{results['attacked_ratio']:6.3f}",
            "(compare the ratio with the protected one in effectiveness_class_mix*.json)",
        ]
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    results = sandbox.measure(run, args)
    publish(results, table(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
