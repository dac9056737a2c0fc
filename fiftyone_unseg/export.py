"""Export the protected copy of a dataset, ready to publish instead of the original.

The export holds the protected images under their originals' names (the folders below
the originals' common folder kept; the extension is the protected file's, since
re-encoding would change the noise) and the chosen label fields, in any format
FiftyOne exports. Nothing in it says which images are protected: the owner marker that
:func:`fiftyone_unseg.protect` writes into each file is stripped (pixel bytes untouched),
and no ``unseg`` field, original path or noise heatmap goes with the labels.

An export is all or nothing: the images are prepared in a hidden folder next to
``export_dir``, and a failed export leaves ``export_dir`` as it was. An export killed on
the way (power loss, SIGKILL) is undone by the next export to the same folder, which
first puts back the export it was replacing. One export at a time writes to a folder.
Masks stored as files are exported from the database, so no path to the originals'
folders remains.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import time

import fiftyone as fo
import fiftyone.utils.data as foud
import fiftyone.utils.data.exporters as foue
import fiftyone.utils.labels as fou
from fiftyone import ViewField as F

from fiftyone_unseg import io as uio
from fiftyone_unseg.labels import LIST_FIELDS, load_mask
from fiftyone_unseg.panoptic import IMAGE_ID_FIELD, unique_image_ids
from fiftyone_unseg.protect import (
    CURRENT,
    PROTECTION_FIELDS,
    STALE,
    check_images,
    dataset_file_in,
    label_file_paths,
    noise_names,
    optional_values,
    original_paths,
    paths_in,
    protection_states,
    stored_samples,
)

# The keys of ``dataset.info`` an export keeps: classes, and COCO's public header.
EXPORTED_INFO = (
    "categories",
    "panoptic_categories",
    "licenses",
    "description",
    "version",
    "year",
    "contributor",
    "url",
    "date_created",
)
# Formats by the names the CLI and the App offer; the SDK takes any ``fo.types`` class too.
EXPORT_TYPES = {
    "coco": fo.types.COCODetectionDataset,  # Detections with instance masks, Polylines
    # Detections / Polylines as non-overlapping segments (imported on first use)
    "coco-panoptic": "fiftyone_unseg.panoptic_export.COCOPanopticDataset",
    "segmentation-dir": fo.types.ImageSegmentationDirectory,  # Segmentation (class maps)
    "yolo": fo.types.YOLOv5Dataset,  # Polylines as YOLO segmentation polygons
    "fiftyone": fo.types.FiftyOneDataset,  # any label type, as FiftyOne stores it
    "images": fo.types.ImageDirectory,  # the images alone
}
_SHOWN = 5  # samples a refusal names
# Formats that write the samples' COCO image ids (IMAGE_ID_FIELD) when each has a distinct one.
_WITH_IMAGE_IDS = ("coco", "coco-panoptic")
_WORK_SUFFIX = ".unseg-export"
logger = logging.getLogger(__name__)


def export_protected(
    samples,
    export_dir: str,
    dataset_type="coco",
    label_field: str | list[str] | None = None,
    skip_unprotected: bool = False,
    overwrite: bool = False,
    progress=None,
    **kwargs,
) -> dict:
    """Export the protected images of ``samples`` with their labels to ``export_dir``.

    Arguments:
      samples: a FiftyOne dataset or view, protected with :func:`fiftyone_unseg.protect`.
      export_dir: the export's folder; it must not exist or be empty unless ``overwrite``
        (then it is replaced once the new export is complete). It may not hold any of
        the samples' originals, protected files or masks, nor, to be overwritten, the
        images, originals or protected copies of any dataset in the database.
      dataset_type: a name in :data:`EXPORT_TYPES` or a ``fo.types`` dataset type.
      label_field: the label field to export (several only for the ``fiftyone``
        format); None for the images alone (``images``), which takes none.
      skip_unprotected: leave out samples without a protected copy made from what they
        hold now (:func:`fiftyone_unseg.protect.protection_states`: none, or a stale one
        made from an image or label that changed since); by default they stop the
        export (a published copy must not contain an original, or an old picture).
      overwrite: replace an existing, non-empty ``export_dir``.
      progress: optional ``progress(done, total)`` callable: ``total`` is three times the
        images, each counted when its copy is staged, when its labels (masks read from
        their files) are in the working copy, and when the exporter has written it.
      kwargs: passed to FiftyOne's exporter (``fo.SampleCollection.export``).

    Returns ``exported``, ``skipped`` (unprotected or stale samples left out),
    ``export_dir``, ``recovered`` (what was undone of earlier exports to ``export_dir``
    killed on the way, one line each) and ``seconds``. Raises ValueError when another
    export to ``export_dir`` is running. Raises ValueError, before anything is written, naming
    the samples when some have no current protected copy, or when a protected file is
    missing or was not written for its sample; and naming the field when the format
    cannot take its label type.
    """
    started = time.monotonic()
    check_images(samples, "export")
    dataset_type = _dataset_type(dataset_type)
    fields = [label_field] if isinstance(label_field, str) else list(label_field or [])
    export_dir = os.path.realpath(export_dir)  # a symlink stays, its folder is exported to
    _check_fields(samples, dataset_type, fields, export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"{export_dir} exists and is not a folder")
    work = _work_folder(export_dir)
    root = os.path.dirname(work)
    lock_path = os.path.join(root, _lock_name(export_dir))
    lock = None
    try:
        lock = uio.try_lock(lock_path)
        if lock is None:
            raise ValueError(f"another export to {export_dir} is running: wait for it to end")
        keep = {os.path.basename(lock_path), os.path.basename(work)}
        recovered = _recover(export_dir, root, keep)
        result = _export(
            samples, export_dir, work, keep, dataset_type, fields, skip_unprotected,
            overwrite, progress, kwargs,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            uio.unlock(lock, lock_path)
    return {**result, "recovered": recovered, "seconds": round(time.monotonic() - started, 3)}


def _export(
    samples, export_dir, work, keep, dataset_type, fields, skip_unprotected, overwrite,
    progress, kwargs,
) -> dict:  # fmt: skip
    """:func:`export_protected` once it holds ``export_dir``'s lock, staging in ``work``
    (``keep``: the lock and ``work``, inside ``export_dir`` when only it can be written)."""
    replacing = os.path.isdir(export_dir) and bool(set(os.listdir(export_dir)) - keep)
    if replacing and not overwrite:
        raise ValueError(f"{export_dir} is not empty: choose another folder or overwrite it")
    parent, mounted = os.path.dirname(export_dir), os.path.ismount(export_dir)
    if replacing and (mounted or not os.access(parent, os.W_OK)):
        why = "is a mount point" if mounted else f"is in {parent}, read-only"
        raise ValueError(
            f"{export_dir} {why}: an overwrite replaces the folder itself; export into a new "
            "folder inside it, or empty it first"
        )

    # Read from the dataset: a view may have left these fields out.
    stored = stored_samples(samples)
    ids = stored.values("id")
    originals = original_paths(stored)
    protected = optional_values(stored, "protected_filepath")
    states = protection_states(stored)
    missing = [i for i, state in enumerate(states) if state is None]
    stale = [i for i, state in enumerate(states) if state == STALE]
    if (missing or stale) and not skip_unprotected:
        problems = [
            f"{len(indices)} of {len(ids)} samples {what}, e.g. {_name(indices, ids, originals)}"
            for indices, what in (
                (missing, "have no protected copy"),
                (
                    stale,
                    "changed since they were protected (their image or label) or their "
                    "last protection did not finish",
                ),
            )
            if indices
        ]
        raise ValueError("; ".join(problems) + ": protect them (again), or skip them")
    kept = [i for i, state in enumerate(states) if state == CURRENT]
    if not kept:
        raise ValueError("nothing to export: no sample here has a protected copy")
    _check_owned([ids[i] for i in kept], [protected[i] for i in kept])
    _check_outside(export_dir, originals + protected + label_file_paths(samples))
    if replacing:
        _check_no_dataset_files(export_dir)
    names = export_names(
        [originals[i] for i in kept], [os.path.splitext(protected[i])[1] for i in kept]
    )

    copy = None
    try:
        media = os.path.join(work, "media")
        staged, report = [], _pass_progress(progress, 0, len(kept))
        for done, (i, name) in enumerate(zip(kept, names), 1):
            staged.append(os.path.join(media, name))
            with open(protected[i], "rb") as f:
                uio.atomic_write_bytes(uio.unmarked(f.read()), staged[-1])
            report(done)
        kind = _kind(dataset_type)
        view = samples.select([ids[i] for i in kept], ordered=True)
        with_ids = issubclass(kind, tuple(_dataset_type(name) for name in _WITH_IMAGE_IDS))
        copy = _working_copy(
            view, fields + [IMAGE_ID_FIELD] * with_ids, _pass_progress(progress, 1, len(kept))
        )
        copy.set_values("filepath", staged)
        copy.compute_metadata(overwrite=True, progress=False)  # of the staged files
        coco = issubclass(kind, fo.types.COCODetectionDataset)
        if coco and unique_image_ids(copy):  # the panoptic exporter reads them itself
            kwargs.setdefault("coco_id", IMAGE_ID_FIELD)
        if coco and copy.info.get("categories") and "classes" not in kwargs:
            kwargs.setdefault("categories", coco_categories(copy, fields))
        _export_in_place(
            export_dir,
            work,
            keep,
            lambda: copy.export(
                export_dir=export_dir,
                dataset_type=dataset_type,
                label_field=(fields[0] if len(fields) == 1 else fields) or None,
                export_media=True,  # copied: some exporters read the image after "moving" it
                rel_dir=media,
                progress=_exporter_progress(progress, len(kept)),
                **kwargs,
            ),
        )
        if progress is not None:
            progress(3 * len(kept), 3 * len(kept))
    finally:
        if copy is not None:
            copy.delete()
    return {"exported": len(kept), "skipped": len(missing) + len(stale), "export_dir": export_dir}


def coco_categories(samples, fields: list[str]) -> list[dict]:
    """The categories the samples were imported with (``info["categories"]`` of
    FiftyOne's COCO importer), so that an export keeps their ids (FiftyOne's exporter
    would number the classes 1, 2, ... by name), each label of ``fields`` that they do
    not name added after the largest id."""
    categories = [dict(c) for c in samples.info["categories"]]
    names = {c.get("name", str(c["id"])) for c in categories}
    labels = set()
    lists = {**LIST_FIELDS, fo.Keypoints: "keypoints"}  # all that FiftyOne's exporter takes
    for field in fields:
        kind = getattr(samples.get_field(field), "document_type", None)
        if kind in lists:
            labels.update(samples.distinct(f"{field}.{lists[kind]}.label"))
    next_id = max((int(c["id"]) for c in categories), default=0) + 1
    for k, name in enumerate(sorted(labels - names - {None})):
        categories.append({"id": next_id + k, "name": name, "supercategory": None})
    return categories


def export_names(originals: list[str], extensions: list[str]) -> list[str]:
    """The exported file of each image, relative to the export's media folder.

    Each original's path below the originals' common folder, with the protected file's
    extension (``extensions``, like ".png"); a stem already taken (regardless of case,
    for case-insensitive file systems, and of extension, since some formats name label
    files by the stem) gets ``-2``, ``-3``, ... before its extension.
    """
    folders = [os.path.dirname(os.path.abspath(path)) for path in originals]
    try:
        root = os.path.commonpath(folders)
    except ValueError:  # different drives: no common folder
        root = None
    taken, names = set(), []
    for path, folder, extension in zip(originals, folders, extensions):
        stem = os.path.splitext(os.path.basename(path))[0]
        relative = os.path.relpath(folder, root) if root else "."
        base = os.path.normpath(os.path.join(relative, stem))
        # stems unique: YOLO's and the segmentation folder's label files are named by them
        names.append(uio.unclashed_name(base, "", taken) + extension)
    return names


def _dataset_type(dataset_type):
    if isinstance(dataset_type, str):
        if dataset_type not in EXPORT_TYPES:
            raise ValueError(
                f"unknown export format {dataset_type!r}; choose one of {', '.join(EXPORT_TYPES)}"
            )
        dataset_type = EXPORT_TYPES[dataset_type]
        if isinstance(dataset_type, str):  # module.Class
            module, _, name = dataset_type.rpartition(".")
            dataset_type = getattr(importlib.import_module(module), name)
    return dataset_type


def _format_name(kind) -> str:
    """The export format's name as typed (:data:`EXPORT_TYPES`), e.g. "the yolo format",
    or the FiftyOne dataset type's for one given as such."""
    for name, value in EXPORT_TYPES.items():
        if value is kind or (isinstance(value, str) and value.endswith(f".{kind.__name__}")):
            return f"the {name} format"
    return kind.__name__


def _check_fields(samples, dataset_type, fields: list[str], export_dir: str) -> None:
    """ValueError unless ``fields`` exist and suit ``dataset_type``: none for image-only
    types, one for labelled formats, of a label type its exporter takes, several only for
    FiftyOne's own."""
    missing = [f for f in fields if not samples.has_field(f)]
    if missing:
        raise ValueError(f"no label field {', '.join(map(repr, missing))} in these samples")
    secret = _protection_fields(samples, fields)
    if secret:
        raise ValueError(
            f"{', '.join(map(repr, secret))} hold the protection record or the noise images "
            "of visualize_noise: exported, they would show what was added; leave them out"
        )
    kind = _kind(dataset_type)
    if issubclass(kind, fo.types.UnlabeledDataset) and fields:
        raise ValueError(f"{_format_name(kind)} exports images only: give no label field")
    if issubclass(kind, fo.types.FiftyOneDataset):
        return
    if issubclass(kind, fo.types.LabeledDataset) and len(fields) != 1:
        raise ValueError(
            f"{_format_name(kind)} exports one label field (given: {', '.join(fields) or 'none'}); "
            "the fiftyone format takes several"
        )
    if fields:
        _check_label_type(samples, dataset_type, fields[0], export_dir)
    if fields and kind is _kind(_dataset_type("coco-panoptic")):
        _check_segments(samples, fields[0])


def _check_segments(samples, field: str) -> None:
    """ValueError naming the first sample whose detections in ``field`` have no instance
    mask: a box is no panoptic segment."""
    if samples.get_field(field).document_type is not fo.Detections:
        return
    boxes = samples.filter_labels(field, ~F("mask").exists() & ~F("mask_path").exists())
    if len(boxes):
        sample = boxes.first()
        labels = [d.label for d in sample[field].detections]
        name = os.path.basename(original_paths(boxes.limit(1))[0])
        raise ValueError(
            f"{name}: detections {labels[:5]} have no instance mask, and a box is no panoptic "
            f"segment ({len(boxes)} samples have such detections): export boxes in the coco "
            "format"
        )


def exportable_fields(samples, dataset_type) -> list[str]:
    """The label fields of ``samples`` that ``dataset_type`` can export (sorted): none for
    image-only types; never heatmaps (those of :func:`fiftyone_unseg.visualize_noise`
    show the noise)."""
    dataset_type = _dataset_type(dataset_type)
    kind = _kind(dataset_type)
    if issubclass(kind, fo.types.UnlabeledDataset):
        return []
    schema = samples.get_field_schema(embedded_doc_type=fo.Label)
    fields = sorted(k for k, f in schema.items() if not issubclass(f.document_type, fo.Heatmap))
    if issubclass(kind, fo.types.FiftyOneDataset):
        return fields
    suitable = []
    for field in fields:
        try:
            _check_label_type(samples, dataset_type, field, tempfile.gettempdir())
        except ValueError:
            continue
        suitable.append(field)
    return suitable


def _protection_fields(samples, fields: list[str]) -> list[str]:
    """Those of ``fields`` that hold the protection record (``unseg``, the path fields) or
    point at the samples' noise images (heatmaps, amplified noise)."""
    stored = stored_samples(samples)
    noise = {
        path
        for copy in optional_values(stored, "protected_filepath")
        if copy
        for path in noise_names(copy, samples._dataset)
    }
    found = []
    for field in fields:
        schema = samples.get_field(field)
        if getattr(schema, "document_type", None) is fo.Heatmap:
            paths = stored.values(f"{field}.map_path")
        else:
            paths = stored.values(field) if isinstance(schema, fo.StringField) else []
        if field in PROTECTION_FIELDS or noise & set(paths):
            found.append(field)
    return found


def _check_label_type(samples, dataset_type, field: str, export_dir: str) -> None:
    """ValueError if the exporter of ``dataset_type`` cannot take ``field``'s label type,
    by FiftyOne's own rule (run here before any work, not when the exporter meets it).
    Class-mask folders take Segmentation fields only: FiftyOne would draw Detections
    without their classes (every object 255) and drop those without a mask, and Polylines
    as outlines."""
    schema = samples.get_field(field)
    label_type = getattr(schema, "document_type", None) or type(schema)
    kind = _kind(dataset_type)
    if issubclass(kind, fo.types.ImageSegmentationDirectory) and label_type is not fo.Segmentation:
        raise ValueError(
            f"{_format_name(kind)} exports class masks (Segmentation fields), not {field!r} "
            f"({label_type.__name__} labels), whose classes and unmasked objects it would "
            "lose: export instances as COCO (coco) or COCO panoptic (coco-panoptic), or "
            "convert them first with fiftyone.utils.labels.objects_to_segmentations"
        )
    exporter, _ = foud.build_dataset_exporter(dataset_type, export_dir=export_dir)  # no I/O
    try:
        foue._make_label_coercion_functions(field, samples, exporter)
    except ValueError:
        accepted = exporter.label_cls
        if isinstance(accepted, dict):
            accepted = list(accepted.values())
        elif not isinstance(accepted, (list, tuple)):
            accepted = [accepted]
        names = ", ".join(t.__name__ for t in accepted)
        raise ValueError(
            f"{_format_name(kind)} cannot export {field!r} ({label_type.__name__} "
            f"labels); it takes {names}"
        ) from None


def _kind(dataset_type) -> type:
    return dataset_type if isinstance(dataset_type, type) else type(dataset_type)


def _name(indices: list[int], ids: list[str], paths: list[str]) -> str:
    """The first samples of ``indices`` as ``id (path)``."""
    shown = ", ".join(f"{ids[i]} ({paths[i]})" for i in indices[:_SHOWN])
    return shown + _more(len(indices))


def _more(count: int) -> str:
    return f" (and {count - _SHOWN} more)" if count > _SHOWN else ""


def _check_owned(ids: list[str], paths: list[str]) -> None:
    """ValueError naming the samples whose protected file is gone or not theirs."""
    problems = []
    for sample_id, path in zip(ids, paths):
        if not os.path.isfile(path):
            problems.append(f"{sample_id}: protected file {path} is missing")
        elif uio.sample_of(uio.marker(path)) != sample_id:  # a clone may read its source's
            problems.append(f"{sample_id}: {path} was not written for this sample")
    if problems:
        raise ValueError(
            "; ".join(problems[:_SHOWN]) + _more(len(problems)) + ": protect these samples again"
        )


def _check_no_dataset_files(export_dir: str) -> None:
    """ValueError if a dataset of the database has images, originals, protected copies or
    label files in ``export_dir``, which an overwrite would delete."""
    found = dataset_file_in(export_dir)
    if found:
        raise ValueError(
            f"{export_dir} holds {found[1]}, a file of dataset {found[0]!r}: overwriting "
            "would delete it; export elsewhere"
        )


def _check_outside(export_dir: str, paths: list[str]) -> None:
    """ValueError if ``export_dir`` is or holds one of ``paths`` (an overwrite would
    delete it)."""
    found = paths_in(export_dir, paths)
    if found:
        raise ValueError(
            f"{export_dir} holds {found[0]}, a file of these samples: export elsewhere"
        )


def _pass_progress(progress, index: int, count: int):
    """``report(done)``: ``done`` of ``count`` images through pass ``index`` of an export's
    three (staged, in the working copy, written), as ``progress(done, 3 * count)``."""
    if progress is None:
        return lambda done: None
    return lambda done: progress(index * count + min(done, count), 3 * count)


def _exporter_progress(progress, count: int):
    """FiftyOne's progress argument that reports its exporter's samples (at 100 steps at
    most) as the last pass of :func:`_pass_progress`; False without one."""
    if progress is None:
        return False
    report = _pass_progress(progress, 2, count)
    return fo.report_progress(lambda bar: report(min(bar.iteration, count - 1)), n=100)


def _working_copy(view, fields: list[str], report):
    """A temporary dataset of ``view``'s ``fields`` (those it has) alone, masks in the
    database (no path to the originals' folders), the App showing ``filepath`` only;
    ``report(done)`` as the samples' masks are read (over all fields)."""
    fields = [field for field in fields if view.has_field(field)]
    copy = view.select_fields(fields).clone()
    # The dataset's info may hold local paths or notes (the fiftyone format writes it
    # whole): keep what exporters read, the classes and COCO's public header.
    copy.info = {k: v for k, v in copy.info.items() if k in EXPORTED_INFO}
    kinds = {field: getattr(copy.get_field(field), "document_type", None) for field in fields}
    masked = [f for f in fields if kinds[f] in (fo.Heatmap, fo.Segmentation, fo.Detections)]
    count = len(copy)
    for k, field in enumerate(masked):
        if kinds[field] is fo.Heatmap:
            fou.import_segmentations(copy, field, progress=False)
        else:
            _masks_into_database(
                copy, field, lambda done, k=k: report((k * count + done) // len(masked))
            )
        report((k + 1) * count // len(masked))
    report(count)
    copy.app_config.media_fields = ["filepath"]
    copy.app_config.grid_media_field = copy.app_config.modal_media_field = "filepath"
    copy.save()
    return copy


def _masks_into_database(copy, field: str, report) -> None:
    """Read the mask files of ``field``'s Segmentations or Detections into the database
    (:func:`~fiftyone_unseg.labels.load_mask`: a palette PNG as its class indices, where
    FiftyOne's own reader gives its colours), ``report(done)`` as it goes;
    ValueError naming the sample and the file if one cannot be read."""
    samples = copy.select_fields(field).iter_samples(autosave=True)
    for done, sample in enumerate(samples):
        report(done)
        label = sample[field]
        items = label.detections if isinstance(label, fo.Detections) else [label]
        for item in items if label is not None else []:
            if item.mask is None and item.mask_path:
                try:
                    item.mask = load_mask(item)
                except ValueError as error:
                    raise ValueError(f"sample {sample.id}: {error}") from error
                item.mask_path = None


def _work_folder(export_dir: str) -> str:
    """A hidden folder for the staged images: next to ``export_dir``, or inside it when
    only an empty ``export_dir`` can be written."""
    prefix = f".{os.path.basename(export_dir)}."
    try:
        os.makedirs(os.path.dirname(export_dir), exist_ok=True)
        return tempfile.mkdtemp(prefix=prefix, suffix=_WORK_SUFFIX, dir=os.path.dirname(export_dir))
    except OSError:
        if not os.path.isdir(export_dir):
            raise
        # an export killed in here left its lock and work folder, and what it had written
        # (which it began writing into an empty folder: _recover removes it)
        names = os.listdir(export_dir)
        killed = any(_is_work_folder(n, export_dir) for n in names)
        if not killed and set(names) - {_lock_name(export_dir)}:
            raise
        return tempfile.mkdtemp(prefix=prefix, suffix=_WORK_SUFFIX, dir=export_dir)


def _recover(export_dir: str, root: str, keep: set) -> list[str]:
    """Undo what exports to ``export_dir`` killed on the way left in ``root`` (their work
    folders; the names in ``keep`` are this export's): ``export_dir`` gets back the
    export they were replacing, or loses what they had begun to write into it. Returns
    what was done, one line each (also logged)."""
    done = []
    left = [
        os.path.join(root, name)
        for name in os.listdir(root)
        if _is_work_folder(name, export_dir) and name not in keep
    ]
    for work in sorted(p for p in left if os.path.isdir(p)):
        state = {}  # none: killed before it wrote into export_dir
        if not os.path.exists(os.path.join(work, "done")):  # done: it finished
            try:
                with open(os.path.join(work, "state.json")) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                pass
        if state.get("export_dir") != export_dir:  # another folder's, or unreadable
            state = {}
        replaced = os.path.join(work, "replaced")
        if state.get("moved") and os.path.isdir(replaced):
            shutil.rmtree(export_dir, ignore_errors=True)
            os.replace(replaced, export_dir)
            done.append(f"{export_dir}: an interrupted export was undone, the earlier one put back")
        elif state and not state["moved"] and os.path.isdir(export_dir):
            if state["existed"] or root == export_dir:
                _empty(export_dir, keep | {os.path.basename(p) for p in left})
            else:
                shutil.rmtree(export_dir)
            done.append(f"{export_dir}: what an interrupted export had written was removed")
        shutil.rmtree(work, ignore_errors=True)
    for line in done:
        logger.warning(line)
    return done


def _lock_name(export_dir: str) -> str:
    """The lock file that an export to ``export_dir`` holds, beside its work folders."""
    return f".{os.path.basename(export_dir)}{_WORK_SUFFIX}.lock"


def _is_work_folder(name: str, export_dir: str) -> bool:
    """Whether ``name`` is a work folder of an export to ``export_dir`` (as
    :func:`_work_folder` names them: not those of ``export_dir.v2``)."""
    base = re.escape(os.path.basename(export_dir))
    return re.fullmatch(rf"\.{base}\.[a-z0-9_]{{8}}{re.escape(_WORK_SUFFIX)}", name) is not None


def _empty(folder: str, keep: set) -> None:
    """Delete everything in ``folder`` but the names in ``keep``."""
    for name in set(os.listdir(folder)) - keep:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _export_in_place(export_dir: str, work: str, keep: set, export) -> None:
    """Run ``export()`` into ``export_dir`` so that it ends with the old content or the
    whole new export: a non-empty folder is first moved into ``work`` (deleted with it)
    and moved back if the export fails; a new or empty one is emptied again (``keep``
    and ``work`` stay). ``work`` records which (``state.json``) before, and ``done``
    after, for :func:`_recover` to undo an export killed in between. Exporters may
    record their own folder (YOLO's dataset.yaml), so the export is written in place."""
    existed = os.path.isdir(export_dir)
    keep = keep | ({os.path.basename(work)} if os.path.dirname(work) == export_dir else set())
    replaced = os.path.join(work, "replaced")
    moved = existed and bool(set(os.listdir(export_dir)) - keep)
    state = {"export_dir": export_dir, "existed": existed, "moved": moved}
    uio.atomic_write_bytes(json.dumps(state).encode(), os.path.join(work, "state.json"))
    if moved:
        os.replace(export_dir, replaced)
    try:
        export()
    except BaseException:
        if moved:
            shutil.rmtree(export_dir, ignore_errors=True)
            os.replace(replaced, export_dir)
        elif existed:
            _empty(export_dir, keep)
        else:
            shutil.rmtree(export_dir, ignore_errors=True)
        raise
    uio.atomic_write_bytes(b"", os.path.join(work, "done"))
