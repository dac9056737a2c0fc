"""The UnSeg generator G(image, prompt) -> noise, built from SAM's modules."""

import threading

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, PromptEncoder
from torch import nn

from .noise_decoder import NoiseMaskDecoder
from .promptable import PromptableSegmenter


class NoiseGenerator(PromptableSegmenter):
    """SAM's image and prompt encoders plus a :class:`NoiseMaskDecoder` (see
    :class:`PromptableSegmenter` for the image and prompt conventions).

    Any prompt combination works, including several at once or none (noise from
    the image alone).
    """

    generator_id: str | None = None  # set by checkpoint loading

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: NoiseMaskDecoder,
    ) -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder)
        self.early_block_index = next(
            i for i, block in enumerate(image_encoder.blocks) if block.window_size == 0
        )

    def freeze_backbone(self) -> None:
        """Freeze every SAM parameter; only the noise head stays trainable."""
        self.requires_grad_(False)
        for p in self.noise_head_parameters():
            p.requires_grad_(True)

    def noise_head_parameters(self) -> list[nn.Parameter]:
        """The parameters UnSeg trains (the mask decoder's noise head)."""
        return self.mask_decoder.noise_head_parameters()

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the image encoder once; the expensive step, reusable across prompts.

        images: Bx3xSxS in [0, 1] -> (image_embeddings Bx(prompt_embed_dim)xhxw,
        early_features Bxhxwx(vit_dim) taken after the first global-attention block),
        with h = w = S / patch size.
        """
        normalized = self.normalize(images)
        captured, caller = [], threading.get_ident()

        def capture(_module, _inputs, output):  # the hook is the module's, for every thread
            if threading.get_ident() == caller:
                captured.append(output)

        hook = self.image_encoder.blocks[self.early_block_index].register_forward_hook(capture)
        try:
            embeddings = self.image_encoder(normalized)
        finally:
            hook.remove()
        return embeddings, captured[0]

    def decode(
        self,
        image_embeddings: torch.Tensor,
        early_features: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and SAM mask logits, both at 1/4 of the input size, from encoded images.

        Returns (noise Bx3x(S/4)x(S/4) in [-1, 1], mask_logits Bx4x(S/4)x(S/4)).
        """
        sparse, dense = self.embed_prompts(image_embeddings.shape[0], boxes, points, mask_prompts)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            early_features=early_features,
        )

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_prompts: torch.Tensor | None = None,
        with_mask_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """images Bx3xSxS in [0, 1] plus any prompts -> noise Bx3xSxS in [-1, 1].

        The head's 1/4-resolution output is upsampled bilinearly to the input size.
        With ``with_mask_logits`` also returns SAM's single-mask logits Bx1x(S/4)x(S/4)
        (used to pretrain the SAM part as a promptable segmenter).
        """
        noise, mask_logits = self.decode(*self.encode(images), boxes, points, mask_prompts)
        noise = F.interpolate(noise, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return (noise, mask_logits[:, :1]) if with_mask_logits else noise

    @staticmethod
    def perturb(
        images: torch.Tensor,
        noise: torch.Tensor,
        object_mask: torch.Tensor,
        eps: float,
        eps_bg: float,
    ) -> torch.Tensor:
        """clamp(images + noise * eps_map, 0, 1), eps_map = eps on the object, eps_bg elsewhere.

        images, noise: Bx3xHxW; object_mask: Bx1xHxW in [0, 1] (soft values interpolate).
        """
        eps_map = NoiseGenerator.budget_map(object_mask.to(images.dtype), eps, eps_bg)
        return (images + noise * eps_map).clamp(0, 1)

    @staticmethod
    def budget_map(object_mask: torch.Tensor, eps: float, eps_bg: float) -> torch.Tensor:
        """eps on the object, eps_bg elsewhere (soft mask values interpolate): Bx1xHxW."""
        return eps_bg + (eps - eps_bg) * object_mask
