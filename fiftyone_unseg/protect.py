"""Protect a FiftyOne dataset: add UnSeg's bounded noise to every image.

One image on its way from ``unseg protect`` to the written file:

1. its original is read (:func:`fiftyone_unseg.io.read_rgb`) and its label field
   rasterised into segments (:func:`fiftyone_unseg.labels.segment_map`);
2. :class:`Frame` maps the image to the generator's SxS input and the prompt
   segments to mask prompts at S/4;
3. the generator turns a batch of them into noise (:func:`_generate`);
4. :class:`Frame` maps the noise back to HxW; the eps map (object budget on the
   prompt segments, background budget elsewhere, at full resolution) scales it
   and it is added and clamped (:func:`_compose`);
5. the result is measured against the original, encoded with a marker naming its
   sample and written atomically; then the sample's fields are set, in batches.

Reading the next batch and writing the previous one run in worker threads while
the generator runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor

import fiftyone as fo
import fiftyone.core.media as fom
import fiftyone.core.runs as fors
import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from skimage.metrics import structural_similarity

from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.geometry import Frame
from fiftyone_unseg.io import atomic_write_bytes, read_rgb
from fiftyone_unseg.labels import PromptSpec, present_values, resolve_prompt, segment_map
from fiftyone_unseg.modeling import NoiseGenerator

DEFAULT_EPS = 8 / 255
DEFAULT_EPS_BG = 2 / 255
DEFAULT_RUN_KEY = "unseg_protect"
FORMATS = ("png", "jpg")
MARKER_KEY = "unseg-sample-id"
# The facts stored in each protected sample's ``unseg`` field.
FACT_FIELDS = {
    "generator_id": fo.StringField,
    "label_field": fo.StringField,
    "prompt": fo.StringField,
    "eps": fo.FloatField,
    "eps_bg": fo.FloatField,
    "format": fo.StringField,
    "quality": fo.IntField,
    "linf": fo.FloatField,
    "psnr": fo.FloatField,
    "ssim": fo.FloatField,
    "had_segments": fo.BooleanField,
    "num_segments": fo.IntField,
}
# A sample protected with the same values of these is not protected again.
SETTINGS = ("generator_id", "label_field", "prompt", "eps", "eps_bg", "format", "quality")

_BAND_ROWS = 1024  # large images are composed and measured in bands of rows
_DECODE_CHUNK = 64  # prompts decoded at once (instance mode can have many per image)
_PNG_COMPRESS_LEVEL = 1  # noisy images barely compress: ~1.3x faster than 6, ~8% larger
_SSIM_WINDOW = 7  # skimage's default window
_WORKERS = max(2, min(8, os.cpu_count() or 2))


@dataclasses.dataclass(frozen=True)
class _Task:
    """One sample to protect: its original image and its output file."""

    id: str
    source: str
    target: str


@dataclasses.dataclass
class _Loaded:
    """A read sample, ready for the generator."""

    task: _Task
    image: np.ndarray  # HxWx3 float32 in [0, 1]
    objects: np.ndarray  # HxW bool: union of the prompt segments
    frame: Frame
    model_input: torch.Tensor  # 3xSxS
    prompts: torch.Tensor  # Kx1x(S/4)x(S/4): the union, then one per segment in instance mode
    num_segments: int


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
) -> dict:
    """Write a protected copy of every image in ``samples``; originals are never touched.

    Arguments:
      samples: a FiftyOne dataset or view.
      label_field: a ``Segmentation``, ``Detections`` or ``Polylines`` field whose
        segments prompt the generator and get the object budget (see
        :mod:`fiftyone_unseg.labels` for how each type is rasterised).
      generator: a checkpoint directory, a loaded ``NoiseGenerator``, or None for the
        shipped default.
      eps, eps_bg: L-infinity budgets in [0, 1] on object and background pixels.
      prompt: "all" (default, as the reference: one pass prompted with the union of
        all segments), a list of class names (the union of those classes' segments;
        other segments get the background budget), or "instance" (one extra decoder
        pass per segment with its own mask; each segment's pixels take its own
        noise, the rest the union pass's noise; the image is encoded once).
      output_dir: where protected images go; default
        ``<fo.config.default_dataset_dir>/unseg-protected/<dataset name>``. Files are
        named ``<original stem>-<sample id>.<format>``.
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

    Each protected sample gets ``protected_filepath`` and an ``unseg`` document:
    the settings (``generator_id``, ``label_field``, ``prompt``, ``eps``, ``eps_bg``,
    ``format``, ``quality``) and the measured ``linf`` (in [0, 1], like the budgets),
    ``psnr`` (dB) and ``ssim`` against the original, ``had_segments`` and
    ``num_segments``. Samples without segments get background noise only. Samples
    already protected with the same settings, whose file exists, are skipped.
    Unreadable images are reported and skipped.

    Returns a summary: ``total``, ``protected``, ``skipped``, ``no_segments`` (of the
    protected, those without segments), ``failed``, ``failures`` (sample id, path
    and reason), ``output_dir``, ``run_key``, ``seconds``.
    """
    started = time.monotonic()
    image_format = _check_options(
        eps, eps_bg, image_format, jpeg_quality, batch_size, shard, run_key
    )
    if samples.media_type != fom.IMAGE:
        raise ValueError(f"protect works on images; this collection holds {samples.media_type}")
    if len(samples) == 0:
        raise ValueError("nothing to protect: the collection has no samples")
    spec = resolve_prompt(samples, label_field, prompt)
    model = _load_model(generator, device)
    settings = {
        "generator_id": model.generator_id,
        "label_field": label_field,
        "prompt": spec.name,
        "eps": float(eps),
        "eps_bg": float(eps_bg),
        "format": image_format,
        "quality": jpeg_quality if image_format == "jpg" else None,
    }
    dataset = samples._dataset
    output_dir = os.path.abspath(output_dir or default_output_dir(dataset))
    _prepare_dataset(dataset, replace_filepath)
    view = _shard_view(samples, shard)
    ids, tasks = _plan(view, settings, output_dir, overwrite)
    total, skipped = len(ids), len(ids) - len(tasks)
    if progress is not None:
        progress(skipped, total)

    def report(done: int) -> None:
        if progress is not None:
            progress(skipped + done, total)

    outcome = _run(model, tasks, view, spec, settings, batch_size, device, report)
    _sync_filepaths(dataset, set(ids), replace_filepath)
    summary = {
        "total": total,
        "protected": outcome["protected"],
        "skipped": skipped,
        "no_segments": outcome["no_segments"],
        "failed": len(outcome["failures"]),
        "failures": outcome["failures"],
        "output_dir": output_dir,
        "run_key": run_key if shard is None else f"{run_key}_shard{shard[0]}of{shard[1]}",
        "seconds": round(time.monotonic() - started, 3),
    }
    config = {
        **settings,
        "output_dir": output_dir,
        "replace_filepath": replace_filepath,
        "shard": shard,
        "batch_size": batch_size,
    }
    _record_run(samples, summary["run_key"], config, summary)
    return summary


def restore(samples, delete_protected: bool = False) -> dict:
    """Put the original images back as ``filepath`` where protection replaced them.

    Idempotent. Protected files stay on disk and in ``protected_filepath`` unless
    ``delete_protected``: then the files this package wrote for these samples are
    deleted and their ``protected_filepath`` and ``unseg`` fields cleared.
    Returns counts: ``restored``, ``unchanged``, ``deleted``.
    """
    ids = samples.values("id")
    originals = optional_values(samples, "original_filepath")
    restored = {i: o for i, o in zip(ids, originals) if o}
    dataset = samples._dataset
    if restored:
        dataset.set_values("filepath", restored, key_field="id")
        dataset.set_values("original_filepath", dict.fromkeys(restored), key_field="id")
    deleted = 0
    if delete_protected:
        protected = {i: p for i, p in zip(ids, optional_values(samples, "protected_filepath")) if p}
        for sample_id, path in protected.items():
            if os.path.isfile(path) and _marker(path) == sample_id:
                os.remove(path)
                deleted += 1
        for field in ("protected_filepath", "unseg"):
            dataset.set_values(field, dict.fromkeys(protected), key_field="id")
    return {"restored": len(restored), "unchanged": len(ids) - len(restored), "deleted": deleted}


def default_output_dir(dataset) -> str:
    """``<fo.config.default_dataset_dir>/unseg-protected/<dataset name>``: outside the
    originals' folders, so a recursive import of those never picks up protected copies."""
    return os.path.join(fo.config.default_dataset_dir, "unseg-protected", _safe_name(dataset.name))


def protected_name(source: str, sample_id: str, image_format: str) -> str:
    """``<stem>-<sample id>.<format>``: unique per sample and a plain file name."""
    stem = os.path.splitext(os.path.basename(source))[0]
    return f"{_safe_name(stem)[:100]}-{sample_id}.{image_format}"


def failure(sample_id: str, path: str, error: BaseException) -> dict:
    """A failed sample as summaries report it; ValueErrors carry their own message."""
    reason = str(error) if isinstance(error, ValueError) else repr(error)
    return {"id": sample_id, "filepath": path, "reason": reason}


def shard_of(sample_id: str, num_shards: int) -> int:
    """The shard of a sample: a stable hash of its id modulo ``num_shards``."""
    digest = hashlib.sha1(sample_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def _safe_name(name: str) -> str:
    """``name`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced; no
    leading dot, so it can never be a path, a hidden file or ``..``."""
    return re.sub(r"[^\w.-]+", "_", name).lstrip(".") or "image"


def _check_options(eps, eps_bg, image_format, jpeg_quality, batch_size, shard, run_key) -> str:
    """Validate the scalar options; returns the normalised image format."""
    if not 0 < eps <= 1 or not 0 <= eps_bg <= eps:
        raise ValueError(
            f"budgets must satisfy 0 <= eps_bg <= eps <= 1 and eps > 0 (in [0, 1], e.g. "
            f"8/255); got eps={eps}, eps_bg={eps_bg}"
        )
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
    """A generator in eval mode on ``device`` from a path, a model or None (the default)."""
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
    for name, kind in FACT_FIELDS.items():
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


def optional_values(samples, field: str) -> list:
    """``samples.values(field)``, or Nones if the field was never declared."""
    if samples.has_field(field):
        return samples.values(field)
    return [None] * len(samples)


def _plan(view, settings: dict, output_dir: str, overwrite: bool) -> tuple[list, list[_Task]]:
    """The ids of the samples in ``view`` and, as tasks, those that need protecting."""
    ids, filepaths, protected, *previous = view.values(
        ["id", "filepath", "protected_filepath", *(f"unseg.{k}" for k in SETTINGS)]
    )
    originals = optional_values(view, "original_filepath")
    current = tuple(settings[k] for k in SETTINGS)
    tasks = []
    for i, sample_id in enumerate(ids):
        done = tuple(column[i] for column in previous) == current
        if done and not overwrite and protected[i] and os.path.isfile(protected[i]):
            continue
        source = originals[i] or filepaths[i]
        name = protected_name(source, sample_id, settings["format"])
        tasks.append(_Task(sample_id, source, os.path.join(output_dir, name)))
    return ids, tasks


def _run(model, tasks, view, spec, settings, batch_size, device, report) -> dict:
    """Protect ``tasks`` in batches: read ahead, generate, write behind, record.

    While the generator runs on batch k, workers read batch k+1 and write batch k-1.
    """
    outcome = {"protected": 0, "no_segments": 0, "failures": []}
    batches = [tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)]
    with ThreadPoolExecutor(_WORKERS) as pool:

        def read(batch):
            ids, labels = view.select([t.id for t in batch]).values(["id", spec.label_field])
            found = dict(zip(ids, labels))
            return [(t, pool.submit(_load, t, found, spec, model.img_size)) for t in batch]

        reading = read(batches[0]) if batches else []
        writing = []
        for k in range(len(batches)):
            loaded, current = [], []
            for task, future in reading:
                if future.exception() is None:
                    loaded.append(future.result())
                else:
                    current.append((task, future))
            reading = read(batches[k + 1]) if k + 1 < len(batches) else []
            noises = _generate(model, loaded, device) if loaded else []
            current += [
                (item.task, pool.submit(_write, item, noise, settings))
                for item, noise in zip(loaded, noises)
            ]
            _record(view._dataset, writing, outcome, report)
            writing = current
        _record(view._dataset, writing, outcome, report)
    return outcome


def _load(task: _Task, labels: dict, spec: PromptSpec, size: int) -> _Loaded:
    """Read the image, rasterise its segments (``labels``: id -> label), map both to the
    model frame."""
    if task.id not in labels:
        raise ValueError("the sample left the view during the run")
    image = read_rgb(task.source)
    frame = Frame(image.shape[0], image.shape[1], size)
    segments = segment_map(labels[task.id], frame.height, frame.width, spec)
    objects = segments > 0
    present = present_values(segments)
    prompts = [frame.prompt(objects)]
    if spec.mode == "instance":
        prompts += [frame.prompt(segments == k) for k in present]
    model_input = frame.to_model(torch.from_numpy(image).permute(2, 0, 1))
    return _Loaded(task, image, objects, frame, model_input, torch.stack(prompts), len(present))


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


def _write(item: _Loaded, noise: torch.Tensor, settings: dict) -> dict:
    """Compose, measure, encode and write one protected image; returns its facts."""
    target = item.task.target
    if os.path.exists(target) and _marker(target) != item.task.id:
        raise ValueError(f"{target} exists and was not written for this sample; left as it is")
    protected = _compose(item, noise, settings["eps"], settings["eps_bg"])
    data = _encode(protected, settings["format"], settings["quality"], item.task.id)
    if settings["format"] == "jpg":  # measure what was written
        protected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    facts = _measure(item.image, protected)
    atomic_write_bytes(data, target)
    return {
        **settings,
        **facts,
        "had_segments": item.num_segments > 0,
        "num_segments": item.num_segments,
    }


def _compose(item: _Loaded, noise: torch.Tensor, eps: float, eps_bg: float) -> np.ndarray:
    """The protected image, HxWx3 uint8: clamp(original + noise * eps map), in row bands."""
    full = item.frame.from_model(noise)  # 3xHxW
    out = np.empty(item.image.shape, np.uint8)
    for rows in _bands(item.frame.height):
        image = torch.from_numpy(item.image[rows]).permute(2, 0, 1)[None]
        objects = torch.from_numpy(item.objects[rows])[None, None]
        perturbed = NoiseGenerator.perturb(image, full[None, :, rows], objects, eps, eps_bg)
        out[rows] = perturbed[0].mul_(255).round_().permute(1, 2, 0).to(torch.uint8).numpy()
    return out


def _measure(original: np.ndarray, protected: np.ndarray) -> dict:
    """L-infinity (in [0, 1]), PSNR (dB, None if identical) and SSIM of the protected image."""
    linf, squared = 0.0, 0.0
    for rows in _bands(original.shape[0]):
        diff = protected[rows].astype(np.float32) / 255 - original[rows]
        linf = max(linf, float(np.abs(diff).max()))
        squared += float(np.square(diff, dtype=np.float64).sum())
    mse = squared / original.size
    return {
        "linf": linf,
        "psnr": 10 * math.log10(1 / mse) if mse > 0 else None,
        "ssim": _ssim(original, protected),
    }


def _ssim(original: np.ndarray, protected: np.ndarray) -> float | None:
    """skimage's mean SSIM over RGB (7x7 window, data range 1), in row bands that
    overlap by the window so the result is exact; None for images under 7 px."""
    height, width = original.shape[:2]
    pad = _SSIM_WINDOW // 2
    if min(height, width) < _SSIM_WINDOW:
        return None
    total = 0.0
    for rows in _bands(height):
        lo, hi = max(rows.start - pad, 0), min(rows.stop + pad, height)
        _, ssim_map = structural_similarity(
            original[lo:hi],
            protected[lo:hi].astype(np.float32) / 255,
            channel_axis=2,
            data_range=1.0,
            full=True,
        )
        keep = slice(max(rows.start, pad) - lo, min(rows.stop, height - pad) - lo)
        total += float(ssim_map[keep, pad : width - pad].sum(dtype=np.float64))
    return total / ((height - 2 * pad) * (width - 2 * pad) * 3)


def _bands(height: int) -> list[slice]:
    """Row slices covering ``height`` rows; none shorter than 16 rows unless the image is."""
    edges = [*range(0, height, _BAND_ROWS), height]
    if len(edges) > 2 and edges[-1] - edges[-2] < 16:
        del edges[-2]
    return [slice(a, b) for a, b in zip(edges, edges[1:])]


def _encode(image: np.ndarray, image_format: str, quality: int | None, sample_id: str) -> bytes:
    """PNG or JPEG bytes of an HxWx3 uint8 image, marked with the sample id."""
    buf = io.BytesIO()
    if image_format == "jpg":
        comment = f"{MARKER_KEY}={sample_id}"
        Image.fromarray(image).save(buf, "JPEG", quality=quality, subsampling=0, comment=comment)
    else:
        info = PngInfo()
        info.add_text(MARKER_KEY, sample_id)
        Image.fromarray(image).save(buf, "PNG", pnginfo=info, compress_level=_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _marker(path: str) -> str | None:
    """The sample id a protected file was written for; None for any other file."""
    try:
        with Image.open(path) as im:
            if MARKER_KEY in im.info:
                return im.info[MARKER_KEY]
            comment = im.info.get("comment", b"").decode(errors="replace")
    except OSError:
        return None
    prefix = f"{MARKER_KEY}="
    return comment[len(prefix) :] if comment.startswith(prefix) else None


def _record(dataset, writing: list[tuple[_Task, Future]], outcome: dict, report) -> None:
    """Wait for written files, set their samples' fields in two bulk updates, report."""
    if not writing:
        return
    facts = {}
    for task, future in writing:
        error = future.exception()
        if error is None:
            facts[task.id] = (task.target, future.result())
        else:
            outcome["failures"].append(failure(task.id, task.source, error))
    if facts:
        paths = {i: path for i, (path, _) in facts.items()}
        docs = {i: fo.DynamicEmbeddedDocument(**f) for i, (_, f) in facts.items()}
        dataset.set_values("protected_filepath", paths, key_field="id")
        dataset.set_values("unseg", docs, key_field="id")
    outcome["protected"] += len(facts)
    outcome["no_segments"] += sum(not f["had_segments"] for _, f in facts.values())
    report(outcome["protected"] + len(outcome["failures"]))


def _sync_filepaths(dataset, ids: set, replace_filepath: bool) -> None:
    """Point ``filepath`` at the protected image where it replaces the original.

    A sample is replaced when ``original_filepath`` is set; then ``filepath`` always
    follows ``protected_filepath``. ``replace_filepath`` replaces every protected
    sample of ``ids`` (the run's samples, whatever its view now matches).
    """
    all_ids, filepaths, protected = dataset.values(["id", "filepath", "protected_filepath"])
    originals = optional_values(dataset, "original_filepath")
    filepath, original = {}, {}
    for sample_id, current, new, old in zip(all_ids, filepaths, protected, originals):
        if sample_id not in ids or not new or current == new or not (replace_filepath or old):
            continue
        if os.path.isfile(new):
            filepath[sample_id], original[sample_id] = new, old or current
    if filepath:
        dataset.set_values("original_filepath", original, key_field="id")
        dataset.set_values("filepath", filepath, key_field="id")


def _record_run(samples, run_key: str, config: dict, summary: dict) -> None:
    """Record the run on the dataset (``dataset.list_runs()``, the App's runs)."""
    samples._dataset.reload()  # keep runs that other shards recorded meanwhile
    run_config = samples.init_run(method="unseg.protect", **config)
    results = fors.RunResults(samples, run_config, run_key, **summary)
    samples.register_run(run_key, run_config, results=results, overwrite=True)
