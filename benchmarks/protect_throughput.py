"""Protection throughput on this machine: the bare generator forward pass against the
full pipeline (read, rasterise labels, generate, compose, measure, encode, write,
record), batched and with batch size 1; then the pipeline's three stages one image at a
time on one thread (read: hash, decode, rasterise the labels, map to the model frame;
generate; write: compose, encode, measure PSNR/SSIM, write atomically). On the CPU the
generator and the workers take turns, each on every core, so the pipeline's floor per
image is the batched forward pass plus (read + write) / cores.

Uses the shipped default generator (``tiny`` layout, 256 px input) and 512 px sample
scenes, in a private FiftyOne database and temporary folder that are removed
afterwards; then the same layout at 512 px input (random weights), a generator about 7x
costlier, like the SAM-layout generators at their reference sizes, where the forward
pass dominates and the pipeline's overhead over it is what counts. The measurements run
in turns, ROUNDS times; the table shows each one's best round (least disturbed by other
load on the machine). Prints a table and writes ``benchmarks/results/protect_throughput.json``.
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import dataclasses
import json
import os
import time

import torch
from machine import machine_facts

from fiftyone_unseg import protect
from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.io import owner_of
from fiftyone_unseg.labels import resolve_prompt
from fiftyone_unseg.modeling import build_noise_generator
from fiftyone_unseg.protect import _generate, _load, _Task, _write
from fiftyone_unseg.sample_data import create_sample_dataset
from fiftyone_unseg.settings import DEFAULT_EPS, DEFAULT_EPS_BG

NUM_IMAGES = 32
IMAGE_SIZE = 512
BATCH_SIZE = 8
ROUNDS = 5
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bare_forward_seconds(model) -> float:
    """Seconds for the generator alone on NUM_IMAGES preprocessed inputs, batched."""
    size = model.img_size
    images = torch.rand(NUM_IMAGES, 3, size, size)
    prompts = (torch.rand(NUM_IMAGES, 1, size // 4, size // 4) > 0.5).float()
    with torch.inference_mode():
        model(images[:BATCH_SIZE], mask_prompts=prompts[:BATCH_SIZE])  # warm-up
        start = time.perf_counter()
        for i in range(0, NUM_IMAGES, BATCH_SIZE):
            model(images[i : i + BATCH_SIZE], mask_prompts=prompts[i : i + BATCH_SIZE])
    return time.perf_counter() - start


def pipeline_seconds(dataset, batch_size: int, generator=None) -> float:
    """Seconds for ``protect`` on the whole dataset (every sample protected anew)."""
    summary = protect(
        dataset, "ground_truth", generator=generator, batch_size=batch_size, overwrite=True
    )
    assert summary["protected"] == NUM_IMAGES, summary
    return summary["seconds"]


def stage_milliseconds(dataset, model) -> dict:
    """Per-image milliseconds of the pipeline's stages, one image at a time, one thread."""
    spec = resolve_prompt(dataset, "ground_truth")
    settings = {"eps": DEFAULT_EPS, "eps_bg": DEFAULT_EPS_BG, "format": "png", "quality": None}
    folder = os.path.join(sandbox.TMP, "stages")
    os.makedirs(folder, exist_ok=True)
    ids, paths, labels = dataset.values(["id", "filepath", "ground_truth"])
    found = {i: (label, label) for i, label in zip(ids, labels)}
    totals = dict.fromkeys(("read", "generate", "write"), 0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for sample_id, path in zip(ids, paths):
            target = os.path.join(folder, f"{sample_id}.png")
            task = _Task(sample_id, path, target, 0, owner_of(dataset, sample_id))
            start = time.perf_counter()
            loaded = _load(task, found, spec, model.img_size)
            read = time.perf_counter()
            noise = _generate(model, [loaded], "cpu")[0]
            generated = time.perf_counter()
            _write(loaded, noise, settings, None)
            totals["read"] += read - start
            totals["generate"] += generated - read
            totals["write"] += time.perf_counter() - generated
    finally:
        torch.set_num_threads(threads)
    return {stage: 1000 * seconds / len(ids) for stage, seconds in totals.items()}


def costly_generator(default):
    """``default``'s layout at 512 px input, random weights: 4x the tokens."""
    config = dataclasses.replace(default.config, img_size=IMAGE_SIZE)
    model = build_noise_generator(config)
    model.generator_id = f"random-{config.name}-{IMAGE_SIZE}"
    return model


def main() -> None:
    generator = load_generator(None)
    costly = costly_generator(generator)
    dataset = create_sample_dataset("bench", num=NUM_IMAGES, size=IMAGE_SIZE, overwrite=True)
    protect(dataset.limit(BATCH_SIZE), "ground_truth")  # warm-up
    protect(dataset.limit(BATCH_SIZE), "ground_truth", generator=costly, overwrite=True)

    both = {"default": generator, f"{IMAGE_SIZE} px input": costly}
    measurements = {}
    for name, model in both.items():
        measurements[name, f"bare forward, batch {BATCH_SIZE}"] = lambda model=model: (
            bare_forward_seconds(model)
        )
        for batch in (BATCH_SIZE, 1):
            measurements[name, f"pipeline, batch {batch}"] = lambda model=model, batch=batch: (
                pipeline_seconds(dataset, batch, model)
            )
    rounds = {key: [] for key in measurements}
    for _ in range(ROUNDS):
        for key, measure in measurements.items():
            rounds[key].append(measure())
    best = {key: min(seconds) for key, seconds in rounds.items()}
    stages = stage_milliseconds(dataset, generator)
    rows = [
        {
            "generator": name,
            "generator_id": model.generator_id,
            "generator_input": model.img_size,
            "what": what,
            "seconds": round(best[name, what], 3),
            "images_per_second": round(NUM_IMAGES / best[name, what], 2),
            "overhead_vs_bare_forward": round(
                best[name, what] / best[name, f"bare forward, batch {BATCH_SIZE}"], 2
            ),
            "all_rounds_seconds": [round(t, 3) for t in rounds[name, what]],
        }
        for name, model in both.items()
        for (owner, what) in measurements
        if owner == name
    ]
    forward = 1000 * best["default", f"bare forward, batch {BATCH_SIZE}"] / NUM_IMAGES
    floor = forward + (stages["read"] + stages["write"]) / os.cpu_count()
    results = {
        "images": NUM_IMAGES,
        "image_size": IMAGE_SIZE,
        "machine": machine_facts(),
        "rows": rows,
        "stage_ms_per_image_one_thread": {k: round(v, 1) for k, v in stages.items()},
        "pipeline_floor_images_per_second": round(1000 / floor, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"{NUM_IMAGES} sample scenes at {IMAGE_SIZE} px; best of {ROUNDS} rounds; "
        + ", ".join(f"{k} {v}" for k, v in results["machine"].items())
        + f", load average {results['load_average_1min']}"
    )
    print(f"{'generator':32} {'':24} {'seconds':>8} {'images/s':>9} {'x bare forward':>15}")
    for row in rows:
        name = f"{row['generator']} ({row['generator_id']})"
        print(
            f"{name:32} {row['what']:24} {row['seconds']:8.2f} {row['images_per_second']:9.1f} "
            f"{row['overhead_vs_bare_forward']:15.2f}"
        )
    print(
        "default, one image at a time, one thread, ms per image: "
        + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        + f"; the pipeline's floor on {os.cpu_count()} cores (batched forward {forward:.1f} + "
        f"(read + write) / cores): {floor:.1f} ms per image ({1000 / floor:.1f} images/s)"
    )
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "protect_throughput.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    sandbox.measure(main)
