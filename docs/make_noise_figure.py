"""Make ``docs/images/noise-zoom.png``: what the default noise looks like, zoomed in.

One generated sample scene (``fiftyone_unseg.sample_data``: scikit-image's bundled
photos, free to publish) is protected with the shipped generator at the default budgets
(8/255 on objects, 2/255 elsewhere). A 96x96 crop across an object's edge, picked where
the picture is flattest, is upscaled 4x (nearest neighbour) and shown three times:
original | protected | noise x16 on mid-grey. Prints the image's PSNR for the README's
caption. Runs on the CPU in a throwaway FiftyOne database and folder:

    .venv/bin/python docs/make_noise_figure.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid

_TMP = tempfile.mkdtemp(prefix="unseg-figure-")
os.environ["FIFTYONE_DATABASE_NAME"] = f"unseg-figure-{uuid.uuid4().hex[:8]}"
os.environ["FIFTYONE_DEFAULT_DATASET_DIR"] = _TMP
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"

import shutil  # noqa: E402

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from fiftyone_unseg import protect, sample_data  # noqa: E402
from fiftyone_unseg.io import read_mask, read_rgb  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CROP, ZOOM, GAIN = 96, 4, 16
GAP, HEADER = 8, 28


def pick_crop(image: np.ndarray, objects: np.ndarray, stride: int = 8) -> tuple[int, int]:
    """Top-left corner of the CROPxCROP window that is about half object, half not
    (an edge runs through it) and, among those, flattest on the object (the noise shows
    most there)."""
    gray = image.mean(axis=2)
    best, corner = np.inf, (0, 0)
    for y in range(0, image.shape[0] - CROP + 1, stride):
        for x in range(0, image.shape[1] - CROP + 1, stride):
            inside = objects[y : y + CROP, x : x + CROP]
            share = inside.mean()
            if not 0.3 <= share <= 0.7:
                continue
            score = gray[y : y + CROP, x : x + CROP][inside].std() + 0.1 * abs(share - 0.5)
            if score < best:
                best, corner = score, (y, x)
    return corner


def panel(pixels: np.ndarray, title: str, font) -> Image.Image:
    """A zoomed crop with its title above it."""
    zoomed = Image.fromarray(pixels).resize((CROP * ZOOM, CROP * ZOOM), Image.NEAREST)
    out = Image.new("RGB", (zoomed.width, zoomed.height + HEADER), "white")
    out.paste(zoomed, (0, HEADER))
    ImageDraw.Draw(out).text((4, 6), title, fill="black", font=font)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=2, help="sample scene seed (2: a flat sign)")
    parser.add_argument("--size", type=int, default=512, help="scene side in pixels")
    parser.add_argument("--out", default=os.path.join(HERE, "images", "noise-zoom.png"))
    args = parser.parse_args(argv)
    try:
        dataset = sample_data.create_sample_dataset(
            "noise-figure", num=1, seed=args.seed, size=args.size, styles=("photo",)
        )
        summary = protect(dataset, "ground_truth")  # the shipped generator, default budgets
        assert summary["protected"] == 1, summary
        sample = dataset.first()
        original = np.asarray(Image.open(sample.filepath).convert("RGB"))
        protected = np.asarray(Image.open(sample.protected_filepath).convert("RGB"))
        objects = read_mask(sample.ground_truth.mask_path) > 0
        y, x = pick_crop(read_rgb(sample.filepath), objects)
        window = (slice(y, y + CROP), slice(x, x + CROP))
        noise = protected[window].astype(np.int16) - original[window]
        amplified = np.clip(128 + GAIN * noise, 0, 255).astype(np.uint8)
        font = ImageFont.load_default(size=18)
        panels = [
            panel(original[window], "original", font),
            panel(protected[window], "protected (default budgets)", font),
            panel(amplified, f"noise x{GAIN} (grey = 0)", font),
        ]
        width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
        figure = Image.new("RGB", (width, panels[0].height), "white")
        for k, p in enumerate(panels):
            figure.paste(p, (k * (p.width + GAP), 0))
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        figure.save(args.out, optimize=True)
        print(
            f"{args.out}: {os.path.getsize(args.out) // 1024} KB; crop {CROP} px at ({x}, {y}) "
            f"of a {original.shape[1]}x{original.shape[0]} scene, {ZOOM}x; "
            f"image PSNR {sample.unseg.psnr:.1f} dB, L-inf {sample.unseg.linf * 255:.1f}/255, "
            f"objects {objects.mean():.0%} of the pixels"
        )
    finally:
        fo.core.odm.get_db_client().drop_database(fo.config.database_name)
        shutil.rmtree(_TMP, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
