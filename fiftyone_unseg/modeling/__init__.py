"""The UnSeg noise generator: SAM's modules extended with a noise head."""

from .build import (
    SamConfig,
    build_noise_generator,
    build_noise_generator_tiny,
    build_noise_generator_vit_b,
    build_noise_generator_vit_h,
    build_noise_generator_vit_l,
    build_sam_modules,
    generator_configs,
    generator_registry,
    load_sam_weights,
)
from .noise_decoder import NoiseMaskDecoder
from .noise_generator import NoiseGenerator
from .promptable import BatchedMaskDecoder, PromptableSegmenter, hyper_dot

__all__ = [
    "BatchedMaskDecoder",
    "PromptableSegmenter",
    "hyper_dot",
    "SamConfig",
    "NoiseGenerator",
    "NoiseMaskDecoder",
    "build_noise_generator",
    "build_sam_modules",
    "build_noise_generator_tiny",
    "build_noise_generator_vit_b",
    "build_noise_generator_vit_h",
    "build_noise_generator_vit_l",
    "generator_configs",
    "generator_registry",
    "load_sam_weights",
]
