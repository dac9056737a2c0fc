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
        return fo.Sample(filepath=path, **{IMAGE_ID_FIELD: image["id"]}, **labels)

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
    segment: a detection needs an instance mask (a box alone is no segment; ValueError
    naming the image), a polyline is its filled polygon. Where labels overlap the later
    one keeps the pixels, and a label left without pixels is not written. A label's
    ``segment_id`` attribute is kept (unless another label of its image has it already);
    the others get the smallest free ids. Its ``iscrowd`` attribute is written (0
    without one). A sample whose label is None gets no annotation.

    Image ids are the samples' ``coco_id`` when every sample has a distinct one, else
    1, 2, ... Categories are ``categories``, else those the dataset was loaded with
    (``info["panoptic_categories"]`` of :func:`load_coco_panoptic`, or the
    ``info["categories"]`` of FiftyOne's COCO importer, as things); class names not
    among them get the next free ids, with ``isthing`` from their labels' ``isthing``
    attribute (1 without one).

    Arguments:
      export_dir, data_path, labels_path, export_media, rel_dir, image_format: as
        FiftyOne's COCO exporter; the PNGs go to ``labels_path`` without ``.json``.
      categories: a list of ``{"id", "name", "isthing"}`` dicts.
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
        self._categories = self._category_ids = self._pngs = None

    @property
    def requires_image_metadata(self):
        return True

    @property
    def label_cls(self):
        return (fo.Detections, fo.Polylines)

    def setup(self):
        self._images, self._annotations, self._pngs = [], [], set()
        self._use_categories(self.categories or [])
        self._media = foud.ImageExporter(
            self.export_media,
            export_path=self.data_path,
            rel_dir=self.rel_dir,
            default_ext=self.image_format,
        )
        self._media.setup()

    def log_collection(self, sample_collection):
        if self.categories is None:
            info = sample_collection.info
            loaded = info.get("panoptic_categories") or [
                {"id": c["id"], "name": c["name"], "isthing": 1} for c in info.get("categories", [])
            ]
            self._use_categories(loaded)
        self._image_ids = unique_image_ids(sample_collection)

    def export_sample(self, image_or_path, label, metadata=None):
        _, name = self._media.export(image_or_path)
        metadata = metadata or fom.ImageMetadata.build_for(image_or_path)
        ids = self._image_ids
        image_id = ids[image_or_path] if ids is not None else len(self._images) + 1
        width, height = metadata.width, metadata.height
        self._images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        if label is None:
            return
        items = label.detections if isinstance(label, fo.Detections) else label.polylines
        boxes_only = [i.label for i in items if isinstance(i, fo.Detection) and not i.has_mask]
        if boxes_only:
            raise ValueError(
                f"{name}: detections {boxes_only[:5]} have no instance mask, and a box is no "
                "panoptic segment: export boxes in the coco format"
            )
        index, _ = segment_classes(label, height, width, PromptSpec("", type(label), "all"))
        numbers = np.array([0, *_segment_numbers(items)], np.uint32)  # 1..K -> segment id
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
        png = self._png_name(name)
        buffer = io.BytesIO()
        Image.fromarray(id_colours(numbers[index])).save(buffer, format="PNG")
        atomic_write_bytes(buffer.getvalue(), os.path.join(self.masks_dir, png))
        self._annotations.append(
            {"image_id": image_id, "file_name": png, "segments_info": segments}
        )

    def close(self, *args):
        data = {
            "info": {"description": "exported by fiftyone-unseg"},
            "images": self._images,
            "annotations": self._annotations,
            "categories": self._categories,
        }
        atomic_write_bytes(json.dumps(data).encode(), self.labels_path)
        self._media.close()

    def _use_categories(self, categories: list) -> None:
        self._categories = [dict(c) for c in categories]
        self._category_ids = {c["name"]: int(c["id"]) for c in self._categories}

    def _category(self, item) -> int:
        """The category id of ``item``'s label; a new name gets the next free id."""
        name = str(item.label)
        if name not in self._category_ids:
            category_id = max(self._category_ids.values(), default=0) + 1
            isthing = getattr(item, "isthing", None)
            isthing = 1 if isthing is None else int(bool(isthing))
            self._categories.append({"id": category_id, "name": name, "isthing": isthing})
            self._category_ids[name] = category_id
        return self._category_ids[name]

    def _png_name(self, image_name: str) -> str:
        """``image_name`` with ``.png``; ``-2``, ``-3``, ... where two images share a stem."""
        base = os.path.splitext(image_name)[0]
        png, n = base + ".png", 1
        while png.lower() in self._pngs:
            n += 1
            png = f"{base}-{n}.png"
        self._pngs.add(png.lower())
        return png


def unique_image_ids(samples) -> dict | None:
    """filepath -> ``coco_id`` of ``samples``, if each has a distinct one, else None."""
    if not samples.has_field(IMAGE_ID_FIELD):
        return None
    paths, ids = samples.values(["filepath", IMAGE_ID_FIELD])
    if None in ids or len(set(ids)) != len(ids):
        return None
    return dict(zip(paths, ids))


def _segment_numbers(items) -> list[int]:
    """A distinct segment id per label: its ``segment_id`` when valid and not taken by an
    earlier label, else the smallest id no label has."""
    own = [getattr(item, "segment_id", None) for item in items]
    valid = [isinstance(i, (int, np.integer)) and 0 < i < 2**24 for i in own]
    taken, numbers, free = {i for i, ok in zip(own, valid) if ok}, [], 1
    kept = set()
    for segment_id, ok in zip(own, valid):
        if ok and segment_id not in kept:
            kept.add(segment_id)
            numbers.append(int(segment_id))
            continue
        while free in taken:
            free += 1
        taken.add(free)
        numbers.append(free)
    return numbers
