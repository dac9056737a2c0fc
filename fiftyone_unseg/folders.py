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

from PIL import Image

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


def _files(folder: str, extensions) -> dict[str, list[str]]:
    """Stem -> the paths of the files with that stem and one of ``extensions``, sorted."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder")
    out: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in extensions and not name.startswith("."):
            out.setdefault(stem, []).append(os.path.join(folder, name))
    return out


def find_pairs(
    image_dir: str,
    mask_dir: str,
    image_exts=IMAGE_EXTENSIONS,
    mask_exts=MASK_EXTENSIONS,
) -> list:
    """All (image, mask) pairs of one set, sorted; images without a mask are left out.
    ValueError naming the files where one folder holds two images of one stem that could
    each be the mask."""
    images = _files(image_dir, tuple(e.lower() for e in image_exts))
    masks = _files(mask_dir, tuple(e.lower() for e in mask_exts))
    pairs = []
    for stem, mask_files in masks.items():
        pair = _pair(images.get(stem, []), mask_files)
        if pair is None and INSTANCE_SEPARATOR in stem:
            pair = _pair(images.get(stem.rsplit(INSTANCE_SEPARATOR, 1)[0], []), mask_files)
        if pair is not None:
            pairs.append(pair)
    return sorted(pairs, key=lambda p: (p.image, p.mask))


def _pair(image_files: list[str], mask_files: list[str]) -> Pair | None:
    """The image and the mask among the files of one stem. In one folder a file may be
    either (``0001.png`` next to ``0001.jpg`` is the mask); of two that may each be either
    (``0001.png`` next to ``0001.tif``) the one-channel file is the mask."""
    shared = [f for f in image_files if any(_same_file(f, m) for m in mask_files)]
    image = next((f for f in image_files if f not in shared), None)
    mask = next((f for f in mask_files if not any(_same_file(f, s) for s in shared)), None)
    if image is None and mask is None and len(shared) > 1:
        grey = [f for f in shared if not _is_colour(f)]
        if len(grey) != 1:
            raise ValueError(
                f"{', '.join(shared)}: cannot tell which is the image and which the mask "
                "(both have one channel, or both colours); keep masks in a folder of their own"
            )
        return Pair(next(f for f in shared if f not in grey), grey[0])
    image, mask = image or next(iter(shared), None), mask or next(iter(shared), None)
    if image is None or mask is None or _same_file(image, mask):
        return None
    return Pair(image, mask)


def _is_colour(path: str) -> bool:
    """Whether an image file has colour channels (read from its header)."""
    with Image.open(path) as im:
        return im.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file, however each is spelled (./set, an absolute
    path, a symbolic link)."""
    return os.path.realpath(a) == os.path.realpath(b)
