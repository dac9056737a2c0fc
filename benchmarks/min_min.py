"""Sample-wise error-minimising noise (min-min, Huang et al. 2021), without FiftyOne.

The optimisation behind ``sample_wise_em.py``: rounds alternate between Adam steps of a
surrogate segmenter on the perturbed training images and signed-gradient steps that
lower its loss on every image's noise, within the protection budgets. ``--objective
targeted`` is adversarial poisoning instead (Fowl et al. 2021): the surrogate trains on
the clean images and the noise steps make it predict, on every labelled pixel, the next
class (``c + 1`` modulo the classes), so that the perturbed images show a victim features
of the wrong class; ``--objective untargeted`` raises its loss on the true classes
instead (error-maximising noise). It needs torch
alone, so that a machine with a GPU and no database can run it at a scale a CPU cannot:

    python benchmarks/sample_wise_em.py --real camvid --export frames.npz   # here
    python benchmarks/min_min.py --frames frames.npz --data DATA --device cuda \
        --surrogate victim --crop 128 --noise-crop 0 --seconds 300 --out NOISE   # there
    python benchmarks/sample_wise_em.py --real camvid --noise NOISE --seeds 2   # here

``--frames`` holds the training frames' paths (relative to ``--data``) and class maps;
``--out`` receives, per ``--reset-every`` variant, ``em_reset<N>.npy`` (``targeted_reset<N>``
with ``--objective targeted``: the noise in pixel units, int8 NxHxWx3, what the perturbed
uint8 frames add to the originals: 190 MB for CamVid's 367 frames, about 3 bits a value
after compression, so it travels as is) and ``em_reset<N>.json`` (the surrogate's
accuracy, rounds done, seconds, settings).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fiftyone_unseg.io import read_rgb
from fiftyone_unseg.modeling import NoiseGenerator
from fiftyone_unseg.settings import DEFAULT_EPS, DEFAULT_EPS_BG, IGNORE

VARIANT_PREFIX = {"min-min": "em", "targeted": "targeted", "untargeted": "untargeted"}


def variant_name(objective: str, reset_every: int) -> str:
    """The stem of one variant's files and audit fields, e.g. ``em_reset0``."""
    return f"{VARIANT_PREFIX[objective]}_reset{reset_every}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The optimisation's settings (shared with ``sample_wise_em.py``)."""
    parser.add_argument(
        "--reset-every",
        type=int,
        nargs="+",
        default=[0, 8],
        help="one variant per value: a fresh surrogate every N rounds (0: never)",
    )
    parser.add_argument(
        "--objective",
        choices=list(VARIANT_PREFIX),
        default="min-min",
        help="min-min: lower the loss of a surrogate trained on the perturbed images; "
        "targeted: make a surrogate trained on clean images predict the next class; "
        "untargeted: raise that surrogate's loss",
    )
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--surrogate-steps", type=int, default=10, help="Adam steps per round")
    parser.add_argument("--noise-steps", type=int, default=5, help="noise steps per round")
    parser.add_argument("--step", type=float, default=0.15, help="noise step (x the budget)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--surrogate",
        choices=["unet", "victim"],
        default="unet",
        help="a small UNet, or the semantic victim's own LRASPP-MobileNetV3 (white box)",
    )
    parser.add_argument("--crop", type=int, help="train and step on random crops of this side")
    parser.add_argument(
        "--noise-crop",
        type=int,
        help="step the noise on crops of this side (0: whole frames; default: --crop)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (bfloat16 autocast on cuda)")
    parser.add_argument("--seconds", type=float, help="stop a variant's rounds after this long")


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
        from fiftyone_unseg.audit.training import Settings
        from fiftyone_unseg.audit.victims.semantic import SemanticVictim, normalize

        self.normalize = normalize
        settings = Settings(**SemanticVictim().defaults(), seed=torch.initial_seed())
        self.model = SemanticVictim()._build(num_classes, settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x * 255))["out"]


SURROGATES = {"unet": SegmentationUNet, "victim": VictimSurrogate}


def _crop_windows(rows: torch.Tensor, shape, crop: int | None, generator) -> list:
    """One (row, top, left) window of side ``crop`` per image row (whole images: None)."""
    height, width = shape
    if not crop or crop >= min(height, width):
        return [(int(r), slice(None), slice(None)) for r in rows]
    tops = torch.randint(height - crop + 1, (len(rows),), generator=generator).tolist()
    lefts = torch.randint(width - crop + 1, (len(rows),), generator=generator).tolist()
    return [(int(r), slice(t, t + crop), slice(w, w + crop)) for r, t, w in zip(rows, tops, lefts)]


def sample_wise_noise(images, objects, classes, num_classes: int, reset_every: int, args):
    """(noise Nx3xHxW in [-1, 1] that lowers a surrogate's loss on ``images`` towards
    their classes (``args.objective`` "targeted": towards the next class; "untargeted":
    raises it), the last surrogate's pixel accuracy on the clean and on the perturbed
    images, rounds done).

    ``images`` Nx3xHxW in [0, 1], ``objects`` Nx1xHxW, ``classes`` NxHxW (:data:`IGNORE`
    not learnt), all on ``args.device``. The surrogate trains on ``args.crop`` px crops,
    the noise steps on ``args.noise_crop`` px crops (0: whole frames); accuracy on crops
    of ``args.crop`` px. ``args.seconds`` ends the rounds early.
    """
    device = torch.device(getattr(args, "device", "cpu"))
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    noise_crop = getattr(args, "noise_crop", None)
    noise_crop = args.crop if noise_crop is None else noise_crop
    deadline = time.monotonic() + (getattr(args, "seconds", None) or float("inf"))
    objective = getattr(args, "objective", "min-min")
    on_clean = objective != "min-min"  # adversarial objectives: a surrogate of clean images
    targeted, sign = objective == "targeted", 1.0 if objective == "untargeted" else -1.0
    generator = torch.Generator().manual_seed(0)
    noise = torch.zeros_like(images)
    clean = torch.zeros_like(noise)
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

    def loss_of(model, x, y):
        with autocast:
            logits = model(x)
        return F.cross_entropy(logits.float(), y.long(), ignore_index=IGNORE)

    chunks = torch.arange(len(images)).split(args.batch)
    model, rounds = None, 0
    desc = f"{getattr(args, 'objective', 'min-min')} (reset every {reset_every})"
    for round_ in tqdm(range(args.rounds), desc=desc):
        if time.monotonic() > deadline:
            break
        if model is None or (reset_every and round_ % reset_every == 0):
            torch.manual_seed(round_)
            model = SURROGATES[args.surrogate](num_classes).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        model.train()
        for _ in range(args.surrogate_steps):
            rows = torch.randint(len(images), (args.batch,), generator=generator)
            x, _, y = batch(
                _crop_windows(rows, shape, args.crop, generator), clean if on_clean else noise
            )
            flip = (torch.rand(args.batch, generator=generator) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None], y.flip(-1), y)
            loss = loss_of(model, x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        for _ in range(args.noise_steps):
            for rows in chunks:
                windows = _crop_windows(rows, shape, noise_crop, generator)
                x, delta, y = batch(windows, leaf=True)
                if targeted:
                    y = next_class(y, num_classes)
                (grad,) = torch.autograd.grad(loss_of(model, x, y), delta)
                stepped = (delta + sign * args.step * grad.sign()).clamp(-1, 1).detach()
                for (r, t, w), crop in zip(windows, stepped):
                    noise[r, :, t, w] = crop
        rounds += 1
    evaluation = [_crop_windows(rows, shape, args.crop, generator) for rows in chunks]
    with torch.no_grad(), autocast:
        accuracy = {
            name: _pixel_accuracy(model, [batch(w, source)[::2] for w in evaluation])
            for name, source in (("clean", clean), ("perturbed", noise))
        }
    return noise, accuracy, rounds


def next_class(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The targeted objective's class of every pixel: ``c + 1`` modulo ``num_classes``
    (:data:`IGNORE` stays)."""
    return torch.where(classes == IGNORE, classes, (classes.long() + 1) % num_classes).to(
        classes.dtype
    )


@torch.no_grad()
def _pixel_accuracy(model: nn.Module, batches) -> float:
    """Share of labelled pixels whose class ``model`` gets right over (images, classes)
    batches."""
    right = sum(int(((model(x).argmax(1) == y) & (y != IGNORE)).sum()) for x, y in batches)
    return right / sum(int((y != IGNORE).sum()) for _, y in batches)


def object_mask(classes: torch.Tensor) -> torch.Tensor:
    """Nx1xHxW float: the pixels of a class (not background 0, not :data:`IGNORE`)."""
    return ((classes > 0) & (classes != IGNORE)).float()[:, None]


def pixel_noise(noise: torch.Tensor, objects: torch.Tensor) -> np.ndarray:
    """The noise (Nx3xHxW in [-1, 1]) in pixel units as the uint8 frames carry it: int8
    NxHxWx3, added to the originals' 0..255 values (then clipped)."""
    eps_map = DEFAULT_EPS_BG + (DEFAULT_EPS - DEFAULT_EPS_BG) * objects
    return (noise * eps_map * 255).round().to(torch.int8).permute(0, 2, 3, 1).cpu().numpy()


def save_noise(folder: str, name: str, pixels: np.ndarray, record: dict) -> None:
    """``<name>.npy`` and ``<name>.json`` in ``folder`` (``name`` from :func:`variant_name`),
    each written atomically."""
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, name)
    with open(stem + ".npy.partial", "wb") as f:
        np.save(f, pixels)
    os.replace(stem + ".npy.partial", stem + ".npy")
    with open(stem + ".json.partial", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(stem + ".json.partial", stem + ".json")


def load_noise(folder: str, name: str) -> tuple[np.ndarray, dict]:
    """What :func:`save_noise` wrote."""
    stem = os.path.join(folder, name)
    pixels = np.load(stem + ".npy")
    with open(stem + ".json") as f:
        return pixels, json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--frames", required=True, help="sample_wise_em.py --export's file")
    parser.add_argument("--data", required=True, help="the folder --frames' paths start in")
    parser.add_argument("--out", required=True, help="folder for the noise of each variant")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    frames = np.load(args.frames)
    paths = [os.path.join(args.data, p) for p in frames["paths"].tolist()]
    images = torch.stack([torch.from_numpy(read_rgb(p)).permute(2, 0, 1) for p in paths])
    images = images.to(device)
    classes = torch.from_numpy(frames["classes"]).to(device)
    objects = object_mask(classes)
    for reset_every in args.reset_every:
        started = time.monotonic()
        noise, accuracy, rounds = sample_wise_noise(
            images, objects, classes, int(frames["num_classes"]), reset_every, args
        )
        settings = {k: v for k, v in vars(args).items() if k not in ("frames", "data", "out")}
        record = {
            "reset_every": reset_every,
            "surrogate_accuracy": accuracy,
            "rounds_done": rounds,
            "seconds": time.monotonic() - started,
            "settings": settings,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
        name = variant_name(args.objective, reset_every)
        save_noise(args.out, name, pixel_noise(noise, objects), record)
        print(
            json.dumps(
                {"variant": name}
                | {k: record[k] for k in ("surrogate_accuracy", "rounds_done", "seconds")}
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
