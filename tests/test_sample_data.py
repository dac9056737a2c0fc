import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from test_protect import generators  # noqa: F401

from fiftyone_unseg import folders, sample_data


def test_scenes_are_deterministic_and_independent_of_count():
    a = sample_data.make_scene(3, 5, size=96, style="photo")
    b = sample_data.make_scene(3, 5, size=96, style="photo")
    c = sample_data.make_scene(4, 5, size=96, style="photo")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.semantic, b.semantic)
    assert all(np.array_equal(x, y) for x, y in zip(a.instance_masks, b.instance_masks))
    assert not np.array_equal(a.image, c.image)


def test_written_files_do_not_depend_on_num(tmp_path):
    few = sample_data.write_scenes(str(tmp_path / "few"), 2, seed=1, size=64)
    many = sample_data.write_scenes(str(tmp_path / "many"), 5, seed=1, size=64)
    for r_few, r_many in zip(few, many):
        assert open(r_few["image"], "rb").read() == open(r_many["image"], "rb").read()


def test_rewriting_scenes_leaves_no_stale_pairs_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "scenes"
    sample_data.write_scenes(str(out), 4, seed=1, size=64)
    records = sample_data.write_scenes(str(out), 2, seed=2, size=64)
    written = {
        os.path.relpath(p, out) for r in records for p in (r["image"], r["semantic"], *r["masks"])
    }
    on_disk = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    assert on_disk == written
    pairs = folders.find_pairs(str(out / "images"), str(out / "masks"))
    assert len({p.image for p in pairs}) == 2
    (out / "images" / "holiday.jpg").write_bytes(b"a user's photo")
    with pytest.raises(ValueError, match=r"not generated scenes \(e\.g\. .*holiday\.jpg\)"):
        sample_data.write_scenes(str(out), 2, seed=1, size=64)
    assert (out / "images" / "holiday.jpg").read_bytes() == b"a user's photo"


def test_a_folder_holding_another_datasets_scenes_is_refused(tmp_path):
    folder = str(tmp_path / "shared")
    first = sample_data.create_sample_dataset("scenes-first", num=2, size=64, dataset_dir=folder)
    before = {p: open(p, "rb").read() for p in first.values("filepath")}
    with pytest.raises(ValueError, match="holds the images of dataset 'scenes-first'"):
        sample_data.create_sample_dataset(
            "scenes-second", num=1, seed=1, size=64, dataset_dir=folder
        )
    assert {p: open(p, "rb").read() for p in first.values("filepath")} == before
    assert not fo.dataset_exists("scenes-second")
    again = sample_data.create_sample_dataset(  # its own folder: rewritten
        "scenes-first", num=1, size=64, dataset_dir=folder, overwrite=True
    )
    assert len(again) == 1


def test_an_overwrite_refused_for_a_foreign_file_deletes_nothing(tmp_path, generators):  # noqa: F811
    """Overwriting a sample dataset deletes its protected copies with its scenes; a file
    that is not a scene (Finder's .DS_Store) refuses the overwrite before either goes."""
    from fiftyone_unseg import protect

    folder = tmp_path / "scenes"
    dataset = sample_data.create_sample_dataset(
        "scenes-kept", num=2, size=64, dataset_dir=str(folder)
    )
    protect(dataset, "ground_truth", generator=generators["random"], output_dir=str(tmp_path / "p"))
    copies = dataset.values("protected_filepath")
    (folder / ".DS_Store").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not generated scenes \(e\.g\. .*\.DS_Store\)"):
        sample_data.create_sample_dataset(
            "scenes-kept", num=1, size=64, dataset_dir=str(folder), overwrite=True
        )
    assert all(map(os.path.isfile, copies)) and dataset.values("protected_filepath") == copies


@pytest.mark.parametrize("style", sample_data.STYLES)
def test_labels_are_consistent(style):
    for i in range(6):
        scene = sample_data.make_scene(11, i, size=128, style=style)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        union = np.zeros_like(scene.semantic, bool)
        for mask, label in zip(scene.instance_masks, scene.instance_labels):
            assert mask.any(), "instances that vanished under occlusion must be dropped"
            cls = sample_data.CLASSES.index(label) + 1
            assert np.all(scene.semantic[mask] == cls), "instance outside its class region"
            assert not (union & mask).any(), "visible instance masks must not overlap"
            union |= mask
        assert np.array_equal(union, scene.semantic > 0)


def test_classes_and_splits_are_balanced():
    counts = dict.fromkeys(sample_data.CLASSES, 0)
    splits = {"train": 0, "val": 0, "test": 0}
    n = 120
    for i in range(n):
        scene = sample_data.make_scene(0, i, size=64, style=sample_data.STYLES[i % 4])
        splits[scene.split] += 1
        for label in scene.instance_labels:
            counts[label] += 1
    mean = sum(counts.values()) / len(counts)
    assert all(abs(c - mean) <= 0.25 * mean for c in counts.values()), counts
    assert 0.55 * n <= splits["train"] <= 0.85 * n and splits["val"] > 0 and splits["test"] > 0


def test_styles_differ_in_object_count():
    def mean_objects(style):
        return np.mean(
            [len(sample_data.make_scene(2, i, 64, style).instance_labels) for i in range(20)]
        )

    assert mean_objects("clutter") > mean_objects("photo") > mean_objects("studio")


def test_scenes_too_small_for_objects_are_refused(unseg):
    bad = unseg("sample-data", "--name", "too-small", "--num", "2", "--size", "8", check=False)
    assert bad.returncode == 2 and "size must be at least 32 px" in bad.stderr
    assert not fo.dataset_exists("too-small")


def test_unknown_style_is_rejected():
    with pytest.raises(ValueError, match="unknown scene style"):
        sample_data.make_scene(0, 0, style="cartoon")


def test_dataset_fields_match_files(sample_dataset):
    ds = sample_dataset
    assert len(ds) == 16
    assert ds.mask_targets["ground_truth"] == {k + 1: c for k, c in enumerate(sample_data.CLASSES)}
    assert set(ds.distinct("tags")) <= {"train", "val", "test"}
    for sample in ds:
        assert len(sample.tags) == 1
        semantic = np.asarray(Image.open(sample.ground_truth.mask_path))
        h, w = semantic.shape
        for det in sample.instances.detections:
            x, y, bw, bh = det.bounding_box
            x0, y0 = round(x * w), round(y * h)
            region = semantic[y0 : y0 + det.mask.shape[0], x0 : x0 + det.mask.shape[1]]
            cls = sample_data.CLASSES.index(det.label) + 1
            assert np.all(region[det.mask] == cls)


def test_dataset_is_readable_as_folder_pairs(sample_dataset):
    root = sample_dataset.info["dataset_dir"]
    pairs = folders.find_pairs(f"{root}/images", f"{root}/masks")
    assert len(pairs) == sum(len(s.instances.detections) for s in sample_dataset)
    by_image = {}
    for p in pairs:
        by_image.setdefault(p.image, []).append(p.mask)
    for sample in sample_dataset:
        assert len(by_image.get(sample.filepath, [])) == len(sample.instances.detections)


def test_object_masks_beside_their_images_pair_with_them(tmp_path):
    """ECSSD / MSRA10K keep images and masks in one folder; several objects per image."""
    Image.new("RGB", (8, 8)).save(tmp_path / "0001.jpg")
    for k in range(2):
        Image.new("L", (8, 8), 255).save(tmp_path / folders.instance_mask_name("0001", k))
    Image.new("L", (8, 8), 255).save(tmp_path / "0002.png")  # a mask without its image
    (tmp_path / "link").symlink_to(tmp_path)
    for images in (tmp_path, tmp_path / ".", tmp_path / "link"):  # one folder, spelt 3 ways
        pairs = folders.find_pairs(str(images), str(tmp_path))
        assert [(os.path.basename(p.image), os.path.basename(p.mask)) for p in pairs] == [
            ("0001.jpg", "0001__00.png"),
            ("0001.jpg", "0001__01.png"),
        ], images


def test_find_pairs_matches_hqseg_layout(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    for stem in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(tmp_path / "im" / f"{stem}.jpg")
    Image.new("L", (8, 8)).save(tmp_path / "gt" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "gt" / "b__00.png")
    Image.new("L", (8, 8)).save(tmp_path / "gt" / "b__01.png")
    Image.new("L", (8, 8)).save(tmp_path / "gt" / "orphan.png")
    pairs = folders.find_pairs(str(tmp_path / "im"), str(tmp_path / "gt"))
    assert [(p.image[-5:], p.mask[-9:]) for p in pairs] == [
        ("a.jpg", "/gt/a.png"),
        ("b.jpg", "b__00.png"),
        ("b.jpg", "b__01.png"),
    ]


def test_cli_creates_dataset_and_refuses_to_clobber(tmp_path, unseg):
    proc = unseg(
        "sample-data",
        "--name",
        "cli-made",
        "--num",
        "3",
        "--size",
        "64",
        "--seed",
        "5",
        "--dir",
        str(tmp_path / "files"),
    )
    assert "Created dataset 'cli-made': 3 samples" in proc.stdout
    ds = fo.load_dataset("cli-made")
    assert ds.persistent and len(ds) == 3 and ds.info["seed"] == 5
    again = unseg("sample-data", "--name", "cli-made", "--num", "3", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(fo.load_dataset("cli-made")) == 3
    assert "`unseg sample-data --overwrite`" in again.stderr
    from fiftyone_unseg import protect

    protect(ds, "ground_truth", output_dir=str(tmp_path / "copies"), replace_filepath=True)
    copies = ds.values("protected_filepath")
    assert all(os.path.isfile(p) for p in copies)
    os.remove(ds.first().original_filepath)  # a copy restore would keep: its original is gone
    args = ["sample-data", "--name", "cli-made", "--num", "2", "--size", "64", "--overwrite"]
    unseg(*args, "--dir", str(tmp_path / "files"))
    assert len(fo.load_dataset("cli-made")) == 2
    assert not any(os.path.exists(p) for p in copies)  # the replaced scenes' copies went too


def test_one_folder_with_an_image_and_a_mask_of_one_stem_pairs_them_by_content(tmp_path):
    """``0001.png`` (the mask) sorts before ``0001.tif`` (the photo): either could be the
    mask by its extension, so the one-channel file is."""
    Image.new("RGB", (8, 8)).save(tmp_path / "0001.tif")
    Image.new("L", (8, 8), 255).save(tmp_path / "0001.png")
    Image.new("L", (8, 8), 255).save(tmp_path / "0002.tif")  # the mask sorts after
    Image.new("RGB", (8, 8)).save(tmp_path / "0002.png")
    pairs = folders.find_pairs(str(tmp_path), str(tmp_path))
    assert [(os.path.basename(p.image), os.path.basename(p.mask)) for p in pairs] == [
        ("0001.tif", "0001.png"),
        ("0002.png", "0002.tif"),
    ]
    Image.new("L", (8, 8)).save(tmp_path / "0003.tif")  # two one-channel files
    Image.new("L", (8, 8)).save(tmp_path / "0003.png")
    with pytest.raises(ValueError, match=r"0003.png, .*0003.tif: cannot tell which is the image"):
        folders.find_pairs(str(tmp_path), str(tmp_path))
