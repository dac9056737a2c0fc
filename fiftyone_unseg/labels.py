"""Object masks from FiftyOne label fields: what the generator is prompted with.

A label field is rasterised into a *segment map*: an HxW integer array, 0 for
background and 1..K for the K segments. Segments are

- ``fo.Segmentation``: one per class value present in the mask (semantic masks
  have no instances), except the background value and the ignore values (see
  :func:`segment_values`); masks of another size are stretched over the image (nearest),
  as the App draws them (:func:`fit_mask`). Palette PNGs (VOC's masks) are read as
  their palette indices, the class values; RGB masks as one value per colour, which
  hex mask targets ("#rrggbb") name;
- ``fo.Detections``: one per detection, its instance mask pasted into its box, whose
  edges round to the nearest pixel as FiftyOne's COCO importer cut the mask (FiftyOne's
  ``to_segmentation`` truncates them, which moves an edge by a pixel wherever
  ``x / W * W`` lands just below a whole number); a mask of another size is stretched
  over the box (nearest); a detection without a mask fills its whole box (the best
  extent available);
- ``fo.Polylines``: one per polyline, always rasterised as a filled polygon
  (segmentation outlines are regions, whatever their ``filled`` flag says).

Later segments overwrite earlier ones where they overlap. Polylines are rasterised by
FiftyOne's own ``to_segmentation``, so they match what the App draws.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import fiftyone as fo
import fiftyone.core.fields as fof
import numpy as np
from PIL import Image

from fiftyone_unseg.io import colour_values

SUPPORTED_TYPES = (fo.Segmentation, fo.Detections, fo.Polylines)
PROMPT_MODES = ("all", "instance")
LIST_FIELDS = {fo.Detections: "detections", fo.Polylines: "polylines"}
# Mask-target names that mark a Segmentation's background / its not-a-class pixels.
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "__background__"})
IGNORE_NAMES = frozenset(
    {"void", "ignore", "ignored", "unlabeled", "unlabelled", "dontcare", "don't care"}
)
VOID_VALUE = 255  # the usual "not a class" value (VOC, CamVid, Cityscapes train ids)
AUTO = "auto"


@dataclass(frozen=True)
class SegmentValues:
    """What a Segmentation's pixel values are: ``background`` (the value that is no
    object, or None when every class is an object) and ``ignore`` (values that are no
    class at all, such as void: never an object, never scored)."""

    background: int | None = 0
    ignore: frozenset[int] = frozenset()

    @property
    def is_default(self) -> bool:
        """True for FiftyOne's convention: 0 is background, nothing is ignored."""
        return self.background == 0 and not self.ignore

    def describe(self) -> str:
        """E.g. ``background=none;ignore=255`` (empty for the default)."""
        if self.is_default:
            return ""
        background = "none" if self.background is None else str(self.background)
        ignore = ",".join(str(v) for v in sorted(self.ignore)) or "none"
        return f"background={background};ignore={ignore}"

    def objects(self, values) -> list[int]:
        """``values`` without the background and the ignore values."""
        return [v for v in values if v != self.background and v not in self.ignore]


@dataclass(frozen=True)
class PromptSpec:
    """Which segments of which label field prompt the generator.

    mode: "all" (union of all segments), "classes" (union of ``classes``) or
    "instance" (one prompt per segment). ``values`` are the Segmentation pixel
    values of ``classes``; ``value_names`` the (pixel value, class name) pairs of its
    mask targets, which name RGB colours when ``rgb_targets``; ``segment_values`` its
    background and ignore values.
    """

    label_field: str
    label_type: type
    mode: str
    classes: tuple[str, ...] = ()
    values: frozenset[int] = frozenset()
    value_names: tuple[tuple[int, str], ...] = ()
    rgb_targets: bool = False
    segment_values: SegmentValues = SegmentValues()

    @property
    def name(self) -> str:
        """The mode as recorded on protected samples: all, instance or classes:a,b (a
        Segmentation's with their values, classes:a,b=1,2), then
        ``;background=...;ignore=...`` where those differ from FiftyOne's convention."""
        name = f"classes:{','.join(self.classes)}" if self.mode == "classes" else self.mode
        if self.values:  # a Segmentation's: the values the mask targets give those classes
            name += f"={','.join(str(v) for v in sorted(self.values))}"
        roles = self.segment_values.describe()
        return f"{name};{roles}" if roles else name

    @property
    def names_digest(self) -> str:
        """8 hex digits naming the mask targets' value -> class pairs (class keys draw each
        region's texture by its class name)."""
        return hashlib.blake2b(repr(sorted(self.value_names)).encode(), digest_size=4).hexdigest()


def supported_label_fields(samples) -> list[str]:
    """Names of the top-level label fields of a supported type, sorted."""
    schema = samples.get_field_schema(embedded_doc_type=SUPPORTED_TYPES)
    return sorted(schema)


def label_type(samples, label_field: str) -> type:
    """The label class of ``label_field``; ValueError if missing or unsupported."""
    field = samples.get_field(label_field)
    if field is None:
        raise ValueError(
            f"label field {label_field!r} does not exist; label fields of a supported type: "
            f"{supported_label_fields(samples) or 'none'}"
        )
    doc_type = getattr(field, "document_type", None)
    if doc_type not in SUPPORTED_TYPES:
        raise ValueError(
            f"label field {label_field!r} holds {getattr(doc_type, '__name__', type(field).__name__)}"
            f"; supported are {', '.join(t.__name__ for t in SUPPORTED_TYPES)} "
            f"(fields here: {supported_label_fields(samples) or 'none'})"
        )
    return doc_type


def _mask_targets(samples, label_field: str) -> dict:
    """Pixel value -> class name of a Segmentation field (integers; RGB hex as 0xRRGGBB)."""
    targets = samples.get_mask_targets(label_field) or {}
    return {_target_value(k): v for k, v in targets.items()}


def _target_value(key) -> int:
    return int(key[1:], 16) if isinstance(key, str) and key.startswith("#") else int(key)


def class_names(samples, label_field: str, roles: SegmentValues | None = None) -> list[str]:
    """The class names a prompt can choose from: mask targets (but the background and
    ignore values ``roles``, default: :func:`segment_values`'s) or the labels present."""
    kind = label_type(samples, label_field)
    if kind is fo.Segmentation:
        roles = roles or segment_values(samples, label_field)
        targets = _mask_targets(samples, label_field)
        return [targets[v] for v in roles.objects(sorted(targets))]
    return sorted(samples.distinct(f"{label_field}.{LIST_FIELDS[kind]}.label"))


def segment_values(samples, label_field: str, background=AUTO, ignore=AUTO) -> SegmentValues:
    """The background and ignore values of a Segmentation field.

    ``background``: a pixel value, None (every class is an object) or "auto": the value
    whose mask target is named "background" (or "bg"), else 0 unless the mask targets
    name 0 as a class (CamVid's 0 is sky), in which case there is none. ``ignore``: pixel
    values or "auto": those whose mask targets are named "void", "ignore", "unlabeled"
    (...), and 255 when there is no background value and the mask targets do not name 255
    (the void of sets whose 0 is a class: CamVid, Cityscapes train ids). Other label
    types: the default.
    """
    if label_type(samples, label_field) is not fo.Segmentation:
        return SegmentValues()
    targets = _mask_targets(samples, label_field)
    names = {value: str(name).strip().lower() for value, name in targets.items()}
    if background == AUTO:
        named = [v for v, n in names.items() if n in BACKGROUND_NAMES]
        background = named[0] if named else (0 if 0 not in names else None)
    if ignore == AUTO:
        ignore = {v for v, n in names.items() if n in IGNORE_NAMES}
        if background is None and targets and VOID_VALUE not in targets:
            ignore.add(VOID_VALUE)
    values = SegmentValues(
        None if background is None else int(background), frozenset(int(v) for v in ignore)
    )
    if values.background is not None and values.background in values.ignore:
        raise ValueError(
            f"{label_field!r}: value {values.background} cannot be both background and ignored"
        )
    return values


def resolve_prompt(
    samples, label_field: str, prompt="all", background=AUTO, ignore=AUTO
) -> PromptSpec:
    """Check ``prompt`` ("all", "instance" or a list of class names) against the field.

    Segmentation class names resolve through the dataset's mask targets; a name
    that is an integer string is taken as a pixel value. ``background`` and ``ignore``:
    see :func:`segment_values`.
    """
    kind = label_type(samples, label_field)
    names, rgb = (), False
    roles = segment_values(samples, label_field, background, ignore)
    if kind is fo.Segmentation:
        names = tuple(sorted(_mask_targets(samples, label_field).items()))
        rgb = fof.is_rgb_mask_targets(samples.get_mask_targets(label_field) or {})
    if isinstance(prompt, str):
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {PROMPT_MODES} or a list of class names")
        return PromptSpec(
            label_field, kind, prompt, value_names=names, rgb_targets=rgb, segment_values=roles
        )
    classes = tuple(sorted(set(prompt)))
    if not classes:
        raise ValueError("prompt: the list of class names is empty")
    known = class_names(samples, label_field, roles)
    unknown = [
        c for c in classes if c not in known and not (kind is fo.Segmentation and c.isdigit())
    ]
    if unknown:
        by_name = {name: value for value, name in _mask_targets(samples, label_field).items()}
        roles_of = {
            c: "the background value" if by_name[c] == roles.background else "an ignore value"
            for c in unknown
            if c in by_name
        }
        why = "; ".join(f"{c!r} is {role}" for c, role in roles_of.items())
        raise ValueError(
            f"classes {unknown} are not object classes of {label_field!r}"
            f"{f' ({why}: set background / ignore to change that)' if why else ''}; "
            f"available: {known or 'none'}"
        )
    values = frozenset()
    if kind is fo.Segmentation:
        by_name = {name: value for value, name in _mask_targets(samples, label_field).items()}
        values = frozenset(by_name[c] if c in by_name else int(c) for c in classes)
    return PromptSpec(label_field, kind, "classes", classes, values, names, rgb, roles)


def segment_map(label, height: int, width: int, spec: PromptSpec) -> np.ndarray:
    """Rasterise the segments of ``label`` chosen by ``spec`` at HxW.

    Returns an HxW integer array: 0 background, 1..K the K segments.
    """
    return segment_classes(label, height, width, spec)[0]


def segment_classes(label, height: int, width: int, spec: PromptSpec) -> tuple[np.ndarray, list]:
    """:func:`segment_map` and the class name of each segment (K names; a Segmentation
    value without a mask target is named by its value)."""
    if label is None:
        return np.zeros((height, width), np.uint8), []
    if isinstance(label, fo.Segmentation):
        return _semantic_segments(label, height, width, spec)
    items = getattr(label, LIST_FIELDS[type(label)])
    if spec.mode == "classes":
        items = [item for item in items if item.label in spec.classes]
    ids = np.zeros((height, width), _id_type(len(items)))
    for k, item in enumerate(items, start=1):
        if isinstance(item, fo.Polyline):
            shapes = [shape for shape in item.points if len(shape)]  # OpenCV fails on []
            if shapes:
                fo.Polyline(points=shapes, closed=True, filled=True).to_segmentation(
                    mask=ids, target=k
                )
        else:
            _paste_detection(ids, item, k)
    return ids, [str(item.label) for item in items]


def present_values(array: np.ndarray) -> list[int]:
    """The distinct non-zero values of a non-negative integer array, sorted."""
    return [v for v in _all_values(array) if v]


def _all_values(array: np.ndarray) -> list[int]:
    """The distinct values of a non-negative integer array, 0 included, sorted."""
    if array.dtype.itemsize <= 2:  # counting is O(size), sorting is not
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel()))]
    return [int(v) for v in np.unique(array)]


def _id_type(count: int) -> type:
    """The integer type of a map of ``count`` segments."""
    return np.uint16 if count < 2**16 else np.int32


def _paste_detection(ids: np.ndarray, detection: fo.Detection, k: int) -> None:
    """Set the pixels of ``detection`` in ``ids`` (HxW) to ``k``: its mask (non-zero;
    above 0.5 for a float mask; none: the whole box) in its box, edges rounded to the
    nearest pixel, the parts outside the frame cut off."""
    height, width = ids.shape
    x, y, w, h = detection.bounding_box
    # pixel edges as FiftyOne's COCO importer rounds them: the float error of a relative
    # coordinate must not decide a tie (61.5 / 480 * 480 is 61.49999999999999)
    x0, x1 = round(round(x * width, 6)), round(round((x + w) * width, 6))
    y0, y1 = round(round(y * height, 6)), round(round((y + h) * height, 6))
    top, bottom, left, right = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
    if bottom <= top or right <= left:
        return
    mask = load_mask(detection) if detection.has_mask else None
    mask = np.ones((1, 1), bool) if mask is None else np.asarray(mask)
    mask = mask > 0.5 if mask.dtype.kind == "f" else mask != 0  # probabilities, or 0/1/255
    if mask.ndim == 3:  # colour: any colour channel set (alpha ignored)
        mask = mask[..., :3].any(axis=2)
    inside = fit_mask(mask.astype(np.uint8), y1 - y0, x1 - x0) > 0
    ids[top:bottom, left:right][inside[top - y0 : bottom - y0, left - x0 : right - x0]] = k


def load_mask(label) -> np.ndarray | None:
    """A Segmentation's or Detection's mask (in the database or at ``mask_path``; a
    palette PNG as its indices and a grey one with alpha as its levels, HxW, where
    FiftyOne would read their colours); ValueError naming the mask file if it cannot be
    read."""
    try:
        if label.mask is None and label.mask_path is not None:
            with Image.open(label.mask_path) as image:
                if image.mode in ("P", "PA", "LA"):  # alpha ignored
                    return np.asarray(image.getchannel(0))
        return label.get_mask()
    except Exception as error:  # PIL / OpenCV / eta raise many kinds
        raise ValueError(f"cannot read the mask {label.mask_path}: {error}") from error


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` (HxW integers) at the image's HxW: resized (nearest) when its size differs,
    whatever its aspect ratio, as the App stretches masks over their image."""
    if mask.shape[:2] == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def _semantic_segments(label, height: int, width: int, spec: PromptSpec) -> tuple:
    mask = load_mask(label)
    if mask is None:
        return np.zeros((height, width), np.uint8), []
    if spec.value_names and (mask.ndim == 3) != spec.rgb_targets:
        where = label.mask_path or "in the database"
        raise ValueError(
            f"the mask {where} is {'RGB' if mask.ndim == 3 else 'single-channel'} but the "
            f"mask targets of {spec.label_field!r} name "
            f"{'RGB colours' if spec.rgb_targets else 'integer values'}: give RGB masks hex "
            "targets ('#rrggbb') and class-index masks (or palette PNGs) integer ones"
        )
    if mask.ndim == 3:  # RGB mask: one integer per colour, as in the mask targets
        mask = colour_values(mask)
    present = spec.segment_values.objects(_all_values(mask))
    if spec.mode == "classes":
        present = [v for v in present if v in spec.values]
    ids = np.zeros(mask.shape, _id_type(len(present)))
    for k, value in enumerate(present, start=1):
        ids[mask == value] = k
    names = dict(spec.value_names)
    return fit_mask(ids, height, width), [names.get(v, str(v)) for v in present]
