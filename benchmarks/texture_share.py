"""How much of a generator's noise is one fixed texture per class, which an informed
trainer can estimate and subtract?

Protects every ``--every``-th frame of CamVid's training split with each generator
(same budgets), then measures on the true noise (protected minus original, which only
the owner has):

- ``shared``: the share of the noise's energy that its own mean per (class, phase of
  the generator's 16-pixel patch grid) explains: the universal part of the noise;
- ``left_after_attack``: the noise energy left after the informed attack of
  :mod:`fiftyone_unseg.audit.class_texture` (fitted on the protected frames and their
  labels alone), as a share of the noise's energy before it;
- mean PSNR.

Side by side in one run; prints a table and writes JSON
(``benchmarks/results/real/texture_share.json``).

    python benchmarks/texture_share.py --generators default runs/per-image/generator
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import os
import time

import numpy as np
import real_data
from machine import add_protection_arguments, machine_facts, publish

from fiftyone_unseg import protect
from fiftyone_unseg.audit.class_texture import ClassTexture, bin_sums
from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import read_rgb
from fiftyone_unseg.labels import load_mask

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "real")
PERIOD = 16  # the generators' patch grid, in pixels of their 256 px frame


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    add_protection_arguments(parser)
    parser.add_argument(
        "--generators",
        nargs="+",
        default=["default", "robust"],
        help="shipped presets (default, robust) or checkpoint folders",
    )
    parser.add_argument("--every", type=int, default=3, help="every Nth training frame")
    parser.add_argument("--limit", type=int, help="at most N frames (a quick run)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "texture_share.json"))
    return parser.parse_args(argv)


def shared_share(noises: list, maps: list, bins) -> float:
    """Share of the energy of ``noises`` (HxWx3 float) explained by their mean per bin of
    ``bins(class map)``."""
    sums, counts = bin_sums((bins(m), n.reshape(-1, 3)) for n, m in zip(noises, maps))
    explained = (sums**2 / np.maximum(counts, 1)[:, None]).sum()
    return float(explained / sum((n**2).sum() for n in noises))


def _pixels(path: str) -> np.ndarray:
    """HxWx3 uint8, as a trainer reads the file."""
    return np.round(read_rgb(path) * 255).astype(np.uint8)


def measure(view, generator: str, args) -> dict:
    """Protect ``view`` with ``generator`` and measure its noise (see the module doc)."""
    folder = os.path.join(sandbox.TMP, "protected", os.path.basename(generator.rstrip("/")))
    model = load_generator(None if generator == "default" else generator)
    protect(
        view, "ground_truth", generator=model, eps=args.eps, eps_bg=args.eps_bg,
        output_dir=folder, overwrite=True, progress=tqdm_progress(f"protect {generator}"),
    )  # fmt: skip
    frames = list(zip(view.values("filepath"), view.values("protected_filepath")))
    maps = [load_mask(label) for label in view.values("ground_truth")]
    attack = ClassTexture(PERIOD).fit(
        (_pixels(protected), class_map) for (_, protected), class_map in zip(frames, maps)
    )
    noises, left = [], 0.0
    for (original, protected), class_map in zip(frames, maps):
        clean = _pixels(original).astype(np.float64)
        image = _pixels(protected)
        noises.append(image - clean)
        left += ((attack(image, class_map) - clean) ** 2).sum()
    energy = sum((n**2).sum() for n in noises)
    return {
        "generator": model.generator_id,
        "shared": shared_share(noises, maps, attack.bins),
        "left_after_attack": float(left / energy),
        "psnr": float(np.mean(view.values("unseg.psnr"))),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    dataset = real_data.load_camvid(real_data.data_dir(args.data), splits=("train",))
    view = dataset.select(dataset.values("id")[:: args.every])
    if args.limit:
        view = view.limit(args.limit)
    rows = {g: measure(view, g, args) for g in args.generators}
    table = "\n".join(
        ["| generator | id | shared texture | energy left after the attack | PSNR |"]
        + ["|---|---|---|---|---|"]
        + [
            f"| {g} | {r['generator']} | {r['shared']:.2f} | {r['left_after_attack']:.2f} | "
            f"{r['psnr']:.1f} dB |"
            for g, r in rows.items()
        ]
    )
    results = {
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
