"""The training images of each variant, as files the victims read.

- ``clean``: the original images, as they are;
- ``protected``: the images in the protected field (``protected_filepath``);
- a baseline (``random``, ``random_flat``, ``pattern``, ``class_pattern``,
  ``class_colour``): the original plus that noise at the sample's protection budgets
  (its ``unseg.eps`` / ``unseg.eps_bg`` when protected, else the defaults), eps on the
  union of its instances, eps_bg elsewhere (``random_flat``: eps everywhere).

A counter-measure applies to every variant but ``clean``; one learnt from the training
set (``texture``, ``tint``) is fitted on each variant's images after they are all made. Images
that change are written losslessly as ``<folder>/<variant>/<sample id>.png``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image

from fiftyone_unseg.audit.baselines import BASELINES
from fiftyone_unseg.audit.class_texture import ClassTexture, ClassTint
from fiftyone_unseg.audit.countermeasures import Countermeasure
from fiftyone_unseg.audit.targets import Targets
from fiftyone_unseg.io import atomic_write_image, read_rgb
from fiftyone_unseg.protect import STALE, optional_values, protected_pixels, protection_states

logger = logging.getLogger(__name__)

CLEAN = "clean"
PROTECTED = "protected"


def _stored(samples, ids):
    """The samples ``ids`` with every field the dataset stores, in that order: a view that
    leaves out what protection recorded (``original_filepath``, ``unseg``, the protected
    field) must not make the copies pass for originals or the budgets for the defaults."""
    return samples._dataset.select(ids, ordered=True)


def clean_paths(samples, ids) -> dict[str, str]:
    """Sample id -> its original image (``original_filepath`` where protection replaced
    ``filepath``)."""
    view = _stored(samples, ids)
    originals = optional_values(view, "original_filepath")
    return {i: o or f for i, f, o in zip(view.values("id"), view.values("filepath"), originals)}


def protected_paths(samples, ids, protected_field: str) -> dict[str, str]:
    """Sample id -> its protected image; ValueError if any sample has none."""
    view = _stored(samples, ids)
    if not view.has_field(protected_field):
        raise ValueError(
            f"no field {protected_field!r}: protect the training samples first "
            "(fiftyone_unseg.protect / unseg protect), or pass no protected field to "
            "compare baselines only"
        )
    paths = dict(zip(view.values("id"), view.values(protected_field)))
    missing = [i for i, p in paths.items() if not p or not os.path.isfile(p)]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(paths)} training samples have no protected image in "
            f"{protected_field!r} (e.g. sample {missing[0]}): protect them first"
        )
    if protected_field == "protected_filepath":  # what protect wrote: is it still current?
        states = dict(zip(view.values("id"), protection_states(view)))
        stale = [i for i, state in states.items() if state == STALE]
        if stale:
            raise ValueError(
                f"{len(stale)} of {len(paths)} training samples changed since they were "
                "protected (their image or label) or their last protection did not finish "
                f"(e.g. sample {stale[0]}): protect them again, or the victim learns from "
                "a copy of another picture or labels"
            )
    return paths


def training_images(
    samples,
    ids,
    targets: Targets,
    variants,
    folder: str,
    protected_field: str | None = None,
    countermeasure: Countermeasure | None = None,
    eps: float = 8 / 255,
    eps_bg: float = 2 / 255,
) -> dict[str, dict[str, str]]:
    """Variant -> (sample id -> training image path) for the samples ``ids``. The
    baselines' noise is drawn from fixed seeds: every victim seed of one audit, and of
    another on the same split (tags; a random split follows the audit's seed), trains on
    the same baseline images."""
    learned = countermeasure if countermeasure is not None and countermeasure.learned else None
    if learned is not None:
        countermeasure = None
    clean = clean_paths(samples, ids)
    out = {variant: {} for variant in variants}
    out[CLEAN] = clean
    sources = {variant: BASELINES[variant]() for variant in variants if variant in BASELINES}
    protected = protected_paths(samples, ids, protected_field) if PROTECTED in variants else {}
    view = samples.select(ids, ordered=True)  # the labels as the view shows them
    stored = _stored(samples, ids)
    if sources:
        _warn_of_other_object_budgets(stored, ids, targets.label_field)
    budgets = zip(
        _or_default(optional_values(stored, "unseg.eps"), eps),
        _or_default(optional_values(stored, "unseg.eps_bg"), eps_bg),
    )
    labels = zip(*(view.values(field) for field in targets.fields))
    for sample_id, sample_labels, (sample_eps, sample_eps_bg) in zip(ids, labels, budgets):
        if sample_id in protected:
            out[PROTECTED][sample_id] = _write(
                protected[sample_id], None, countermeasure, folder, PROTECTED, sample_id
            )
        if not sources:
            continue
        image = read_rgb(clean[sample_id])
        labels = dict(zip(targets.fields, sample_labels))
        classes = torch.from_numpy(targets.instance_class_map(labels, *image.shape[:2]))
        classes = classes[None, None]
        objects = (classes > 0).float()
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
        for variant, source in sources.items():
            noise = source(tensor, objects, classes)
            budget_mask = objects if source.mask_aligned else torch.ones_like(objects)
            pixels = protected_pixels(tensor, noise, budget_mask, sample_eps, sample_eps_bg)
            pixels = pixels[0].permute(1, 2, 0).to(torch.uint8).numpy()
            out[variant][sample_id] = _write(
                None, pixels, countermeasure, folder, variant, sample_id
            )
    if learned is not None:
        for variant in variants:
            if variant != CLEAN:
                _subtract_learned(out[variant], view, targets, learned, clean, folder, variant)
    return out


def _subtract_learned(
    paths: dict, view, targets: Targets, learned: Countermeasure, clean: dict, folder, variant
):
    """Fit the informed attack ``learned`` (``texture`` or ``tint``) on the images
    ``paths`` (sample id -> file) with their labels in ``view`` (``tint``: against the
    clean images ``clean`` of its share of them), subtract it from each and point
    ``paths`` at the results."""
    labels = zip(*(view.values(field) for field in targets.fields))
    labels = dict(zip(view.values("id"), (dict(zip(targets.fields, x)) for x in labels)))
    # a tint is keyed per class over a Segmentation's whole class map (void its own bin)
    semantic = learned.kind == "tint" and targets.instances_derived
    class_map = targets.semantic if semantic else targets.instance_class_map

    def pairs(files: dict):
        for sample_id, path in files.items():
            image = _to_uint8(torch.from_numpy(read_rgb(path)).permute(2, 0, 1))
            yield sample_id, image, class_map(labels[sample_id], *image.shape[:2])

    if learned.kind == "texture":
        attack = ClassTexture(int(learned.value), generator_frame(_stored(view, list(paths))))
        attack.fit((image, classes) for _, image, classes in pairs(paths))
    else:
        held = reference_ids(list(clean), learned.value)
        attack = ClassTint().fit(
            ((image, classes) for _, image, classes in pairs(paths)),
            ((image, classes) for _, image, classes in pairs({i: clean[i] for i in held})),
        )
    for sample_id, image, classes in pairs(paths):
        paths[sample_id] = _write(None, attack(image, classes), None, folder, variant, sample_id)


def reference_ids(ids: list, share: float) -> list:
    """The share ``share`` of ``ids`` (at least one) evenly spread over them: the
    training samples whose clean originals the ``tint`` attacker holds."""
    count = max(1, round(share * len(ids)))
    return [ids[i] for i in sorted(set(np.linspace(0, len(ids) - 1, count).round().astype(int)))]


def generator_frame(view, default: int = 256) -> int:
    """The frame side of the generator most of ``view``'s samples were protected with
    (recorded as ``unseg.generator_size``; ``default`` where none is: the shipped
    generators'): the grid an informed attacker fits the texture in."""
    sizes = Counter(s for s in optional_values(view, "unseg.generator_size") if s)
    return sizes.most_common(1)[0][0] if sizes else default


def _warn_of_other_object_budgets(stored, ids, label_field: str) -> None:
    """Log the samples whose protection put the object budget on other pixels than the
    baselines do (every segment of ``label_field``): protected through another field or
    with a class prompt, which gave the other segments the background budget."""
    fields = optional_values(stored, "unseg.label_field")
    prompts = optional_values(stored, "unseg.prompt")
    other = [
        (i, f, p)
        for i, f, p in zip(ids, fields, prompts)
        if f is not None and (f != label_field or (p or "").startswith("classes:"))
    ]
    if other:
        sample_id, field, prompt = other[0]
        logger.warning(
            "%d training samples were protected with the object budget on other pixels than "
            "the baselines put it on (every segment of %r), e.g. sample %s: field %r, prompt "
            "%r; the baselines' comparison with protection is not at the same budget map",
            len(other), label_field, sample_id, field, prompt,
        )  # fmt: skip


def _or_default(values: list, default: float) -> list[float]:
    return [default if v is None else v for v in values]


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """3xHxW in [0, 1] -> HxWx3 uint8."""
    return image.mul(255).round().clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()


def _write(path, image, countermeasure, folder: str, variant: str, sample_id: str) -> str:
    """The image file to train on: ``path`` itself when nothing changes it, else a new PNG
    of ``image`` (or of ``path``'s pixels) after the counter-measure."""
    if countermeasure is None and image is None:
        return path
    if image is None:
        image = _to_uint8(torch.from_numpy(read_rgb(path)).permute(2, 0, 1))
    if countermeasure is not None:
        image = countermeasure(image)
    target = os.path.join(folder, variant, f"{sample_id}.png")
    atomic_write_image(Image.fromarray(image), target)
    return target
