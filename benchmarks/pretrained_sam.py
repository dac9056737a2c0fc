"""Pretrain the interactive victim on other photographs, as SAM is pretrained before anyone
fine-tunes it on protected data (the paper's setting).

No SAM weights can be downloaded here, so this trains the ``tiny`` SAM layout with one
click per object (the ``sam_point`` victim's objective) on clean ECSSD (1,000 photos,
their salient objects, one instance per connected region) and COCO's training part
(``coco_mini`` + ``coco_tiny``, every instance), never on the pets the benchmark
protects and tests on. The result is an official-format SAM state dict, which
``real_effectiveness.py --sam-checkpoint FILE`` (and ``unseg evaluate --sam-checkpoint``)
fine-tunes on the clean, protected and baseline pets.

    python benchmarks/pretrained_sam.py --out runs/victims/sam_point_pretrained.pth
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import io
import os
import sys
import time

import fiftyone as fo
import fiftyone.utils.labels as foul
import real_data
import torch
from fiftyone import ViewField as F

from fiftyone_unseg.audit.targets import resolve_targets
from fiftyone_unseg.audit.training import Example, Settings
from fiftyone_unseg.audit.victims.sam import SamVictim
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import atomic_write_bytes

FIELD = "objects"  # every set's instances, as Detections with masks
MIN_REGION = 0.002  # ECSSD regions below this share of the image are annotation specks


def load_pretraining_set(root: str, limit: int | None = None) -> fo.Dataset:
    """ECSSD's salient objects and COCO's training instances in one Detections field."""
    dataset = fo.Dataset("sam-pretraining")
    folder = os.path.join(root, "ecssd")
    ecssd = fo.Dataset("real-ecssd")
    ecssd.add_dir(
        dataset_type=fo.types.ImageSegmentationDirectory,
        data_path=os.path.join(folder, "images"),
        labels_path=os.path.join(folder, "masks"),
        label_field="mask",
        max_samples=limit,
    )
    foul.segmentations_to_detections(
        ecssd, "mask", FIELD, mask_targets={1: "object"}, mask_types="thing", progress=False
    )
    ecssd = ecssd.filter_labels(FIELD, F("bounding_box")[2] * F("bounding_box")[3] > MIN_REGION)
    coco = real_data.load_coco(root, limit=limit).match_tags("train")
    coco.clone_sample_field("instances", FIELD)
    for part in (ecssd, coco):
        dataset.add_samples(
            fo.Sample(filepath=s.filepath, **{FIELD: s[FIELD]}) for s in part.select_fields(FIELD)
        )
    return dataset


def pretrain(dataset, settings: Settings, folder: str) -> torch.nn.Module:
    """The ``sam_point`` victim's model trained on ``dataset``'s :data:`FIELD` instances."""
    targets = resolve_targets(dataset, FIELD)
    examples = [
        Example(sample_id, path, {FIELD: labels})
        for sample_id, path, labels in zip(*dataset.values(["id", "filepath", FIELD]))
    ]
    progress = tqdm_progress("pretrain sam_point", unit="epoch")
    done = 0

    def on_epoch():
        nonlocal done
        done += 1
        progress(done, settings.epochs)

    return SamVictim(prompt="point").train(examples, targets, settings, folder, on_epoch)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    parser.add_argument("--out", required=True, help="the SAM state dict to write (.pth)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--limit", type=int, help="images per set (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = real_data.data_dir(args.data)

    def run():
        started = time.monotonic()
        dataset = load_pretraining_set(root, args.limit)
        settings = Settings(args.epochs, args.image_size, 16, args.lr, args.seed)
        model = pretrain(dataset, settings, sandbox.TMP)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(buffer.getvalue(), args.out)
        print(
            f"{len(dataset)} images, {dataset.count(f'{FIELD}.detections')} objects, "
            f"{args.epochs} epochs at {args.image_size} px in {time.monotonic() - started:.0f} s"
            f" -> {args.out}"
        )

    sandbox.measure(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
