"""What the PyTorch victims share: settings, examples in the model frame, the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fiftyone_unseg.io import read_rgb
from fiftyone_unseg.protect import Frame

WARMUP_FRACTION = 0.05  # of the steps, linear warm-up before the cosine decay


@dataclass(frozen=True)
class Settings:
    """How one victim trains: the same for every variant of an audit."""

    epochs: int
    image_size: int
    batch_size: int
    lr: float
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class Example:
    """One sample as a victim sees it: the image to read and the sample's label fields."""

    sample_id: str
    image_path: str
    labels: dict


def load_image(path: str, size: int) -> tuple[torch.Tensor, Frame, np.ndarray]:
    """(3xSxS uint8 in the model frame, its :class:`Frame`, the HxWx3 float image)."""
    image = read_rgb(path)
    frame = Frame(image.shape[0], image.shape[1], size)
    model_input = frame.to_model(torch.from_numpy(image).permute(2, 0, 1))
    return model_input.mul(255).round().to(torch.uint8), frame, image


def flip(tensors: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the samples ``flips`` (bool B) of a Bx...xW batch left-right."""
    shape = (-1,) + (1,) * (tensors.ndim - 1)
    return torch.where(flips.view(shape), tensors.flip(-1), tensors)


def fit(
    model: torch.nn.Module,
    num_items: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    settings: Settings,
    on_epoch: Callable[[], None] | None = None,
) -> torch.nn.Module:
    """Train ``model``'s trainable parameters; returns it in eval mode.

    Each epoch visits the items in a seeded random order in minibatches;
    ``loss_fn(indices, flips)`` returns the loss of the items ``indices`` (int64 B),
    mirrored where ``flips`` (bool B). AdamW with a short linear warm-up and a
    cosine decay to 0. ``on_epoch()`` is called after every epoch. With 0 epochs the
    model is returned as it is.
    """
    if settings.epochs == 0:
        return model.eval()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    total = settings.epochs * math.ceil(num_items / settings.batch_size)
    warmup = max(1, round(WARMUP_FRACTION * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total)),
    )
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(num_items, generator=generator)
        for indices in order.split(settings.batch_size):
            flips = torch.rand(len(indices), generator=generator) < 0.5
            loss = loss_fn(indices, flips)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if on_epoch is not None:
            on_epoch()
    return model.eval()
