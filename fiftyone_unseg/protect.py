"""Protect a FiftyOne dataset: add UnSeg's bounded noise to every image.

One image on its way from ``unseg protect`` to the written file:

1. its original is read (:func:`fiftyone_unseg.io.read_rgb`) and its label field
   rasterised into segments (:func:`fiftyone_unseg.labels.segment_map`);
2. :class:`Frame` maps the image to the generator's SxS input and the prompt
   segments to mask prompts at S/4;
3. the generator turns a batch of them into noise (:func:`_generate`; with class keys
   at share 1, the whole noise, steps 2 and 3 are skipped);
4. :class:`Frame` maps the noise back to HxW; the eps map (object budget on the
   prompt segments, background budget elsewhere, at full resolution) scales it
   and it is added and clamped (:func:`_compose`);
5. the result is measured against the original, encoded with a marker naming its
   sample and dataset (:func:`fiftyone_unseg.io.owner_of`) and written atomically;
   then the sample's fields are set, in batches.

Reading the next batch and writing the previous one run in worker threads while
the generator runs. Batches hold at most ``_BATCH_PIXELS`` pixels (and ``batch_size``
images); an image larger than that is done alone, with nothing read ahead or written
behind, so memory stays bounded by the largest image. Noise is upsampled and composed
in bands of rows.

Reliability (docs/RELIABILITY.md): a process protects a sample only while it holds the
sample's lock file (see :func:`_lock_path`), so concurrent runs never work on one sample
at once; a file is only written where none exists or where the file was written for
that sample (:func:`fiftyone_unseg.io.write_owned`); a full or read-only output folder
stops the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import fiftyone as fo
import fiftyone.core.media as fom
import fiftyone.core.odm as foo
import fiftyone.core.runs as fors
import numpy as np
import torch
from bson import ObjectId
from PIL import Image

from fiftyone_unseg import io as uio
from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.class_keys import ClassKeys, default_class_key
from fiftyone_unseg.device import resolve_device
from fiftyone_unseg.geometry import CACHE_BAND_PIXELS, Frame, row_bands
from fiftyone_unseg.io import CarriedMetadata, carried_metadata, encode_marked, read_rgb
from fiftyone_unseg.labels import PromptSpec, present_values, resolve_prompt, segment_classes
from fiftyone_unseg.modeling import NoiseGenerator
from fiftyone_unseg.settings import (
    DEFAULT_EPS,
    DEFAULT_EPS_BG,
    NO_GENERATOR,
    check_budgets,
    preset_protection,
)

logger = logging.getLogger(__name__)

DEFAULT_RUN_KEY = "unseg_protect"
FORMATS = ("png", "jpg")
# The facts stored in each protected sample's ``unseg`` field.
FACT_FIELDS = {
    "generator_id": fo.StringField,
    "generator_size": fo.IntField,  # the side of its square frame (the texture attack's)
    "label_field": fo.StringField,
    "prompt": fo.StringField,
    "eps": fo.FloatField,
    "eps_bg": fo.FloatField,
    "format": fo.StringField,
    "quality": fo.IntField,
    "class_mix": fo.FloatField,
    "class_key": fo.StringField,
    "linf": fo.FloatField,
    "psnr": fo.FloatField,
    "ssim": fo.FloatField,
    "had_segments": fo.BooleanField,
    "num_segments": fo.IntField,
    "source_hash": fo.StringField,
    "source_stat": fo.StringField,
    "label_hash": fo.StringField,
}
# The fields protection writes on each sample (its record and paths).
PROTECTION_FIELDS = ("protected_filepath", "original_filepath", "unseg")
# Set alone (no facts) while a re-protection replaces a sample's copy: until it finishes,
# ``protected_filepath`` still names the copy from before.
REPLACING = "replacing"
# A sample protected with the same values of these is not protected again.
SETTINGS = (
    "generator_id",
    "label_field",
    "prompt",
    "eps",
    "eps_bg",
    "format",
    "quality",
    "class_mix",
    "class_key",
)
# What protection_states says of a sample's copy (None: it has none).
CURRENT, STALE = "current", "stale"
# The attributes of a label (or of its detections / polylines) that its segments are made of.
_PROMPT_ATTRIBUTES = ("label", "bounding_box", "points", "mask", "mask_path")

_BATCH_PIXELS = 16_000_000  # pixels per batch; a larger image is done alone
_DECODE_CHUNK = 64  # prompts decoded at once (instance mode can have many per image)
_SSIM_WINDOW = 7  # skimage's default window
_WORKERS = max(2, min(8, os.cpu_count() or 2))


@dataclasses.dataclass(frozen=True)
class _Task:
    """One sample to protect: its original image and its output file."""

    id: str
    source: str
    target: str
    pixels: int  # width x height (0: unknown), to bound the pixels in flight
    owner: str  # what the output file is marked with (fiftyone_unseg.io.owner_of)


@dataclasses.dataclass
class _Loaded:
    """A read sample, ready for the generator."""

    task: _Task
    image: np.ndarray  # HxWx3 float32 in [0, 1]
    segments: np.ndarray  # HxW integers: 0 background, k the k-th prompt segment
    names: list  # the class name of each segment
    frame: Frame
    model_input: torch.Tensor | None  # 3xSxS; None without a generator (class keys alone)
    prompts: torch.Tensor | None  # Kx1x(S/4)x(S/4): the union, then each segment (instance)
    num_segments: int
    made_from: dict  # source_hash, source_stat, label_hash: what the copy is made from
    metadata: CarriedMetadata  # what the copy keeps of the original file's metadata


def protect(
    samples,
    label_field: str,
    generator=None,
    eps: float = DEFAULT_EPS,
    eps_bg: float = DEFAULT_EPS_BG,
    prompt="all",
    output_dir: str | None = None,
    image_format: str = "png",
    jpeg_quality: int = 95,
    replace_filepath: bool = False,
    batch_size: int = 8,
    device: str = "cpu",
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress=None,
    run_key: str = DEFAULT_RUN_KEY,
    class_mix: float | None = None,
    class_key: str | None = None,
    class_style: str | None = None,
    background="auto",
    ignore="auto",
    preset: str | None = None,
) -> dict:
    """Write a protected copy of every image in ``samples``; originals are never touched.

    Arguments:
      samples: a FiftyOne dataset or view.
      label_field: a ``Segmentation``, ``Detections`` or ``Polylines`` field whose
        segments prompt the generator and get the object budget (see
        :mod:`fiftyone_unseg.labels` for how each type is rasterised).
      generator: a checkpoint directory, a shipped generator's name ("default", or
        "robust" for images that will be re-encoded or resized), a loaded
        ``NoiseGenerator``, or None: the ``preset``'s.
      eps, eps_bg: L-infinity budgets on object and background pixels, as fractions of
        the image range (8/255; at most 64/255, eps_bg <= eps).
      prompt: "all" (default, as the reference: one pass prompted with the union of
        all segments), a list of class names (the union of those classes' segments;
        other segments get the background budget), or "instance" (one extra decoder
        pass per segment with its own mask; each segment's pixels take its own
        noise, the rest the union pass's noise; the image is encoded once).
      output_dir: where protected images go; default
        ``<fo.config.default_dataset_dir>/unseg-protected/<dataset name>``. Files are
        named ``<original stem>-<sample id>.<format>``. When given, samples whose copy is
        in another folder are protected again into this one (the earlier copies deleted);
        when not, copies stay wherever they are.
      image_format: "png" (lossless, default) or "jpg" (``jpeg_quality``; lossy
        saving weakens the noise and can exceed the budgets; ``linf`` says by how much).
      replace_filepath: make the protected image the sample's ``filepath`` and keep
        the original in ``original_filepath`` (undo with :func:`restore`).
      batch_size, device: generator batch size and torch device.
      shard: (i, n): only samples whose id hashes to i modulo n, so n processes can
        protect one dataset together.
      overwrite: protect again samples already protected with the same settings.
      progress: optional ``progress(done, total)`` callable.
      run_key: key of the FiftyOne run recorded on the dataset (``_shard<i>of<n>`` is
        appended for shards).
      class_mix: share of the noise on each segment that is its class's secret texture
        (the background gets one too), the rest the generator's noise; 0: the
        generator's noise alone; 1: the textures alone, no generator runs (``generator``
        is not used; ``generator_id`` "none"); None: the preset's (0 but for "semantic"). See
        :mod:`fiftyone_unseg.class_keys`.
      class_key: the secret the class textures are drawn from; default: derived from the
        dataset's database id, so every run and shard on this dataset uses the same one.
        Only its fingerprint is recorded.
      class_style: "texture" (an 8 x 8 tile per class) or "colour" (one flat colour per
        class: survives JPEG, blur and rescaling, costs more PSNR; recorded in the
        fingerprint as ``colour:<digits>``); None: the preset's.
      background, ignore: of a Segmentation field, the pixel value that is background
        (None: every class is an object) and the values that are no class (void): both
        get the background budget. "auto" reads them from the mask targets (see
        :func:`fiftyone_unseg.labels.segment_values`); values other than FiftyOne's
        convention (0 background, nothing ignored) are recorded in ``prompt``.
      preset: a named protection (:data:`fiftyone_unseg.settings.PRESETS`): "default";
        "robust", the robust generator; "semantic", one secret flat colour per class
        instead of the generator's noise (``class_mix=1, class_style="colour"``), for
        semantic datasets. ``class_mix`` and ``class_style`` given override its own; a
        ``generator`` is refused with it.

    Each protected sample gets ``protected_filepath`` and an ``unseg`` document:
    the settings (``generator_id``, ``label_field``, ``prompt``, ``eps``, ``eps_bg``,
    ``format``, ``quality``, ``class_mix``, ``class_key``: the key's fingerprint) and
    the measured ``linf`` (in [0, 1], like the budgets), ``psnr`` (dB) and ``ssim``
    against the original, ``had_segments``, ``num_segments``, and what the copy was
    made from: ``source_hash`` (of the original image file's bytes) and ``label_hash``
    (of the stored label, see :func:`label_hash`). Samples without segments get
    background noise only. Samples already protected with the same settings from what
    they hold now (:func:`protection_states`), whose file exists, are skipped.
    Unreadable images are reported and skipped. Samples that another process is
    protecting at the same time are left to it (``busy``). A full or read-only output
    folder stops the run (``stopped``; the samples not done are failures). A re-protected
    sample's earlier copy, if elsewhere, and its noise images are deleted, and the
    fields pointing at those cleared.

    Returns a summary: ``total``, ``protected``, ``replaced`` (of the protected, those
    whose earlier copy, made with other settings or from an earlier picture, this one
    replaced), ``unnamed_values`` (Segmentation values found in the protected masks that
    the mask targets do not name: protected as object classes, and warned about, since
    an unnamed 255 border is usually void), ``skipped``, ``no_segments`` (of the
    protected, those without segments), ``busy``, ``failed``, ``failures`` (sample id,
    path and reason), ``stopped`` (why the run stopped early, else None),
    ``output_dir``, ``run_key``, ``seconds``, ``state``: how many of the run's
    samples are protected, stale and unprotected when it ends, and ``visibility``: of
    those protected, ``count``, ``psnr_mean`` and ``psnr_min`` (dB) and ``linf_max``
    (in [0, 1]; None without values). It is recorded as the run's results also when
    the run is interrupted (Ctrl-C), then re-raised.

    To preview the noise before a whole run, protect a few samples spread over the
    dataset first: ``protect(dataset.take(20, seed=0), ...)`` (``unseg protect
    --limit 20``); a later run on the whole dataset skips them.
    """
    started = time.monotonic()
    generator, class_mix, class_style = preset_protection(preset, generator, class_mix, class_style)
    image_format = _check_options(
        eps, eps_bg, image_format, jpeg_quality, batch_size, shard, run_key
    )
    check_images(samples, "protect")
    if len(samples) == 0:
        raise ValueError("nothing to protect: the collection has no samples")
    spec = resolve_prompt(samples, label_field, prompt, background, ignore)
    device = resolve_device(device)
    dataset = samples._dataset
    keys = None
    if class_mix:
        keys = ClassKeys(class_key or default_class_key(dataset), class_mix, class_style)
    model = None if keys and keys.mix == 1 else _load_model(generator, device)
    if model is None and generator is not None and preset is None:
        logger.warning("class_mix 1: the noise is the class keys alone; the generator is not used")
    settings = {
        "generator_id": model.generator_id if model else NO_GENERATOR,
        "generator_size": getattr(getattr(model, "config", None), "img_size", None),
        "label_field": label_field,
        # with class keys, which class a mask target names decides its region's texture
        "prompt": spec.name + (f";names={spec.names_digest}" if keys and spec.value_names else ""),
        "eps": float(eps),
        "eps_bg": float(eps_bg),
        "format": image_format,
        "quality": jpeg_quality if image_format == "jpg" else None,
        "class_mix": keys.mix if keys else 0.0,
        "class_key": keys.fingerprint if keys else None,
    }
    # a folder named: copies elsewhere are made again there (and the earlier ones deleted)
    folder = os.path.abspath(output_dir) if output_dir else None
    output_dir = folder or os.path.abspath(default_output_dir(dataset))
    uio.check_writable(output_dir)
    uio.check_writable(
        _lock_dir(dataset),
        "lock folder (under fiftyone's default_dataset_dir, whatever the output folder)",
    )
    _prepare_dataset(dataset, replace_filepath)
    view = _shard_view(samples, shard)
    ids, tasks = _plan(view, settings, output_dir, overwrite, folder)
    total, skipped = len(ids), len(ids) - len(tasks)
    todo = {task.id for task in tasks}
    _sync_filepaths(dataset, [i for i in ids if i not in todo], replace_filepath)
    if progress is not None:
        progress(skipped, total)

    def report(done: int) -> None:
        if progress is not None:
            progress(skipped + done, total)

    run = _Run(
        model, view, spec, settings, keys, overwrite, folder, replace_filepath, device, report
    )
    try:
        run.protect(tasks, batch_size)
    except BaseException as error:  # Ctrl-C too: the record says what was done
        run.stopped = f"interrupted ({type(error).__name__})"
        raise
    finally:
        sample_states = protection_states(view)
        states = Counter(sample_states)
        summary = {
            "total": total,
            "protected": run.protected,
            "replaced": run.replaced,
            "unnamed_values": sorted(run.unnamed, key=int),
            "skipped": skipped + run.skipped,
            "no_segments": run.no_segments,
            "busy": run.busy,
            "failed": len(run.failures),
            "failures": run.failures,
            "stopped": run.stopped,
            "output_dir": output_dir,
            "run_key": run_key if shard is None else f"{run_key}_shard{shard[0]}of{shard[1]}",
            "seconds": round(time.monotonic() - started, 3),
            "state": {
                "protected": states[CURRENT],
                "stale": states[STALE],
                "unprotected": states[None],
            },
            "visibility": _visibility(view, sample_states),
        }
        config = {
            **settings,
            "output_dir": output_dir,
            "replace_filepath": replace_filepath,
            "shard": shard,
            "batch_size": batch_size,
        }
        _record_run(samples, summary["run_key"], config, summary)
    if summary["unnamed_values"]:
        logger.warning(unnamed_warning(label_field, summary["unnamed_values"]))
    return summary


def unnamed_warning(label_field: str, values: list[str]) -> str:
    """What to say of mask values that the mask targets of ``label_field`` do not name."""
    return (
        f"values {', '.join(values)} of {label_field!r} are not in its mask targets, so they "
        "were protected as object classes; if they are void (e.g. a 255 border), declare "
        f"them ignored (--ignore {' '.join(values)}, ignore=[{', '.join(values)}] in Python, "
        "or the protect form's ignored values) and protect again, overwriting"
    )


def restore(samples, delete_protected: bool = False, progress=None) -> dict:
    """Put the original images back as ``filepath`` where protection replaced them.

    Idempotent. Protected files stay on disk and in ``protected_filepath`` unless
    ``delete_protected``: then the files this package wrote for these samples (protected
    copies and their noise images) are deleted, their ``protected_filepath`` and
    ``unseg`` fields and the fields pointing at their noise images cleared. A sample whose
    original image file is gone (moved, or on a drive not mounted) is left as it is, its
    protected copy kept, and listed in ``failures``; so is the copy of a sample that
    another dataset (a clone) still shows (:func:`shown_elsewhere`), its original restored.
    ``progress``: optional ``progress(done, total)`` callable, over the samples whose
    original comes back and then those whose copy is deleted.
    Returns ``restored``, ``unchanged`` (neither restored nor a copy deleted), ``deleted``
    (protected copies) and ``failed`` counts and the ``failures`` (``id``, ``filepath``,
    ``reason``).
    """
    check_images(samples, "restore")
    stored = stored_samples(samples)  # a view may leave the path fields out
    ids = stored.values("id")
    originals = optional_values(stored, "original_filepath")
    copies = (
        optional_values(stored, "protected_filepath") if delete_protected else [None] * len(ids)
    )
    failures = [
        failure(i, path, ValueError(f"{path}: the original image is missing (its protected "
                                    "copy is kept and the sample left as it is)"))
        for i, path, original, copy in zip(ids, original_paths(stored), originals, copies)
        if (original or copy) and not os.path.isfile(path)
    ]  # fmt: skip
    missing = {f["id"] for f in failures}
    restored = {i: o for i, o in zip(ids, originals) if o and i not in missing}
    protected = {i: p for i, p in zip(ids, copies) if p and i not in missing}
    dataset = samples._dataset
    owned = {i: {p} for i, p in protected.items() if _deletable(dataset, i, p)}
    shared = shown_elsewhere(dataset, owned)
    for i, path in [(i, p) for i, p in protected.items() if p in shared]:
        reason = (
            f"{path}: the protected copy is kept, as it is also an image of the dataset "
            f"{shared[path]!r} (delete that dataset, or restore it with --delete-protected, "
            "first)"
        )
        failures.append(failure(i, path, ValueError(reason)))
        del protected[i]
    total = len(restored) + len(protected)
    if restored:
        dataset.set_values("filepath", restored, key_field="id")
        dataset.set_values("original_filepath", dict.fromkeys(restored), key_field="id")
        _refresh_metadata(
            dataset, restored, (lambda done: progress(done, total)) if progress else None
        )
    deleted = 0
    if protected:  # nothing protected, nothing to clear (the fields may not exist)
        done = (lambda count: progress(len(restored) + count, total)) if progress else None
        deleted = _discard(dataset, protected, progress=done)
        for field in ("protected_filepath", "unseg"):
            dataset.set_values(field, dict.fromkeys(protected), key_field="id")
    failed = {f["id"] for f in failures}
    return {
        "restored": len(restored),
        "unchanged": len(set(ids) - restored.keys() - protected.keys() - failed),
        "deleted": deleted,
        "failed": len(failures),
        "failures": failures,
    }


def delete_protection_files(dataset) -> int:
    """Delete the protected copies and noise images this package wrote for ``dataset``'s
    samples, before the dataset itself is deleted or replaced (:func:`restore` keeps the
    copy of a sample whose original is gone; here the samples go too). Returns the
    number of copies deleted."""
    if dataset.media_type != fom.IMAGE or not dataset.has_field("protected_filepath"):
        return 0
    ids, copies = dataset.values(["id", "protected_filepath"])
    return _discard(dataset, {i: p for i, p in zip(ids, copies) if p})


def default_output_dir(dataset) -> str:
    """``<fo.config.default_dataset_dir>/unseg-protected/<dataset name>``: outside the
    originals' folders, so a recursive import of those never picks up protected copies."""
    return os.path.join(
        fo.config.default_dataset_dir, "unseg-protected", uio.safe_name(dataset.name)
    )


def protected_name(source: str, sample_id: str, image_format: str) -> str:
    """``<stem>-<sample id>.<format>``: unique per sample and a plain file name."""
    stem = os.path.splitext(os.path.basename(source))[0]
    return f"{uio.safe_name(stem, max_bytes=100)}-{sample_id}.{image_format}"


def failure(sample_id: str, path: str, error: BaseException) -> dict:
    """A failed sample as summaries report it; ValueErrors carry their own message."""
    reason = str(error) if isinstance(error, (ValueError, OSError)) else repr(error)
    return {"id": sample_id, "filepath": path, "reason": reason}


def shard_of(sample_id: str, num_shards: int) -> int:
    """The shard of a sample: a stable hash of its id modulo ``num_shards``."""
    digest = hashlib.sha1(sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def protection_states(samples) -> list[str | None]:
    """Whether each sample of ``samples`` has a protected copy made from what it holds now.

    The one rule that ``protect``, ``visualize_noise``, ``export_protected`` and the
    summary (``unseg status``, the App's panel) apply: None without a copy (no
    ``protected_filepath``, its file gone, or no ``unseg`` facts, as a hand-written
    ``protected_filepath`` has none); :data:`STALE` when the original image
    file's bytes or the stored label of the recorded field (:func:`label_hash`) differ
    from what the copy was made from, or the original cannot be read, or a re-protection
    of the sample started and did not finish (the copy is the one from before); else
    :data:`CURRENT`. Copies recorded
    without hashes (protected before they were recorded) count as current. Read from the
    dataset, whatever the view filters; an original is hashed only where its path, size,
    inode or modification or change time differ from those recorded with the copy
    (``source_stat``, :func:`file_stat`), as git decides what changed.
    """
    stored = stored_samples(samples)
    paths, generators, fields, sources, stats, labels = (
        optional_values(stored, f)
        for f in (
            "protected_filepath",
            "unseg.generator_id",
            "unseg.label_field",
            "unseg.source_hash",
            "unseg.source_stat",
            "unseg.label_hash",
        )
    )
    replacing = optional_values(stored, f"unseg.{REPLACING}")
    states = [
        (CURRENT if generator else STALE if replaced else None)
        if path and os.path.isfile(path)
        else None
        for path, generator, replaced in zip(paths, generators, replacing)
    ]
    checked = [i for i, s in enumerate(states) if s == CURRENT and (sources[i] or labels[i])]
    ids, originals = stored.values("id"), original_paths(stored)
    now = {}
    for field in {fields[i] for i in checked}:
        group = [i for i in checked if fields[i] == field]
        values = optional_values(stored.select([ids[i] for i in group], ordered=True), field)
        now.update(zip(group, values))

    def source_now(i: int) -> str | None:
        unchanged = stats[i] is not None and _same_stat(file_stat(originals[i]), stats[i])
        return sources[i] if unchanged else remembered_file_hash(originals[i])

    with ThreadPoolExecutor(_WORKERS) as pool:
        source_hashes = pool.map(source_now, checked)
        label_hashes = pool.map(label_hash, [now[i] for i in checked])
        for i, source, label in zip(checked, source_hashes, label_hashes):
            if source is None or (source, label) != (sources[i], labels[i]):
                states[i] = STALE
    return states


def original_paths(samples) -> list[str]:
    """The original image of each sample: ``original_filepath`` where protection replaced
    the ``filepath``, else the ``filepath``; read from the dataset, whatever fields the
    view leaves out."""
    stored = stored_samples(samples)
    originals = optional_values(stored, "original_filepath")
    return [o or f for o, f in zip(originals, stored.values("filepath"))]


def file_stat(path: str) -> str | None:
    """``"SIZE:MTIME_NS:INODE:CTIME_NS:PATH"`` of a file (the absolute path: a sample
    pointed at another file of the same size and time is not taken for unchanged; the
    inode and change time: nor is a file replaced by a rename, or its time set back);
    None if it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (
        f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}:"
        f"{os.path.abspath(path)}"
    )


def _same_stat(now: str | None, recorded: str) -> bool:
    """Whether :func:`file_stat` ``now`` matches the one ``recorded`` with a copy; a copy
    recorded before paths and inodes were (``"SIZE:MTIME_NS"``) by its size and time alone,
    so that no dataset protected then has every original read again."""
    if now is None:
        return False
    return now == recorded or (recorded.count(":") == 1 and now.startswith(recorded + ":"))


def file_hash(path: str) -> str | None:
    """BLAKE2b (128 bits, hex) of a file's bytes; None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except OSError:
        return None


_HASHES: dict[tuple, str] = {}  # (path, size, mtime, inode, ctime) -> file_hash
_HASHES_LIMIT = 1_000_000  # entries (about 200 MB); past it the memo starts again


def remembered_file_hash(path: str) -> str | None:
    """:func:`file_hash`, remembered in this process by the file's path, size, inode and
    modification and change times: a panel refresh or a status re-reads only the mask
    files, and the originals whose recorded ``source_stat`` no longer matches (a copied
    dataset), that changed since the last (a write, rename or chmod changes the change
    time, which no tool sets back). A file that could not be read is tried again."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        digest = file_hash(path)
        if digest is not None:
            if len(_HASHES) >= _HASHES_LIMIT:
                _HASHES.clear()
            _HASHES[key] = digest
    return digest


def label_hash(label) -> str:
    """BLAKE2b (128 bits, hex) of what a label gives the prompt: the class, box, points
    and mask (a mask file by its bytes, :func:`remembered_file_hash`) of it or of each of
    its detections / polylines, in order; not tags, confidences or other attributes."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(label, fo.Detections):
        items = label.detections
    elif isinstance(label, fo.Polylines):
        items = label.polylines
    else:
        items = [label]
    for item in items:
        digest.update(type(item).__name__.encode())
        for name in _PROMPT_ATTRIBUTES:
            value = getattr(item, name, None)
            if isinstance(value, np.ndarray):
                value = (value.dtype.str, value.shape, hashlib.blake2b(value.tobytes()).digest())
            elif name == "mask_path" and value:
                value = remembered_file_hash(value)
            digest.update(f"{name}={value!r};".encode())
    return digest.hexdigest()


_NOISE_NAMES = ("-magnitude.png", "-amplified.png")  # after the copy's stem, in noise/


def noise_paths(protected_path: str, reader: str | None = None) -> tuple[str, str]:
    """The noise images of a protected copy (:func:`fiftyone_unseg.visualize_noise`): its
    magnitude map and its amplified noise, in ``noise/`` next to it. ``reader``: the id of
    a dataset that shows a copy written for another (a clone of the dataset that
    protected it); its noise images are ``<stem>@<reader>``, so neither dataset's
    visualization replaces the other's."""
    folder = os.path.join(os.path.dirname(protected_path), "noise")
    stem = os.path.splitext(os.path.basename(protected_path))[0]
    stem += f"@{reader}" if reader else ""
    magnitude, amplified = (os.path.join(folder, stem + name) for name in _NOISE_NAMES)
    return magnitude, amplified


def noise_names(protected_path: str, dataset) -> set[str]:
    """Every noise image ``dataset`` may have of a copy: its own, or a reader's
    (:func:`noise_paths`)."""
    return {*noise_paths(protected_path), *noise_paths(protected_path, dataset._doc.id)}


def is_noise_path(path, kind: int) -> bool:
    """Whether ``path`` is named as the ``kind``-th of some copy's :func:`noise_paths`
    (0: a magnitude map, 1: an amplified noise image)."""
    return (
        isinstance(path, str)
        and path.endswith(_NOISE_NAMES[kind])
        and os.path.basename(os.path.dirname(path)) == "noise"
    )


def _check_options(eps, eps_bg, image_format, jpeg_quality, batch_size, shard, run_key) -> str:
    """Validate the scalar options; returns the normalised image format."""
    check_budgets(eps, eps_bg)
    image_format = {"jpeg": "jpg"}.get(image_format.lower(), image_format.lower())
    if image_format not in FORMATS:
        raise ValueError(f"image_format must be one of {FORMATS}, got {image_format!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    if not run_key.isidentifier():
        raise ValueError(f"run_key must be a Python identifier (FiftyOne's rule), got {run_key!r}")
    return image_format


def _load_model(generator, device: str) -> NoiseGenerator:
    """A generator in eval mode on ``device`` from a path, a shipped generator's name, a
    model or None (the default)."""
    if generator is None or isinstance(generator, (str, os.PathLike)):
        return load_generator(generator, device=device)
    if not getattr(generator, "generator_id", None):
        raise ValueError(
            "the generator has no generator_id: save it with save_generator and pass its path"
        )
    return generator.to(device).eval()


def _prepare_dataset(dataset, replace_filepath: bool) -> None:
    """Declare the output fields and media fields before any worker writes."""
    dataset.reload()  # another process (a shard) may have declared them already
    if not dataset.has_sample_field("protected_filepath"):
        dataset.add_sample_field("protected_filepath", fo.StringField)
    if not dataset.has_sample_field("unseg"):
        dataset.add_sample_field(
            "unseg", fo.EmbeddedDocumentField, embedded_doc_type=fo.DynamicEmbeddedDocument
        )
    for name, kind in {**FACT_FIELDS, REPLACING: fo.BooleanField}.items():
        if not dataset.has_sample_field(f"unseg.{name}"):
            dataset.add_sample_field(f"unseg.{name}", kind)
    media = ["protected_filepath"] + (["original_filepath"] if replace_filepath else [])
    if replace_filepath and not dataset.has_sample_field("original_filepath"):
        dataset.add_sample_field("original_filepath", fo.StringField)
    missing = [m for m in media if m not in dataset.app_config.media_fields]
    if missing:
        dataset.app_config.media_fields.extend(missing)
        dataset.save()


def _shard_view(samples, shard):
    if shard is None:
        return samples
    index, count = shard
    return samples.select([i for i in samples.values("id") if shard_of(i, count) == index])


def check_images(samples, action: str) -> None:
    """ValueError unless ``samples`` are images of a flat dataset, not a generated view;
    ``action`` (protect, export, ...) names what refuses them. A grouped dataset's methods
    see only its default slice, so the message says how to make a slice a dataset of its
    own; a patches view's writes would land in its temporary dataset."""
    dataset = samples._dataset
    if dataset.media_type == fom.GROUP:
        first = next(iter(dataset.group_slices), "SLICE")
        raise ValueError(
            f"{action} works on datasets of images, and {dataset.name!r} is grouped (slices "
            f"{', '.join(dataset.group_slices)}): clone a slice into a dataset of its own, "
            f"e.g. dataset.select_group_slices({first!r}).clone({dataset.name + '-' + first!r})"
        )
    if samples.media_type != fom.IMAGE:
        raise ValueError(f"{action} works on images; this collection holds {samples.media_type}")
    if samples._is_generated:  # patches or video frames: a temporary dataset of their own
        source = samples._root_dataset.name
        way = (
            f"select their images in the dataset itself, e.g. fo.load_dataset({source!r})"
            ".select(view.distinct('sample_id'))"
            if samples._is_patches
            else "video frames are not images of a dataset of their own"
        )
        raise ValueError(
            f"{action} works on a dataset's own samples, and this view's are generated from "
            f"{source!r}: {way}"
        )


def stored_samples(samples):
    """``samples`` as the dataset stores them, in their order (a view may filter labels or
    leave fields out)."""
    if isinstance(samples, fo.Dataset):
        return samples
    return samples._dataset.select(samples.values("id"), ordered=True)


def dataset_file_in(folder: str, other_than: str | None = None) -> tuple[str, str] | None:
    """(dataset name, path) of an image, original, protected copy or label file (mask,
    heatmap) that a dataset of the database (other than ``other_than``) has in
    ``folder``, however either is spelt through symlinks (real paths are compared); None
    if none has."""
    for name in fo.list_datasets():
        if name == other_than:
            continue
        try:
            dataset = fo.load_dataset(name)
        except ValueError:  # deleted meanwhile
            continue
        images = [
            dataset.distinct(field)
            for field in ("filepath", "original_filepath", "protected_filepath")
            if dataset.has_field(field)
        ]
        for paths in (*images, label_file_paths(dataset, distinct=True)):
            found = paths_in(folder, paths)
            if found:
                return name, found[0]
    return None


def label_file_paths(samples, distinct: bool = False) -> list[str]:
    """The files that the label fields of ``samples`` point to: Segmentation and Detection
    masks, Heatmap maps (None where in the database)."""
    values = samples.distinct if distinct else samples.values
    paths = []
    for field in samples.get_field_schema(embedded_doc_type=fo.Label):
        kind = getattr(samples.get_field(field), "document_type", None)  # None: not a label
        if kind in (fo.Segmentation, fo.Heatmap):
            paths += values(f"{field}.{'map_path' if kind is fo.Heatmap else 'mask_path'}")
        elif kind is fo.Detections:
            path = f"{field}.detections.mask_path"
            paths += values(path) if distinct else values(path, unwind=True)
        elif kind is fo.Detection:
            paths += values(f"{field}.mask_path")
    return paths


def check_original(path: str) -> None:
    """ValueError if ``path`` is a protected copy (it carries the owner marker): noise
    would be added to noise, or learnt as if it were the image."""
    owner = uio.marker(path)
    if owner is not None:
        raise ValueError(
            f"{path} is a protected copy (unseg wrote it for sample {uio.sample_of(owner)}), "
            "not an original: protect or train on the samples it was copied from, or set "
            "filepath to the original image"
        )


def paths_in(folder: str, paths) -> list[str]:
    """Those of ``paths`` that are in ``folder`` or are it, comparing real paths (each
    folder resolved once; a path that is itself a symlink, by its target)."""
    root = os.path.realpath(folder)
    real_folders = {}
    found = []
    for path in filter(None, paths):
        parent, name = os.path.split(os.path.abspath(path))
        if parent not in real_folders:
            real_folders[parent] = os.path.realpath(parent)
        real = (
            os.path.realpath(path)
            if os.path.islink(path)
            else os.path.join(real_folders[parent], name)
        )
        if os.path.commonpath([root, real]) == root:
            found.append(path)
    return found


def optional_values(samples, field: str) -> list:
    """``samples.values(field)``, or Nones if the field was never declared."""
    if samples.has_field(field):
        return samples.values(field)
    return [None] * len(samples)


def _plan(
    view, settings: dict, output_dir: str, overwrite: bool, folder: str | None
) -> tuple[list, list[_Task]]:
    """The ids of the samples in ``view`` and, as tasks, those that need protecting
    (``folder``: see :func:`_done`)."""
    ids, widths, heights = view.values(["id", "metadata.width", "metadata.height"])
    done = [False] * len(ids) if overwrite else _done(view, settings, folder)
    tasks = []
    for i, (sample_id, source) in enumerate(zip(ids, original_paths(view))):
        if done[i]:
            continue
        name = protected_name(source, sample_id, settings["format"])
        pixels = (widths[i] or 0) * (heights[i] or 0)
        target = os.path.join(output_dir, name)
        tasks.append(
            _Task(sample_id, source, target, pixels, uio.owner_of(view._dataset, sample_id))
        )
    return ids, tasks


def _done(samples, settings: dict, folder: str | None = None) -> list[bool]:
    """Whether each sample of ``samples`` is protected with ``settings`` from what it holds
    now, its file in place (:func:`protection_states`) and, if a ``folder`` is given, in
    it: a run skips those."""
    stored = stored_samples(samples)
    ids, paths, *previous = stored.values(
        ["id", "protected_filepath"] + [f"unseg.{k}" for k in SETTINGS]
    )
    current = tuple(settings[k] for k in SETTINGS)
    recorded = [recorded_settings(dict(zip(SETTINGS, row))) for row in zip(*previous)]
    candidates = [i for i in range(len(ids)) if tuple(recorded[i].values()) == current and paths[i]]
    if folder is not None:  # each distinct folder resolved once
        folders, real = {os.path.dirname(paths[i]) for i in candidates}, os.path.realpath(folder)
        inside = {f for f in folders if os.path.realpath(f) == real}
        candidates = [i for i in candidates if os.path.dirname(paths[i]) in inside]
    states = protection_states(stored.select([ids[i] for i in candidates], ordered=True))
    done = [False] * len(ids)
    for i, state in zip(candidates, states):
        done[i] = state == CURRENT
    return done


def recorded_settings(values: dict) -> dict:
    """Settings recorded on a copy (``generator_id``, ``class_mix`` among them) as a run
    today records them: copies from before class keys existed had them off; those with
    keys at share 1 from before that share ran no generator name the one whose noise the
    keys replaced."""
    values = dict(values)
    if values["generator_id"] is not None and values["class_mix"] is None:
        values["class_mix"] = 0.0
    if values["generator_id"] is not None and values["class_mix"] == 1:
        values["generator_id"] = NO_GENERATOR
    return values


def _overlaps(device) -> bool:
    """Whether workers read and write while the generator runs: on a GPU; on the CPU they
    would share its cores with it, so the two take turns, each on every core (2 cores, a
    7x costlier generator than the default: 1.4x its bare forward time against 2.1x when
    the generator had half the cores; 1.2x since the workers got faster)."""
    return torch.device(device).type != "cpu"


def _batches(tasks: list[_Task], batch_size: int):
    """Consecutive batches of at most ``batch_size`` tasks and ``_BATCH_PIXELS`` pixels
    (a larger image alone); sizes without metadata are read from the file headers."""
    batch, pixels = [], 0
    for task in tasks:
        size = task.pixels or uio.image_pixels(task.source)
        if batch and (len(batch) == batch_size or pixels + size > _BATCH_PIXELS):
            yield batch, pixels
            batch, pixels = [], 0
        batch.append(task)
        pixels += size
    if batch:
        yield batch, pixels


def _lock_dir(dataset) -> str:
    """The folder of a dataset's lock files: per dataset, whatever the output folder."""
    root = os.path.join(fo.config.default_dataset_dir, "unseg-protected", ".locks")
    return os.path.join(root, uio.safe_name(dataset.name))


def _lock_path(dataset, sample_id: str) -> str:
    """The lock file of a sample (see :func:`_lock_dir`)."""
    return os.path.join(_lock_dir(dataset), sample_id)


class _Run:
    """One protect run over its tasks: locks, pipeline, records and counts."""

    def __init__(
        self, model, view, spec, settings, keys, overwrite, folder, replace_filepath, device,
        report,
    ):  # fmt: skip
        self.model, self.view, self.spec, self.settings = model, view, spec, settings
        self.keys = keys
        self.overwrite, self.folder, self.replace_filepath = overwrite, folder, replace_filepath
        self.device, self.report = device, report
        self.dataset = view._dataset
        self.protected = self.skipped = self.no_segments = self.busy = self.replaced = 0
        self.failures: list[dict] = []
        self.stopped: str | None = None
        self.locks: dict[str, int] = {}
        self.stale: dict[str, list[str]] = {}
        self.previous: dict[str, str] = {}  # sample id -> its protected copy before this run
        self.facts: dict[str, object] = {}  # sample id -> its copy's facts, while replacing
        self.unwritten: dict[str, object] = {}  # those of samples whose new copy failed
        self.overlap = _overlaps(device)
        # mask values that the mask targets do not name, found in the protected samples
        self.named = {name for _, name in spec.value_names} if spec.value_names else None
        self.unnamed: set[str] = set()

    def protect(self, tasks: list[_Task], batch_size: int) -> None:
        """Read, generate, write in batches; a batch over ``_BATCH_PIXELS`` runs alone.

        On a GPU, workers read batch k+1 and write batch k-1 while it generates batch k;
        on the CPU, they write batch k and read batch k+1 between two generator passes.
        """
        if tasks:
            self.stale = uio.stale_temp_files(os.path.dirname(tasks[0].target))
        batches = _batches(tasks, batch_size)
        try:
            # Workers' torch operations run on one thread each (the setting is per
            # thread): OpenMP teams of many threads on few cores stall at every barrier.
            with ThreadPoolExecutor(
                _WORKERS, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                self._pipeline(pool, batches)
        finally:
            if self.unwritten:
                self.dataset.set_values("unseg", self.unwritten, key_field="id")
            for sample_id in list(self.locks):
                self._release(sample_id)
        for batch, _ in batches:  # left when the output folder failed
            self._not_attempted(batch)

    def _not_attempted(self, tasks: list[_Task]) -> None:
        self.failures += [failure(t.id, t.source, ValueError(self.stopped)) for t in tasks]

    def _pipeline(self, pool, batches) -> None:
        current = next(batches, None)
        reading = self._start(pool, current[0]) if current else []
        writing: list = []
        while current is not None and not self.stopped:
            loaded = []
            for task, future in reading:
                if future.exception() is None:
                    loaded.append(future.result())
                    if self.named is not None:
                        self.unnamed.update(set(loaded[-1].names) - self.named)
                else:
                    self._fail(task, future.exception())
            following = next(batches, None)
            alone = max(current[1], following[1] if following else 0) > _BATCH_PIXELS
            if alone or not self.overlap:  # nothing else in memory / on the cores
                self._record(writing)
                writing = []
            ahead = following and self.overlap and not alone
            reading = self._start(pool, following[0]) if ahead else []
            if loaded and self.model is not None:
                noises = _generate(self.model, loaded, self.device)
            else:  # nothing read, or class keys alone
                noises = [None] * len(loaded)
            written = [
                (item.task, pool.submit(_write, item, noise, self.settings, self.keys))
                for item, noise in zip(loaded, noises)
            ]
            del loaded, noises
            self._record(writing)
            writing = written
            if alone and following:
                self._record(writing)
                writing = []
            if following and not ahead:
                if self.stopped:
                    self._not_attempted(following[0])
                else:
                    reading = self._start(pool, following[0])
            current = following
        self._record(writing)
        for task, _ in reading:  # read while the output folder failed
            self._fail(task, ValueError(self.stopped))

    def _start(self, pool, batch: list[_Task]) -> list[tuple[_Task, Future]]:
        """Lock the batch's samples, drop those another run did meanwhile, start reading."""
        mine = []
        for task in batch:
            lock = uio.try_lock(_lock_path(self.dataset, task.id))
            if lock is None:
                self.busy += 1
            else:
                self.locks[task.id] = lock
                mine.append(task)
        if not mine:
            return []
        # The labels as stored, not as the view shows them: a view that filters labels
        # picks samples, never objects, so every object is protected and a later run on
        # the whole dataset finds the copy current (label_hash records the stored label).
        stored = stored_samples(self.view.select([t.id for t in mine]))
        ids, paths, records, kept = stored.values(
            ["id", "protected_filepath", "unseg", self.spec.label_field]
        )
        done = [False] * len(ids) if self.overwrite else _done(stored, self.settings, self.folder)
        skipped = [i for i, skip in zip(ids, done) if skip]  # protected by another run meanwhile
        _sync_filepaths(self.dataset, skipped, self.replace_filepath)
        for sample_id in skipped:
            self.skipped += 1
            self._release(sample_id)
        found = dict(zip(ids, kept))
        mine = [t for t in mine if t.id in self.locks]
        self.previous.update((i, path) for i, path in zip(ids, paths) if i in self.locks and path)
        # The facts must never describe another file: clear them before replacing it, and
        # mark the copy as being replaced until its successor is recorded (a run killed
        # meanwhile leaves the mark; one that fails to write puts the facts back).
        facts = dict(zip(ids, records))
        replacing = {
            t.id: fo.DynamicEmbeddedDocument(**{REPLACING: True})
            for t in mine
            if getattr(facts.get(t.id), "generator_id", None) is not None
        }
        if replacing:
            self.facts.update((i, facts[i]) for i in replacing)
            self.dataset.set_values("unseg", replacing, key_field="id")
        for task in mine:
            for path in self.stale.pop(uio.temp_stem(os.path.basename(task.target)), []):
                if os.path.lexists(path):
                    os.remove(path)  # a killed run's partial file for this sample
        return [
            (
                t,
                pool.submit(
                    _load, t, found, self.spec, self.model.img_size if self.model else None
                ),
            )
            for t in mine
        ]

    def _fail(self, task: _Task, error: BaseException) -> None:
        """A sample not written (writes are atomic): its earlier copy, if any, is as it was,
        and so are the facts that describe it."""
        self.failures.append(failure(task.id, task.source, error))
        if uio.is_output_error(error) and not self.stopped:
            self.stopped = f"not attempted: {os.path.dirname(task.target)}: {error.strerror}"
        if task.id in self.facts:  # put back in bulk when the run ends, locked till then
            self.unwritten[task.id] = self.facts.pop(task.id)
            self.previous.pop(task.id, None)
        else:
            self._release(task.id)

    def _release(self, sample_id: str) -> None:
        uio.unlock(self.locks.pop(sample_id), _lock_path(self.dataset, sample_id))

    def _record(self, writing: list[tuple[_Task, Future]]) -> None:
        """Wait for written files, set their samples' fields in bulk updates, remove what
        they replace (:func:`_discard`), unlock, report."""
        if not writing:
            return
        facts = {}
        for task, future in writing:
            if future.exception() is None:
                facts[task.id] = (task.target, future.result())
            else:
                self._fail(task, future.exception())
        for sample_id in facts:
            self.facts.pop(sample_id, None)
        if facts:
            paths = {i: path for i, (path, _) in facts.items()}
            docs = {i: fo.DynamicEmbeddedDocument(**f) for i, (_, f) in facts.items()}
            self.dataset.set_values("protected_filepath", paths, key_field="id")
            self.dataset.set_values("unseg", docs, key_field="id")
            _sync_filepaths(self.dataset, list(facts), self.replace_filepath)
            earlier = {i: self.previous.pop(i) for i in facts if i in self.previous}
            _discard(self.dataset, earlier, kept=paths)
            self.replaced += len(earlier)
        for sample_id in facts:
            self._release(sample_id)
        self.protected += len(facts)
        self.no_segments += sum(not f["had_segments"] for _, f in facts.values())
        self.report(self.protected + self.skipped + self.busy + len(self.failures))


def _load(task: _Task, labels: dict, spec: PromptSpec, size: int | None) -> _Loaded:
    """Hash what the copy is made from, then read the image, rasterise its segments
    (``labels``: id -> label as stored) and map both to the generator's SxS frame (``size``
    None: no generator). Hashing first: a file changed meanwhile leaves the copy stale,
    never current."""
    if task.id not in labels:
        raise ValueError("the sample left the view during the run")
    label = labels[task.id]
    check_original(task.source)
    made_from = {
        "source_stat": file_stat(task.source),  # before the bytes: a change after shows
        "source_hash": file_hash(task.source),
        "label_hash": label_hash(label),
    }
    image = read_rgb(task.source)
    frame = Frame(image.shape[0], image.shape[1], size)
    segments, names = segment_classes(label, frame.height, frame.width, spec)
    present = present_values(segments)
    model_input = prompts = None
    if size:
        prompts = [frame.prompt(segments)]
        if spec.mode == "instance":
            prompts += [frame.prompt(segments == k) for k in present]
        prompts = torch.stack(prompts)
        model_input = frame.to_model(torch.from_numpy(image).permute(2, 0, 1))
    return _Loaded(
        task,
        image,
        segments,
        names,
        frame,
        model_input,
        prompts,
        len(present),
        made_from,
        carried_metadata(task.source),
    )


@torch.inference_mode()
def _generate(model: NoiseGenerator, batch: list[_Loaded], device) -> list[torch.Tensor]:
    """Noise for a batch: 3x(S/4)x(S/4) per image, on the CPU.

    Each image is encoded once and decoded once per prompt; in instance mode each
    segment's prompt pixels take that segment's noise, the rest the union's.
    """
    counts = [len(item.prompts) for item in batch]
    images = torch.stack([item.model_input for item in batch]).to(device)
    prompts = torch.cat([item.prompts for item in batch]).to(device)
    owner = torch.arange(len(batch)).repeat_interleave(torch.tensor(counts)).to(device)
    embeddings, early = model.encode(images)
    noise = torch.cat(
        [
            model.decode(embeddings[idx], early[idx], mask_prompts=masks)[0]
            for idx, masks in zip(owner.split(_DECODE_CHUNK), prompts.split(_DECODE_CHUNK))
        ]
    ).cpu()
    combined = []
    for noises, masks in zip(noise.split(counts), prompts.cpu().split(counts)):
        image_noise = noises[0]
        for segment_noise, mask in zip(noises[1:], masks[1:]):
            image_noise = torch.where(mask > 0, segment_noise, image_noise)
        combined.append(image_noise)
    return combined


def _write(
    item: _Loaded, noise: torch.Tensor | None, settings: dict, keys: ClassKeys | None
) -> dict:
    """Compose, measure, encode and write one protected image (``noise`` None: the class
    keys alone); returns its facts."""
    protected = _compose(item, noise, settings["eps"], settings["eps_bg"], keys)
    data = encode_marked(
        protected, item.task.owner, settings["format"], settings["quality"], item.metadata
    )
    if settings["format"] == "jpg":  # measure what was written
        protected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    facts = _measure(item.image, protected)
    uio.write_owned(data, item.task.target, item.task.owner)
    return {
        **settings,
        **facts,
        "had_segments": item.num_segments > 0,
        "num_segments": item.num_segments,
        **item.made_from,
    }


def _compose(
    item: _Loaded,
    noise: torch.Tensor | None,
    eps: float,
    eps_bg: float,
    keys: ClassKeys | None = None,
) -> np.ndarray:
    """The protected image, HxWx3 uint8: clamp(original + noise * eps map), in row bands;
    ``keys`` mix the class textures into the noise first (``noise`` None: the keys at share
    1 alone). Rounding to 8 bits never leaves the budget (:func:`protected_pixels`)."""
    out = np.empty(item.image.shape, np.uint8)
    region = None if noise is None else item.frame.region_of(noise)
    for rows in row_bands(item.frame.height, item.frame.width, CACHE_BAND_PIXELS):
        image = torch.from_numpy(item.image[rows]).permute(2, 0, 1)[None]
        objects = torch.from_numpy(item.segments[rows] > 0)[None, None]
        if region is None:
            full = torch.zeros(3, rows.stop - rows.start, item.frame.width)
        else:
            full = item.frame.from_region(region, rows)  # 3 x rows x W
        if keys is not None:
            full = keys.apply(full, item.segments[rows], item.names, rows.start)
        full = full[None]
        pixels = protected_pixels(image, full, objects, eps, eps_bg)
        out[rows] = pixels[0].permute(1, 2, 0).to(torch.uint8).numpy()
    return out


def protected_pixels(images, noise, object_mask, eps: float, eps_bg: float) -> torch.Tensor:
    """:meth:`NoiseGenerator.perturb`'s images (same arguments) as whole values 0..255,
    each moved back to the nearest one within its budget of the original wherever one
    exists: an original that is not 8-bit (16-bit or float files) or a fractional budget
    (7.5/255) would otherwise round past the budget by up to half a step. Where no whole
    value lies within it (a budget under half a step), the original's own rounding; where
    the noise is not finite, the original's."""
    perturbed = NoiseGenerator.perturb(images, noise, object_mask, eps, eps_bg)
    perturbed = torch.where(perturbed.isfinite(), perturbed, images)  # NaN passes clamps
    budget = NoiseGenerator.budget_map(object_mask.to(images.dtype), eps, eps_bg) * 255
    scaled = images * 255
    slack = 1e-3  # float error of k / 255 * 255
    low = torch.ceil(scaled - budget - slack).clamp_(0, 255)
    high = torch.floor(scaled + budget + slack).clamp_(0, 255)
    rounded = torch.minimum(torch.maximum(perturbed.mul(255).round_(), low), high)
    return torch.where(low <= high, rounded, scaled.round())


def _measure(original: np.ndarray, protected: np.ndarray) -> dict:
    """L-infinity (in [0, 1]), PSNR (dB, None if identical) and SSIM of the protected image.

    SSIM as skimage's ``structural_similarity`` computes it (7x7 uniform window, sample
    covariance, data range 1, the window's border left out; None for images under 7 px),
    in row bands that overlap by the window so that the result is exact.
    """
    height, width = original.shape[:2]
    pad = _SSIM_WINDOW // 2
    windowed = min(height, width) >= _SSIM_WINDOW
    linf, squared, ssim = 0.0, 0.0, 0.0
    for rows in row_bands(height, width, CACHE_BAND_PIXELS):
        lo, hi = max(rows.start, pad) - pad, min(rows.stop, height - pad) + pad
        x = original[lo:hi].astype(np.float32, copy=False)
        y = protected[lo:hi].astype(np.float32)
        y /= 255
        own = slice(rows.start - lo, rows.stop - lo)
        linf = max(linf, cv2.norm(y[own], x[own], cv2.NORM_INF))
        squared += cv2.norm(y[own], x[own], cv2.NORM_L2SQR)
        if windowed and hi - lo >= _SSIM_WINDOW:
            ssim += float(_ssim_map(x, y)[pad:-pad, pad : width - pad].sum(dtype=np.float64))
    mse = squared / original.size
    return {
        "linf": linf,
        "psnr": 10 * math.log10(1 / mse) if mse > 0 else None,
        "ssim": ssim / ((height - 2 * pad) * (width - 2 * pad) * 3) if windowed else None,
    }


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM of HxWx3 float32 images in [0, 1] for the 7x7 window around each pixel (valid
    where the window fits). In place: each full-size temporary costs page faults."""
    window = (_SSIM_WINDOW, _SSIM_WINDOW)
    mx, my, xx, yy, xy = (cv2.blur(a, window) for a in (x, y, x * x, y * y, x * y))
    n = _SSIM_WINDOW**2 / (_SSIM_WINDOW**2 - 1)  # sample covariance
    c1, c2 = 0.01**2, 0.03**2
    mxy = mx * my
    mx *= mx
    my *= my
    xx -= mx  # xx, yy, xy: (co)variances, before the sample correction
    yy -= my
    xy -= mxy
    mxy *= 2  # numerator: (2 mx my + c1) (2 cov + c2)
    mxy += c1
    xy *= 2 * n
    xy += c2
    mxy *= xy
    mx += my  # denominator: (mx^2 + my^2 + c1) (vx + vy + c2)
    mx += c1
    xx += yy
    xx *= n
    xx += c2
    mx *= xx
    mxy /= mx
    return mxy


def _visibility(view, states: list) -> dict:
    """How visible the noise of ``view``'s protected copies is (``states``: theirs, from
    :func:`protection_states`): their ``count``, ``psnr_mean``, ``psnr_min`` and
    ``linf_max`` (None without values)."""
    stored = stored_samples(view)
    facts = zip(optional_values(stored, "unseg.psnr"), optional_values(stored, "unseg.linf"))
    current = [fact for fact, state in zip(facts, states) if state == CURRENT]
    psnr = [p for p, _ in current if p is not None]
    linf = [x for _, x in current if x is not None]
    return {
        "count": len(current),
        "psnr_mean": float(np.mean(psnr)) if psnr else None,
        "psnr_min": min(psnr, default=None),
        "linf_max": max(linf, default=None),
    }


def _sync_filepaths(dataset, ids: list, replace_filepath: bool) -> None:
    """Point ``filepath`` at the protected image where it replaces the original, for the
    samples ``ids`` (protected in this run or found current), and refresh their metadata.

    A sample is replaced when ``original_filepath`` is set; then ``filepath`` always
    follows ``protected_filepath``. ``replace_filepath`` replaces every sample of ``ids``.
    """
    if not ids:
        return
    view = dataset.select(ids)
    all_ids, filepaths, protected = view.values(["id", "filepath", "protected_filepath"])
    filepath, original = {}, {}
    for sample_id, current, new, old in zip(
        all_ids, filepaths, protected, optional_values(view, "original_filepath")
    ):
        if not new or current == new or not (replace_filepath or old):
            continue
        if os.path.isfile(new):
            filepath[sample_id], original[sample_id] = new, old or current
    if filepath:
        dataset.set_values("original_filepath", original, key_field="id")
        dataset.set_values("filepath", filepath, key_field="id")
        _refresh_metadata(dataset, filepath)


_PROGRESS_CHUNK = 500  # samples restored or copies deleted between progress reports
_QUERY_CHUNK = 10_000  # sample ids per query of another dataset (shown_elsewhere)


def _refresh_metadata(dataset, ids, progress=None) -> None:
    """Recompute the metadata (size, type, dimensions) of the samples ``ids``, whose
    ``filepath`` changed; ``progress(done)`` after each chunk, if given."""
    ids = list(ids)
    for start in range(0, len(ids), _PROGRESS_CHUNK):
        chunk = ids[start : start + _PROGRESS_CHUNK]
        dataset.select(chunk).compute_metadata(overwrite=True, progress=False)
        if progress is not None:
            progress(start + len(chunk))


def shown_elsewhere(dataset, files: dict[str, set[str]]) -> dict[str, str]:
    """Of ``files`` (sample id -> paths written for that sample of ``dataset``), those that
    a sample of another dataset with the same id (a clone: clones keep the ids) names in
    any field, with that dataset's name. One query by id per other dataset."""
    found: dict[str, str] = {}
    if not files:
        return found
    db = foo.get_db_conn()
    own = dataset._doc.sample_collection_name
    ids = [ObjectId(i) for i in files]
    for other in db.datasets.find({}, {"name": 1, "sample_collection_name": 1}):
        collection = other.get("sample_collection_name")
        if collection in (None, own):
            continue
        for start in range(0, len(ids), _QUERY_CHUNK):
            chunk = ids[start : start + _QUERY_CHUNK]
            for sample in db[collection].find({"_id": {"$in": chunk}}):
                for value in _strings(sample) & files[str(sample["_id"])]:
                    found.setdefault(value, other["name"])
    return found


def _strings(value, depth: int = 3) -> set[str]:
    """The strings in a document's values, ``depth`` levels of nesting deep (a path field,
    a heatmap's ``map_path``, a list of labels' mask paths)."""
    if isinstance(value, str):
        return {value}
    if depth == 0:
        return set()
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*(_strings(item, depth - 1) for item in items))


def _deletable(dataset, sample_id: str, path: str) -> bool:
    """Whether ``path`` is a file written for this sample of ``dataset``
    (:func:`fiftyone_unseg.io.owns`; not a clone's source's)."""
    return os.path.isfile(path) and uio.owns(uio.owner_of(dataset, sample_id), path)


def _discard(dataset, copies: dict, kept: dict | None = None, progress=None) -> int:
    """Delete what this package wrote for earlier protected copies (sample id -> path):
    each copy, unless it is the sample's new one in ``kept``, and its noise images; clear
    the fields pointing at those noise images (heatmaps, media fields). Files not marked
    for their sample of this dataset (:func:`fiftyone_unseg.io.owns`; a clone's source's)
    stay, and so do those another dataset still shows (:func:`shown_elsewhere`).
    ``progress(done)`` every :data:`_PROGRESS_CHUNK` copies and at the end, if given.
    Returns the number of copies deleted."""
    deleted, noise = 0, {}
    shared = shown_elsewhere(dataset, {i: {p, *noise_names(p, dataset)} for i, p in copies.items()})
    for count, (sample_id, path) in enumerate(copies.items(), 1):
        noise[sample_id] = noise_names(path, dataset)
        files = sorted(noise[sample_id])
        if (kept or {}).get(sample_id) != path:
            files.append(path)
        for file in files:
            if file not in shared and _deletable(dataset, sample_id, file):
                os.remove(file)
                deleted += file == path
        if progress is not None and (count % _PROGRESS_CHUNK == 0 or count == len(copies)):
            progress(count)
    if not noise:
        return deleted
    view = dataset.select(list(noise))
    heatmaps = dataset.get_field_schema(embedded_doc_type=fo.Heatmap)
    fields = [(name, f"{name}.map_path") for name in heatmaps]
    media = dataset.app_config.media_fields
    fields += [(name, name) for name in media if name not in heatmaps and view.has_field(name)]
    for field, path in fields:
        ids, values = view.values(["id", path])
        cleared = {i: None for i, value in zip(ids, values) if value in noise[i]}
        if cleared:
            dataset.set_values(field, cleared, key_field="id")
    return deleted


def _record_run(samples, run_key: str, config: dict, summary: dict) -> None:
    """Record the run on the dataset (``dataset.list_runs()``, the App's runs)."""
    samples._dataset.reload()  # keep runs that other shards recorded meanwhile
    run_config = samples.init_run(method="unseg.protect", **config)
    results = fors.RunResults(samples, run_config, run_key, **summary)
    samples.register_run(run_key, run_config, results=results, overwrite=True)
