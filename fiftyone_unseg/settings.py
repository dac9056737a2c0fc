"""The protection settings people type: defaults, the budget unit and its checks.

Budgets are L-infinity bounds on the noise, as fractions of the image range (``8/255``).
Where people type them (``unseg --eps``, the App's form) a plain number counts in 1/255
units, so ``8`` is 8/255 everywhere. Nothing heavy is imported here: the CLI's parser and
the App's form use this module without FiftyOne or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IGNORE = 255  # class-map value of pixels that are no class: no loss, not scored
DEFAULT_EPS = 8 / 255
DEFAULT_EPS_BG = 2 / 255
DEFAULT_CLASS_MIX = 0.0
CLASS_STYLES = ("texture", "colour")  # what a class key is: an 8x8 tile or a flat colour
CLASS_KEY_SECRET = "UNSEG_CLASS_KEY"
"""Environment variable (the App's plugin secret) holding a class key of one's own."""


@dataclass(frozen=True)
class Preset:
    """A named protection: a shipped generator (``fiftyone_unseg/weights/<generator>/``)
    and the class keys mixed into its noise (``class_mix`` 0: none; 1: the keys alone, no
    generator runs), with what it is for."""

    generator: str
    what: str
    class_mix: float = DEFAULT_CLASS_MIX
    class_style: str = "texture"


PRESETS = {
    "default": Preset(
        "default",
        "the shipped default, noise specific to each image, trained against a surrogate that "
        "keeps learning: YOLO on pets at 0.004 of clean, 0.04 and 0.07 after a blur and "
        "half-scale, 0.56 after JPEG 75; CamVid semantic 0.97, 0.89 after JPEG 75; 33.5 dB",
    ),
    "robust": Preset(
        "robust",
        "the default fine-tuned through JPEG, blur and rescaling against a surrogate that "
        "keeps learning: CamVid semantic at 0.60 of clean after a blur, 0.67 after "
        "half-scale, 0.88 after JPEG 75 (default 0.74, 0.74, 0.89); YOLO on pets 0.02, 0.02 "
        "after a blur, 0.03 after half-scale, 0.58 after JPEG 75; 33.3 dB",
    ),
    "semantic": Preset(
        "default",
        "for semantic datasets: one secret flat colour per class instead of the generator's "
        "noise (colour class keys at share 1): CamVid semantic at 0.63 of clean, 0.68 after "
        "JPEG 75 (ten victim seeds), 0.52 after a blur, 0.58 after half-scale (nine; 0.62 "
        "for a victim trained 40 epochs instead of 12); 32.9 dB, a tint can show on large flat regions. "
        "Undone by a grayscale conversion and by an attacker holding clean labelled photos "
        "of the same source; no help against instance models (YOLO on pets 0.64)",
        class_mix=1.0,
        class_style="colour",
    ),
}
"""Protections by name (``unseg protect --preset``, ``protect(preset=...)``, the App's
choice), with what each is for; README "Presets" and the model cards hold what each
measured."""
NO_GENERATOR = "none"
"""The ``generator_id`` of copies whose noise is class keys alone (``class_mix`` 1)."""
GENERATORS = tuple(dict.fromkeys(preset.generator for preset in PRESETS.values()))
"""The shipped generators' names."""


def preset_protection(preset, generator, class_mix, class_style) -> tuple:
    """(generator, class_mix, class_style) to protect with: those given (not None), the
    rest the preset's. Without a preset, the generator given (None: the default) and no
    class keys. ValueError for an unknown preset, or one given with a generator."""
    if preset is None:
        chosen, generator = PRESETS["default"], generator
    elif preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    elif generator is not None:
        raise ValueError(f"give a generator or a preset ({preset!r}), not both")
    else:
        chosen, generator = PRESETS[preset], PRESETS[preset].generator
    return (
        generator,
        chosen.class_mix if class_mix is None else class_mix,
        chosen.class_style if class_style is None else class_style,
    )


MAX_BUDGET = 64 / 255
"""Budgets above are refused: a quarter of the range, plain to see."""
VISIBLE_BUDGET = 16 / 255
"""Budgets above are warned about: twice the paper's object budget, the noise shows."""


def in_255(value: float) -> str:
    """``value`` written in 1/255 units: 0.0314 -> "8/255"."""
    return f"{value * 255:.4g}/255"


def psnr_at(budget: float) -> float:
    """The PSNR (dB) of noise at the full budget on every pixel (the lowest it can be)."""
    return 20 * math.log10(1 / budget)


def parse_budget(text: str) -> float:
    """A budget as typed: ``8/255`` (any fraction) or a plain number in 1/255 units
    (``8`` = 8/255). A plain number in (0, 1) is refused: ``0.03`` reads as a fraction of
    the range as much as 0.03/255. Raises ``ValueError`` naming the problem."""
    numerator, slash, denominator = text.strip().partition("/")
    try:
        value = float(numerator) / (float(denominator) if slash else 255)
    except (ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{text!r} is not a budget like 8/255 or 8 (in 1/255 units)") from e
    if not slash and 0 < float(numerator) < 1:
        raise ValueError(
            f"{text!r} is ambiguous: a plain number counts in 1/255 units; write "
            f"{text}/255 for that, or {in_255(float(numerator))} for {text} of the range"
        )
    if not 0 <= value <= MAX_BUDGET:
        raise ValueError(f"{text!r} is {in_255(value)}, outside [0, {in_255(MAX_BUDGET)}]")
    return value


def parse_pixel_value(text: str):
    """A pixel value as typed: a whole number, "none" (None) or "auto"; ValueError
    naming what is not one."""
    text = text.strip()
    if text in ("none", "auto"):
        return None if text == "none" else text
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a pixel value: give a whole number, 'none' or 'auto'"
        ) from None


def check_budget(value: float, name: str) -> None:
    """Refuse a budget (a fraction of the range) outside [0, 64/255]; ``name`` says what was
    given."""
    if not 0 <= value <= MAX_BUDGET:
        meant = (
            f" (for {value:g}/255 write {value:g}/255 = {value / 255:.6g})"
            if 1 <= value <= 64
            else ""
        )
        raise ValueError(
            f"{name} is {in_255(value)} of the image range, outside [0, {in_255(MAX_BUDGET)}]: "
            f"budgets are fractions of the range, e.g. 8/255{meant}"
        )


def check_budgets(eps: float, eps_bg: float) -> None:
    """Refuse an object budget outside (0, 64/255] or a background budget outside [0, eps]."""
    check_budget(eps, f"eps={eps:g}")
    check_budget(eps_bg, f"eps_bg={eps_bg:g}")
    if eps == 0 or eps_bg > eps:
        raise ValueError(
            f"budgets must satisfy 0 <= eps_bg <= eps and eps > 0; got eps={in_255(eps)}, "
            f"eps_bg={in_255(eps_bg)}"
        )


def visibility_warning(budget: float) -> str | None:
    """Why ``budget`` shows, if it is above 16/255."""
    if budget > VISIBLE_BUDGET:
        return (
            f"a budget of {in_255(budget)} is above {in_255(VISIBLE_BUDGET)}: the noise shows "
            f"(PSNR down to {psnr_at(budget):.0f} dB where it is at full budget)"
        )
    return None
