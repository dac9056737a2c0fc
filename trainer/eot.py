"""Expectation over transformations: differentiable stand-ins for the counter-measures
a data thief may apply (:mod:`fiftyone_unseg.audit.countermeasures` has the real ones).

Between generator and surrogate, each perturbed image goes through one random
counter-measure with probability ``p``, so the surrogate learns from, and the
generator is rewarded for, noise that survives them:

- ``jpeg``: 8x8 block DCT of YCbCr with 4:2:0 chroma, quantised with the standard
  tables at a random quality; rounding is straight-through (identity gradient);
- ``blur``: Gaussian blur with a random sigma;
- ``downscale``: area down-scaling by a random factor, bilinear back up;
- ``grayscale``: ITU-R 601 luma on all three channels.

Protected images are published at their own size, not the generator's side, and the
counter-measures act there: ``scale`` resizes each image by a random factor before its
counter-measure and back after, so that a JPEG block or a blur sigma covers as much of
the noise as on the published image (photos of 480 px: about 2; thumbnails of 128 px: 0.5).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

KINDS = ("jpeg", "blur", "downscale", "grayscale")
JPEG_QUALITY = (50, 95)
BLUR_SIGMA = (0.5, 1.5)
DOWNSCALE = (0.35, 0.8)

# JPEG's standard quantisation tables (ITU-T T.81, Annex K), luma and chroma.
_LUMA_Q = [
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
]
_CHROMA_Q = [[17, 18, 24, 47] + [99] * 4, [18, 21, 26, 66] + [99] * 4]
_CHROMA_Q += [[24, 26, 56] + [99] * 5, [47, 66] + [99] * 6] + [[99] * 8] * 4
_RGB_TO_YCBCR = [
    [0.299, 0.587, 0.114],
    [-0.168736, -0.331264, 0.5],
    [0.5, -0.418688, -0.081312],
]


def _dct_matrix(device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (rows: frequencies)."""
    n = torch.arange(8, device=device, dtype=torch.float32)
    m = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m


def _quant_table(table, quality: int, device) -> torch.Tensor:
    """A standard table scaled to ``quality`` as libjpeg does."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = torch.tensor(table, dtype=torch.float32, device=device)
    return ((q * scale + 50) // 100).clamp(min=1)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _quantise_blocks(plane: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Bx1xHxW (H, W multiples of 8, values in 0..255 centred) through DCT quantisation."""
    b, _, h, w = plane.shape
    d = _dct_matrix(plane.device)
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coeffs = d @ blocks @ d.T
    coeffs = _round_ste(coeffs / q) * q
    blocks = d.T @ coeffs @ d
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, 1, h, w)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Bx3xHxW in [0, 1] -> the same after a differentiable JPEG round trip."""
    _, _, h, w = images.shape
    pad_h, pad_w = -h % 16, -w % 16
    x = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") * 255
    m = torch.tensor(_RGB_TO_YCBCR, device=x.device)
    ycc = torch.einsum("ij,bjhw->bihw", m, x)
    luma = _quantise_blocks(ycc[:, :1] - 128, _quant_table(_LUMA_Q, quality, x.device)) + 128
    chroma_q = _quant_table(_CHROMA_Q, quality, x.device)
    chroma = [
        F.interpolate(
            _quantise_blocks(F.avg_pool2d(ycc[:, c : c + 1], 2), chroma_q),
            scale_factor=2,
            mode="bilinear",
            align_corners=False,
        )
        for c in (1, 2)
    ]
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), torch.cat([luma, *chroma], 1))
    return (rgb[..., :h, :w] / 255).clamp(0, 1)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel +-3 sigma, reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).expand(images.shape[1], 1, -1)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.unsqueeze(2), groups=images.shape[1])
    return F.conv2d(x, kernel.unsqueeze(3), groups=images.shape[1])


def downscale(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Area down-scaling by ``factor``, bilinear back to the input size."""
    size = images.shape[-2:]
    small = [max(1, round(s * factor)) for s in size]
    reduced = F.interpolate(images, size=small, mode="area")
    return F.interpolate(reduced, size=size, mode="bilinear", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_RGB_TO_YCBCR[0], device=images.device, dtype=images.dtype)
    return torch.einsum("c,bchw->bhw", weights, images).unsqueeze(1).expand_as(images)


def _apply(kind: str, image: torch.Tensor) -> torch.Tensor:
    if kind == "jpeg":
        return jpeg(image, random.randint(*JPEG_QUALITY))
    if kind == "blur":
        return blur(image, random.uniform(*BLUR_SIGMA))
    if kind == "downscale":
        return downscale(image, random.uniform(*DOWNSCALE))
    return grayscale(image)


def _resize(image: torch.Tensor, size) -> torch.Tensor:
    """Area-averaged when shrinking, bilinear when enlarging."""
    if size[0] < image.shape[-2]:
        return F.interpolate(image, size=size, mode="area")
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def random_countermeasure(images: torch.Tensor, kinds, p: float, scale=(1.0, 1.0)) -> torch.Tensor:
    """Each image of Bx3xHxW, with probability ``p``, through one of ``kinds`` with random
    strength, applied at its size times a factor drawn log-uniformly from ``scale`` (lo, hi);
    the rest unchanged. Computed in float32 even under autocast: bfloat16 cannot hold a JPEG
    DC coefficient or a luma value finely enough to keep noise of a few /255."""
    with torch.autocast(images.device.type, enabled=False):
        return _random_countermeasure(images.float(), kinds, p, scale)


def _random_countermeasure(images: torch.Tensor, kinds, p: float, scale) -> torch.Tensor:
    out = []
    for image in images.split(1):
        if not kinds or random.random() >= p:
            out.append(image)
            continue
        kind = random.choice(kinds)
        factor = math.exp(random.uniform(math.log(scale[0]), math.log(scale[1])))
        if factor == 1:
            out.append(_apply(kind, image))
            continue
        size = image.shape[-2:]
        published = _resize(image, [round(s * factor) for s in size])
        out.append(_resize(_apply(kind, published), size))
    return torch.cat(out)
