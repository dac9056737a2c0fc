"""Class keys: a secret per-class texture mixed into the noise (opt-in).

UnSeg's generator is class-agnostic: its noise tells a victim *where* objects are,
not *what* they are. A class key adds a shortcut to the class: every class name gets a
fixed random +-1 texture drawn from a secret key, and on each object pixel a share
``mix`` of the noise is its class's texture (the background has a texture of its own),
the rest the generator's noise. The result stays in [-1, 1], so the budgets hold. On
the sample scenes it helps little (see docs/GENERATOR_HISTORY.md, "Class
keys"), and a fixed texture per class can be estimated from the protected images and
subtracted by anyone who knows the method; the audit's ``class_pattern`` baseline uses
the same textures alone.

Textures are 8 x 8 pixel tiles laid from the image origin at full resolution, so one
class carries the same texture in every image of a dataset. With ``style="colour"`` each
class gets one flat colour instead (drawn on the surface of the [-1, 1]^3 cube): a
shortcut at the lowest frequency, which JPEG, blur and rescaling leave almost whole and
the informed texture attack (``texture:P``, which measures texture around each class's
mean colour) does not see; on CamVid it is the one noise at 8/255 that moved the semantic
victim (docs/GENERATOR_HISTORY.md, "A flat colour per class"; the ``semantic`` preset).
An attacker holding clean labelled photos of the same source can estimate each tint
against them (``tint:F``, :class:`fiftyone_unseg.audit.class_texture.ClassTint`). It
costs more PSNR than a texture at the same mix, and a flat tint is easier to see on
large flat regions.
Only :attr:`ClassKeys.fingerprint` is recorded on protected samples, never the key.
A key of one's own travels in the ``UNSEG_CLASS_KEY`` environment variable
(:data:`~fiftyone_unseg.settings.CLASS_KEY_SECRET`: the CLI's default, the App's plugin
secret), so that it is neither in a shell history nor in the parameters FiftyOne stores
with a delegated run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from fiftyone_unseg.settings import CLASS_STYLES

TILE = 8  # texture side in pixels


def cube_colour(generator: torch.Generator) -> torch.Tensor:
    """A colour (3,) drawn on the surface of the [-1, 1]^3 cube: its largest channel at
    +-1."""
    colour = torch.rand(3, generator=generator) * 2 - 1
    return colour / colour.abs().max()


def default_class_key(dataset) -> str:
    """The key ``protect`` uses without one: from the dataset's database id, so every run
    and shard on a dataset draws the same textures."""
    return f"unseg-dataset-{dataset._doc.id}"


class ClassKeys:
    """Per-class textures drawn from ``key``, mixed into noise with weight ``mix``."""

    def __init__(self, key: str, mix: float, style: str = "texture") -> None:
        if not 0 < mix <= 1:
            raise ValueError(f"class_mix must be in (0, 1], got {mix}")
        if not key:
            raise ValueError("the class key must be a non-empty string")
        if style not in CLASS_STYLES:
            raise ValueError(f"class_style must be one of {CLASS_STYLES}, got {style!r}")
        self.key, self.mix, self.style = key, float(mix), style
        self._textures: dict[str | None, torch.Tensor] = {}

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the key's SHA-256, names the key without revealing it;
        after ``colour:`` for flat colours (so copies made with the other style differ)."""
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:12]
        return digest if self.style == "texture" else f"{self.style}:{digest}"

    def texture(self, name: str | None) -> torch.Tensor:
        """The 3 x TILE x TILE texture of class ``name`` (None: the background): +-1, or
        with the "colour" style one colour in [-1, 1]^3, its largest channel at +-1, on
        every pixel."""
        if name in self._textures:
            return self._textures[name]
        label = "\0background" if name is None else f"class:{name}"
        seed = hashlib.sha256(f"{self.key}\0{label}".encode()).digest()[:8]
        generator = torch.Generator().manual_seed(int.from_bytes(seed, "little") >> 1)
        if self.style == "colour":
            texture = cube_colour(generator)[:, None, None].expand(3, TILE, TILE).clone()
        else:
            texture = torch.randint(0, 2, (3, TILE, TILE), generator=generator) * 2.0 - 1
        self._textures[name] = texture
        return texture

    def apply(
        self, noise: torch.Tensor, classes: np.ndarray, names: list, first_row: int = 0
    ) -> torch.Tensor:
        """Mix the class textures into ``noise``.

        noise: 3 x R x W in [-1, 1], rows ``first_row`` .. ``first_row + R`` of an image;
        classes: R x W integers, 0 for background and k for ``names[k - 1]``.
        Returns 3 x R x W in [-1, 1].
        """
        rows, width = classes.shape
        ys = (torch.arange(rows) + first_row) % TILE
        xs = torch.arange(width) % TILE
        index = torch.from_numpy(classes.astype(np.int64))
        keyed = torch.zeros_like(noise)
        for k in np.unique(classes):
            tile = self.texture(None if k == 0 else str(names[k - 1])).to(noise.dtype)
            where = index == int(k)
            keyed = torch.where(where, tile[:, ys][:, :, xs], keyed)
        return (1 - self.mix) * noise + self.mix * keyed
