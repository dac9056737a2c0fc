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
    (a sample with both tags is a test sample); otherwise (or with ``split_tags=None``) a
    random split with ``train_fraction`` of the samples for training, seeded by ``seed``.
    """
    if split_tags:
        train_tag, test_tag = split_tags
        counts = samples.count_sample_tags()
        if counts.get(train_tag) and counts.get(test_tag):
            test = samples.match_tags(test_tag).values("id")
            train = samples.match_tags(train_tag).exclude(test).values("id")
            if train:
                return Split(tuple(train), tuple(test), f"tags {train_tag!r} / {test_tag!r}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    ids = samples.values("id")
    if len(ids) < 2:
        raise ValueError("the audit needs at least 2 samples (one to train on, one to test)")
    order = np.random.default_rng(seed).permutation(len(ids))
    num_train = min(max(round(train_fraction * len(ids)), 1), len(ids) - 1)
    return Split(
        tuple(ids[i] for i in order[:num_train]),
        tuple(ids[i] for i in order[num_train:]),
        f"random {train_fraction:g} / {1 - train_fraction:g} (seed {seed})",
    )
