"""What every victim provides, and the instance-mask evaluation two of them share."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from fiftyone_unseg.audit.targets import Targets
from fiftyone_unseg.audit.training import Example, Settings


class Victim(ABC):
    """A segmentation model an unauthorised trainer could train on the data.

    Attributes:
      name: registry name.
      metric: what :meth:`score` returns, in [0, 1].
      labels: "instances" or "semantic": the targets it trains on.
      pretrained: whether it starts from weights that predict as they are, so that 0
        epochs of training (the weights alone) is a meaningful reference.
    """

    name: str
    metric: str
    labels: str
    pretrained: bool = False

    @abstractmethod
    def defaults(self) -> dict:
        """Default ``epochs``, ``image_size``, ``batch_size`` and ``lr``."""

    @abstractmethod
    def train(
        self, examples: list[Example], targets: Targets, settings: Settings, folder: str, on_epoch
    ):
        """Train a fresh model on ``examples`` (files for it go under ``folder``)."""

    @abstractmethod
    def predict(
        self, model, examples: list[Example], targets: Targets, settings: Settings, folder: str
    ) -> list:
        """One FiftyOne label per example."""

    @abstractmethod
    def score(
        self, view, pred_field: str, gt_field: str, eval_key: str, targets: Targets
    ) -> tuple[float, float]:
        """(metric of the predictions in ``pred_field`` against ``gt_field`` on ``view``,
        the metric of a trivial predictor); registers the FiftyOne evaluation ``eval_key``."""


def evaluate_instances(view, pred_field: str, gt_field: str, eval_key: str, compute_mAP: bool):
    """FiftyOne's COCO-style evaluation on instance masks (per-object TP/FP, optional mAP)."""
    return view.evaluate_detections(
        pred_field,
        gt_field=gt_field,
        eval_key=eval_key,
        use_masks=True,
        compute_mAP=compute_mAP,
        progress=False,
    )


def box_fill_iou(view, gt_field: str) -> float:
    """Mean IoU of filling each ground-truth box: its mask's share of the box."""
    fills = [
        float(np.mean(d.mask > 0)) if d.mask is not None else 1.0
        for dets in view.values(gt_field)
        if dets is not None
        for d in dets.detections
    ]
    return float(np.mean(fills)) if fills else 0.0


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight integer box (x0, y0, x1, y1), end-exclusive, of a non-empty HxW mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def relative_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, width, height) of a non-empty HxW mask's tight box, as shares of the image."""
    x0, y0, x1, y1 = mask_extent(mask)
    height, width = mask.shape
    return x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height
