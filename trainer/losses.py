"""BCE + Dice on importance-sampled points (PointRend-style), as in Mask2Former / SAM-HQ."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``maps`` (BxCxHxW) at ``coords`` (BxPx2, xy in [0, 1]) -> BxCxP."""
    grid = (2.0 * coords - 1.0).unsqueeze(2)  # Bx P x1x2 in [-1, 1]
    return F.grid_sample(maps, grid, align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> torch.Tensor:
    """Point coordinates (BxPx2 in [0, 1]) biased towards uncertain logits.

    ``oversample_ratio * num_points`` random candidates are drawn; the
    ``importance_ratio`` fraction with logits closest to 0 is kept and the rest
    of the ``num_points`` are uniform random points.
    """
    b = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(b, num_candidates, 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs().squeeze(1)  # B x candidates
    num_uncertain = int(importance_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    rand = torch.rand(b, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([chosen, rand], dim=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss per sample (BxP logits and targets) -> B."""
    probs = logits.sigmoid()
    num = 2 * (probs * targets).sum(-1)
    den = probs.sum(-1) + targets.sum(-1)
    return 1 - (num + 1) / (den + 1)


def mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_points: int = 112 * 112,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
) -> torch.Tensor:
    """Mean BCE + Dice between mask ``logits`` (Bx1xhxw) and binary ``targets`` (Bx1xHxW).

    Both are sampled at the same importance-sampled points, so logits and
    targets may have different resolutions.
    """
    coords = uncertain_points(logits.float(), num_points, oversample_ratio, importance_ratio)
    point_logits = point_sample(logits.float(), coords).squeeze(1)
    point_targets = point_sample(targets.float(), coords).squeeze(1)
    bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none")
    return (bce.mean(-1) + dice_loss(point_logits, point_targets)).mean()


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU per sample of thresholded ``logits`` (Bx1xhxw, resized to the targets) -> B."""
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits.float(), targets.shape[-2:], mode="bilinear")
    pred, gt = logits > 0, targets > 0.5
    inter = (pred & gt).flatten(1).sum(-1).float()
    union = (pred | gt).flatten(1).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def shared_texture_share(noise: torch.Tensor, object_mask: torch.Tensor, period: int):
    """Share of the energy of ``noise`` (Bx3xHxW) that one fixed texture per region
    (object and background of ``object_mask``, Bx1xHxW in [0, 1]) and per phase of a
    ``period``-pixel grid explains over the batch -> scalar in [0, 1].

    Such a texture is what an informed trainer can estimate from protected images alone
    and subtract (``fiftyone_unseg/audit/class_texture.py``); penalising its share asks
    for noise specific to each image.
    """
    h = noise.shape[-2] - noise.shape[-2] % period
    w = noise.shape[-1] - noise.shape[-1] % period
    noise, object_mask = noise[..., :h, :w].float(), object_mask[..., :h, :w].float()

    def phase_sums(x):  # BxCxHxW -> Cxpxp: sums over images and grid cells
        cells = x.reshape(x.shape[0], x.shape[1], h // period, period, w // period, period)
        return cells.sum((0, 2, 4))

    explained = noise.new_zeros(())
    for weight in (object_mask, 1 - object_mask):
        count = phase_sums(weight).clamp(min=1e-6)
        texture = phase_sums(noise * weight) / count  # the region's mean per phase
        explained = explained + (texture.pow(2) * count).sum()
    return explained / noise.pow(2).sum().clamp(min=1e-12)
