"""Instance segmentation: Ultralytics YOLO, trained on the data in YOLO format.

By default ``yolov8n-seg.yaml`` is built from scratch (no download); a local ``.pt`` (an
Ultralytics checkpoint) starts from those weights. Checkpoints are only ever loaded with
Ultralytics' restricted loader (``torch.load(weights_only=True)`` and an allow-list of
torch and Ultralytics layer classes), so a file from a stranger cannot run code: one
that references anything else is refused. Training runs offline: CPU-safe settings, no
plots, and the font Ultralytics' dataset check would fetch for plots is not fetched.
Metric: COCO-style mask mAP@[.5:.95] from FiftyOne's ``evaluate_detections``; trivial
predictor: one detection per image, the training instances' median box (position and
size, as shares of the image) filled, labelled with their most frequent class.

The optimiser steps once per batch (``nbs`` = batch size): Ultralytics' default
accumulates gradients up to a nominal batch of 64, which on a few dozen images leaves
a handful of steps per run (clean mAP 0.04 on the 37-scene benchmark split with batch
16, 0.24 with batch 8 and no accumulation).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
from collections import Counter

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from fiftyone_unseg.audit.victims.base import Victim, evaluate_instances, relative_box
from fiftyone_unseg.io import read_rgb

DEFAULT_MODEL = "yolov8n-seg.yaml"
CONFIDENCE = 0.01  # lowest prediction score kept (mAP integrates over the scores)
MAX_DETECTIONS = 100


def _ultralytics():
    """Import Ultralytics offline (its online check runs at import) and undo the global
    patches its import applies to ``PIL.Image.open`` (on a file Pillow cannot identify it
    tries to pip-install an HEIF plugin) and ``torch.save``, so other code in the process
    behaves as before."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    image_open, torch_save = Image.open, torch.save
    import ultralytics
    import ultralytics.data.utils

    Image.open, torch.save = image_open, torch_save
    return ultralytics


@contextlib.contextmanager
def _quiet_offline():
    """For the duration: Ultralytics' logging at WARNING, its font fetch disabled and every
    checkpoint it loads loaded restricted (its ``SAFE_LOAD`` switch, read at each load);
    after, all as it was, and torch's thread count and deterministic switches too
    (Ultralytics sets the count to cores - 1 for CPU training and the switches for the whole
    process)."""
    ultralytics = _ultralytics()
    import ultralytics.nn.tasks as tasks

    if not tasks._SafeLoad.SUPPORTED:  # its restricted loading needs torch >= 2.6
        raise RuntimeError("Ultralytics cannot load checkpoints restricted with this torch")
    logger = ultralytics.utils.LOGGER
    level, check_font, safe_load = logger.level, ultralytics.data.utils.check_font, tasks.SAFE_LOAD
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic
    logger.setLevel(logging.WARNING)
    ultralytics.data.utils.check_font = lambda *args, **kwargs: None
    tasks.SAFE_LOAD = True
    try:
        yield ultralytics
    finally:
        logger.setLevel(level)
        ultralytics.data.utils.check_font = check_font
        tasks.SAFE_LOAD = safe_load
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn


def check_weights(path: str) -> None:
    """Raise ValueError unless ``path`` is a local Ultralytics ``.pt`` that loads restricted
    (only allow-listed torch and Ultralytics classes; nothing in it runs)."""
    if not (os.path.isfile(path) and path.endswith(".pt")):
        raise ValueError(f"YOLO weights must be a local .pt file, got {path}")
    with _quiet_offline() as ultralytics:
        try:
            checkpoint, _ = ultralytics.nn.tasks.torch_safe_load(path, safe_only=True)
        except (TypeError, ModuleNotFoundError, pickle.UnpicklingError) as error:
            raise ValueError(f"YOLO weights {path} are refused: {error}") from error
    if not isinstance(checkpoint, dict) or not isinstance(
        checkpoint.get("ema") or checkpoint.get("model"), torch.nn.Module
    ):
        raise ValueError(f"YOLO weights {path} hold no Ultralytics model ('model' or 'ema')")


class YoloVictim(Victim):
    name = "yolo"
    metric = "mask mAP"
    labels = "instances"

    def __init__(self, weights: str | None = None) -> None:
        if weights is not None:
            check_weights(weights)
        self.weights = weights
        self.prior = None  # the trivial predictor of the last training set: (label, box)
        self._chances = {}  # (prior, ground truth field) -> its mAP

    def defaults(self) -> dict:
        return {"epochs": 60, "image_size": 256, "batch_size": 8, "lr": None}

    def train(self, examples, targets, settings, folder, on_epoch):
        data = write_yolo_dataset(os.path.join(folder, "data"), examples, targets)
        self.prior = trivial_prior(examples, targets)
        with _quiet_offline() as ultralytics:
            model = ultralytics.YOLO(self.weights or DEFAULT_MODEL, task="segment")
            model.add_callback("on_train_epoch_end", lambda _trainer: on_epoch())
            model.train(
                data=data,
                epochs=settings.epochs,
                imgsz=settings.image_size,
                batch=settings.batch_size,
                nbs=settings.batch_size,  # one optimiser step per batch, no accumulation
                device=settings.device,
                seed=settings.seed,
                deterministic=True,
                single_cls=False,  # a checkpoint's own setting would merge the classes
                workers=0,
                amp=False,
                plots=False,
                val=False,
                verbose=False,
                project=folder,
                name="train",
                exist_ok=True,
                **({} if settings.lr is None else {"optimizer": "AdamW", "lr0": settings.lr}),
            )
        return model

    def predict(self, model, examples, targets, settings, folder):
        import fiftyone.utils.ultralytics as fouu

        labels = []
        with _quiet_offline() as ultralytics:
            formats = ultralytics.data.utils.IMG_FORMATS
            for example in examples:
                result = model.predict(
                    _yolo_source(example.image_path, formats),
                    imgsz=settings.image_size,
                    device=settings.device,
                    conf=CONFIDENCE,
                    max_det=MAX_DETECTIONS,
                    verbose=False,
                )[0]
                labels.append(fouu.to_instances(result))
        return labels

    def score(self, view, pred_field, gt_field, eval_key, targets):
        score = evaluate_instances(view, pred_field, gt_field, eval_key, compute_mAP=True).mAP()
        if self.prior is None:
            return score, 0.0
        key = (self.prior, gt_field)
        if key not in self._chances:
            self._chances[key] = trivial_map(view, gt_field, f"{eval_key}_trivial", *self.prior)
        return score, self._chances[key]


def trivial_prior(examples, targets) -> tuple[str, tuple[float, ...]] | None:
    """(most frequent class, median [x, y, w, h] box as shares of the image) of the
    examples' instances; None without any."""
    boxes, classes = [], []
    for example in examples:
        width, height = Image.open(example.image_path).size
        masks, indices = targets.instances(example.labels, height, width)
        boxes += [relative_box(mask) for mask in masks]
        classes += [targets.instance_classes[k] for k in indices]
    if not boxes:
        return None
    label = Counter(classes).most_common(1)[0][0]  # ties: the first seen
    return label, tuple(float(v) for v in np.median(boxes, axis=0))


def trivial_map(view, gt_field: str, field: str, label: str, box) -> float:
    """Mask mAP of predicting ``box`` filled, labelled ``label``, on every image of ``view``
    (through a temporary field ``field``, removed after)."""
    import fiftyone as fo

    dataset = view._dataset
    guesses = {
        sample_id: fo.Detections(
            detections=[
                fo.Detection(
                    label=label, bounding_box=list(box), mask=np.ones((8, 8), bool), confidence=1.0
                )
            ]
        )
        for sample_id in view.values("id")
    }
    dataset.set_values(field, guesses, key_field="id")
    try:
        return float(evaluate_instances(view, field, gt_field, field, compute_mAP=True).mAP())
    finally:
        dataset.delete_evaluation(field)
        dataset.delete_sample_field(field)


def _yolo_source(path: str, formats) -> str | np.ndarray:
    """What Ultralytics reads of the image at ``path``: the path, or where it passes over
    its file type (PPM, GIF, ...), the pixels as :func:`read_rgb` reads them (BGR uint8)."""
    if os.path.splitext(path)[1][1:].lower() in formats:
        return path
    return cv2.cvtColor(np.round(read_rgb(path) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def write_yolo_dataset(folder: str, examples, targets) -> str:
    """Write ``examples`` as a YOLO segmentation dataset; returns its ``dataset.yaml``.

    Images are linked as ``images/train/<sample id><ext>``, or written there as PNG where
    Ultralytics would pass over their file type (PPM, GIF, ...: a variant would train on
    fewer images than another); each instance becomes one polygon row (its largest outer
    contour) of ``labels/train/<sample id>.txt``. The first image doubles as the
    (required) validation split. What ``folder`` held is removed first: Ultralytics
    trains on every image there, an earlier audit's too.
    """
    formats = _ultralytics().data.utils.IMG_FORMATS
    shutil.rmtree(folder, ignore_errors=True)
    for split in ("train", "val"):
        os.makedirs(os.path.join(folder, "images", split), exist_ok=True)
        os.makedirs(os.path.join(folder, "labels", split), exist_ok=True)
    for k, example in enumerate(examples):
        image = read_rgb(example.image_path)
        masks, classes = targets.instances(example.labels, *image.shape[:2])
        rows = [_polygon_row(mask, c) for mask, c in zip(masks, classes)]
        source = _yolo_source(example.image_path, formats)
        for split in ("train", "val") if k == 0 else ("train",):
            target = os.path.join(folder, "images", split, example.sample_id)
            if isinstance(source, str):
                os.symlink(os.path.abspath(source), target + os.path.splitext(source)[1])
            else:
                cv2.imwrite(target + ".png", source)
            with open(os.path.join(folder, "labels", split, example.sample_id + ".txt"), "w") as f:
                f.write("".join(row for row in rows if row))
    config = {
        "path": os.path.abspath(folder),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(targets.instance_classes)),
    }
    path = os.path.join(folder, "dataset.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def _polygon_row(mask: np.ndarray, class_index: int) -> str:
    """``class x1 y1 x2 y2 ...`` (normalised) for the mask's largest outer contour."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return ""
    contour = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    if len(contour) < 3:
        return ""
    height, width = mask.shape
    contour /= (width, height)
    return f"{class_index} " + " ".join(f"{v:.6f}" for v in contour.ravel()) + "\n"
