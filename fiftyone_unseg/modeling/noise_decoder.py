"""SAM's mask decoder extended with UnSeg's HQ-SAM-style noise head."""

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from .promptable import BatchedMaskDecoder, hyper_dot

NUM_NOISE_TOKENS = 3  # one per RGB channel


class NoiseMaskDecoder(BatchedMaskDecoder):
    """SAM's :class:`MaskDecoder` plus a noise head predicting a 3-channel noise in [-1, 1].

    Every parent submodule keeps its name, so an official SAM checkpoint's ``mask_decoder.*``
    keys load unchanged; the noise head's modules are listed in :attr:`NOISE_HEAD`.

    Arguments:
      vit_dim (int): channel dimension of the image encoder's ViT blocks (early feature).
      highpass (int): if > 0, the odd kernel size of a local mean subtracted from the noise
        logits before tanh (see ``SamConfig.noise_highpass``).
      colour (float): weight of the noise logits' colour part, their deviation from the
        mean over R, G and B (see ``SamConfig.noise_colour``).
      **kwargs: the parent's arguments (``transformer_dim``, ``transformer``, ...).
    """

    NOISE_HEAD = (
        "noise_tokens",
        "noise_mlps",
        "vit_feature_proj",
        "embedding_proj",
        "upscaled_proj",
    )

    def __init__(self, *, vit_dim: int, highpass: int = 0, colour: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if highpass < 0 or (highpass and highpass % 2 == 0):
            raise ValueError(f"noise_highpass must be 0 or an odd kernel size, got {highpass}")
        if not 0 <= colour <= 1:
            raise ValueError(f"noise_colour must be in [0, 1], got {colour}")
        self.highpass = highpass
        self.colour = colour
        dim = self.transformer_dim
        self.noise_tokens = nn.Embedding(NUM_NOISE_TOKENS, dim)
        self.noise_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(NUM_NOISE_TOKENS))
        self.vit_feature_proj = _upsample_4x(vit_dim, dim, dim // 8)
        self.embedding_proj = _upsample_4x(dim, dim // 4, dim // 8)
        self.upscaled_proj = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, padding=1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, 3, padding=1),
        )

    def noise_head_parameters(self) -> list[nn.Parameter]:
        """The noise head's parameters (none of SAM's)."""
        return [p for name in self.NOISE_HEAD for p in getattr(self, name).parameters()]

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        early_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict noise for B images, each with its own prompt set.

        Unlike the parent, image embeddings are not repeated per prompt: sample i of every
        argument belongs to image i.

        Arguments:
          image_embeddings: Bx(transformer_dim)xhxw, the image encoder's output.
          image_pe: 1x(transformer_dim)xhxw, the prompt encoder's dense positional encoding.
          sparse_prompt_embeddings: BxNx(transformer_dim), point and box embeddings (N >= 0).
          dense_prompt_embeddings: Bx(transformer_dim)xhxw, mask-prompt embeddings.
          early_features: Bxhxwx(vit_dim), the output of the encoder's first global-attention
            block, channels-last as the ViT blocks produce it.

        Returns:
          noise: Bx3x(4h)x(4w) in [-1, 1].
          mask_logits: Bx4x(4h)x(4w), SAM's logits for its 4 mask tokens (single-mask first).
        """
        tokens = torch.cat(
            [self.iou_token.weight, self.mask_tokens.weight, self.noise_tokens.weight], dim=0
        )
        hs, upscaled = self.run_transformer(
            tokens, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        first_noise = 1 + self.num_mask_tokens
        mask_logits = hyper_dot(self.output_hypernetworks_mlps, hs[:, 1:first_noise], upscaled)

        fused = (
            self.vit_feature_proj(early_features.permute(0, 3, 1, 2))
            + self.embedding_proj(image_embeddings)
            + self.upscaled_proj(upscaled)
        )
        noise_tokens = hs[:, first_noise : first_noise + NUM_NOISE_TOKENS]
        noise_logits = hyper_dot(self.noise_mlps, noise_tokens, fused)
        if self.highpass:
            noise_logits = noise_logits - F.avg_pool2d(
                noise_logits,
                self.highpass,
                stride=1,
                padding=self.highpass // 2,
                count_include_pad=False,
            )
        if self.colour != 1:
            grey = noise_logits.mean(dim=1, keepdim=True)
            noise_logits = grey + self.colour * (noise_logits - grey)
        return torch.tanh(noise_logits), mask_logits


def _upsample_4x(in_dim: int, mid_dim: int, out_dim: int) -> nn.Sequential:
    """Two stride-2 transposed convs: Bx(in_dim)xhxw -> Bx(out_dim)x(4h)x(4w)."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_dim, mid_dim, kernel_size=2, stride=2),
        LayerNorm2d(mid_dim),
        nn.GELU(),
        nn.ConvTranspose2d(mid_dim, out_dim, kernel_size=2, stride=2),
    )
