"""COCO's panoptic format as a FiftyOne export type: what ``export_protected``'s
``coco-panoptic`` writes, and :func:`fiftyone_unseg.panoptic.load_coco_panoptic` reads.

Its own module, imported on first use: FiftyOne's classes are subclassed here, and
``import fiftyone_unseg`` must work where only the trainer runs, without FiftyOne.
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

from fiftyone_unseg.io import atomic_write_bytes, unclashed_name
from fiftyone_unseg.labels import PromptSpec, segment_classes
from fiftyone_unseg.panoptic import id_colours, unique_image_ids


class COCOPanopticDataset(fo.types.LabeledImageDataset):
    """COCO's panoptic format as a FiftyOne dataset type (export only; import with
    :func:`~fiftyone_unseg.panoptic.load_coco_panoptic`). See :class:`COCOPanopticDatasetExporter`."""

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
        png = unclashed_name(os.path.splitext(name)[0], ".png", self._pngs)  # stems may repeat
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
