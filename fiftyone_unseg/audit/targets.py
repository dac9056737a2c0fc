"""What the victims learn: instance masks and class maps from FiftyOne label fields.

``label_field`` gives the instances (YOLO, SAM) and, unless ``semantic_field``
names a separate ``Segmentation``, the class maps (semantic victim):

- ``Detections`` / ``Polylines``: each detection (its mask pasted in its box; a box
  without a mask fills the box) or filled polyline is an instance, later ones over
  earlier ones (as :func:`fiftyone_unseg.labels.segment_map` rasterises them); class
  maps paint the instances' classes;
- ``Segmentation``: the class map is the mask (classes from the mask targets, else
  the values present), without its background value and with its ignore values
  (void) and the values its mask targets do not name marked :data:`IGNORE`, never
  learnt nor scored (see
  :func:`fiftyone_unseg.labels.segment_values`); instances are the connected
  components of each class region.
"""

from __future__ import annotations

from dataclasses import dataclass

import fiftyone as fo
import numpy as np
from scipy import ndimage

from fiftyone_unseg.labels import (
    AUTO,
    PromptSpec,
    SegmentValues,
    fit_mask,
    label_type,
    load_mask,
    segment_map,
    segment_values,
)
from fiftyone_unseg.settings import IGNORE  # noqa: F401  (the audit's name for it)

MIN_COMPONENT_PIXELS = 16  # smaller connected components of a class region are not instances
MAX_CLASSES = 254  # class maps are uint8; 255 marks pixels a loss ignores


@dataclass(frozen=True)
class Targets:
    """How to turn a sample's labels into victim targets.

    instance_classes: class names; an instance of class k has label index k.
    semantic_classes / semantic_values: class k+1 of a class map is ``semantic_classes[k]``,
      stored as pixel value ``semantic_values[k]`` in ``semantic_field`` (or 1..K when
      class maps are painted from the instances).
    segment_values: the class-map field's background value (class 0; None when every
      class is an object) and ignore values (:data:`IGNORE` in class maps).
    """

    label_field: str
    label_type: type
    semantic_field: str | None
    instance_classes: tuple[str, ...]
    semantic_classes: tuple[str, ...]
    semantic_values: tuple[int, ...]
    segment_values: SegmentValues = SegmentValues()

    @property
    def fields(self) -> list[str]:
        """The label fields to read per sample."""
        return [self.label_field] + ([self.semantic_field] if self.semantic_field else [])

    @property
    def instances_derived(self) -> bool:
        """True when instances come from a class map's connected components."""
        return self.label_type is fo.Segmentation

    def has_instance(self, labels: dict) -> bool:
        """Whether ``labels`` hold an instance of ``instance_classes`` (of a class map: a
        pixel of one of its classes)."""
        label = labels.get(self.label_field)
        if label is None:
            return False
        if self.instances_derived:
            mask = load_mask(label)
            return mask is not None and bool(np.isin(mask, self.semantic_values).any())
        items = getattr(label, "detections", None) or getattr(label, "polylines", None) or []
        return any(item.label in self.instance_classes for item in items)

    def instances(self, labels: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks KxHxW (bool) and their class indices K (int64)."""
        label = labels.get(self.label_field)
        if self.instances_derived:
            return _components(self._class_map(label, self.label_field, height, width))
        ids, items = self._paint(label, height, width)
        masks, classes = [], []
        for k, item in enumerate(items, start=1):
            mask = ids == k
            if item.label in self.instance_classes and mask.any():
                masks.append(mask)
                classes.append(self.instance_classes.index(item.label))
        if not masks:
            return np.zeros((0, height, width), bool), np.zeros(0, np.int64)
        return np.stack(masks), np.array(classes, np.int64)

    def instance_class_map(self, labels: dict, height: int, width: int) -> np.ndarray:
        """HxW int64 map of the instances' classes: 0 background, k + 1 for class k (later
        instances over earlier ones)."""
        masks, classes = self.instances(labels, height, width)
        class_map = np.zeros((height, width), np.int64)
        for mask, k in zip(masks, classes):
            class_map[mask] = k + 1
        return class_map

    def semantic(self, labels: dict, height: int, width: int) -> np.ndarray:
        """HxW uint8 class map: 0 background, k+1 for ``semantic_classes[k]``,
        :data:`IGNORE` for ignore values (and, in a Segmentation, for values its mask
        targets do not name)."""
        if self.semantic_field or self.label_type is fo.Segmentation:
            field = self.semantic_field or self.label_field
            return self._class_map(labels.get(field), field, height, width)
        ids, items = self._paint(labels.get(self.label_field), height, width)
        lut = np.zeros(len(items) + 1, np.uint8)
        for k, item in enumerate(items, start=1):
            if item.label in self.semantic_classes:
                lut[k] = self.semantic_classes.index(item.label) + 1
        return lut[ids]

    def _paint(self, label, height: int, width: int) -> tuple[np.ndarray, list]:
        """Segment ids HxW (k for the k-th item) and the items of a Detections/Polylines."""
        spec = PromptSpec(self.label_field, self.label_type, "all")
        ids = segment_map(label, height, width, spec)
        if label is None:
            return ids, []
        return ids, label.detections if self.label_type is fo.Detections else label.polylines

    def _class_map(self, label, field: str, height: int, width: int) -> np.ndarray:
        """A Segmentation's mask as an HxW uint8 class map (nearest-resized to HxW): the
        background value 0, ``semantic_values`` 1..K, every other value (ignore values,
        values the mask targets do not name) :data:`IGNORE`: neither learnt nor scored,
        as the scoring leaves out what its mask targets do not name."""
        mask = None if label is None else load_mask(label)
        if mask is None:
            return np.zeros((height, width), np.uint8)
        if mask.ndim == 3:
            where = label.mask_path or "in the database"
            raise ValueError(
                f"{field!r} holds RGB masks ({where}); the audit needs integer class masks"
            )
        out = np.full(mask.shape, IGNORE, np.uint8)
        background = self.segment_values.background
        if background is not None:
            out[mask == background] = 0
        for k, value in enumerate(self.semantic_values, start=1):
            out[mask == value] = k
        return fit_mask(out, height, width)


def resolve_targets(
    samples, label_field: str, semantic_field: str | None = None, background=AUTO, ignore=AUTO
) -> Targets:
    """Check the fields and collect their classes; ValueError names what is wrong.
    ``background`` and ``ignore`` are those of the class-map field (see
    :func:`fiftyone_unseg.labels.segment_values`)."""
    kind = label_type(samples, label_field)
    if kind is fo.Segmentation:
        if semantic_field not in (None, label_field):
            raise ValueError(
                f"{label_field!r} is a Segmentation and gives the class maps itself; "
                "semantic_field is for instance label fields"
            )
        semantic_field = None
    elif semantic_field and label_type(samples, semantic_field) is not fo.Segmentation:
        raise ValueError(f"semantic_field {semantic_field!r} must be a Segmentation field")
    roles = SegmentValues()
    if kind is fo.Segmentation or semantic_field:
        roles = segment_values(samples, semantic_field or label_field, background, ignore)
    if kind is fo.Segmentation:
        values, names = _segmentation_classes(samples, label_field, roles)
        instance_classes = names
    else:
        list_field = "detections" if kind is fo.Detections else "polylines"
        present = samples.distinct(f"{label_field}.{list_field}.label")
        declared = samples.get_classes(label_field) if samples.has_classes(label_field) else []
        instance_classes = tuple(declared) + tuple(c for c in present if c not in declared)
        if semantic_field:
            values, names = _segmentation_classes(samples, semantic_field, roles)
        else:
            values, names = tuple(range(1, len(instance_classes) + 1)), instance_classes
    if not instance_classes or not names:
        raise ValueError(f"{label_field!r} has no classes: are the samples labelled?")
    if max(len(names), len(instance_classes)) > MAX_CLASSES:
        raise ValueError(f"the audit supports up to {MAX_CLASSES} classes")
    return Targets(
        label_field,
        kind,
        semantic_field,
        tuple(instance_classes),
        tuple(names),
        tuple(values),
        roles,
    )


def _segmentation_classes(
    samples, field: str, roles: SegmentValues
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(pixel values, class names) of a Segmentation field's object classes."""
    targets = samples.get_mask_targets(field)
    if targets:
        if any(isinstance(k, str) and k.startswith("#") for k in targets):
            raise ValueError(f"{field!r} has RGB mask targets; the audit needs integer masks")
        names = {int(k): str(v) for k, v in targets.items()}
        values = roles.objects(sorted(names))
        return tuple(values), tuple(names[v] for v in values)
    found = set()
    for label in samples.values(field):
        try:
            mask = None if label is None else load_mask(label)
        except ValueError:  # the audit leaves such samples out and names them
            continue
        if mask is not None:
            found.update(int(v) for v in np.unique(mask))
    values = tuple(roles.objects(sorted(found)))
    return values, tuple(str(v) for v in values)


def _components(class_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (8-connected) of each class region as instances."""
    masks, classes = [], []
    for k in np.unique(class_map):
        if k in (0, IGNORE):
            continue
        components, count = ndimage.label(class_map == k, structure=np.ones((3, 3)))
        for c in range(1, count + 1):
            mask = components == c
            if mask.sum() >= MIN_COMPONENT_PIXELS:
                masks.append(mask)
                classes.append(int(k) - 1)
    height, width = class_map.shape
    if not masks:
        return np.zeros((0, height, width), bool), np.zeros(0, np.int64)
    return np.stack(masks), np.array(classes, np.int64)
