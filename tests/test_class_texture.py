"""The informed class-texture and class-tint attacks: they remove what every image shares,
nothing else."""

import numpy as np
import pytest
from PIL import Image
from test_protect import generators  # noqa: F401

from fiftyone_unseg.audit.class_texture import ClassTexture, ClassTint
from fiftyone_unseg.audit.countermeasures import Countermeasure
from fiftyone_unseg.audit.splits import split_samples
from fiftyone_unseg.audit.targets import resolve_targets
from fiftyone_unseg.audit.variants import reference_ids, training_images

PERIOD = 4


def _photos(rng, count: int, height: int = 48, width: int = 64):
    """Smooth random photos with fine grain, and class maps of two random rectangles."""
    photos, maps = [], []
    for _ in range(count):
        coarse = rng.uniform(40, 215, (height // 8, width // 8, 3)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height)))
        grain = rng.normal(0, 6, (height, width, 3))
        photos.append(np.clip(smooth + grain, 0, 255).round().astype(np.uint8))
        class_map = np.zeros((height, width), np.int64)
        for k in (1, 2):
            top, left = rng.integers(0, height - 16), rng.integers(0, width - 16)
            class_map[top : top + 16, left : left + 24] = k
        maps.append(class_map)
    return photos, maps


def _add(photo, noise):
    return np.clip(photo.astype(float) + noise, 0, 255).round().astype(np.uint8)


def _gap(a, b) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_a_fixed_class_texture_is_found_and_removed_image_specific_noise_is_not():
    rng = np.random.default_rng(0)
    photos, maps = _photos(rng, 80)
    keys = rng.choice([-8.0, 8.0], (3, PERIOD, PERIOD, 3))  # a texture per class and phase
    attack = ClassTexture(period=PERIOD, size=64)  # images 64 px long: model px = image px
    rows, cols = np.indices(maps[0].shape) % PERIOD
    keyed = [_add(p, keys[m, rows, cols]) for p, m in zip(photos, maps)]

    attack.fit(zip(keyed, maps))
    found = attack.texture.reshape(3, PERIOD, PERIOD, 3)
    assert (np.sign(found) == np.sign(keys)).mean() > 0.97
    before = np.mean([_gap(k, p) for k, p in zip(keyed, photos)])
    after = np.mean([_gap(attack(k, m), p) for k, p, m in zip(keyed, photos, maps)])
    assert before > 7 and after < 0.3 * before

    # noise drawn anew for every image has no mean to find: it stays
    fresh = [_add(p, rng.choice([-8.0, 8.0], p.shape)) for p in photos]
    attack.fit(zip(fresh, maps))
    kept = np.mean([_gap(attack(f, m), p) for f, p, m in zip(fresh, photos, maps)])
    assert kept > 0.85 * np.mean([_gap(f, p) for f, p in zip(fresh, photos)])

    # clean photos come out almost as they were; unseen classes are left alone
    attack.fit(zip(photos, maps))
    assert np.mean([_gap(attack(p, m), p) for p, m in zip(photos, maps)]) < 1.0
    assert np.array_equal(attack(photos[0], maps[0] + 10), photos[0])


def test_a_flat_class_tint_is_found_against_clean_references_and_removed():
    rng = np.random.default_rng(1)
    photos, maps = _photos(rng, 120)
    tints = np.array([[0, 0, 0], [8.0, -8.0, 3.0], [-5.0, 8.0, -8.0]])  # background: none
    tinted = [_add(p, tints[m]) for p, m in zip(photos, maps)]
    held = reference_ids(list(range(len(photos))), 0.25)
    assert len(held) == 30 and held[0] == 0 and held[-1] == len(photos) - 1
    assert reference_ids(list(range(len(photos))), 1.0) == list(range(len(photos)))

    # against the clean originals of every photo the tint is exact, up to rounding
    attack = ClassTint().fit(zip(tinted, maps), zip(photos, maps))
    assert np.abs(attack.tint - tints).max() < 0.6
    before = np.mean([_gap(t, p) for t, p in zip(tinted, photos)])
    after = np.mean([_gap(attack(t, m), p) for t, p, m in zip(tinted, photos, maps)])
    assert before > 1 and after < 0.3 * before

    # the texture attack centres each class on its own colour: blind to a flat tint
    texture = ClassTexture(period=PERIOD, size=64).fit(zip(tinted, maps))
    kept = np.mean([_gap(texture(t, m), p) for t, p, m in zip(tinted, photos, maps)])
    assert kept > 0.8 * before

    # noise drawn anew for every image has no mean to find: it stays
    fresh = [_add(p, rng.choice([-8.0, 8.0], p.shape)) for p in photos]
    attack.fit(zip(fresh, maps), ((photos[i], maps[i]) for i in held))
    kept = np.mean([_gap(attack(f, m), p) for f, p, m in zip(fresh, photos, maps)])
    assert kept > 0.85 * np.mean([_gap(f, p) for f, p in zip(fresh, photos)])
    # classes the references lack get no tint
    attack.fit(zip(tinted, maps), [(photos[0], np.zeros_like(maps[0]))])
    objects = maps[0] > 0
    assert np.array_equal(attack(tinted[0], maps[0])[objects], tinted[0][objects])


def test_texture_countermeasure_parses_and_only_runs_on_a_training_set():
    texture = Countermeasure.parse("texture")
    assert texture == Countermeasure("texture", 16.0) and texture.learned
    assert not Countermeasure.parse("jpeg:75").learned
    for bad in ("texture:1", "texture:2.5"):
        with pytest.raises(ValueError, match="integer >= 2"):
            Countermeasure.parse(bad)
    with pytest.raises(TypeError, match="learns from the training set"):
        texture(np.zeros((8, 8, 3), np.uint8))
    assert Countermeasure.parse("tint") == Countermeasure("tint", 0.1)
    assert Countermeasure.parse("tint:1").learned
    for bad in ("tint:0", "tint:1.5"):
        with pytest.raises(ValueError, match=r"in \(0, 1\]"):
            Countermeasure.parse(bad)


def test_training_images_subtract_the_class_texture_of_the_pattern_baseline(
    sample_dataset, tmp_path
):
    ids = split_samples(sample_dataset).train_ids
    targets = resolve_targets(sample_dataset, "instances")
    plain = training_images(sample_dataset, ids, targets, ["clean", "pattern"], str(tmp_path / "a"))
    attacked = training_images(
        sample_dataset,
        ids,
        targets,
        ["clean", "pattern"],
        str(tmp_path / "b"),
        countermeasure=Countermeasure.parse("texture:16"),  # 8 px tiles on 128 px images
    )
    clean = {i: np.asarray(Image.open(plain["clean"][i]).convert("RGB")) for i in ids}
    assert attacked["clean"] == plain["clean"]  # the clean images are never touched
    for i in ids:
        assert attacked["pattern"][i] == str(tmp_path / "b" / "pattern" / f"{i}.png")
    read = {i: np.asarray(Image.open(attacked["pattern"][i]).convert("RGB")) for i in ids}
    patterned = {i: np.asarray(Image.open(plain["pattern"][i]).convert("RGB")) for i in ids}
    # the share of the pattern left in the attacked images (projection on it): all of it
    # before, little after (what the attack adds besides comes from 11 photos' own texture)
    pattern = np.concatenate([(patterned[i] - clean[i].astype(float)).ravel() for i in ids])
    left = np.concatenate([(read[i] - clean[i].astype(float)).ravel() for i in ids])
    assert np.abs(pattern).mean() > 2
    assert left @ pattern / (pattern @ pattern) < 0.25


def test_the_attack_fits_its_texture_in_the_frame_of_the_protecting_generator(
    tmp_path,
    generators,  # noqa: F811
):
    """Protection records its generator's frame (MICRO's: 64 px); the attack bins in it,
    the shipped generators' 256 px where nothing is recorded."""
    from test_protect import _scene_dataset

    from fiftyone_unseg import protect
    from fiftyone_unseg.audit.variants import generator_frame

    dataset = _scene_dataset("texture-frame", tmp_path, count=3)
    assert generator_frame(dataset) == 256
    protect(dataset, "dets", generator=generators["random"])
    assert dataset.values("unseg.generator_size") == [64, 64, 64]
    assert generator_frame(dataset) == 64
    dataset.set_values("unseg.generator_size", [1024, 64, 64])
    assert generator_frame(dataset) == 64  # the most common


@pytest.mark.parametrize("field", ["instances", "ground_truth"])  # Detections, Segmentation
def test_training_images_subtract_the_class_tint_of_the_class_colour_baseline(
    sample_dataset, tmp_path, field
):
    ids = split_samples(sample_dataset).train_ids
    targets = resolve_targets(sample_dataset, field)
    variants = ["clean", "class_colour", "random", "none"]
    plain = training_images(sample_dataset, ids, targets, variants, str(tmp_path / "a"))
    attacked = training_images(
        sample_dataset,
        ids,
        targets,
        variants,
        str(tmp_path / "b"),
        countermeasure=Countermeasure.parse("tint:1"),  # the clean originals of all
    )
    assert attacked["clean"] == plain["clean"]  # the clean images are never touched

    def read(paths):
        return np.concatenate(
            [np.asarray(Image.open(paths[i]).convert("RGB")).astype(float).ravel() for i in ids]
        )

    clean = read(plain["clean"])
    for variant, most_left in (("class_colour", 0.25), ("random", None)):
        noise = read(plain[variant]) - clean
        left = read(attacked[variant]) - clean
        assert np.abs(noise).mean() > 1
        share = left @ noise / (noise @ noise)  # the share of the noise left after the attack
        if most_left is None:  # noise drawn anew per image: the attack finds nothing
            assert share > 0.9
        else:
            assert share < most_left
    # clean images against themselves as references: no tint, nothing changes
    assert np.abs(read(attacked["none"]) - clean).max() <= 1
