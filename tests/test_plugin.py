"""The plugin as FiftyOne itself sees it: discovery, listing, running an operator."""

import os
import subprocess
import sys

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.plugins as fop

OPERATORS = {
    "load_sample_dataset",
    "protect_samples",
    "restore_originals",
    "visualize_noise",
    "evaluate_protection",
}


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


def test_fiftyone_cli_lists_plugin_and_operators():
    assert "@unseg/unseg" in _fiftyone_cli("plugins", "list")
    listed = _fiftyone_cli("operators", "list")
    for name in OPERATORS:
        assert f"@unseg/unseg/{name}" in listed


def test_load_sample_dataset_operator_creates_dataset():
    result = foo.execute_operator(
        "@unseg/unseg/load_sample_dataset",
        ctx={"params": {"name": "from-operator", "num": 3, "seed": 2, "size": 64}},
    )
    assert result.error is None, result.error
    assert result.result == {"dataset": "from-operator", "num_samples": 3}
    ds = fo.load_dataset("from-operator")
    assert ds.count("instances.detections") > 0 and ds.info["seed"] == 2
