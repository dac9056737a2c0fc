"""Image files in and out: robust reading, atomic writing."""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from PIL import Image, ImageOps

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_image(image: Image.Image, path: str, quality: int = 95) -> None:
    """Encode ``image`` in the format its extension names and write it atomically."""
    fmt = _FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image extension (use one of {sorted(_FORMATS)})")
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, fmt, quality=quality, subsampling=0)
    else:
        image.save(buf, fmt)
    atomic_write_bytes(buf.getvalue(), path)


def read_rgb(path: str) -> np.ndarray:
    """Read any image as HxWx3 float32 RGB in [0, 1], EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit files are converted.
    Raises ``ValueError`` naming the file for missing, empty or undecodable files.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                scale = 65535.0 if arr.max() > 255 or im.mode.startswith("I;16") else 255.0
                arr = np.clip(arr / scale, 0, 1)
                return np.repeat(arr[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from e


def read_mask(path: str) -> np.ndarray:
    """Read a mask image as an HxW integer array (values as stored)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: mask file not found")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except OSError as e:
        raise ValueError(f"{path}: cannot decode mask ({e})") from e
    return arr[..., 0] if arr.ndim == 3 else arr
