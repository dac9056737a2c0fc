"""Interactive segmentation: SAM trained with box prompts (the paper's SAM-HQ task, victim
``sam``) or with one click inside each object (``sam_point``).

Box prompts, from scratch: the ``tiny`` layout (192-dim, 4-block ViT) trained on object-centred
crops: each instance is seen in a square view around its box (1.2 to 2 times the box's
long side while training, 1.6 when predicting), resized to the audit's image size, as
interactive-segmentation sets are object-centred (a 128 px full scene gives a small
object one or two of the ViT's 16 px patches; from scratch on whole scenes it never beat
filling the box). An official SAM checkpoint (``sam_vit_b_01ec64.pth``, ...) given as a
local file is fine-tuned on whole images at its own size, as SAM was pretrained. Every
instance of a training image is a training prompt (its tight box); the loss is BCE +
Dice on the masks. Metric: mean IoU of the box-prompted masks with the clean test
instances; the trivial predictor fills the box.

Point prompts (a click leaves the object's extent unknown, so no object-centred crops):
trained on whole images (the ``tiny`` layout from scratch, or a checkpoint), each
instance prompted with a random pixel of its mask; tested with the innermost pixel of
each clean test instance (the farthest from its border). Metric: mean mask IoU; the
trivial predictor is a box of the training instances' median size centred on the click.
"""

from __future__ import annotations

import dataclasses
import os
import pickle

import fiftyone as fo
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide

from fiftyone_unseg.audit.training import Settings, fit, load_image
from fiftyone_unseg.audit.victims.base import (
    Victim,
    box_fill_iou,
    evaluate_instances,
    mask_extent,
    relative_box,
)
from fiftyone_unseg.geometry import box_crops, boxes_in_crops, crop, uncrop
from fiftyone_unseg.modeling import (
    BatchedMaskDecoder,
    PromptableSegmenter,
    SamConfig,
    build_sam_modules,
    generator_configs,
    hyper_dot,
    load_sam_weights,
)

MAX_PROMPTS = 16  # instances per training image and step; more are subsampled
SCALE_JITTER = (0.8, 1.25)  # zoom range of the training augmentation (whole images)
CROP_CONTEXT = (1.2, 2.0)  # object-centred crops: side / box long side, while training
CROP_SHIFT = 0.15  # largest offset of a training crop's centre, in crop sides
PREDICT_CONTEXT = 1.6
CROP_SOURCE_SCALE = 4  # crops are cut from frames 4x the crop size (512 px for 128)
FULL_SIZE = 512  # checkpoints at this side or more fine-tune as official SAMs do


PROMPTS = ("box", "point")


class PromptedSam(PromptableSegmenter):
    """SAM's layout with its full mask decoder (so official checkpoints load), predicting
    the single-mask output (SAM's ``multimask_output=False``) for one box or one click per
    object."""

    def forward(
        self,
        images: torch.Tensor,
        owners: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images Bx3xSxS in [0, 1]; owners N, the image index of each object; boxes Nx4
        xyxy or points Nx2 xy (a positive click each), in input pixels -> mask logits
        Nx1x(S/4)x(S/4)."""
        embeddings = self.image_encoder(self.normalize(images))[owners]
        clicks = None
        if points is not None:
            clicks = (points[:, None], torch.ones(len(points), 1, device=points.device))
        sparse, dense = self.embed_prompts(len(owners), boxes=boxes, points=clicks)
        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
        hs, upscaled = decoder.run_transformer(
            tokens, embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense
        )
        return hyper_dot(decoder.output_hypernetworks_mlps[:1], hs[:, 1:2], upscaled)


def build_prompted_sam(
    config: SamConfig, checkpoint: str | os.PathLike | None = None
) -> PromptedSam:
    """A :class:`PromptedSam` with layout ``config``, randomly initialised or loaded from
    an official SAM state dict (``weights_only``; see :func:`load_sam_weights`)."""
    image_encoder, prompt_encoder, decoder_kwargs = build_sam_modules(config)
    model = PromptedSam(
        image_encoder, prompt_encoder, BatchedMaskDecoder(num_multimask_outputs=3, **decoder_kwargs)
    )
    model.config = config
    if checkpoint is not None:
        load_sam_weights(model, checkpoint)
    return model


def checkpoint_config(path: str | os.PathLike) -> SamConfig:
    """The :data:`generator_configs` layout of an official SAM checkpoint, by its encoder's
    width and depth (read memory-mapped, ``weights_only``)."""
    if not os.path.isfile(path):
        raise ValueError(f"SAM checkpoint not found: {path} (a local file; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        patch = state["image_encoder.patch_embed.proj.weight"]
        pos = state["image_encoder.pos_embed"]
    except (pickle.UnpicklingError, EOFError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an official SAM state dict ({e})") from e
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for config in generator_configs.values():
        if (config.encoder_embed_dim, config.encoder_depth) == (patch.shape[0], depth):
            return dataclasses.replace(config, img_size=pos.shape[1] * patch.shape[-1])
    raise ValueError(f"{path}: no known SAM layout has width {patch.shape[0]} and depth {depth}")


def bce_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE + soft Dice loss of mask logits and binary targets (both NxHxW)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1)
    probs, targets = logits.sigmoid().flatten(1), targets.flatten(1)
    dice = 1 - (2 * (probs * targets).sum(1) + 1) / (probs.sum(1) + targets.sum(1) + 1)
    return (bce.mean(1) + dice).mean()


class SamVictim(Victim):
    labels = "instances"

    def __init__(self, checkpoint: str | None = None, prompt: str = "box") -> None:
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
        self.checkpoint = checkpoint
        self.config = checkpoint_config(checkpoint) if checkpoint else None
        self.prompt = prompt
        self.pretrained = checkpoint is not None
        self.name = "sam" if prompt == "box" else "sam_point"
        self.metric = f"{prompt}-prompted mask IoU"

    @property
    def on_crops(self) -> bool:
        """Whether it trains and predicts on object-centred crops (box prompts from scratch)."""
        return self.checkpoint is None and self.prompt == "box"

    def defaults(self) -> dict:
        if self.config is not None:  # fine-tuning: the checkpoint's size, a gentle rate
            size = self.config.img_size
            if size >= FULL_SIZE:  # an official SAM: memory allows small batches only
                return {"epochs": 4, "image_size": size, "batch_size": 2, "lr": 1e-5}
            return {"epochs": 30, "image_size": size, "batch_size": 16, "lr": 1e-4}
        if self.prompt == "point":  # whole images
            return {"epochs": 30, "image_size": 128, "batch_size": 16, "lr": 1e-3}
        return {"epochs": 20, "image_size": 128, "batch_size": 16, "lr": 1e-3}

    def _build(self, settings: Settings) -> PromptedSam:
        if settings.image_size % 16:
            raise ValueError(
                f"SAM's image size must be a multiple of 16, got {settings.image_size}"
            )
        config = dataclasses.replace(
            self.config or generator_configs["tiny"], img_size=settings.image_size
        )
        torch.manual_seed(settings.seed)
        return build_prompted_sam(config, self.checkpoint).to(settings.device)

    def train(self, examples, targets, settings, folder, on_epoch):
        if self.on_crops:
            return self._train_on_crops(examples, targets, settings, on_epoch)
        size = settings.image_size
        images, masks, extents = [], [], []
        for example in examples:
            image, frame, full = load_image(example.image_path, size)
            instance_masks, _ = targets.instances(example.labels, *full.shape[:2])
            if len(instance_masks):
                images.append(image)
                masks.append(frame.to_model(torch.from_numpy(instance_masks).float()) > 0.5)
                extents += [relative_box(m)[2:] for m in instance_masks]
        if not images:
            raise ValueError("no training image has an instance to prompt")
        model = self._build(settings)
        model.prior_size = tuple(np.median(extents, axis=0))  # the trivial predictor's box
        images = torch.stack(images)
        generator = torch.Generator().manual_seed(settings.seed)

        def loss_fn(indices, flips):
            chosen = [
                masks[i][torch.randperm(len(masks[i]), generator=generator)[:MAX_PROMPTS]]
                for i in indices.tolist()
            ]
            owners = torch.cat([torch.full((len(m),), b) for b, m in enumerate(chosen)])
            batch, targets_ = _jitter(
                images[indices].float().div(255),
                torch.cat(chosen)[:, None].float(),
                owners,
                flips,
                generator,
            )
            visible = targets_.flatten(1).any(1)
            if not visible.any():  # every object zoomed out of view: nothing to learn
                return torch.zeros((), requires_grad=True)
            targets_, owners = targets_[visible], owners[visible]
            device = settings.device
            if self.prompt == "box":
                prompt = {"boxes": _boxes(targets_[:, 0]).to(device)}
            else:
                prompt = {"points": _random_points(targets_[:, 0], generator).to(device)}
            logits = model(batch.to(device), owners.to(device), **prompt)
            logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
            return bce_dice(logits[:, 0], targets_[:, 0].float().to(settings.device))

        return fit(model, len(images), loss_fn, settings, on_epoch)

    def _train_on_crops(self, examples, targets, settings, on_epoch):
        """Train on object-centred crops (one item per instance, see the module doc)."""
        size, source = settings.image_size, CROP_SOURCE_SCALE * settings.image_size
        images, masks, boxes, owners = [], [], [], []
        for example in examples:
            image, frame, full = load_image(example.image_path, source)
            instance_masks, _ = targets.instances(example.labels, *full.shape[:2])
            if len(instance_masks):
                owners += [len(images)] * len(instance_masks)
                images.append(image)
                masks.append(frame.to_model(torch.from_numpy(instance_masks).float()) > 0.5)
                boxes.append(_model_boxes(instance_masks, source))
        if not images:
            raise ValueError("no training image has an instance to prompt")
        model = self._build(settings)
        images, masks, boxes = torch.stack(images), torch.cat(masks), torch.cat(boxes)
        owners = torch.tensor(owners)
        generator = torch.Generator().manual_seed(settings.seed)

        def loss_fn(indices, flips):
            n = len(indices)
            context = torch.empty(n).uniform_(*CROP_CONTEXT, generator=generator)
            shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * CROP_SHIFT
            theta = box_crops(boxes[indices], source, context, shift, flips)
            batch = crop(images[owners[indices]].float().div(255), theta, size)
            targets_ = crop(masks[indices, None].float(), theta, size)[:, 0] > 0.5
            prompts = boxes_in_crops(boxes[indices], theta, source, size)
            device = settings.device
            logits = model(batch.to(device), torch.arange(n, device=device), prompts.to(device))
            logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
            return bce_dice(logits[:, 0], targets_.float().to(device))

        return fit(model, len(masks), loss_fn, settings, on_epoch)

    @torch.inference_mode()
    def predict(self, model, examples, targets, settings, folder):
        labels = []
        for example in examples:
            source = settings.image_size * (CROP_SOURCE_SCALE if self.on_crops else 1)
            image, frame, full = load_image(example.image_path, source)
            height, width = full.shape[:2]
            gt_masks, classes = targets.instances(example.labels, height, width)
            if not len(gt_masks):
                labels.append(fo.Detections())
                continue
            names = [targets.instance_classes[c] for c in classes]
            if self.prompt == "point":
                clicks = np.array([_innermost(m) for m in gt_masks], np.float32)
                points = ResizeLongestSide(source).apply_coords(clicks + 0.5, (height, width))
                logits = self._predict_logits(model, image, settings, points=points)
                pred_masks = (frame.from_model(logits[:, 0].cpu()) > 0).numpy()
                detections = [
                    _point_detection(pred, gt, name, click, model.prior_size)
                    for pred, gt, name, click in zip(pred_masks, gt_masks, names, clicks)
                ]
            else:
                boxes = _model_boxes(gt_masks, source)
                logits = self._predict_logits(model, image, settings, boxes=boxes)
                pred_masks = (frame.from_model(logits[:, 0].cpu()) > 0).numpy()
                detections = [
                    _detection(pred, gt, name)
                    for pred, gt, name in zip(pred_masks, gt_masks, names)
                ]
            labels.append(fo.Detections(detections=detections))
        return labels

    def _predict_logits(self, model, image, settings, boxes=None, points=None):
        """Mask logits for the boxes Kx4 or points Kx2 (pixels of ``image``, a 3xNxN uint8
        frame): Kx1xNxN from object-centred crops, or on whole frames Kx1x(N/4)x(N/4)."""
        device, size = settings.device, settings.image_size
        frame = image[None].float().div(255)
        count = len(boxes if boxes is not None else points)
        owners = torch.zeros(count, dtype=torch.long)
        if not self.on_crops:
            prompt = {"boxes": boxes} if boxes is not None else {"points": torch.as_tensor(points)}
            prompt = {k: v.float().to(device) for k, v in prompt.items()}
            return model(frame.to(device), owners.to(device), **prompt).cpu()
        source = image.shape[-1]
        theta = box_crops(boxes, source, PREDICT_CONTEXT)
        views = crop(frame[owners], theta, size)
        prompts = boxes_in_crops(boxes, theta, source, size)
        logits = model(
            views.to(device), torch.arange(len(boxes), device=device), prompts.to(device)
        )
        logits = F.interpolate(logits.cpu(), (size, size), mode="bilinear", align_corners=False)
        return uncrop(logits, theta, source)

    def score(self, view, pred_field, gt_field, eval_key, targets):
        evaluate_instances(view, pred_field, gt_field, eval_key, compute_mAP=False)
        ious = view.values(f"{pred_field}.detections.iou", unwind=True)
        if self.prompt == "point":
            trivial = view.values(f"{pred_field}.detections.trivial_iou", unwind=True)
            chance = float(np.mean(trivial)) if trivial else 0.0
        else:
            chance = box_fill_iou(view, gt_field)
        return (float(np.mean(ious)) if ious else 0.0), chance


def _jitter(
    images: torch.Tensor,
    masks: torch.Tensor,
    owners: torch.Tensor,
    flips: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale jitter and flips, alike for images Bx3xSxS and masks Nx1xSxS (``owners``: the
    image of each mask): zoom by a random factor in :data:`SCALE_JITTER` about a random
    centre that keeps the view inside the image (zoom in) or the image inside the view
    (zoom out, zero padding); mirror where ``flips``. Returns (images, masks > 0.5)."""
    batch = images.shape[0]
    scale = torch.empty(batch).uniform_(*SCALE_JITTER, generator=generator)
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * (1 - 1 / scale).abs()[:, None]
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = torch.where(flips, -1.0, 1.0) / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, align_corners=False)
    return images, F.grid_sample(masks, grid[owners], align_corners=False) > 0.5


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes Nx4 (end-exclusive pixels) of non-empty NxHxW bool masks."""
    cols, rows = masks.any(1), masks.any(2)
    xs, ys = torch.arange(masks.shape[2]), torch.arange(masks.shape[1])
    big = max(masks.shape[1:])
    return torch.stack(
        [
            torch.where(cols, xs, big).amin(1),
            torch.where(rows, ys, big).amin(1),
            torch.where(cols, xs, -1).amax(1) + 1,
            torch.where(rows, ys, -1).amax(1) + 1,
        ],
        1,
    ).float()


def _random_points(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random pixel (its centre, xy) of each non-empty NxHxW bool mask: Nx2."""
    width = masks.shape[2]
    flat = torch.multinomial(masks.flatten(1).float(), 1, generator=generator)[:, 0]
    return torch.stack([flat % width, flat // width], 1).float() + 0.5


def _innermost(mask: np.ndarray) -> tuple[int, int]:
    """The (x, y) pixel of a non-empty HxW mask farthest from its border (the first such)."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(x), int(y)


def _model_boxes(masks: np.ndarray, size: int) -> torch.Tensor:
    """Tight boxes Kx4 of KxHxW masks, in the SxS model frame (SAM's ResizeLongestSide)."""
    boxes = np.array([mask_extent(m) for m in masks], np.float32)
    return torch.from_numpy(ResizeLongestSide(size).apply_boxes(boxes, masks.shape[1:])).float()


def _detection(pred: np.ndarray, gt: np.ndarray, label: str) -> fo.Detection:
    """The predicted mask inside the prompt (the ground truth's box), with its IoU."""
    x0, y0, x1, y1 = mask_extent(gt)
    height, width = gt.shape
    crop = pred[y0:y1, x0:x1]
    inside = np.zeros_like(pred)
    inside[y0:y1, x0:x1] = crop
    return fo.Detection(
        label=label,
        bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
        mask=crop,
        iou=_iou(inside, gt),
    )


def _point_detection(pred, gt, label: str, click, prior_size) -> fo.Detection:
    """The predicted mask (the whole of it: a click does not bound it) with its IoU, and
    ``trivial_iou``: that of a box of ``prior_size`` (shares of the image) around the
    click."""
    height, width = gt.shape
    x, y = click
    half_w, half_h = prior_size[0] * width / 2, prior_size[1] * height / 2
    trivial = np.zeros_like(gt)
    trivial[
        max(int(round(y - half_h)), 0) : int(round(y + half_h)) + 1,
        max(int(round(x - half_w)), 0) : int(round(x + half_w)) + 1,
    ] = True
    if pred.any():
        x0, y0, x1, y1 = mask_extent(pred)
    else:  # nothing predicted: an empty mask at the click
        x0, y0 = min(int(x), width - 1), min(int(y), height - 1)
        x1, y1 = x0 + 1, y0 + 1
    return fo.Detection(
        label=label,
        bounding_box=[x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height],
        mask=pred[y0:y1, x0:x1],
        iou=_iou(pred, gt),
        trivial_iou=_iou(trivial, gt),
    )


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two HxW bool masks (gt non-empty)."""
    return float(np.logical_and(pred, gt).sum() / np.logical_or(pred, gt).sum())
