"""COCO-panoptic sets as FiftyOne label fields, protected as things or as all segments."""

import json
import os
import re

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext
from PIL import Image
from test_protect import EPS, EPS_BG, TOL, _noise, _texture, generators  # noqa: F401

from fiftyone_unseg import export_protected, protect
from fiftyone_unseg.io import read_rgb, unmarked
from fiftyone_unseg.labels import resolve_prompt, segment_map
from fiftyone_unseg.panoptic import id_colours, load_coco_panoptic, segment_ids

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 7, "name": "sky", "isthing": 0},
    {"id": 9, "name": "road", "isthing": 0},
]
# segment id -> (category, iscrowd, rows, cols) of one 48 x 64 image
SEGMENTS = {
    1001: (7, 0, slice(0, 24), slice(0, 64)),
    1002: (9, 0, slice(24, 48), slice(0, 64)),
    70000: (1, 0, slice(10, 40), slice(8, 20)),  # the id needs all three colour channels
    70001: (1, 0, slice(12, 30), slice(30, 42)),
    70002: (1, 1, slice(30, 44), slice(48, 62)),  # a crowd
}


def _panoptic_set(folder, ids=None) -> tuple[str, str]:
    """Two images, the first with SEGMENTS (void at row 47), the second unannotated."""
    images, masks = folder / "images", folder / "annotations" / "panoptic_val"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_texture(48, 64, i)).save(images / f"{i:06d}.jpg", quality=95)
    segment_ids = np.zeros((48, 64), np.uint32)
    for segment_id, (_, _, rows, cols) in SEGMENTS.items():
        segment_ids[rows, cols] = segment_id
    segment_ids[47] = 0
    if ids is not None:
        segment_ids = ids
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(masks / "000000.png")
    info = [{"id": i, "category_id": c, "iscrowd": crowd} for i, (c, crowd, *_) in SEGMENTS.items()]
    info.append({"id": 5, "category_id": 9, "iscrowd": 0})  # listed, but no pixels
    data = {
        "images": [
            {"id": i, "file_name": f"{i:06d}.jpg", "width": 64, "height": 48} for i in range(2)
        ],
        "categories": CATEGORIES,
        "annotations": [{"image_id": 0, "file_name": "000000.png", "segments_info": info}],
    }
    path = folder / "annotations" / "panoptic_val.json"
    path.write_text(json.dumps(data))
    return str(images), str(path)


def test_segments_become_detections_with_their_exact_masks(tmp_path):
    images, annotations = _panoptic_set(tmp_path)
    data = json.loads(open(annotations).read())  # ids as strings, as some converters write
    data["annotations"][0]["image_id"] = "0"
    for segment in data["annotations"][0]["segments_info"]:
        segment["id"], segment["category_id"] = str(segment["id"]), str(segment["category_id"])
        segment["iscrowd"] = str(segment["iscrowd"])  # "0" is no crowd
    open(annotations, "w").write(json.dumps(data))
    load_coco_panoptic("panoptic-load", images, annotations)
    dataset = load_coco_panoptic("panoptic-load", images, annotations, overwrite=True)
    assert dataset.name == "panoptic-load" and fo.list_datasets(glob_patt="panoptic-load*") == [
        "panoptic-load"
    ]
    first, second = dataset
    assert second.panoptic is None and second.metadata.width == 64
    segments = first.panoptic.detections
    assert [d.segment_id for d in segments] == list(SEGMENTS)  # id 5 has no pixels
    assert [d.label for d in segments] == ["sky", "road", "person", "person", "person"]
    assert [(d.isthing, d.iscrowd) for d in segments] == [
        (False, False),
        (False, False),
        (True, False),
        (True, False),
        (True, True),
    ]
    things = first.things.detections
    assert [d.segment_id for d in things] == [70000, 70001, 70002]
    assert not {d.id for d in things} & {d.id for d in segments}  # copies, own label ids
    spec = resolve_prompt(dataset, "panoptic", "instance")
    painted = segment_map(first.panoptic, 48, 64, spec)
    expected = np.zeros((48, 64), int)
    for k, (_, _, rows, cols) in enumerate(SEGMENTS.values(), 1):
        expected[rows, cols] = k
    expected[47] = 0
    assert np.array_equal(painted, expected)  # every pixel where the PNG has it
    assert dataset.classes["things"] == ["person", "road", "sky"]


def test_an_annotation_of_no_listed_image_is_refused_by_name(tmp_path):
    images, annotations = _panoptic_set(tmp_path)
    data = json.loads(open(annotations).read())
    data["annotations"][0]["image_id"] = 7
    open(annotations, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match="000000.png has image_id 7, which no image has"):
        load_coco_panoptic("panoptic-orphan", images, annotations)
    assert not fo.dataset_exists("panoptic-orphan")


def test_things_get_the_object_budget_and_stuff_the_background_one(tmp_path, generators):  # noqa: F811
    images, annotations = _panoptic_set(tmp_path)
    dataset = load_coco_panoptic("panoptic-protect", images, annotations, overwrite=True)
    protect(dataset, "things", generator=generators["saturated"])
    sample = dataset.first()
    noise = np.abs(_noise(sample)).max(axis=2)
    things = np.zeros((48, 64), bool)
    for _, _, rows, cols in (s for s in SEGMENTS.values() if s[0] == 1):
        things[rows, cols] = True
    things[47] = False
    assert noise[things].max() >= EPS - TOL and noise[~things].max() <= EPS_BG + TOL
    protect(dataset, "panoptic", generator=generators["saturated"], prompt="instance")
    sample.reload()
    assert sample.unseg.num_segments == 5
    noise = np.abs(_noise(sample)).max(axis=2)
    assert (noise[:47] > EPS_BG + TOL).mean() > 0.9 and noise[47].max() <= EPS_BG + TOL  # void row
    copy = sample.protected_filepath
    load_coco_panoptic("panoptic-protect", images, annotations, overwrite=True)  # loaded again
    assert not os.path.exists(copy)  # the replaced dataset's copies are not left behind


def test_bad_panoptic_masks_are_named(tmp_path):
    ids = np.full((48, 64), 1001, np.uint32)
    ids[0, 0] = 424242
    images, annotations = _panoptic_set(tmp_path, ids=ids)
    with pytest.raises(ValueError, match=r"000000\.jpg .*segment ids \[424242\] are not in its"):
        load_coco_panoptic("panoptic-bad", images, annotations, overwrite=True)
    png = os.path.join(os.path.dirname(annotations), "panoptic_val", "000000.png")
    Image.new("RGB", (32, 48)).save(png)
    with pytest.raises(ValueError, match=r"000000\.jpg .*mask is 32x48, the image 64x48"):
        load_coco_panoptic("panoptic-bad", images, annotations, overwrite=True)
    os.remove(png)
    with pytest.raises(ValueError, match=r"000000\.jpg .*panoptic mask file not found"):
        load_coco_panoptic("panoptic-bad", images, annotations, overwrite=True)
    assert not fo.dataset_exists("panoptic-bad")  # nothing half-loaded stays
    assert not fo.dataset_exists("panoptic-bad.unseg-loading")
    earlier = fo.Dataset("panoptic-bad", persistent=True)
    earlier.add_sample(fo.Sample(filepath=images + "/kept.jpg", kept=True))
    with pytest.raises(ValueError, match=r"000000\.jpg .*panoptic mask file not found"):
        load_coco_panoptic("panoptic-bad", images, annotations, overwrite=True)
    assert fo.load_dataset("panoptic-bad").values("kept") == [True]  # replaced only when whole
    fo.delete_dataset("panoptic-bad")

    data = json.loads(open(annotations).read())
    del data["categories"][1]["isthing"]
    open(annotations, "w").write(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"categories \['sky'\] do not say whether they are things"
    ):
        load_coco_panoptic("panoptic-bad", images, annotations, overwrite=True)
    fo.Dataset("panoptic-taken")
    with pytest.raises(ValueError, match="dataset 'panoptic-taken' exists"):
        load_coco_panoptic("panoptic-taken", images, annotations, things_field=None)


def test_the_cli_imports_a_panoptic_set_and_names_a_bad_mask(tmp_path, unseg):
    images, annotations = _panoptic_set(tmp_path)
    proc = unseg("import-panoptic", "--name", "panoptic-cli", "--images", images,
                 "--annotations", annotations, "--things-field", "people")  # fmt: skip
    assert "Created dataset 'panoptic-cli': 2 samples; segments: 5 in 'panoptic', 3 in " \
        "'people'" in proc.stdout  # fmt: skip
    assert "unseg protect --dataset panoptic-cli --label-field people" in proc.stdout
    dataset = fo.load_dataset("panoptic-cli")
    assert dataset.count("people.detections") == 3 and "things" not in dataset.get_field_schema()
    assert dataset.info["panoptic_field"] == "panoptic"
    os.remove(os.path.join(os.path.dirname(annotations), "panoptic_val", "000000.png"))
    proc = unseg("import-panoptic", "--name", "panoptic-cli", "--images", images,
                 "--annotations", annotations, "--overwrite", check=False)  # fmt: skip
    assert proc.returncode == 2
    assert re.search(r"error: .*000000\.jpg .*panoptic mask file not found", proc.stderr)
    assert fo.load_dataset("panoptic-cli").count("people.detections") == 3  # kept whole
    fo.delete_dataset("panoptic-cli")


def _painted(sample, field="panoptic") -> np.ndarray:
    return segment_map(sample[field], 48, 64, resolve_prompt(sample._dataset, field, "instance"))


def test_a_protected_panoptic_set_is_exported_in_its_own_format_and_reads_back(
    tmp_path,
    generators,  # noqa: F811
):
    images, annotations = _panoptic_set(tmp_path)
    dataset = load_coco_panoptic("panoptic-export", images, annotations, overwrite=True)
    protect(dataset, "things", generator=generators["random"])
    out = tmp_path / "published"
    export_protected(dataset, str(out), "coco-panoptic", label_field="panoptic")

    data = json.loads((out / "panoptic.json").read_text())
    assert data["categories"] == CATEGORIES  # ids and isthing as loaded
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [
        (0, "000000.png"),
        (1, "000001.png"),
    ]
    (annotation,) = data["annotations"]  # the second image has none, as in the source
    assert (annotation["image_id"], annotation["file_name"]) == (0, "000000.png")
    segments = annotation["segments_info"]
    assert [s["id"] for s in segments] == list(SEGMENTS)  # the source's segment ids
    assert [(s["category_id"], s["iscrowd"]) for s in segments] == [
        (c, crowd) for c, crowd, *_ in SEGMENTS.values()
    ]
    png = np.asarray(Image.open(out / "panoptic" / "000000.png").convert("RGB"))
    ids = segment_ids(png)
    for segment in segments:
        where = np.argwhere(ids == segment["id"])
        assert segment["area"] == len(where)
        (y0, x0), (y1, x1) = where.min(0), where.max(0) + 1
        assert segment["bbox"] == [x0, y0, x1 - x0, y1 - y0]
    first = dataset.first()
    published = (out / "data" / "000000.png").read_bytes()
    assert published == unmarked(open(first.protected_filepath, "rb").read())

    operator = foo.get_operator("@unseg/unseg/export_protected")
    for data_format, field in (("coco", "things"), ("coco-panoptic", "panoptic")):
        ctx = ExecutionContext({"dataset_name": dataset.name, "params": {"format": data_format}})
        form = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert form["label_field"]["default"] == field  # protected field / all segments

    back = load_coco_panoptic("panoptic-back", str(out / "data"), str(out / "panoptic.json"))
    assert back.first().coco_id == 0 and back.info["panoptic_categories"] == CATEGORIES
    assert np.array_equal(_painted(back.first()), _painted(first))  # every segment's pixels
    assert np.array_equal(read_rgb(back.first().filepath), read_rgb(first.protected_filepath))


def test_any_masked_detections_export_as_panoptic_segments(tmp_path, generators):  # noqa: F811
    corner, quarter = np.ones((24, 32), bool), [0.5, 0.5, 0.5, 0.5]  # 32 x 24 pixel boxes

    def detections(*items) -> fo.Detections:
        return fo.Detections(detections=[fo.Detection(**item) for item in items])

    # a.jpg and a.png: two images whose names differ only by extension
    samples = {
        "a.jpg": detections(
            {"label": "cat", "bounding_box": [0, 0, 0.5, 0.5], "mask": corner, "iscrowd": True},
            {"label": "dog", "bounding_box": [0, 0, 0.5, 0.5], "mask": corner},  # covers it
            {"label": "sky", "bounding_box": quarter, "mask": corner, "isthing": False},
        ),
        "a.png": detections(
            {"label": "dog", "bounding_box": quarter, "mask": corner, "segment_id": 7},
            {"label": "dog", "bounding_box": [0, 0, 0.5, 0.5], "mask": corner, "segment_id": 7},
            {"label": "dog", "bounding_box": [0.5, 0, 0.5, 0.5], "mask": corner},
        ),
    }
    dataset = fo.Dataset("panoptic-generic")
    for k, (name, dets) in enumerate(samples.items()):
        Image.fromarray(_texture(48, 64, k)).save(tmp_path / name)
        sample = fo.Sample(filepath=str(tmp_path / name), dets=dets, coco_id=5)  # not distinct
        dataset.add_sample(sample)
    protect(dataset, "dets", generator=generators["random"])
    export_protected(dataset, str(tmp_path / "out"), "coco-panoptic", label_field="dets")

    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    assert data["categories"] == [
        {"id": 1, "name": "cat", "isthing": 1},
        {"id": 2, "name": "dog", "isthing": 1},
        {"id": 3, "name": "sky", "isthing": 0},
    ]
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [(1, "a.png"), (2, "a-2.png")]
    first, second = data["annotations"]
    assert (first["file_name"], second["file_name"]) == ("a.png", "a-2.png")  # PNGs apart
    assert [(s["id"], s["category_id"], s["area"]) for s in first["segments_info"]] == [
        (2, 2, 768),
        (3, 3, 768),
    ]
    ids = segment_ids(np.asarray(Image.open(tmp_path / "out" / "panoptic" / "a.png")))
    assert (ids[:24, :32] == 2).all() and (ids[24:, 32:] == 3).all()
    assert (ids[:24, 32:] == 0).all()  # void where no label is
    assert [s["id"] for s in second["segments_info"]] == [7, 1, 2]  # 7 kept once, then free ids

    dataset.add_sample(
        fo.Sample(
            filepath=str(tmp_path / "a.jpg"),
            dets=detections({"label": "box", "bounding_box": quarter}),
        )
    )
    protect(dataset, "dets", generator=generators["random"])
    staged = []
    with pytest.raises(ValueError, match=r"a\.jpg: detections \['box'\] have no instance mask"):
        export_protected(
            dataset[2:], str(tmp_path / "boxes"), "coco-panoptic", label_field="dets",
            progress=lambda *done: staged.append(done),
        )  # fmt: skip
    assert not (tmp_path / "boxes").exists() and staged == []  # refused before any work


def test_coco_import_categories_and_ids_are_kept(tmp_path, generators):  # noqa: F811
    """A FiftyOne COCO import (categories in info, ids in coco_id) keeps its ids in
    both COCO formats."""
    Image.fromarray(_texture(48, 64)).save(tmp_path / "x.png")
    det = fo.Detection(label="cat", bounding_box=[0, 0, 0.5, 0.5], mask=np.ones((24, 32), bool))
    dataset = fo.Dataset("panoptic-coco-ids")
    dataset.add_sample(
        fo.Sample(
            filepath=str(tmp_path / "x.png"), dets=fo.Detections(detections=[det]), coco_id=42
        )
    )
    dataset.info["categories"] = [{"id": 17, "name": "cat", "supercategory": "animal"}]
    dataset.save()
    protect(dataset, "dets", generator=generators["random"])
    export_protected(dataset, str(tmp_path / "out"), "coco-panoptic", label_field="dets")
    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    assert data["categories"] == [{"id": 17, "name": "cat", "isthing": 1}]
    assert data["images"][0]["id"] == data["annotations"][0]["image_id"] == 42
    assert data["annotations"][0]["segments_info"][0]["category_id"] == 17
    # the coco format too (FiftyOne's exporter alone would number the classes 1, 2, ...),
    # a class the categories do not list after their largest id
    dog = fo.Detection(label="dog", bounding_box=[0.5, 0.5, 0.5, 0.5], mask=np.ones((24, 32)))
    sample = dataset.first()
    sample.dets.detections.append(dog)
    sample.save()
    protect(dataset, "dets", generator=generators["random"])
    export_protected(dataset, str(tmp_path / "coco"), "coco", label_field="dets")
    data = json.loads((tmp_path / "coco" / "labels.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(17, "cat"), (18, "dog")]
    assert [a["category_id"] for a in data["annotations"]] == [17, 18]
    assert data["images"][0]["id"] == 42
    # keypoints too: a class the categories do not list would be dropped by the exporter
    sample["kp"] = fo.Keypoints(keypoints=[fo.Keypoint(label="nose", points=[(0.2, 0.3)])])
    sample.save()
    export_protected(dataset, str(tmp_path / "kp"), "coco", label_field="kp")
    data = json.loads((tmp_path / "kp" / "labels.json").read_text())
    assert [a["category_id"] for a in data["annotations"]] == [18]
    assert data["categories"][-1]["name"] == "nose"


def test_segment_id_colours_round_trip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 70000, 2**24 - 1]])
    assert np.array_equal(segment_ids(id_colours(ids)), ids)


def test_segments_come_back_pixel_for_pixel_at_photo_sizes(tmp_path):
    """Boxes in relative coordinates lose no edge pixel when painted back: at 640 x 427,
    ``x / W * W`` lands just below a whole number for some edges, where truncating them
    (FiftyOne's ``to_segmentation``) moved the segment by a pixel."""
    from fiftyone_unseg.labels import PromptSpec, segment_classes
    from fiftyone_unseg.panoptic import read_segments

    rng = np.random.default_rng(0)
    categories = {c["id"]: c for c in CATEGORIES}
    for height, width in [(427, 640), (333, 500), (480, 359)]:
        ids = np.zeros((height, width), np.uint32)
        for number in range(1, 9):
            x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
            x1, y1 = rng.integers(x0 + 5, width + 1), rng.integers(y0 + 5, height + 1)
            ids[y0:y1, x0:x1] = number * 1000
        Image.fromarray(id_colours(ids)).save(tmp_path / "mask.png")
        present = [int(i) for i in np.unique(ids) if i]
        annotation = {
            "file_name": "mask.png",
            "segments_info": [{"id": i, "category_id": 1} for i in present],
        }
        image = {"file_name": "image.jpg", "width": width, "height": height}
        detections = read_segments(annotation, str(tmp_path), categories, image)
        spec = PromptSpec("segments", fo.Detections, "all")
        painted, _ = segment_classes(fo.Detections(detections=detections), height, width, spec)
        numbers = np.array([0] + [d.segment_id for d in detections], np.uint32)
        assert np.array_equal(numbers[painted], ids), (height, width)


def test_a_coco_mask_lands_where_fiftyones_importer_cut_it():
    """FiftyOne's COCO importer cuts a mask at the rounded edges of a float box
    (x = 12.7 starts at pixel 13): the mask is pasted back there."""
    from fiftyone_unseg.labels import PromptSpec, segment_map

    height, width = 40, 60
    mask = np.zeros((10, 20), bool)
    mask[:, :5] = True  # the object's left quarter
    box = [12.7 / width, 5.2 / height, 20.0 / width, 10.0 / height]
    detection = fo.Detection(label="person", bounding_box=box, mask=mask)
    spec = PromptSpec("dets", fo.Detections, "all")
    painted = segment_map(fo.Detections(detections=[detection]), height, width, spec)
    rows, cols = np.nonzero(painted)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 13, 17)
    detection.mask = mask * np.float32(0.7)  # a model's probabilities: above 0.5 is object
    painted = segment_map(fo.Detections(detections=[detection]), height, width, spec)
    assert np.count_nonzero(painted) == mask.sum()
