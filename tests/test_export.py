"""Exporting the protected copy: original names, labels, no marker, all or nothing."""

import json
import os
import shutil
import tempfile

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import yaml
from fiftyone.operators.executor import ExecutionContext
from PIL import Image
from test_protect import _box, _dataset, _hashes, _scene_dataset, _texture, generators  # noqa: F401

from fiftyone_unseg import cli, export_protected, protect, restore, visualize_noise
from fiftyone_unseg.export import export_names, exportable_fields
from fiftyone_unseg.io import marker, read_mask, unmarked
from fiftyone_unseg.protect import paths_in

# Originals in nested folders: a name twice in different folders, a case-only clash.
ORIGINALS = ("a/scene.jpg", "b/scene.jpg", "a/Scene.png", "a/c/deep.png")
EXPORTED = ("a/scene.png", "b/scene.png", "a/Scene-2.png", "a/c/deep.png")


def _nested_dataset(name: str, folder, generator: str, **protect_args) -> fo.Dataset:
    images = {rel: Image.fromarray(_texture(64, 64, i)) for i, rel in enumerate(ORIGINALS)}
    dataset = _dataset(name, folder / "originals", images)
    protect(dataset, "dets", generator=generator, **protect_args)
    return dataset


def _files(folder) -> set:
    return {
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    }


def test_export_names_keep_folders_and_stems_and_never_clash():
    originals = ["/d/x/a.jpg", "/d/y/a.jpg", "/d/x/A.png", "/d/x/a.tif", "/d/x/z/b.png"]
    assert export_names(originals, [".png"] * 5) == [
        "x/a.png",
        "y/a.png",
        "x/A-2.png",
        "x/a-3.png",
        "x/z/b.png",
    ]
    assert export_names(["/d/only.JPG"], [".jpg"]) == ["only.jpg"]
    # one stem, two formats (a preview in jpg, the rest in png): label files would clash
    assert export_names(["/d/a.jpg", "/d/a.png"], [".jpg", ".png"]) == ["a.jpg", "a-2.png"]


def test_originals_with_the_longest_names_are_exported(tmp_path, generators):  # noqa: F811
    name = "n" * 251 + ".png"  # 255 bytes: the most a file name may have
    dataset = _dataset("long-names", tmp_path / "images", {name: Image.fromarray(_texture(64, 64))})
    protect(dataset, "dets", generator=generators["random"])
    assert export_protected(dataset, str(tmp_path / "out"), "images")["exported"] == 1
    assert _files(tmp_path / "out") == {name}


@pytest.mark.parametrize("replace_filepath", [False, True])
def test_export_writes_protected_pixels_under_original_names_with_labels(
    tmp_path,
    generators,  # noqa: F811
    replace_filepath,
):
    dataset = _nested_dataset(
        f"export-{replace_filepath}",
        tmp_path,
        generators["random"],
        replace_filepath=replace_filepath,
    )
    originals = [os.path.join(tmp_path, "originals", rel) for rel in ORIGINALS]
    before = _hashes(originals)
    datasets = set(fo.list_datasets())
    protected = dict(zip(dataset.values("id"), dataset.values("protected_filepath")))

    coco = tmp_path / "coco"
    reported = []
    summary = export_protected(
        dataset, str(coco), "coco", "dets", progress=lambda *done: reported.append(done)
    )
    assert summary["exported"] == 4 and summary["skipped"] == 0
    # each image counted when staged, when its masks are read, as the exporter writes it
    done = [done for done, _ in reported]
    assert done == sorted(done) and set(done) == set(range(1, 13)) and done[-2:] == [11, 12]
    assert {total for _, total in reported} == {12}
    assert _files(coco) == {"labels.json"} | {f"data/{name}" for name in EXPORTED}
    for sample_id, name in zip(dataset.values("id"), EXPORTED):
        data = (coco / "data" / name).read_bytes()
        assert marker(str(coco / "data" / name)) is None
        with open(protected[sample_id], "rb") as f:
            assert data == unmarked(f.read())  # the protected pixels' bytes, marker gone
    scene = np.asarray(Image.open(coco / "data" / "a/c/deep.png"))
    assert np.abs(scene.astype(int) - _texture(64, 64, 3)).max() > 0  # it is protected
    labels = (coco / "labels.json").read_text()
    assert "unseg" not in labels and str(tmp_path / "originals") not in labels

    imported = fo.Dataset.from_dir(
        dataset_dir=str(coco),
        dataset_type=fo.types.COCODetectionDataset,
        label_types="segmentations",
        label_field="dets",
    )
    assert sorted(os.path.relpath(p, coco / "data") for p in imported.values("filepath")) == sorted(
        EXPORTED
    )
    for sample in imported:
        assert sorted(d.label for d in sample.dets.detections) == ["other", "thing"]
    imported.delete()

    masks = tmp_path / "masks"
    export_protected(dataset, str(masks), "segmentation-dir", "seg_path")
    semantic = (_box((16, 40, 20, 52), 64, 64) + 2 * _box((44, 58, 4, 16), 64, 64)).astype(int)
    for name in EXPORTED:
        assert np.array_equal(read_mask(str(masks / "labels" / name)), semantic)

    # FiftyOne would paint Detections as 255 for every class and drop unmasked ones.
    instance_masks = tmp_path / "instance-masks"
    for field in ("dets", "boxes", "polys"):
        with pytest.raises(ValueError, match=f"class masks.*not '{field}'.*coco-panoptic"):
            export_protected(dataset, str(instance_masks), "segmentation-dir", field)
    assert not instance_masks.exists()
    assert exportable_fields(dataset, "segmentation-dir") == ["seg_db", "seg_path"]

    full = tmp_path / "fiftyone"
    dataset.set_values("style", ["sketch"] * len(dataset))  # a field that is not a label
    export_protected(dataset, str(full), "fiftyone", ["dets", "seg_db", "seg_path", "style"])
    assert str(tmp_path / "originals") not in (full / "samples.json").read_text()
    assert json.loads((full / "metadata.json").read_text())["app_config"]["media_fields"] == [
        "filepath"
    ]
    stored = json.loads((full / "samples.json").read_text())["samples"]
    assert {key for s in stored for key in s if not key.startswith("_")} == {
        "filepath",
        "tags",
        "metadata",
        "created_at",
        "last_modified_at",
        "dets",
        "seg_db",
        "seg_path",
        "style",
    }  # no unseg facts, protected or original paths

    yolo = tmp_path / "yolo"
    export_protected(dataset, str(yolo), "yolo", "polys")
    assert yaml.safe_load((yolo / "dataset.yaml").read_text())["path"] == str(yolo)
    assert len(list((yolo / "labels" / "val").rglob("*.txt"))) == 4

    assert _hashes(originals) == before
    assert set(fo.list_datasets()) == datasets  # the working copy is gone
    assert sorted(os.listdir(tmp_path)) == [
        "coco",
        "fiftyone",
        "masks",
        "originals",
        "yolo",
    ]


def test_palette_masks_are_exported_as_their_class_indices(tmp_path, generators):  # noqa: F811
    dataset = _nested_dataset("export-palette", tmp_path, generators["random"])
    paths = set(dataset.values("seg_path.mask_path"))
    for path in paths:  # VOC's layout: class indices in a palette PNG, shown as colours
        indices = read_mask(path).astype(np.uint8)
        palette = Image.fromarray(indices)
        palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * 759)
        palette.save(path)
        assert Image.open(path).mode == "P" and np.array_equal(read_mask(path), indices)
    masks = tmp_path / "masks"
    export_protected(dataset, str(masks), "segmentation-dir", "seg_path")
    semantic = (_box((16, 40, 20, 52), 64, 64) + 2 * _box((44, 58, 4, 16), 64, 64)).astype(int)
    for name in EXPORTED:  # FiftyOne's own reader would have written the colours
        assert np.array_equal(read_mask(str(masks / "labels" / name)), semantic)


def test_an_overwrite_never_replaces_a_folder_of_mask_files(tmp_path, generators):  # noqa: F811
    """Of these samples (in any label field, exported or not) or of another dataset."""
    dataset = _scene_dataset("export-masks", tmp_path / "scenes", count=2)
    protect(dataset, "dets", generator=generators["random"])
    other = _scene_dataset("export-masks-other", tmp_path / "other", count=1)
    for samples, folder in ((dataset, tmp_path / "masks"), (other, tmp_path / "other-masks")):
        folder.mkdir()
        moved = str(folder / "semantic.png")
        shutil.copy(samples.first().seg_path.mask_path, moved)
        samples.set_values("seg_path.mask_path", [moved] * len(samples))
    for folder, match in (
        ("masks", "a file of these samples"),
        ("other-masks", "export-masks-other"),
    ):
        with pytest.raises(ValueError, match=match):
            export_protected(dataset, str(tmp_path / folder), "images", overwrite=True)
        assert os.path.isfile(tmp_path / folder / "semantic.png")


def test_export_never_publishes_the_noise_the_record_or_local_notes(tmp_path, generators):  # noqa: F811
    dataset = _nested_dataset("export-secrets", tmp_path, generators["random"])
    visualize_noise(dataset, amplified_field="unseg_amplified")
    out = tmp_path / "out"
    for field in ("unseg_noise", "unseg_amplified", "unseg", "protected_filepath"):
        with pytest.raises(ValueError, match=f"'{field}' hold the protection record or the noise"):
            export_protected(dataset, str(out), "fiftyone", ["dets", field])
        assert not out.exists()
    dataset.info = {
        "dataset_dir": str(tmp_path / "originals"),
        "notes": "scraped from our shop",
        "description": "street scenes",
        "categories": [{"id": 1, "name": "thing"}],
    }
    dataset.save()
    export_protected(dataset, str(out), "fiftyone", ["dets"])
    info = json.loads((out / "metadata.json").read_text())["info"]
    assert info == {"description": "street scenes", "categories": [{"id": 1, "name": "thing"}]}


def test_export_refuses_unprotected_or_foreign_files_by_name(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("export-refusals", tmp_path / "scenes", count=2)
    protect(dataset, "dets", generator=generators["random"])
    extra = tmp_path / "scenes" / "late.png"
    Image.fromarray(_texture(64, 64, 9)).save(extra)
    late = fo.Sample(filepath=str(extra))
    dataset.add_sample(late)

    with pytest.raises(
        ValueError, match=rf"1 of 3 samples have no protected copy, e\.g\. {late.id} \({extra}\)"
    ):
        export_protected(dataset, str(tmp_path / "out"), "images")
    assert not (tmp_path / "out").exists()
    summary = export_protected(dataset, str(tmp_path / "out"), "images", skip_unprotected=True)
    assert (summary["exported"], summary["skipped"]) == (2, 1)
    assert _files(tmp_path / "out") == {"scene0.png", "scene1.png"}

    first, second = dataset.head(2)
    os.remove(first.protected_filepath)
    Image.fromarray(_texture(64, 64, 5)).save(second.protected_filepath)  # not written by protect
    with pytest.raises(ValueError, match=rf"2 of 3 samples have no protected copy.*{first.id}"):
        export_protected(dataset, str(tmp_path / "again"), "images")  # a deleted copy is none
    with pytest.raises(ValueError) as error:
        export_protected(dataset, str(tmp_path / "again"), "images", skip_unprotected=True)
    assert first.id not in str(error.value)
    assert f"{second.id}: {second.protected_filepath} was not written for this sample" in str(
        error.value
    )
    refusals = {
        ("coco", ("dets", "polys")): "the coco format exports one label field",
        ("coco", None): r"exports one label field \(given: none\)",
        ("images", "dets"): "the images format exports images only",
    }
    for (data_format, fields), message in refusals.items():
        with pytest.raises(ValueError, match=message):
            export_protected(dataset, str(tmp_path / "again"), data_format, fields)
    with pytest.raises(ValueError, match="no label field 'nope'"):
        export_protected(dataset, str(tmp_path / "again"), "coco", "nope")
    with pytest.raises(ValueError, match="unknown export format 'voc'; choose one of coco"):
        export_protected(dataset, str(tmp_path / "again"), "voc", "dets")
    assert not (tmp_path / "again").exists()


def test_export_replaces_a_folder_only_when_asked_and_only_when_complete(
    tmp_path,
    generators,  # noqa: F811
    monkeypatch,
):
    dataset = _scene_dataset("export-replace", tmp_path / "scenes", count=2)
    protect(dataset, "dets", generator=generators["random"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("an earlier export")
    with pytest.raises(ValueError, match="is not empty: choose another folder or overwrite it"):
        export_protected(dataset, str(out), "coco", "dets")

    def fail_halfway(self, export_dir, **kwargs):
        os.makedirs(export_dir)
        open(os.path.join(export_dir, "labels.json"), "w").close()
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(fo.Dataset, "export", fail_halfway)
        with pytest.raises(OSError, match="disk full"):
            export_protected(dataset, str(out), "coco", "dets", overwrite=True)
    assert _files(out) == {"earlier.txt"}  # the old export, whole
    assert sorted(os.listdir(tmp_path)) == ["out", "scenes"]  # no work folder left

    export_protected(dataset, str(out), "coco", "dets", overwrite=True)
    assert _files(out) == {"labels.json", "data/scene0.png", "data/scene1.png"}

    # A folder holding the samples' files is never replaced: overwriting would delete them.
    output_dir = os.path.dirname(dataset.first().protected_filepath)
    for folder in (tmp_path / "scenes", tmp_path, output_dir):
        with pytest.raises(ValueError, match="a file of these samples: export elsewhere"):
            export_protected(dataset, str(folder), "coco", "dets", overwrite=True)
    assert all(
        os.path.isfile(p) for p in dataset.values("filepath") + dataset.values("protected_filepath")
    )
    other = _scene_dataset("export-replace-other", tmp_path / "other", count=1)
    with pytest.raises(ValueError, match="a file of dataset 'export-replace-other'"):
        export_protected(dataset, str(tmp_path / "other"), "coco", "dets", overwrite=True)
    assert os.path.isfile(other.first().filepath)
    # Nor when the samples name their folder through a symlink and the export its real path.
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    linked = _scene_dataset("export-replace-linked", tmp_path / "linked", count=1)
    protect(linked, "dets", generator=generators["random"])
    for samples, match in (
        (linked, "a file of these samples"),
        (dataset, "'export-replace-linked'"),
    ):
        with pytest.raises(ValueError, match=match):
            export_protected(samples, str(tmp_path / "real"), "coco", "dets", overwrite=True)
    assert os.path.isfile(os.path.realpath(linked.first().filepath))
    image = tmp_path / "real" / "own.png"  # a sample's image that is a symlink into it
    image.write_bytes(open(linked.first().filepath, "rb").read())
    (tmp_path / "alias.png").symlink_to(image)
    assert paths_in(str(tmp_path / "real"), [str(tmp_path / "alias.png")]) == [
        str(tmp_path / "alias.png")
    ]

    # An export folder named through a symlink: the link stays, its folder is replaced.
    (tmp_path / "published").symlink_to(out)
    summary = export_protected(dataset, str(tmp_path / "published"), "images", overwrite=True)
    assert summary["export_dir"] == str(out) and os.path.islink(tmp_path / "published")
    assert _files(tmp_path / "published") == {"scene0.png", "scene1.png"}

    # Where only the (empty) export folder can be written, the images are staged in it.
    def parent_read_only(*args, dir=None, **kwargs):
        if dir == str(tmp_path):
            raise PermissionError(13, "Permission denied", dir)
        return mkdtemp(*args, dir=dir, **kwargs)

    mkdtemp = tempfile.mkdtemp
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(tempfile, "mkdtemp", parent_read_only)
    export_protected(dataset, str(empty), "images")
    assert _files(empty) == {"scene0.png", "scene1.png"}  # no work folder left inside
    with pytest.raises(PermissionError):
        export_protected(dataset, str(tmp_path / "new"), "images")


def test_cli_and_operator_export_the_protected_copy(tmp_path, generators, unseg, capsys):  # noqa: F811
    dataset = _scene_dataset("export-cli", tmp_path / "scenes", count=2)
    dataset.persistent = True
    protect(dataset.limit(1), "dets", generator=generators["random"])
    args = ("--dataset", "export-cli", "--label-field", "dets", "--format", "coco")
    refused = unseg("export", str(tmp_path / "cli"), *args, check=False)
    assert refused.returncode == 2
    assert "1 of 2 samples have no protected copy" in refused.stderr
    (tmp_path / "a-file").write_text("")  # a folder cannot be made in it: one line, no trace
    assert cli.run(cli.build_parser(), ["export", str(tmp_path / "a-file" / "out"), *args]) == 1
    said = capsys.readouterr().err
    assert said.startswith("unseg export: error: FileExistsError: [Errno")
    assert said.count("\n") == 1
    assert str(tmp_path / "a-file") in said
    done = unseg("export", str(tmp_path / "cli"), *args, "--skip-unprotected").stdout
    assert "Exported 1 protected images (1 unprotected left out) as coco" in done
    assert _files(tmp_path / "cli") == {"labels.json", "data/scene0.png"}

    params = {
        "format": "segmentation-dir",
        "label_field": "seg_db",
        "export_dir": str(tmp_path / "app"),
    }
    ctx = {"dataset": "export-cli", "view": dataset.limit(1), "params": params}
    result = foo.execute_operator("@unseg/unseg/export_protected", ctx=ctx)
    assert result.error is None, result.error
    assert (result.result["exported"], result.result["skipped"]) == (1, 0)
    assert _files(tmp_path / "app") == {"data/scene0.png", "labels/scene0.png"}


def test_operator_form_asks_for_protection_first_and_offers_label_fields(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("export-form", tmp_path / "scenes", count=1)
    operator = foo.get_operator("@unseg/unseg/export_protected")

    def form(**params):
        ctx = ExecutionContext({"dataset_name": dataset.name, "params": params})
        return operator.resolve_input(ctx).to_json()["type"]["properties"]

    assert form()["not_protected"]["invalid"]
    protect(dataset, "dets", generator=generators["random"])
    visualize_noise(dataset)  # its heatmaps would show the noise: not offered
    fields = form()
    assert {"format", "label_field", "export_dir", "skip_unprotected", "overwrite"} <= set(fields)
    offered = [choice["value"] for choice in fields["label_field"]["view"]["choices"]]
    assert offered == ["boxes", "dets", "polys"]  # what COCO takes: no Segmentation
    assert fields["label_field"]["default"] == "dets"  # the field protection used
    masks = form(format="segmentation-dir")["label_field"]
    offered = [choice["value"] for choice in masks["view"]["choices"]]
    assert offered == ["seg_db", "seg_path"]  # class maps only
    protect(dataset, "seg_db", generator=generators["random"], overwrite=True)
    assert form()["label_field"]["default"] == "boxes"  # seg_db cannot be COCO's
    assert form(format="segmentation-dir")["label_field"]["default"] == "seg_db"
    images_only = _scene_dataset("export-form-bare", tmp_path / "bare", count=1)
    images_only.delete_sample_fields(["dets", "boxes", "polys"])
    protect(images_only, "seg_db", generator=generators["random"])
    ctx = ExecutionContext({"dataset_name": images_only.name, "params": {"format": "yolo"}})
    bare = operator.resolve_input(ctx).to_json()["type"]["properties"]
    assert bare["no_label_field"]["invalid"] and "label_field" not in bare
    assert fields["label_field"]["view"]["multiple"] is False
    assert form(format="fiftyone")["label_fields"]["view"]["multiple"] is True
    restore(dataset, delete_protected=True)  # the field stays, with no protected sample
    assert dataset.has_field("protected_filepath") and form()["not_protected"]["invalid"]
    assert not {"label_field", "label_fields"} & set(form(format="images"))
