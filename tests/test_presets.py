"""Presets: named protections (a shipped generator, and class keys) chosen by name from the
SDK, the CLI and the App."""

import json
import shutil

import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext
from test_default_generator import lineage
from test_protect import _scene_dataset, generators  # noqa: F401

from fiftyone_unseg import checkpoint, cli, protect
from fiftyone_unseg.checkpoint import CONFIG_FILE, load_generator, shipped_generator_dir
from fiftyone_unseg.settings import NO_GENERATOR, PRESETS
from fiftyone_unseg.summary import protection_summary

PROTECT = "@unseg/unseg/protect_samples"
SHIPPED = shipped_generator_dir("robust")


@pytest.fixture
def weights(tmp_path, monkeypatch, generators):  # noqa: F811
    """A weights folder holding two different generators as "default" and "robust"."""
    folder = tmp_path / "weights"
    shutil.copytree(generators["random"], folder / "default")
    shutil.copytree(generators["saturated"], folder / "robust")
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", folder / "default")
    ids = {name: load_generator(folder / name).generator_id for name in ("default", "robust")}
    assert ids["default"] != ids["robust"]
    return ids


def test_a_preset_name_loads_its_shipped_generator_unless_a_folder_has_that_name(
    tmp_path,
    monkeypatch,
    weights,
    generators,  # noqa: F811
):
    assert load_generator("robust").generator_id == weights["robust"]
    assert load_generator().generator_id == load_generator("default").generator_id
    assert load_generator().generator_id == weights["default"]
    monkeypatch.chdir(tmp_path)  # a checkpoint folder called "robust" here is what it names
    shutil.copytree(generators["random"], tmp_path / "robust")
    assert load_generator("robust").generator_id == weights["default"]
    with pytest.raises(ValueError, match="unknown shipped generator 'fast'; choose one of"):
        shipped_generator_dir("fast")
    with pytest.raises(FileNotFoundError, match="semantic is a preset, give it as the preset"):
        load_generator("semantic")


def test_a_missing_preset_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", tmp_path / "weights" / "default")
    with pytest.raises(FileNotFoundError, match="No robust generator.*--config robust"):
        load_generator("robust")


def test_sdk_cli_and_app_protect_with_the_robust_preset(tmp_path, weights):
    dataset = _scene_dataset("preset-sdk", tmp_path / "sdk")
    protect(dataset, "dets", generator="robust")
    assert set(dataset.values("unseg.generator_id")) == {weights["robust"]}

    dataset = _scene_dataset("preset-cli", tmp_path / "cli")
    parser = cli.build_parser()
    args = ["protect", "--dataset", "preset-cli", "--label-field", "dets"]
    assert cli.run(parser, [*args, "--preset", "robust"]) == 0
    assert set(dataset.values("unseg.generator_id")) == {weights["robust"]}
    assert cli.run(parser, [*args, "--overwrite"]) == 0  # no preset: the default
    assert set(dataset.values("unseg.generator_id")) == {weights["default"]}
    with pytest.raises(SystemExit):  # a preset and a folder: which one?
        parser.parse_args([*args, "--preset", "robust", "--generator", "x"])

    dataset = _scene_dataset("preset-app", tmp_path / "app")
    operator = foo.get_operator(PROTECT)
    form = operator.resolve_input(ExecutionContext({"dataset_name": dataset.name, "params": {}}))
    field = form.to_json()["type"]["properties"]["preset"]
    assert field["default"] == "default"
    choices = {c["value"]: c["description"] for c in field["view"]["choices"]}
    assert choices == {name: preset.what for name, preset in PRESETS.items()}
    params = {"label_field": "dets", "preset": "robust"}
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert set(dataset.values("unseg.generator_id")) == {weights["robust"]}


def test_sdk_cli_and_app_protect_with_the_semantic_preset_colour_class_keys(
    tmp_path,
    weights,
    monkeypatch,
):
    """The semantic preset is one flat colour per class at share 1: each class's noise is
    one colour, the same in every image, and no generator runs (none need be installed)."""
    import numpy as np

    from fiftyone_unseg.io import read_rgb

    monkeypatch.delenv("UNSEG_CLASS_KEY", raising=False)
    dataset = _scene_dataset("preset-semantic-sdk", tmp_path / "sdk")
    installed = checkpoint.DEFAULT_GENERATOR_DIR
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", tmp_path / "no-weights")
    summary = protect(dataset, "dets", preset="semantic")
    assert summary["protected"] == len(dataset)
    assert set(dataset.values("unseg.generator_id")) == {NO_GENERATOR}
    # copies from before share 1 skipped the generator recorded the default's id: current
    half = len(dataset) // 2 + 1
    dataset.set_values(
        "unseg.generator_id", [weights["default"]] * half + [NO_GENERATOR] * (len(dataset) - half)
    )
    assert protect(dataset, "dets", preset="semantic")["skipped"] == len(dataset)
    (setting,) = protection_summary(dataset)["settings"]  # one protection, one row
    assert setting["generator_id"] == NO_GENERATOR and setting["count"] == len(dataset)
    with pytest.raises(FileNotFoundError):  # below share 1 the default generator runs
        protect(dataset, "dets", preset="semantic", class_mix=0.5)
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", installed)
    assert set(dataset.values("unseg.class_mix")) == {1.0}
    (fingerprint,) = set(dataset.values("unseg.class_key"))
    assert fingerprint.startswith("colour:")
    for sample in dataset:  # the noise on the first box is one colour
        box = sample.dets.detections[0].bounding_box
        noise = read_rgb(sample.protected_filepath) - read_rgb(sample.filepath)
        height, width = noise.shape[:2]
        top, left = int(box[1] * height) + 2, int(box[0] * width) + 2
        patch = noise[top : top + 3, left : left + 3].reshape(-1, 3)
        assert np.abs(patch).max() > 3 / 255 and np.ptp(patch, axis=0).max() < 1.5 / 255
    # class settings given override the preset's; a generator with it is refused
    again = _scene_dataset("preset-semantic-mix", tmp_path / "mix")
    protect(again, "dets", preset="semantic", class_mix=0.5)
    assert set(again.values("unseg.class_mix")) == {0.5}
    assert set(again.values("unseg.generator_id")) == {weights["default"]}
    assert {k.split(":")[0] for k in again.values("unseg.class_key")} == {"colour"}
    with pytest.raises(ValueError, match="a generator or a preset"):
        protect(again, "dets", preset="semantic", generator="robust")
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        protect(again, "dets", preset="fast")

    dataset = _scene_dataset("preset-semantic-cli", tmp_path / "cli")
    args = ["protect", "--dataset", dataset.name, "--label-field", "dets", "--preset", "semantic"]
    assert cli.run(cli.build_parser(), args) == 0
    assert set(dataset.values("unseg.class_mix")) == {1.0}
    assert {k.split(":")[0] for k in dataset.values("unseg.class_key")} == {"colour"}

    dataset = _scene_dataset("preset-semantic-app", tmp_path / "app")
    operator = foo.get_operator(PROTECT)
    params = {"label_field": "dets", "preset": "semantic"}
    form = operator.resolve_input(
        ExecutionContext({"dataset_name": dataset.name, "params": params})
    ).to_json()["type"]["properties"]
    assert "class_mix" not in form and "class_style" not in form  # the preset's keys
    assert "generator" not in form  # no generator runs at share 1
    assert "colour per class at share 1" in form["preset_class_keys"]["view"]["label"]
    assert "class_key_source" in form
    params["class_mix"] = 0.0  # left from the default preset's form: the preset's keys win
    params["generator"] = str(tmp_path / "gone")  # so is a checkpoint the form hides now
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert set(dataset.values("unseg.class_mix")) == {1.0}
    assert set(dataset.values("unseg.generator_id")) == {NO_GENERATOR}


def test_app_form_says_when_the_chosen_preset_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", tmp_path / "weights" / "default")
    dataset = _scene_dataset("preset-missing", tmp_path)
    operator = foo.get_operator(PROTECT)
    params = {"label_field": "dets", "preset": "robust"}
    form = operator.resolve_input(
        ExecutionContext({"dataset_name": dataset.name, "params": params})
    )
    error = form.to_json()["type"]["properties"]["no_generator"]["view"]
    assert error["label"] == "No robust generator installed: give a checkpoint"
    for params in ({"preset": "semantic"}, {"preset": "default", "class_mix": 1.0}):
        form = operator.resolve_input(  # class keys alone: no generator to give or install
            ExecutionContext(
                {"dataset_name": dataset.name, "params": {"label_field": "dets", **params}}
            )
        ).to_json()["type"]["properties"]
        assert "no_generator" not in form and "generator" not in form, params


@pytest.mark.skipif(not (SHIPPED / CONFIG_FILE).is_file(), reason="no robust generator shipped")
def test_the_shipped_robust_generator_was_trained_against_countermeasures():
    robust, default = load_generator("robust"), load_generator()
    stages = lineage(robust.metadata)
    assert robust.generator_id != default.generator_id
    # it is the shipped default (and so the default's lineage) fine-tuned further
    assert [s["generator_id"] for s in stages[:-1]] == [
        s["generator_id"] for s in lineage(default.metadata)[:-1]
    ] + [default.generator_id]
    assert {kind for stage in stages[1:] for kind in stage["train_config"]["eot"]} >= {
        "jpeg",
        "blur",
        "downscale",
    }
    assert robust.config.img_size == default.config.img_size


@pytest.mark.skipif(not (SHIPPED / CONFIG_FILE).is_file(), reason="no robust generator shipped")
def test_the_robust_card_and_the_readme_quote_the_presets_committed_benchmark():
    import os
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(repo, "benchmarks"))
    from real_report import card_table, epochs_table, preset_table, semantic_by_epochs

    results = os.path.join(repo, "benchmarks", "results", "real")
    robust = json.loads(open(os.path.join(results, "robust.json")).read())
    default = json.loads(open(os.path.join(results, "effectiveness.json")).read())
    assert robust["generator"] == load_generator("robust").generator_id
    assert default["generator"] == load_generator().generator_id
    card = (SHIPPED / "MODEL_CARD.md").read_text()
    assert f"**Generator id `{robust['generator']}`**" in card
    assert card_table(robust) in card
    more = json.loads(open(os.path.join(results, "more_countermeasures", "robust.json")).read())
    assert more["generator"] == robust["generator"] and card_table(more) in card
    readme = open(os.path.join(repo, "README.md")).read()
    semantic = json.loads(open(os.path.join(results, "semantic.json")).read())
    preset = PRESETS["semantic"]  # what its rows measured: the preset's protection
    assert semantic["generator"] == NO_GENERATOR
    assert (semantic["class_mix"], semantic["class_style"]) == (
        preset.class_mix,
        preset.class_style,
    )
    for victim in ("semantic", "yolo"):
        both = preset_table({"default": default, "robust": robust}, victim)
        assert robust["victims"][victim] and both in card
        presets = preset_table({"default": default, "robust": robust, "semantic": semantic}, victim)
        assert semantic["victims"][victim] and presets in readme
    by_epochs = semantic_by_epochs(semantic)
    assert sorted(by_epochs) == [12, 24, 40] and epochs_table(by_epochs) in readme
    for epochs, result in by_epochs.items():  # the same protection, trained for that long
        assert result["victims"]["semantic"]["settings"]["epochs"] == epochs
        assert (result["class_mix"], result["class_style"]) == (1.0, "colour")
