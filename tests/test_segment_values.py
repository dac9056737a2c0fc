"""Background and ignore (void) values of Segmentation fields, and the point-prompted SAM.

The fixture is a CamVid-like set made here: 0 is a class (sky), 255 is void.
"""

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from fiftyone.operators.executor import ExecutionContext
from PIL import Image

from fiftyone_unseg import evaluate_protection, protect
from fiftyone_unseg.audit.targets import IGNORE, resolve_targets
from fiftyone_unseg.audit.victims.sam import _innermost, _random_points
from fiftyone_unseg.audit.victims.semantic import miou
from fiftyone_unseg.io import read_rgb
from fiftyone_unseg.labels import SegmentValues, resolve_prompt, segment_classes

SIZE = 96
SKY, ROAD, CAR, VOID = 0, 1, 2, 255


def _road_scene(rng) -> tuple[np.ndarray, np.ndarray]:
    """An image and its class mask: sky on top, road below, a car, a void band."""
    mask = np.full((SIZE, SIZE), ROAD, np.uint8)
    mask[: SIZE // 3] = SKY
    x = int(rng.integers(10, SIZE - 40))
    mask[SIZE // 2 : SIZE // 2 + 20, x : x + 30] = CAR
    mask[:, -6:] = VOID
    colours = {SKY: (120, 170, 230), ROAD: (90, 90, 90), CAR: (200, 30, 30), VOID: (0, 0, 0)}
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    for value, colour in colours.items():
        image[mask == value] = colour
    image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture
def road(tmp_path):
    rng = np.random.default_rng(0)
    dataset = fo.Dataset()
    for i in range(6):
        image, mask = _road_scene(rng)
        image_path, mask_path = tmp_path / f"{i}.png", tmp_path / f"{i}_mask.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
        sample = fo.Sample(filepath=str(image_path), tags=["train" if i < 4 else "test"])
        sample["ground_truth"] = fo.Segmentation(mask_path=str(mask_path))
        dataset.add_sample(sample)
    dataset.mask_targets = {"ground_truth": {SKY: "sky", ROAD: "road", CAR: "car"}}
    dataset.save()
    yield dataset
    dataset.delete()


def test_zero_named_as_a_class_is_an_object_and_unnamed_255_is_void(road):
    spec = resolve_prompt(road, "ground_truth")
    assert spec.segment_values == SegmentValues(background=None, ignore=frozenset({VOID}))
    assert spec.name == "all;background=none;ignore=255"
    label = road.first().ground_truth
    segments, names = segment_classes(label, SIZE, SIZE, spec)
    assert sorted(names) == ["car", "road", "sky"]
    mask = label.get_mask()
    assert (segments[mask == VOID] == 0).all() and (segments[mask == SKY] > 0).all()
    assert resolve_prompt(road, "ground_truth", ["sky"]).values == frozenset({SKY})


def test_the_audit_neither_learns_nor_scores_values_the_mask_targets_do_not_name(road):
    """Its score leaves out what the mask targets do not name; its class maps must too,
    not teach those pixels as background."""
    road.mask_targets = {"ground_truth": {0: "background", ROAD: "road", CAR: "car"}}
    targets = resolve_targets(road, "ground_truth")
    assert targets.segment_values.background == 0 and VOID not in targets.segment_values.ignore
    label = road.first().ground_truth
    mask = label.get_mask()
    class_map = targets.semantic({"ground_truth": label}, *mask.shape)
    assert (mask == VOID).any() and (class_map[mask == VOID] == IGNORE).all()
    assert (class_map[mask == SKY] == 0).all()  # 0: the background
    assert set(np.unique(class_map[(mask != VOID) & (mask != SKY)])) <= {1, 2}


def test_explicit_values_override_the_mask_targets_and_messages_say_why(road):
    spec = resolve_prompt(road, "ground_truth", background=SKY, ignore=())
    assert spec.segment_values == SegmentValues(background=SKY)
    assert spec.name == "all"  # FiftyOne's convention is recorded as before
    with pytest.raises(ValueError, match="'sky' is the background value"):
        resolve_prompt(road, "ground_truth", ["sky"], background=SKY)
    with pytest.raises(ValueError, match="both background and ignored"):
        resolve_prompt(road, "ground_truth", background=VOID, ignore=[VOID])
    road.mask_targets = {"ground_truth": {0: "background", 1: "road", 2: "car", 255: "void"}}
    named = resolve_prompt(road, "ground_truth").segment_values
    assert named == SegmentValues(background=0, ignore=frozenset({VOID}))


def test_sky_gets_the_object_budget_and_void_the_background_budget(road):
    eps, eps_bg = 8 / 255, 2 / 255
    summary = protect(road, "ground_truth", eps=eps, eps_bg=eps_bg)
    assert summary["protected"] == len(road)
    sample = road.first()
    assert sample.unseg.prompt == "all;background=none;ignore=255"
    assert sample.unseg.num_segments == 3
    noise = np.abs(read_rgb(sample.protected_filepath) - read_rgb(sample.filepath)).max(-1)
    mask = sample.ground_truth.get_mask()
    tolerance = 0.6 / 255  # 8-bit rounding
    assert noise[mask == VOID].max() <= eps_bg + tolerance
    assert noise[mask == SKY].max() > eps_bg + tolerance  # an object: the larger budget
    assert noise[mask == SKY].max() <= eps + tolerance


def test_values_the_mask_targets_do_not_name_are_warned_about(road, caplog):
    """A pets-like set: 0 is background, so an unnamed 255 border is an object class
    unless it is declared void."""
    assert protect(road, "ground_truth")["unnamed_values"] == []  # 255 is void here
    road.mask_targets = {"ground_truth": {0: "background", ROAD: "road", CAR: "car"}}
    road.save()
    summary = protect(road, "ground_truth", overwrite=True)
    assert summary["unnamed_values"] == ["255"]
    assert road.first().unseg.num_segments == 3  # road, car, and the 255 band taken for one
    assert "values 255 of 'ground_truth' are not in its mask targets" in caplog.text
    assert "--ignore 255" in caplog.text
    caplog.clear()
    summary = protect(road, "ground_truth", ignore=[VOID], overwrite=True)
    assert summary["unnamed_values"] == [] and "mask targets" not in caplog.text
    assert road.first().unseg.num_segments == 2


def test_the_app_forms_take_background_and_ignore_values(road):
    road.mask_targets = {"ground_truth": {0: "background", ROAD: "road", CAR: "car"}}
    road.save()
    for name in ("protect_samples", "evaluate_protection"):
        operator = foo.get_operator(f"@unseg/unseg/{name}")
        ctx = ExecutionContext({"dataset_name": road.name, "params": {}})
        fields = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert fields["background"]["view"]["description"].startswith("auto: 0")
        assert fields["ignore"]["view"]["description"].startswith("auto: none")
        bad = ExecutionContext({"dataset_name": road.name, "params": {"ignore": "void"}})
        fields = operator.resolve_input(bad).to_json()["type"]["properties"]
        assert "give whole pixel values" in fields["segment_values"]["view"]["label"]
    operator = foo.get_operator("@unseg/unseg/protect_samples")
    for typed, offered in (({}, ["car", "road"]), ({"background": "none"}, ["background", "car", "road"]),
                           ({"ignore": str(CAR)}, ["road"])):  # fmt: skip
        params = {"label_field": "ground_truth", "prompt": "classes", **typed}
        ctx = ExecutionContext({"dataset_name": road.name, "params": params})
        fields = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert sorted(c["value"] for c in fields["classes"]["view"]["choices"]) == offered, typed

    params = {"label_field": "ground_truth", "ignore": "255"}
    result = foo.execute_operator(
        "@unseg/unseg/protect_samples", ctx={"dataset": road.name, "params": params}
    )
    assert result.result["unnamed_values"] == []
    road.reload()
    assert road.first().unseg.prompt == "all;background=0;ignore=255"
    params = {"label_field": "ground_truth", "overwrite": True}  # auto: 255 is a class here
    result = foo.execute_operator(
        "@unseg/unseg/protect_samples", ctx={"dataset": road.name, "params": params}
    )
    assert result.result["unnamed_values"] == ["255"] and result.result["replaced"] == len(road)


def test_void_is_neither_learnt_nor_scored_and_chance_is_the_majority_class(road):
    targets = resolve_targets(road, "ground_truth")
    assert targets.semantic_classes == ("sky", "road", "car")
    class_map = targets.semantic({"ground_truth": road.first().ground_truth}, SIZE, SIZE)
    mask = road.first().ground_truth.get_mask()
    assert (class_map[mask == VOID] == IGNORE).all()
    assert (class_map[mask == SKY] == 1).all() and (class_map[mask == CAR] == 3).all()
    instances, classes = targets.instances({"ground_truth": road.first().ground_truth}, SIZE, SIZE)
    assert sorted(classes.tolist()) == [0, 1, 2]  # void is no instance
    # majority class 1 (60 of 100 pixels): predicting it everywhere
    value, trivial = miou(np.array([[20, 5, 0], [0, 60, 0], [5, 0, 10]]))
    assert trivial == pytest.approx((60 / 100) / 3)
    report = evaluate_protection(
        road, "ground_truth", victims=["semantic"], protected_field=None, epochs=1,
        image_size=64, run_key="void_audit",
    )  # fmt: skip
    (result,) = report.results
    assert 0 < result.chance < 1 and result.scores["clean"] >= 0
    prediction = road.match_tags("test").first()["void_audit_semantic_clean"].get_mask()
    assert set(np.unique(prediction)) <= {SKY, ROAD, CAR}  # no 'background' answer


def test_the_cli_audit_takes_background_and_ignore_values(road, unseg):
    """As protect does: a pets-like set whose mask targets leave an unnamed 255 a class
    unless ``--ignore 255`` says it is void."""
    road.mask_targets = {"ground_truth": {0: "background", ROAD: "road", CAR: "car"}}
    road.persistent = True
    road.save()
    audit = ("evaluate", "--dataset", road.name, "--label-field", "ground_truth", "--victims",
             "semantic", "--protected-field", "none", "--epochs", "1", "--image-size", "64")  # fmt: skip
    unseg(*audit, "--run-key", "auto_values")
    unseg(*audit, "--ignore", "255", "--background", "none", "--run-key", "given_values")
    road.reload()
    auto, given = (road.get_run_info(key).config for key in ("auto_values", "given_values"))
    assert (auto.background, auto.ignore) == (0, [])
    assert (given.background, given.ignore) == (None, [VOID])


def test_clicks_fall_inside_their_objects():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 10:19, 0:2] = True
    masks[2, 7, 29] = True
    points = _random_points(masks, torch.Generator().manual_seed(0))
    for mask, (x, y) in zip(masks, points.tolist()):
        assert mask[int(y), int(x)]
    ring = np.zeros((21, 21), bool)
    ring[2:19, 2:19] = True
    ring[8:13, 8:13] = False  # a hole: the centre is not inside
    x, y = _innermost(ring)
    assert ring[y, x] and not (8 <= x < 13 and 8 <= y < 13)


def test_point_prompted_sam_scores_against_a_median_box_around_the_click(sample_dataset):
    dataset = sample_dataset.clone()  # the audit records a run and predictions on it
    report = evaluate_protection(
        dataset, "instances", victims=["sam_point"], protected_field=None, epochs=1,
        image_size=64, split_tags=None, run_key="points",
    )  # fmt: skip
    (result,) = report.results
    assert result.metric == "point-prompted mask IoU"
    view = dataset.exists("points_sam_point_clean")
    ious = view.values("points_sam_point_clean.detections.iou", unwind=True)
    trivial = view.values("points_sam_point_clean.detections.trivial_iou", unwind=True)
    assert len(ious) == len(trivial) > 0
    assert all(0 <= v <= 1 for v in ious + trivial)
    assert result.chance == pytest.approx(np.mean(trivial)) and result.chance > 0.05
    assert result.scores["clean"] == pytest.approx(np.mean(ious))
