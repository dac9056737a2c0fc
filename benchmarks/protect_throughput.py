"""Protection throughput on this machine: the bare generator forward pass against the
full pipeline (read, rasterise labels, generate, compose, measure, encode, write,
record), batched and with batch size 1.

Uses the ``tiny`` generator config (256 px input) with random weights and 512 px
sample scenes, in a private FiftyOne database and temporary folder that are
removed afterwards. The three measurements run in turns, ROUNDS times; the table
shows each one's best round (least disturbed by other load on the machine). Prints a
table and writes ``benchmarks/results/protect_throughput.json``.
"""

# isort: off
import sandbox  # first: FiftyOne must see its private database
# isort: on

import json
import os
import time

import torch
from machine import machine_facts

from fiftyone_unseg import protect
from fiftyone_unseg.checkpoint import load_generator, save_generator
from fiftyone_unseg.modeling import build_noise_generator, generator_configs
from fiftyone_unseg.sample_data import create_sample_dataset

NUM_IMAGES = 32
IMAGE_SIZE = 512
BATCH_SIZE = 8
ROUNDS = 3
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bare_forward_seconds(generator_dir: str) -> float:
    """Seconds for the generator alone on NUM_IMAGES preprocessed inputs, batched."""
    model = load_generator(generator_dir)
    size = model.img_size
    images = torch.rand(NUM_IMAGES, 3, size, size)
    prompts = (torch.rand(NUM_IMAGES, 1, size // 4, size // 4) > 0.5).float()
    with torch.inference_mode():
        model(images[:BATCH_SIZE], mask_prompts=prompts[:BATCH_SIZE])  # warm-up
        start = time.perf_counter()
        for i in range(0, NUM_IMAGES, BATCH_SIZE):
            model(images[i : i + BATCH_SIZE], mask_prompts=prompts[i : i + BATCH_SIZE])
    return time.perf_counter() - start


def pipeline_seconds(dataset, generator_dir: str, batch_size: int) -> float:
    """Seconds for ``protect`` on the whole dataset (every sample protected anew)."""
    summary = protect(
        dataset, "ground_truth", generator=generator_dir, batch_size=batch_size, overwrite=True
    )
    assert summary["protected"] == NUM_IMAGES, summary
    return summary["seconds"]


def main() -> None:
    torch.manual_seed(0)
    config = generator_configs["tiny"]
    generator_dir = os.path.join(sandbox.TMP, "generator")
    save_generator(build_noise_generator(config), config, generator_dir)
    dataset = create_sample_dataset("bench", num=NUM_IMAGES, size=IMAGE_SIZE, overwrite=True)
    protect(dataset.limit(BATCH_SIZE), "ground_truth", generator=generator_dir)  # warm-up

    measurements = {
        f"bare forward, batch {BATCH_SIZE}": lambda: bare_forward_seconds(generator_dir),
        f"pipeline, batch {BATCH_SIZE}": lambda: pipeline_seconds(
            dataset, generator_dir, BATCH_SIZE
        ),
        "pipeline, batch 1": lambda: pipeline_seconds(dataset, generator_dir, 1),
    }
    rounds = {what: [] for what in measurements}
    for _ in range(ROUNDS):
        for what, measure in measurements.items():
            rounds[what].append(measure())
    rows = [(what, min(seconds)) for what, seconds in rounds.items()]
    bare = rows[0][1]
    results = {
        "images": NUM_IMAGES,
        "image_size": IMAGE_SIZE,
        "generator": config.name,
        "generator_input": config.img_size,
        "machine": machine_facts(),
        "rows": [
            {
                "what": what,
                "seconds": round(seconds, 3),
                "images_per_second": round(NUM_IMAGES / seconds, 2),
                "overhead_vs_bare_forward": round(seconds / bare, 2),
                "all_rounds_seconds": [round(t, 3) for t in rounds[what]],
            }
            for what, seconds in rows
        ],
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"{NUM_IMAGES} sample scenes at {IMAGE_SIZE} px, generator {config.name!r} "
        f"({config.img_size} px input, random weights); best of {ROUNDS} rounds"
    )
    print(
        ", ".join(f"{k} {v}" for k, v in results["machine"].items())
        + f", load average {results['load_average_1min']}"
    )
    print(f"{'':24} {'seconds':>8} {'images/s':>9} {'x bare forward':>15}")
    for row in results["rows"]:
        print(
            f"{row['what']:24} {row['seconds']:8.2f} {row['images_per_second']:9.1f} "
            f"{row['overhead_vs_bare_forward']:15.2f}"
        )
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "protect_throughput.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    sandbox.measure(main)
