"""The audit: train each victim on clean and on protected images, test both on clean ones."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time

import fiftyone as fo
import numpy as np
from PIL import Image

from fiftyone_unseg.audit.baselines import BASELINES
from fiftyone_unseg.audit.countermeasures import Countermeasure
from fiftyone_unseg.audit.report import (
    METHOD,
    ProtectionReport,
    VictimResult,
    load_report,
    record_run,
    write_report,
)
from fiftyone_unseg.audit.reuse import (
    clean_fingerprint,
    copy_predictions,
    examples_digest,
    find_clean_run,
    finished_training,
    forget_training,
    replaces_files,
    save_training,
    training_key,
)
from fiftyone_unseg.audit.splits import Split, split_samples
from fiftyone_unseg.audit.targets import Targets, resolve_targets
from fiftyone_unseg.audit.training import Example, Settings
from fiftyone_unseg.audit.variants import CLEAN, PROTECTED, clean_paths, training_images
from fiftyone_unseg.audit.victims import DEFAULT_VICTIMS, VICTIMS, make_victim
from fiftyone_unseg.device import resolve_device
from fiftyone_unseg.io import atomic_write_image, read_rgb, safe_name
from fiftyone_unseg.labels import load_mask
from fiftyone_unseg.protect import DEFAULT_EPS, DEFAULT_EPS_BG, check_images, failure
from fiftyone_unseg.settings import check_budgets

DEFAULT_RUN_KEY = "unseg_audit"
logger = logging.getLogger(__name__)


def evaluate_protection(
    samples,
    label_field: str,
    victims=DEFAULT_VICTIMS,
    semantic_field: str | None = None,
    protected_field: str | None = "protected_filepath",
    baselines=(),
    countermeasure: str | None = None,
    eps: float = DEFAULT_EPS,
    eps_bg: float = DEFAULT_EPS_BG,
    split_tags=("train", "test"),
    train_fraction: float = 0.7,
    epochs: int | dict | None = None,
    image_size: int | dict | None = None,
    seed: int = 0,
    seeds: int = 1,
    device: str = "cpu",
    yolo_weights: str | None = None,
    sam_checkpoint: str | None = None,
    semantic_weights: str | None = None,
    output_dir: str | None = None,
    run_key: str = DEFAULT_RUN_KEY,
    progress=None,
    background="auto",
    ignore="auto",
    reuse_clean: bool = True,
) -> ProtectionReport:
    """Measure how much protection hurts models trained on the data.

    Each victim trains once per variant of the training images, with the same settings
    and seed: ``clean`` (the originals), ``protected`` (the images in ``protected_field``)
    and each of ``baselines`` ("random": uniform noise, "random_flat": the same at the
    object budget on every pixel, "pattern": a mask-aligned tile shortcut,
    "class_pattern": one tile per class, "class_colour": one flat colour per class, all at
    the samples' protection budgets, see :mod:`fiftyone_unseg.audit.baselines`). Every
    model is tested on the CLEAN test images.

    Arguments:
      samples: a FiftyOne dataset or view.
      label_field: the instances for ``yolo`` and ``sam`` (Detections with masks,
        Polylines, or a Segmentation whose class regions' connected components are the
        instances); also the class maps for ``semantic`` unless ``semantic_field`` is given
        (see :mod:`fiftyone_unseg.audit.targets`).
      victims: any of "yolo" (Ultralytics YOLOv8n-seg, mask mAP), "sam" (box-prompted SAM,
        mean mask IoU), "sam_point" (SAM prompted with one click per object, mean mask
        IoU), "semantic" (torchvision LRASPP-MobileNetV3, mIoU).
      semantic_field: a Segmentation field for the semantic victim.
      protected_field: the field holding each training sample's protected image; None
        compares the baselines with clean training only, and without baselines trains
        clean images alone: a calibration run that shows whether the victims learn the
        data at these settings (their clean score against ``chance``).
      baselines: any of "random", "random_flat", "pattern", "class_pattern", "class_colour",
        "none" (the clean images again: with a ``countermeasure``, what the counter-measure
        alone costs).
      countermeasure: applied to the protected and baseline training images (never to
        clean ones): "jpeg:75", "blur:1.0", "downscale:0.5", "grayscale", "median:3",
        "bilateral:25", "texture:16" (each class's mean texture estimated from the
        labelled training images and subtracted, an informed attack) or "tint:0.1" (each
        class's mean colour against the clean originals of that share of the training
        samples, subtracted: the informed attack on colour class keys); see
        :class:`fiftyone_unseg.audit.countermeasures.Countermeasure`.
      eps, eps_bg: the baselines' budgets for samples without recorded protection budgets.
      split_tags: (train tag, test tag); without both tags present (or with None), a
        random split with ``train_fraction`` for training, seeded by ``seed``.
      epochs, image_size: one int for every victim or a dict victim -> int; the rest keep
        the victim's defaults: yolo 60 epochs at 256 px, sam 20 on 128 px object-centred
        crops (with a SAM checkpoint on whole images at its own size: 4 at 512 px or more,
        else 30), semantic 90 on random 256 px crops of the images at their own
        resolution; ``epochs=0`` tests a SAM checkpoint as it is, without fine-tuning.
        Victims that resize images down also blur fine noise away: compare ``px`` in the
        report with the images' size (``image_side``).
      seed, device: training seed (the same for every variant) and torch device; the
        baselines' noise does not depend on it.
      seeds: train each victim and variant this many times (seeds ``seed``, ``seed + 1``,
        ...) and report the mean score and its spread (sample standard deviation): a
        single victim training can move by several points. Predictions and evaluations of
        the first seed are kept.
      yolo_weights, sam_checkpoint, semantic_weights: optional local starting weights.
      output_dir: training images, models, predictions and the report; default
        ``<fo.config.default_dataset_dir>/unseg-audit/<dataset>/<run_key>``.
      run_key: key of the FiftyOne run; prefixes the prediction fields
        (``<run_key>_<victim>_<variant>``, on the test samples only) and evaluation keys
        (the field name + ``_eval``). A rerun with the same key replaces them.
      progress: optional ``progress(done, total)`` callable, in training epochs.
      background, ignore: the class-map field's background value and ignore (void)
        values; "auto" reads them from its mask targets (see
        :func:`fiftyone_unseg.labels.segment_values`). Void pixels, and values the mask
        targets do not name, are neither learnt nor scored.
      reuse_clean: take a victim's clean trainings (scores and a copy of the predictions)
        from an earlier audit of this dataset that trained the very same ones (same
        samples, image bytes, labels, settings, seeds and weights, see
        :mod:`fiftyone_unseg.audit.reuse`), as audits under several counter-measures do;
        False trains them again.

    Samples whose clean or protected image cannot be read are left out of both splits,
    logged and listed in the report's ``skipped`` (sample id, file, reason).

    Returns the :class:`ProtectionReport`, also written to ``report.json`` + ``report.png``
    in ``output_dir`` and recorded as the run ``run_key`` (:func:`load_report`).
    """
    started = time.monotonic()
    check_images(samples, "evaluate")
    measure = Countermeasure.parse(countermeasure)
    check_budgets(eps, eps_bg)
    device = str(resolve_device(device))
    victims, baselines = _check(victims, baselines, protected_field, measure, run_key)
    if int(seeds) != seeds or seeds < 1 or int(seed) != seed:
        raise ValueError(
            f"seeds must be a whole number of trainings, at least 1, and seed a whole "
            f"number; got {seeds} and {seed}"
        )
    seed, seeds = int(seed), int(seeds)
    targets = resolve_targets(samples, label_field, semantic_field, background, ignore)
    split, skipped = _readable(
        samples, split_samples(samples, split_tags, train_fraction, seed), protected_field, targets
    )
    models = {
        name: make_victim(name, yolo_weights, sam_checkpoint, semantic_weights) for name in victims
    }
    for key, given in (("epochs", epochs), ("image_size", image_size)):
        unknown = sorted(set(given) - set(VICTIMS)) if isinstance(given, dict) else []
        if unknown:
            raise ValueError(f"{key}: unknown victims {unknown}; choose from {', '.join(VICTIMS)}")
    settings = {
        name: _settings(name, model, epochs, image_size, seed, device)
        for name, model in models.items()
    }
    dataset = samples._dataset
    folder = os.path.abspath(output_dir or default_output_dir(dataset.name, run_key))
    _check_run_key(dataset, run_key)
    variants = [CLEAN] + ([PROTECTED] if protected_field else []) + list(baselines)
    if any(model.labels == "instances" for model in models.values()):
        _check_test_instances(_labels(samples, split.test_ids, targets), targets)
    images = training_images(
        samples,
        split.train_ids,
        targets,
        variants,
        os.path.join(folder, "train-images"),
        protected_field,
        measure,
        eps,
        eps_bg,
    )
    train_labels = _labels(samples, split.train_ids, targets)
    test_paths = clean_paths(samples, split.test_ids)
    test_examples = [
        Example(i, test_paths[i], labels)
        for i, labels in zip(split.test_ids, _labels(samples, split.test_ids, targets))
    ]
    train = {
        variant: [Example(i, images[variant][i], x) for i, x in zip(split.train_ids, train_labels)]
        for variant in variants
    }
    data = examples_digest(train[CLEAN], test_examples)
    weights = {"yolo": yolo_weights, "semantic": semantic_weights}
    fingerprints = {
        name: clean_fingerprint(
            name, settings[name], seeds, weights.get(name, sam_checkpoint), targets, data
        )
        for name in models
    }
    reused = {  # looked up before the audit this one replaces is forgotten: it may be one
        name: find_clean_run(dataset, name, fingerprint) if reuse_clean else None
        for name, fingerprint in fingerprints.items()
    }
    kept = [r.field for r in reused.values() if r is not None and r.run_key == run_key]
    _forget(dataset, run_key, kept)  # only now: a refused audit leaves the earlier one as it was
    test_view = dataset.select(split.test_ids, ordered=True)
    needed = {victim.labels for victim in models.values()}
    ground_truth = _ground_truth(test_view, test_examples, targets, needed, run_key, folder)

    trainings = {name: len(variants) - (reused[name] is not None) for name in models}
    done, total = 0, seeds * sum(s.epochs * trainings[name] for name, s in settings.items())

    def on_epoch() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    results = [
        _audit_victim(
            name,
            victim,
            settings[name],
            train,
            test_examples,
            test_view,
            ground_truth[victim.labels],
            targets,
            os.path.join(folder, name),
            run_key,
            seeds,
            on_epoch,
            reused[name],
            fingerprints[name] if reuse_clean else None,
        )
        for name, victim in models.items()
    ]
    report = ProtectionReport(
        run_key=run_key,
        dataset=dataset.name,
        split=split.source,
        num_train=len(split.train_ids),
        num_test=len(split.test_ids),
        protected_field=protected_field,
        countermeasure=None if measure is None else str(measure),
        baselines=tuple(baselines),
        results=results,
        folder=folder,
        image_side=_median_side(images[CLEAN].values()),
        seconds=time.monotonic() - started,
        skipped=skipped,
    )
    write_report(report)
    config = {
        "label_field": label_field,
        "semantic_field": semantic_field,
        "background": targets.segment_values.background,
        "ignore": sorted(targets.segment_values.ignore),
        "victims": list(victims),
        "protected_field": protected_field,
        "baselines": list(baselines),
        "countermeasure": report.countermeasure,
        "eps": eps,
        "eps_bg": eps_bg,
        "split": split.source,
        "seed": seed,
        "seeds": seeds,
        "device": device,
        "settings": {name: _public(s) for name, s in settings.items()},
        "weights": {
            "yolo": yolo_weights,
            "sam": sam_checkpoint,
            "semantic": semantic_weights,
        },
        "ground_truth": ground_truth,
        "folder": folder,
        "clean_fingerprints": fingerprints,
    }
    record_run(samples, report, config)
    return report


def _audit_victim(
    name, victim, settings, train, test, test_view, gt_field, targets, folder, run_key, seeds,
    on_epoch, reuse=None, fingerprint=None,
) -> VictimResult:  # fmt: skip
    """Train ``victim`` ``seeds`` times per variant (``train``: variant -> examples), predict
    the clean ``test`` examples, store the first seed's predictions and score each seed's
    against ``gt_field``. The clean variant comes from ``reuse`` (a :class:`CleanRun`)
    when given; with the victim's ``fingerprint``, each training this folder recorded as
    finished under its key (:func:`training_key`) is taken, not trained again."""
    started = time.monotonic()
    result = VictimResult(name, victim.metric, settings=_public(settings))
    dataset, ids = test_view._dataset, [example.sample_id for example in test]
    for variant, examples in train.items():
        pred_field = f"{run_key}_{name}_{variant}"
        scores = []
        if variant == CLEAN and reuse is not None:
            logger.info("%s: clean trainings taken from audit %r", name, reuse.run_key)
            copies = os.path.join(folder, CLEAN, "predictions")
            if replaces_files(dataset, reuse, copies):  # the record must not outlive
                forget_training(os.path.join(folder, CLEAN))  # the files it names
            copy_predictions(dataset, ids, reuse, pred_field, copies)
            victim.score(test_view, pred_field, gt_field, f"{pred_field}_eval", targets)
            scores, result.chance = list(reuse.scores), reuse.chance
            result.reused[variant] = reuse.run_key
        for k in range(0 if scores else seeds):
            work = os.path.join(folder, variant if k == 0 else f"{variant}-seed{k}")
            run = dataclasses.replace(settings, seed=settings.seed + k)
            key = fingerprint and training_key(fingerprint, variant, examples, run.seed)
            finished = key and finished_training(work, key, predictions=k == 0)
            if finished:  # an audit stopped after this training: its record
                logger.info("%s %s seed %d: taken from %s", name, variant, run.seed, work)
                for _ in range(settings.epochs):
                    on_epoch()
                score, chance, predictions = finished  # predictions: the first seed's only
            else:
                forget_training(work)  # its folder's files are being replaced
                model = victim.train(examples, targets, run, work, on_epoch)
                predictions = victim.predict(
                    model, test, targets, run, os.path.join(work, "predictions")
                )
            if predictions is not None:
                field = pred_field if k == 0 else f"{pred_field}_seed{k}"
                dataset.set_values(field, dict(zip(ids, predictions)), key_field="id")
                scored = victim.score(test_view, field, gt_field, f"{field}_eval", targets)
                if k > 0:  # only its score is kept
                    dataset.delete_evaluation(f"{field}_eval")
                    dataset.delete_sample_field(field)
            if not finished:
                score, chance = scored
                if key:
                    save_training(work, key, float(score), float(chance), predictions, k == 0)
            scores.append(float(score))
            if k == 0:  # the trivial predictor as the training knew it (YOLO's: its prior)
                result.chance = float(chance)
        result.scores[variant] = float(np.mean(scores))
        if seeds > 1:
            result.runs[variant] = scores
            result.spread[variant] = float(np.std(scores, ddof=1))
        result.fields[variant], result.eval_keys[variant] = pred_field, f"{pred_field}_eval"
    result.seconds = time.monotonic() - started
    return result


def _readable(
    samples, split: Split, protected_field: str | None, targets: Targets | None = None
) -> tuple[Split, list[dict]]:
    """``split`` without the samples whose images (or, of ``targets``' Segmentation fields,
    masks on disk) cannot be read or that have no label (never annotated: an empty label
    is one), and those samples."""
    ids = split.train_ids + split.test_ids
    paths = {i: [p] for i, p in clean_paths(samples, ids).items()}
    skipped = []
    for field in targets.fields if targets is not None else ():
        view = samples.select(ids)
        for sample_id, label in zip(view.values("id"), view.values(field)):
            if label is None:
                error = ValueError(f"no {field!r} label: unlabelled, neither trained nor tested")
                skipped.append(failure(sample_id, paths[sample_id][0], error))
                paths[sample_id] = []
    if protected_field and samples._dataset.has_field(protected_field):
        view = samples._dataset.select(split.train_ids)
        for sample_id, path in zip(view.values("id"), view.values(protected_field)):
            if path and os.path.isfile(path):  # missing ones: protected_paths explains
                paths[sample_id].append(path)
    for sample_id in ids:
        for path in paths[sample_id]:
            try:
                read_rgb(path)
            except ValueError as error:
                skipped.append(failure(sample_id, path, error))
                logger.warning("skipping sample %s: %s", sample_id, error)
                break
    for field in targets.fields if targets is not None else ():
        view = samples.select(ids)
        unread = {s["id"] for s in skipped}
        for sample_id, label in zip(view.values("id"), view.values(field)):
            if sample_id in unread or label is None:
                continue
            for mask_path, owner in _mask_files(label):
                try:
                    if load_mask(owner).ndim == 3 and isinstance(owner, fo.Segmentation):
                        raise ValueError(
                            f"{mask_path}: an RGB mask; the audit needs integer class masks "
                            "(one class index per pixel)"
                        )
                except ValueError as error:
                    skipped.append(failure(sample_id, mask_path, error))
                    logger.warning("skipping sample %s: %s", sample_id, error)
                    unread.add(sample_id)
                    break
    if not skipped:
        return split, []
    bad = {s["id"] for s in skipped}
    train = tuple(i for i in split.train_ids if i not in bad)
    test = tuple(i for i in split.test_ids if i not in bad)
    if not train or not test:
        raise ValueError(
            f"{len(bad)} samples have unreadable images or masks or no labels (e.g. sample "
            f"{skipped[0]['id']}: {skipped[0]['reason']}): no training or no test samples "
            "are left"
        )
    return Split(train, test, split.source), skipped


def _check_test_instances(test_labels: list[dict], targets: Targets) -> None:
    """ValueError, before anything trains, unless a test sample holds an instance of the
    label field's classes: instance victims would have nothing to be scored on (FiftyOne's
    mAP is -1 then)."""
    if any(targets.has_instance(labels) for labels in test_labels):
        return
    raise ValueError(
        f"none of the {len(test_labels)} test samples holds an instance of "
        f"{targets.label_field!r}: the instance victims (yolo, sam, sam_point) would have "
        "nothing to be scored on; test on labelled samples (the test tag), or audit with "
        "the semantic victim alone"
    )


def _mask_files(label) -> list[tuple[str, object]]:
    """(mask file, the label or detection it belongs to) of a label whose masks are on
    disk: a Segmentation's ``mask_path``, each of its Detections' ``mask_path``."""
    owners = [label] if isinstance(label, fo.Segmentation) else getattr(label, "detections", [])
    return [(o.mask_path, o) for o in owners if getattr(o, "mask_path", None)]


def _median_side(paths) -> int:
    """The median long side of the images at ``paths``, in pixels."""
    sides = []
    for path in paths:
        with Image.open(path) as image:
            sides.append(max(image.size))
    return int(np.median(sides))


def default_output_dir(dataset_name: str, run_key: str) -> str:
    """``<fo.config.default_dataset_dir>/unseg-audit/<dataset>/<run_key>``."""
    safe = safe_name(dataset_name, "dataset")
    return os.path.join(fo.config.default_dataset_dir, "unseg-audit", safe, run_key)


def _check(victims, baselines, protected_field, measure, run_key) -> tuple[tuple, tuple]:
    """Validate the choices; returns victims and baselines as tuples without repeats."""
    victims = tuple(dict.fromkeys([victims] if isinstance(victims, str) else victims))
    baselines = tuple(dict.fromkeys([baselines] if isinstance(baselines, str) else baselines))
    unknown = [v for v in victims if v not in VICTIMS]
    if unknown or not victims:
        raise ValueError(f"victims must be some of {', '.join(VICTIMS)}; got {list(victims)}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    if "none" in baselines and measure is None:
        raise ValueError(
            "the 'none' baseline is the clean images through the counter-measure: give a "
            "countermeasure, or leave 'none' out (without one it would train clean twice)"
        )
    if measure is not None and not protected_field and not baselines:
        raise ValueError(
            "a counter-measure applies to protected and baseline images, never to clean ones: "
            "give a protected field or baselines (the 'none' baseline: clean images through it)"
        )
    if not re.fullmatch(r"[A-Za-z_]\w*", run_key):
        raise ValueError(f"run_key must be letters, digits and underscores, got {run_key!r}")
    return victims, baselines


def _settings(name, victim, epochs, image_size, seed, device) -> Settings:
    """The victim's defaults, overridden by ``epochs`` / ``image_size`` (int or dict)."""
    values = victim.defaults()
    for key, given in (("epochs", epochs), ("image_size", image_size)):
        value = given.get(name) if isinstance(given, dict) else given
        if value is not None:
            if int(value) == 0 and key == "epochs" and victim.pretrained:
                values[key] = 0  # the starting weights as they are
            elif int(value) < 1:
                zero = " (0 only for a victim with starting weights that keep their head)"
                raise ValueError(
                    f"{key} must be positive{zero * (key == 'epochs')}, got {value} for {name}"
                )
            else:
                values[key] = int(value)
    return Settings(seed=seed, device=device, **values)


def _public(settings: Settings) -> dict:
    return {k: getattr(settings, k) for k in ("epochs", "image_size", "batch_size", "lr")}


def _labels(samples, ids, targets: Targets) -> list[dict]:
    """Per sample of ``ids``: label field -> label."""
    view = samples.select(ids, ordered=True)
    columns = [view.values(field) for field in targets.fields]
    return [dict(zip(targets.fields, labels)) for labels in zip(*columns)]


def _ground_truth(view, examples, targets: Targets, needed, run_key: str, folder: str) -> dict:
    """The fields the predictions are scored against, per target kind in ``needed``.

    Instances are always the ones the victims learn and are prompted with: the audited
    view's labels (its filters and renamed classes) as :meth:`Targets.instances` paints
    them (overlaps resolved), written on the test samples as ``<run_key>_gt_instances``
    (Detections). Classes are the Segmentation field itself, else derived alike as
    ``<run_key>_gt_semantic`` (Segmentation, values 1..K).
    """
    fields = {
        "instances": None,
        "semantic": targets.semantic_field
        or (targets.label_field if targets.label_type is fo.Segmentation else None),
    }
    fields = {kind: field for kind, field in fields.items() if kind in needed}
    if all(fields.values()):
        return fields
    instances, semantic = {}, {}
    for example in examples:
        height, width = read_rgb(example.image_path).shape[:2]
        if "instances" in fields and fields["instances"] is None:
            masks, classes = targets.instances(example.labels, height, width)
            instances[example.sample_id] = fo.Detections(
                detections=[
                    fo.Detection.from_mask(m, label=targets.instance_classes[c])
                    for m, c in zip(masks, classes)
                ]
            )
        if "semantic" in fields and fields["semantic"] is None:
            path = os.path.join(folder, "gt-semantic", f"{example.sample_id}.png")
            class_map = targets.semantic(example.labels, height, width)
            atomic_write_image(Image.fromarray(class_map), path)
            semantic[example.sample_id] = fo.Segmentation(mask_path=path)
    dataset = view._dataset
    for kind, values in (("instances", instances), ("semantic", semantic)):
        if values:
            fields[kind] = f"{run_key}_gt_{kind}"
            dataset.set_values(fields[kind], values, key_field="id")
    return fields


def _check_run_key(dataset, run_key: str) -> None:
    """ValueError if ``run_key`` names a run of another kind than an audit."""
    if run_key in dataset.list_runs() and run_key not in dataset.list_runs(method=METHOD):
        raise ValueError(f"run key {run_key!r} belongs to another kind of run; choose another")


def output_prefixes(run_key: str) -> tuple[str, ...]:
    """How the names of the fields and evaluations an audit under ``run_key`` writes begin:
    ``<run_key>_gt_`` (its ground truth), ``<run_key>_<victim>_`` (predictions)."""
    return tuple(f"{run_key}_{part}_" for part in ("gt", *VICTIMS))


def _forget(dataset, run_key: str, kept=()) -> None:
    """Delete the fields (but the prediction fields ``kept``, which this audit takes as its
    own clean trainings) and evaluations of an earlier audit with this key, and those an
    audit under it wrote before it stopped unrecorded (``<run_key>_<victim>_...``,
    ``<run_key>_gt_...``; not those of a recorded audit under another key)."""
    _check_run_key(dataset, run_key)
    evaluations, fields = set(), set()
    for key in dataset.list_runs(method=METHOD):
        results = load_report(dataset, key).results
        owned = {f for r in results for f in r.fields.values()} | {
            f"{key}_gt_{kind}" for kind in ("instances", "semantic")
        }
        if key == run_key:
            evaluations |= {e for r in results for e in r.eval_keys.values()}
            fields |= owned
        else:
            kept = {*kept, *owned}
    prefixes = output_prefixes(run_key)
    for eval_key in dataset.list_evaluations():
        if eval_key.startswith(prefixes) and eval_key[: -len("_eval")] not in kept:
            evaluations.add(eval_key)
    kept_evaluations = tuple(f"{field}_eval" for field in kept)  # and their fields
    fields |= {
        f
        for f in dataset.get_field_schema()
        if f.startswith(prefixes) and not f.startswith(kept_evaluations)
    }
    for eval_key in evaluations:
        if dataset.has_evaluation(eval_key):
            dataset.delete_evaluation(eval_key)
    for field in fields - set(kept):
        if dataset.has_sample_field(field):
            dataset.delete_sample_field(field)
    if run_key in dataset.list_runs():
        dataset.delete_run(run_key)
