"""Generator configurations, builders and loading of official SAM weights."""

import dataclasses
import os
import pickle
from dataclasses import dataclass
from functools import partial
from typing import Any

import safetensors
import safetensors.torch
import torch
from segment_anything.modeling import ImageEncoderViT, PromptEncoder, TwoWayTransformer

from .noise_decoder import NoiseMaskDecoder
from .noise_generator import NoiseGenerator

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@dataclass(frozen=True)
class SamConfig:
    """Everything needed to rebuild a SAM-layout model: the noise generator or the
    trainer's surrogate (JSON-serialisable).

    freeze_backbone: freeze SAM's parameters after building, leaving only the noise head
    trainable (the UnSeg set-up on top of pretrained SAM weights).
    noise_highpass: odd kernel size (in pixels of the noise head's 1/4-resolution output)
    of a local mean subtracted from the noise logits before tanh, a frequency prior that
    turns flat colour shifts into texture; 0 keeps the paper's head.
    noise_colour: weight in [0, 1] of the noise logits' deviation from their mean over R, G
    and B: 1 keeps the paper's colour noise; 0 makes the noise grey (the same change on
    the three channels), all luma, which JPEG's chroma subsampling and coarse chroma
    quantisation cannot remove.
    """

    name: str
    img_size: int
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    encoder_window_size: int = 14
    prompt_embed_dim: int = 256
    vit_patch_size: int = 16
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    freeze_backbone: bool = True
    noise_highpass: int = 0
    noise_colour: float = 1.0

    def __post_init__(self) -> None:
        indexes = self.encoder_global_attn_indexes
        if not indexes or any(not 0 <= i < self.encoder_depth for i in indexes):
            raise ValueError(
                f"generator config {self.name!r}: encoder_global_attn_indexes {list(indexes)} "
                f"must name at least one of the encoder's blocks 0..{self.encoder_depth - 1} "
                "(the noise head reads the first block with global attention)"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generator config keys: {unknown}")
        data = dict(data)
        data["encoder_global_attn_indexes"] = tuple(data.get("encoder_global_attn_indexes", ()))
        return cls(**data)


def _sam_config(name, embed_dim, depth, num_heads, global_attn_indexes) -> SamConfig:
    """An official SAM layout (segment_anything/build_sam.py) at 1024 px."""
    return SamConfig(name, 1024, embed_dim, depth, num_heads, global_attn_indexes)


generator_configs: dict[str, SamConfig] = {
    "vit_b": _sam_config("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _sam_config("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _sam_config("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    # Small enough to train on a CPU and ship inside the package (no SAM weights exist
    # for it): a 192-dim, 4-block ViT and a 128-dim decoder.
    "tiny": SamConfig(
        name="tiny",
        img_size=256,
        encoder_embed_dim=192,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(1, 3),
        encoder_window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=1024,
        freeze_backbone=False,
    ),
}


def build_sam_modules(config: SamConfig) -> tuple[ImageEncoderViT, PromptEncoder, dict]:
    """SAM's image encoder and prompt encoder for ``config``, plus the mask-decoder kwargs.

    Shared by the noise generator and the trainer's surrogate, so both follow one layout.
    """
    embedding_size = config.img_size // config.vit_patch_size
    image_encoder = ImageEncoderViT(
        depth=config.encoder_depth,
        embed_dim=config.encoder_embed_dim,
        img_size=config.img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_num_heads,
        patch_size=config.vit_patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=config.encoder_global_attn_indexes,
        window_size=config.encoder_window_size,
        out_chans=config.prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(embedding_size, embedding_size),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    decoder_kwargs = dict(
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_num_heads,
        ),
        transformer_dim=config.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return image_encoder, prompt_encoder, decoder_kwargs


def _build_noise_generator(
    config: SamConfig, sam_checkpoint: str | os.PathLike | None = None
) -> NoiseGenerator:
    image_encoder, prompt_encoder, decoder_kwargs = build_sam_modules(config)
    generator = NoiseGenerator(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=NoiseMaskDecoder(
            vit_dim=config.encoder_embed_dim,
            highpass=config.noise_highpass,
            colour=config.noise_colour,
            num_multimask_outputs=3,
            **decoder_kwargs,
        ),
    )
    generator.config = config
    if sam_checkpoint is not None:
        load_sam_weights(generator, sam_checkpoint)
    if config.freeze_backbone:
        generator.freeze_backbone()
    return generator.eval()


def build_noise_generator_vit_b(sam_checkpoint=None) -> NoiseGenerator:
    return _build_noise_generator(generator_configs["vit_b"], sam_checkpoint)


def build_noise_generator_vit_l(sam_checkpoint=None) -> NoiseGenerator:
    return _build_noise_generator(generator_configs["vit_l"], sam_checkpoint)


def build_noise_generator_vit_h(sam_checkpoint=None) -> NoiseGenerator:
    return _build_noise_generator(generator_configs["vit_h"], sam_checkpoint)


def build_noise_generator_tiny(sam_checkpoint=None) -> NoiseGenerator:
    return _build_noise_generator(generator_configs["tiny"], sam_checkpoint)


generator_registry = {
    "vit_b": build_noise_generator_vit_b,
    "vit_l": build_noise_generator_vit_l,
    "vit_h": build_noise_generator_vit_h,
    "tiny": build_noise_generator_tiny,
}


def build_noise_generator(
    config_or_name: SamConfig | str, sam_checkpoint: str | os.PathLike | None = None
) -> NoiseGenerator:
    """Build a generator from a registry name or a config, optionally loading SAM weights."""
    if isinstance(config_or_name, SamConfig):
        return _build_noise_generator(config_or_name, sam_checkpoint)
    if config_or_name not in generator_registry:
        raise ValueError(
            f"unknown generator {config_or_name!r}; choose one of {sorted(generator_registry)}"
        )
    return generator_registry[config_or_name](sam_checkpoint)


def load_sam_weights(generator: NoiseGenerator, path: str | os.PathLike) -> None:
    """Load an official SAM checkpoint (e.g. sam_vit_b_01ec64.pth) into the SAM parts.

    The file is a plain state dict (``.pth``, or ``.safetensors`` as ``unseg train``'s
    pretrain stage writes) with ``image_encoder.*``, ``prompt_encoder.*`` and
    ``mask_decoder.*`` keys, read with ``weights_only=True``. The noise head is untouched
    (a whole generator's ``model.safetensors`` gives its SAM parts alone).
    Raises FileNotFoundError or ValueError with the mismatching keys.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"SAM checkpoint not found: {path}. It must be a local file (e.g. "
            "sam_vit_b_01ec64.pth from the segment-anything release); nothing is downloaded."
        )
    state = load_state_file(path, "SAM state dict")
    head = tuple(f"mask_decoder.{name}." for name in NoiseMaskDecoder.NOISE_HEAD)
    # a whole generator's file holds its noise head too: that part is not SAM's
    state = {
        k: v for k, v in state.items() if k.startswith(SAM_PREFIXES) and not k.startswith(head)
    }
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path}: {not_tensors[:3]} are not tensors: not a SAM state dict")
    expected = {k: v for k, v in generator.state_dict().items() if not k.startswith(head)}
    problems = {
        "missing": sorted(set(expected) - set(state)),
        "unexpected": sorted(set(state) - set(expected)),
        "shape mismatch": sorted(
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ),
    }
    if any(problems.values()):
        details = "; ".join(f"{kind}: {keys[:3]}" for kind, keys in problems.items() if keys)
        raise ValueError(
            f"{path} does not fit generator config {_describe(generator.config)}: {details}. "
            f"The file seems to be for {_guess_sam_config(state)}."
        )
    generator.load_state_dict(state, strict=False)


def load_state_file(path: str | os.PathLike, what: str = "state dict") -> dict:
    """A dict of tensors (and plain values) from ``.safetensors`` or a torch pickle read
    with ``weights_only=True``: no code in the file runs. ValueError naming the file for
    anything else (a pickle of other objects, a corrupt or truncated file)."""
    try:
        if str(path).endswith(".safetensors"):
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, safetensors.SafetensorError) as error:
        lines = str(error).strip().splitlines() or [repr(error)]
        detail = next((line for line in lines if "unsupported global" in line.lower()), lines[0])
        if "weights_only" in detail:  # torch's advice to unpickle anyway: not ours to give
            detail = "it holds objects other than tensors"
        raise ValueError(
            f"{path} is not a plain {what} (only tensors are loaded, never pickled code): "
            f"{detail.split('. Please')[0].strip()}"
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a {what}")
    return state


def _describe(config: SamConfig | None) -> str:
    if config is None:
        return "(unknown)"
    return (
        f"{config.name!r} (embed dim {config.encoder_embed_dim}, "
        f"{config.encoder_depth} blocks, {config.img_size} px)"
    )


def _guess_sam_config(state: dict[str, torch.Tensor]) -> str:
    """Describe the encoder layout of a SAM state dict, naming the known config it matches."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    pos = state.get("image_encoder.pos_embed")
    if patch is None or pos is None:
        return "no SAM image encoder (no image_encoder.patch_embed / pos_embed keys)"
    embed_dim, img_size = patch.shape[0], pos.shape[1] * patch.shape[-1]
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    names = [
        name
        for name, config in generator_configs.items()
        if (config.encoder_embed_dim, config.encoder_depth) == (embed_dim, depth)
    ]
    layout = repr(names[0]) if names else "an unknown layout"
    return f"{layout} (embed dim {embed_dim}, {depth} blocks, {img_size} px)"
