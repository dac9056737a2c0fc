"""Trainings shared between audits of one dataset, and within one audit that resumes.

A counter-measure never touches the clean images, so an audit under JPEG, blur or another
attack trains exactly the clean victims that the plain audit trained. Each audit records
a fingerprint of its clean trainings per victim (the training and test samples with
their image bytes and labels, the targets, the settings, seeds and starting weights, the
audit's code and the versions of torch, Ultralytics and FiftyOne);
a later audit with the same fingerprint takes the scores and a copy of the predictions
instead of training again. Within an audit, each finished training leaves its score
(and, for a variant's first seed, its predictions) in its folder under a key of that
fingerprint, the variant's training images and the seed: an audit that was stopped takes
them and trains only what it had not finished.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os

import fiftyone as fo

from fiftyone_unseg.audit.report import METHOD, load_report
from fiftyone_unseg.audit.targets import Targets
from fiftyone_unseg.audit.training import Example, Settings
from fiftyone_unseg.io import atomic_write_bytes
from fiftyone_unseg.protect import file_hash, label_hash


@dataclasses.dataclass(frozen=True)
class CleanRun:
    """An earlier audit's clean trainings of one victim."""

    run_key: str
    field: str  # its predictions of the first seed
    scores: list  # one per seed
    chance: float | None  # the victim's trivial predictor


def examples_digest(train: list[Example], test: list[Example]) -> str:
    """The clean training and test examples (ids, image bytes, labels), hashed (hex)."""
    digest = hashlib.blake2b(digest_size=16)
    for part, examples in (("train", train), ("test", test)):
        digest.update(part.encode())
        for example in examples:
            labels = [label_hash(example.labels[f]) for f in sorted(example.labels)]
            digest.update(f"{example.sample_id};{file_hash(example.image_path)};{labels}".encode())
    return digest.hexdigest()


def clean_fingerprint(
    name: str, settings: Settings, seeds: int, weights: str | None, targets: Targets, data: str
) -> str:
    """What a victim's clean trainings and their scores depend on, hashed (hex); ``data``
    is the :func:`examples_digest` of its examples."""
    facts = {
        "code": _code_digest(),
        "victim": name,
        "settings": dataclasses.asdict(settings),
        "seeds": seeds,
        "weights": weights and file_hash(weights),
        "targets": repr(targets),
        "data": data,
    }
    return hashlib.blake2b(json.dumps(facts, sort_keys=True).encode(), digest_size=16).hexdigest()


# What trains and scores the victims besides the audit package: the SAM victim's layout,
# crops, label rasterising and image reading (relative to the package), and libraries.
_VICTIM_CODE = ("modeling", "geometry.py", "labels.py", "io.py")
_VICTIM_LIBRARIES = (
    "torch", "torchvision", "ultralytics", "fiftyone", "segment_anything",
    "opencv-python", "opencv-python-headless", "scipy", "numpy", "pillow",
)  # fmt: skip


@functools.cache
def _code_digest() -> str:
    """What trains and scores the victims: the sources of the audit package and of the
    modules it trains with (:data:`_VICTIM_CODE`), and the versions of the libraries it
    trains with, hashed (hex)."""
    digest = hashlib.blake2b(digest_size=16)
    audit = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(audit)
    for source in _python_files([audit, *(os.path.join(package, p) for p in _VICTIM_CODE)]):
        digest.update(os.path.relpath(source, package).encode())
        digest.update(file_hash(source).encode())
    for library in _VICTIM_LIBRARIES:
        try:
            digest.update(f"{library}={importlib.metadata.version(library)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{library}=none".encode())
    return digest.hexdigest()


def _python_files(paths: list[str]) -> list[str]:
    """The ``.py`` files that ``paths`` (files, or folders searched through) name, sorted."""
    found = [p for p in paths if os.path.isfile(p)]
    for folder in (p for p in paths if os.path.isdir(p)):
        found += [os.path.join(r, f) for r, _, files in os.walk(folder) for f in files]
    return sorted(p for p in found if p.endswith(".py"))


TRAINED_FILE = "trained.json"  # in a training's folder: what it scored, under its key


def training_key(fingerprint: str, variant: str, examples: list[Example], seed: int) -> str:
    """A training's key: the victim's :func:`clean_fingerprint` (code, settings, targets,
    test examples), the variant and its training examples (image bytes, labels), the
    seed; hashed (hex)."""
    data = examples_digest(examples, [])
    facts = f"{fingerprint};{variant};{data};{seed}".encode()
    return hashlib.blake2b(facts, digest_size=16).hexdigest()


def save_training(folder: str, key: str, score: float, chance, predictions, keep: bool) -> None:
    """Record a finished training in ``folder``: its score, the trivial predictor's, and
    where ``keep`` its test ``predictions`` (FiftyOne labels; mask files stay in place)."""
    record = {"key": key, "score": score, "chance": chance}
    if keep:
        record["predictions"] = [None if p is None else p.to_json() for p in predictions]
    atomic_write_bytes(json.dumps(record).encode(), os.path.join(folder, TRAINED_FILE))


def forget_training(folder: str) -> None:
    """Remove ``folder``'s record before a training replaces its files: a record must never
    outlive the files it names."""
    try:
        os.remove(os.path.join(folder, TRAINED_FILE))
    except FileNotFoundError:
        pass


def finished_training(folder: str, key: str, predictions: bool):
    """(score, chance, predictions or None) of the training ``folder`` recorded under
    ``key`` (with its predictions where ``predictions``), or None: none, another, cut, or
    one whose mask files are gone."""
    try:
        with open(os.path.join(folder, TRAINED_FILE)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get("key") != key or (predictions and "predictions" not in record):
        return None
    if not predictions:
        return record["score"], record["chance"], None
    labels = [_label(p) for p in record["predictions"]]
    if any(
        text is not None and label is None for text, label in zip(record["predictions"], labels)
    ):
        return None
    return record["score"], record["chance"], labels


def _label(text: str | None):
    """The FiftyOne label ``text`` (its ``to_json``) holds; None for None, for what is no
    label class and for a label whose mask file is gone."""
    if text is None:
        return None
    kind = getattr(fo, str(json.loads(text).get("_cls")), None)
    if not (isinstance(kind, type) and issubclass(kind, fo.Label)):
        return None
    label = kind.from_json(text)
    return label if all(os.path.isfile(p) for p in _mask_paths(label)) else None


def _mask_paths(label) -> list[str]:
    """The mask files ``label`` (a Segmentation, or Detections with masks) names."""
    owners = [label, *(getattr(label, "detections", None) or [])]
    return [o.mask_path for o in owners if getattr(o, "mask_path", None)]


def find_clean_run(dataset: fo.Dataset, name: str, fingerprint: str) -> CleanRun | None:
    """The latest audit of ``dataset`` whose clean trainings of victim ``name`` had
    ``fingerprint`` and whose predictions are still there, if any."""
    for run_key in reversed(dataset.list_runs(method=METHOD)):
        recorded = getattr(dataset.get_run_info(run_key).config, "clean_fingerprints", None)
        if (recorded or {}).get(name) != fingerprint:
            continue
        result = next(r for r in load_report(dataset, run_key).results if r.victim == name)
        field = result.fields.get("clean")
        if not field or not dataset.has_sample_field(field):
            continue
        labels = dataset.exists(field).values(field)  # masks in a folder since deleted: not
        if all(os.path.isfile(p) for label in labels for p in _mask_paths(label)):
            scores = result.runs.get("clean", [result.scores["clean"]])
            return CleanRun(run_key, field, scores, result.chance)
    return None


def replaces_files(dataset, source: CleanRun, folder: str) -> bool:
    """Whether :func:`copy_predictions` of ``source`` into ``folder`` replaces files there
    (not when ``source``'s masks are those files: an audit taking the one it replaces)."""
    paths = [p for label in dataset.values(source.field) if label for p in _mask_paths(label)]
    return any(os.path.dirname(os.path.abspath(p)) != os.path.abspath(folder) for p in paths)


def copy_predictions(dataset, ids, source: CleanRun, field: str, folder: str) -> None:
    """``source``'s predictions on the samples ``ids`` as ``field``: labels without the
    earlier evaluation's attributes, mask files copied into ``folder``."""
    view = dataset.select(ids, ordered=True)
    stale = f"{source.field}_eval"
    copies = []
    for label in view.values(source.field):
        if label is not None:
            label = _fresh(label, stale, folder)
        copies.append(label)
    dataset.set_values(field, dict(zip(view.values("id"), copies)), key_field="id")


def _fresh(label, stale: str, folder: str):
    """A copy of ``label`` with new ids, no ``stale*`` attributes and its mask file (if
    any) copied into ``folder``."""
    data = label.to_dict()
    items = data.get("detections") or data.get("polylines") or [data]
    for item in items:
        item.pop("_id", None)
        for key in [k for k in item if k.startswith(stale)]:
            del item[key]
        if item.get("mask_path"):
            path = os.path.join(folder, os.path.basename(item["mask_path"]))
            with open(item["mask_path"], "rb") as f:
                atomic_write_bytes(f.read(), path)
            item["mask_path"] = path
    return fo.Label.from_dict(data)
