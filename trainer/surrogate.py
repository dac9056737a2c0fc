"""The surrogate segmenter S: SAM's architecture without the IoU head, trained from scratch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
