"""Which samples the victims train on and which they are tested on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    (a sample with both tags, or with the image file of a test sample, is a test sample);
    otherwise (or with ``split_tags=None``) a random split with ``train_fraction`` of the
    images for training, seeded by ``seed``. Samples that share an image file (a dataset
    added twice) stay on one side: a victim is never tested on an image it trained on.
    """
    if split_tags:
        train_tag, test_tag = split_tags
        counts = samples.count_sample_tags()
        if counts.get(train_tag) and counts.get(test_tag):
            test, test_files = samples.match_tags(test_tag).values(["id", "filepath"])
            tagged = samples.match_tags(train_tag).exclude(test)
            test_files = set(test_files)
            train = [i for i, p in zip(*tagged.values(["id", "filepath"])) if p not in test_files]
            if train:
                return Split(tuple(train), tuple(test), f"tags {train_tag!r} / {test_tag!r}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    by_file = {}
    for sample_id, path in zip(*samples.values(["id", "filepath"])):
        by_file.setdefault(path, []).append(sample_id)
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
