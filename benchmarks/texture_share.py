"""How much of a generator's noise is one fixed texture per class, which an informed
trainer can estimate and subtract, and how much of it does JPEG keep?

Protects every ``--every``-th frame of CamVid's training split (or, with ``--dataset
pets``, photo of the pets' training split, published at the YOLO victim's 128 px as the
real-data benchmark does) with each generator (same budgets), then measures on the true noise (protected minus original, which only
the owner has):

- ``shared``: the share of the noise's energy that its own mean per (class, phase of
  the generator's 16-pixel patch grid) explains: the universal part of the noise;
- ``left_after_attack``: the noise energy left after the informed attack of
  :mod:`fiftyone_unseg.audit.class_texture` (fitted on the protected frames and their
  labels alone), as a share of the noise's energy before it;
- ``grey``: the share of the noise's energy in its grey part (the mean over R, G and B,
  the same on each): JPEG keeps luma and subsamples and coarsely quantises colour;
- ``kept_jpeg75``: how much of the noise is still there after JPEG 75 (of the protected
  image, against the original through the same JPEG): the projection of what is left on
  the noise, as a share of the noise (1: all of it);
- mean PSNR.

Side by side in one run; prints a table and writes JSON
(``benchmarks/results/real/texture_share.json``, ``texture_share_pets.json``).

    python benchmarks/texture_share.py --generators default runs/per-image/generator
    python benchmarks/texture_share.py --dataset pets
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import os
import time

import cv2
import numpy as np
import real_data
from machine import add_protection_arguments, machine_facts, publish

from fiftyone_unseg import protect
from fiftyone_unseg.audit.class_texture import ClassTexture, bin_sums
from fiftyone_unseg.audit.countermeasures import Countermeasure
from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import read_rgb
from fiftyone_unseg.labels import load_mask

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "real")
PERIOD = 16  # the generators' patch grid, in pixels of their 256 px frame
JPEG = Countermeasure.parse("jpeg:75")
PETS_SIDE = 128  # the long side the real-data benchmark publishes the pets at (YOLO's)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    add_protection_arguments(parser, budgets_only=True)
    parser.add_argument(
        "--generators",
        nargs="+",
        default=["default", "robust"],
        help="shipped generators (default, robust) or checkpoint folders",
    )
    parser.add_argument("--dataset", choices=("camvid", "pets"), default="camvid")
    parser.add_argument("--every", type=int, default=3, help="every Nth training frame")
    parser.add_argument("--limit", type=int, help="at most N frames (a quick run)")
    parser.add_argument("--out", help="default: results/real/texture_share[_pets].json")
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "" if args.dataset == "camvid" else f"_{args.dataset}"
        args.out = os.path.join(RESULTS, f"texture_share{suffix}.json")
    return args


def _training_split(args):
    """Every ``args.every``-th training image of ``args.dataset``, as published."""
    root = real_data.data_dir(args.data)
    if args.dataset == "camvid":
        dataset = real_data.load_camvid(root, splits=("train",))
    else:
        dataset = real_data.load_pets(root).match_tags("train")
    view = dataset.select(dataset.values("id")[:: args.every])
    if args.limit:
        view = view.limit(args.limit)
    if args.dataset == "pets":
        real_data.downscale(view, PETS_SIDE, os.path.join(sandbox.TMP, f"pets-{PETS_SIDE}px"))
    return view


def shared_share(noises: list, maps: list, bins) -> float:
    """Share of the energy of ``noises`` (HxWx3 float) explained by their mean per bin of
    ``bins(class map)``."""
    sums, counts = bin_sums((bins(m), n.reshape(-1, 3)) for n, m in zip(noises, maps))
    explained = (sums**2 / np.maximum(counts, 1)[:, None]).sum()
    return float(explained / sum((n**2).sum() for n in noises))


def _pixels(path: str) -> np.ndarray:
    """HxWx3 uint8, as a trainer reads the file."""
    return np.round(read_rgb(path) * 255).astype(np.uint8)


def _class_map(label, shape) -> np.ndarray:
    """The label's mask at the image's (height, width): stretched, as FiftyOne draws it."""
    mask = load_mask(label)
    if mask.shape != tuple(shape):
        mask = cv2.resize(mask, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return mask


def measure(view, generator: str, args) -> dict:
    """Protect ``view`` with ``generator`` and measure its noise (see the module doc)."""
    folder = os.path.join(sandbox.TMP, "protected", os.path.basename(generator.rstrip("/")))
    model = load_generator(None if generator == "default" else generator)
    protect(
        view, "ground_truth", generator=model, eps=args.eps, eps_bg=args.eps_bg,
        output_dir=folder, overwrite=True, progress=tqdm_progress(f"protect {generator}"),
    )  # fmt: skip
    frames = list(zip(view.values("filepath"), view.values("protected_filepath")))
    maps = [
        _class_map(label, read_rgb(path).shape[:2])
        for label, (path, _) in zip(view.values("ground_truth"), frames)
    ]
    attack = ClassTexture(PERIOD).fit(
        (_pixels(protected), class_map) for (_, protected), class_map in zip(frames, maps)
    )
    noises, left, grey, kept = [], 0.0, 0.0, 0.0
    for (original, protected), class_map in zip(frames, maps):
        clean, image = _pixels(original), _pixels(protected)
        noise = image - clean.astype(np.float64)
        noises.append(noise)
        left += ((attack(image, class_map) - clean) ** 2).sum()
        grey += 3 * (noise.mean(axis=-1) ** 2).sum()
        kept += ((JPEG(image) - JPEG(clean).astype(np.float64)) * noise).sum()
    energy = sum((n**2).sum() for n in noises)
    return {
        "generator": model.generator_id,
        "shared": shared_share(noises, maps, attack.bins),
        "left_after_attack": float(left / energy),
        "grey": float(grey / energy),
        "kept_jpeg75": float(kept / energy),
        "psnr": float(np.mean(view.values("unseg.psnr"))),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    view = _training_split(args)
    rows = {g: measure(view, g, args) for g in args.generators}
    table = "\n".join(
        [
            "| generator | id | shared texture | energy left after the attack | grey share "
            "| kept after JPEG 75 | PSNR |"
        ]
        + ["|---|---|---|---|---|---|---|"]
        + [
            f"| {g} | {r['generator']} | {r['shared']:.2f} | {r['left_after_attack']:.2f} | "
            f"{r['grey']:.2f} | {r['kept_jpeg75']:.2f} | {r['psnr']:.1f} dB |"
            for g, r in rows.items()
        ]
    )
    results = {
        "dataset": args.dataset,
        "frames": len(view),
        "every": args.every,
        "eps": args.eps,
        "eps_bg": args.eps_bg,
        "period": PERIOD,
        "generators": rows,
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }
    publish(results, table, args.out)
    sandbox.cleanup()
    return results


if __name__ == "__main__":
    main()
