"""Training data: (image, binary object mask) pairs from folders, FiftyOne or sample scenes.

A data source is a string:
  ``sample:NUM[:SEED[:STYLE+STYLE[:SIZE]]]``  generated sample scenes (cached on disk);
  ``fiftyone:DATASET[:FIELD]``                 a FiftyOne dataset (or ``DATASET@SAVED_VIEW``);
                                              each instance or class region is one mask;
  ``IMAGE_DIR:MASK_DIR``                       one image / mask folder pair;
  ``DIR``                                      a folder holding one or more sets, each an image
                                              folder with a sibling mask folder
                                              (images/masks, im/gt, *-Image/*-Mask,
                                              images_X/masks_X) or a folder of images and
                                              masks side by side (x.jpg + x.png); sets
                                              named as a validation or test split
                                              (val, vd, test) are left out, with a warning;
  ``hqseg44k:ROOT``                            HQSeg-44K's seven training sets, as SAM-HQ
                                              trains on them (ROOT: its ``data`` folder).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, default_collate, get_worker_info

from fiftyone_unseg import database, folders, io
from fiftyone_unseg.geometry import Frame
from fiftyone_unseg.labels import present_values, resolve_prompt, segment_map

logger = logging.getLogger(__name__)

CACHE_DIR = os.environ.get("UNSEG_CACHE_DIR") or os.path.join(
    os.path.expanduser("~"), ".cache", "unseg"
)
_MASK_DIR_NAMES = {"images": "masks", "im": "gt", "image": "mask", "imgs": "masks", "img": "gt"}
# Name parts that mark a set as a validation or test split (DIS-VD, images_test, val2017).
_HELD_OUT_PARTS = {"val", "valid", "validation", "vd", "test", "testing"}
# HQSeg-44K's training sets (image folder, mask folder) under its data folder, as SAM-HQ's
# train.py lists them; its validation sets (DIS-VD, COIFT, HRSOD, ThinObject5K's test) are not.
HQSEG44K_TRAIN = (
    ("DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    (
        "thin_object_detection/ThinObject5K/images_train",
        "thin_object_detection/ThinObject5K/masks_train",
    ),
    *(
        (f"cascade_psp/{name}",) * 2
        for name in ("fss_all", "DUTS-TR", "DUTS-TE", "ecssd", "MSRA_10K")
    ),
)


def _sample_source(spec: str) -> list:
    from fiftyone_unseg import sample_data

    parts = spec.split(":")[1:]
    try:
        num = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 else 0
        size = int(parts[3]) if len(parts) > 3 else 512
    except ValueError:
        raise ValueError(
            f"data source {spec!r}: expected sample:NUM[:SEED[:STYLE+STYLE[:SIZE]]] with "
            "whole numbers, e.g. sample:64:0"
        ) from None
    styles = parts[2].split("+") if len(parts) > 2 else list(sample_data.DEFAULT_STYLES)
    root = os.path.join(CACHE_DIR, "sample-data", f"seed{seed}-n{num}-{'+'.join(styles)}-{size}")
    marker = os.path.join(root, "complete")
    if not os.path.exists(marker):
        logger.info("generating %d sample scenes in %s", num, root)
        sample_data.write_scenes(root, num, seed=seed, size=size, styles=styles)
        io.atomic_write_bytes(b"", marker)
    return folders.find_pairs(os.path.join(root, "images"), os.path.join(root, "masks"))


def _fiftyone_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``fiftyone:DATASET[@SAVED_VIEW][:FIELD]`` as (dataset, saved view, field), for
    dataset names holding ``:`` or ``@`` too (FiftyOne allows both): a dataset of the
    whole name first, then the split that names one with that saved view."""
    import fiftyone as fo

    rest = spec.partition(":")[2]
    whole, _, last = rest.rpartition(":")
    for name, field in ((rest, None), (whole, last)) if whole else ((rest, None),):
        if fo.dataset_exists(name):
            return name, None, field
        dataset, _, view = name.rpartition("@")
        if dataset and fo.dataset_exists(dataset) and fo.load_dataset(dataset).has_saved_view(view):
            return dataset, view, field
    first, _, field = rest.partition(":")  # none there: loading names what is missing
    dataset, _, view = first.partition("@")
    return dataset, view or None, field or None


def _fiftyone_source(spec: str) -> list:
    """Export each instance / class region of a FiftyOne dataset as a binary mask file.

    Mask files are named by their content, so labels edited in place are exported anew;
    those of the source's samples that no longer match a label are deleted.
    """
    import fiftyone as fo

    from fiftyone_unseg.protect import check_images, check_original, original_paths

    database.connect()
    name, saved_view, field = _fiftyone_spec(spec)
    dataset = fo.load_dataset(name)
    view = dataset.load_saved_view(saved_view) if saved_view else dataset
    try:
        check_images(view, "training")
    except ValueError as error:
        raise ValueError(f"{spec}: {error}") from None
    fields = _label_fields(view)
    usable = {f: t for f, t in fields.items() if t in ("Detections", "Polylines", "Segmentation")}
    field = field or next(iter(usable), None)
    if field not in usable:
        if field is None or not view.has_field(field):
            what = f"has no field {field!r}"
        else:
            what = f"holds {fields.get(field) or type(view.get_field(field)).__name__} in {field!r}"
        raise ValueError(
            f"{spec}: {name!r} {what}; give a field of instances (fo.Detections, "
            f"fo.Polylines) or a semantic mask (fo.Segmentation): {usable or 'none here'}"
        )
    all_segments = resolve_prompt(view, field)
    # one folder per source: pruning one view's files must not touch another's
    source = f"{name}@{saved_view}" if saved_view else name
    key = hashlib.sha1(repr((name, saved_view, field)).encode()).hexdigest()[:8]  # "a@b": a name
    root = os.path.join(
        CACHE_DIR, "fiftyone", re.sub(r"[^\w.@-]+", "_", f"{source}-{field}") + f"-{key}"
    )
    # the originals: where protection replaced a filepath, it holds noise already
    originals = dict(zip(view.values("id"), original_paths(view)))
    pairs = []
    for sample in view.select_fields(field).iter_samples(progress=False):
        label = sample[field]
        if label is None:
            continue
        image = originals[sample.id]
        try:
            check_original(image)
            masks = _label_masks(label, image, all_segments)
        except ValueError as error:
            logger.warning("skipping sample %s (%s): %s", sample.id, image, error)
            continue
        for mask in masks:
            content = repr(mask.shape).encode() + np.packbits(mask).tobytes()
            digest = hashlib.sha1(content).hexdigest()[:16]
            path = os.path.join(root, f"{sample.id}-{digest}.png")
            if not os.path.exists(path):
                io.atomic_write_image(Image.fromarray(mask.astype(np.uint8) * 255), path)
            pairs.append(folders.Pair(image, path))
    _prune(root, set(view.values("id")), {os.path.basename(p.mask) for p in pairs})
    return pairs


def _prune(root: str, sample_ids: set, current: set) -> None:
    """Delete the mask files ``<sample id>-<digest>.png`` in ``root`` of ``sample_ids``
    that are not in ``current`` (labels edited or removed since they were written)."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        stem, ext = os.path.splitext(name)
        if ext == ".png" and stem.split("-")[0] in sample_ids and name not in current:
            try:
                os.remove(os.path.join(root, name))
            except FileNotFoundError:  # another process pruned it first
                pass


def _label_fields(view) -> dict:
    import fiftyone as fo

    schema = view.get_field_schema(embedded_doc_type=fo.Label)
    return {name: f.document_type.__name__ for name, f in schema.items()}


def _label_masks(label, filepath: str, spec) -> list:
    """Non-empty binary masks at the image's size of every segment, as ``protect`` prompts
    with them (:func:`~fiftyone_unseg.labels.segment_map` with ``spec``): each detection
    (its mask in its box, or the filled box) or polyline, later ones over earlier ones;
    each class region of a Segmentation (one per value or RGB colour, masks of another size
    stretched over the image)."""
    w, h = image_size(filepath)
    ids = segment_map(label, h, w, spec)
    return [ids == k for k in present_values(ids)]


def _mask_dir_name(image_dir: str) -> str | None:
    """The (lower-case) name of the mask folder that goes with an image folder's name."""
    lower = image_dir.lower()
    if lower in _MASK_DIR_NAMES:
        return _MASK_DIR_NAMES[lower]
    if lower.endswith("-image"):
        return lower[: -len("image")] + "mask"
    head, sep, tail = lower.partition("_")  # images_train -> masks_train
    return f"{_MASK_DIR_NAMES[head]}_{tail}" if sep and head in _MASK_DIR_NAMES else None


def _side_by_side(folder: str, names: list) -> bool:
    """Whether ``folder`` holds images and their masks together: JPEGs with PNGs of the
    same stem (ECSSD, MSRA10K, DUTS in HQSeg-44K), the first such PNG single-channel."""
    stems = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        stems.setdefault(stem, set()).add(ext.lower())
    both = sorted(s for s, exts in stems.items() if exts & {".jpg", ".jpeg"} and ".png" in exts)
    if not both:
        return False
    with Image.open(os.path.join(folder, both[0] + ".png")) as first:
        return first.mode in ("1", "L", "P", "I", "I;16")


def _folder_sets(root: str) -> list:
    """(image_dir, mask_dir) sets found under ``root`` (itself or its sub-folders)."""
    sets = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for d in dirnames:
            partner = _mask_dir_name(d)
            match = next((x for x in dirnames if partner and x.lower() == partner), None)
            if match:
                sets.append((os.path.join(dirpath, d), os.path.join(dirpath, match)))
        if _side_by_side(dirpath, filenames):
            sets.append((dirpath, dirpath))
    return sets


def _held_out(image_dir: str, root: str) -> bool:
    """Whether a set's path below ``root`` names it a validation or test split."""
    parts = os.path.relpath(image_dir, root).split(os.sep)
    return any(set(re.split(r"[-_. ]", part.lower())) & _HELD_OUT_PARTS for part in parts)


def _folder_source(root: str) -> list:
    """The pairs of every training set under ``root``, each set logged with its count."""
    sets = _folder_sets(root)
    if not sets:
        raise ValueError(f"{root}: found no image/mask folder pairs (e.g. images/ + masks/)")
    if all(os.path.isdir(os.path.join(root, i)) for i, _ in HQSEG44K_TRAIN):
        logger.warning(
            "%s is HQSeg-44K: every set found here is taken, SAM-HQ's validation sets COIFT "
            "and HRSOD too; hqseg44k:%s takes its training sets only",
            root,
            root,
        )
    pairs = []
    for images, masks in sets:
        name = os.path.relpath(images, root)
        if _held_out(images, root):
            logger.warning(
                "%s: left out, its name marks a validation or test split (give it as "
                "IMAGES:MASKS to train on it)",
                name,
            )
            continue
        found = folders.find_pairs(images, masks)
        logger.info("%s: %d pairs", name, len(found))
        pairs += found
    return pairs


def _hqseg44k_source(root: str) -> list:
    """HQSeg-44K's training pairs (:data:`HQSEG44K_TRAIN`) under its data folder ``root``."""
    missing = [i for i, _ in HQSEG44K_TRAIN if not os.path.isdir(os.path.join(root, i))]
    if missing:
        raise ValueError(
            f"hqseg44k:{root}: no {', '.join(missing)} there; ROOT is HQSeg-44K's data folder "
            "(DIS5K/, cascade_psp/, thin_object_detection/)"
        )
    return [
        p
        for images, masks in HQSEG44K_TRAIN
        for p in folders.find_pairs(os.path.join(root, images), os.path.join(root, masks))
    ]


def load_pairs(spec: str) -> list:
    """All (image, mask) pairs of one data source (see the module docstring); ValueError
    naming the source if it has none."""
    if spec.startswith("sample:"):
        pairs = _sample_source(spec)
    elif spec.startswith("fiftyone:"):
        pairs = _fiftyone_source(spec)
    elif spec.startswith("hqseg44k:"):
        pairs = _hqseg44k_source(spec.split(":", 1)[1])
    elif ":" in spec and not os.path.isdir(spec):
        image_dir, mask_dir = spec.split(":", 1)
        pairs = folders.find_pairs(image_dir, mask_dir)
    elif not os.path.isdir(spec):
        raise ValueError(
            f"data source {spec!r} is not a folder, 'IMAGES:MASKS', sample: or fiftyone:"
        )
    else:
        pairs = _folder_source(spec)
    if not pairs:
        raise ValueError(f"data source {spec!r} has no (image, mask) pairs")
    return pairs


def split_pairs(pairs: list, val_fraction: float) -> tuple:
    """(train, val) split by image, stable under adding or removing other images and the
    same wherever the data lies: an image's side depends only on the last three parts of
    its path (e.g. ``seed0-n200-photo+texture-384/images/scene_00001.png``)."""

    def is_val(pair) -> bool:
        key = "/".join(os.path.abspath(pair.image).split(os.sep)[-3:])
        h = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
        return h / 0xFFFFFFFF < val_fraction

    sides = [is_val(p) for p in pairs]
    val = [p for p, side in zip(pairs, sides) if side]
    train = [p for p, side in zip(pairs, sides) if not side]
    if not train:
        raise ValueError("no training pairs left after the validation split")
    return train, val


def resize_and_pad(image: torch.Tensor, mask: torch.Tensor, side: int, scale: float = 1.0):
    """Resize so the longest side is ``scale * side`` (the model's geometry, see
    :class:`~fiftyone_unseg.geometry.Frame`), then pad bottom/right to at least ``side``.

    image: 3xHxW, mask: 1xHxW -> 3xNxN and 1xNxN in {0, 1}, N = max(side, scale * side).
    """
    frame = Frame(image.shape[-2], image.shape[-1], side)
    n = max(1, round(scale * side))
    pad = (0, max(0, side - n), 0, max(0, side - n))
    image = F.pad(frame.to_model(image, n), pad)
    mask = F.pad((frame.to_model(mask, n) > 0.5).float(), pad)
    return image, mask


def object_crop(image, mask, context: float):
    """A square crop around the mask's bounding box, ``context`` times its longest side.

    Makes scenes with many small objects look like interactive-segmentation sets, where
    the object fills much of the frame. image: 3xHxW, mask: 1xHxW (non-empty).
    """
    ys, xs = torch.nonzero(mask[0], as_tuple=True)
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    h, w = mask.shape[-2:]
    side = min(max(h, w), max(8, round(context * max(y1 - y0, x1 - x0))))
    top = min(max(0, (y0 + y1 - side) // 2), max(0, h - side))
    left = min(max(0, (x0 + x1 - side) // 2), max(0, w - side))
    return image[:, top : top + side, left : left + side], mask[
        :, top : top + side, left : left + side
    ]


def image_size(path: str, kind: str = "image", oriented: bool = True) -> tuple[int, int]:
    """(width, height) from the file header, EXIF rotation applied if ``oriented``;
    ValueError naming the file if it is missing, empty or not an image."""
    io.check_file(path, kind)
    try:
        with Image.open(path) as im:
            turned = oriented and io.orientation(im) >= 5
            return im.size[::-1] if turned else im.size
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode {kind} ({error})") from error


def _header_problem(pair) -> str | None:
    """What makes a pair unusable, from its files' headers; None if nothing does."""
    try:
        (iw, ih), (mw, mh) = image_size(pair.image), image_size(pair.mask, "mask", False)
    except ValueError as error:
        return str(error)
    if (iw, ih) != (mw, mh):
        return f"{pair.mask}: mask is {mw}x{mh} but image {pair.image} is {iw}x{ih}"
    return None


EVALUATION_SCAN = 50  # pairs read per evaluation pair wanted, at most


def evaluation_pairs(pairs, count: int) -> list:
    """The first ``count`` pairs whose files decode to an image and a mask with an object
    pixel (a fixed evaluation set; the others, e.g. negatives with empty masks, are
    passed over, and counted in one log line), fewer where the first
    ``EVALUATION_SCAN * count`` pairs hold fewer."""
    chosen, passed = [], []
    for pair in pairs[: EVALUATION_SCAN * count]:
        if len(chosen) == count:
            break
        problem = _header_problem(pair)
        if problem is None:
            try:
                mask = io.read_mask(pair.mask)
            except ValueError as error:
                problem = str(error)
            else:
                problem = None if mask.any() else f"{pair.mask}: mask is empty"
        if problem is None:
            chosen.append(pair)
        else:
            passed.append(problem)
    if passed:
        logger.warning("evaluating on none of %d pairs, e.g. %s", len(passed), passed[0])
    return chosen


def collate_reporting_skips(batch) -> tuple:
    """``default_collate`` of (image, mask) items, plus the pairs skipped so far by the
    dataset copy that read them: a DataLoader worker's copy would keep them to itself."""
    info = get_worker_info()
    skipped = dict(info.dataset.skipped) if info is not None else {}
    return (*default_collate(batch), skipped)


class PairDataset(Dataset):
    """(image 3xSxS in [0, 1], mask 1xSxS in {0, 1}) at side S, augmented when training.

    Augmentation: optionally an object-centred crop (``object_context``: the crop side
    is drawn from that range times the object's size), horizontal flip and large-scale
    jitter (longest side scaled to ``scale_range`` x S, then cropped or padded to S).
    Pairs whose files are missing, empty, not images or of different sizes are found
    up front (file headers only); pairs that fail to decode later (truncated files, empty
    masks) are found when read. Each is logged once with the file and the problem,
    recorded in ``skipped`` (pair -> reason) and replaced by the next pair.
    """

    def __init__(
        self,
        pairs,
        side: int,
        augment: bool,
        scale_range=(0.1, 2.0),
        hflip=True,
        object_context=None,
    ):
        if not pairs:
            raise ValueError("no (image, mask) pairs to train on")
        self.side, self.augment = side, augment
        self.scale_range, self.hflip, self.object_context = scale_range, hflip, object_context
        self.skipped: dict = {}
        self.pairs = []
        for pair in pairs:
            problem = _header_problem(pair)
            if problem is None:
                self.pairs.append(pair)
            else:
                self._skip(pair, problem)
        if not self.pairs:
            raise ValueError(f"none of the {len(pairs)} (image, mask) pairs is readable")

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, pair) -> tuple:
        image = io.read_rgb(pair.image)
        mask = io.read_mask(pair.mask) > 0
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image "
                f"{pair.image} is {image.shape[1]}x{image.shape[0]}"
            )
        if not mask.any():
            raise ValueError(f"{pair.mask}: mask is empty")
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)[None].float()

    def _skip(self, pair, reason: str) -> None:
        if pair not in self.skipped:
            logger.warning("skipping %s", reason)
            self.skipped[pair] = reason

    def _jitter(self, image, mask, rng: random.Random):
        for _ in range(5):
            img, m = resize_and_pad(image, mask, self.side, rng.uniform(*self.scale_range))
            ys, xs = torch.nonzero(m[0], as_tuple=True)
            if len(ys) == 0:
                continue
            # Crop a side x side window that contains a random object pixel.
            k = rng.randrange(len(ys))
            h, w = m.shape[-2:]
            y0 = rng.randint(max(0, ys[k] - self.side + 1), min(ys[k], h - self.side))
            x0 = rng.randint(max(0, xs[k] - self.side + 1), min(xs[k], w - self.side))
            m_crop = m[:, y0 : y0 + self.side, x0 : x0 + self.side]
            if m_crop.sum() >= 16:
                return img[:, y0 : y0 + self.side, x0 : x0 + self.side], m_crop
        return resize_and_pad(image, mask, self.side)

    def __getitem__(self, item):
        """``item``: an index, or (index, seed) to draw its augmentation from ``seed``
        instead of torch's random stream (as training does: the same crops whichever
        DataLoader worker reads it)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        for attempt in range(len(self.pairs)):
            pair = self.pairs[(index + attempt) % len(self.pairs)]
            try:
                image, mask = self._read(pair)
                break
            except ValueError as error:
                self._skip(pair, str(error))
        else:
            raise ValueError("no readable (image, mask) pair in the training data")
        rng = random.Random(torch.randint(0, 2**31, ()).item() if seed is None else seed)
        if self.object_context:
            low, high = self.object_context
            context = rng.uniform(low, high) if self.augment else (low + high) / 2
            image, mask = object_crop(image, mask, context)
        if not self.augment:
            return resize_and_pad(image, mask, self.side)
        if self.hflip and rng.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return self._jitter(image, mask, rng)
