"""``unseg`` command-line verbs of the library (the trainer adds ``train``).

Every verb is a thin wrapper: parse flags, call one SDK function, print a
one-line summary. FiftyOne, torch and the SDK's modules are imported by the verb that
runs, so ``--help`` and argument errors come without them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys

from tqdm import tqdm

from fiftyone_unseg import database
from fiftyone_unseg.settings import (
    CLASS_KEY_SECRET,
    CLASS_STYLES,
    DEFAULT_CLASS_MIX,
    DEFAULT_EPS,
    DEFAULT_EPS_BG,
    PRESETS,
    parse_budget,
    parse_pixel_value,
    visibility_warning,
)

_open_bars = set()  # of tqdm_progress: closed before an interruption is reported


def tqdm_progress(desc: str, unit: str = "img"):
    """A ``progress(done, total)`` callable that drives a tqdm bar."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit)
            _open_bars.add(bar)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            _open_bars.discard(bar)

    return update


class _Choices:
    """argparse choices named by a module attribute, imported only when argparse reads
    them (a value to check, an error or help to print)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __iter__(self):
        return iter(list(getattr(importlib.import_module(self.module), self.name)))

    def __contains__(self, value) -> bool:
        return value in list(self)


def _cmd_sample_data(args) -> int:
    from fiftyone_unseg import sample_data

    dataset = sample_data.create_sample_dataset(
        args.name,
        num=args.num,
        seed=args.seed,
        size=args.size,
        styles=args.styles or sample_data.DEFAULT_STYLES,
        dataset_dir=args.dir,
        overwrite=args.overwrite,
        progress=tqdm_progress("scenes"),
    )
    counts = dataset.count_sample_tags()
    splits = ", ".join(f"{counts.get(s, 0)} {s}" for s, _ in sample_data.SPLITS)
    print(
        f"Created dataset {dataset.name!r}: {len(dataset)} samples ({splits}), "
        f"files in {dataset.info['dataset_dir']}"
    )
    print(f"Open it in the App: fiftyone app launch {dataset.name!r}")
    return 0


def _cmd_import_panoptic(args) -> int:
    from fiftyone_unseg.panoptic import load_coco_panoptic

    dataset = load_coco_panoptic(
        args.name,
        args.images,
        args.annotations,
        masks_dir=args.masks,
        label_field=args.label_field,
        things_field=None if args.things_field == "none" else args.things_field,
        overwrite=args.overwrite,
        progress=tqdm_progress("images"),
    )
    fields = [f for f in (args.label_field, args.things_field) if dataset.has_field(f)]
    counts = ", ".join(f"{dataset.count(f'{f}.detections')} in {f!r}" for f in fields)
    print(f"Created dataset {dataset.name!r}: {len(dataset)} samples; segments: {counts}")
    field = fields[-1] if fields else args.label_field  # things: the reference's mode
    print(f"Protect it: unseg protect --dataset {shlex.quote(dataset.name)} --label-field {field}")
    return 0


def budget_arg(text: str) -> float:
    """A budget as :func:`~fiftyone_unseg.settings.parse_budget` reads it (8/255, or 8 in
    1/255 units), as a fraction of the image range; above 16/255 a warning on stderr."""
    try:
        value = parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    warning = visibility_warning(value)
    if warning:
        print(f"unseg: warning: {warning}", file=sys.stderr)
    return value


def _share(text: str) -> float:
    """A share in [0, 1]."""
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from e
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _positive(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is less than 1")
    return value


def _shard(text: str) -> tuple[int, int]:
    """``i/n`` -> (i, n)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard like 0/4") from e
    return index, count


def _collection(args):
    """The dataset named by ``--dataset``, or its saved view ``--view``."""
    import fiftyone as fo

    if not fo.dataset_exists(args.dataset):
        raise ValueError(f"dataset {args.dataset!r} does not exist")
    dataset = fo.load_dataset(args.dataset)
    if args.view:
        if not dataset.has_saved_view(args.view):
            raise ValueError(
                f"dataset {args.dataset!r} has no saved view {args.view!r} "
                f"(saved views: {dataset.list_saved_views() or 'none'})"
            )
        return dataset.load_saved_view(args.view)
    return dataset


def _print_failures(summary: dict) -> None:
    for failure in summary["failures"]:
        print(f"failed {failure['id']} {failure['filepath']}: {failure['reason']}", file=sys.stderr)


def _exit_status(summary: dict) -> int:
    """1 if samples failed or the run stopped early (said on stderr), else 0."""
    if summary["stopped"]:
        print(f"stopped early: {summary['stopped']}; run again to finish", file=sys.stderr)
    return 1 if summary["failed"] or summary["stopped"] else 0


def _cmd_protect(args) -> int:
    from fiftyone_unseg.protect import protect

    if args.classes and args.per_instance:
        raise ValueError("choose --classes or --per-instance, not both")
    if args.quality is not None and args.format != "jpg":
        raise ValueError("--quality is the JPEG quality: give --format jpg too (PNG is lossless)")
    samples = _collection(args)
    if args.limit:  # a preview: N samples spread over the dataset, the same N every time
        samples = samples.take(args.limit, seed=0)
    try:
        summary = protect(
            samples,
            args.label_field,
            generator=args.generator,
            preset=args.preset,
            eps=args.eps,
            eps_bg=args.eps_bg,
            prompt=args.classes or ("instance" if args.per_instance else "all"),
            **_segment_values(args),
            output_dir=args.output_dir,
            image_format=args.format,
            jpeg_quality=95 if args.quality is None else args.quality,
            replace_filepath=args.replace_filepath,
            batch_size=args.batch_size,
            device=args.device,
            shard=args.shard,
            overwrite=args.overwrite,
            progress=tqdm_progress("protect"),
            class_mix=args.class_mix,
            class_key=args.class_key,
            class_style=args.class_style,
        )
    except FileNotFoundError as e:  # no default generator installed, or a wrong --generator
        raise ValueError(str(e)) from e
    _print_failures(summary)
    busy = f", {summary['busy']} left to another run" if summary["busy"] else ""
    print(
        f"Protected {summary['protected']} of {summary['total']} samples "
        f"({summary['skipped']} already protected, {summary['no_segments']} without segments, "
        f"{summary['failed']} failed{busy}) in {summary['seconds']:.1f} s; files in "
        f"{summary['output_dir']}; run {summary['run_key']!r}"
    )
    if summary["replaced"]:
        print(
            f"{summary['replaced']} of them had a copy made with other settings or from an "
            "earlier picture: the new copy replaced it"
        )
    if args.limit:
        _print_preview(args, summary)
    return _exit_status(summary)


def _print_preview(args, summary: dict) -> None:
    """How visible the preview's noise is, and how to look at it and go on."""
    from fiftyone_unseg.summary import visibility_line

    target = f"--dataset {shlex.quote(args.dataset)}"
    if args.view:
        target += f" --view {shlex.quote(args.view)}"
    print(f"Preview: {visibility_line(summary['visibility'])}")
    print(
        f"Look at them: unseg visualize {target} --amplified-field unseg_noise_image, or "
        f"open the App (fiftyone app launch {shlex.quote(args.dataset)}) and pick "
        "protected_filepath as the grid's media field (gear icon)"
    )
    print("Protect the rest: the same command without --limit (these samples are skipped)")


def _cmd_restore(args) -> int:
    from fiftyone_unseg.protect import restore

    summary = restore(
        _collection(args),
        delete_protected=args.delete_protected,
        progress=tqdm_progress("restore", unit="sample"),
    )
    print(
        f"Restored {summary['restored']} originals ({summary['unchanged']} unchanged, "
        f"{summary['deleted']} protected files deleted, {summary['failed']} failed)"
    )
    _print_failures(summary)
    return 1 if summary["failed"] else 0


def _cmd_export(args) -> int:
    from fiftyone_unseg.export import export_protected

    summary = export_protected(
        _collection(args),
        args.export_dir,
        dataset_type=args.format,
        label_field=args.label_field,
        skip_unprotected=args.skip_unprotected,
        overwrite=args.overwrite,
        progress=tqdm_progress("export (stage, read labels, write)", unit="step"),
    )
    for line in summary["recovered"]:
        print(line)
    skipped = f" ({summary['skipped']} unprotected left out)" if summary["skipped"] else ""
    print(
        f"Exported {summary['exported']} protected images{skipped} as {args.format} to "
        f"{summary['export_dir']} in {summary['seconds']:.1f} s"
    )
    return 0


def _cmd_visualize(args) -> int:
    from fiftyone_unseg.visualize import visualize_noise

    summary = visualize_noise(
        _collection(args),
        heatmap_field=args.heatmap_field,
        amplified_field=args.amplified_field,
        amplification=args.amplification,
        progress=tqdm_progress("visualize"),
    )
    _print_failures(summary)
    amplified = f" and {args.amplified_field!r}" if args.amplified_field else ""
    print(
        f"Stored the noise of {summary['visualized']} samples in {args.heatmap_field!r}"
        f"{amplified} ({summary['not_protected']} not protected, {summary['failed']} failed)"
    )
    return _exit_status(summary)


def _cmd_status(args) -> int:
    from fiftyone_unseg.summary import protection_summary, summary_markdown

    summary = protection_summary(_collection(args), heatmap_field=args.heatmap_field)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary_markdown(summary))
    return 0


def _add_target(p, verb: str | None = None) -> None:
    """``--dataset`` and ``--view`` (what :func:`_collection` reads)."""
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--view", help="a saved view of the dataset" + (f" to {verb}" if verb else ""))


def _pixel_value(text: str):
    """:func:`fiftyone_unseg.settings.parse_pixel_value`, for argparse."""
    try:
        return parse_pixel_value(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_segment_values(p) -> None:
    """``--background`` and ``--ignore``: what :func:`_segment_values` reads."""
    p.add_argument(
        "--background",
        type=_pixel_value,
        default="auto",
        help="Segmentation fields: the pixel value that is background, or 'none' when every "
        "class is an object (default: from the mask targets; 0 unless they name 0 a class)",
    )
    p.add_argument(
        "--ignore",
        nargs="*",
        type=int,
        help="Segmentation fields: pixel values that are no class (void), neither protected "
        "as objects nor learnt nor scored; none after the flag for none (default: from the "
        "mask targets, and 255 when 0 is a class)",
    )


def _segment_values(args) -> dict:
    """``background`` and ``ignore`` keywords from :func:`_add_segment_values`' options."""
    return {"background": args.background, "ignore": "auto" if args.ignore is None else args.ignore}


def _add_protect_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "protect",
        help="write protected (unlearnable) copies of a dataset's images",
        description="Exit status 1 if any sample failed (rerun to retry only those).",
    )
    _add_target(p, "protect")
    p.add_argument(
        "--label-field", required=True, help="Segmentation, Detections or Polylines field"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--generator",
        help="a generator checkpoint folder or a shipped one's name (default, robust; "
        "default: the preset's)",
    )
    source.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="a named protection (default: default): "
        + "; ".join(f"{name}: {preset.what}" for name, preset in PRESETS.items())
        + " (README, Presets)",
    )
    p.add_argument(
        "--eps",
        type=budget_arg,
        default=DEFAULT_EPS,
        help="object budget: 8/255, or 8 (a plain number counts in 1/255); at most 64/255, "
        "a warning above 16/255 (default 8/255)",
    )
    p.add_argument(
        "--eps-bg",
        type=budget_arg,
        default=DEFAULT_EPS_BG,
        help="background budget (2/255, the paper's); 8/255 puts the object budget everywhere: "
        "34 dB instead of 40, stronger and more robust to JPEG and resizing on sample scenes "
        "(docs/GENERATOR_HISTORY.md)",
    )
    p.add_argument("--classes", nargs="+", help="prompt with these classes only")
    p.add_argument("--per-instance", action="store_true", help="one prompt per segment")
    _add_segment_values(p)
    p.add_argument(
        "--class-mix",
        type=_share,
        help="share of each class's secret texture in its noise, 0 for none (default: the "
        f"preset's, {DEFAULT_CLASS_MIX} but for semantic's 1)",
    )
    p.add_argument(
        "--class-key",
        default=os.environ.get(CLASS_KEY_SECRET) or None,
        help=f"secret of the class textures (default: ${CLASS_KEY_SECRET} if set, else one per "
        "dataset; prefer the variable: a key on the command line is in the shell history)",
    )
    p.add_argument(
        "--class-style",
        choices=CLASS_STYLES,
        help="what each class's key is, with --class-mix: an 8x8 texture or one flat colour "
        "(survives JPEG, blur and rescaling; costs more PSNR); default: the preset's, texture "
        "but for semantic's colour",
    )
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="output format")
    p.add_argument("--quality", type=int, help="JPEG quality, with --format jpg (default 95)")
    p.add_argument("--output-dir", help="default: <FiftyOne dataset dir>/unseg-protected/<dataset>")
    p.add_argument(
        "--replace-filepath",
        action="store_true",
        help="make protected images the samples' filepath (undo: unseg restore)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    p.add_argument("--shard", type=_shard, help="i/n: this process's share of the samples")
    p.add_argument("--overwrite", action="store_true", help="protect already protected samples")
    p.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="preview: protect only N samples (a seeded random pick, spread over the "
        "dataset) and say how visible their noise is; a later run without it skips them",
    )
    p.set_defaults(func=_cmd_protect, interrupted="re-run the same command to resume")

    p = subparsers.add_parser("restore", help="put original images back as the samples' filepath")
    _add_target(p)
    p.add_argument(
        "--delete-protected", action="store_true", help="also delete the protected files"
    )
    p.set_defaults(func=_cmd_restore)

    p = subparsers.add_parser(
        "export",
        help="export the protected images under their original names, with labels, to publish",
        description="Writes the protected copy of the dataset in a standard format, without "
        "anything that says the images are protected. Samples without a protected copy stop "
        "the export unless --skip-unprotected.",
    )
    p.add_argument("export_dir", help="folder of the export (must be new or empty)")
    _add_target(p, "export")
    p.add_argument(
        "--label-field",
        nargs="+",
        help="the label field to export (several: --format fiftyone only; none: --format images)",
    )
    p.add_argument(
        "--format",
        choices=_Choices("fiftyone_unseg.export", "EXPORT_TYPES"),
        default="coco",
        metavar="FORMAT",
        help="export format: %(choices)s (default %(default)s)",
    )
    p.add_argument(
        "--skip-unprotected", action="store_true", help="leave out samples not protected"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty export_dir")
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "visualize",
        help="store each protected sample's noise as a heatmap (and an amplified image) for the App",
    )
    _add_target(p)
    p.add_argument("--heatmap-field", default="unseg_noise", help="fo.Heatmap field to write")
    p.add_argument("--amplified-field", help="also a media field of the amplified noise image")
    p.add_argument(
        "--amplification", type=float, help="noise gain of that image (default: 0.5 / eps)"
    )
    p.set_defaults(func=_cmd_visualize)

    p = subparsers.add_parser(
        "status",
        help="what the App's UnSeg panel shows: protected samples, settings, quality, last audit",
    )
    _add_target(p)
    p.add_argument("--heatmap-field", help="the noise heatmaps' field (default: any heatmap field)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_status)


def _cmd_evaluate(args) -> int:
    from fiftyone_unseg.audit import DEFAULT_RUN_KEY, evaluate_protection
    from fiftyone_unseg.audit.victims import DEFAULT_VICTIMS, per_victim

    report = evaluate_protection(
        _collection(args),
        args.label_field,
        victims=args.victims or DEFAULT_VICTIMS,
        semantic_field=args.semantic_field,
        **_segment_values(args),
        protected_field=None if args.protected_field == "none" else args.protected_field,
        baselines=args.baselines,
        countermeasure=args.countermeasure,
        eps=args.eps,
        eps_bg=args.eps_bg,
        split_tags=args.split_tags or None,
        train_fraction=args.train_fraction,
        epochs=per_victim(" ".join(args.epochs or ()), "--epochs"),
        image_size=per_victim(" ".join(args.image_size or ()), "--image-size"),
        seed=args.seed,
        seeds=args.seeds,
        device=args.device,
        yolo_weights=args.yolo_weights,
        sam_checkpoint=args.sam_checkpoint,
        semantic_weights=args.semantic_weights,
        output_dir=args.output_dir,
        run_key=args.run_key or DEFAULT_RUN_KEY,
        progress=tqdm_progress("victim training", unit="epoch"),
        reuse_clean=not args.retrain_clean,
    )
    print(report.table())
    for line in report.reused_trainings():
        print(f"{line}; --retrain-clean trains them again")
    for line in report.unlearnt():
        print(f"warning: {line}", file=sys.stderr)
    print(
        f"Trained on {report.num_train} samples (images ~{report.image_side} px; px: the "
        f"victims' size), tested on {report.num_test} clean ones ({report.split}) in "
        f"{report.seconds:.0f} s; chart {report.chart_path}; "
        f"report {report.report_path}; run {report.run_key!r}"
    )
    return 0


def _add_evaluate_command(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="audit protection: train victims on clean vs protected images, test on clean ones",
        description=(
            "yolo and sam learn the instances of --label-field (Detections with masks, "
            "Polylines, or a Segmentation's connected class regions); semantic learns "
            "--semantic-field, else class maps painted from --label-field."
        ),
    )
    _add_target(p, "audit")
    p.add_argument("--label-field", required=True, help="instances for yolo / sam, e.g. instances")
    p.add_argument("--semantic-field", help="Segmentation field for the semantic victim")
    _add_segment_values(p)
    p.add_argument(
        "--victims",
        nargs="+",
        choices=_Choices("fiftyone_unseg.audit.victims", "VICTIMS"),
        metavar="VICTIM",
        help="%(choices)s (default: yolo sam semantic; sam_point is the second interactive metric)",
    )
    p.add_argument(
        "--protected-field",
        default="protected_filepath",
        help="field of the protected images ('none': baselines only, or with no baselines "
        "clean training alone, to check that the victims learn at these settings)",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=_Choices("fiftyone_unseg.audit.baselines", "BASELINES"),
        default=[],
        metavar="BASELINE",
        help="%(choices)s",
    )
    p.add_argument(
        "--countermeasure",
        help="jpeg:75, blur:1.0, downscale:0.5, grayscale, median:3, bilateral:25, texture:16 "
        "(an informed attacker's per-class texture, estimated with the labels and subtracted) "
        "or tint:0.1 (each class's tint against the clean originals of that share of the "
        "training samples, subtracted: the informed attack on colour class keys)",
    )
    p.add_argument(
        "--eps",
        type=budget_arg,
        default=DEFAULT_EPS,
        help="baselines' object budget where unrecorded",
    )
    p.add_argument(
        "--eps-bg", type=budget_arg, default=DEFAULT_EPS_BG, help="and background budget"
    )
    p.add_argument(
        "--split-tags",
        nargs=2,
        default=["train", "test"],
        metavar=("TRAIN", "TEST"),
        help="tags of the splits; without them a random split",
    )
    p.add_argument("--train-fraction", type=float, default=0.7, help="of the random split")
    p.add_argument("--epochs", nargs="+", help="N for every victim, or victim=N ...")
    p.add_argument("--image-size", nargs="+", help="N for every victim, or victim=N ...")
    p.add_argument("--yolo-weights", help="local Ultralytics .pt to start from")
    p.add_argument(
        "--sam-checkpoint",
        help="local official SAM .pth to fine-tune (--epochs sam=0: test it as it is)",
    )
    p.add_argument("--semantic-weights", help="local LRASPP / MobileNetV3-Large state dict")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds", type=int, default=1, help="trainings per victim and variant (mean and sd)"
    )
    p.add_argument(
        "--output-dir", help="default: <FiftyOne dataset dir>/unseg-audit/<dataset>/<key>"
    )
    p.add_argument(
        "--run-key", help="key of the run recorded on the dataset (default: unseg_audit)"
    )
    p.add_argument(
        "--retrain-clean",
        action="store_true",
        help="train the clean victims again even where an earlier audit of this dataset "
        "trained the very same ones (by default their scores and predictions are reused)",
    )
    p.set_defaults(
        func=_cmd_evaluate,
        interrupted="re-run the same command to resume (finished trainings are kept; with "
        "--retrain-clean all train again)",
    )


def add_commands(subparsers) -> None:
    """Register the library's verbs on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "sample-data",
        help="create a realistic sample segmentation dataset (offline, deterministic)",
    )
    p.add_argument("--name", default="unseg-sample", help="FiftyOne dataset name")
    p.add_argument("--num", type=int, default=100, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument(
        "--styles",
        nargs="+",
        choices=_Choices("fiftyone_unseg.sample_data", "STYLES"),
        metavar="STYLE",
        help="scene styles, assigned round-robin: %(choices)s (default: photo and texture)",
    )
    p.add_argument("--dir", default=None, help="where to write the image and mask files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=_cmd_sample_data)
    p = subparsers.add_parser(
        "import-panoptic",
        help="load a COCO-panoptic set (COCO, Cityscapes, ADE20K panoptic) as a dataset",
        description="Every segment becomes a masked detection in --label-field (attributes "
        "isthing, iscrowd, segment_id), the thing segments alone in --things-field.",
    )
    p.add_argument("--name", required=True, help="FiftyOne dataset name to create")
    p.add_argument("--images", required=True, help="the folder of the images")
    p.add_argument("--annotations", required=True, help="the panoptic JSON file")
    p.add_argument(
        "--masks",
        help="the folder of the panoptic PNGs (default: the JSON's path without .json, "
        "COCO's layout)",
    )
    p.add_argument("--label-field", default="panoptic", help="every segment (default: panoptic)")
    p.add_argument(
        "--things-field", default="things", help="the thing segments, or 'none' (default: things)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=_cmd_import_panoptic)
    _add_protect_commands(subparsers)
    _add_evaluate_command(subparsers)


def build_parser(extra_commands=()) -> argparse.ArgumentParser:
    """The ``unseg`` parser; ``extra_commands`` are more ``add_commands``-style callables."""
    parser = argparse.ArgumentParser(
        prog="unseg", description="Make image-segmentation datasets unlearnable (UnSeg)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (add_commands, *extra_commands):
        add(subparsers)
    return parser


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` and run the chosen verb. User errors exit with status 2, file
    system errors (the path and why) with 1; Ctrl-C with
    130 and one line (a verb's ``interrupted`` default says how to go on); a reader that
    stops reading the output (``| head``) with 141, quietly, as a tool killed by SIGPIPE."""
    args = parser.parse_args(argv)
    try:
        if getattr(args, "needs_database", True):
            database.connect()
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe raises here, not at exit
        return status
    except ValueError as e:
        print(f"unseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        while _open_bars:
            _open_bars.pop().close()
        hint = getattr(args, "interrupted", None)
        print(f"unseg {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # quiet exit flush
        return 141
    except OSError as e:  # a folder that cannot be written, a disk full: no trace
        while _open_bars:
            _open_bars.pop().close()
        print(f"unseg {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
