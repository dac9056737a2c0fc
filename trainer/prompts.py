"""Prompt sampling from binary object masks: boxes, points and noisy masks.

All functions take masks as Bx1xHxW float/bool tensors in model-input pixels
and return prompts in the same pixel frame, the form ``NoiseGenerator`` and the
surrogate accept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PROMPT_TYPES = ("box", "points", "mask")


@dataclass
class Prompts:
    """A batch of prompts; absent types are None.

    boxes: Bx4 xyxy; points: (coords BxNx2 xy, labels BxN); masks: Bx1xHxW in {0, 1}.
    """

    boxes: torch.Tensor | None = None
    points: tuple | None = None
    masks: torch.Tensor | None = None


def boxes_from_masks(masks: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
    """Tight xyxy boxes (Bx4) around each mask, optionally jittered by ``jitter`` x box size."""
    b, _, h, w = masks.shape
    m = masks[:, 0] > 0.5
    ys = torch.arange(h, device=masks.device).view(1, h, 1).expand(b, h, w)
    xs = torch.arange(w, device=masks.device).view(1, 1, w).expand(b, h, w)
    big = torch.tensor(1e9, device=masks.device)
    x0 = torch.where(m, xs, big).flatten(1).amin(1)
    y0 = torch.where(m, ys, big).flatten(1).amin(1)
    x1 = torch.where(m, xs, -big).flatten(1).amax(1) + 1
    y1 = torch.where(m, ys, -big).flatten(1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    empty = ~m.flatten(1).any(1)
    boxes[empty] = torch.tensor([0.0, 0.0, w, h], device=masks.device)
    if jitter > 0:
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + torch.randn_like(boxes) * jitter * size
        boxes = boxes.clamp(min=0).minimum(torch.tensor([w, h, w, h], device=masks.device))
    return boxes


def points_from_masks(masks: torch.Tensor, num_points: int = 10) -> tuple:
    """``num_points`` positive points (xy, BxNx2) sampled uniformly inside each mask.

    Empty masks get padding points (label -1), which SAM's prompt encoder ignores.
    """
    b, _, h, w = masks.shape
    flat = (masks[:, 0] > 0.5).flatten(1).float()
    empty = flat.sum(1) == 0
    weights = torch.where(empty[:, None], torch.ones_like(flat), flat)
    idx = torch.multinomial(weights, num_points, replacement=True)
    coords = torch.stack([idx % w, idx // w], -1).float() + 0.5
    labels = torch.ones(b, num_points, device=masks.device)
    labels[empty] = -1
    return coords, labels


def noisy_masks(masks: torch.Tensor, strength: float = 0.08) -> torch.Tensor:
    """Masks with a randomly perturbed boundary (Bx1xHxW in {0, 1}).

    A smooth random field (amplitude ``strength`` of the image side) is added to
    the signed distance-like blurred mask before re-thresholding, so the
    boundary moves in and out by varying amounts.
    """
    b, _, h, w = masks.shape
    k = max(3, (min(h, w) // 16) | 1)
    blurred = F.avg_pool2d(masks.float(), k, stride=1, padding=k // 2)
    coarse = torch.randn(b, 1, max(2, h // 32), max(2, w // 32), device=masks.device)
    field = F.interpolate(coarse, (h, w), mode="bicubic", align_corners=False)
    return ((blurred + strength * 4 * field) > 0.5).float()


def sample_generator_prompts(masks: torch.Tensor, num_points: int = 10, rng=random) -> Prompts:
    """A random non-empty subset of {box, points, noisy mask} for the generator."""
    chosen = [t for t in PROMPT_TYPES if rng.random() < 0.5] or [rng.choice(PROMPT_TYPES)]
    return make_prompts(masks, chosen, num_points)


def sample_surrogate_prompts(masks: torch.Tensor, num_points: int = 10, rng=random) -> Prompts:
    """One random prompt type for the surrogate."""
    return make_prompts(masks, [rng.choice(PROMPT_TYPES)], num_points)


def make_prompts(masks: torch.Tensor, types, num_points: int = 10) -> Prompts:
    """Prompts of the given ``types`` (subset of :data:`PROMPT_TYPES`) for ``masks``."""
    unknown = set(types) - set(PROMPT_TYPES)
    if unknown:
        raise ValueError(f"unknown prompt types {sorted(unknown)}")
    return Prompts(
        boxes=boxes_from_masks(masks, jitter=0.05) if "box" in types else None,
        points=points_from_masks(masks, num_points) if "points" in types else None,
        masks=noisy_masks(masks) if "mask" in types else None,
    )
