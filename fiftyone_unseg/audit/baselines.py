"""Reference noises to compare a protection against, at the same budgets.

Each source maps images and their object masks to a noise in [-1, 1], the
contract of the generator's output, so the same
:meth:`~fiftyone_unseg.modeling.NoiseGenerator.perturb` scales it by the budgets
(eps on object pixels, eps_bg elsewhere):

- :class:`RandomNoise`: uniform in [-1, 1], independent per pixel and channel; a
  model should learn through it (the floor any protection must beat);
- :class:`PatternNoise`: a fixed mask-aligned shortcut, one random +-1 tile repeated
  over object pixels and another over the background; cheap and strong, but
  high-frequency (see METHOD.md, "Beyond the paper");
- :class:`NoNoise`: zero noise, i.e. the clean images; with a counter-measure it
  measures what the counter-measure alone costs a victim.
"""

from __future__ import annotations

import torch


class RandomNoise:
    """Uniform noise; calls draw from one generator seeded with ``seed``."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor) -> torch.Tensor:
        """images Bx3xHxW in [0, 1], mask_prompts Bx1xHxW -> noise Bx3xHxW in [-1, 1]."""
        noise = torch.rand(images.shape, generator=self.generator, dtype=images.dtype)
        return noise * 2 - 1


class PatternNoise:
    """Two random +-1 tiles (3 x tile x tile, seeded), tiled from the image origin: the
    first where ``mask_prompts`` > 0.5, the second elsewhere."""

    name = "pattern"

    def __init__(self, tile: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tiles = torch.randint(0, 2, (2, 3, tile, tile), generator=generator) * 2.0 - 1

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor) -> torch.Tensor:
        """images Bx3xHxW in [0, 1], mask_prompts Bx1xHxW -> noise Bx3xHxW in {-1, 1}."""
        height, width = images.shape[-2:]
        tile = self.tiles.shape[-1]
        rows, cols = -(-height // tile), -(-width // tile)
        obj, bg = (t.repeat(1, rows, cols)[:, :height, :width].to(images.dtype) for t in self.tiles)
        return torch.where(mask_prompts > 0.5, obj, bg)


class NoNoise:
    """Zero noise: the clean images, passed like every baseline through the audit's
    counter-measure."""

    name = "none"

    def __init__(self, seed: int = 0) -> None:
        del seed  # nothing random

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor) -> torch.Tensor:
        """images Bx3xHxW, mask_prompts Bx1xHxW -> zeros Bx3xHxW."""
        return torch.zeros_like(images)


BASELINES = {"random": RandomNoise, "pattern": PatternNoise, "none": NoNoise}
