"""Which samples the victims train on and which they are tested on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fiftyone_unseg.protect import original_paths, stored_samples


@dataclass(frozen=True)
class Split:
    """Sample ids of the two splits and how they were chosen (for the report)."""

    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    source: str


def split_samples(
    samples, split_tags=("train", "test"), train_fraction: float = 0.7, seed: int = 0
) -> Split:
    """The training and test samples of ``samples``.

    With ``split_tags=(train_tag, test_tag)`` and both tags present, the tagged samples
    (a sample with both tags is a test sample; a training sample with the original image
    of a test sample is left out); otherwise (or with ``split_tags=None``) a random split
    with ``train_fraction`` of the original images for training, seeded by ``seed``.
    Samples of one original image (a dataset added twice, protected or not) never sit on
    both sides: a victim is never tested on an image it trained on.
    """
    originals = dict(zip(stored_samples(samples).values("id"), original_paths(samples)))
    if split_tags:
        train_tag, test_tag = split_tags
        counts = samples.count_sample_tags()
        if counts.get(train_tag) and counts.get(test_tag):
            test = samples.match_tags(test_tag).values("id")
            test_files = {originals[i] for i in test}
            tagged = samples.match_tags(train_tag).exclude(test).values("id")
            train = [i for i in tagged if originals[i] not in test_files]
            if train:
                return Split(tuple(train), tuple(test), f"tags {train_tag!r} / {test_tag!r}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    by_file = {}
    for sample_id in samples.values("id"):
        by_file.setdefault(originals[sample_id], []).append(sample_id)
    files = list(by_file)
    if len(files) < 2:
        raise ValueError("the audit needs at least 2 images (one to train on, one to test)")
    order = np.random.default_rng(seed).permutation(len(files))
    num_train = min(max(round(train_fraction * len(files)), 1), len(files) - 1)
    return Split(
        tuple(i for k in order[:num_train] for i in by_file[files[k]]),
        tuple(i for k in order[num_train:] for i in by_file[files[k]]),
        f"random {train_fraction:g} / {1 - train_fraction:g} (seed {seed})",
    )
