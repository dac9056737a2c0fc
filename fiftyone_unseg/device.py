"""The torch device people name (``--device``, ``device=``), checked before any work."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device ("auto": CUDA where available, else the CPU); ValueError
    for a name torch does not know or a CUDA device the machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here: use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r} requested but this machine has {torch.cuda.device_count()} "
            f"CUDA devices: use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here: use cpu")
    return device
