"""Adapting the shipped generator to one's own data (``unseg train --config adapt``)."""

import dataclasses
import json
import os
import re

import fiftyone.operators as foo
import pytest
import torch

from fiftyone_unseg.adapt import adapt_view_name
from fiftyone_unseg.checkpoint import load_generator
from trainer import distributed
from trainer.config import load_config
from trainer.loop import Trainer

CPU = distributed.Context(0, 1, torch.device("cpu"))


def _adapt_config(sample_dataset, **overrides):
    return load_config(
        "adapt",
        data=[f"fiftyone:{sample_dataset.name}:instances"],
        device="cpu",
        batch_size=2,
        surrogate_phase=1,
        generator_phase=1,
        max_steps=2,
        val_images=2,
        val_every=1000,
        checkpoint_every=1000,
        **overrides,
    )


def test_adapting_starts_from_the_default_and_trains_only_its_noise_head(sample_dataset, tmp_path):
    default = load_generator()
    cfg = _adapt_config(sample_dataset)
    assert cfg.init == "default" and cfg.pretrain_steps == 0
    assert cfg.generator_config() == default.config
    trainer = Trainer(cfg, str(tmp_path / "run"), CPU)
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    assert all(torch.equal(v, default.state_dict()[k]) for k, v in before.items())
    summary = trainer.run()
    adapted = load_generator(summary["generator"])
    after = adapted.state_dict()
    head = {name for name, _ in adapted.named_parameters() if "noise" in name}
    assert head and any(not torch.equal(before[k], after[k]) for k in head)
    encoder = [k for k in after if k.startswith("image_encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert adapted.generator_id != default.generator_id
    start = adapted.metadata["init_generator"]  # the lineage: what it was adapted from
    assert start["generator_id"] == default.generator_id
    assert start["train_config"] == default.metadata["train_config"]
    assert adapted.metadata["train_config"]["init"] == "default"


def test_adapting_needs_data_and_an_existing_generator(sample_dataset, tmp_path):
    with pytest.raises(ValueError, match="no training data: give --data"):
        Trainer(dataclasses.replace(_adapt_config(sample_dataset), data=[]), str(tmp_path), CPU)
    with pytest.raises(ValueError, match="init 'nowhere/'"):
        load_config("adapt", init="nowhere/").generator_config()


def test_a_second_adaptation_into_a_busy_folder_is_refused(sample_dataset, tmp_path):
    from fiftyone_unseg import io
    from fiftyone_unseg.adapt import adapt_generator

    out = tmp_path / "adapted"
    held = io.try_lock(f"{out}.lock")  # the first run, still training there
    with pytest.raises(RuntimeError, match="in use by another adaptation"):
        adapt_generator(sample_dataset.limit(2), "instances", output_dir=str(out), steps=1)
    assert not out.exists()  # nothing claimed, nothing written
    io.unlock(held, f"{out}.lock")


def test_each_adaptation_recipe_is_a_shipped_config_of_its_stated_length(sample_dataset):
    from fiftyone_unseg.adapt import RECIPES, adapt_generator

    default_recipe = load_generator().metadata["train_config"]
    for recipe, steps in RECIPES.items():
        cfg = load_config(recipe)
        assert cfg.init == "default" and cfg.max_steps == steps
        # the default's noise is specific to each image; adapting must not trade that for
        # one texture repeated over the dataset, which an informed trainer subtracts
        assert cfg.shared_texture_weight == default_recipe["shared_texture_weight"] > 0
    assert load_config("adapt_learning").surrogate_reset_every == 0  # the learning one
    with pytest.raises(ValueError, match="unknown adaptation recipe 'fast'"):
        adapt_generator(sample_dataset, "instances", recipe="fast")


def test_the_app_form_offers_each_recipe_with_its_own_length(sample_dataset):
    """The steps field is empty unless filled: the App keeps a field's value when the
    recipe changes, so a pre-filled length would stay at the first recipe's."""
    from fiftyone.operators.executor import ExecutionContext

    operator = foo.get_operator("@unseg/unseg/adapt_generator")
    for recipe, steps in (("adapt", 600), ("adapt_learning", 2400)):
        params = {"label_field": "instances", "recipe": recipe}
        ctx = ExecutionContext({"dataset_name": sample_dataset.name, "params": params})
        fields = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert fields["steps"].get("default") is None
        assert fields["steps"]["view"]["description"] == f"Empty: the recipe's own, {steps}"
        choices = [c["value"] for c in fields["recipe"]["view"]["choices"]]
        assert choices == ["adapt", "adapt_learning"]


def test_the_app_operator_adapts_in_a_trainer_process_and_reports_progress(
    sample_dataset, tmp_path
):
    dataset = sample_dataset.clone()  # the operator saves a view on it
    out = tmp_path / "adapted"
    params = {
        "label_field": "instances", "steps": 2, "output_dir": str(out), "init": "robust",
        "recipe": "adapt_learning",
    }  # fmt: skip
    result = foo.execute_operator(
        "@unseg/unseg/adapt_generator",
        ctx={"view": dataset.limit(12),
             "params": params},
    )  # fmt: skip
    assert result.error is None, result.error
    adapted = load_generator(result.result["generator"])
    assert adapted.config == load_generator("robust").config
    assert adapted.metadata["train_config"]["init"] == "robust"  # the form's choices
    assert adapted.metadata["train_config"]["surrogate_reset_every"] == 0  # adapt_learning
    assert os.path.isfile(out / "metrics.csv") and os.path.isfile(f"{out}.log")
    with open(out / "summary.json") as f:  # what the training warned about, in the App
        assert result.result["warnings"] == "\n".join(json.load(f)["warnings"])
    data = adapted.metadata["train_config"]["data"][0]  # the view the trainer read: its own
    assert data.startswith(f"fiftyone:{dataset.name}@unseg-adapt-")
    assert not dataset.list_saved_views()  # and gone once it has run
    with open(out / "adapted_on.json") as f:
        source = json.load(f)
    view_name = adapt_view_name(source["fingerprint"], str(out))
    assert source["samples"] == 12 and data == f"fiftyone:{dataset.name}@{view_name}:instances"


def test_an_adaptation_leaves_the_view_of_another_into_another_folder(sample_dataset, tmp_path):
    from fiftyone_unseg.adapt import adapt_generator, training_fingerprint

    dataset = sample_dataset.clone()
    samples = dataset.limit(4)
    settings = {
        "recipe": "adapt",
        "label_field": "instances",
        "steps": 1,
        "init": "default",
        "init_id": load_generator().generator_id,
        "seed": 0,
    }  # fmt: skip: adapt_generator's own, so both trainings learn from the same
    fingerprint = training_fingerprint(samples, "instances", settings)
    other = adapt_view_name(fingerprint, str(tmp_path / "first"))  # still training
    dataset.save_view(other, samples)
    adapt_generator(samples, "instances", output_dir=str(tmp_path / "second"), steps=1)
    assert dataset.list_saved_views() == [other]  # its view is neither replaced nor deleted
    assert len(dataset.load_saved_view(other)) == 4


def test_the_fingerprint_follows_the_samples_their_labels_and_the_settings(sample_dataset):
    from fiftyone_unseg.adapt import training_fingerprint

    dataset = sample_dataset.clone()
    settings = {"recipe": "adapt", "steps": 2}
    first = training_fingerprint(dataset.limit(4), "instances", settings)
    assert training_fingerprint(dataset.limit(4), "instances", settings) == first
    assert training_fingerprint(dataset.skip(4).limit(4), "instances", settings) != first
    assert training_fingerprint(dataset.limit(4), "instances", {**settings, "steps": 3}) != first
    sample = dataset.first()
    sample["instances"].detections[0].label = "edited"
    sample.save()
    assert training_fingerprint(dataset.limit(4), "instances", settings) != first


def test_adapting_again_returns_only_a_training_on_the_same_samples(
    sample_dataset, tmp_path, monkeypatch
):
    import fiftyone as fo

    from fiftyone_unseg.adapt import SOURCE_FILE, adapt_generator

    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path))
    dataset = sample_dataset.clone()
    first, other = dataset.limit(4), dataset.skip(4).limit(4)
    generator = adapt_generator(first, "instances", steps=2)
    folder = os.path.dirname(generator)
    adapted_id = load_generator(generator).generator_id
    # the same samples again: the finished training, at once (no trainer runs)
    logged = os.stat(f"{folder}.log").st_mtime_ns
    assert adapt_generator(first, "instances", steps=2) == generator
    assert os.stat(f"{folder}.log").st_mtime_ns == logged
    # a stopped one (no summary yet) resumes
    os.remove(os.path.join(folder, "summary.json"))
    assert adapt_generator(first, "instances", steps=2) == generator
    with open(f"{folder}.log") as log:
        assert "resumed from step 2" in log.read()
    # other samples: their own folder; the first generator stays as it was
    elsewhere = adapt_generator(other, "instances", steps=2)
    assert os.path.dirname(elsewhere) != folder
    assert load_generator(generator).generator_id == adapted_id
    # an explicit folder holding another training: refused, replaced only when asked
    with pytest.raises(FileExistsError, match="4 samples of .*'instances'.*overwrite=True"):
        adapt_generator(other, "instances", steps=2, output_dir=folder)
    assert load_generator(generator).generator_id == adapted_id
    adapt_generator(other, "instances", steps=2, output_dir=folder, overwrite=True)
    with (
        open(os.path.join(folder, SOURCE_FILE)) as f,
        open(os.path.join(os.path.dirname(elsewhere), SOURCE_FILE)) as g,
    ):
        assert json.load(f)["fingerprint"] == json.load(g)["fingerprint"]
    assert load_generator(generator).generator_id == load_generator(elsewhere).generator_id


def test_a_replaced_adaptation_is_gone_before_the_new_one_is_recorded(tmp_path):
    from fiftyone_unseg.adapt import SOURCE_FILE, _claim

    out = tmp_path / "adapted"
    for name in ("checkpoints", "generator"):
        (out / name).mkdir(parents=True)
    (out / "metrics.csv").write_text("step\n600\n")
    (out / SOURCE_FILE).write_text(json.dumps({"fingerprint": "a"}))
    assert _claim(str(out), {"fingerprint": "b"}, replace=True)  # start over
    assert sorted(os.listdir(out)) == [SOURCE_FILE]  # a run failing now leaves no old one
    assert not _claim(str(out), {"fingerprint": "b"}, replace=False)  # nothing to resume


def test_an_interrupted_adaptation_stops_its_trainer(tmp_path):
    import sys

    from fiftyone_unseg.adapt import _run

    pid_file = tmp_path / "pid"
    child = (  # written whole (renamed into place) before the parent reads it
        f"import os, time; open('p.tmp', 'w').write(f'{{os.getpid()}} {{os.getcwd()}}'); "
        f"os.replace('p.tmp', {str(pid_file)!r}); time.sleep(60)"
    )

    def interrupted(done, total):
        if pid_file.exists():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run([sys.executable, "-c", child], str(tmp_path / "out"), 2, interrupted)
    pid, cwd = pid_file.read_text().split(" ", 1)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # no orphan training into the folder
    assert cwd == str(tmp_path / "out")  # not the caller's: its own trainer/ cannot shadow


def test_the_trainer_process_finds_a_plugin_that_was_not_pip_installed(tmp_path):
    """A plugin downloaded into FiftyOne's plugins folder is on no path of a new Python
    but the one adapt gives it (-S: without the site packages, hence without this
    checkout's editable install)."""
    import sys

    import trainer
    from fiftyone_unseg.adapt import _run

    found = tmp_path / "found"
    child = (
        "import importlib.util; spec = importlib.util.find_spec('trainer'); "
        f"open({str(found)!r}, 'w').write(spec.origin if spec else 'nothing')"
    )
    _run([sys.executable, "-S", "-c", child], str(tmp_path / "out"), 1, None)
    assert found.read_text() == trainer.__file__


def test_the_starting_generator_is_known_by_its_weights(tmp_path):
    from fiftyone_unseg.checkpoint import generator_id

    assert generator_id("default") == load_generator("default").generator_id
    assert generator_id("robust") != generator_id("default")
    with pytest.raises(FileNotFoundError, match="generator checkpoint not found"):
        generator_id(tmp_path / "nowhere")


def test_a_view_of_fewer_objects_than_one_batch_adapts_and_says_so(sample_dataset, tmp_path):
    from fiftyone_unseg.adapt import adapt_generator, training_warnings

    view = sample_dataset.limit(1)  # a few objects; the recipe's batch is 16
    generator = adapt_generator(view, "instances", output_dir=str(tmp_path / "one"), steps=1)
    with open(os.path.join(os.path.dirname(generator), "summary.json")) as f:
        assert json.load(f)["steps"] == 1  # trained, where it used to stop before its first
    (warning,) = training_warnings(generator)  # what the App's adapt form shows
    assert re.fullmatch(
        r"\d+ training pairs are fewer than one batch of 16 per process x 1 processes: "
        r"trained on batches of \d+; more data \(objects\) adapts the noise better",
        warning,
    )
