"""Audit a protected FiftyOne dataset: does a model trained on it still learn?

Shows ``fiftyone_unseg.evaluate_protection``: each victim model trains on the clean
training images, on their protected copies (``protected_filepath``, written by
``unseg protect`` or ``examples/protect_coco.py``) and on two reference noises of the
same budget ("random" and a mask-aligned "pattern" shortcut), optionally after a
counter-measure an attacker might apply to the images first (``jpeg:75``,
``blur:1.0``, ``downscale:0.5``, ``grayscale``). Every model is tested on clean test
images. Protection works when the protected column falls well below the clean one,
and further than the random noise of the same budget.

    .venv/bin/unseg sample-data --name my-samples --num 200
    .venv/bin/unseg protect --dataset my-samples --label-field instances
    .venv/bin/python examples/audit_protected_dataset.py --dataset my-samples \\
        --label-field instances --victims semantic yolo --countermeasure jpeg:75

Training and test splits come from the samples' ``train`` / ``test`` tags (else a
random 70 / 30 split). With the victims' default epochs an audit of 200 small images
takes tens of minutes on a CPU; ``--epochs`` shortens it. Predictions and evaluations
stay on the dataset, so the App can show where each model fails.
"""

from __future__ import annotations

import argparse
import sys

import fiftyone as fo

import fiftyone_unseg as fu
from fiftyone_unseg.audit.baselines import BASELINES
from fiftyone_unseg.audit.victims import VICTIMS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a protected FiftyOne dataset")
    p.add_argument("--label-field", required=True, help="instances the victims learn")
    p.add_argument("--semantic-field", help="Segmentation field for the semantic victim")
    p.add_argument("--victims", nargs="+", choices=VICTIMS, default=list(VICTIMS))
    p.add_argument("--baselines", nargs="*", choices=list(BASELINES), default=["random", "pattern"])
    p.add_argument("--countermeasure", help="jpeg:75, blur:1.0, downscale:0.5 or grayscale")
    p.add_argument("--epochs", type=int, help="for every victim (default: each victim's own)")
    p.add_argument("--image-size", type=int, help="for every victim (default: each one's own)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = fu.evaluate_protection(
        fo.load_dataset(args.dataset),
        args.label_field,
        victims=args.victims,
        semantic_field=args.semantic_field,
        baselines=args.baselines,
        countermeasure=args.countermeasure,
        epochs=args.epochs,
        image_size=args.image_size,
        device=args.device,
    )
    print(report.table())
    print(
        f"Scores on {report.num_test} clean test images after training on {report.num_train} "
        f"images; ratio = protected / clean.\nChart: {report.chart_path}\n"
        f"Report: {report.report_path} (also the run {report.run_key!r} on the dataset)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
