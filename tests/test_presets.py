"""Presets: shipped generators chosen by name from the SDK, the CLI and the App."""

import json
import shutil

import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext
from test_default_generator import lineage
from test_protect import _scene_dataset, generators  # noqa: F401

from fiftyone_unseg import checkpoint, cli, protect
from fiftyone_unseg.checkpoint import CONFIG_FILE, load_generator, preset_dir
from fiftyone_unseg.settings import PRESETS

PROTECT = "@unseg/unseg/protect_samples"
SHIPPED = preset_dir("robust")


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
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose one of"):
        preset_dir("fast")


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
    assert choices == PRESETS
    params = {"label_field": "dets", "preset": "robust"}
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert set(dataset.values("unseg.generator_id")) == {weights["robust"]}


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
def test_the_robust_card_and_the_readme_quote_the_committed_benchmark():
    import os
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(repo, "benchmarks"))
    from real_report import card_table, preset_table

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
    for victim in ("semantic", "yolo"):
        table = preset_table({"default": default, "robust": robust}, victim)
        assert robust["victims"][victim] and table in card and table in readme
