"""The victims: segmentation models trained on the (protected) data, one module each."""

from __future__ import annotations

from fiftyone_unseg.audit.victims.base import Victim

VICTIMS = ("yolo", "sam", "semantic")


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
    if name == "sam":
        from fiftyone_unseg.audit.victims.sam import SamVictim

        return SamVictim(sam_checkpoint)
    if name == "semantic":
        from fiftyone_unseg.audit.victims.semantic import SemanticVictim

        return SemanticVictim(semantic_weights)
    raise ValueError(f"unknown victim {name!r}; choose from {', '.join(VICTIMS)}")


__all__ = ["VICTIMS", "Victim", "make_victim"]
