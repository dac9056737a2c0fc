"""The victims: segmentation models trained on the (protected) data, one module each."""

from __future__ import annotations

from fiftyone_unseg.audit.victims.base import Victim

VICTIMS = ("yolo", "sam", "sam_point", "semantic")
DEFAULT_VICTIMS = ("yolo", "sam", "semantic")  # sam_point: the second interactive metric


def per_victim(text: str | int | None, option: str) -> int | dict | None:
    """``"5"`` -> 5 (every victim); ``"yolo=30 sam=8"`` (or with commas) ->
    {"yolo": 30, "sam": 8}; empty -> None (each victim's default). ValueError naming
    ``option`` for anything else."""
    words = str(text if text is not None else "").replace(",", " ").split()
    if not words:
        return None
    try:
        if len(words) == 1 and "=" not in words[0]:
            return int(words[0])
        return {name: int(value) for name, value in (w.split("=") for w in words)}
    except ValueError:
        raise ValueError(
            f"{option} {' '.join(words)}: give one number or victim=number pairs"
        ) from None


def make_victim(
    name: str,
    yolo_weights: str | None = None,
    sam_checkpoint: str | None = None,
    semantic_weights: str | None = None,
) -> Victim:
    """The victim ``name`` (see :data:`VICTIMS`), with its optional local weights."""
    if name == "yolo":
        from fiftyone_unseg.audit.victims.yolo import YoloVictim

        return YoloVictim(yolo_weights)
    if name in ("sam", "sam_point"):
        from fiftyone_unseg.audit.victims.sam import SamVictim

        return SamVictim(sam_checkpoint, "box" if name == "sam" else "point")
    if name == "semantic":
        from fiftyone_unseg.audit.victims.semantic import SemanticVictim

        return SemanticVictim(semantic_weights)
    raise ValueError(f"unknown victim {name!r}; choose from {', '.join(VICTIMS)}")


__all__ = ["DEFAULT_VICTIMS", "VICTIMS", "Victim", "make_victim", "per_victim"]
