"""Previewing protection: protect N samples first, see how visible the noise is, go on."""

import os
import re

import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext
from test_protect import _scene_dataset, generators  # noqa: F401

from fiftyone_unseg import cli

PROTECT = "@unseg/unseg/protect_samples"


def _files(dataset) -> dict:
    """Sample id -> (bytes, mtime) of its protected copy, for the protected samples."""
    ids, paths = dataset.values(["id", "protected_filepath"])
    return {i: (open(p, "rb").read(), os.stat(p).st_mtime_ns) for i, p in zip(ids, paths) if p}


def _expected_line(dataset, ids) -> str:
    """What the preview says of the samples ``ids``, from their recorded facts."""
    view = dataset.select(ids)
    psnr, linf = view.values("unseg.psnr"), view.values("unseg.linf")
    return (
        f"{len(ids)} protected samples: PSNR mean {np.mean(psnr):.1f} dB "
        f"(min {min(psnr):.1f}), largest change {max(linf) * 255:.1f}/255"
    )


def test_cli_limit_previews_n_samples_and_a_full_run_does_the_rest(
    tmp_path,
    generators,  # noqa: F811
    capsys,
):
    dataset = _scene_dataset("preview-cli", tmp_path, count=6)
    parser = cli.build_parser()
    args = ["protect", "--dataset", "preview-cli", "--label-field", "dets"]
    args += ["--generator", generators["random"]]
    assert cli.run(parser, [*args, "--limit", "2"]) == 0
    out = capsys.readouterr().out
    dataset.reload()
    picked = dataset.exists("protected_filepath").values("id")
    assert sorted(picked) == sorted(dataset.take(2, seed=0).values("id"))
    assert "Protected 2 of 2 samples" in out
    assert f"Preview: {_expected_line(dataset, picked)}" in out
    assert max(dataset.values("unseg.linf", missing_value=0)) > 0  # there is noise to see
    # The command it suggests shows exactly the previewed samples' noise.
    [look] = re.findall(r"unseg (visualize --dataset \S+ --amplified-field \S+)", out)
    assert cli.run(parser, look.rstrip(",").split()) == 0
    assert "Stored the noise of 2 samples" in capsys.readouterr().out
    previewed = _files(dataset)

    assert cli.run(parser, args) == 0
    out = capsys.readouterr().out
    assert "Protected 4 of 6 samples (2 already protected" in out
    assert "Preview" not in out
    dataset.reload()
    assert len(dataset.exists("protected_filepath")) == 6
    files = _files(dataset)
    assert {i: files[i] for i in previewed} == previewed  # the preview's copies are kept
    assert "had a copy made with other settings" not in out

    assert cli.run(parser, [*args, "--limit", "2", "--eps", "4"]) == 0  # another budget
    out = capsys.readouterr().out
    assert "Protected 2 of 2 samples" in out
    assert "2 of them had a copy made with other settings or from an earlier picture" in out


def test_cli_limit_must_be_positive(capsys):
    parser = cli.build_parser()
    for bad in ("0", "-3", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["protect", "--dataset", "x", "--label-field", "y", "--limit", bad])
        assert "--limit" in capsys.readouterr().err


def test_app_form_previews_n_samples_and_shows_their_psnr(tmp_path, generators):  # noqa: F811
    dataset = _scene_dataset("preview-app", tmp_path, count=5)
    operator = foo.get_operator(PROTECT)
    form = operator.resolve_input(ExecutionContext({"dataset_name": dataset.name, "params": {}}))
    field = form.to_json()["type"]["properties"]["preview"]
    assert field["type"]["name"] == "Number" and field["default"] == 0

    params = {"label_field": "dets", "generator": generators["random"], "preview": 2}
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert (result.result["protected"], result.result["total"]) == (2, 2)
    dataset.reload()
    picked = dataset.exists("protected_filepath").values("id")
    assert sorted(picked) == sorted(dataset.take(2, seed=0).values("id"))  # as --limit 2
    shown = operator.resolve_output(ExecutionContext({"results": result.result, "params": params}))
    notice = shown.to_json()["type"]["properties"]["visibility_line"]["view"]
    assert notice["name"] == "Notice"
    assert notice["label"].startswith(_expected_line(dataset, picked))
    assert "protected_filepath" in notice["label"]  # how to look at them
    previewed = _files(dataset)

    params = {**params, "preview": 0}
    result = foo.execute_operator(PROTECT, ctx={"dataset": dataset.name, "params": params})
    assert result.error is None, result.error
    assert (result.result["protected"], result.result["skipped"]) == (3, 2)
    assert result.result["visibility"]["count"] == 5
    dataset.reload()
    files = _files(dataset)
    assert len(files) == 5 and {i: files[i] for i in previewed} == previewed
