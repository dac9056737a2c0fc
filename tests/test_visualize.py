"""Noise heatmaps and amplified noise images of protected samples."""

import json

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from PIL import Image
from test_modeling import MICRO

from fiftyone_unseg import protect, visualize_noise
from fiftyone_unseg.checkpoint import save_generator
from fiftyone_unseg.io import read_rgb
from fiftyone_unseg.modeling import build_noise_generator

EPS = 8 / 255


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    """A MICRO generator whose tanh saturates, so the noise fills the budgets."""
    torch.manual_seed(0)
    model = build_noise_generator(MICRO)
    with torch.no_grad():
        for mlp in model.mask_decoder.noise_mlps:
            mlp.layers[-1].weight.mul_(1e4)
            mlp.layers[-1].bias.mul_(1e4)
    path = tmp_path_factory.mktemp("generator") / "saturated"
    save_generator(model, MICRO, path)
    return str(path)


@pytest.fixture
def protected(sample_dataset, generator):
    """A clone of the sample dataset, protected except for its last two samples."""
    dataset = sample_dataset.clone()
    protect(dataset.limit(len(dataset) - 2), "ground_truth", generator=generator)
    return dataset


def _magnitude(sample) -> np.ndarray:
    """max over channels |protected - original| in 1/255 units."""
    noise = read_rgb(sample.protected_filepath) - read_rgb(sample.filepath)
    return np.abs(noise).max(axis=2) * 255


def test_heatmap_matches_the_actual_noise(protected):
    summary = visualize_noise(protected)
    assert (summary["visualized"], summary["not_protected"], summary["failed"]) == (14, 2, 0)
    for sample in protected.exists("protected_filepath"):
        heatmap = sample.unseg_noise
        assert isinstance(heatmap, fo.Heatmap) and heatmap.map is None
        assert heatmap.range == pytest.approx([0, 8])
        stored = np.asarray(Image.open(heatmap.map_path)).astype(np.float32)
        assert np.array_equal(stored, np.rint(_magnitude(sample)))
        assert stored.max() == 8  # the saturated noise reaches the object budget
    assert protected.exists("unseg_noise", False).count() == 2


def test_amplified_noise_image_is_a_media_field(protected):
    summary = visualize_noise(protected, amplified_field="unseg_noise_image", amplification=10)
    assert summary["visualized"] == 14
    assert "unseg_noise_image" in protected.app_config.media_fields
    sample = protected.exists("protected_filepath").first()
    amplified = read_rgb(sample.unseg_noise_image)
    noise = read_rgb(sample.protected_filepath) - read_rgb(sample.filepath)
    expected = np.clip(0.5 + 10 * noise, 0, 1)
    assert np.abs(amplified - expected).max() <= 0.5 / 255 + 1e-6
    visualize_noise(protected, amplified_field="unseg_noise_image")  # default: budget fills 0..255
    full = np.asarray(Image.open(sample.unseg_noise_image))
    assert full.min() <= 1 and full.max() >= 254


def test_unreadable_protected_images_are_reported(protected):
    broken = protected.exists("protected_filepath").first()
    with open(broken.protected_filepath, "wb") as f:
        f.write(b"")
    summary = visualize_noise(protected)
    assert summary["failed"] == 1 and summary["failures"][0]["id"] == broken.id
    assert "empty" in summary["failures"][0]["reason"]


def test_visualize_operator(protected):
    result = foo.execute_operator(
        "@unseg/unseg/visualize_noise",
        ctx={"dataset": protected.name, "params": {"heatmap_field": "noise", "amplified": True}},
    )
    assert result.error is None, result.error
    assert result.result["visualized"] == 14 and result.result["not_protected"] == 2
    protected.reload()
    assert protected.count("noise") == 14 and protected.count("unseg_noise_image") == 14
    sample = protected.exists("protected_filepath").first()
    full = np.asarray(Image.open(sample.unseg_noise_image))  # the default gain: 0.5 / eps
    assert full.min() <= 1 and full.max() >= 254
    params = {"heatmap_field": "noise", "amplified": True, "amplification": 10.0}
    ran = foo.execute_operator(
        "@unseg/unseg/visualize_noise", ctx={"dataset": protected.name, "params": params}
    )
    assert ran.error is None, ran.error
    noise = read_rgb(sample.protected_filepath) - read_rgb(sample.filepath)
    expected = np.clip(0.5 + 10 * noise, 0, 1)
    assert np.abs(read_rgb(sample.unseg_noise_image) - expected).max() <= 0.5 / 255 + 1e-6


def test_cli_visualizes_the_noise_and_reports_the_status(protected, unseg):
    protected.persistent = True
    status = json.loads(unseg("status", "--dataset", protected.name, "--json").stdout)
    assert (status["num_protected"], status["num_visualized"]) == (14, 0)
    proc = unseg("visualize", "--dataset", protected.name, "--amplified-field", "noise_image")
    assert "noise of 14 samples in 'unseg_noise' and 'noise_image' (2 not protected" in proc.stdout
    protected.reload()
    assert protected.count("unseg_noise") == 14 and protected.count("noise_image") == 14
    text = unseg("status", "--dataset", protected.name).stdout
    assert "**14 of 16** samples protected" in text and "14 with noise heatmaps" in text
    generator_id = protected.first().unseg.generator_id
    assert f"| {generator_id} | 8.00 | 2.00 |" in text and "| 14 |" in text  # its settings row
    assert "No protection audit yet" in text
    broken = protected.exists("protected_filepath").first()
    open(broken.protected_filepath, "wb").close()
    failed = unseg("visualize", "--dataset", protected.name, check=False)
    assert failed.returncode == 1 and broken.id in failed.stderr
