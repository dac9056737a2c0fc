"""What a protected copy was made from: stale copies, failed re-protection, leftovers of
earlier protections, run records, metadata (issue 28)."""

import importlib
import os

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from test_protect import EPS, TOL, _dataset, _noise, _scene_dataset, _texture, generators  # noqa: F401

from fiftyone_unseg import evaluate_protection, export_protected, protect, restore, visualize_noise
from fiftyone_unseg.io import encode_marked
from fiftyone_unseg.summary import headline, protection_summary

protect_module = importlib.import_module("fiftyone_unseg.protect")


def _counts(samples) -> tuple:
    summary = protection_summary(samples)
    return summary["num_protected"], summary["num_stale"]


def test_a_changed_original_or_label_makes_its_copy_stale_everywhere(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("stale", tmp_path, count=4)
    protect(dataset, "dets", generator=generators["random"])
    edited, relabelled, tagged, legacy = dataset
    Image.fromarray(_texture(64, 64, 99)).save(edited.filepath)  # changed in place
    relabelled.dets.detections[0].bounding_box = [0.1, 0.1, 0.3, 0.3]
    relabelled.save()
    tagged.dets.detections[0].tags = ["checked"]  # not what the prompt is made of
    tagged.save()
    for fact in ("source_hash", "label_hash"):  # protected before the hashes were recorded
        dataset.set_values(f"unseg.{fact}", {legacy.id: None}, key_field="id")

    assert _counts(dataset) == (2, 2)
    assert "2 stale" in headline(protection_summary(dataset))
    with pytest.raises(ValueError) as error:
        export_protected(dataset, str(tmp_path / "out"), "images")
    assert "2 of 4 samples" in str(error.value)
    assert f"{edited.id} ({edited.filepath})" in str(error.value) and relabelled.id in str(
        error.value
    )
    assert "changed since" in str(error.value) and not (tmp_path / "out").exists()
    summary = export_protected(dataset, str(tmp_path / "out"), "images", skip_unprotected=True)
    assert (summary["exported"], summary["skipped"]) == (2, 2)
    assert visualize_noise(dataset)["not_protected"] == 2

    again = protect(dataset, "dets", generator=generators["random"])
    assert (again["protected"], again["skipped"]) == (2, 2)
    assert _counts(dataset) == (4, 0)
    edited.reload()
    assert np.abs(_noise(edited)).max() <= EPS + TOL  # made from the new picture
    assert export_protected(dataset, str(tmp_path / "all"), "images")["exported"] == 4


def test_originals_are_hashed_again_only_where_their_size_or_time_changed(
    tmp_path,
    generators,  # noqa: F811
    monkeypatch,
):
    dataset = _scene_dataset("stat", tmp_path, count=4)
    protect(dataset, "dets", generator=generators["random"])
    touched, rewritten, legacy, older = dataset
    stat = os.stat(older.filepath)  # recorded before paths and inodes were: size and time
    dataset.set_values(
        "unseg.source_stat", {older.id: f"{stat.st_size}:{stat.st_mtime_ns}"}, key_field="id"
    )
    os.utime(touched.filepath, ns=(1, 1))  # same bytes, another time
    Image.fromarray(_texture(64, 64, 99)).save(rewritten.filepath)
    dataset.set_values("unseg.source_stat", {legacy.id: None}, key_field="id")  # older copy
    hashed = []
    file_hash = protect_module.file_hash
    monkeypatch.setattr(protect_module, "file_hash", lambda p: hashed.append(p) or file_hash(p))
    states = protect_module.protection_states(dataset)
    assert states == [protect_module.CURRENT, protect_module.STALE] + [protect_module.CURRENT] * 2
    # each changed or unrecorded; the older record matches by size and time
    assert sorted(hashed) == sorted([touched.filepath, rewritten.filepath, legacy.filepath])
    again = protect(dataset, "dets", generator=generators["random"])  # the stale one again
    assert (again["protected"], again["skipped"]) == (1, 3)
    hashed.clear()
    assert _counts(dataset) == (4, 0)
    # the new copy recorded its original's facts; the other three were read once
    # at their present size and time, and are not read again while those hold
    assert hashed == []
    os.utime(legacy.filepath, ns=(2, 2))
    os.utime(older.filepath, ns=(2, 2))
    assert _counts(dataset) == (4, 0) and sorted(hashed) == sorted(
        [legacy.filepath, older.filepath]
    )


def test_mask_files_are_read_again_only_where_their_size_or_time_changed(
    tmp_path,
    generators,  # noqa: F811
    monkeypatch,
):
    dataset = _scene_dataset("mask-stat", tmp_path, count=3)
    mask_path = dataset.first().seg_path.mask_path  # one mask file for every scene
    Image.open(mask_path).save(mask_path, compress_level=0)  # its size: its pixel count
    protect(dataset, "seg_path", generator=generators["random"])
    hashed = []
    file_hash = protect_module.file_hash
    monkeypatch.setattr(protect_module, "file_hash", lambda p: hashed.append(p) or file_hash(p))
    for _ in range(2):  # a panel refreshed twice
        assert _counts(dataset) == (3, 0)
    assert mask_path not in hashed  # remembered since protect read it
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = mask[0, 0] ^ 1  # another class on one pixel: the same size on disk
    size = os.path.getsize(mask_path)
    Image.fromarray(mask).save(mask_path, compress_level=0)
    assert os.path.getsize(mask_path) == size  # only the time tells it changed
    assert _counts(dataset) == (0, 3)
    assert mask_path in hashed  # read again
    hashed.clear()
    os.utime(mask_path, ns=(5, 5))  # touched, then unreadable for a while
    monkeypatch.setattr(protect_module, "file_hash", lambda p: hashed.append(p))
    assert protect_module.remembered_file_hash(mask_path) is None and hashed == [mask_path]
    monkeypatch.setattr(protect_module, "file_hash", file_hash)  # readable again, unchanged
    assert protect_module.remembered_file_hash(mask_path) == file_hash(mask_path)


def test_a_failed_reprotection_keeps_what_the_earlier_copy_was_made_from(tmp_path, generators):  # noqa: F811
    """A re-protection that fails before writing leaves the earlier copy and its facts:
    intact copies stay current, changed ones stay stale."""
    dataset = _scene_dataset("failed-again", tmp_path, count=4)
    protect(dataset, "seg_path", generator=generators["random"])
    first = dataset.first()
    away = first.filepath + ".away"
    os.rename(first.filepath, away)  # its drive not mounted for a while
    summary = protect(dataset, "seg_path", generator=generators["random"], overwrite=True)
    assert (summary["protected"], summary["failed"]) == (3, 1)
    assert first.id == summary["failures"][0]["id"]
    os.rename(away, first.filepath)
    assert _counts(dataset) == (4, 0)  # its copy was made from this very photo
    assert export_protected(dataset, str(tmp_path / "all"), "images")["exported"] == 4

    mask_path = first.seg_path.mask_path  # one mask file for every scene
    mask = open(mask_path, "rb").read()
    Image.fromarray(_texture(64, 64, 9)).save(first.filepath)  # the photo is edited
    open(mask_path, "wb").write(b"not a mask")
    assert _counts(dataset) == (0, 4)  # the mask changed: stale
    for overwrite in (False, True):
        summary = protect(dataset, "seg_path", generator=generators["random"], overwrite=overwrite)
        assert summary["failed"] == 4 and "cannot read the mask" in summary["failures"][0]["reason"]
        assert _counts(dataset) == (0, 4)
    open(mask_path, "wb").write(mask)  # mended: only the edited photo's copy is stale
    assert _counts(dataset) == (3, 1)
    assert protect(dataset, "seg_path", generator=generators["random"])["protected"] == 1
    first.reload()
    assert np.abs(_noise(first)).max() <= EPS + TOL  # made from the edited photo


def test_an_interrupted_reprotection_leaves_its_copy_stale_till_protected(
    tmp_path,
    generators,  # noqa: F811
    monkeypatch,
):
    """Killed between writing a copy and recording it: the file on disk may be the new
    one, which no facts describe, so nothing vouches for it until a protection ends."""
    dataset = _scene_dataset("killed-again", tmp_path, count=4)
    protect(dataset, "seg_path", generator=generators["random"])

    def killed(self, writing):
        if writing:
            raise KeyboardInterrupt

    monkeypatch.setattr(protect_module._Run, "_record", killed)
    with pytest.raises(KeyboardInterrupt):
        protect(dataset, "seg_path", generator=generators["saturated"], overwrite=True)
    monkeypatch.undo()
    assert _counts(dataset) == (0, 4)
    assert dataset.load_run_results("unseg_protect").state == {
        "protected": 0,
        "stale": 4,
        "unprotected": 0,
    }
    with pytest.raises(ValueError, match="4 of 4 samples changed .* did not finish"):
        export_protected(dataset, str(tmp_path / "out"), "images")
    with pytest.raises(ValueError, match=r"training samples changed .* did not finish"):
        evaluate_protection(
            dataset, "seg_path", victims=["semantic"], output_dir=str(tmp_path / "audit")
        )
    assert visualize_noise(dataset)["not_protected"] == 4
    assert protect(dataset, "seg_path", generator=generators["random"])["protected"] == 4
    assert _counts(dataset) == (4, 0)


def test_a_sample_pointed_at_another_file_of_the_same_size_and_time_is_stale(
    tmp_path,
    generators,  # noqa: F811
):
    dataset = _scene_dataset("repointed", tmp_path, count=2)
    sample = dataset.first()
    Image.open(sample.filepath).save(sample.filepath, compress_level=0)  # size: pixel count
    protect(dataset, "dets", generator=generators["random"])
    other = str(tmp_path / "other.png")
    Image.fromarray(_texture(64, 64, 77)).save(other, compress_level=0)
    stat = os.stat(sample.filepath)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.path.getsize(other) == stat.st_size
    sample.filepath = other
    sample.save()
    assert _counts(dataset) == (1, 1)
    assert protect(dataset, "dets", generator=generators["random"])["protected"] == 1
    sample.reload()
    assert np.abs(_noise(sample)).max() <= EPS + TOL  # made from the other picture


def test_protecting_into_another_folder_moves_the_copies_there(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("new-folder", tmp_path, count=2)
    protect(dataset, "dets", generator=generators["random"])
    before = dataset.values("protected_filepath")
    new = str(tmp_path / "new")
    summary = protect(dataset, "dets", generator=generators["random"], output_dir=new)
    assert (summary["protected"], summary["replaced"], summary["output_dir"]) == (2, 2, new)
    assert {os.path.dirname(p) for p in dataset.values("protected_filepath")} == {new}
    assert not any(os.path.exists(p) for p in before)
    assert protect(dataset, "dets", generator=generators["random"], output_dir=new)["skipped"] == 2
    # no folder named: the copies stay wherever they are
    assert protect(dataset, "dets", generator=generators["random"])["skipped"] == 2


def test_a_source_keeps_the_copies_its_clone_shows(tmp_path, generators):  # noqa: F811
    """Restoring or re-protecting a dataset deletes no copy that another dataset (a
    clone) still shows; the restore says which and why."""
    dataset = _scene_dataset("shared-source", tmp_path, count=2)
    protect(dataset, "dets", generator=generators["random"], replace_filepath=True)
    copies = dataset.values("protected_filepath")
    clone = dataset.clone("shared-clone")  # its filepaths are the source's copies
    try:
        summary = restore(dataset, delete_protected=True)
        assert (summary["restored"], summary["deleted"], summary["failed"]) == (2, 0, 2)
        assert "also an image of the dataset 'shared-clone'" in summary["failures"][0]["reason"]
        assert all(os.path.isfile(p) for p in copies) and _counts(clone) == (2, 0)
        assert dataset.values("protected_filepath") == copies  # still its to delete later
        assert set(dataset.values("filepath")).isdisjoint(copies)  # its originals back
        protect(dataset, "dets", generator=generators["random"], replace_filepath=True)
        again = protect(dataset, "dets", generator=generators["saturated"], image_format="jpg")
        assert again["replaced"] == 2 and all(os.path.isfile(p) for p in copies)
        assert _counts(clone) == (2, 0)
        clone.delete()
        jpgs = dataset.values("protected_filepath")
        assert restore(dataset, delete_protected=True)["deleted"] == 2
        assert not any(os.path.isfile(p) for p in jpgs)
        assert all(os.path.isfile(p) for p in copies)  # left in the folder: no dataset has them
    finally:
        if not clone.deleted:
            clone.delete()


def test_reprotecting_removes_earlier_copies_and_their_heatmaps(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("leftovers", tmp_path, count=2)
    protect(dataset, "dets", generator=generators["random"])
    output_dir = os.path.dirname(dataset.first().protected_filepath)
    visualize_noise(dataset, amplified_field="noise_image")
    assert protection_summary(dataset)["num_visualized"] == 2
    visualize_noise(dataset.limit(1), heatmap_field="my_noise")  # a field of one's own
    assert protection_summary(dataset, heatmap_field="my_noise")["num_visualized"] == 1
    dataset.set_values("unseg_noise", [None, None])
    assert protection_summary(dataset)["num_visualized"] == 1  # found in any heatmap field
    visualize_noise(dataset)

    summary = protect(dataset, "dets", generator=generators["random"], image_format="jpg")
    assert summary["replaced"] == 2
    assert dataset.count("unseg_noise") == dataset.count("noise_image") == 0
    assert protection_summary(dataset)["num_visualized"] == 0
    paths = dataset.values("protected_filepath")
    assert sorted(os.listdir(output_dir)) == sorted(
        [os.path.basename(p) for p in paths] + ["noise"]
    )
    assert os.listdir(os.path.join(output_dir, "noise")) == []

    visualize_noise(dataset, amplified_field="noise_image")
    assert restore(dataset, delete_protected=True)["deleted"] == 2
    assert dataset.count("unseg_noise") == dataset.count("noise_image") == 0
    assert [files for _, _, files in os.walk(output_dir)] == [[], []]


def test_run_records_count_the_dataset_also_when_interrupted_or_overtaken(
    tmp_path,
    generators,  # noqa: F811
    monkeypatch,
):
    dataset = _scene_dataset("records", tmp_path, count=3)
    generate = protect_module._generate
    calls = []

    def overtaken(model, batch, device):  # another run protects what this one has not locked
        if not calls:
            calls.append(None)  # once: the other run calls this too
            calls[0] = protect(dataset, "dets", generator=generators["random"])
        return generate(model, batch, device)

    monkeypatch.setattr(protect_module, "_generate", overtaken)
    summary = protect(dataset, "dets", generator=generators["random"], batch_size=1)
    other = calls[0]  # it protected what this run had not locked yet, and no more
    assert other["protected"] >= 1 and other["protected"] + other["busy"] == 3
    assert (summary["protected"], summary["skipped"]) == (other["busy"], other["protected"])
    results = dataset.load_run_results("unseg_protect")
    assert (results.protected, results.skipped) == (other["busy"], other["protected"])
    assert results.state == {"protected": 3, "stale": 0, "unprotected": 0}

    def interrupted(model, batch, device):  # in the third batch: the first one is recorded
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(None)
        return generate(model, batch, device)

    calls.clear()
    monkeypatch.setattr(protect_module, "_generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        protect(dataset, "dets", generator=generators["random"], batch_size=1, overwrite=True)
    results = dataset.load_run_results("unseg_protect")
    # Recorded: the batches written before the third one's generation began (on the CPU
    # the writes of the second end before it; on a GPU they overlap it).
    recorded = 1 if protect_module._overlaps("cpu") else 2
    assert results.protected == recorded and "interrupted" in results.stopped
    assert results.state["protected"] == recorded  # the others' facts were cleared first


def test_replacing_the_filepath_keeps_its_metadata_current(tmp_path, generators):  # noqa: F811
    images = {f"scene{i}.jpg": Image.fromarray(_texture(64, 64, i)) for i in range(2)}
    dataset = _dataset("metadata", tmp_path, images)
    dataset.compute_metadata()

    def current():
        for sample in dataset.select_fields("metadata"):
            assert sample.metadata.size_bytes == os.path.getsize(sample.filepath)
            assert (
                sample.metadata.mime_type == fo.ImageMetadata.build_for(sample.filepath).mime_type
            )

    protect(dataset, "dets", generator=generators["random"], replace_filepath=True)
    assert dataset.distinct("metadata.mime_type") == ["image/png"]
    current()
    restore(dataset)
    assert dataset.distinct("metadata.mime_type") == ["image/jpeg"]
    current()


def test_views_that_leave_the_path_fields_out_still_act_on_the_originals(tmp_path, generators):  # noqa: F811
    """Protection replaced ``filepath``; a view without ``original_filepath`` (the App's
    hidden fields, ``exclude_fields``) must not take the protected copy for the original."""
    dataset = _scene_dataset("hidden-originals", tmp_path, count=2)
    originals = dataset.values("filepath")
    protect(dataset, "dets", generator=generators["random"], replace_filepath=True)
    hidden = dataset.exclude_fields(["original_filepath", "protected_filepath", "unseg"])
    assert visualize_noise(hidden)["visualized"] == 2
    whole = protection_summary(dataset)
    assert whole["num_replaced"] == whole["num_visualized"] == 2 and whole["psnr"]
    for view in (hidden, dataset.select_fields("unseg_noise")):  # `unseg status --view`
        shown = protection_summary(view)
        assert {k: shown[k] for k in whole if k != "audit"} == {
            k: whole[k] for k in whole if k != "audit"
        }
    for sample in dataset:  # the noise itself, not the copy minus itself
        heatmap = np.asarray(Image.open(sample.unseg_noise.map_path))
        assert heatmap.max() > 0
    summary = protect(hidden, "dets", generator=generators["random"], overwrite=True)
    assert summary["protected"] == 2 and _counts(dataset) == (2, 0)
    for sample in dataset:  # made from the original, not noise on the earlier copy
        assert sample.original_filepath in originals
        assert np.abs(_noise(sample)).max() <= EPS + TOL
    assert restore(hidden, delete_protected=True)["restored"] == 2
    assert dataset.values("filepath") == originals and all(map(os.path.isfile, originals))


def test_export_refuses_label_types_the_format_cannot_take_before_any_work(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("yolo-segmentation", tmp_path, count=1)
    protect(dataset, "dets", generator=generators["random"])
    with pytest.raises(ValueError, match=r"the yolo format cannot export 'seg_db' \(Segmentation"):
        export_protected(dataset, str(tmp_path / "out"), "yolo", "seg_db")
    assert not (tmp_path / "out").exists()
    assert export_protected(dataset, str(tmp_path / "out"), "yolo", "dets")["exported"] == 1


def test_a_clone_never_replaces_or_deletes_the_copies_of_its_source(tmp_path, generators):  # noqa: F811
    """A clone keeps its samples' ids: the files' owner markers name the dataset too."""
    dataset = _scene_dataset("clone-source", tmp_path, count=2)
    protect(dataset, "dets", generator=generators["random"], replace_filepath=True)
    copies = {s.protected_filepath: open(s.protected_filepath, "rb").read() for s in dataset}
    source_folder = os.path.dirname(next(iter(copies)))
    clone = dataset.clone("clone-copy")
    try:
        assert clone.values("id") == dataset.values("id")
        assert _counts(clone) == (2, 0)  # it may read its source's copies
        assert export_protected(clone, str(tmp_path / "out"), "images")["exported"] == 2
        into_source = protect(
            clone,
            "dets",
            generator=generators["saturated"],
            output_dir=source_folder,
            overwrite=True,
        )
        assert into_source["failed"] == 2
        assert "written for this sample of another dataset" in into_source["failures"][0]["reason"]
        assert (
            protect(clone, "dets", generator=generators["saturated"], overwrite=True)["protected"]
            == 2
        )
        assert {os.path.dirname(p) for p in clone.values("protected_filepath")} != {source_folder}
        assert restore(clone, delete_protected=True)["deleted"] == 2
        assert {p: open(p, "rb").read() for p in copies} == copies
        assert _counts(dataset) == (2, 0) and set(dataset.values("filepath")) == set(copies)
        assert restore(dataset, delete_protected=True)["deleted"] == 2
        assert not any(os.path.exists(p) for p in copies)
    finally:
        clone.delete()


@pytest.mark.parametrize("clone_first, legacy", [(False, False), (True, False), (False, True)])
def test_a_clone_and_its_source_visualize_the_same_copies_side_by_side(
    tmp_path,
    generators,  # noqa: F811
    clone_first,
    legacy,
):
    dataset = _scene_dataset(f"noise-source-{clone_first}-{legacy}", tmp_path, count=2)
    protect(dataset, "dets", generator=generators["random"])
    for sample in dataset if legacy else []:  # marked before markers named the dataset
        pixels = np.asarray(Image.open(sample.protected_filepath))
        with open(sample.protected_filepath, "wb") as f:
            f.write(encode_marked(pixels, sample.id))
    clone = dataset.clone(f"noise-clone-{clone_first}-{legacy}")  # it reads its source's copies
    try:
        first, second = (clone, dataset) if clone_first else (dataset, clone)
        for samples in (first, second):
            summary = visualize_noise(samples, amplified_field="noise_image")
            assert (summary["visualized"], summary["failed"]) == (2, 0), summary["failures"]
            assert protection_summary(samples)["num_visualized"] == 2
        maps = {
            name: d.values("unseg_noise.map_path") for name, d in (("s", dataset), ("c", clone))
        }
        assert not set(maps["s"]) & set(maps["c"]) and all(
            map(os.path.isfile, maps["s"] + maps["c"])
        )
        if legacy:  # a copy marked with its sample alone is any dataset's to delete
            return
        assert restore(clone, delete_protected=True)["deleted"] == 0  # the copies are not its
        assert not any(map(os.path.exists, maps["c"])) and all(map(os.path.isfile, maps["s"]))
        assert _counts(dataset) == (2, 0) and visualize_noise(dataset)["visualized"] == 2
    finally:
        clone.delete()


def test_a_deleted_copy_counts_as_none_everywhere(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("deleted-copy", tmp_path, count=2)
    protect(dataset, "dets", generator=generators["random"])
    os.remove(dataset.first().protected_filepath)
    assert _counts(dataset) == (1, 0)
    assert "**1 of 2**" in headline(protection_summary(dataset))
    assert visualize_noise(dataset)["not_protected"] == 1
    again = protect(dataset, "dets", generator=generators["random"])
    assert (again["protected"], again["skipped"]) == (1, 1)
    assert _counts(dataset) == (2, 0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"heatmap_field": "unseg"}, "protection record"),
        ({"heatmap_field": "unseg_noise", "amplified_field": "filepath"}, "own data"),
        ({"heatmap_field": "dets"}, "holds Detections values, not heatmaps"),
        ({"heatmap_field": "unseg_noise", "amplified_field": "notes"}, "not one of the App's"),
        ({"heatmap_field": "noise", "amplified_field": "noise"}, "need two fields"),
        ({"heatmap_field": "gradcam"}, "'gradcam' holds heatmaps of its own.*model-cam.png"),
        ({"heatmap_field": "unseg_noise", "amplified_field": "thumb"}, "images of its own"),
    ],
)
def test_visualize_refuses_fields_that_hold_something_else(tmp_path, generators, fields, message):  # noqa: F811
    dataset = _scene_dataset("visualize-fields", tmp_path, count=1)
    protect(dataset, "dets", generator=generators["random"])
    dataset.set_values("notes", ["keep me"])
    dataset.set_values("gradcam", [fo.Heatmap(map_path=str(tmp_path / "model-cam.png"))])
    dataset.set_values("thumb", [str(tmp_path / "thumbnail.jpg")])
    dataset.app_config.media_fields.append("thumb")
    dataset.save()
    before = dataset.first().to_dict()
    with pytest.raises(ValueError, match=message):
        visualize_noise(dataset, **fields)
    assert dataset.first().to_dict() == before
    assert not os.path.exists(os.path.join(os.path.dirname(before["protected_filepath"]), "noise"))


def test_a_view_that_filters_labels_picks_samples_and_every_object_is_protected(
    tmp_path,
    generators,  # noqa: F811
):
    """The App's sidebar filters hide objects from the view; the copy is still made from
    every object of the stored label (what its label hash records), so a later run on the
    whole dataset rightly finds it current."""
    from fiftyone import ViewField as F
    from test_protect import OTHER, RECT

    dataset = _scene_dataset("filtered-labels", tmp_path, count=2)
    things = dataset.filter_labels("dets", F("label") == "thing")
    assert protect(things, "dets", generator=generators["saturated"])["protected"] == 2
    assert dataset.values("unseg.num_segments") == [2, 2]
    for sample in dataset:
        noise = np.abs(_noise(sample))
        for y0, y1, x0, x1 in (RECT, OTHER):  # both objects at the object budget
            assert noise[y0:y1, x0:x1].max() >= EPS - TOL
    again = protect(dataset, "dets", generator=generators["saturated"])
    assert (again["protected"], again["skipped"]) == (0, 2) and _counts(dataset) == (2, 0)
