"""Semantic segmentation: torchvision's LRASPP with a MobileNetV3-Large backbone.

Built with ``weights=None, weights_backbone=None`` (nothing is downloaded); a local
weights file may initialise it: an LRASPP state dict (its classifier is re-initialised
when the class count differs) or a MobileNetV3-Large ImageNet state dict for the
backbone. Trained with cross-entropy on random crops (of the audit's image size) of the
images at their own resolution, so fine noise is seen as it is, and tested on whole
images; metric: mIoU over the classes
present in the clean test split (ground truth or prediction), background included
(where the field has one), ignore values (void) left out, from FiftyOne's pixel
confusion matrix. The trivial predictor says the most frequent class everywhere.

The default 90 epochs train it close to convergence, as an unauthorised trainer would:
on the 37 training scenes of ``benchmarks/effectiveness.py``'s held-out set, after 30 epochs
clean, uniform-noise and fixed-pattern training all scored alike (mIoU 0.457, 0.385,
0.380), after 90 epochs the victim is better (0.570), uniform noise leaves it so (0.546)
and the mask-aligned pattern shortcut shows (0.374).
"""

from __future__ import annotations

import os

import fiftyone as fo
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from fiftyone_unseg.audit.targets import IGNORE
from fiftyone_unseg.audit.training import fit, flip
from fiftyone_unseg.audit.victims.base import Victim
from fiftyone_unseg.io import atomic_write_image, read_rgb
from fiftyone_unseg.modeling.build import load_state_file
from fiftyone_unseg.modeling.promptable import PIXEL_MEAN, PIXEL_STD

# torchvision's MobileNetV3 keeps BatchNorm statistics with momentum 0.01, meant for long
# ImageNet runs; after a few hundred steps they are still near their initial values and
# eval-mode predictions collapse to one class. PyTorch's default momentum tracks them.
BN_MOMENTUM = 0.1


class SemanticVictim(Victim):
    name = "semantic"
    metric = "mIoU"
    labels = "semantic"

    def __init__(self, weights: str | None = None) -> None:
        if weights is not None and not os.path.isfile(weights):
            raise ValueError(f"semantic weights not found: {weights} (a local file)")
        self.weights = weights

    def defaults(self) -> dict:
        return {"epochs": 90, "image_size": 256, "batch_size": 4, "lr": 1e-3}

    def _build(self, num_classes: int, settings) -> torch.nn.Module:
        torch.manual_seed(settings.seed)
        model = lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_classes
        )
        if self.weights:
            _load_weights(model, self.weights)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM
        return model.to(settings.device)

    def train(self, examples, targets, settings, folder, on_epoch):
        images, class_maps = [], []
        for example in examples:
            image = _read(example.image_path)
            images.append(image)
            class_maps.append(torch.from_numpy(targets.semantic(example.labels, *image.shape[1:])))
        model = self._build(len(targets.semantic_classes) + 1, settings)
        generator = torch.Generator().manual_seed(settings.seed)

        def loss_fn(indices, flips):
            crops = [
                _random_crop(images[i], class_maps[i], settings.image_size, generator)
                for i in indices.tolist()
            ]
            batch = flip(torch.stack([c[0] for c in crops]), flips).to(settings.device)
            labels = flip(torch.stack([c[1] for c in crops]), flips).long().to(settings.device)
            return F.cross_entropy(model(normalize(batch))["out"], labels, ignore_index=IGNORE)

        return fit(model, len(images), loss_fn, settings, on_epoch)

    @torch.inference_mode()
    def predict(self, model, examples, targets, settings, folder):
        background = targets.segment_values.background
        values = np.array((background or 0,) + targets.semantic_values)
        dtype = np.uint8 if values.max() < 256 else np.uint16
        labels = []
        for example in examples:
            image = _read(example.image_path)[None].to(settings.device)
            logits = model(normalize(image))["out"][0]
            if background is None:  # every pixel is some class: class 0 is never an answer
                logits[0] = -torch.inf
            classes = logits.argmax(0).cpu().numpy()
            path = os.path.join(folder, f"{example.sample_id}.png")
            atomic_write_image(Image.fromarray(values[classes].astype(dtype)), path)
            labels.append(fo.Segmentation(mask_path=path))
        return labels

    def score(self, view, pred_field, gt_field, eval_key, targets):
        background = targets.segment_values.background
        # ignore values are in no mask target: FiftyOne's confusion matrix leaves them out
        mask_targets = {
            **({} if background is None else {background: "background"}),
            **dict(zip(targets.semantic_values, targets.semantic_classes)),
        }
        results = view.evaluate_segmentations(
            pred_field,
            gt_field=gt_field,
            eval_key=eval_key,
            mask_targets=mask_targets,
            progress=False,
        )
        return miou(results.pixel_confusion_matrix)


def miou(confusion: np.ndarray) -> tuple[float, float]:
    """(mIoU, mIoU of predicting the most frequent ground-truth class everywhere) of a
    pixel confusion matrix (rows: ground truth, columns: prediction) over the classes
    present."""
    confusion = np.asarray(confusion, np.float64)
    inter = np.diag(confusion)
    gt, pred = confusion.sum(1), confusion.sum(0)
    union = gt + pred - inter
    present = union > 0
    if not present.any():
        return 0.0, 0.0
    majority = int(np.argmax(gt))
    trivial = gt[majority] / confusion.sum() / (gt > 0).sum()
    return float((inter[present] / union[present]).mean()), float(trivial)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Bx3xHxW in [0, 255] (uint8 or float) -> ImageNet-normalised float."""
    mean = torch.tensor(PIXEL_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def _read(path: str) -> torch.Tensor:
    """The image at its own resolution, 3xHxW uint8."""
    return torch.from_numpy(read_rgb(path)).mul(255).round().to(torch.uint8).permute(2, 0, 1)


def _random_crop(
    image: torch.Tensor, class_map: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random SxS crop of a 3xHxW image and its HxW class map; sides shorter than S are
    padded (image 0, class map :data:`IGNORE`)."""
    height, width = class_map.shape
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    image = F.pad(image, (0, pad_w, 0, pad_h))
    class_map = F.pad(class_map, (0, pad_w, 0, pad_h), value=IGNORE)
    top = int(torch.randint(class_map.shape[0] - size + 1, (1,), generator=generator))
    left = int(torch.randint(class_map.shape[1] - size + 1, (1,), generator=generator))
    window = (slice(top, top + size), slice(left, left + size))
    return image[(slice(None), *window)], class_map[window]


def _load_weights(model: torch.nn.Module, path: str) -> None:
    """Load an LRASPP or a MobileNetV3-Large classification state dict (``weights_only``)
    into ``model``, keeping tensors whose shapes differ (the classifier) as initialised."""
    state = load_state_file(path)
    state = {
        k.replace("features.", "backbone.", 1) if k.startswith("features.") else k: v
        for k, v in state.items()
    }
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    backbone = [k for k in own if k.startswith("backbone.")]
    if not all(k in matching for k in backbone):
        raise ValueError(
            f"{path} does not hold a MobileNetV3-Large backbone "
            f"({sum(k in matching for k in backbone)} of {len(backbone)} backbone tensors match)"
        )
    model.load_state_dict(matching, strict=False)
