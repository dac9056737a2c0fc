"""Real processes: protect and train killed with SIGKILL and re-run, and two protect runs
on overlapping views at once (docs/RELIABILITY.md)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import fiftyone as fo
import numpy as np
import pytest
from PIL import Image
from test_protect import _dataset, _hashes, _texture, generators  # noqa: F401
from test_trainer import _metrics, micro_config

from fiftyone_unseg import io
from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.protect import default_output_dir, protected_name

UNSEG = os.path.join(os.path.dirname(sys.executable), "unseg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(*args) -> subprocess.Popen:
    """``unseg *args`` with Ctrl-C's default meaning, as in a terminal: a test suite run in
    the background (``make test &``) would hand its children SIGINT ignored."""
    return subprocess.Popen(
        [UNSEG, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signal_when(proc: subprocess.Popen, ready, sig, timeout: float = 120) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` holds; fail if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before the signal:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    os.kill(proc.pid, sig)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it ended first."""
    _signal_when(proc, ready, signal.SIGKILL, timeout)
    proc.wait()


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 120) -> str:
    """Ctrl-C ``proc`` as soon as ``ready()`` holds; check that it ends as ``unseg`` ends an
    interrupted run (status 130, no traceback) and return its stderr."""
    _signal_when(proc, ready, signal.SIGINT, timeout)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    return err


def _check_protected(dataset) -> list[str]:
    """Every recorded protected file is complete and written for its sample."""
    dataset.reload()
    paths = []
    for sample_id, path in zip(*dataset.values(["id", "protected_filepath"])):
        if path:
            with Image.open(path) as image:
                image.load()  # raises for a partial file
            assert io.marker(path) == io.owner_of(dataset, sample_id)
            paths.append(path)
    return paths


@pytest.mark.slow
def test_protect_killed_mid_run_then_rerun_protects_each_sample_once(tmp_path, generators):  # noqa: F811
    images = {f"k{i:02d}.jpg": Image.fromarray(_texture(384, 384, i)) for i in range(24)}
    dataset = _dataset("killed", tmp_path, images)
    originals = _hashes(dataset.values("filepath"))
    output = default_output_dir(dataset)
    args = ["protect", "--dataset", "killed", "--label-field", "dets", "--batch-size", "2",
            "--generator", generators["random"], "--replace-filepath"]  # fmt: skip

    def some_written() -> bool:
        return os.path.isdir(output) and sum(n.endswith(".png") for n in os.listdir(output)) >= 4

    _kill_when(_start(*args), some_written)
    assert 0 < len(_check_protected(dataset)) < 24
    undone = dataset.match(fo.ViewField("protected_filepath") == None).first()  # noqa: E711
    name = protected_name(undone.filepath, undone.id, "png")
    with open(os.path.join(output, f".{name}.abc123.unseg-tmp"), "wb") as partial:
        partial.write(b"\x89PNG half")  # what a kill during its write leaves
    rerun = subprocess.run([UNSEG, *args], capture_output=True, text=True, env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(r"Protected \d+ of 24 samples \([1-9]\d* already protected", rerun.stdout)
    paths = _check_protected(dataset)
    assert len(set(paths)) == 24 and dataset.values("filepath") == dataset.values(
        "protected_filepath"
    )
    assert sorted(os.listdir(output)) == sorted(os.path.basename(p) for p in paths)
    assert _hashes(originals) == originals


@pytest.mark.slow
def test_training_killed_mid_run_resumes_from_the_last_complete_checkpoint(tmp_path):
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(micro_config(max_steps=400, checkpoint_every=3).to_dict()))
    out = tmp_path / "run"
    latest = out / "checkpoints" / "latest"
    _kill_when(_start("train", "--config", str(config), "--out", str(out)), latest.exists)
    step = int(latest.read_text().split("_")[1])
    checkpoints = out / "checkpoints"
    (checkpoints / f"step_{step + 3:08d}.tmp-1").mkdir()  # a save the kill interrupted
    (checkpoints / f"step_{step + 3:08d}.tmp-1" / "trainer_state.pt").write_bytes(b"PK\x03")
    args = ["--config", str(config), "--out", str(out), "--max-steps", str(step + 4)]
    resumed = subprocess.run(
        [UNSEG, "train", *args, "--resume"], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stderr
    assert f"Trained {step + 4} steps" in resumed.stdout
    assert load_generator(out / "generator").generator_id
    assert _metrics(out)[-1]["step"] == str(step + 4)


@pytest.mark.slow
def test_two_runs_on_overlapping_views_leave_each_sample_consistent(tmp_path, generators):  # noqa: F811
    images = {f"c{i:02d}.png": Image.fromarray(_texture(256, 256, i)) for i in range(16)}
    dataset = _dataset("concurrent", tmp_path, images)
    dataset.save_view("first", dataset.limit(11))
    dataset.save_view("last", dataset.skip(5))
    common = ["--dataset", "concurrent", "--label-field", "dets", "--batch-size", "2",
              "--generator", generators["random"]]  # fmt: skip
    runs = [
        _start("protect", *common, "--view", "first", "--eps", "8/255"),
        _start("protect", *common, "--view", "last", "--eps", "4/255", "--eps-bg", "1/255"),
    ]
    outputs = [proc.communicate(timeout=300) for proc in runs]
    assert all(proc.returncode == 0 for proc in runs), outputs
    dataset.reload()
    assert len(set(_check_protected(dataset))) == 16
    for sample in dataset:  # the recorded facts describe the file on disk
        noise = np.abs(io.read_rgb(sample.protected_filepath) - io.read_rgb(sample.filepath))
        assert noise.max() == pytest.approx(sample.unseg.linf, abs=1e-6)
        assert noise.max() <= sample.unseg.eps + 1e-6


def test_ctrl_c_says_how_to_go_on_in_one_line(tmp_path, generators):  # noqa: F811
    # enough images that the run is still going when the signal lands
    images = {f"i{i:03d}.png": Image.fromarray(_texture(256, 256, i)) for i in range(400)}
    dataset = _dataset("interrupted", tmp_path, images)
    output = default_output_dir(dataset)
    proc = _start("protect", "--dataset", "interrupted", "--label-field", "dets",
                  "--batch-size", "2", "--generator", generators["random"])  # fmt: skip
    err = _interrupt_when(proc, lambda: os.path.isdir(output) and os.listdir(output))
    assert err.rstrip().endswith("unseg protect: interrupted; re-run the same command to resume")


def test_an_audit_stopped_with_ctrl_c_resumes_with_its_finished_trainings(tmp_path):
    from fiftyone_unseg import sample_data
    from fiftyone_unseg.audit.reuse import TRAINED_FILE

    sample_data.create_sample_dataset("audit-stopped", num=12, size=64, overwrite=True)
    out = tmp_path / "audit"
    audit = ["evaluate", "--dataset", "audit-stopped", "--label-field", "instances",
             "--victims", "semantic", "--protected-field", "none", "--baselines", "pattern",
             "--seeds", "2", "--epochs", "2", "--image-size", "64", "--output-dir", str(out)]  # fmt: skip
    first = out / "semantic" / "clean" / TRAINED_FILE
    proc = _start(*audit)
    err = _interrupt_when(proc, first.exists, timeout=300)  # the first training is finished
    assert err.rstrip().endswith(
        "unseg evaluate: interrupted; re-run the same command to resume (finished trainings "
        "are kept; with --retrain-clean all train again)"
    )
    kept = os.stat(first)
    done = subprocess.run([UNSEG, *audit], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert os.stat(first).st_ino == kept.st_ino  # taken, not trained and recorded again
    assert (out / "semantic" / "pattern-seed1" / TRAINED_FILE).exists()
    assert "| semantic | mIoU |" in done.stdout


def test_a_reader_that_stops_reading_ends_the_output_quietly():
    fo.Dataset("piped", persistent=True, overwrite=True)
    proc = _start("status", "--dataset", "piped", "--json")
    proc.stdout.close()  # as `| head -1` does once it has its line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and not err, err


def test_help_and_argument_errors_load_neither_fiftyone_nor_torch():
    """``unseg --help`` took 10 s when every verb's modules were imported to build it."""
    code = (
        "import sys\nfrom trainer.cli import main\n"
        "for argv in (['--help'], ['protect', '--help'], ['train', '--help'],"
        " ['protect', '--dataset', 'd', '--label-field', 'f', '--eps', '0.03']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('loaded:', sorted(m for m in ('fiftyone', 'torch') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.stdout.endswith("loaded: []\n"), proc.stdout[-500:] + proc.stderr[-2000:]
    assert "'0.03' is ambiguous" in proc.stderr


# An export whose exporter has begun writing when the process dies.
KILLED_EXPORT = """
import os, sys
import fiftyone as fo
from fiftyone_unseg import export_protected

def killed(self, export_dir, **kwargs):
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, "labels.json"), "w") as f:
        f.write("half")
    os._exit(9)

fo.Dataset.export = killed
export_protected(fo.load_dataset(sys.argv[1]), sys.argv[2], "coco", "dets", overwrite=True)
"""


def test_an_export_killed_on_the_way_is_undone_by_the_next(tmp_path, generators):  # noqa: F811
    from fiftyone_unseg import export_protected, protect

    dataset = _dataset(
        "export-killed", tmp_path / "scenes", {"a.png": Image.fromarray(_texture(64, 64))}
    )
    dataset.persistent = True
    protect(dataset, "dets", generator=generators["random"])
    out, new = tmp_path / "out", tmp_path / "new"
    export_protected(dataset, str(out), "coco", "dets")
    earlier = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed_export(folder):
        args = [sys.executable, "-c", KILLED_EXPORT, dataset.name, str(folder)]
        proc = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300)
        assert proc.returncode == 9, proc.stderr[-2000:]
        assert (folder / "labels.json").read_text() == "half"

    # an export to out.v2 in progress: its work folder is none of out's business
    sibling = tmp_path / ".out.v2.abcd1234.unseg-export"
    (sibling / "replaced").mkdir(parents=True)
    state = {"export_dir": str(tmp_path / "out.v2"), "existed": True, "moved": True}
    (sibling / "state.json").write_text(json.dumps(state))
    killed_export(out)  # replacing the earlier export
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".unseg-export")]) == 2
    with pytest.raises(ValueError, match="is not empty"):  # it is the earlier export again
        export_protected(dataset, str(out), "coco", "dets")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == earlier
    assert sorted(os.listdir(tmp_path)) == [sibling.name, "out", "scenes"]
    shutil.rmtree(sibling)

    killed_export(new)  # into a new folder
    summary = export_protected(dataset, str(new), "coco", "dets")
    assert summary["recovered"] == [f"{new}: what an interrupted export had written was removed"]
    assert {str(p.relative_to(new)) for p in new.rglob("*") if p.is_file()} == {
        "labels.json",
        "data/a.png",
    }
    assert json.loads((new / "labels.json").read_text())["images"]
    assert sorted(os.listdir(tmp_path)) == ["new", "out", "scenes"]
