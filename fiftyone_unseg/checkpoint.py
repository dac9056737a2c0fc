"""Save and load trained generators as checkpoint directories.

A checkpoint is a directory holding ``model.safetensors`` (the full state dict) and
``config.json`` (the :class:`SamConfig` plus metadata). Nothing is ever unpickled.
"""

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .io import FILE_MODE
from .modeling import NoiseGenerator, SamConfig, build_noise_generator
from .settings import GENERATORS, PRESETS

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "fiftyone-unseg-generator"
DEFAULT_GENERATOR_DIR = Path(__file__).parent / "weights" / "default"


def shipped_generator_dir(name: str) -> Path:
    """The folder of a shipped generator (:data:`fiftyone_unseg.settings.GENERATORS`)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown shipped generator {name!r}; choose one of {list(GENERATORS)}")
    return DEFAULT_GENERATOR_DIR if name == "default" else DEFAULT_GENERATOR_DIR.with_name(name)


def save_generator(
    model: NoiseGenerator,
    config: SamConfig,
    path: str | os.PathLike,
    extra_metadata: dict[str, Any] | None = None,
) -> str:
    """Write ``path/model.safetensors`` and ``path/config.json`` atomically.

    Both files are written to temporary files in ``path``, synced, then moved over any
    previous checkpoint there. ``extra_metadata`` must be JSON-serialisable.
    Returns the generator id (first 12 hex digits of the tensor file's sha256). The
    config's own hash is recorded too, so an edited config is refused on loading: the
    id names the weights and the settings they were saved with.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _check_finite(tensors, "the generator to save")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    weights_tmp, config_tmp = _temp_path(directory), _temp_path(directory)
    try:
        save_file(tensors, weights_tmp)
        fsync_path(weights_tmp)
        generator_id = _file_id(weights_tmp)
        info = {
            "format": FORMAT,
            "generator_id": generator_id,
            "config_id": _config_id(config.to_dict()),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "config": config.to_dict(),
            "metadata": extra_metadata or {},
        }
        config_tmp.write_text(json.dumps(info, indent=2))
        fsync_path(config_tmp)
        for tmp in (weights_tmp, config_tmp):  # mkstemp's files are private (0600)
            tmp.chmod(FILE_MODE)
        os.replace(weights_tmp, directory / WEIGHTS_FILE)
        os.replace(config_tmp, directory / CONFIG_FILE)
    finally:
        weights_tmp.unlink(missing_ok=True)
        config_tmp.unlink(missing_ok=True)
    fsync_path(directory)
    return generator_id


def load_generator(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> NoiseGenerator:
    """Load a checkpoint directory (or the ``.safetensors`` file in it) in eval mode.

    ``path=None`` loads the default generator shipped in ``fiftyone_unseg/weights/default/``;
    a shipped generator's name (``"robust"``), unless a folder of that name exists, that one.
    The returned model has ``.config``, ``.generator_id`` and ``.metadata`` (what the
    save recorded: the training run, and the generator it started from) set. Raises
    FileNotFoundError for missing files and ValueError for anything that is not a matching
    safetensors checkpoint (config/tensor mismatch, pickles, modified files, a config
    edited after the save).
    """
    weights = _resolve_weights(path)
    config_path = weights.with_name(CONFIG_FILE)
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; save checkpoints with save_generator")
    try:
        info = json.loads(config_path.read_text())
        config = SamConfig.from_dict(info["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{config_path} is not a valid generator config: {error!r}") from error

    with torch.device("meta"):  # shapes only: a hostile config allocates nothing
        expected = {
            k: tuple(v.shape) for k, v in build_noise_generator(config).state_dict().items()
        }
    mismatches = _compare_shapes(expected, _tensor_shapes(weights))
    if mismatches:
        raise ValueError(
            f"{config_path} (config {config.name!r}) does not match the tensors in {weights}: "
            + "; ".join(mismatches[:8])
            + (f"; and {len(mismatches) - 8} more" if len(mismatches) > 8 else "")
        )
    generator_id = _file_id(weights)
    if info.get("generator_id") != generator_id:
        raise ValueError(
            f"{weights} has id {generator_id} but {config_path} records "
            f"{info.get('generator_id')}: the files come from different saves or were modified"
        )
    config_id = info.get("config_id")  # saves before it was recorded have none
    if config_id is not None and config_id != _config_id(info["config"]):
        raise ValueError(
            f"{config_path}: its generator settings were edited after the save, so its id "
            f"{generator_id} would name noise it no longer makes; copies protected with it "
            "could not be told apart. Save the edited generator again "
            "(fiftyone_unseg.save_generator) to give it an id of its own"
        )
    model = build_noise_generator(config)
    tensors = load_file(weights)
    _check_finite(tensors, str(weights))
    model.load_state_dict(tensors)
    model.generator_id = generator_id
    model.metadata = info.get("metadata") or {}
    return model.to(device).eval()


def _check_finite(tensors: dict, what: str) -> None:
    """ValueError naming ``what`` and its first tensors holding NaN or infinite values
    (a training that diverged): noise from them would leave the budget."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(
            f"{what}: {', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''} hold NaN or "
            "infinite values (did its training diverge?); use another generator"
        )


# What a training writes in its output folder (trainer/): deleted when it is replaced.
RUN_OUTPUTS = (
    "checkpoints",
    "generator",
    "tensorboard",
    "metrics.csv",
    "summary.json",
    "train_config.json",
)


def clear_run_outputs(folder: str | os.PathLike) -> None:
    """Delete what a training wrote to ``folder`` (:data:`RUN_OUTPUTS`)."""
    for name in RUN_OUTPUTS:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def generator_id(path: str | os.PathLike | None = None) -> str:
    """The id of the generator at ``path`` (a checkpoint folder, its tensor file or a
    shipped generator's name; None: the default) without building it: its weights' digest."""
    return _file_id(_resolve_weights(path))


def _resolve_weights(path: str | os.PathLike | None) -> Path:
    """The tensor file to load for ``path`` (a checkpoint directory or its tensor file)."""
    if path is None or (path in GENERATORS and not os.path.exists(path)):
        name = path or "default"
        weights = shipped_generator_dir(name) / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"No {name} generator is installed yet (expected {weights}). Train one with "
                f"`unseg train --config {'tiny' if name == 'default' else name}` and pass its "
                "output directory as the path."
            )
        return weights
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    elif path.is_file() and path.suffix != ".safetensors":
        raise ValueError(
            f"{path} is not a generator checkpoint: pass a directory holding {WEIGHTS_FILE} and "
            f"{CONFIG_FILE}, or that {WEIGHTS_FILE}. Pickle files (.pt, .pth) are never loaded; "
            "official SAM weights go through build_noise_generator(..., sam_checkpoint=...)."
        )
    if not path.is_file():
        preset = f": {path} is a preset, give it as the preset" if str(path) in PRESETS else ""
        raise FileNotFoundError(
            f"generator checkpoint not found: {path} (a folder holding {WEIGHTS_FILE} and "
            f"{CONFIG_FILE}, or a shipped generator: {', '.join(GENERATORS)}){preset}"
        )
    return path


def _tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Read tensor names and shapes from a safetensors header without loading data."""
    try:
        with safe_open(weights, framework="pt") as file:
            return {k: tuple(file.get_slice(k).get_shape()) for k in file.keys()}
    except SafetensorError as error:
        raise ValueError(f"{weights} is not a safetensors file: {error}") from error


def _compare_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    """Human-readable differences between two name -> shape maps."""
    return (
        [f"missing {k}" for k in sorted(set(expected) - set(found))]
        + [f"unexpected {k}" for k in sorted(set(found) - set(expected))]
        + [
            f"{k}: config gives {expected[k]}, file has {found[k]}"
            for k in sorted(set(expected) & set(found))
            if expected[k] != found[k]
        ]
    )


def _temp_path(directory: Path) -> Path:
    """A new empty hidden temporary file in ``directory`` (same filesystem as the target)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    os.close(fd)
    return Path(name)


def fsync_path(path) -> None:
    """Flush a file's or a folder's entries to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _config_id(config: dict) -> str:
    """First 12 hex digits of the sha256 of ``config`` as canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_id(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
