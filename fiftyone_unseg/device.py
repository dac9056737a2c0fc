"""The torch device people name (``--device``, ``device=``), checked before any work."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a torch device ("auto": CUDA where available, else the CPU); ValueError
    for a name torch does not know or a CUDA device on a machine without one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here: use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here: use cpu")
    return device
