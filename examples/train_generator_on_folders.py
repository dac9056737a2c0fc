"""Train your own noise generator on your own image / mask folders, then protect with it.

Shows the trainer's Python API: ``trainer.config.load_config`` takes a shipped config
(``tiny`` runs on a CPU) with overrides, ``trainer.loop.train`` runs UnSeg's bilevel
training and writes the generator that ``fiftyone_unseg.protect`` loads. Data sources
are those of ``unseg train --data`` (see ``trainer/data.py``): ``IMAGES_DIR:MASKS_DIR``,
a folder holding such pairs (``images/`` + ``masks/``, ``im/`` + ``gt/``, ...),
``hqseg44k:ROOT`` (HQSeg-44K's training sets), ``fiftyone:DATASET[:FIELD]`` or
``sample:NUM``. A mask belongs to the image
with the same stem (``im/0001.jpg`` <-> ``gt/0001.png``), or with several objects per
image to the stem before ``__`` (``masks/0001__00.png``, ``masks/0001__01.png``).

    .venv/bin/python examples/train_generator_on_folders.py --data my_set/images:my_set/masks
    .venv/bin/python examples/train_generator_on_folders.py --data hqseg44k:/data/HQSeg-44K/data \\
        --max-steps 2000 --out runs/hqseg --protect my_set/images:my_set/masks

The default 300 bilevel steps (one surrogate and one generator phase of ``tiny``), after
the config's 600 steps of segmenter pretraining (``--pretrain-steps`` to change), take
about half an hour on one CPU core: enough to see it work, not to protect well (``tiny``
itself runs 600 + 600).
``--protect IMAGES_DIR:MASKS_DIR`` then loads the images that have masks there into a
FiftyOne dataset, their masks as the ``objects`` instances, and protects them with the
new generator.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import fiftyone as fo

import fiftyone_unseg as fu
from fiftyone_unseg.folders import find_pairs
from fiftyone_unseg.io import read_mask
from trainer.config import load_config
from trainer.loop import train


def folder_dataset(name: str, image_dir: str, mask_dir: str):
    """A fresh dataset ``name`` of the images in ``image_dir`` that have masks in
    ``mask_dir``, their masks as ``objects`` Detections.

    An earlier dataset of that name is replaced, its protected files deleted.
    """
    detections = defaultdict(list)
    for pair in find_pairs(image_dir, mask_dir):
        mask = read_mask(pair.mask) > 0
        found = detections[pair.image]
        if mask.any():
            found.append(fo.Detection.from_mask(mask, label="object"))
    if fo.dataset_exists(name):
        fu.restore(fo.load_dataset(name), delete_protected=True)
    dataset = fo.Dataset(name, persistent=True, overwrite=True)
    dataset.add_samples(
        [fo.Sample(filepath=i, objects=fo.Detections(detections=d)) for i, d in detections.items()]
    )
    return dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, help="data source, repeatable")
    p.add_argument("--config", default="tiny", help="shipped config name or a JSON file")
    p.add_argument("--out", default="runs/folders-generator", help="run folder")
    p.add_argument("--overwrite", action="store_true", help="start over in a used --out")
    p.add_argument("--max-steps", type=int, default=300, help="bilevel training steps")
    p.add_argument("--phase-steps", type=int, help="steps per surrogate / generator phase")
    p.add_argument("--batch-size", type=int, help="default: the config's")
    p.add_argument(
        "--pretrain-steps", type=int, help="segmenter pretraining steps (default: the config's)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--protect", metavar="IMAGES_DIR:MASKS_DIR", help="protect these images")
    p.add_argument("--name", default="unseg-folders-example", help="dataset for --protect")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(
        args.config,
        data=args.data,
        max_steps=args.max_steps,
        surrogate_phase=args.phase_steps,
        generator_phase=args.phase_steps,
        batch_size=args.batch_size,
        pretrain_steps=args.pretrain_steps,
        device=args.device,
    )
    summary = train(cfg, args.out, overwrite=args.overwrite)
    generator = summary["generator"]
    held_out = "val" if "iou_val_clean" in summary else "train"
    print(
        f"Trained {summary['steps']} steps in {summary['wall_s']:.0f} s. Surrogate IoU on "
        f"{held_out} images: clean {summary[f'iou_{held_out}_clean']:.3f}, perturbed "
        f"{summary[f'iou_{held_out}_perturbed']:.3f} (lower perturbed = stronger noise).\n"
        f"Generator: {generator}"
    )
    if args.protect:
        image_dir, mask_dir = args.protect.split(":", 1)
        dataset = folder_dataset(args.name, image_dir, mask_dir)
        result = fu.protect(dataset, "objects", generator=generator, device=args.device)
        psnr = dataset.mean("unseg.psnr")
        print(
            f"Protected {result['protected']} of {result['total']} images into "
            f"{result['output_dir']}{f' (mean PSNR {psnr:.1f} dB)' if psnr else ''}; "
            f"FiftyOne dataset {args.name!r}"
        )
        for failed in result["failures"]:
            print(f"  failed: {failed['filepath']}: {failed['reason']}")
    print(
        "Protect a FiftyOne dataset with it:\n"
        f"  unseg protect --dataset NAME --label-field FIELD --generator {generator}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
