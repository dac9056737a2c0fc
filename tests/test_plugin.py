"""The plugin as FiftyOne itself sees it: discovery, listing, running an operator."""

import errno
import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop
import pytest
from fiftyone.operators.executor import ExecutionContext, ExecutionError, Executor
from test_protect import _scene_dataset, generators  # noqa: F401
from test_reliability import _fail_writes_after

from fiftyone_unseg import cli, io, protect
from fiftyone_unseg.class_keys import ClassKeys
from fiftyone_unseg.plugin import protect as plugin_protect
from fiftyone_unseg.plugin.forms import NO_DATASET
from fiftyone_unseg.plugin.panel import UnSegPanel
from fiftyone_unseg.protect import _lock_path
from fiftyone_unseg.settings import CLASS_KEY_SECRET

OPERATORS = {
    "load_sample_dataset",
    "protect_samples",
    "restore_originals",
    "visualize_noise",
    "export_protected",
    "evaluate_protection",
    "adapt_generator",
}


PROTECT = "@unseg/unseg/protect_samples"


def _fiftyone_cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    return subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout


def test_registry_finds_plugin_and_operators():
    plugin = fop.get_plugin("@unseg/unseg")
    assert os.path.realpath(plugin.directory) == os.path.realpath(
        os.path.join(os.path.dirname(__file__), "..")
    )
    registered = {
        op.name for op in foo.list_operators(enabled=True) if op.plugin_name == "@unseg/unseg"
    }
    assert OPERATORS <= registered
    contexts = [c for c in fop.context.build_plugin_contexts() if c.name == "@unseg/unseg"]
    assert contexts and not contexts[0].errors, contexts[0].errors if contexts else "not loaded"


def test_plugin_requirements_are_the_packages_dependencies_less_fiftyone():
    """``fiftyone plugins requirements @unseg/unseg --install`` installs requirements.txt:
    every dependency the package declares (isal, tensorboard, ...) but FiftyOne's own."""
    import tomllib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    with open(os.path.join(repo, "requirements.txt")) as f:
        listed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert listed == [d for d in declared if not d.startswith("fiftyone")]


def test_fiftyone_cli_lists_plugin_and_operators():
    assert "@unseg/unseg" in _fiftyone_cli("plugins", "list")
    listed = _fiftyone_cli("operators", "list")
    for name in OPERATORS:
        assert f"@unseg/unseg/{name}" in listed


def test_load_sample_dataset_operator_creates_dataset(tmp_path):
    params = {"name": "from-operator", "num": 3, "seed": 2, "size": 64}
    params["dataset_dir"] = str(tmp_path / "scenes")
    result = foo.execute_operator("@unseg/unseg/load_sample_dataset", ctx={"params": params})
    assert result.error is None, result.error
    assert result.result == {"dataset": "from-operator", "num_samples": 3}
    ds = fo.load_dataset("from-operator")
    assert ds.count("instances.detections") > 0 and ds.info["seed"] == 2
    assert all(p.startswith(str(tmp_path / "scenes")) for p in ds.values("filepath"))


@pytest.mark.parametrize("name", sorted(OPERATORS - {"load_sample_dataset"}))
def test_dataset_operators_ask_for_a_dataset_when_none_is_open(name):
    operator = foo.get_operator(f"@unseg/unseg/{name}")
    form = operator.resolve_input(ExecutionContext({"params": {}})).to_json()
    assert list(form["type"]["properties"]) == ["no_dataset"]
    notice = form["type"]["properties"]["no_dataset"]
    assert notice["invalid"] and notice["view"]["label"] == NO_DATASET
    with pytest.raises(ExecutionError, match=NO_DATASET):
        foo.execute_operator(f"@unseg/unseg/{name}", ctx={"params": {}})


def test_grouped_datasets_are_refused_with_the_way_to_a_slice_of_their_own(tmp_path, generators):  # noqa: F811
    """A grouped dataset's methods see only its default slice: protecting another slice
    used to skip every sample as already protected. The SDK and every dataset operator
    refuse it and say how to clone a slice, which then protects."""
    from PIL import Image

    from fiftyone_unseg import evaluate_protection, export_protected, restore, visualize_noise
    from fiftyone_unseg.adapt import adapt_generator
    from trainer.data import load_pairs

    flat = _scene_dataset("grouped-source", tmp_path / "scenes", count=2)
    dataset = fo.Dataset("grouped", overwrite=True)
    dataset.add_group_field("group", default="left")
    samples = []
    for i, sample in enumerate(flat):
        group = fo.Group()
        for name in ("left", "right"):
            path = str(tmp_path / f"{name}{i}.png")
            Image.open(sample.filepath).save(path)
            samples.append(fo.Sample(filepath=path, dets=sample.dets, group=group.element(name)))
    dataset.add_samples(samples, progress=False)
    right = dataset.select_group_slices("right")
    hint = "select_group_slices('left').clone('grouped-left')"
    for action, call in (
        ("protect", lambda: protect(right, "dets", generator=generators["random"])),
        ("restore", lambda: restore(right)),
        ("visualize", lambda: visualize_noise(right)),
        ("export", lambda: export_protected(right, str(tmp_path / "out"), "images")),
        ("evaluate", lambda: evaluate_protection(right, "dets")),
        ("adapt", lambda: adapt_generator(right, "dets")),
    ):
        with pytest.raises(ValueError, match=f"^{action} works on datasets of images.*grouped"):
            call()
    with pytest.raises(ValueError, match="^fiftyone:grouped:dets: training works on datasets"):
        load_pairs("fiftyone:grouped:dets")
    assert not right.exists("protected_filepath").count() and not (tmp_path / "out").exists()
    for name in sorted(OPERATORS - {"load_sample_dataset"}):
        operator = foo.get_operator(f"@unseg/unseg/{name}")
        ctx = ExecutionContext({"dataset_name": dataset.name, "params": {}})
        properties = operator.resolve_input(ctx).to_json()["type"]["properties"]
        assert list(properties) == ["grouped"], name
        assert hint in properties["grouped"]["view"]["label"], name
    own = right.clone("grouped-right")
    assert protect(own, "dets", generator=generators["random"])["protected"] == 2
    dataset.delete()


def test_a_patches_view_is_refused_naming_its_source(tmp_path, generators):  # noqa: F811
    """A generated view's samples live in a temporary dataset of their own: protecting
    them would write there, and the dataset itself would show nothing protected."""
    dataset = _scene_dataset("patches-source", tmp_path, count=2)
    patches = dataset.to_patches("dets")
    with pytest.raises(
        ValueError, match="^protect works on a dataset's own samples.*patches-source"
    ):
        protect(patches, "dets", generator=generators["random"])
    operator = foo.get_operator(PROTECT)
    ctx = ExecutionContext({"dataset_name": dataset.name, "view": patches._serialize()})
    properties = operator.resolve_input(ctx).to_json()["type"]["properties"]
    assert "generated from 'patches-source'" in next(iter(properties.values()))["view"]["label"]
    assert not dataset.exists("protected_filepath").count()


def test_large_runs_are_delegated_and_report_progress(tmp_path, generators, monkeypatch):  # noqa: F811
    """Above IMMEDIATE_SAMPLES an immediate run would outlast the App's operator timeout
    without progress: the run is queued instead, and a delegated executor runs it,
    reporting progress as it goes."""
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = _scene_dataset("plugin-delegated", tmp_path, count=3)
    params = {"label_field": "dets", "generator": generators["random"]}
    operator = foo.get_operator(PROTECT)
    small = operator.resolve_execution_options(ExecutionContext({"dataset_name": dataset.name}))
    assert small.allow_immediate_execution and not small.default_choice_to_delegated
    audit = foo.get_operator("@unseg/unseg/evaluate_protection")
    for choices, immediate in (
        ({"epochs": "1"}, True),  # three victims, clean images alone, one epoch
        ({}, False),  # each victim's own epochs: tens
        ({"epochs": "1", "seeds": 3}, False),  # nine trainings
        ({"epochs": "semantic=1", "victims": ["semantic"]}, True),  # as the CLI takes them
        ({"epochs": "semantic=1", "victims": ["semantic", "yolo"]}, False),  # yolo's own
    ):
        ctx = ExecutionContext({"dataset_name": dataset.name, "params": choices})
        assert audit.resolve_execution_options(ctx).allow_immediate_execution is immediate
    monkeypatch.setattr(plugin_protect, "IMMEDIATE_SAMPLES", 2)
    ctx = ExecutionContext({"dataset_name": dataset.name, "params": params})
    large = operator.resolve_execution_options(ctx)
    assert not large.allow_immediate_execution and large.default_choice_to_delegated
    preview = ExecutionContext({"dataset_name": dataset.name, "params": {**params, "preview": 2}})
    assert operator.resolve_execution_options(preview).allow_immediate_execution

    queued = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert queued.delegated and not dataset.exists("protected_filepath").count()
    service = DelegatedOperationService()
    progress = []
    original = service.set_progress
    monkeypatch.setattr(
        service, "set_progress", lambda id, p: progress.append(p.label) or original(id, p)
    )
    (ran,) = service.execute_queued_operations(operator=PROTECT, dataset_name=dataset.name)
    assert ran.error is None, ran.error
    assert ran.result["protected"] == 3 and dataset.exists("protected_filepath").count() == 3
    assert progress[-1] == "images 3/3"


def _protect_and_show(dataset, generator: str) -> tuple[dict, dict]:
    """The protect operator's result on ``dataset`` and its output properties."""
    params = {"label_field": "dets", "generator": generator}
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    outputs = foo.get_operator(PROTECT).resolve_output(ExecutionContext({"results": result.result}))
    return result.result, outputs.to_json()["type"]["properties"]


def test_protect_operator_lists_failed_samples_and_why(tmp_path, generators, monkeypatch):  # noqa: F811
    dataset = _scene_dataset("plugin-failures", tmp_path, count=1)
    missing = [str(tmp_path / f"missing{i}.png") for i in range(2)]
    dataset.add_samples([fo.Sample(filepath=path) for path in missing])
    ids = dict(zip(dataset.values("filepath"), dataset.values("id")))
    monkeypatch.setattr(plugin_protect, "MAX_FAILURES", 1)
    result, outputs = _protect_and_show(dataset, generators["random"])
    assert (result["protected"], result["failed"], result["stopped"]) == (1, 2, None)
    [failure] = result["failures"]
    assert failure["filepath"] in missing and failure["id"] == ids[failure["filepath"]]
    assert "not found" in failure["reason"]
    table = outputs["failures"]["view"]
    assert table["name"] == "TableView" and table["label"] == "Failures (first 1 of 2)"
    assert [column["key"] for column in table["columns"]] == ["id", "filepath", "reason"]
    assert "stopped" not in outputs


def test_protect_operator_says_which_samples_another_run_holds(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("plugin-busy", tmp_path, count=2)
    held = _lock_path(dataset, dataset.first().id)
    lock = io.try_lock(held)  # a delegated run at work on this sample
    try:
        result, outputs = _protect_and_show(dataset, generators["random"])
    finally:
        io.unlock(lock, held)
    assert (result["protected"], result["busy"]) == (1, 1)
    assert outputs["busy"]["view"]["name"] == "Warning"
    assert outputs["busy"]["view"]["label"].startswith("1 samples were left to another")
    result, outputs = _protect_and_show(dataset, generators["random"])
    assert (result["protected"], result["busy"]) == (1, 0) and "busy" not in outputs


def test_protect_operator_reads_the_class_key_secret(tmp_path, generators, monkeypatch):  # noqa: F811
    dataset = _scene_dataset("plugin-class-key", tmp_path, count=2)
    KEY = "k3y-0f-the-cli"
    protect(dataset, "dets", generator=generators["random"], class_mix=0.5, class_key=KEY)
    operator = foo.get_operator(PROTECT)

    def form(params):
        ctx = ExecutionContext(
            {"dataset_name": dataset.name, "params": params},
            operator_uri=PROTECT,
            required_secrets=[CLASS_KEY_SECRET],
        )
        return operator.resolve_input(ctx).to_json()["type"]["properties"]

    params = {"label_field": "dets", "generator": generators["random"], "class_mix": 0.5}
    assert "class_key_source" not in form({**params, "class_mix": 0.0})  # no key, no textures
    monkeypatch.delenv(CLASS_KEY_SECRET, raising=False)
    inputs = form({**params, "class_key_source": "secret"})
    assert inputs["class_key_source"]["default"] == "dataset" and "no_class_key" in inputs
    run = {"dataset": dataset.name, "params": {**params, "class_key_source": "secret"}}
    with pytest.raises(ExecutionError, match=f"{CLASS_KEY_SECRET} is not set"):
        foo.execute_operator(PROTECT, ctx=run)  # refused before any sample is touched
    assert set(dataset.values("unseg.class_key")) == {ClassKeys(KEY, 1).fingerprint}

    monkeypatch.setenv(CLASS_KEY_SECRET, KEY)
    inputs = form(params)
    assert inputs["class_key_source"]["default"] == "secret" and "no_class_key" not in inputs
    assert KEY not in str(inputs)  # the form never shows the key
    for source, skipped in (("secret", 2), ("dataset", 0)):  # the CLI's key: done; else redone
        run = {"dataset": dataset.name, "params": {**params, "class_key_source": source}}
        result = foo.execute_operator(PROTECT, ctx=run)
        assert result.error is None and result.result["skipped"] == skipped
    assert set(dataset.values("unseg.class_key")) != {ClassKeys(KEY, 1).fingerprint}
    assert form(params)["class_style"]["default"] == "texture"
    run = {"dataset": dataset.name, "params": {**params, "class_style": "colour"}}
    assert foo.execute_operator(PROTECT, ctx=run).result["protected"] == 2
    assert set(dataset.values("unseg.class_key")) == {
        "colour:" + ClassKeys(f"unseg-dataset-{dataset._doc.id}", 1).fingerprint
    }
    # a preset with class keys of its own hides the share, and still takes the secret
    preset = {"label_field": "dets", "preset": "semantic", "generator": generators["random"]}
    inputs = form(preset)
    assert "class_mix" not in inputs and inputs["class_key_source"]["default"] == "secret"
    run = {"dataset": dataset.name, "params": {**preset, "class_key_source": "secret"}}
    assert foo.execute_operator(PROTECT, ctx=run).result["protected"] == 2
    assert set(dataset.values("unseg.class_key")) == {"colour:" + ClassKeys(KEY, 1).fingerprint}
    assert set(dataset.values("unseg.class_mix")) == {1.0}


def test_cli_takes_the_class_key_from_the_environment(tmp_path, generators, monkeypatch):  # noqa: F811
    dataset = _scene_dataset("cli-class-key", tmp_path, count=1)
    monkeypatch.setenv(CLASS_KEY_SECRET, "from-env")
    args = ["protect", "--dataset", dataset.name, "--label-field", "dets", "--class-mix", "0.5"]
    args += ["--generator", generators["random"]]
    assert cli.run(cli.build_parser(), args) == 0
    assert dataset.first().unseg.class_key == ClassKeys("from-env", 1).fingerprint
    typed = [*args, "--class-key", "typed", "--overwrite"]  # the flag wins
    assert cli.run(cli.build_parser(), typed) == 0
    assert dataset.first().unseg.class_key == ClassKeys("typed", 1).fingerprint
    coloured = [*typed, "--class-style", "colour"]
    assert cli.run(cli.build_parser(), coloured) == 0
    assert dataset.first().unseg.class_key == ClassKeys("typed", 1, "colour").fingerprint


def test_the_panel_says_a_scheduled_run_has_not_run_yet(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("panel-scheduled", tmp_path, count=1)
    panel = UnSegPanel()

    def callback(result) -> dict:
        """The panel state the App's on_success callback patches, given the result."""
        params = {"panel_id": "p", "panel_state": {}, "result": result}
        executor = Executor()
        panel.operator_done(
            ExecutionContext({"dataset_name": dataset.name, "params": params}, executor=executor)
        )
        patches = [r["params"].get("state", {}) for r in executor.to_json()["requests"]]
        return {k: v for patch in patches for k, v in patch.items()}

    queued = {"run_state": "queued", "label": "Evaluate protection", "operator": "x"}
    state = callback(queued)
    assert (
        state["notice"].startswith("*Evaluate protection* is scheduled") and "headline" not in state
    )
    protect(dataset, "dets", generator=generators["random"])
    state = callback({"protected": 1})  # ran at once: the new numbers, the notice gone
    assert state["headline"].startswith("**1 of 1** samples protected") and state["notice"] is None
    assert "(as of " in state["headline"]


def test_cleared_number_fields_take_their_defaults(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("plugin-cleared", tmp_path, count=1)
    cleared = {"eps": None, "eps_bg": None, "class_mix": None, "jpeg_quality": None}
    params = {"label_field": "dets", "generator": generators["random"], **cleared}
    ctx = ExecutionContext({"dataset_name": dataset.name, "params": params})
    assert "class_key_source" not in foo.get_operator(PROTECT).resolve_input(ctx).to_json()
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.result["protected"] == 1
    assert (dataset.first().unseg.eps, dataset.first().unseg.eps_bg) == (8 / 255, 2 / 255)


def test_protect_operator_says_why_it_stopped(tmp_path, generators, monkeypatch):  # noqa: F811
    dataset = _scene_dataset("plugin-disk-full", tmp_path, count=1)
    _fail_writes_after(monkeypatch, 0, errno.ENOSPC)
    result, outputs = _protect_and_show(dataset, generators["random"])
    assert "No space left on device" in result["stopped"]
    assert result["failures"][0]["id"] == dataset.first().id
    warning = outputs["stopped"]["view"]
    assert warning["name"] == "Warning" and result["stopped"] in warning["label"]
    assert outputs["failures"]["view"]["label"] == "Failures (1)"


def test_protect_operator_runs_on_the_chosen_device(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("plugin-device", tmp_path, count=1)
    params = {"label_field": "dets", "generator": generators["random"], "device": "nope"}
    with pytest.raises(ExecutionError, match="unknown device 'nope'"):
        foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})


def test_emptied_text_fields_read_as_their_labels_say(tmp_path, generators):  # noqa: F811
    """The App sends null for an emptied text field with a default: an emptied ignore field
    ignores nothing (its label says so), and values left from a Segmentation field do not
    stop a run on a Detections field, where they mean nothing."""
    from fiftyone_unseg.plugin.forms import segment_value_params

    dataset = _scene_dataset("plugin-emptied", tmp_path, count=1)
    operator = foo.get_operator(PROTECT)

    def context(**params):
        return ExecutionContext({"dataset_name": dataset.name, "params": params})

    emptied = context(label_field="seg_db", ignore=None, background=None)
    assert "segment_values" not in operator.resolve_input(emptied).to_json()["type"]["properties"]
    assert segment_value_params(emptied, "seg_db") == ("auto", [])
    assert segment_value_params(context(label_field="seg_db"), "seg_db") == ("auto", "auto")
    left = {"label_field": "dets", "ignore": "void", "generator": generators["random"]}
    assert segment_value_params(context(**left), "dets") == ("auto", "auto")
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": left})
    assert result.error is None and result.result["protected"] == 1


def test_a_large_sample_dataset_is_generated_delegated():
    operator = foo.get_operator("@unseg/unseg/load_sample_dataset")
    for params, immediate in (({}, True), ({"num": 3000}, False), ({"size": 2048}, False)):
        options = operator.resolve_execution_options(ExecutionContext({"params": params}))
        assert options.allow_immediate_execution is immediate
        assert options.default_choice_to_delegated is not immediate
