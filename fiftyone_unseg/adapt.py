"""Adapt the shipped generator to one dataset before protecting it.

:func:`adapt_generator` runs ``unseg train --config adapt`` (or another recipe of
:data:`RECIPES`; the trainer, in its own process: this package never imports it) on the
dataset's label field and returns the adapted generator's folder, which
``protect(..., generator=...)`` takes. Each training's folder records what it learned
from (:data:`SOURCE_FILE`), so adapting the same samples again returns it at once and
adapting other samples or labels never returns, nor replaces, a generator of theirs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time

from fiftyone_unseg.checkpoint import clear_run_outputs, generator_id
from fiftyone_unseg.io import atomic_write_bytes, safe_name, try_lock, unlock
from fiftyone_unseg.protect import check_images

# trainer/configs/<recipe>.json -> its bilevel steps: a fresh surrogate every block (about
# 10 minutes on an idle 2-core CPU), or one that keeps learning (about 40 minutes on one
# core; on the pets it kept YOLO's protection through JPEG 75, blur and half-scale,
# docs/GENERATOR_HISTORY.md)
RECIPES = {"adapt": 600, "adapt_learning": 2400}
ADAPT_VIEW = "unseg-adapt"  # the start of the saved view a view is trained through
SOURCE_FILE = "adapted_on.json"  # in a training's folder: the samples and settings it used
_POLL_S = 2.0


def default_output_dir(dataset_name: str) -> str:
    """``<fo.config.default_dataset_dir>/unseg-generators/<dataset>``: each adaptation
    trains in a folder of its own under it, named by recipe and :func:`training_fingerprint`."""
    import fiftyone as fo

    safe = safe_name(dataset_name, "dataset")
    return os.path.join(fo.config.default_dataset_dir, "unseg-generators", safe)


def adapt_generator(
    samples,
    label_field: str,
    output_dir: str | None = None,
    steps: int | None = None,
    init: str = "default",
    device: str = "cpu",
    seed: int = 0,
    progress=None,
    recipe: str = "adapt",
    overwrite: bool = False,
) -> str:
    """Fine-tune a trained generator on ``samples``' ``label_field``; returns the folder
    of the adapted generator (``<output_dir>/generator``).

    Arguments:
      samples: a dataset or view (a view is saved as the saved view
        :func:`adapt_view_name` while the trainer runs, so it sees the same samples).
      label_field: the masks to train on (each instance or class region is one object).
      output_dir: the training run's folder (metrics, checkpoints, the generator); default
        ``<default_output_dir>/<recipe>-<fingerprint>``, one per samples, labels and
        settings. A stopped run of the same samples and settings in it resumes (a
        finished one is returned as it is); FileExistsError if it holds a training on
        other samples, labels or settings, unless ``overwrite``.
      steps, init, device, seed: the training's length (bilevel steps; None: the
        recipe's own), starting generator ("default" or a checkpoint folder), torch
        device and seed.
      recipe: a key of :data:`RECIPES`, the trainer config to adapt with.
      progress: optional ``progress(done, total)`` callable, in steps.
      overwrite: replace the training ``output_dir`` holds if it learned from other
        samples, labels or settings (its generator is deleted).

    Raises RuntimeError with the trainer's last lines if it fails, and before any work
    while another adaptation trains into ``output_dir`` (a second click in the App).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown adaptation recipe {recipe!r}: choose one of {list(RECIPES)}")
    steps = RECIPES[recipe] if steps is None else steps
    check_images(samples, "adapt")
    dataset = samples._dataset
    settings = {
        "recipe": recipe,
        "label_field": label_field,
        "steps": steps,
        "init": init,
        "init_id": generator_id(init),  # a retrained init is another starting point
        "seed": seed,
    }
    source = {
        "dataset": dataset.name,
        "samples": len(samples),
        **settings,
        "fingerprint": training_fingerprint(samples, label_field, settings),
    }
    default_dir = os.path.join(
        default_output_dir(dataset.name), f"{recipe}-{source['fingerprint']}"
    )
    out = os.path.abspath(output_dir or default_dir)
    lock_path = out + ".lock"  # beside the folder, which a replacing run empties
    lock = try_lock(lock_path)
    if lock is None:
        raise RuntimeError(
            f"{out} is in use by another adaptation (it holds {lock_path}): wait for it to "
            "finish, or choose another output folder"
        )
    try:
        replace = overwrite or not output_dir  # our own folder is ours to replace
        start_over = _claim(out, source, replace)
        data, view_name = dataset.name, adapt_view_name(source["fingerprint"], out)
        if samples is not dataset:  # one per adaptation: another running beside reads its own
            dataset.save_view(view_name, samples, overwrite=True)
            data = f"{dataset.name}@{view_name}"
        try:
            return _adapt(data, label_field, recipe, init, out, steps, device, seed,
                          start_over, replace, progress)  # fmt: skip
        finally:
            if dataset.has_saved_view(view_name):
                dataset.delete_saved_view(view_name)
    finally:
        unlock(lock, lock_path)


def adapt_view_name(fingerprint: str, out: str) -> str:
    """The saved view an adaptation of a view trains through while it runs:
    ``<ADAPT_VIEW>-<fingerprint>-<8 hex digits of the output folder>``, so two adaptations
    of the same samples into two folders never share (and delete) one view."""
    return f"{ADAPT_VIEW}-{fingerprint}-{hashlib.sha256(out.encode()).hexdigest()[:8]}"


def _adapt(
    data, label_field, recipe, init, out, steps, device, seed, start_over, replace, progress
):
    """Run the trainer on ``fiftyone:<data>:<label_field>`` in ``out`` (resuming unless
    ``start_over``; a finished training is returned as it is); the adapted generator's
    folder."""
    if not start_over and _finished(out, steps):
        if progress is not None:
            progress(steps, steps)
        return os.path.join(out, "generator")
    if os.path.exists(init):  # a folder: found from the trainer's own working directory too
        init = os.path.abspath(init)
    command = [
        sys.executable, "-m", "trainer.cli", "train", "--config", recipe,
        "--init", init, "--data", f"fiftyone:{data}:{label_field}", "--out", out,
        "--max-steps", str(steps), "--device", device, "--seed", str(seed),
    ]  # fmt: skip
    if not start_over:
        try:
            _run([*command, "--resume"], out, steps, progress)
            return os.path.join(out, "generator")
        except RuntimeError as error:
            refused = ("another config", "training pairs, --data now")  # recipe or data changed
            if not any(why in str(error) for why in refused) or not replace:
                raise
    clear_run_outputs(out)  # now, not once the trainer is set up: progress reads metrics.csv
    _run([*command, "--overwrite"], out, steps, progress)
    return os.path.join(out, "generator")


def training_fingerprint(samples, label_field: str, settings: dict) -> str:
    """12 hex digits of a digest of what an adaptation learns from: the samples' ids, their
    original images' paths and their ``label_field`` as protection hashes it
    (:func:`fiftyone_unseg.protect.label_hash`), and ``settings``."""
    from fiftyone_unseg.protect import label_hash, original_paths

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    ids, labels = samples.values(["id", label_field])
    rows = sorted(zip(ids, original_paths(samples), labels), key=lambda row: row[0])
    for sample_id, path, label in rows:
        digest.update(f"{sample_id}:{path}:{label_hash(label)}".encode())
    return digest.hexdigest()[:12]


def _claim(out: str, source: dict, replace: bool) -> bool:
    """Record in ``out`` what the training there learns from; True if an earlier training
    on other samples, labels or settings must be replaced (``replace``), False if there
    is none or it is this one's (to resume). FileExistsError where one must not be."""
    path = os.path.join(out, SOURCE_FILE)
    trained = any(os.path.exists(os.path.join(out, d)) for d in ("checkpoints", "generator"))
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (FileNotFoundError, ValueError):
        earlier = {}
    if not trained:  # nothing there to keep
        earlier = None
    if earlier is not None and earlier.get("fingerprint") == source["fingerprint"]:
        return False
    if earlier is not None and not replace:
        what = (
            f"{earlier.get('samples')} samples of {earlier.get('dataset')!r}, field "
            f"{earlier.get('label_field')!r}, recipe {earlier.get('recipe')!r}"
            if earlier
            else "a training this function did not record"
        )
        raise FileExistsError(
            f"{out} holds a generator adapted to other samples, labels or settings "
            f"({what}): choose another output folder, or overwrite=True (the App's "
            "'Replace' box) to delete it and train there"
        )
    if earlier is not None:  # gone before the new record names the folder: a run that
        clear_run_outputs(out)  # fails before training cannot leave the old as the new
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(json.dumps(source, indent=1).encode(), path)
    return earlier is not None


def training_warnings(generator_dir: str) -> list:
    """What the training that wrote ``generator_dir`` warned about (its ``summary.json``),
    e.g. a surrogate that never learned the masks; [] where it recorded none."""
    try:
        with open(os.path.join(os.path.dirname(generator_dir), "summary.json")) as f:
            return json.load(f).get("warnings", [])
    except (OSError, ValueError):
        return []


def _run(command: list, out: str, steps: int, progress) -> None:
    """Run the trainer on this process's FiftyOne database, reporting the step it logged
    last; its output goes to ``<out>.log``."""
    import fiftyone as fo

    env = {**os.environ, "FIFTYONE_DATABASE_NAME": fo.config.database_name}
    if fo.config.database_uri:
        env["FIFTYONE_DATABASE_URI"] = fo.config.database_uri
    # A plugin downloaded into FiftyOne's plugins folder, not pip-installed, is importable
    # only through the path its __init__ set in this process: the trainer's needs it too.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    log_path = out + ".log"
    os.makedirs(out, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(  # in ``out``: a ``trainer`` package of the caller's
            command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=out
        )  # working directory must not shadow ours
        try:
            while process.poll() is None:
                time.sleep(_POLL_S)
                if progress is not None:
                    progress(min(_logged_step(out), steps), steps)
        except BaseException:  # interrupted, or the progress callback failed: no orphan
            process.terminate()  # keeps training into the folder a retry resumes
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
    if process.returncode:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-8:])
        raise RuntimeError(f"adapting the generator failed (log: {log_path}):\n{tail}")
    if progress is not None:
        progress(steps, steps)


def _finished(out: str, steps: int) -> bool:
    """Whether the training in ``out`` ran its ``steps`` and saved its generator (its
    ``summary.json`` is written last)."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f).get("steps") == steps
    except (OSError, ValueError):
        return False


def _logged_step(out: str) -> int:
    """The last step in ``<out>/metrics.csv`` (0 before the first)."""
    try:
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return 0
    return int(rows[-1]["step"]) if rows else 0
