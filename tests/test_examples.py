"""The scripts in ``examples/`` run end to end with tiny settings, so they cannot rot."""

import importlib.util
import json
import os

import fiftyone as fo
import numpy as np
import pytest
import torch
from conftest import REPO
from test_modeling import MICRO
from test_panoptic import _panoptic_set

import fiftyone_unseg as fu
from fiftyone_unseg import checkpoint, sample_data
from fiftyone_unseg.audit import DEFAULT_RUN_KEY, load_report
from fiftyone_unseg.io import marker, read_mask, read_rgb
from fiftyone_unseg.modeling import build_noise_generator

EPS = 8 / 255
TOL = 0.5 / 255 + 1e-6  # one rounding step


def _example(name: str):
    """The module ``examples/<name>.py``."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "examples", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_protected(dataset) -> None:
    """Every sample has a protected file that differs from its original within the budget."""
    originals, protected = dataset.values(["filepath", "protected_filepath"])
    assert all(protected) and len(set(protected)) == len(dataset)
    for original, path in zip(originals, protected):
        change = np.abs(read_rgb(path) - read_rgb(original)).max()
        assert 0 < change <= EPS + TOL, (path, change)


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    """A randomly initialised MICRO generator checkpoint."""
    path = tmp_path_factory.mktemp("generator") / "micro"
    torch.manual_seed(0)
    checkpoint.save_generator(build_noise_generator(MICRO), MICRO, path)
    return str(path)


@pytest.fixture(scope="module")
def scenes() -> fo.Dataset:
    return sample_data.create_sample_dataset(
        "examples-scenes", num=8, seed=0, size=128, overwrite=True, persistent=False
    )


@pytest.mark.parametrize(
    "data_format, options",
    [
        ("coco", ["--polylines"]),
        ("coco", []),
        ("segmentation-dir", []),
    ],
)
def test_protect_coco(tmp_path, generator, scenes, capsys, data_format, options):
    fo_type, label_field = {
        "coco": (fo.types.COCODetectionDataset, "instances"),
        "segmentation-dir": (fo.types.ImageSegmentationDirectory, "ground_truth"),
    }[data_format]
    source, exported = tmp_path / "source", tmp_path / "exported"
    scenes.export(export_dir=str(source), dataset_type=fo_type, label_field=label_field)
    labels = source / ("labels.json" if data_format == "coco" else "labels")
    if data_format == "coco":  # image ids that numbering the images would not give
        original = json.loads(labels.read_text())
        for item in original["images"] + original["annotations"]:
            item["image_id" if "image_id" in item else "id"] += 100
        labels.write_text(json.dumps(original))
    argv = [str(source / "data"), str(labels), "--format", data_format, "--generator", generator]
    argv += ["--name", f"examples-{data_format}", "--export", str(exported), *options]

    assert _example("protect_coco").main(argv) == 0
    dataset = fo.load_dataset(f"examples-{data_format}")
    assert len(dataset) == 8
    _assert_protected(dataset)
    output = capsys.readouterr().out
    assert os.path.dirname(dataset.first().protected_filepath) in output
    assert f"Mean PSNR {dataset.mean('unseg.psnr'):.1f} dB" in output

    # The export holds the protected images under the originals' names, with the same labels.
    stems = [os.path.splitext(os.path.basename(p))[0] for p in dataset.values("filepath")]
    protected = {f"{s}.png": p for s, p in zip(stems, dataset.values("protected_filepath"))}
    assert sorted(os.listdir(exported / "data")) == sorted(protected)
    for name, path in protected.items():
        assert np.array_equal(read_rgb(str(exported / "data" / name)), read_rgb(path))
        assert marker(path) is not None and marker(str(exported / "data" / name)) is None
    if data_format == "coco":
        original, copy = (json.loads(p.read_text()) for p in (labels, exported / "labels.json"))
        assert len(copy["annotations"]) == len(original["annotations"]) > 8
        assert {i["file_name"] for i in copy["images"]} == set(protected)
        ids = [{i["file_name"][:-4]: i["id"] for i in d["images"]} for d in (original, copy)]
        assert ids[0] == ids[1] and min(ids[1].values()) > 100  # the images keep their ids
    else:
        for sample, stem in zip(dataset, stems):
            copy = read_mask(str(exported / "labels" / f"{stem}.png"))
            assert np.array_equal(copy, sample.ground_truth.get_mask())


def test_protect_coco_panoptic_protects_things_and_exports_every_segment(
    tmp_path, generator, capsys
):
    images, annotations = _panoptic_set(tmp_path)
    exported = tmp_path / "exported"
    argv = [images, annotations, "--format", "coco-panoptic", "--generator", generator]
    assert _example("protect_coco").main([*argv, "--export", str(exported)]) == 0
    dataset = fo.load_dataset("unseg-coco-example")
    _assert_protected(dataset)
    assert dataset.distinct("unseg.label_field") == ["things"]
    assert dataset.count_values("unseg.had_segments") == {True: 1, False: 1}
    assert dataset.sum("unseg.num_segments") == 3
    assert "(1 without segments" in capsys.readouterr().out
    panoptic = json.loads((exported / "panoptic.json").read_text())  # in its own format
    assert sorted(i["file_name"] for i in panoptic["images"]) == ["000000.png", "000001.png"]
    assert len(panoptic["annotations"][0]["segments_info"]) == 5  # stuff too

    assert _example("protect_coco").main([*argv, "--all-segments"]) == 0
    dataset = fo.load_dataset("unseg-coco-example")
    assert dataset.distinct("unseg.label_field") == ["ground_truth"]
    assert dataset.sum("unseg.num_segments") == 5


def test_protect_coco_exports_what_it_protected_when_an_image_fails(
    tmp_path, generator, scenes, capsys
):
    source, exported = tmp_path / "source", tmp_path / "exported"
    scenes.export(
        export_dir=str(source),
        dataset_type=fo.types.ImageSegmentationDirectory,
        label_field="ground_truth",
    )
    broken = sorted((source / "data").iterdir())[0]
    broken.write_bytes(b"not an image")
    argv = [str(source / "data"), str(source / "labels"), "--format", "segmentation-dir"]
    argv += ["--generator", generator, "--name", "examples-broken", "--export", str(exported)]

    assert _example("protect_coco").main(argv) == 1  # a failure, and still an export
    output = capsys.readouterr().out
    assert f"failed: {broken}" in output and "without the 1 that failed" in output
    names = sorted(os.listdir(exported / "data"))
    assert len(names) == 7 and broken.stem + ".png" not in names


def test_protect_coco_says_when_no_default_generator(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", tmp_path / "no-default")
    assert _example("protect_coco").main(["images", "labels.json"]) == 2
    error = capsys.readouterr().err
    assert "No default generator is installed" in error and "--generator" in error


def test_train_generator_on_folders(tmp_path, capsys):
    folder = tmp_path / "my_set"
    sample_data.write_scenes(str(folder), 8, seed=1, size=96)
    pairs = f"{folder / 'images'}:{folder / 'masks'}"
    out = tmp_path / "run"
    argv = ["--data", pairs, "--out", str(out), "--max-steps", "4", "--phase-steps", "2"]
    argv += ["--pretrain-steps", "4", "--batch-size", "2"]
    argv += ["--device", "cpu", "--protect", pairs, "--name", "examples-folders"]

    assert _example("train_generator_on_folders").main(argv) == 0
    model = fu.load_generator(out / "generator")
    assert model.config.name == "tiny"
    dataset = fo.load_dataset("examples-folders")
    assert len(dataset) == 8 and dataset.count("objects.detections") > 8
    assert set(dataset.values("unseg.generator_id")) == {model.generator_id}
    _assert_protected(dataset)
    assert f"unseg protect --dataset NAME --label-field FIELD --generator {out}" in (
        capsys.readouterr().out
    )


def test_audit_protected_dataset(generator, capsys):
    dataset = sample_data.create_sample_dataset(
        "examples-audit", num=16, seed=3, size=64, styles=sample_data.STYLES, overwrite=True
    )
    fu.protect(dataset, "instances", generator=generator)
    argv = ["--dataset", dataset.name, "--label-field", "instances", "--victims", "semantic"]
    argv += ["--epochs", "1", "--image-size", "64", "--countermeasure", "jpeg:75"]

    assert _example("audit_protected_dataset").main(argv) == 0
    report = load_report(dataset, DEFAULT_RUN_KEY)
    (result,) = report.results
    assert set(result.scores) == {"clean", "protected", "random", "pattern"}
    assert all(0 <= s <= 1 for s in result.scores.values())
    assert report.countermeasure is not None
    output = capsys.readouterr().out
    assert report.table() in output
    assert report.chart_path in output and os.path.isfile(report.chart_path)
