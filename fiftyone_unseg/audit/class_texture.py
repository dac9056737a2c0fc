"""An informed attack: estimate the texture protection adds to each class, and subtract it.

A trainer who knows the method and holds the labels they are about to train on can look
for what protection adds to every image alike. The generator is a ViT on an SxS model
frame (the image's long side resized to S), so whatever its noise has in common across
images repeats with its patch grid. For each class and each phase of a ``period``-pixel
grid in that frame, the attacker averages the high-pass residual (image minus a Gaussian
blur of ``sigma`` px) over all training images: a photo's own residuals cancel out over
hundreds of images, a fixed per-class texture does not. Subtracting that mean from every
image removes the texture and leaves only the image-specific part of the noise.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from fiftyone_unseg.geometry import Frame


class ClassTexture:
    """The mean high-pass residual per (class, grid phase), fitted on a training set."""

    def __init__(self, period: int = 16, size: int = 256, sigma: float = 1.0) -> None:
        self.period = period
        self.size = size
        self.sigma = sigma
        self.texture = np.zeros((0, 3), np.float64)  # (classes x period x period) x 3

    def bins(self, class_map: np.ndarray) -> np.ndarray:
        """HxW int map -> HxW index of (class, row phase, column phase) in the texture."""
        height, width = class_map.shape
        h, w = Frame(height, width, self.size).region()
        rows = ((np.arange(height) + 0.5) * h / height).astype(np.int64) % self.period
        cols = ((np.arange(width) + 0.5) * w / width).astype(np.int64) % self.period
        phase = rows[:, None] * self.period + cols[None, :]
        return class_map.astype(np.int64) * self.period**2 + phase

    def residual(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> HxWx3 float32: the image minus its Gaussian blur."""
        pixels = image.astype(np.float32)
        return pixels - cv2.GaussianBlur(pixels, (0, 0), sigmaX=self.sigma, sigmaY=self.sigma)

    def fit(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> ClassTexture:
        """Average the residuals of (HxWx3 uint8 image, HxW class map) pairs per bin."""
        sums, counts = np.zeros((0, 3)), np.zeros(0)
        for image, class_map in pairs:
            index = self.bins(class_map).ravel()
            size = max(len(counts), int(index.max()) + 1)
            sums = np.pad(sums, ((0, size - len(sums)), (0, 0)))
            counts = np.pad(counts, (0, size - len(counts)))
            residual = self.residual(image).reshape(-1, 3)
            counts += np.bincount(index, minlength=size)
            for channel in range(3):
                sums[:, channel] += np.bincount(index, residual[:, channel], minlength=size)
        self.texture = sums / np.maximum(counts, 1)[:, None]
        return self

    def __call__(self, image: np.ndarray, class_map: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 minus the fitted texture of its classes (none for unseen ones)."""
        if not len(self.texture):
            return image
        index = self.bins(class_map)
        known = index < len(self.texture)
        texture = np.where(
            known[..., None], self.texture[np.where(known, index, 0)], 0.0
        )  # fmt: skip
        return np.clip(np.round(image - texture), 0, 255).astype(np.uint8)
