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

:class:`COCOPanopticDataset` writes the same format back (``export_protected``'s
``coco-panoptic``): a protected panoptic set is published in the format it came in.
"""

from __future__ import annotations

import io
import json
import os

import fiftyone as fo
import fiftyone.core.metadata as fom
import fiftyone.utils.data as foud
import numpy as np
from PIL import Image
from scipy import ndimage

from fiftyone_unseg.io import atomic_write_bytes, check_file
from fiftyone_unseg.labels import PromptSpec, segment_classes

_CHUNK = 200  # images read before their samples are added (their masks are in memory)


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
    does not list. Images without an annotation get no labels.
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
    by_image = {a["image_id"]: a for a in data.get("annotations", [])}

    def sample(image: dict) -> fo.Sample:
        labels = {"metadata": fo.ImageMetadata(width=image["width"], height=image["height"])}
        if image["id"] in by_image:
            segments = read_segments(by_image[image["id"]], masks_dir, categories, image)
            labels[label_field] = fo.Detections(detections=segments)
            if things_field:  # copies: a label lives in one field
                things = [d.copy() for d in segments if d["isthing"]]
                labels[things_field] = fo.Detections(detections=things)
        path = os.path.join(images_dir, image["file_name"])
        return fo.Sample(filepath=path, coco_id=image["id"], **labels)

    dataset = fo.Dataset(name, overwrite=overwrite, persistent=True)
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
                isthing=bool(category["isthing"]) if "isthing" in category else None,
                iscrowd=bool(segment.get("iscrowd", 0)),
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


class COCOPanopticDataset(fo.types.LabeledImageDataset):
    """COCO's panoptic format as a FiftyOne dataset type (export only; import with
    :func:`load_coco_panoptic`). See :class:`COCOPanopticDatasetExporter`."""

    def get_dataset_exporter_cls(self):
        return COCOPanopticDatasetExporter


class COCOPanopticDatasetExporter(foud.LabeledImageDatasetExporter, foud.ExportPathsMixin):
    """Writes a Detections (or Polylines) field in COCO's panoptic format::

        <export_dir>/data/<image>          the images
        <export_dir>/panoptic.json         images, annotations (segments_info), categories
        <export_dir>/panoptic/<image>.png  the segment ids as colours, 0 void

    which :func:`load_coco_panoptic` reads back (``images_dir=data``). Each label is one
    segment; where labels overlap the later one keeps the pixels, and a label left
    without pixels is not written. A label's ``segment_id`` attribute is kept when every
    label of its image has a distinct one, else segments are numbered 1, 2, ...; its
    ``iscrowd`` attribute is written (0 without one). Categories and image ids are those
    the dataset was loaded with (``info["panoptic_categories"]``, ``coco_id``) when it
    has them; new class names get the next free ids, with ``isthing`` from their labels'
    ``isthing`` attribute (1 without one).

    Arguments:
      export_dir, data_path, labels_path, export_media, rel_dir, image_format: as
        FiftyOne's COCO exporter; the PNGs go to ``labels_path`` without ``.json``.
      categories: a list of ``{"id", "name", "isthing"}`` dicts, instead of the
        dataset's.
    """

    def __init__(
        self,
        export_dir=None,
        data_path=None,
        labels_path=None,
        export_media=None,
        rel_dir=None,
        image_format=None,
        categories=None,
    ):
        data_path, export_media = self._parse_data_path(
            export_dir=export_dir, data_path=data_path, export_media=export_media, default="data/"
        )
        labels_path = self._parse_labels_path(
            export_dir=export_dir, labels_path=labels_path, default="panoptic.json"
        )
        super().__init__(export_dir=export_dir)
        self.data_path, self.labels_path = data_path, labels_path
        self.export_media, self.rel_dir, self.image_format = export_media, rel_dir, image_format
        self.categories = categories
        self.masks_dir = os.path.splitext(labels_path)[0]
        self._media = self._images = self._annotations = self._image_ids = None
        self._category_ids = self._things = None

    @property
    def requires_image_metadata(self):
        return True

    @property
    def label_cls(self):
        return (fo.Detections, fo.Polylines)

    def setup(self):
        self._images, self._annotations, self._things = [], [], {}
        self._media = foud.ImageExporter(
            self.export_media,
            export_path=self.data_path,
            rel_dir=self.rel_dir,
            default_ext=self.image_format,
        )
        self._media.setup()

    def log_collection(self, sample_collection):
        if self.categories is None:
            self.categories = sample_collection.info.get("panoptic_categories")
        self.categories = [dict(c) for c in self.categories or []]
        self._category_ids = {c["name"]: int(c["id"]) for c in self.categories}
        if sample_collection.has_field("coco_id"):
            ids = sample_collection.values(["filepath", "coco_id"])
            self._image_ids = {path: i for path, i in zip(*ids) if i is not None}

    def export_sample(self, image_or_path, label, metadata=None):
        out_path, name = self._media.export(image_or_path)
        metadata = metadata or fom.ImageMetadata.build_for(image_or_path)
        image_id = (self._image_ids or {}).get(image_or_path, len(self._images) + 1)
        width, height = metadata.width, metadata.height
        self._images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        if label is None:
            return
        items = label.detections if isinstance(label, fo.Detections) else label.polylines
        spec = PromptSpec("", type(label), "all")
        index, _ = segment_classes(label, height, width, spec)  # 1..K, later ones on top
        own = [getattr(item, "segment_id", None) for item in items]
        if len(set(own)) == len(own) and all(_valid_id(i) for i in own):
            numbers = np.array([0, *own], np.uint32)
        else:
            numbers = np.arange(len(items) + 1, dtype=np.uint32)
        areas = np.bincount(index.ravel(), minlength=len(items) + 1)
        boxes = ndimage.find_objects(index)
        segments = []
        for k, item in enumerate(items, 1):
            category_id = self._category(item)  # listed even when covered
            if not areas[k]:
                continue  # covered by later labels
            rows, cols = boxes[k - 1]
            box = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
            segments.append(
                {
                    "id": int(numbers[k]),
                    "category_id": category_id,
                    "iscrowd": int(bool(getattr(item, "iscrowd", 0))),
                    "bbox": box,
                    "area": int(areas[k]),
                }
            )
        png = os.path.splitext(name)[0] + ".png"
        buffer = io.BytesIO()
        Image.fromarray(id_colours(numbers[index])).save(buffer, format="PNG")
        atomic_write_bytes(buffer.getvalue(), os.path.join(self.masks_dir, png))
        self._annotations.append(
            {"image_id": image_id, "file_name": png, "segments_info": segments}
        )

    def close(self, *args):
        for name, category_id in self._category_ids.items():
            if name in self._things:
                self.categories.append(
                    {"id": category_id, "name": name, "isthing": self._things[name]}
                )
        data = {
            "info": {"description": "exported by fiftyone-unseg"},
            "images": self._images,
            "annotations": self._annotations,
            "categories": self.categories,
        }
        atomic_write_bytes(json.dumps(data).encode(), self.labels_path)
        self._media.close()

    def _category(self, item) -> int:
        """The category id of ``item``'s label; a new name gets the next free id."""
        name = str(item.label)
        if name not in self._category_ids:
            self._category_ids[name] = max(self._category_ids.values(), default=0) + 1
            isthing = getattr(item, "isthing", None)
            self._things[name] = 1 if isthing is None else int(bool(isthing))
        return self._category_ids[name]


def _valid_id(value) -> bool:
    return isinstance(value, (int, np.integer)) and 0 < value < 2**24
