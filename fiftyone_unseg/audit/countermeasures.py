"""Counter-measures an unauthorised trainer may apply to the images before training.

Each is deterministic and maps an HxWx3 uint8 RGB image to one of the same shape:

- ``jpeg:Q``: JPEG encode at quality Q (PIL, default 4:2:0 chroma subsampling) and decode;
- ``blur:S``: Gaussian blur with standard deviation S pixels (OpenCV, kernel +-3 S);
- ``downscale:F``: resize by F (area averaging), then back to HxW (bilinear);
- ``grayscale``: ITU-R 601 luma (PIL's "L"), copied to the 3 channels;
- ``median:K``: K x K median filter (K odd; OpenCV), which removes pixel-scale texture
  and keeps edges;
- ``bilateral:S``: an edge-preserving "purification" (OpenCV's bilateral filter, colour
  sigma S levels of 255, space sigma 2 px, 9 px neighbourhood), as an informed trainer
  would use against fine noise;
- ``texture:P``: the informed attack of :mod:`.class_texture`: each class's mean
  texture per phase of a P-pixel grid in the generator's frame, estimated over the
  training set with its labels, subtracted from every image. It learns from the whole
  set, so :func:`.variants.training_images` applies it, never ``__call__``;
- ``tint:F``: the informed attack on colour class keys (:class:`.class_texture.ClassTint`):
  each class's mean colour over the training set against its mean colour in the clean
  originals of a share F of the training samples (evenly spread over them: the clean
  photos with labels an attacker holds), subtracted from every image. Learned like
  ``texture``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

KINDS = ("jpeg", "blur", "downscale", "grayscale", "median", "bilateral", "texture", "tint")
LEARNED = ("texture", "tint")  # estimated from the whole training set
_DEFAULTS = {
    "jpeg": 75.0, "blur": 1.0, "downscale": 0.5, "median": 3.0, "bilateral": 25.0,
    "texture": 16.0, "tint": 0.1,
}  # fmt: skip


@dataclass(frozen=True)
class Countermeasure:
    """One counter-measure: ``kind`` (see :data:`KINDS`) and its ``value``."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> Countermeasure | None:
        """``"jpeg:75"``, ``"blur:1.0"``, ``"downscale:0.5"``, ``"grayscale"``, ``"median:3"``,
        ``"bilateral:25"``, ``"texture:16"``, ``"tint:0.1"`` or a bare kind (its default value); None or ""
        or "none" for none."""
        if not text or text == "none":
            return None
        kind, _, value = text.partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown countermeasure {text!r}; choose one of {', '.join(KINDS)}")
        if kind == "grayscale":
            if value:
                raise ValueError("grayscale takes no value")
            return cls(kind)
        try:
            number = float(value) if value else _DEFAULTS[kind]
        except ValueError as e:
            raise ValueError(f"countermeasure {text!r}: {value!r} is not a number") from e
        valid = {
            "jpeg": 1 <= number <= 100 and number == int(number),
            "blur": number > 0,
            "downscale": 0 < number < 1,
            "median": number >= 3 and number == int(number) and int(number) % 2 == 1,
            "bilateral": number > 0,
            "texture": number >= 2 and number == int(number),
            "tint": 0 < number <= 1,
        }[kind]
        if not valid:
            ranges = {
                "jpeg": "an integer 1..100",
                "blur": "> 0",
                "downscale": "in (0, 1)",
                "median": "an odd integer >= 3",
                "bilateral": "> 0",
                "texture": "an integer >= 2",
                "tint": "in (0, 1]",
            }
            raise ValueError(f"countermeasure {text!r}: the {kind} value must be {ranges[kind]}")
        return cls(kind, number)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @property
    def learned(self) -> bool:
        """True when it is estimated from the whole training set (:data:`LEARNED`)."""
        return self.kind in LEARNED

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> HxWx3 uint8."""
        if self.learned:
            raise TypeError(f"{self} learns from the training set: use .class_texture")
        if self.kind == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=int(self.value))
            return np.asarray(Image.open(buf).convert("RGB"))
        if self.kind == "blur":
            return cv2.GaussianBlur(image, (0, 0), sigmaX=self.value, sigmaY=self.value)
        if self.kind == "downscale":
            height, width = image.shape[:2]
            small = (max(1, round(width * self.value)), max(1, round(height * self.value)))
            reduced = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
            return cv2.resize(reduced, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.kind == "median":
            return cv2.medianBlur(np.ascontiguousarray(image), int(self.value))
        if self.kind == "bilateral":
            return cv2.bilateralFilter(np.ascontiguousarray(image), 9, self.value, 2.0)
        gray = np.asarray(Image.fromarray(image).convert("L"))
        return np.repeat(gray[..., None], 3, axis=-1)
