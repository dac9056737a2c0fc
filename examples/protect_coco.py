"""Protect a COCO instance-segmentation dataset, then export the protected copy as COCO.

Shows the SDK on data in a standard format: FiftyOne's importer reads the images and
the COCO JSON (polygon or RLE segmentations become instance masks), one call to
``fiftyone_unseg.protect`` writes a protected copy of every image (the originals are
never touched), and ``fiftyone_unseg.export_protected`` writes the protected images,
under the original file names and without the marker that says they are protected,
with the same labels as a new COCO dataset that can be shared instead of the original.

    .venv/bin/python examples/protect_coco.py IMAGES_DIR labels.json
    .venv/bin/python examples/protect_coco.py IMAGES_DIR labels.json --export protected-coco/
    .venv/bin/python examples/protect_coco.py IMAGES_DIR MASKS_DIR --format segmentation-dir
    .venv/bin/python examples/protect_coco.py IMAGES_DIR panoptic.json --format coco-panoptic

``--format segmentation-dir`` reads an image folder and a folder of PNG class maps with
the same file stems (0 = background), as VOC's ``JPEGImages`` + ``SegmentationClass``.
``--format coco-panoptic`` reads COCO's panoptic format (also Cityscapes' and ADE20K's
panoptic sets): the JSON and, next to it, the folder of panoptic PNGs of the same name.
Things are protected, stuff gets the background budget (the reference's "things"
mode); ``--all-segments`` protects every labelled pixel. The export is in COCO's
panoptic format again, with every segment, things and stuff.
Without ``--generator`` the default generator that ships with the package is used;
``examples/train_generator_on_folders.py`` trains your own. FiftyOne turns COCO
segmentations into masks with ``pycocotools``; without it, ``--polylines`` loads
polygon segmentations as filled polygons, which protect the same pixels.
"""

from __future__ import annotations

import argparse
import sys

import fiftyone as fo

import fiftyone_unseg as fu
from fiftyone_unseg.panoptic import load_coco_panoptic

LABEL_FIELD = "ground_truth"
THINGS_FIELD = "things"  # panoptic sets: the thing segments only
FORMATS = {
    "coco": fo.types.COCODetectionDataset,
    "segmentation-dir": fo.types.ImageSegmentationDirectory,
}
PANOPTIC = "coco-panoptic"  # fiftyone_unseg.panoptic: FiftyOne has no such format


def import_dataset(name: str, images: str, labels: str, data_format: str, polylines: bool):
    """A fresh FiftyOne dataset ``name`` of the images and their labels in ``LABEL_FIELD``.

    An earlier dataset of that name is replaced, its protected files deleted.
    """
    if fo.dataset_exists(name):
        fu.restore(fo.load_dataset(name), delete_protected=True)
    if data_format == PANOPTIC:
        return load_coco_panoptic(
            name, images, labels, label_field=LABEL_FIELD, things_field=THINGS_FIELD, overwrite=True
        )
    options = {"label_field": LABEL_FIELD}
    if data_format == "coco":  # the image ids too: the export keeps them
        options = {
            "label_types": "segmentations",
            "use_polylines": polylines,
            "include_id": True,
            "label_field": {"segmentations": LABEL_FIELD, "coco_id": "coco_id"},
        }
    return fo.Dataset.from_dir(
        dataset_type=FORMATS[data_format],
        data_path=images,
        labels_path=labels,
        name=name,
        overwrite=True,
        persistent=True,
        **options,
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", help="folder of the images")
    p.add_argument("labels", help="COCO JSON file (or, with --format segmentation-dir, masks dir)")
    p.add_argument(
        "--all-segments", action="store_true", help="coco-panoptic: protect stuff as objects too"
    )
    p.add_argument(
        "--format", choices=[*FORMATS, PANOPTIC], default="coco", help="layout of the labels"
    )
    p.add_argument("--generator", help="generator checkpoint dir (default: the shipped one)")
    p.add_argument("--name", default="unseg-coco-example", help="FiftyOne dataset to create")
    p.add_argument("--export", metavar="DIR", help="export the protected copy here, same format")
    p.add_argument("--polylines", action="store_true", help="COCO polygons as filled polygons")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:  # load first: a missing generator should stop us before the import
        generator = fu.load_generator(args.generator, device=args.device)
    except FileNotFoundError as error:
        print(
            f"{error}\nPass --generator PATH with a checkpoint directory; "
            "examples/train_generator_on_folders.py trains one.",
            file=sys.stderr,
        )
        return 2
    dataset = import_dataset(args.name, args.images, args.labels, args.format, args.polylines)
    things = args.format == PANOPTIC and not args.all_segments
    field = THINGS_FIELD if things else LABEL_FIELD
    summary = fu.protect(dataset, field, generator=generator, device=args.device)
    print(
        f"Protected {summary['protected']} of {summary['total']} images "
        f"({summary['no_segments']} without segments, {summary['failed']} failed) in "
        f"{summary['seconds']:.0f} s.\nProtected images: {summary['output_dir']}"
    )
    if summary["protected"]:
        print(
            f"Mean PSNR {dataset.mean('unseg.psnr'):.1f} dB, largest change "
            f"{255 * dataset.max('unseg.linf'):.1f}/255."
        )
    for failed in summary["failures"]:
        print(f"  failed: {failed['filepath']}: {failed['reason']}")
    if args.export:
        # a panoptic set is published whole: every segment, not just the protected field;
        # images that failed are left out (listed above), never published unprotected
        fu.export_protected(
            dataset, args.export, args.format, label_field=LABEL_FIELD,
            skip_unprotected=bool(summary["failed"]),
        )  # fmt: skip
        left_out = f" without the {summary['failed']} that failed" if summary["failed"] else ""
        print(f"Protected copy exported to {args.export}{left_out}")
    print(f"Compare clean and protected in the App: fiftyone app launch {dataset.name}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
