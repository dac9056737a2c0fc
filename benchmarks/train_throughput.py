"""Training throughput of the ``tiny`` config: samples/s per phase, on this machine.

    python benchmarks/train_throughput.py [--steps 20] [--device cpu] [--batch-size N]

Prints a table and writes benchmarks/results/train_throughput.json (or ``--out``).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_facts  # noqa: E402

from trainer import distributed  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.loop import Trainer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def measure(trainer: Trainer, phase: str, steps: int) -> float:
    """Samples per second of ``steps`` steps of one phase (after 2 warm-up steps)."""
    trainer._enter_stage("pretrain" if phase == "pretrain" else "bilevel")
    batches = trainer._batches()
    step = {
        "pretrain": trainer._pretrain_step,
        "surrogate": trainer._surrogate_step,
        "generator": trainer._generator_step,
    }[phase]
    for _ in range(2):
        step(*next(batches))
    _synchronize(trainer)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    _synchronize(trainer)
    return steps * trainer.cfg.batch_size / (time.perf_counter() - start)


def _synchronize(trainer: Trainer) -> None:
    if trainer.ctx.device.type == "cuda":
        torch.cuda.synchronize(trainer.ctx.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, help="default: the tiny config's")
    parser.add_argument("--out", default=os.path.join(RESULTS, "train_throughput.json"))
    args = parser.parse_args()
    cfg = load_config(
        "tiny",
        device=args.device,
        data=["sample:64:0:photo+texture:384"],
        batch_size=args.batch_size,  # None keeps the config's
    )
    ctx = distributed.setup(cfg.device)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, out, ctx)
        rates = {
            phase: measure(trainer, phase, args.steps)
            for phase in ("pretrain", "surrogate", "generator")
        }
    # One bilevel block: surrogate_phase surrogate steps, then generator_phase generator steps.
    s, g = cfg.surrogate_phase, cfg.generator_phase
    rates[f"bilevel ({s}:{g} mix)"] = (s + g) / (s / rates["surrogate"] + g / rates["generator"])
    facts = machine_facts()
    print(
        f"tiny config, generator {trainer.side}px, surrogate {trainer.surrogate_side}px, "
        f"batch {cfg.batch_size}, device {ctx.device}"
    )
    print(f"{'phase':<20}{'samples/s':>12}")
    for phase, rate in rates.items():
        print(f"{phase:<20}{rate:>12.2f}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(
            {
                "samples_per_s": rates,
                "batch_size": cfg.batch_size,
                "steps": args.steps,
                "machine": facts,
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
