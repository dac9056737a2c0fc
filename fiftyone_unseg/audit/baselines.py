"""Reference noises to compare a protection against, at the same budgets.

Each source maps images, their object masks and class maps to a noise in [-1, 1], the
contract of the generator's output, so the same
:meth:`~fiftyone_unseg.modeling.NoiseGenerator.perturb` scales it by the budgets
(eps on object pixels, eps_bg elsewhere; eps everywhere for a source whose
``mask_aligned`` is False):

- :class:`RandomNoise`: uniform in [-1, 1], independent per pixel and channel; a
  model should learn through it (the floor any protection must beat);
- :class:`FlatRandomNoise`: the same noise at the object budget on every pixel. Under
  mask-aligned budgets the noise's amplitude alone outlines the objects, a weak shortcut
  of its own; this one has none, so it tells that outline's cost from the noise's;
- :class:`PatternNoise`: a fixed mask-aligned shortcut, one random +-1 tile repeated
  over object pixels and another over the background; cheap and strong, but
  high-frequency (see METHOD.md, "Beyond the paper");
- :class:`ClassPatternNoise`: class keys alone (:mod:`fiftyone_unseg.class_keys` at
  ``class_mix`` 1): one texture per class and one for the background, the same in every
  image; what protection's class keys give without the generator;
- :class:`ClassColourNoise`: one flat colour per class and one for the background, the
  same in every image: the low-frequency class shortcut, which JPEG, blur and rescaling
  leave almost whole;
- :class:`NoNoise`: zero noise, i.e. the clean images; with a counter-measure it
  measures what the counter-measure alone costs a victim.
"""

from __future__ import annotations

import torch

from fiftyone_unseg.class_keys import ClassKeys, cube_colour


class RandomNoise:
    """Uniform noise; calls draw from one generator seeded with ``seed``."""

    name = "random"
    mask_aligned = True

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor, classes=None):
        """images Bx3xHxW in [0, 1], mask_prompts Bx1xHxW -> noise Bx3xHxW in [-1, 1]."""
        noise = torch.rand(images.shape, generator=self.generator, dtype=images.dtype)
        return noise * 2 - 1


class FlatRandomNoise(RandomNoise):
    """:class:`RandomNoise` scaled by the object budget on every pixel."""

    name = "random_flat"
    mask_aligned = False


class PatternNoise:
    """Two random +-1 tiles (3 x tile x tile, seeded), tiled from the image origin: the
    first where ``mask_prompts`` > 0.5, the second elsewhere."""

    name = "pattern"
    mask_aligned = True

    def __init__(self, tile: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tiles = torch.randint(0, 2, (2, 3, tile, tile), generator=generator) * 2.0 - 1

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor, classes=None):
        """images Bx3xHxW in [0, 1], mask_prompts Bx1xHxW -> noise Bx3xHxW in {-1, 1}."""
        height, width = images.shape[-2:]
        tile = self.tiles.shape[-1]
        rows, cols = -(-height // tile), -(-width // tile)
        obj, bg = (t.repeat(1, rows, cols)[:, :height, :width].to(images.dtype) for t in self.tiles)
        return torch.where(mask_prompts > 0.5, obj, bg)


class ClassPatternNoise:
    """One +-1 texture per class and one for the background (:class:`ClassKeys` drawn
    from the seed), tiled from the image origin."""

    name = "class_pattern"
    mask_aligned = True

    def __init__(self, seed: int = 0) -> None:
        self.keys = ClassKeys(f"audit-baseline-{seed}", mix=1.0)

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor, classes=None):
        """images Bx3xHxW, mask_prompts Bx1xHxW, classes Bx1xHxW integers (0 background,
        k + 1 for class k) -> noise Bx3xHxW in {-1, 1}."""
        if classes is None:
            raise ValueError("the class pattern needs each image's class map")
        names = [str(k) for k in range(int(classes.max()))]
        return torch.stack(
            [
                self.keys.apply(torch.zeros_like(im), c[0].numpy(), names)
                for im, c in zip(images, classes)
            ]
        )


class ClassColourNoise:
    """One constant colour per class value (and one for the background, value 0): values
    0 to 25 take the seeded permutation of the 26 non-zero colours of {-1, 0, 1}^3, and
    any further value a colour of its own drawn on the surface of the [-1, 1]^3 cube."""

    name = "class_colour"
    mask_aligned = True

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        grid = torch.cartesian_prod(*[torch.tensor([-1.0, 0.0, 1.0])] * 3)
        colours = grid[grid.abs().sum(1) > 0]
        self.colours = colours[torch.randperm(len(colours), generator=generator)]
        self.seed = seed

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor, classes=None):
        """images Bx3xHxW, mask_prompts Bx1xHxW, classes Bx1xHxW integers (0 background,
        k + 1 for class k) -> noise Bx3xHxW in [-1, 1], flat on each class."""
        if classes is None:
            raise ValueError("the class colour needs each image's class map")
        for value in range(len(self.colours), int(classes.max()) + 1):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + value)
            self.colours = torch.cat([self.colours, cube_colour(generator)[None]])
        return self.colours[classes[:, 0].long()].permute(0, 3, 1, 2).to(images.dtype)


class NoNoise:
    """Zero noise: the clean images, passed like every baseline through the audit's
    counter-measure."""

    name = "none"
    mask_aligned = True

    def __init__(self, seed: int = 0) -> None:
        del seed  # nothing random

    def __call__(self, images: torch.Tensor, mask_prompts: torch.Tensor, classes=None):
        """images Bx3xHxW, mask_prompts Bx1xHxW -> zeros Bx3xHxW."""
        return torch.zeros_like(images)


BASELINES = {
    "random": RandomNoise,
    "random_flat": FlatRandomNoise,
    "pattern": PatternNoise,
    "class_pattern": ClassPatternNoise,
    "class_colour": ClassColourNoise,
    "none": NoNoise,
}
