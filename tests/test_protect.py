"""Protecting datasets: budgets, files, labels, runs, shards, CLI and operators (CPU, small)."""

import hashlib
import importlib
import os
import re
import subprocess
import sys

import cv2
import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from fiftyone.operators.executor import ExecutionContext, ExecutionError
from PIL import Image
from skimage.metrics import structural_similarity
from test_modeling import MICRO

from fiftyone_unseg import cli, geometry, protect, restore
from fiftyone_unseg.checkpoint import save_generator
from fiftyone_unseg.class_keys import ClassKeys
from fiftyone_unseg.io import read_mask, read_rgb
from fiftyone_unseg.labels import resolve_prompt, segment_map
from fiftyone_unseg.modeling import build_noise_generator
from fiftyone_unseg.protect import (
    Frame,
    default_output_dir,
    protected_name,
    protected_pixels,
    shard_of,
)

protect_module = importlib.import_module("fiftyone_unseg.protect")
EPS, EPS_BG = 8 / 255, 2 / 255
TOL = 0.5 / 255 + 1e-6  # one rounding step
OVER = 1e-5  # float error: rounding to 8 bits never leaves a budget, whatever the original
RECT = (16, 40, 20, 52)  # y0, y1, x0, x1 of the object in the scenes below
OTHER = (44, 58, 4, 16)  # a second object, class "other"


@pytest.fixture(scope="module")
def generators(tmp_path_factory) -> dict:
    """Checkpoints of a random MICRO generator and of one whose tanh saturates (+-1)."""
    root = tmp_path_factory.mktemp("generators")
    torch.manual_seed(0)
    model = build_noise_generator(MICRO)
    save_generator(model, MICRO, root / "random")
    with torch.no_grad():
        for mlp in model.mask_decoder.noise_mlps:
            mlp.layers[-1].weight.mul_(1e4)
            mlp.layers[-1].bias.mul_(1e4)
    save_generator(model, MICRO, root / "saturated")
    return {name: str(root / name) for name in ("random", "saturated")}


def _box(rect, height, width) -> np.ndarray:
    y0, y1, x0, x1 = rect
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Mid-range noise, so the budget is never cut by clamping at 0 or 1."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, (height, width, 3), dtype=np.uint8)


def _labels(folder, height: int = 64, width: int = 64) -> dict:
    """The two objects of a scene in every supported label form."""
    semantic = (_box(RECT, height, width) + 2 * _box(OTHER, height, width)).astype(np.uint8)
    mask_path = os.path.join(folder, f"semantic-{height}x{width}.png")
    Image.fromarray(semantic).save(mask_path)

    def rel(rect):
        y0, y1, x0, x1 = rect
        return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]

    def corners(rect):  # filled polygons include their boundary pixels
        y0, y1, x0, x1 = rect[0], rect[1] - 1, rect[2], rect[3] - 1
        return [[(x0 / width, y0 / height), (x1 / width, y0 / height),
                 (x1 / width, y1 / height), (x0 / width, y1 / height)]]  # fmt: skip

    def detection(rect, label, masked=True):
        y0, y1, x0, x1 = rect
        mask = np.ones((y1 - y0, x1 - x0), bool) if masked else None
        return fo.Detection(label=label, bounding_box=rel(rect), mask=mask)

    return {
        "seg_db": fo.Segmentation(mask=semantic),
        "seg_path": fo.Segmentation(mask_path=mask_path),
        "dets": fo.Detections(detections=[detection(RECT, "thing"), detection(OTHER, "other")]),
        "boxes": fo.Detections(
            detections=[detection(RECT, "thing", False), detection(OTHER, "other", False)]
        ),
        "polys": fo.Polylines(
            polylines=[
                fo.Polyline(label="thing", points=corners(RECT), closed=True, filled=False),
                fo.Polyline(label="other", points=corners(OTHER), closed=True, filled=False),
            ]
        ),
    }


def _dataset(name: str, folder, images: dict, labels: bool = True) -> fo.Dataset:
    """A dataset of ``images`` (file name -> PIL image), each with the scene's labels."""
    os.makedirs(folder, exist_ok=True)
    dataset = fo.Dataset(name, overwrite=True)
    dataset.mask_targets = {
        "seg_db": {1: "thing", 2: "other"},
        "seg_path": {1: "thing", 2: "other"},
    }
    samples = []
    for file_name, image in images.items():
        path = os.path.join(folder, file_name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path)
        fields = _labels(str(folder)) if labels else {}
        samples.append(fo.Sample(filepath=path, **fields))
    dataset.add_samples(samples, progress=False)
    return dataset


def _scene_dataset(name: str, folder, count: int = 3) -> fo.Dataset:
    images = {f"scene{i}.png": Image.fromarray(_texture(64, 64, i)) for i in range(count)}
    return _dataset(name, folder, images)


def _noise(sample) -> np.ndarray:
    """HxWx3 protected - original, in [0, 1] units."""
    original = sample.original_filepath if sample.has_field("original_filepath") else None
    return read_rgb(sample.protected_filepath) - read_rgb(original or sample.filepath)


def _hashes(paths) -> dict:
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def test_frame_maps_to_model_and_back():
    frame = Frame(48, 80, 64)
    assert frame.region() == (38, 64)
    ramp = torch.linspace(0, 1, 80).expand(1, 48, 80)
    model_input = frame.to_model(ramp)
    assert model_input.shape == (1, 64, 64) and not model_input[:, 38:].any()
    back = frame.from_model(model_input)
    assert back.shape == (1, 48, 80)
    assert (back - ramp)[:, 2:-2, 2:-2].abs().max() < 0.02
    prompt = frame.prompt(np.ones((48, 80), bool))
    assert prompt.shape == (1, 16, 16)
    assert prompt[0, :10].all() and not prompt[0, 10:].any()  # 48 * 16 / 80 = 9.6 rows


def test_banded_measures_equal_skimage_and_numpy(monkeypatch):
    monkeypatch.setattr(geometry, "BAND_PIXELS", 16 * 40)  # 16-row bands
    original = _texture(50, 40).astype(np.float32) / 255
    protected = np.clip(
        original * 255 + np.random.default_rng(1).integers(-8, 9, original.shape), 0, 255
    )
    protected = protected.astype(np.uint8)
    expected = structural_similarity(
        original, protected.astype(np.float32) / 255, channel_axis=2, data_range=1.0
    )
    facts = protect_module._measure(original, protected)
    assert facts["ssim"] == pytest.approx(expected, abs=1e-6)
    diff = protected.astype(np.float64) / 255 - original
    assert facts["linf"] == pytest.approx(np.abs(diff).max(), abs=1e-6)
    assert facts["psnr"] == pytest.approx(-10 * np.log10(np.mean(diff**2)), abs=1e-4)


def test_names_are_unique_per_sample_and_stay_in_the_folder():
    assert protected_name("/data/x/ evil name?.JPG", "5f1d", "png") == "_evil_name_-5f1d.png"
    assert protected_name("../../.bashrc", "5f1d", "jpg") == "bashrc-5f1d.jpg"
    assert protected_name("/data/..", "5f1d", "png") == "image-5f1d.png"
    assert protected_name("a/img.png", "1", "png") != protected_name("b/img.png", "2", "png")
    assert sorted({shard_of(f"{i:024x}", 3) for i in range(30)}) == [0, 1, 2]


@pytest.mark.parametrize("field", ["seg_db", "seg_path", "dets", "boxes", "polys"])
def test_every_label_type_rasterises_its_objects(tmp_path, field):
    dataset = _scene_dataset(f"raster-{field}", tmp_path, count=1)
    label = dataset.first()[field]
    spec = resolve_prompt(dataset, field, "all")
    expected = _box(RECT, 64, 64) | _box(OTHER, 64, 64)
    assert np.array_equal(segment_map(label, 64, 64, spec) > 0, expected)
    only_thing = segment_map(label, 64, 64, resolve_prompt(dataset, field, ["thing"])) > 0
    assert np.array_equal(only_thing, _box(RECT, 64, 64))
    resized = segment_map(label, 128, 128, spec) > 0  # masks follow the image size
    assert resized.sum() == pytest.approx(4 * expected.sum(), rel=0.1)


def test_rgb_segmentation_masks_use_hex_mask_targets(tmp_path):
    dataset = _scene_dataset("rgb-masks", tmp_path, count=1)
    rgb = np.zeros((32, 32, 3), np.uint8)  # half the image size: resized to it
    rgb[8:20, 10:26] = (255, 0, 0)
    rgb[22:29, 2:8] = (0, 0, 255)
    dataset.set_values("rgb", [fo.Segmentation(mask=rgb)])
    dataset.mask_targets = {**dataset.mask_targets, "rgb": {"#ff0000": "thing", "#0000ff": "sky"}}
    dataset.save()
    spec = resolve_prompt(dataset, "rgb", ["thing"])
    assert spec.values == {0xFF0000}
    segments = segment_map(dataset.first().rgb, 64, 64, spec)
    assert np.array_equal(segments > 0, _box(RECT, 64, 64))


def test_palette_masks_are_class_indices_and_mismatched_targets_fail_by_name(tmp_path, generators):
    dataset = _scene_dataset("palette-masks", tmp_path, count=2)
    indices = np.zeros((64, 64), np.uint8)
    indices[RECT[0] : RECT[1], RECT[2] : RECT[3]] = 15  # VOC's "person"
    indices[OTHER[0] : OTHER[1], OTHER[2] : OTHER[3]] = 255  # VOC's void border
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([v for i in range(256) for v in (i * 7 % 256, 128 * (i % 2), 0)])
    palette.save(tmp_path / "voc.png")  # read as RGB by FiftyOne, whose red drops "person"
    first, second = dataset.values("id")
    dataset.set_values(
        "voc", {first: fo.Segmentation(mask_path=str(tmp_path / "voc.png"))}, key_field="id"
    )
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[RECT[0] : RECT[1], RECT[2] : RECT[3]] = (192, 128, 128)
    dataset.set_values("voc", {second: fo.Segmentation(mask=rgb)}, key_field="id")
    dataset.mask_targets = {**dataset.mask_targets, "voc": {15: "person", 255: "void"}}
    dataset.save()
    spec = resolve_prompt(dataset, "voc", ["person"])
    segments = segment_map(dataset[first].voc, 64, 64, spec)
    assert np.array_equal(segments > 0, _box(RECT, 64, 64))
    summary = protect(dataset, "voc", prompt=["person"], generator=generators["random"])
    assert summary["protected"] == 1 and summary["failed"] == 1
    failure = summary["failures"][0]
    assert failure["id"] == second and "is RGB but the mask targets of 'voc'" in failure["reason"]
    assert dataset[first].unseg.num_segments == 1


def test_mask_files_of_every_kind_mark_their_object(tmp_path):
    """Palette, grey+alpha and colour PNGs as a Detection's or a Segmentation's mask_path
    (FiftyOne reads the first two as colours)."""
    dataset = _scene_dataset("mask-files", tmp_path, count=1)
    box = np.zeros((64, 64), np.uint8)
    box[RECT[0] : RECT[1], RECT[2] : RECT[3]] = 1
    palette = Image.fromarray(box, "L").convert("P")
    palette.putpalette([0, 0, 0, 0, 200, 0])
    files = {
        "palette.png": palette,
        "grey-alpha.png": Image.fromarray(np.dstack([box, np.full_like(box, 255)]), "LA"),
        "colour.png": Image.fromarray(np.dstack([box * 0, box * 255, box * 0])),
    }
    whole = [0.0, 0.0, 1.0, 1.0]
    for name, image in files.items():
        image.save(tmp_path / name)
        detection = fo.Detection(label="thing", bounding_box=whole, mask_path=str(tmp_path / name))
        label = fo.Detections(detections=[detection])
        segments = segment_map(label, 64, 64, resolve_prompt(dataset, "dets"))
        assert np.array_equal(segments > 0, box > 0), name
    dataset.set_values("grey", [fo.Segmentation(mask_path=str(tmp_path / "grey-alpha.png"))])
    dataset.mask_targets = {**dataset.mask_targets, "grey": {1: "thing"}}
    dataset.save()
    spec = resolve_prompt(dataset, "grey", ["thing"])
    assert np.array_equal(segment_map(dataset.first().grey, 64, 64, spec) > 0, box > 0)


def test_float_images_and_rgb_masks_read_as_what_they_show(tmp_path):
    gray = _texture(16, 24)[..., 0].astype(np.float32)
    Image.fromarray(gray / 255, "F").save(tmp_path / "unit.tif")
    Image.fromarray(gray, "F").save(tmp_path / "bytes.tif")
    Image.fromarray(gray * 4 - 100, "F").save(tmp_path / "signal.tif")
    for name in ("unit.tif", "bytes.tif"):
        rgb = read_rgb(str(tmp_path / name))
        assert rgb.shape == (16, 24, 3) and np.allclose(rgb[..., 1], gray / 255, atol=1e-6)
    with pytest.raises(ValueError, match=r"signal.tif: float image with values in \[60, 748\]"):
        read_rgb(str(tmp_path / "signal.tif"))
    colours = np.zeros((8, 8, 3), np.uint8)
    colours[:4, :4] = (0, 0, 255)  # red channel 0: lost when only red was read
    colours[4:, 4:] = (0, 0, 128)
    Image.fromarray(colours).save(tmp_path / "mask.png")
    values = read_mask(str(tmp_path / "mask.png"))
    assert values[0, 0] == 0x0000FF and values[7, 7] == 0x000080 and values[0, 7] == 0
    levels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(levels).convert("LA").save(tmp_path / "grey-alpha.png")
    assert np.array_equal(read_mask(str(tmp_path / "grey-alpha.png")), levels)  # alpha ignored


def test_budget_holds_on_every_pixel_for_any_image_kind(tmp_path, generators, monkeypatch):
    monkeypatch.setattr(geometry, "BAND_PIXELS", 24 * 64)  # several bands per image
    rgb = _texture(64, 96)
    gray = Image.fromarray(_texture(64, 64)[..., 0])
    rgba = Image.fromarray(np.dstack([_texture(64, 80), np.full((64, 80), 128, np.uint8)]))
    # 16-bit and float values that no 8-bit value equals: rounding alone would overshoot
    deep = Image.fromarray(_texture(80, 64)[..., 0].astype(np.uint16) * 257 + 77).convert("I;16")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the file is stored 64 wide x 72 high, shown 72 x 64
    images = {
        "wide.png": Image.fromarray(rgb),
        "gray.png": gray,
        "rgba.png": rgba,
        "deep.png": deep,
        "tiny.png": Image.fromarray(_texture(5, 7)),
        "sliver.png": Image.fromarray(_texture(2, 600)),  # 0 rows at the prompt's S/4
        "float.tif": Image.fromarray((_texture(64, 64)[..., 0] + np.float32(0.37)) / 255, "F"),
        "cmyk.jpg": Image.fromarray(_texture(64, 64)).convert("CMYK"),
    }
    dataset = _dataset("budgets", tmp_path, images)
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(_texture(72, 64)).save(rotated, exif=exif, quality=95)
    dataset.add_sample(fo.Sample(filepath=str(rotated), **_labels(str(tmp_path), 64, 72)))
    # 16-bit colour, whose low bytes Pillow drops: the budget holds against the full values
    for name, channels in (("deep-rgb.png", 3), ("deep-rgba.tif", 4)):
        values = np.random.default_rng(channels).integers(0, 65536, (64, 64, channels))
        cv2.imwrite(str(tmp_path / name), values.astype(np.uint16))
        dataset.add_sample(fo.Sample(filepath=str(tmp_path / name), **_labels(str(tmp_path))))
    before = _hashes(dataset.values("filepath"))

    summary = protect(dataset, "seg_db", generator=generators["saturated"], eps=EPS, eps_bg=EPS_BG)

    assert summary["protected"] == len(dataset) and summary["failed"] == 0
    assert _hashes(dataset.values("filepath")) == before
    for sample in dataset:
        noise = np.abs(_noise(sample)).max(axis=2)
        height, width = noise.shape
        objects = segment_map(sample.seg_db, height, width, resolve_prompt(dataset, "seg_db"))
        inside, outside = noise[objects > 0], noise[objects == 0]
        assert inside.max() <= EPS + OVER and outside.max() <= EPS_BG + OVER, sample.filepath
        assert sample.unseg.linf == pytest.approx(noise.max(), abs=OVER)
        if "deep-" in sample.filepath:  # against the stored values, not an 8-bit reading
            stored = cv2.imread(sample.filepath, cv2.IMREAD_UNCHANGED)[..., 2::-1] / 65535
            assert np.abs(read_rgb(sample.protected_filepath) - stored).max() <= EPS + OVER
        if min(height, width) >= 32:  # saturated noise reaches both budgets
            assert inside.max() >= EPS - TOL and outside.max() >= EPS_BG - TOL, sample.filepath
            assert 30 < sample.unseg.psnr < 60 and 0.5 < sample.unseg.ssim < 1
    assert dataset.first().unseg.num_segments == 2 and dataset.first().unseg.had_segments


def test_noise_that_is_not_finite_leaves_the_pixel_as_it_was():
    images = torch.rand(1, 3, 8, 8)
    noise = torch.ones(1, 3, 8, 8)
    noise[0, :, 2, 3], noise[0, 0, 5, 5] = float("nan"), float("inf")
    objects = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    out = protected_pixels(images, noise, objects, EPS, EPS_BG)
    assert (out - images * 255).abs().max() <= EPS * 255 + 1e-3
    unchanged = protected_pixels(images, torch.zeros_like(noise), objects, EPS, EPS_BG)
    assert torch.equal(out[0, :, 2, 3], unchanged[0, :, 2, 3])  # infinite: saturated


def test_fractional_budgets_round_inside_themselves(tmp_path, generators):
    """7.7/255 and 2.6/255 allow 7 and 2 steps of an 8-bit image, never 8 and 3."""
    dataset = _scene_dataset("fractional", tmp_path, count=1)
    eps, eps_bg = 7.7 / 255, 2.6 / 255
    protect(dataset, "seg_db", generator=generators["saturated"], eps=eps, eps_bg=eps_bg)
    steps = np.rint(np.abs(_noise(dataset.first())).max(axis=2) * 255)
    thing = _box(RECT, 64, 64) | _box(OTHER, 64, 64)
    assert steps[thing].max() == 7 and steps[~thing].max() == 2
    assert dataset.first().unseg.linf == pytest.approx(7 / 255, abs=OVER)


@pytest.mark.parametrize("field", ["seg_path", "dets", "boxes", "polys"])
def test_object_budget_follows_each_label_type(tmp_path, generators, field):
    dataset = _scene_dataset(f"types-{field}", tmp_path, count=1)
    protect(dataset, field, generator=generators["saturated"], prompt=["thing"])
    noise = np.abs(_noise(dataset.first())).max(axis=2)
    thing, other = _box(RECT, 64, 64), _box(OTHER, 64, 64)
    assert noise[thing].max() >= EPS - TOL and noise[~thing].max() <= EPS_BG + TOL
    assert noise[other].max() <= EPS_BG + TOL  # not a chosen class: background budget
    expected = "classes:thing=1" if field == "seg_path" else "classes:thing"  # its value
    assert dataset.first().unseg.prompt == expected


def test_edited_mask_targets_protect_again_where_they_change_the_noise(tmp_path, generators):
    """The targets decide which value a class prompt gives the object budget, and with
    class keys which texture each region gets: copies made under others are not kept."""
    dataset = _scene_dataset("edited-targets", tmp_path, count=2)
    saturated = generators["saturated"]
    protect(dataset, "seg_db", generator=saturated, prompt=["thing"])
    dataset.mask_targets["seg_db"] = {1: "other", 2: "thing"}  # swapped
    dataset.save()
    summary = protect(dataset, "seg_db", generator=saturated, prompt=["thing"])
    assert summary["protected"] == 2 and summary["skipped"] == 0
    noise = np.abs(_noise(dataset.first())).max(axis=2)
    assert noise[_box(OTHER, 64, 64)].max() >= EPS - TOL  # value 2 is "thing" now
    assert noise[_box(RECT, 64, 64)].max() <= EPS_BG + TOL
    protect(dataset, "seg_db", generator=saturated, class_mix=0.5)
    dataset.mask_targets["seg_db"] = {1: "road", 2: "thing"}  # renamed: another texture
    dataset.save()
    assert protect(dataset, "seg_db", generator=saturated, class_mix=0.5)["protected"] == 2
    assert protect(dataset, "seg_db", generator=saturated, class_mix=0.5)["skipped"] == 2


class AreaNoise(torch.nn.Module):
    """A stand-in generator whose noise shows its prompt: 2 * (prompt area fraction) - 1."""

    img_size = MICRO.img_size
    generator_id = "area-noise"

    def encode(self, images):
        return images, images

    def decode(self, embeddings, early_features, mask_prompts):
        value = 2 * mask_prompts.mean(dim=(1, 2, 3)) - 1
        return value.view(-1, 1, 1, 1).expand(-1, 3, *mask_prompts.shape[-2:]), None


def test_instance_mode_gives_each_segment_its_own_noise(tmp_path):
    dataset = _scene_dataset("instances", tmp_path, count=1)
    # Prompt cells are 4 px; the union covers 57 of 256 cells, RECT 48, OTHER 9.
    union, thing, other = (2 * cells / 256 - 1 for cells in (57, 48, 9))
    inner_thing, inner_other = (slice(20, 36), slice(24, 48)), (slice(48, 54), slice(8, 12))
    far = (slice(0, 8), slice(56, 64))
    cases = {"all": (union, union, union), "instance": (thing, other, union)}
    for prompt, (in_thing, in_other, background) in cases.items():
        protect(dataset, "dets", generator=AreaNoise(), prompt=prompt, class_mix=0)
        noise = _noise(dataset.first())
        assert dataset.first().unseg.prompt == prompt
        assert np.allclose(noise[inner_thing], in_thing * EPS, atol=TOL)
        assert np.allclose(noise[inner_other], in_other * EPS, atol=TOL)
        assert np.allclose(noise[far], background * EPS_BG, atol=TOL)


def test_segments_smaller_than_a_prompt_cell_are_in_their_prompts(tmp_path):
    frame = Frame(64, 64, 64)  # 4-pixel prompt cells
    segments = np.zeros((64, 64), np.uint16)
    segments[RECT[0] : RECT[1], RECT[2] : RECT[3]] = 1  # 48 whole cells
    segments[5:7, 5:7] = 2  # a quarter of one cell
    segments[30, 0:3] = segments[31:33, 2] = 3  # 4 pixels in cell (7, 0), 1 in (8, 0)
    assert frame.prompt(segments > 0).sum() == 48  # as one mask: cells at least half covered
    union = frame.prompt(segments)[0]
    assert union.sum() == 50 and union[1, 1] and union[7, 0] and not union[8, 0]
    assert frame.prompt(segments == 2)[0].nonzero().tolist() == [[1, 1]]

    dataset = _scene_dataset("tiny-segments", tmp_path, count=1)
    sample = dataset.first()
    box = [5 / 64, 5 / 64, 2 / 64, 2 / 64]  # the 2x2 pixels of segment 2 above
    tiny = fo.Detection(label="tiny", bounding_box=box, mask=np.ones((2, 2), bool))
    sample.dets.detections.append(tiny)
    sample.save()
    task = protect_module._Task(sample.id, sample.filepath, "", 0, owner="")
    spec = resolve_prompt(dataset, "dets", "instance")
    loaded = protect_module._load(task, {sample.id: sample.dets}, spec, 64)
    assert loaded.num_segments == 3
    assert [int(p.sum()) for p in loaded.prompts] == [58, 48, 9, 1]  # union, thing, other, tiny


def test_class_keys_give_each_class_one_texture_in_every_image(tmp_path):
    dataset = _scene_dataset("class-keys", tmp_path, count=2)
    inner_thing, inner_other = (slice(16, 40), slice(20, 52)), (slice(44, 58), slice(4, 16))
    far = (slice(0, 8), slice(56, 64))

    def textures(field, **options):
        protect(dataset, field, generator=AreaNoise(), overwrite=True, **options)
        out = []
        for sample in dataset:
            noise = _noise(sample)
            out.append([noise[inner_thing] / EPS, noise[inner_other] / EPS, noise[far] / EPS_BG])
        return out

    first, second = textures("dets", class_mix=1.0, class_key="k1")
    for region, again in zip(first, second):  # one texture per class, whatever the image
        assert np.allclose(np.abs(region), 1, atol=0.07) and np.allclose(region, again, atol=0.07)
    thing, other, background = first
    # The same 8x8 tile phase (image rows and columns 0 mod 8) in each region:
    tiles = {"thing": thing[0:8, 4:12], "other": other[4:12, 4:12], "bg": background[:8, :8]}
    assert np.abs(tiles["thing"] - tiles["other"]).mean() > 0.5  # classes differ
    assert np.abs(tiles["thing"] - tiles["bg"]).mean() > 0.5  # the background too
    assert np.allclose(tiles["thing"], thing[8:16, 12:20], atol=0.07)  # tiled from the origin
    # Segmentation classes are named by the mask targets: the same textures.
    assert np.allclose(textures("seg_db", class_mix=1.0, class_key="k1")[0][0], thing, atol=0.07)
    assert not np.allclose(textures("dets", class_mix=1.0, class_key="k2")[0][0], thing, atol=0.5)
    # A mix keeps the generator's part (AreaNoise: 2 * 57/256 - 1 on every object pixel).
    mixed = textures("dets", class_mix=0.25, class_key="k1")[0][0]
    assert np.allclose(mixed, 0.75 * (2 * 57 / 256 - 1) + 0.25 * thing, atol=0.07)
    recorded = dataset.first().unseg
    assert recorded.class_mix == 0.25 and recorded.class_key == ClassKeys("k1", 1).fingerprint
    assert "k1" not in repr(recorded.to_dict())  # the key itself is never stored


def test_colour_class_keys_give_each_class_one_flat_colour_and_are_recorded(tmp_path):
    dataset = _scene_dataset("class-colours", tmp_path, count=2)
    inner_thing, inner_other = (slice(16, 40), slice(20, 52)), (slice(44, 58), slice(4, 16))
    far = (slice(0, 8), slice(56, 64))

    def colours(**options):
        summary = protect(dataset, "dets", generator=AreaNoise(), **options)
        out = []
        for sample in dataset:
            noise = _noise(sample)
            regions = (noise[inner_thing] / EPS, noise[inner_other] / EPS, noise[far] / EPS_BG)
            out.append([r.reshape(-1, 3) for r in regions])
        return summary, out

    summary, (first, second) = colours(class_mix=1.0, class_key="k1", class_style="colour")
    assert summary["protected"] == 2
    means = []
    for region, again in zip(first, second):  # one colour per class, in every image
        mean = region.mean(0)
        assert np.abs(region - mean).max() < 0.07 and np.allclose(again.mean(0), mean, atol=0.07)
        assert np.abs(mean).max() > 0.93  # its largest channel at the budget
        means.append(mean)
    thing, other, background = means
    assert np.abs(thing - other).max() > 0.2 and np.abs(thing - background).max() > 0.2
    recorded = dataset.first().unseg
    assert recorded.class_key == "colour:" + ClassKeys("k1", 1).fingerprint
    # the same key as textures is another protection: the copies are made again
    summary, (textured, _) = colours(class_mix=1.0, class_key="k1")
    assert summary["protected"] == 2 and np.abs(textured[0] - textured[0].mean(0)).max() > 0.5
    with pytest.raises(ValueError, match="class_style must be one of"):
        protect(dataset, "dets", generator=AreaNoise(), class_mix=1.0, class_style="stripes")


def test_class_keys_default_to_one_key_per_dataset_and_a_new_key_reprotects(tmp_path):
    dataset = _scene_dataset("class-key-default", tmp_path, count=1)
    other = _scene_dataset("class-key-other", tmp_path / "other", count=1)
    protect(dataset, "dets", generator=AreaNoise(), class_mix=1.0)
    protect(other, "dets", generator=AreaNoise(), class_mix=1.0)
    key = dataset.first().unseg.class_key
    assert key and key != other.first().unseg.class_key  # a secret per dataset
    assert protect(dataset, "dets", generator=AreaNoise(), class_mix=1.0)["skipped"] == 1
    summary = protect(dataset, "dets", generator=AreaNoise(), class_mix=1.0, class_key="mine")
    assert summary["protected"] == 1 and dataset.first().unseg.class_key != key
    summary = protect(dataset, "dets", generator=AreaNoise(), class_mix=0)
    assert summary["protected"] == 1 and dataset.first().unseg.class_key is None
    dataset.set_values("unseg.class_mix", [None])  # as protected before class keys existed
    assert protect(dataset, "dets", generator=AreaNoise())["skipped"] == 1
    with pytest.raises(ValueError, match="class_mix"):
        protect(dataset, "dets", generator=AreaNoise(), class_mix=1.5)


def test_samples_without_segments_get_background_noise_only(tmp_path, generators):
    dataset = _scene_dataset("empty", tmp_path, count=2)
    dataset.set_values("dets", [None, fo.Detections()])
    summary = protect(dataset, "dets", generator=generators["saturated"])
    assert summary["no_segments"] == 2 and summary["protected"] == 2
    for sample in dataset:
        noise = np.abs(_noise(sample))
        assert EPS_BG - TOL <= noise.max() <= EPS_BG + TOL
        assert not sample.unseg.had_segments and sample.unseg.num_segments == 0


def test_unreadable_images_are_reported_and_skipped(tmp_path, generators):
    dataset = _scene_dataset("broken", tmp_path, count=1)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    broken = [str(tmp_path / n) for n in ("missing.png", "empty.png", "garbage.png")]
    dataset.add_samples([fo.Sample(filepath=p) for p in broken])
    summary = protect(dataset, "dets", generator=generators["random"])
    assert summary["protected"] == 1 and summary["failed"] == 3
    reasons = {f["filepath"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == set(broken)
    assert "not found" in reasons[broken[0]] and "empty" in reasons[broken[1]]
    assert "cannot decode" in reasons[broken[2]]
    ids = {f["id"] for f in summary["failures"]}
    assert ids == set(dataset.match(fo.ViewField("protected_filepath") == None).values("id"))  # noqa: E711


def test_png_jpeg_and_same_names_in_two_folders(tmp_path, generators):
    image = Image.fromarray(_texture(64, 64))
    dataset = _dataset("formats", tmp_path, {"a/img.png": image, "b/img.png": image})
    protect(dataset, "dets", generator=generators["random"])
    paths = dataset.values("protected_filepath")
    assert len(set(paths)) == 2 and all(Image.open(p).format == "PNG" for p in paths)
    assert all(os.path.dirname(p) == default_output_dir(dataset) for p in paths)
    assert "protected_filepath" in dataset.app_config.media_fields
    protect(dataset, "dets", generator=generators["random"], image_format="jpg", jpeg_quality=90)
    jpegs = dataset.values("protected_filepath")
    assert all(Image.open(p).format == "JPEG" and p.endswith(".jpg") for p in jpegs)
    assert dataset.first().unseg.format == "jpg" and dataset.first().unseg.quality == 90
    again = protect(dataset, "dets", generator=generators["random"], image_format="jpg",
                    jpeg_quality=90, overwrite=True)  # fmt: skip
    assert (again["protected"], again["failed"]) == (2, 0)  # its own JPEGs are recognised


@pytest.mark.parametrize("batch_size", [1, 3])
def test_each_image_gets_its_own_noise_whatever_the_batching(
    tmp_path, generators, monkeypatch, batch_size
):
    dataset = _scene_dataset(f"batching-{batch_size}", tmp_path, count=5)
    copies = {}
    for overlap in (False, True):  # CPU: read/write and generate take turns; GPU: overlap
        monkeypatch.setattr(protect_module, "_overlaps", lambda device, on=overlap: on)
        protect(dataset, "dets", generator=generators["random"], batch_size=batch_size,
                overwrite=True)  # fmt: skip
        paths = dataset.values("protected_filepath")
        copies[overlap] = [read_rgb(p) for p in paths]
    alone = []  # each image protected on its own, in a dataset of one
    for k, sample in enumerate(dataset):
        single = fo.Dataset(f"batching-{batch_size}-{k}")
        single.add_sample(fo.Sample(filepath=sample.filepath, dets=sample.dets))
        protect(single, "dets", generator=generators["random"], output_dir=str(tmp_path / f"{k}"))
        alone.append(read_rgb(single.first().protected_filepath))
    for taking_turns, overlapping, own in zip(copies[False], copies[True], alone):
        assert np.array_equal(taking_turns, overlapping)
        assert np.abs(taking_turns - own).max() <= 1 / 255 + 1e-6  # float rounding at most


def test_rerun_skips_overwrite_redoes_and_interrupted_runs_resume(tmp_path, generators):
    dataset = _scene_dataset("rerun", tmp_path)
    calls = []
    first = protect(dataset, "dets", generator=generators["random"], batch_size=2,
                    progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert calls[0] == (0, 3) and calls[-1] == (3, 3) and calls == sorted(calls)
    times = {p: os.stat(p).st_mtime_ns for p in dataset.values("protected_filepath")}
    again = protect(dataset, "dets", generator=generators["random"])
    assert (first["protected"], again["protected"], again["skipped"]) == (3, 0, 3)
    assert times == {p: os.stat(p).st_mtime_ns for p in times}
    assert (
        protect(dataset, "dets", generator=generators["random"], eps_bg=1 / 255)["protected"] == 3
    )
    assert (
        protect(dataset, "dets", generator=generators["random"], overwrite=True)["protected"] == 3
    )
    # A run killed after writing a file but before recording it: the file is its own, redone.
    dataset.set_values("unseg", {dataset.first().id: None}, key_field="id")
    resumed = protect(dataset, "dets", generator=generators["random"])
    assert (resumed["protected"], resumed["skipped"], resumed["failed"]) == (1, 2, 0)


def test_files_the_run_did_not_write_are_never_overwritten(tmp_path, generators):
    dataset = _scene_dataset("foreign", tmp_path, count=2)
    sample = dataset.first()
    target = os.path.join(
        default_output_dir(dataset), protected_name(sample.filepath, sample.id, "png")
    )
    os.makedirs(os.path.dirname(target))
    Image.fromarray(_texture(8, 8)).save(target)
    before = _hashes([target])
    summary = protect(dataset, "dets", generator=generators["random"])
    assert summary["protected"] == 1 and summary["failures"][0]["id"] == sample.id
    assert "not written for this sample" in summary["failures"][0]["reason"]
    assert _hashes([target]) == before


def test_replace_filepath_and_restore_round_trip(tmp_path, generators, monkeypatch):
    monkeypatch.setattr(protect_module, "_PROGRESS_CHUNK", 2)  # progress between chunks
    dataset = _scene_dataset("replace", tmp_path)
    originals = dataset.values("filepath")
    before = _hashes(originals)
    # never protected: nothing to restore or delete, and no field is invented
    assert restore(dataset, delete_protected=True) == {
        "restored": 0,
        "unchanged": 3,
        "deleted": 0,
        "failed": 0,
        "failures": [],
    }
    assert not dataset.has_field("protected_filepath")
    unprotected = dataset.match(fo.ViewField("protected_filepath") == None)  # noqa: E711
    protect(unprotected, "seg_db", generator=generators["random"], replace_filepath=True)
    assert len(unprotected) == 0 and dataset.values("original_filepath") == originals
    assert dataset.values("filepath") == dataset.values("protected_filepath")
    assert {"filepath", "protected_filepath", "original_filepath"} <= set(
        dataset.app_config.media_fields
    )
    # Protecting again reads the originals, not the protected images.
    protect(dataset, "seg_db", generator=generators["random"], eps=4 / 255, replace_filepath=True)
    assert dataset.values("original_filepath") == originals
    assert all(np.abs(_noise(s)).max() <= 4 / 255 + TOL for s in dataset)

    # A clone of the labels alone takes the protected copies as its images: never noised again.
    clone = dataset.select_fields("seg_db").clone("replace-clone")
    summary = protect(clone, "seg_db", generator=generators["random"])
    assert summary["failed"] == 3 and summary["protected"] == 0
    assert "is a protected copy (unseg wrote it for sample" in summary["failures"][0]["reason"]
    clone.delete()

    reported = []
    assert restore(dataset, progress=lambda *done: reported.append(done)) == {
        "restored": 3,
        "unchanged": 0,
        "deleted": 0,
        "failed": 0,
        "failures": [],
    }
    assert reported == [(2, 3), (3, 3)]
    assert restore(dataset) == {
        "restored": 0,
        "unchanged": 3,
        "deleted": 0,
        "failed": 0,
        "failures": [],
    }
    protected = dataset.values("protected_filepath")
    assert dataset.values("filepath") == originals and all(map(os.path.isfile, protected))
    reported.clear()
    summary = restore(dataset, True, lambda *done: reported.append(done))
    assert (summary["deleted"], summary["unchanged"], summary["restored"]) == (3, 0, 0)
    assert reported == [(2, 3), (3, 3)]
    assert not any(map(os.path.exists, protected)) and dataset.count("protected_filepath") == 0
    assert _hashes(originals) == before


def test_restore_keeps_the_protected_copy_of_a_sample_whose_original_is_gone(tmp_path, generators):
    dataset = _scene_dataset("gone", tmp_path)
    protect(dataset, "seg_db", generator=generators["random"], replace_filepath=True)
    gone, kept, _ = dataset
    kept_original = kept.original_filepath
    os.rename(gone.original_filepath, tmp_path / "moved.png")  # on a drive not mounted
    summary = restore(dataset, delete_protected=True)
    assert (summary["restored"], summary["deleted"], summary["failed"]) == (2, 2, 1)
    assert summary["failures"][0]["id"] == gone.id
    assert "the original image is missing" in summary["failures"][0]["reason"]
    gone.reload()
    assert gone.filepath == gone.protected_filepath and os.path.isfile(gone.filepath)
    assert gone.original_filepath and gone.unseg is not None  # as it was: restorable later
    kept.reload()
    assert (kept.filepath, kept.original_filepath) == (kept_original, None)
    assert kept.protected_filepath is None
    os.rename(tmp_path / "moved.png", gone.original_filepath)  # the drive is back
    assert restore(dataset)["restored"] == 1


def test_run_is_recorded_with_config_and_counts(tmp_path, generators):
    dataset = _scene_dataset("runs", tmp_path)
    protect(dataset.limit(2), "dets", generator=generators["random"], run_key="first")
    assert "first" in dataset.list_runs(method="unseg.protect")
    info = dataset.get_run_info("first")
    assert info.config.label_field == "dets" and info.config.eps == EPS
    results = dataset.load_run_results("first")
    assert (results.protected, results.skipped, results.failed, results.total) == (2, 0, 0, 2)
    assert len(dataset.load_run_view("first")) == 2


def test_invalid_requests_name_the_problem(tmp_path, generators):
    dataset = _scene_dataset("invalid", tmp_path, count=1)
    dataset.set_values("kind", [fo.Classification(label="x")])
    cases = [
        ({"label_field": "nope"}, "'nope' does not exist"),
        ({"label_field": "kind"}, "'kind' holds Classification"),
        ({"label_field": "dets", "prompt": ["unicorn"]}, r"\['unicorn'\] are not object classes"),
        (
            {"label_field": "dets", "eps": 2.0},
            r"eps=2 is 510/255 .* \(for 2/255 write 2/255 = 0.00784314\)",
        ),
        ({"label_field": "dets", "eps": 1}, "eps=1 is 255/255 of the image range"),
        ({"label_field": "dets", "eps_bg": 0.1}, "budgets must satisfy"),
        ({"label_field": "dets", "image_format": "gif"}, "image_format"),
        ({"label_field": "dets", "shard": (2, 2)}, "shard"),
        ({"label_field": "dets", "run_key": "my-run"}, "run_key must be a Python identifier"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            protect(dataset, generator=generators["random"], **kwargs)
    with pytest.raises(ValueError, match="no samples"):
        protect(dataset.limit(0), "dets", generator=generators["random"])


@pytest.mark.slow
def test_cli_two_shard_processes_protect_every_sample_exactly_once(tmp_path, generators, unseg):
    dataset = _scene_dataset("shards", tmp_path, count=10)
    originals = dataset.values("filepath")
    command = [os.path.join(os.path.dirname(sys.executable), "unseg"), "protect"]
    args = ["--dataset", "shards", "--label-field", "seg_path", "--generator",
            generators["saturated"], "--eps", "4/255", "--eps-bg", "1/255", "--classes", "thing",
            "--format", "jpg", "--quality", "90", "--replace-filepath", "--batch-size", "3",
            "--class-mix", "0.75"]  # fmt: skip
    procs = [
        subprocess.Popen([*command, *args, "--shard", f"{i}/2"], stdout=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    counts = [
        re.search(r"Protected (\d+) of (\d+) samples \(0 already", o).groups() for o in outputs
    ]
    assert sum(int(done) for done, _ in counts) == 10 and all(d == t for d, t in counts)
    dataset.reload()
    protected = dataset.values("protected_filepath")
    assert len(set(protected)) == 10 and dataset.values("filepath") == protected
    assert {"unseg_protect_shard0of2", "unseg_protect_shard1of2"} <= set(dataset.list_runs())
    assert set(dataset.values("unseg.class_mix")) == {0.75}
    assert len(set(dataset.values("unseg.class_key"))) == 1  # both shards drew one key
    facts = dataset.first().unseg
    assert (facts.eps, facts.format) == (pytest.approx(4 / 255), "jpg")
    assert re.fullmatch(r"classes:thing=1;names=[0-9a-f]{8}", facts.prompt)  # keys: names too
    assert "Restored 10 originals" in unseg("restore", "--dataset", "shards").stdout
    dataset.reload()
    assert dataset.values("filepath") == originals


def test_cli_errors_name_the_problem(tmp_path, capsys):
    _scene_dataset("cli-errors", tmp_path, count=1)
    parser = cli.build_parser()
    assert cli.run(parser, ["protect", "--dataset", "cli-errors", "--label-field", "nope"]) == 2
    assert "'nope' does not exist" in capsys.readouterr().err
    assert cli.run(parser, ["protect", "--dataset", "absent", "--label-field", "dets"]) == 2
    assert "dataset 'absent' does not exist" in capsys.readouterr().err
    args = ["protect", "--dataset", "cli-errors", "--view", "nope", "--label-field", "dets"]
    assert cli.run(parser, args) == 2 and "no saved view 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["protect", "--dataset", "x", "--label-field", "y", "--class-mix", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["protect", "--dataset", "x", "--label-field", "y", "--background", "sky"]
        )
    assert "'sky' is not a pixel value: give a whole number, 'none' or 'auto'" in (
        capsys.readouterr().err
    )
    target = ["protect", "--dataset", "cli-errors", "--label-field", "dets"]
    for extra, message in [
        (["--device", "tpu0"], "unknown device 'tpu0': use cpu, cuda or cuda:N"),
        (["--quality", "50"], "--quality is the JPEG quality: give --format jpg too"),
        (["--generator", "robst"], "not found: robst .*or a shipped generator: default, robust"),
    ]:
        assert cli.run(parser, [*target, *extra]) == 2, extra
        assert re.search(message, capsys.readouterr().err), extra
    if not torch.cuda.is_available():
        assert cli.run(parser, [*target, "--device", "cuda"]) == 2
        assert "CUDA is not available here: use cpu" in capsys.readouterr().err
    assert not fo.load_dataset("cli-errors").has_field("protected_filepath")  # no work began


def test_a_gpu_the_machine_does_not_have_is_refused_by_name(monkeypatch):
    from fiftyone_unseg.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match="'cuda:7' requested but this machine has 1 CUDA dev"):
        resolve_device("cuda:7")


def test_budgets_count_in_255ths_wherever_they_are_typed(capsys):
    """``--eps 8`` is 8/255 as in the App's form; what reads as a fraction of the range
    (0.03) or is above 64/255 is refused, and above 16/255 warned about."""
    parser = cli.build_parser()
    target = ["--dataset", "x", "--label-field", "y"]
    for typed, expected in [("8", 8 / 255), ("8/255", 8 / 255), ("1", 1 / 255), ("2", 2 / 255),
                            ("0.25/255", 0.25 / 255), ("0", 0.0), ("16", 16 / 255)]:  # fmt: skip
        args = parser.parse_args(["evaluate", *target, "--eps-bg", typed])
        assert args.eps_bg == pytest.approx(expected), typed
    assert "warning" not in capsys.readouterr().err
    for typed, message in [("0.03", "ambiguous: .* 7.65/255 for 0.03 of the range"),
                           ("65", "outside \\[0, 64/255\\]"), ("-1", "outside"),
                           ("8/255x", "not a budget like 8/255")]:  # fmt: skip
        with pytest.raises(SystemExit):
            parser.parse_args(["evaluate", *target, "--eps", typed])
        assert re.search(message, capsys.readouterr().err), typed
    parser.parse_args(["evaluate", *target, "--eps", "24"])
    assert "24/255 is above 16/255: the noise shows" in capsys.readouterr().err


def test_operators_protect_and_restore(tmp_path, generators):
    dataset = _scene_dataset("operators", tmp_path)
    result = foo.execute_operator(
        "@unseg/unseg/protect_samples",
        ctx={
            "dataset": dataset.name,
            "params": {
                "label_field": "polys",
                "generator": generators["random"],
                "prompt": "classes",
                "classes": ["other"],
                "eps": 6.0,
                "class_mix": 0.25,
                "replace_filepath": True,
            },
        },
    )
    assert result.error is None, result.error
    assert result.result["protected"] == 3 and result.result["failed"] == 0
    dataset.reload()
    assert dataset.first().unseg.eps == pytest.approx(6 / 255)
    assert dataset.first().unseg.prompt == "classes:other"
    assert dataset.first().unseg.class_mix == 0.25
    restored = foo.execute_operator(
        "@unseg/unseg/restore_originals", ctx={"dataset": dataset.name, "params": {}}
    )
    assert restored.error is None and restored.result["restored"] == 3


def test_protect_operator_form_rejects_what_cannot_run(tmp_path, generators):
    dataset = _dataset("no-labels", tmp_path, {"a.png": Image.fromarray(_texture(8, 8))}, False)
    scenes = _scene_dataset("bad-budget", tmp_path / "scenes", count=1)
    bad_budget = {"label_field": "dets", "eps": 2.0, "eps_bg": 4.0}
    cases = [
        (dataset.name, {}, "No Segmentation, Detections or Polylines field"),
        (scenes.name, bad_budget, "must not exceed the object one"),
        (scenes.name, {"label_field": "dets", "eps": 100.0}, "less than 64"),
    ]
    for name, params, message in cases:
        params = {"generator": generators["random"], **params}
        with pytest.raises(ExecutionError, match=message):
            foo.execute_operator(
                "@unseg/unseg/protect_samples", ctx={"dataset": name, "params": params}
            )
    operator = foo.get_operator("@unseg/unseg/protect_samples")
    for budgets, wrong in (({"eps": None, "eps_bg": 10.0}, True), ({"eps_bg": None}, False)):
        ctx = ExecutionContext({"dataset_name": scenes.name, "params": budgets})  # cleared
        fields = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert ("budget_order" in fields) == wrong  # a cleared field is its default
    for eps, warned in ((16.0, False), (24.0, True)):  # /255, as --eps counts
        ctx = ExecutionContext({"dataset_name": scenes.name, "params": {"eps": eps}})
        fields = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert ("budget_visible" in fields) == warned
    warning = fields["budget_visible"]["view"]["label"]  # a sentence, its terms as written
    assert warning.startswith("A budget of 24/255 is above 16/255") and "(PSNR down to" in warning
    assert warning.endswith(" dB where it is at full budget)")
