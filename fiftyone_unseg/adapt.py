"""Adapt the shipped generator to one dataset before protecting it.

:func:`adapt_generator` runs ``unseg train --config adapt`` (or another recipe of
:data:`RECIPES`; the trainer, in its own process: this package never imports it) on the
dataset's label field and returns the adapted generator's folder, which
``protect(..., generator=...)`` takes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

from fiftyone_unseg.io import safe_name

# trainer/configs/<recipe>.json -> its bilevel steps: a fresh surrogate every block (about
# 10 minutes on an idle 2-core CPU), or one that keeps learning (about 40 minutes on one
# core; on the pets it kept YOLO's protection through JPEG 75, blur and half-scale,
# docs/GENERATOR_HISTORY.md)
RECIPES = {"adapt": 600, "adapt_learning": 2400}
ADAPT_VIEW = "unseg-adapt"  # the saved view a view of samples is trained through
_POLL_S = 2.0


def default_output_dir(dataset_name: str) -> str:
    """``<fo.config.default_dataset_dir>/unseg-generators/<dataset>``."""
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
) -> str:
    """Fine-tune a trained generator on ``samples``' ``label_field``; returns the folder
    of the adapted generator (``<output_dir>/generator``).

    Arguments:
      samples: a dataset or view (a view is saved as the saved view
        :data:`ADAPT_VIEW`, replacing an earlier one, so the trainer sees the same samples).
      label_field: the masks to train on (each instance or class region is one object).
      output_dir: the training run's folder (metrics, checkpoints, the generator); default
        :func:`default_output_dir`. A stopped run in it resumes; one with other settings
        is replaced.
      steps, init, device, seed: the training's length (bilevel steps; None: the
        recipe's own), starting generator ("default" or a checkpoint folder), torch
        device and seed.
      recipe: a key of :data:`RECIPES`, the trainer config to adapt with.
      progress: optional ``progress(done, total)`` callable, in steps.

    Raises RuntimeError with the trainer's last lines if it fails.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown adaptation recipe {recipe!r}: choose one of {list(RECIPES)}")
    steps = RECIPES[recipe] if steps is None else steps
    dataset = samples._dataset
    source = dataset.name
    if samples is not dataset:
        dataset.save_view(ADAPT_VIEW, samples, overwrite=True)
        source = f"{dataset.name}@{ADAPT_VIEW}"
    out = os.path.abspath(output_dir or default_output_dir(dataset.name))
    command = [
        sys.executable, "-m", "trainer.cli", "train", "--config", recipe,
        "--init", init, "--data", f"fiftyone:{source}:{label_field}", "--out", out,
        "--max-steps", str(steps), "--device", device, "--seed", str(seed),
    ]  # fmt: skip
    try:
        _run([*command, "--resume"], out, steps, progress)
    except RuntimeError as error:
        if "another config" not in str(error):
            raise
        _run([*command, "--overwrite"], out, steps, progress)  # another training's folder
    return os.path.join(out, "generator")


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
    log_path = out + ".log"
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env
        )
        while process.poll() is None:
            time.sleep(_POLL_S)
            if progress is not None:
                progress(min(_logged_step(out), steps), steps)
    if process.returncode:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-8:])
        raise RuntimeError(f"adapting the generator failed (log: {log_path}):\n{tail}")
    if progress is not None:
        progress(steps, steps)


def _logged_step(out: str) -> int:
    """The last step in ``<out>/metrics.csv`` (0 before the first)."""
    try:
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return 0
    return int(rows[-1]["step"]) if rows else 0
