"""Panoptic labels in COCO's panoptic format, as FiftyOne label fields to protect.

FiftyOne has no panoptic label type nor a COCO-panoptic importer. COCO, Cityscapes
and ADE20K panoptic sets all ship in COCO's panoptic format: a JSON file
(``images``, ``categories`` with ``isthing``, and per image ``segments_info``) and one
PNG per image whose colour encodes the segment id (``R + 256 G + 256^2 B``; 0 is void).
:func:`load_coco_panoptic` turns each image's segments into detections with their
instance masks, so the segments are what :func:`fiftyone_unseg.protect` prompts with:

- ``label_field`` (default ``panoptic``): every segment, things and stuff, with
  ``isthing`` and ``iscrowd`` attributes. Protecting it with the default prompt gives
  every labelled pixel the object budget (the reference's "all segments");
  ``prompt="instance"`` gives each segment its own noise.
- ``things_field`` (default ``things``): the thing segments only (countable objects,
  crowd regions included). Protecting it gives stuff the background budget (the
  reference's "things" mode); it is also what instance victims learn.

:class:`fiftyone_unseg.panoptic_export.COCOPanopticDataset` writes the same format back
(``export_protected``'s ``coco-panoptic``): a protected panoptic set is published in the
format it came in.
"""

from __future__ import annotations

import json
import os

import fiftyone as fo
import numpy as np
from PIL import Image
from scipy import ndimage

from fiftyone_unseg.io import check_file

_CHUNK = 200  # images read before their samples are added (their masks are in memory)
IMAGE_ID_FIELD = "coco_id"  # the sample field of COCO image ids (FiftyOne's importer names it so)


def load_coco_panoptic(
    name: str,
    images_dir: str,
    annotations: str,
    masks_dir: str | None = None,
    label_field: str = "panoptic",
    things_field: str | None = "things",
    overwrite: bool = False,
    progress=None,
) -> fo.Dataset:
    """A persistent FiftyOne dataset ``name`` of a COCO-panoptic set.

    Arguments:
      images_dir: the folder of the images (``images[].file_name``).
      annotations: the panoptic JSON file.
      masks_dir: the folder of the panoptic PNGs (``annotations[].file_name``);
        default: the JSON's path without ``.json``, COCO's layout
        (``annotations/panoptic_val2017.json`` and ``annotations/panoptic_val2017/``).
      label_field, things_field: the fields described in the module docstring
        (``things_field=None``: none).
      overwrite: replace an existing dataset of that name.
      progress: optional ``progress(done, total)`` callable.

    Each sample keeps its image's id as ``coco_id`` and the dataset the categories (ids,
    ``isthing``) in ``info["panoptic_categories"]``, which an export writes back, and
    ``label_field`` in ``info["panoptic_field"]``.

    Raises ValueError naming the image for a missing or unreadable PNG, a PNG of
    another size than its image, or segment ids in a PNG that its ``segments_info``
    does not list, and for an annotation of an image id that no image has; a dataset
    that ``overwrite`` replaces is then left as it was. Images without an annotation get
    no labels. Ids match as text (0 and "0"); ``iscrowd`` "0" is no crowd.
    """
    if fo.dataset_exists(name) and not overwrite:
        raise ValueError(f"dataset {name!r} exists: choose another name or overwrite it")
    with open(annotations) as f:
        data = json.load(f)
    masks_dir = masks_dir or os.path.splitext(annotations)[0]
    categories = {int(c["id"]): c for c in data["categories"]}
    if things_field:
        unknown = [c["name"] for c in categories.values() if "isthing" not in c]
        if unknown:
            raise ValueError(
                f"{annotations}: categories {unknown[:10]} do not say whether they are things "
                "(isthing): load without a things field"
            )
    # ids compared as text: converters write 0 and "0" alike
    by_image = {str(a["image_id"]): a for a in data.get("annotations", [])}
    orphans = by_image.keys() - {str(image["id"]) for image in data["images"]}
    if orphans:
        orphan = by_image[sorted(orphans)[0]]
        raise ValueError(
            f"{annotations}: the annotation {orphan['file_name']} has image_id "
            f"{orphan['image_id']}, which no image has ({len(orphans)} such annotations)"
        )

    def sample(image: dict) -> fo.Sample:
        labels = {"metadata": fo.ImageMetadata(width=image["width"], height=image["height"])}
        if str(image["id"]) in by_image:
            annotation = by_image[str(image["id"])]
            segments = read_segments(annotation, masks_dir, categories, image)
            labels[label_field] = fo.Detections(detections=segments)
            if things_field:  # copies: a label lives in one field
                things = [d.copy() for d in segments if d["isthing"]]
                labels[things_field] = fo.Detections(detections=things)
        path = os.path.join(images_dir, image["file_name"])
        return fo.Sample(filepath=path, **{IMAGE_ID_FIELD: image["id"]}, **labels)

    # loaded under another name first: a dataset it replaces stays until this one is whole
    dataset = fo.Dataset(f"{name}.unseg-loading", overwrite=True, persistent=True)
    try:
        for start in range(0, len(data["images"]), _CHUNK):  # a chunk's masks in memory
            chunk = data["images"][start : start + _CHUNK]
            dataset.add_samples([sample(image) for image in chunk], progress=False)
            if progress is not None:
                progress(start + len(chunk), len(data["images"]))
    except BaseException:
        dataset.delete()
        raise
    names = sorted({c["name"] for c in categories.values()})
    dataset.classes = {f: names for f in (label_field, things_field) if f}
    dataset.info["panoptic_categories"] = list(categories.values())
    dataset.info["panoptic_field"] = label_field  # what a coco-panoptic export offers first
    dataset.save()
    if fo.dataset_exists(name):  # the replaced dataset's protected copies go with it
        from fiftyone_unseg.protect import delete_protection_files

        delete_protection_files(fo.load_dataset(name))
        fo.delete_dataset(name)
    dataset.name = name
    return dataset


def read_segments(annotation: dict, masks_dir: str, categories: dict, image: dict) -> list:
    """The detections of one image's panoptic PNG, in ``segments_info`` order."""
    png = os.path.join(masks_dir, annotation["file_name"])
    where = f"{image['file_name']} (panoptic mask {png})"
    try:
        check_file(png, "panoptic mask")
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
    except OSError as e:
        raise ValueError(f"{where}: cannot read it ({e})") from e
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    height, width = rgb.shape[:2]
    if (width, height) != (image["width"], image["height"]):
        raise ValueError(
            f"{where}: mask is {width}x{height}, the image {image['width']}x{image['height']}"
        )
    ids = segment_ids(rgb)
    present, index = np.unique(ids, return_inverse=True)
    index = index.reshape(ids.shape)
    info = {int(s["id"]): s for s in annotation["segments_info"]}
    unknown = sorted(int(i) for i in present if i and i not in info)
    if unknown:
        raise ValueError(f"{where}: segment ids {unknown[:10]} are not in its segments_info")
    boxes = ndimage.find_objects(index + 1)  # label k + 1 is the k-th present id
    detections = []
    for segment_id, segment in info.items():
        k = np.searchsorted(present, segment_id)
        if k == len(present) or present[k] != segment_id:
            continue  # listed but without pixels
        rows, cols = boxes[k]
        category = categories.get(int(segment["category_id"]))
        if category is None:
            raise ValueError(
                f"{where}: segment {segment_id} has category_id {segment['category_id']}, "
                "which is not in the categories"
            )
        box = [
            cols.start / width,
            rows.start / height,
            (cols.stop - cols.start) / width,
            (rows.stop - rows.start) / height,
        ]
        detections.append(
            fo.Detection(
                label=category["name"],
                bounding_box=box,
                mask=index[rows, cols] == k,
                isthing=bool(int(category["isthing"])) if "isthing" in category else None,
                iscrowd=bool(int(segment.get("iscrowd", 0))),  # "0" is no crowd
                segment_id=int(segment_id),
            )
        )
    return detections


def segment_ids(rgb: np.ndarray) -> np.ndarray:
    """The segment ids of a panoptic PNG's HxWx3 colours: ``R + 256 G + 256^2 B``."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_colours(ids: np.ndarray) -> np.ndarray:
    """The HxWx3 uint8 colours of HxW segment ids (the inverse of :func:`segment_ids`)."""
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def unique_image_ids(samples) -> dict | None:
    """filepath -> ``coco_id`` of ``samples``, if each has a distinct one, else None."""
    if not samples.has_field(IMAGE_ID_FIELD):
        return None
    paths, ids = samples.values(["filepath", IMAGE_ID_FIELD])
    if None in ids or len(set(ids)) != len(ids):
        return None
    return dict(zip(paths, ids))
