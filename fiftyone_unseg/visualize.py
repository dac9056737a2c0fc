"""Show where and how much noise protection added, as FiftyOne heatmaps and images."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import fiftyone as fo
import numpy as np

from fiftyone_unseg.io import (
    encode_marked,
    is_output_error,
    marker,
    owner_of,
    read_rgb,
    write_owned,
)
from fiftyone_unseg.protect import (
    CURRENT,
    DEFAULT_EPS,
    PROTECTION_FIELDS,
    check_images,
    failure,
    is_noise_path,
    noise_paths,
    optional_values,
    original_paths,
    protection_states,
    stored_samples,
)

logger = logging.getLogger(__name__)
_CHUNK = 32  # samples per database update
_WORKERS = max(2, min(8, os.cpu_count() or 2))
RESERVED_FIELDS = ("id", "filepath", "tags", "metadata", *PROTECTION_FIELDS)


def visualize_noise(
    samples,
    heatmap_field: str = "unseg_noise",
    amplified_field: str | None = None,
    amplification: float | None = None,
    progress=None,
) -> dict:
    """Store the noise of each protected sample for the App.

    heatmap_field: a ``fo.Heatmap`` whose map is a PNG with, per pixel, the noise
      magnitude max over channels |protected - original| in 1/255 units (exact for
      8-bit originals), and ``range`` [0, eps * 255]: the App colours it relative to
      the sample's object budget (full scale = eps).
    amplified_field: if given, a media field (added to the App's media fields) with
      an image of the noise itself, mid-grey + (protected - original) * amplification;
      the default amplification, 0.5 / eps, makes the budget fill 0..255.
    progress: optional ``progress(done, total)`` callable.

    Files go to ``noise/`` next to each protected image, named after it and marked with
    the sample and dataset ids; a file there that was not written for the sample is left as it is
    (the sample fails). Output fields that hold something else (the sample's own
    fields, ``unseg``'s, a field of another type) are refused before any work. Samples
    without a protected image made from what they hold now
    (:func:`fiftyone_unseg.protect.protection_states`) are skipped and counted;
    unreadable images fail and the rest go on; a full or read-only folder stops the
    run (``stopped``). Returns ``visualized``, ``not_protected``, ``failed``,
    ``failures`` (sample id, path, reason) and ``stopped``.
    """
    check_images(samples, "visualize")
    _check_fields(samples._dataset, heatmap_field, amplified_field)
    jobs = _jobs(samples)
    not_protected = len(samples) - len(jobs)
    if not_protected:
        logger.warning(
            "%d of %d samples have no current protected image (run protect first); skipped",
            not_protected,
            len(samples),
        )
    summary = {
        "visualized": 0,
        "not_protected": not_protected,
        "failed": 0,
        "failures": [],
        "stopped": None,
    }
    dataset = samples._dataset
    if amplified_field and amplified_field not in dataset.app_config.media_fields:
        dataset.app_config.media_fields.append(amplified_field)
        dataset.save()
    with ThreadPoolExecutor(_WORKERS) as pool:
        for start in range(0, len(jobs), _CHUNK):
            chunk = jobs[start : start + _CHUNK]
            if summary["stopped"]:
                error = ValueError(summary["stopped"])
                summary["failures"] += [failure(job[0], job[1], error) for job in chunk]
                continue
            futures = [
                pool.submit(
                    _visualize_one,
                    owner_of(dataset, job[0]),
                    *job[1:],
                    amplified_field is not None,
                    amplification,
                )
                for job in chunk
            ]
            heatmaps, images = {}, {}
            for (sample_id, original, protected, _), future in zip(chunk, futures):
                error = future.exception()
                if error is not None:
                    summary["failures"].append(failure(sample_id, original, error))
                    if is_output_error(error):
                        folder = os.path.dirname(noise_paths(protected)[0])
                        summary["stopped"] = f"not attempted: {folder}: {error.strerror}"
                    continue
                heatmaps[sample_id], images[sample_id] = future.result()
            if heatmaps:
                dataset.set_values(heatmap_field, heatmaps, key_field="id")
            if heatmaps and amplified_field:
                dataset.set_values(amplified_field, images, key_field="id")
            summary["visualized"] += len(heatmaps)
            if progress is not None:
                progress(start + len(chunk), len(jobs))
    summary["failed"] = len(summary["failures"])
    return summary


def _check_fields(dataset, heatmap_field: str, amplified_field: str | None) -> None:
    """ValueError if an output field is reserved, the same as the other, or an existing
    field of another kind (the heatmap field must hold ``fo.Heatmap``, the amplified one
    be one of the App's media fields other than ``filepath``)."""
    for field in (heatmap_field, amplified_field):
        if (field or "").split(".")[0] in RESERVED_FIELDS:
            raise ValueError(
                f"{field!r} holds the samples' own data or their protection record; "
                "store the noise in a field of its own (e.g. unseg_noise)"
            )
    if heatmap_field == amplified_field:
        raise ValueError(
            f"the heatmap and the amplified image need two fields, both are {heatmap_field!r}"
        )
    schema = dataset.get_field_schema()
    heatmap = schema.get(heatmap_field)
    kind = getattr(heatmap, "document_type", None) or type(heatmap)
    if heatmap is not None and kind is not fo.Heatmap:
        raise ValueError(
            f"{heatmap_field!r} already holds {kind.__name__} values, not heatmaps; "
            "pick another heatmap field"
        )
    if amplified_field in schema and amplified_field not in dataset.app_config.media_fields:
        raise ValueError(
            f"{amplified_field!r} already holds other values (it is not one of the App's "
            "media fields); pick another field for the amplified noise"
        )
    for kind, (field, path, what) in enumerate(
        (
            (heatmap_field, f"{heatmap_field}.map_path", "heatmaps"),
            (amplified_field, amplified_field, "images"),
        )
    ):
        if field not in schema:
            continue
        own = [p for p in dataset.exists(path).values(path) if not is_noise_path(p, kind)]
        if field == heatmap_field and len(dataset.exists(f"{field}.map")):
            own.append("a heatmap array in the database")
        if own:
            raise ValueError(
                f"{field!r} holds {what} of its own (e.g. {own[0]}), which the noise would "
                "replace; pick another field"
            )


def _jobs(samples) -> list[tuple[str, str, str, float]]:
    """(sample id, original path, protected path, eps) of each protected sample."""
    stored = stored_samples(samples)  # a view may leave the path fields out
    ids = stored.values("id")
    protected, eps = (optional_values(stored, f) for f in ("protected_filepath", "unseg.eps"))
    return [
        (i, o, p, e or DEFAULT_EPS)
        for i, o, p, e, state in zip(
            ids, original_paths(stored), protected, eps, protection_states(stored)
        )
        if state == CURRENT
    ]


def _visualize_one(
    owner: str,
    original_path: str,
    protected_path: str,
    eps: float,
    amplified: bool,
    amplification: float | None,
) -> tuple[fo.Heatmap, str | None]:
    """Write the magnitude map (and the amplified noise image) of one sample, marked for
    ``owner`` (:func:`fiftyone_unseg.io.owner_of`)."""
    original, protected = read_rgb(original_path), read_rgb(protected_path)
    if original.shape != protected.shape:
        raise ValueError(
            f"{protected_path} is {protected.shape[:2]}, its original {original.shape[:2]}"
        )
    noise = protected - original  # HxWx3 in [-1, 1]
    reader = None if marker(protected_path) == owner else owner.split("@")[1]  # a clone
    map_path, image_path = noise_paths(protected_path, reader)
    magnitude = np.abs(noise).max(axis=2)
    write_owned(encode_marked(_to_uint8(magnitude), owner), map_path, owner)
    heatmap = fo.Heatmap(map_path=map_path, range=[0.0, eps * 255])
    if not amplified:
        return heatmap, None
    scaled = 0.5 + noise * (amplification or 0.5 / eps)
    amplified_image = _to_uint8(np.clip(scaled, 0, 1))
    write_owned(encode_marked(amplified_image, owner), image_path, owner)
    return heatmap, image_path


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> the nearest uint8 in 0..255."""
    return np.rint(values * 255).astype(np.uint8)
