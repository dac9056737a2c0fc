"""Informed attacks: estimate what protection adds to each class, and subtract it.

:class:`ClassTexture` finds a fixed texture per class, :class:`ClassTint` a flat colour
per class (colour class keys).

A trainer who knows the method and holds the labels they are about to train on can look
for what protection adds to every image alike. The generator is a ViT on an SxS model
frame (the image's long side resized to S: the audit takes S from the generator the
samples were protected with, ``unseg.generator_size``), so whatever its noise has in
common across images repeats with its patch grid. For each class and each phase of a ``period``-pixel
grid in that frame, the attacker averages the images' pixels minus their class's mean
colour in that image: a photo's own content cancels out over hundreds of images and
positions, a fixed per-class texture does not, whatever its frequencies. Subtracting
that mean from every image removes the texture and leaves only the image-specific part
of the noise. (A high-pass residual, image minus a 1 px blur, finds nothing of the
default generator's texture on CamVid: its grid is 15 to 60 px wide there.)

A flat tint per class is what that centring removes, so it needs another yardstick: the
class's own mean colour in clean photos of the same source. An attacker holding a few
such photos with labels (published before protection, or their own) compares each
class's mean colour over the training images with it; the difference is the tint plus
the sampling error of the two means, and subtracting it leaves the victim the clean
colours of the classes it can estimate well.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fiftyone_unseg.geometry import Frame


class ClassTexture:
    """The mean class-centred pixel per (class, grid phase), fitted on a training set."""

    def __init__(self, period: int = 16, size: int = 256) -> None:
        self.period = period
        self.size = size
        self.texture = np.zeros((0, 3), np.float64)  # (classes x period x period) x 3

    def bins(self, class_map: np.ndarray) -> np.ndarray:
        """HxW int map -> HxW index of (class, row phase, column phase) in the texture."""
        height, width = class_map.shape
        h, w = Frame(height, width, self.size).region()
        rows = ((np.arange(height) + 0.5) * h / height).astype(np.int64) % self.period
        cols = ((np.arange(width) + 0.5) * w / width).astype(np.int64) % self.period
        phase = rows[:, None] * self.period + cols[None, :]
        return class_map.astype(np.int64) * self.period**2 + phase

    @staticmethod
    def centred(image: np.ndarray, class_map: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> (HxW)x3 float64: each pixel minus its class's mean colour in
        this image."""
        classes = class_map.ravel().astype(np.int64)
        pixels = image.reshape(-1, 3).astype(np.float64)
        counts = np.maximum(np.bincount(classes), 1)
        means = np.stack([np.bincount(classes, pixels[:, c]) / counts for c in range(3)], 1)
        return pixels - means[classes]

    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> ClassTexture:
        """Average the class-centred pixels of (HxWx3 uint8 image, HxW class map) pairs
        per bin."""
        sums, counts = bin_sums(
            (self.bins(class_map), self.centred(image, class_map)) for image, class_map in pairs
        )
        self.texture = sums / np.maximum(counts, 1)[:, None]
        return self

    def __call__(self, image: np.ndarray, class_map: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 minus the fitted texture of its classes (none for unseen ones)."""
        return subtract(image, self.texture, self.bins(class_map))


class ClassTint:
    """Each class's mean colour in the training images minus its mean colour in clean
    reference photos: the flat colour protection added to it."""

    def __init__(self) -> None:
        self.tint = np.zeros((0, 3), np.float64)  # classes x 3, in levels of 255

    def fit(
        self,
        pairs: Iterable[tuple[np.ndarray, np.ndarray]],
        reference: Iterable[tuple[np.ndarray, np.ndarray]],
    ) -> ClassTint:
        """Fit on (HxWx3 uint8 image, HxW class map) pairs of the training images and of
        the clean reference photos; a class missing from either gets no tint."""
        means, counts = _class_means(pairs)
        ref_means, ref_counts = _class_means(reference)
        size = min(len(counts), len(ref_counts))
        seen = (counts[:size] > 0) & (ref_counts[:size] > 0)
        self.tint = np.zeros((size, 3))
        self.tint[seen] = means[:size][seen] - ref_means[:size][seen]
        return self

    def __call__(self, image: np.ndarray, class_map: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 minus the fitted tint of its classes (none for unseen ones)."""
        return subtract(image, self.tint, class_map.astype(np.int64))


def _class_means(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Each class's mean colour (classes x 3) over (image, class map) pairs, and its pixel
    count (classes)."""
    sums, counts = bin_sums((m, i.reshape(-1, 3).astype(np.float64)) for i, m in pairs)
    return sums / np.maximum(counts, 1)[:, None], counts


def subtract(image: np.ndarray, table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 minus ``table`` (bins x 3) at each pixel's bin (HxW ``index``); bins
    past the table's end lose nothing."""
    if not len(table):
        return image
    known = index < len(table)
    values = np.where(known[..., None], table[np.where(known, index, 0)], 0.0)
    return np.clip(np.round(image - values), 0, 255).astype(np.uint8)


def bin_sums(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sums (bins x 3) and counts (bins) of the values of (HxW bin index, (HxW)x3 values)
    pairs per bin."""
    sums, counts = np.zeros((0, 3)), np.zeros(0)
    for index, values in pairs:
        index = index.ravel()
        size = max(len(counts), int(index.max()) + 1)
        sums = np.pad(sums, ((0, size - len(sums)), (0, 0)))
        counts = np.pad(counts, (0, size - len(counts)))
        counts += np.bincount(index, minlength=size)
        for channel in range(3):
            sums[:, channel] += np.bincount(index, values[:, channel], minlength=size)
    return sums, counts
