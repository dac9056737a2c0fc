"""What the noise generator and the surrogate share: a batched SAM.

SAM's own ``MaskDecoder`` and ``Sam`` decode one image against many prompts.
UnSeg trains on batches of B images, each with its own prompt set; these small
extensions of SAM's modules do that without repeating the image embeddings.
"""

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder
from torch import nn

# ImageNet statistics on the [0, 1] scale (SAM's pixel_mean / pixel_std divided by 255).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class BatchedMaskDecoder(MaskDecoder):
    """SAM's :class:`MaskDecoder` run on B images with B prompt sets (sample i <-> image i)."""

    def run_transformer(
        self,
        output_tokens: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's two-way transformer and output upscaling.

        Arguments:
          output_tokens: KxC learned tokens placed before the prompt tokens.
          image_embeddings: BxCxhxw; image_pe: 1xCxhxw;
          sparse_prompt_embeddings: BxNxC; dense_prompt_embeddings: BxCxhxw.

        Returns:
          hs: BxKxC, the transformer's outputs for the K output tokens.
          upscaled: Bx(C/8)x(4h)x(4w), SAM's upscaled image feature.
        """
        b, c, h, w = image_embeddings.shape
        k = output_tokens.shape[0]
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)
        src = image_embeddings + dense_prompt_embeddings
        hs, src = self.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        return hs[:, :k], upscaled


def hyper_dot(mlps: nn.ModuleList, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """One output channel per token: mlps[i](tokens[:, i]) . features.

    tokens: BxKxC_token, features: BxCxHxW -> BxKxHxW.
    """
    hyper = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(mlps)], dim=1)
    b, c, h, w = features.shape
    return (hyper @ features.reshape(b, c, h * w)).reshape(b, -1, h, w)


class PromptableSegmenter(nn.Module):
    """A SAM-layout model: image encoder, prompt encoder and a :class:`BatchedMaskDecoder`.

    Attribute names match :class:`segment_anything.modeling.Sam`, so an official SAM
    state dict's ``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys map
    directly. Images are float in [0, 1], Bx3xSxS with S = ``img_size``; normalisation
    happens inside.

    Prompts, in input pixel coordinates, are batched per image (sample i belongs to image i):
      boxes: Bx4 xyxy.
      points: (coords BxNx2, labels BxN) with 1 positive, 0 negative, -1 padding.
      mask_prompts: Bx1x(S/4)x(S/4) in {0, 1} (SAM's mask-prompt resolution).
    Boxes and mask prompts apply to the whole batch; points can be padded per sample.
    """

    config = None  # the SamConfig it was built from, set by the builders

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: BatchedMaskDecoder,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.img_size = image_encoder.img_size
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Check Bx3xSxS images in [0, 1] and normalise them for the encoder."""
        if images.ndim != 4 or images.shape[1:] != (3, self.img_size, self.img_size):
            raise ValueError(
                f"expected images of shape Bx3x{self.img_size}x{self.img_size}, "
                f"got {tuple(images.shape)}"
            )
        return (images - self.pixel_mean) / self.pixel_std

    def embed_prompts(
        self,
        batch: int,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings for a batch: (sparse BxNxC, dense BxCxhxw)."""
        prompts = {
            "boxes": boxes,
            "points": None if points is None else points[0],
            "mask_prompts": mask_prompts,
        }
        for name, prompt in prompts.items():
            if prompt is not None and prompt.shape[0] != batch:
                raise ValueError(f"{name} has batch size {prompt.shape[0]}, images have {batch}")
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_prompts)
        return sparse.expand(batch, -1, -1), dense.expand(batch, -1, -1, -1)
