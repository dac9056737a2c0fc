"""Image / mask folder pairs, the layout interactive-segmentation sets use.

A set is an image folder and a mask folder (they may be the same folder, as in
ECSSD or MSRA10K). A mask belongs to the image with the same stem
(``im/0001.jpg`` <-> ``gt/0001.png``, HQSeg-44K style) or, for several objects
per image, to the image whose stem precedes a double underscore
(``gt/0001__02.png``). Masks are binary: any non-zero pixel is object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
INSTANCE_SEPARATOR = "__"


@dataclass(frozen=True)
class Pair:
    """One training example: an image file and one binary object-mask file."""

    image: str
    mask: str


def instance_mask_name(stem: str, k: int, ext: str = ".png") -> str:
    """File name of the ``k``-th object mask of the image ``stem``."""
    return f"{stem}{INSTANCE_SEPARATOR}{k:02d}{ext}"


def _files(folder: str, extensions) -> dict:
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder")
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in extensions and not name.startswith("."):
            out.setdefault(stem, os.path.join(folder, name))
    return out


def find_pairs(
    image_dir: str,
    mask_dir: str,
    image_exts=IMAGE_EXTENSIONS,
    mask_exts=MASK_EXTENSIONS,
) -> list:
    """All (image, mask) pairs of one set, sorted; images without a mask are left out."""
    images = _files(image_dir, tuple(e.lower() for e in image_exts))
    masks = _files(mask_dir, tuple(e.lower() for e in mask_exts))
    pairs = []
    for stem, mask in masks.items():
        image = images.get(stem)  # in one folder, an object mask is an "image" too
        if (image is None or _same_file(image, mask)) and INSTANCE_SEPARATOR in stem:
            image = images.get(stem.rsplit(INSTANCE_SEPARATOR, 1)[0])
        if image is not None and not _same_file(image, mask):
            pairs.append(Pair(image, mask))
    return sorted(pairs, key=lambda p: (p.image, p.mask))


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file, however each is spelled (./set, an absolute
    path, a symbolic link)."""
    return os.path.realpath(a) == os.path.realpath(b)
