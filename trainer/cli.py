"""The ``unseg`` console script: the library's verbs plus ``train``."""

from __future__ import annotations

import json
import logging
import sys

from fiftyone_unseg import cli as library_cli


def _cmd_train(args) -> int:
    from trainer.config import load_config
    from trainer.loop import train

    overrides = {
        "max_steps": args.max_steps,
        "device": args.device,
        "batch_size": args.batch_size,
        "data": args.data,
        "sam_checkpoint": args.sam_checkpoint,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "init": args.init,
    }
    sets = {}  # as given, null included
    for item in args.set or []:
        key, _, text = item.partition("=")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        flag = overrides.get(key)
        if flag is not None and flag != value:  # e.g. --max-steps 2400 --set max_steps=1200
            option = f"--{key.replace('_', '-')}"
            raise ValueError(f"--set {key}={text} contradicts {option} {flag}: give one of them")
        sets[key] = value
    cfg = load_config(args.config, sets, **overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    summary = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if summary:
        ious = ", ".join(
            f"{k} {v:.3f}" for k, v in summary.items() if k.startswith(("iou", "texture"))
        )
        print(f"Trained {summary['steps']} steps in {summary['wall_s']:.0f} s: {ious}")
        print(
            f"Generator: {summary['generator']} (unseg protect --generator {summary['generator']})"
        )
        for warning in summary["warnings"]:
            print(f"Warning: {warning}")
        if summary["skipped_pairs"]:
            print(f"Skipped {len(summary['skipped_pairs'])} unreadable pairs:")
            print(json.dumps(summary["skipped_pairs"], indent=2))
    return 0


def add_train_command(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a noise generator (bilevel, against a surrogate); torchrun for several GPUs",
    )
    p.add_argument(
        "--config",
        default="tiny",
        help="a shipped config (name of a trainer/configs/*.json, e.g. tiny) or a JSON file",
    )
    p.add_argument(
        "--data",
        action="append",
        help="data source, repeatable: DIR, IMAGES:MASKS, hqseg44k:ROOT, "
        "fiftyone:DATASET[@SAVED_VIEW][:FIELD], sample:NUM[:SEED[:STYLES[:SIZE]]]",
    )
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument(
        "--init",
        help="start from a trained generator: a shipped one ('default', 'robust') or a "
        "checkpoint folder; with --config adapt, fine-tunes it to --data in minutes on a CPU",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the training in --out from its newest checkpoint (same config; "
        "max steps, epochs, device, workers, logging, validation and checkpoint settings "
        "may change)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out that holds an earlier training, deleting its outputs",
    )
    p.add_argument("--max-steps", type=int, help="cap on bilevel steps")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--num-workers", type=int, help="data-loading workers per process")
    p.add_argument("--sam-checkpoint", help="official SAM weights (local path) for vit_* configs")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any other config field, repeatable, VALUE as JSON (e.g. --set pretrain_steps=600)",
    )
    p.set_defaults(  # only fiftyone: data connect
        func=_cmd_train,
        needs_database=False,
        interrupted="run it again with --resume (in place of --overwrite) to continue",
    )


def main(argv=None) -> int:
    parser = library_cli.build_parser(extra_commands=[add_train_command])
    return library_cli.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
