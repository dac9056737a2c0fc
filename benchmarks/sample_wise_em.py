"""Can per-image error-minimising noise do better than the generator on these scenes?

An upper bound for an amortised generator: sample-wise error-minimising noise (min-min,
Huang et al. 2021) optimised directly on the very training images a victim will learn
from, at the protection budgets (8/255 on object pixels, 2/255 elsewhere). On the
effectiveness benchmark's held-out scenes, rounds alternate between a few Adam steps of
a small semantic UNet on the perturbed training images and signed-gradient steps that
lower its loss on every image's noise (``--reset-every N``: a fresh surrogate every N
rounds, as the generator's trainer does). Then the audit's victim trains on clean and on
those images and is tested on clean images, as in ``effectiveness.py``.

``--real camvid`` asks the same of real photographs: CamVid's 367 training frames
(480x360, read from ``--data``, default ``../shared/data``), the real benchmark's
semantic victim (12 epochs on 128 px crops, tested on the 233 frames of another drive),
with the victim's own LRASPP-MobileNetV3 as the surrogate (``--surrogate victim``, a
white-box bound) trained on crops as the victim is, and the noise stepped on random
``--crop`` px crops of every frame (the frames are too large for whole-image steps on a
CPU). ``--seeds`` victim seeds.

Prints a table and writes ``benchmarks/results/history/sample_wise_em.json`` (with
``--real``: ``benchmarks/results/real/sample_wise_em_<real>.json``): ``{"variants":
[{"reset_every", "surrogate_accuracy": {"clean", "perturbed"}, "psnr", "victim",
"clean", "protected", "ratio", "spread"}], "settings", "dataset"}`` plus machine facts.

    python benchmarks/sample_wise_em.py --reset-every 0 8
    python benchmarks/sample_wise_em.py --real camvid --surrogate victim --reset-every 0 \
        --rounds 20 --surrogate-steps 20 --noise-steps 2 --crop 256 --step 0.25 --seeds 2
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import argparse
import math
import os
import sys
import time

import held_out
import numpy as np
import real_data
import torch
import torch.nn.functional as F
from machine import machine_facts, publish
from PIL import Image
from torch import nn
from tqdm import tqdm

from fiftyone_unseg import evaluate_protection
from fiftyone_unseg.audit.targets import IGNORE, resolve_targets
from fiftyone_unseg.audit.training import Settings
from fiftyone_unseg.audit.victims.semantic import SemanticVictim, normalize
from fiftyone_unseg.cli import tqdm_progress
from fiftyone_unseg.io import atomic_write_image, read_rgb
from fiftyone_unseg.modeling import NoiseGenerator
from fiftyone_unseg.protect import DEFAULT_EPS, DEFAULT_EPS_BG

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    held_out.add_arguments(parser)
    parser.add_argument(
        "--reset-every",
        type=int,
        nargs="+",
        default=[0, 8],
        help="one variant per value: a fresh surrogate every N rounds (0: never)",
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--surrogate-steps", type=int, default=10, help="Adam steps per round")
    parser.add_argument("--noise-steps", type=int, default=5, help="noise steps per round")
    parser.add_argument("--step", type=float, default=0.15, help="noise step (x the budget)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--victim", default="semantic")
    parser.add_argument("--victim-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="victim seeds")
    parser.add_argument("--epochs", type=int, help="victim epochs (default: its own)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--real", choices=["camvid"], help="real photographs instead of scenes")
    parser.add_argument("--data", help="the real data folder (default: ../shared/data)")
    parser.add_argument(
        "--surrogate",
        choices=["unet", "victim"],
        default="unet",
        help="a small UNet, or the semantic victim's own LRASPP-MobileNetV3 (white box)",
    )
    parser.add_argument("--crop", type=int, help="train and step on random crops of this side")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.out is None:
        name = (
            f"real/sample_wise_em_{args.real}.json" if args.real else "history/sample_wise_em.json"
        )
        args.out = os.path.join(RESULTS, name)
    return args


REAL_TASKS = {"camvid": {"epochs": 12, "image_size": 128}}  # the real benchmark's semantic task


class SegmentationUNet(nn.Module):
    """A small UNet: Bx3xHxW (H, W multiples of 2 ** (len(widths) - 1)) -> B x classes x H x W."""

    def __init__(self, num_classes: int, widths=(8, 16, 32, 64)) -> None:
        super().__init__()
        ins = (3, *widths[:-1])
        self.down = nn.ModuleList(_block(i, o) for i, o in zip(ins, widths))
        self.up = nn.ModuleList(_block(o + i, i) for i, o in zip(widths[:-1], widths[1:]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for block, skip in zip(reversed(self.up), reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


def _block(ins: int, outs: int) -> nn.Sequential:
    layers = []
    for i in (ins, outs):
        layers += [nn.Conv2d(i, outs, 3, padding=1, bias=False), nn.BatchNorm2d(outs), nn.ReLU()]
    return nn.Sequential(*layers)


class VictimSurrogate(nn.Module):
    """The semantic victim's LRASPP-MobileNetV3 (built as the audit builds it) on images
    in [0, 1]: Bx3xHxW -> B x classes x H x W."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        settings = Settings(**SemanticVictim().defaults(), seed=torch.initial_seed())
        self.model = SemanticVictim()._build(num_classes, settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x * 255))["out"]


SURROGATES = {"unet": SegmentationUNet, "victim": VictimSurrogate}


def _crop_windows(rows: torch.Tensor, shape, crop: int | None, generator) -> list:
    """One (row, top, left) window of side ``crop`` per image row (whole images: None)."""
    height, width = shape
    if crop is None or crop >= min(height, width):
        return [(int(r), slice(None), slice(None)) for r in rows]
    tops = torch.randint(height - crop + 1, (len(rows),), generator=generator).tolist()
    lefts = torch.randint(width - crop + 1, (len(rows),), generator=generator).tolist()
    return [(int(r), slice(t, t + crop), slice(w, w + crop)) for r, t, w in zip(rows, tops, lefts)]


def error_minimising_noise(images, objects, classes, num_classes: int, reset_every: int, args):
    """Noise Nx3xHxW in [-1, 1] that lowers a surrogate's loss on ``images`` (Nx3xHxW in
    [0, 1]; ``objects`` Nx1xHxW, ``classes`` NxHxW, :data:`IGNORE` not learnt), and the
    last surrogate's pixel accuracy on the clean and on the perturbed images (on crops
    of ``args.crop`` px, whole images without)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.zeros_like(images)
    shape = images.shape[-2:]

    def batch(windows, source=noise, leaf=False):
        """(perturbed crops, their noise, their classes) of ``windows`` with the noise of
        ``source``; with ``leaf``, the noise crops require gradients (to step them)."""
        delta = torch.stack([source[r, :, t, w] for r, t, w in windows]).requires_grad_(leaf)
        x = NoiseGenerator.perturb(
            torch.stack([images[r, :, t, w] for r, t, w in windows]),
            delta,
            torch.stack([objects[r, :, t, w] for r, t, w in windows]),
            DEFAULT_EPS,
            DEFAULT_EPS_BG,
        )
        return x, delta, torch.stack([classes[r, t, w] for r, t, w in windows])

    chunks = torch.arange(len(images)).split(args.batch)
    model = None
    for round_ in tqdm(range(args.rounds), desc=f"min-min (reset every {reset_every})"):
        if model is None or (reset_every and round_ % reset_every == 0):
            torch.manual_seed(round_)
            model = SURROGATES[args.surrogate](num_classes)
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        model.train()
        for _ in range(args.surrogate_steps):
            rows = torch.randint(len(images), (args.batch,), generator=generator)
            x, _, y = batch(_crop_windows(rows, shape, args.crop, generator))
            flip = torch.rand(args.batch, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            loss = F.cross_entropy(model(x), y.long(), ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        for _ in range(args.noise_steps):
            for rows in chunks:
                windows = _crop_windows(rows, shape, args.crop, generator)
                x, delta, y = batch(windows, leaf=True)
                loss = F.cross_entropy(model(x), y.long(), ignore_index=IGNORE)
                (grad,) = torch.autograd.grad(loss, delta)
                stepped = (delta - args.step * grad.sign()).clamp(-1, 1).detach()
                for (r, t, w), crop in zip(windows, stepped):
                    noise[r, :, t, w] = crop
    evaluation = [_crop_windows(rows, shape, args.crop, generator) for rows in chunks]
    with torch.no_grad():
        accuracy = {
            name: _pixel_accuracy(model, [batch(w, source)[::2] for w in evaluation])
            for name, source in (("clean", torch.zeros_like(noise)), ("perturbed", noise))
        }
    return noise, accuracy


@torch.no_grad()
def _pixel_accuracy(model: nn.Module, batches) -> float:
    """Share of labelled pixels whose class ``model`` gets right over (images, classes)
    batches."""
    right = sum(int(((model(x).argmax(1) == y) & (y != IGNORE)).sum()) for x, y in batches)
    return right / sum(int((y != IGNORE).sum()) for _, y in batches)


def _training_set(args):
    """(dataset, label field, its training split, Targets, the victim's settings) of the
    held-out scenes or of ``args.real``."""
    if args.real:
        dataset = real_data.load_camvid(real_data.data_dir(args.data), "em-camvid")
        field, task = "ground_truth", REAL_TASKS[args.real]
    else:
        dataset, field, task = held_out.create("bench-sample-wise-em", args), "instances", {}
    task = {**task, **({"epochs": args.epochs} if args.epochs else {})}
    train = dataset.match_tags("train")
    return dataset, field, train, resolve_targets(dataset, field), task


def run(args) -> dict:
    """The measurements as the JSON document described in the module docstring."""
    started = time.monotonic()
    torch.set_num_threads(args.threads)
    dataset, field, train, targets, task = _training_set(args)
    ids, paths = train.values("id"), train.values("filepath")
    images = torch.stack([torch.from_numpy(read_rgb(p)).permute(2, 0, 1) for p in paths])
    class_map = targets.semantic if args.real else targets.instance_class_map
    classes = torch.stack(
        [
            torch.from_numpy(class_map({field: labels}, *images.shape[-2:]))
            for labels in train.values(field)
        ]
    )
    objects = ((classes > 0) & (classes != IGNORE)).float()[:, None]
    num_classes = len(targets.semantic_classes if args.real else targets.instance_classes) + 1
    variants = []
    for reset_every in args.reset_every:
        noise, accuracy = error_minimising_noise(
            images, objects, classes, num_classes, reset_every, args
        )
        perturbed = NoiseGenerator.perturb(images, noise, objects, DEFAULT_EPS, DEFAULT_EPS_BG)
        pixels = perturbed.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        noisy = f"em_reset{reset_every}_filepath"
        written = {}
        for sample_id, image in zip(ids, pixels.numpy()):
            written[sample_id] = os.path.join(sandbox.TMP, noisy, f"{sample_id}.png")
            atomic_write_image(Image.fromarray(image), written[sample_id])
        dataset.set_values(noisy, written, key_field="id")
        mse = (pixels.float() / 255 - images.permute(0, 2, 3, 1)).square().mean((1, 2, 3))
        report = evaluate_protection(
            dataset, field, victims=[args.victim], protected_field=noisy, **task,
            seed=args.victim_seed, seeds=args.seeds, run_key=f"em_reset{reset_every}",
            progress=tqdm_progress("audit", unit="epoch"),
        )  # fmt: skip
        result = report.results[0]
        variants.append(
            {
                "reset_every": reset_every,
                "surrogate_accuracy": accuracy,
                "psnr": float(np.mean([10 * math.log10(1 / m) for m in mse.tolist()])),
                "victim": args.victim,
                "metric": result.metric,
                "chance": result.chance,
                "clean": result.scores["clean"],
                "protected": result.scores["protected"],
                "ratio": result.ratio("protected"),
                "spread": max(result.spread.get(v, 0.0) for v in ("clean", "protected")),
                "seeds": args.seeds,
            }
        )
    settings = ("rounds", "surrogate_steps", "noise_steps", "step", "batch", "lr", "surrogate")
    settings += ("crop",)
    return {
        "variants": variants,
        "settings": {name: getattr(args, name) for name in settings},
        "eps": DEFAULT_EPS,
        "eps_bg": DEFAULT_EPS_BG,
        "victim_seed": args.victim_seed,
        "dataset": (
            {"real": args.real, "train": len(train), "test": len(dataset.match_tags("test"))}
            if args.real
            else held_out.describe(args)
        ),
        "victim_settings": task,
        "seconds": time.monotonic() - started,
        "machine": machine_facts(),
    }


def table(results: dict) -> str:
    lines = [
        f"sample-wise error-minimising noise on {results['dataset']}, surrogate "
        f"{results['settings'].get('surrogate', 'unet')}",
        f"{'reset every':>11} {'surr. acc clean':>15} {'perturbed':>9} {'PSNR':>6} "
        f"{'victim':<9} {'clean':>6} {'prot.':>6} {'ratio':>6} {'sd':>6} seeds",
    ]
    for v in results["variants"]:
        acc = v["surrogate_accuracy"]
        lines.append(
            f"{v['reset_every']:>11} {acc['clean']:15.3f} {acc['perturbed']:9.3f} "
            f"{v['psnr']:6.2f} {v['victim']:<9} {v['clean']:6.3f} {v['protected']:6.3f} "
            f"{v['ratio']:6.2f} {v.get('spread', 0.0):6.3f} {v.get('seeds', 1):>5}"
        )
    lines.append("reset every 0: one surrogate throughout (classic min-min)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = sandbox.measure(run, args)
    publish(results, table(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
