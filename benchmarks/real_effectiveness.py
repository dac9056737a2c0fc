"""How much protection hurts victims trained on real photographs, tested on real held-out ones.

The data are public datasets read from ``--data`` (default ``../shared/data`` beside
the repo; :mod:`real_data` says what to download when it is missing), imported with
FiftyOne's own importers. Each victim's training split is protected as ``unseg
protect`` does (the same :func:`fiftyone_unseg.protect`, default budgets 8/255 on
objects and 2/255 elsewhere), then audited as ``unseg evaluate`` does
(:func:`fiftyone_unseg.evaluate_protection`): trained on clean, protected, uniform
random noise under the same budget map (``random``), the same noise at the object
budget on every pixel (``random_flat``) and the fixed mask-aligned pattern, each with
``--seeds`` victim seeds, and tested on the CLEAN held-out images:

- ``semantic``: LRASPP-MobileNetV3 on CamVid, trained on its 367 ``train`` images,
  tested on its 233 ``test`` images (SegNet's split: 171 of a drive the training split
  does not hold, 62 that continue one of its drives); mIoU over the 11 classes, void
  (255) neither learnt nor scored; trivial predictor: the most frequent class.
- ``yolo``: YOLOv8n-seg from scratch on the Oxford pets (each pet one instance of
  class ``pet``, the split of ``sam_point``) at 128 px, 40 epochs; mask mAP@[.5:.95];
  trivial predictor: the training pets' median box, filled. ``yolo_coco`` is the COCO
  task it replaced: ``person`` instances (646 in the 318 photos of ``coco_mini`` +
  ``coco_tiny``), tested on ``coco128_seg``, at 320 px; in 40 epochs from scratch
  (25 minutes a training here) it reaches mask mAP 0.0006, nothing to protect, so it
  runs only on request (``--victims yolo_coco --epochs N``) for machines that can train
  it for longer. The owner protects every instance.
- ``sam_point``: the SAM layout from scratch, prompted with one click inside each
  object (its innermost pixel) on Oxford pets (two thirds train, every third photo
  test, less 7 that are copies of training photos); mean mask IoU; trivial predictor:
  the training objects' median-sized box around the click. ``sam`` (box prompts, trivial predictor: the filled box) is the
  second interactive metric.

COCO and the pets are published at the size their victims train at (320 and 128 px long
side, ``Task.resizes_images``; ``--image-size N``: at N, recorded as ``published_side``),
so the victims see the noise at the images' own resolution.

Then the stress tests (``--stress``) for the semantic victim: protected, pattern and
clean images (``none``) through JPEG 75, Gaussian blur sigma 1 and half-scale
before training (by default when the stress victim is among ``--victims``); the
informed ones on request (JPEG 90, grayscale, median 3x3, a bilateral
"purification", quarter-scale, and ``class_texture``: each class's mean
texture on the generator's patch grid, estimated with the labels over the training
images and subtracted, :mod:`fiftyone_unseg.audit.class_texture`; ``class_tint``: each
class's mean colour against the clean originals of a tenth of the training images,
subtracted: the informed attack on colour class keys; ``class_tint_few``: the same with
a fiftieth); ``--stress-victim
yolo`` measures them on another victim, kept as ``yolo_jpeg75`` and so on. ``ratio`` =
protected / clean, ``gain_ratio`` = (protected - chance) / (clean - chance), ``spread`` = the
largest sample standard deviation over the seeds of clean and protected (none with one
seed). Writes ``benchmarks/results/real/effectiveness.json``; ``--update`` keeps the rows
this run does not measure, less those on another split of a dataset it measures.

    python benchmarks/real_effectiveness.py                         # everything (hours)
    python benchmarks/real_effectiveness.py --victims semantic --stress
    python benchmarks/real_effectiveness.py --victims --stress jpeg75 --update
    python benchmarks/real_effectiveness.py --victims --stress jpeg75 --stress-victim yolo --update
    python benchmarks/real_effectiveness.py --victims --stress blur1 --seeds 1 --victim-seed 1 \
        --update --add-seeds                                          # a second seed
    python benchmarks/real_effectiveness.py --quick --out /tmp/x.json  # a smoke run
    python benchmarks/real_effectiveness.py --victims sam_point --baselines pattern --stress \
        --image-size 256 --seeds 1 --out x.json                     # a finer-grained victim
    python benchmarks/real_effectiveness.py --generator runs/x/generator --victims semantic \
        --baselines --stress --out x.json                             # another generator
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import real_data
import torch
from machine import (
    add_protection_arguments,
    machine_facts,
    output_path,
    protection_generator,
    resolve_protection,
)
from real_rows import borrow, merge, pooled, summary_row

from fiftyone_unseg import evaluate_protection, protect
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.labels import PROMPT_MODES

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "real")
STRESS = {  # the first three run by default; the rest are the informed attacks
    "jpeg75": "jpeg:75",
    "blur1": "blur:1.0",
    "half_scale": "downscale:0.5",
    "jpeg90": "jpeg:90",
    "grayscale": "grayscale",
    "median3": "median:3",
    "bilateral": "bilateral:25",
    "quarter_scale": "downscale:0.25",
    "class_texture": "texture:16",
    "class_tint": "tint:0.1",
    "class_tint_few": "tint:0.02",
}
DEFAULT_STRESS = ("jpeg75", "blur1", "half_scale")
BASELINES = ("random", "random_flat", "pattern")
EXTRA_BASELINES = ("class_pattern", "class_colour")
STRESS_BASELINES = ("pattern", "none")  # one tile per class: the yardstick of class keys


@dataclass(frozen=True)
class Task:
    """One victim's real-data task: where its data come from and how it trains."""

    dataset: str  # camvid, coco or pets
    protect_field: str  # what the owner protects
    label_field: str  # what the victim learns
    epochs: int
    image_size: int
    # The victim resizes whole images to image_size, so the dataset is published at that
    # long side: the victim sees the noise at the images' own resolution, as full-scale
    # victims see full-scale photos (320 px training on 640 px photos would add a
    # half-scale counter-measure, which the stress rows measure on their own).
    resizes_images: bool = False


TASKS = {  # CamVid's semantic victim trains on crops of the full frames
    "semantic": Task("camvid", "ground_truth", "ground_truth", epochs=12, image_size=128),
    "yolo": Task(
        "pets", "ground_truth", "ground_truth", epochs=40, image_size=128, resizes_images=True
    ),
    "yolo_coco": Task(
        "coco", "instances", "person", epochs=40, image_size=320, resizes_images=True
    ),
    "sam_point": Task(
        "pets", "ground_truth", "ground_truth", epochs=80, image_size=128, resizes_images=True
    ),
    "sam": Task("pets", "ground_truth", "ground_truth", epochs=8, image_size=128),
}
QUICK_LIMIT = 8  # images per split with --quick
SAM_VICTIMS = ("sam", "sam_point")  # what --sam-checkpoint starts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    add_protection_arguments(parser)
    parser.add_argument(
        "--victims", nargs="*", choices=list(TASKS), default=["semantic", "yolo", "sam_point"]
    )
    parser.add_argument(
        "--stress",
        nargs="*",
        choices=list(STRESS),
        help=f"counter-measures (default: {' '.join(DEFAULT_STRESS)} when --stress-victim is "
        "among --victims, else none)",
    )
    parser.add_argument("--stress-victim", choices=list(TASKS), default="semantic")
    parser.add_argument(
        "--stress-baselines",
        nargs="*",
        choices=STRESS_BASELINES + EXTRA_BASELINES,
        default=list(STRESS_BASELINES),
        help="what stress rows train besides clean and protected: the pattern and clean "
        "images (none) through the counter-measure; neither depends on the generator, so a "
        "second generator's run at the same victim seeds can leave them out",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=BASELINES + EXTRA_BASELINES,
        default=list(BASELINES),
        help="the victims' baselines (fewer: compare another generator at the same seeds)",
    )
    parser.add_argument(
        "--prompt",
        choices=PROMPT_MODES,
        default="all",
        help="protect's prompt: one pass on the union of the segments (default) or one "
        "more decoder pass per segment (unseg protect --per-instance)",
    )
    parser.add_argument("--seeds", type=int, default=2, help="victim trainings per variant")
    parser.add_argument("--victim-seed", type=int, default=0, help="the first victim seed")
    parser.add_argument("--epochs", type=int, help="for every victim (default: the task's)")
    parser.add_argument(
        "--image-size",
        type=int,
        help="for every victim (default: the task's); the pets and COCO are then published "
        "at that long side",
    )
    parser.add_argument(
        "--sam-checkpoint",
        metavar="FILE",
        help="the interactive victims fine-tune this SAM state dict (e.g. from "
        "pretrained_sam.py) instead of training from scratch; their rows add the "
        "checkpoint's own score on the test images (pretrained)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_LIMIT} images per split, 1 epoch"
    )
    parser.add_argument(
        "--out",
        help=f"default: {os.path.relpath(RESULTS)}/effectiveness.json, with another --preset "
        "than the default <preset>.json (with --quick: required)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep what --out holds (same generator and budgets) and replace only what "
        "this run measures",
    )
    parser.add_argument(
        "--add-seeds",
        action="store_true",
        help="with --update: add this run's victim seeds (--victim-seed on) to the rows "
        "--out holds instead of replacing them, e.g. a second seed of a long row",
    )
    parser.add_argument(
        "--baselines-from",
        metavar="FILE",
        help="another generator's results: each row of the output takes the baselines that "
        "FILE's same row measured and it did not, where both trained identical clean "
        "victims (same settings, seeds and clean scores), e.g. `--baselines --update "
        "--baselines-from benchmarks/results/real/effectiveness.json` for a new generator",
    )
    args = parser.parse_args(argv)
    resolve_protection(parser, args)
    args.out = output_path(parser, args, default_results(args.preset))
    if args.add_seeds and not args.update:
        parser.error("--add-seeds adds to what --out holds: give --update too")
    if args.quick:
        args.epochs = 1
    if args.stress is None:  # `--victims sam_point` alone must not train semantic stress rows
        args.stress = list(DEFAULT_STRESS) if args.stress_victim in args.victims else []
        if not args.stress:
            print(f"no stress rows: --stress-victim {args.stress_victim} is not among --victims")
    return args


def default_results(preset: str | None) -> str:
    """The committed results of ``preset``: ``effectiveness.json`` for the default (the
    model card's), ``<preset>.json`` for the others."""
    name = "effectiveness" if preset in (None, "default") else preset
    return os.path.join(RESULTS, f"{name}.json")


def _load(name: str, root: str, limit):
    if name == "camvid":
        return real_data.load_camvid(root, limit=limit)
    if name == "coco":
        return real_data.load_coco(root, classes=["person"], limit=limit)
    return real_data.load_pets(root, limit=limit)


def run(args) -> dict:
    """The measurements as the JSON document described in the module docstring."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    root = real_data.data_dir(args.data)
    limit = QUICK_LIMIT if args.quick else None
    generator, generator_id = protection_generator(args)
    wanted = set(args.victims) | ({args.stress_victim} if args.stress else set())
    datasets, quality, sides = {}, {}, {}
    for name in sorted({TASKS[v].dataset for v in wanted}):
        dataset = datasets[name] = _load(name, root, limit)
        # Published at one side per dataset, whichever of its victims this run trains.
        tasks = [t for t in TASKS.values() if t.dataset == name]
        published_sides = [_image_size(t, args) for t in tasks if t.resizes_images]
        if published_sides:
            side = sides[name] = max(published_sides)
            published = dataset.match_tags(("train", "test"))
            real_data.downscale(published, side, os.path.join(sandbox.TMP, f"{name}-{side}px"))
        field = next(t.protect_field for t in TASKS.values() if t.dataset == name)
        train = dataset.match_tags("train")
        protect(
            train, field, generator=generator, eps=args.eps, eps_bg=args.eps_bg,
            class_mix=args.class_mix, class_style=args.class_style, prompt=args.prompt,
            progress=tqdm_progress(f"protect {name}"),
        )  # fmt: skip
        quality[name] = {
            "psnr": _mean(train.values("unseg.psnr")),
            "ssim": _mean(train.values("unseg.ssim")),
            "images": len(train),
        }
    victims = {}
    for victim in args.victims:
        task = TASKS[victim]
        result = _audit(datasets[task.dataset], victim, task, args.baselines, None, args)
        row = _summary(result, args.baselines, args)
        if task.dataset == "camvid":
            row["unseen_drive"] = _unseen_drive(datasets["camvid"], victim, task, row, None)
        if _checkpoint(victim, args):
            row["checkpoint"] = _describe_file(args.sam_checkpoint)
            row["pretrained"] = _pretrained_score(datasets[task.dataset], victim, task, args)
        victims[_row_key(victim, args)] = {"dataset": task.dataset, **row}
    stress = {}
    for name in args.stress:
        task = TASKS[args.stress_victim]
        baselines = tuple(args.stress_baselines)
        result = _audit(datasets[task.dataset], args.stress_victim, task, baselines, name, args)
        row = _summary(result, baselines, args)
        if task.dataset == "camvid":
            row["unseen_drive"] = _unseen_drive(
                datasets["camvid"], args.stress_victim, task, row, name
            )
        stress[stress_key(_row_key(args.stress_victim, args), name)] = {
            "victim": _row_key(args.stress_victim, args),
            "dataset": task.dataset,
            "countermeasure": STRESS[name],
            "countermeasure_ratio": None,  # without the "none" baseline
            **row,
        }
    return {
        "generator": generator_id,
        "eps": args.eps,
        "eps_bg": args.eps_bg,
        "class_mix": args.class_mix,
        "class_style": args.class_style,
        "preset": args.preset,
        "prompt": args.prompt,
        "data": {
            name: {
                "train": d.count_sample_tags().get("train"),
                "test": d.count_sample_tags().get("test"),
                **({"published_side": sides[name]} if name in sides else {}),
            }
            for name, d in datasets.items()
        },  # fmt: skip
        "victims": victims,
        "psnr": pooled(quality, "psnr"),
        "ssim": pooled(quality, "ssim"),
        "quality": quality,
        "stress": stress,
        "victim_seed": args.victim_seed,
        "quick": args.quick,
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }


def _describe_file(path: str) -> dict:
    """A weights file as the results name it: base name and the start of its SHA-256."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"name": os.path.basename(path), "sha256": digest[:12]}


def stress_key(victim: str, name: str) -> str:
    """A stress row's key in the results: the counter-measure's name for the semantic
    victim (the rows every run measures), ``VICTIM_NAME`` for the others, so that one
    file holds each victim's row under each counter-measure."""
    return name if victim == "semantic" else f"{victim}_{name}"


def _image_size(task: Task, args) -> int:
    """The side ``task``'s victim trains at in this run: ``--image-size`` or the task's."""
    return args.image_size or task.image_size


def _checkpoint(victim: str, args) -> str | None:
    """The SAM state dict ``victim`` fine-tunes in this run, if any."""
    return args.sam_checkpoint if victim in SAM_VICTIMS else None


def _row_key(victim: str, args) -> str:
    """``victim``'s key in the results: ``<victim>_finetuned`` when it starts from a
    checkpoint (another victim than the one trained from scratch)."""
    return f"{victim}_finetuned" if _checkpoint(victim, args) else victim


def _audit(dataset, victim: str, task: Task, baselines, stress, args, untrained=False):
    """``victim``'s audit on ``dataset`` (with ``untrained``: its starting weights alone,
    on the clean test images)."""
    run_key = _run_key(victim, stress) + ("_0" if untrained else "")
    checkpoint = _checkpoint(victim, args)
    if untrained:
        epochs = 0
    else:  # a checkpoint fine-tunes for its victim's default epochs, unless told otherwise
        epochs = args.epochs or (None if checkpoint else task.epochs)
    report = evaluate_protection(
        dataset,
        task.label_field,
        victims=[victim],
        protected_field=None if untrained else "protected_filepath",
        baselines=baselines,
        countermeasure=STRESS[stress] if stress else None,
        epochs=epochs,
        image_size=_image_size(task, args),
        seed=args.victim_seed,
        seeds=1 if untrained else args.seeds,
        sam_checkpoint=checkpoint,
        run_key=run_key,
        progress=tqdm_progress(run_key, unit="epoch"),
    )
    return report.results[0]


def _run_key(victim: str, stress: str | None) -> str:
    """The audit's run key, which names its prediction fields."""
    return f"real_{victim}" + (f"_{stress}" if stress else "")


def _unseen_drive(dataset, victim: str, task: Task, row: dict, stress) -> dict:
    """The first victim seed's scores and ratios on CamVid's test frames from the drive
    no training frame comes from (:data:`real_data.CAMVID_UNSEEN_DRIVE`); the other test
    frames continue a training drive."""
    from fiftyone import ViewField as F

    from fiftyone_unseg.audit.targets import resolve_targets
    from fiftyone_unseg.audit.victims import make_victim

    prefix = real_data.CAMVID_UNSEEN_DRIVE
    view = dataset.match_tags("test").match(F("filepath").re_match(f".*/{prefix}_[^/]*$"))
    if not len(view):  # a --quick run may draw none
        return None
    targets, scorer = resolve_targets(dataset, task.label_field), make_victim(victim)
    scores = {}
    for variant in row["runs"]:
        field = f"{_run_key(victim, stress)}_{victim}_{variant}"  # the audit's, first seed
        scores[variant] = scorer.score(view, field, task.label_field, f"{field}_unseen", targets)[0]
    names = {"protected": "ratio", "none": "countermeasure_ratio"}
    ratios = {
        names.get(v, f"{v}_ratio"): s / scores["clean"] if scores["clean"] else None
        for v, s in scores.items()
        if v != "clean"
    }
    return {"images": len(view), "victim_seed": row["victim_seeds"][0], **scores, **ratios}


def _pretrained_score(dataset, victim: str, task: Task, args) -> float:
    """The checkpoint's own score on ``victim``'s test images: no training at all."""
    return _audit(dataset, victim, task, (), None, args, untrained=True).scores["clean"]


def _summary(result, baselines, args) -> dict:
    """A victim's row (:func:`real_rows.summary_row`) from its audit result."""
    seeds = list(range(args.victim_seed, args.victim_seed + args.seeds))
    variants = ("clean", "protected", *baselines)
    runs = {v: result.runs.get(v, [result.scores[v]]) for v in variants}
    return {**summary_row(result.metric, result.chance, runs, seeds), "settings": result.settings}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def table(results: dict) -> str:
    def fmt(x, width=6):
        return f"{'n/a':>{width}}" if x is None else f"{x:{width}.3f}"

    width = max([10, *map(len, results["victims"])])
    lines = [
        f"generator {results['generator']}, class mix {results.get('class_mix', 0.0)} "
        f"({results.get('class_style', 'texture')}), prompt "
        f"{results.get('prompt', 'all')}, eps "
        f"{results['eps'] * 255:g}/255 objects, {results['eps_bg'] * 255:g}/255 background; "
        "victim seeds from "
        f"{results['victim_seed']}; data {results['data']}",
        f"{'victim':<{width}} {'data':<7} {'metric':<23} {'chance':>6} {'clean':>6} {'prot.':>6} "
        f"{'ratio':>6} {'gain':>6} {'random':>6} {'flat':>6} {'pattern':>7} {'cl.pat':>6} "
        f"{'sd':>6} seeds",
    ]
    for name, v in results["victims"].items():
        lines.append(
            f"{name:<{width}} {v['dataset']:<7} {v['metric']:<23} {fmt(v['chance'])} "
            f"{fmt(v['clean'])} {fmt(v['protected'])} {fmt(v['ratio'])} {fmt(v['gain_ratio'])} "
            f"{fmt(v.get('random_ratio'))} {fmt(v.get('random_flat_ratio'))} "
            f"{fmt(v.get('pattern_ratio'), 7)} {fmt(v.get('class_pattern_ratio'))} "
            f"{fmt(v['spread'])} {v['seeds']:>5}"
        )
    for name, v in results["victims"].items():
        if v.get("pretrained") is not None:
            lines.append(
                f"{name}: fine-tuned from {v['checkpoint']['name']}, which scores "
                f"{v['pretrained']:.3f} on the test images before any fine-tuning"
            )
    for name, q in results["quality"].items():
        lines.append(
            f"{name}: mean PSNR {fmt(q['psnr'], 5)} dB, SSIM {fmt(q['ssim'], 5)} "
            f"over {q['images']} protected training images"
        )
    if results["stress"]:
        lines.append(
            f"{'stress':<12} {'victim':<10} {'clean':>6} {'ratio':>6} {'gain':>6} "
            f"{'pattern':>7} {'alone':>6} {'sd':>6} seeds"
        )
    for name, s in results["stress"].items():
        lines.append(
            f"{name:<12} {s['victim']:<10} {fmt(s['clean'])} {fmt(s['ratio'])} "
            f"{fmt(s['gain_ratio'])} {fmt(s.get('pattern_ratio'), 7)} "
            f"{fmt(s.get('countermeasure_ratio'))} {fmt(s['spread'])} {s['seeds']:>5}"
        )
    lines.append(
        "ratio = protected/clean; gain = (protected - chance)/(clean - chance); random, flat, "
        "pattern, cl.pat (one tile per class) = the baselines' ratios; sd = largest seed sd of "
        "clean and protected; "
        "stress: alone = clean images through the counter-measure / clean"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    donor = None
    if args.baselines_from:
        with open(args.baselines_from) as f:
            donor = json.load(f)

    def measuring(args):  # with --update, merging completes the whole file (if there is one)
        results = run(args)
        return results if args.update and os.path.exists(args.out) else borrow(results, donor)

    def merging(old, new):
        return borrow(merge(old, new, add=args.add_seeds), donor)

    return sandbox.measure_and_publish(measuring, args, merging, table)


if __name__ == "__main__":
    sys.exit(main())
