"""The surrogate segmenter S, trained from scratch: SAM's architecture without the IoU head
(the paper's), or a promptable U-Net (``surrogate: "cnn"``, like the convolutional models an
unauthorised trainer is likely to use)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fiftyone_unseg.modeling import (
    BatchedMaskDecoder,
    PromptableSegmenter,
    SamConfig,
    build_sam_modules,
    hyper_dot,
)
from trainer.prompts import Prompts


class SurrogateMaskDecoder(BatchedMaskDecoder):
    """SAM's mask decoder with a single mask token and no IoU token or head."""

    def __init__(self, **kwargs) -> None:
        super().__init__(num_multimask_outputs=0, **kwargs)
        del self.iou_token, self.iou_prediction_head

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """Mask logits Bx1x(4h)x(4w) for B images with their own prompts (see
        :meth:`BatchedMaskDecoder.run_transformer` for the argument shapes)."""
        hs, upscaled = self.run_transformer(
            self.mask_tokens.weight,
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )
        return hyper_dot(self.output_hypernetworks_mlps, hs, upscaled)


class Surrogate(PromptableSegmenter):
    """A promptable segmenter trained on perturbed images (the lower level of UnSeg)."""

    def forward(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """images Bx3xSxS in [0, 1] with prompts in the same pixel frame -> logits Bx1x(S/4)x(S/4)."""
        embeddings = self.image_encoder(self.normalize(images))
        mask_prompts = None
        if prompts.masks is not None:
            mask_prompts = F.interpolate(
                prompts.masks, size=embeddings.shape[-1] * 4, mode="nearest"
            )
        sparse, dense = self.embed_prompts(
            images.shape[0], prompts.boxes, prompts.points, mask_prompts
        )
        return self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)


def build_surrogate(config: SamConfig) -> Surrogate:
    """A randomly initialised surrogate with the SAM layout ``config``."""
    image_encoder, prompt_encoder, decoder_kwargs = build_sam_modules(config)
    surrogate = Surrogate(image_encoder, prompt_encoder, SurrogateMaskDecoder(**decoder_kwargs))
    surrogate.config = config
    return surrogate


CNN_WIDTHS = (16, 32, 64, 128)


class ConvSurrogate(nn.Module):
    """A promptable U-Net: the image plus its prompts drawn as three maps (box, points,
    mask) -> mask logits. Same call as :class:`Surrogate`.

    Arguments:
      img_size (int): the square input side S (a multiple of 2 ** (len(widths) - 1)).
      widths: channels of the encoder levels; the decoder mirrors them.
    """

    def __init__(self, img_size: int, widths: tuple[int, ...] = CNN_WIDTHS) -> None:
        super().__init__()
        self.img_size = img_size
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1))
        ins = (6,) + widths[:-1]
        self.down = nn.ModuleList(_conv_block(i, o) for i, o in zip(ins, widths))
        self.up = nn.ModuleList(
            _conv_block(widths[k + 1] + widths[k], widths[k]) for k in range(len(widths) - 1)
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """images Bx3xSxS in [0, 1] with prompts in the same pixel frame -> logits Bx1xSxS."""
        x = torch.cat(
            [(images - self.pixel_mean) / self.pixel_std, prompt_maps(prompts, images)], 1
        )
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for k in reversed(range(len(self.up))):
            x = F.interpolate(x, size=skips[k].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[k](torch.cat([x, skips[k]], 1))
        return self.head(x)


def prompt_maps(prompts: Prompts, images: torch.Tensor) -> torch.Tensor:
    """Prompts drawn in the images' frame: Bx3xSxS maps of the box (1 inside), the points
    (+1 positive, -1 negative, 5x5 px each) and the mask prompt; zeros where absent."""
    b, _, h, w = images.shape
    maps = images.new_zeros(b, 3, h, w)
    if prompts.boxes is not None:
        ys = torch.arange(h, device=images.device).view(1, h, 1)
        xs = torch.arange(w, device=images.device).view(1, 1, w)
        x0, y0, x1, y1 = (prompts.boxes[:, i].view(b, 1, 1) for i in range(4))
        maps[:, 0] = ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).to(images.dtype)
    if prompts.points is not None:
        coords, labels = prompts.points
        x = coords[..., 0].long().clamp(0, w - 1)
        y = coords[..., 1].long().clamp(0, h - 1)
        sign = torch.where(labels > 0, 1.0, -1.0).to(images.dtype) * (labels >= 0)
        flat = images.new_zeros(b, h * w).scatter_add_(1, y * w + x, sign)
        drawn = flat.view(b, 1, h, w)
        maps[:, 1:2] = F.max_pool2d(drawn, 5, 1, 2) - F.max_pool2d(-drawn, 5, 1, 2)
    if prompts.masks is not None:
        maps[:, 2:3] = F.interpolate(prompts.masks.to(images.dtype), size=(h, w), mode="nearest")
    return maps


def _conv_block(in_dim: int, out_dim: int) -> nn.Sequential:
    """Two 3x3 convs with GroupNorm and ReLU (no batch statistics: the surrogate also runs
    frozen inside the generator's steps)."""
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, 3, padding=1),
        nn.GroupNorm(8, out_dim),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_dim, out_dim, 3, padding=1),
        nn.GroupNorm(8, out_dim),
        nn.ReLU(inplace=True),
    )


def make_surrogate(spec: str | dict, img_size: int | None, sam_config) -> nn.Module:
    """The surrogate of a training config: ``"cnn"`` (a :class:`ConvSurrogate` at
    ``img_size``, default 128) or a SAM layout (``sam_config()`` builds its SamConfig)."""
    if spec == "cnn":
        return ConvSurrogate(img_size or 128)
    return build_surrogate(sam_config())
