"""What every benchmark stores: the machine's facts, and its results file."""

import json
import os
import platform

import torch

from fiftyone_unseg.checkpoint import load_generator
from fiftyone_unseg.cli import budget_arg
from fiftyone_unseg.io import atomic_write_bytes
from fiftyone_unseg.settings import (
    CLASS_STYLES,
    DEFAULT_EPS,
    DEFAULT_EPS_BG,
    NO_GENERATOR,
    PRESETS,
    preset_protection,
)


def add_protection_arguments(parser, budgets_only: bool = False) -> None:
    """The effectiveness benchmarks' ``--preset``, ``--generator``, ``--eps``,
    ``--eps-bg``, ``--class-mix`` and ``--class-style`` (the protection measured), with
    protect's defaults; :func:`resolve_protection` fills in the preset's. With
    ``budgets_only``, the budgets alone (a benchmark that names its generators itself)."""
    parser.add_argument("--eps", type=budget_arg, default=DEFAULT_EPS, help="object budget")
    parser.add_argument(
        "--eps-bg", type=budget_arg, default=DEFAULT_EPS_BG, help="background budget"
    )
    if budgets_only:
        return
    parser.add_argument(
        "--preset", choices=list(PRESETS), help="a named protection, as unseg protect's"
    )
    parser.add_argument("--generator", help="checkpoint directory (default: the preset's)")
    parser.add_argument(
        "--class-mix",
        type=float,
        help="protect's class_mix (share of the secret class keys; 0: the generator alone; "
        "default: the preset's)",
    )
    parser.add_argument(
        "--class-style",
        choices=CLASS_STYLES,
        help="protect's class_style: each class's key an 8x8 texture or one flat colour "
        "(default: the preset's)",
    )


def resolve_protection(parser, args) -> None:
    """Set ``args.generator``, ``args.class_mix`` and ``args.class_style`` to what
    protect uses: those given, the rest ``--preset``'s (as ``unseg protect``)."""
    try:
        args.generator, args.class_mix, args.class_style = preset_protection(
            args.preset, args.generator, args.class_mix, args.class_style
        )
    except ValueError as error:
        parser.error(str(error))


def protection_generator(args) -> tuple:
    """(model, generator_id) of the generator protect runs with ``args`` (after
    :func:`resolve_protection`): (None, "none") where class keys at share 1 are the whole
    noise."""
    if args.class_mix == 1:
        return None, NO_GENERATOR
    model = load_generator(args.generator)
    return model, model.generator_id


def machine_facts() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def output_path(parser, args, default: str) -> str:
    """``--out``, else ``default`` (the committed results), which a ``--quick`` smoke run
    never overwrites: it must name its own file."""
    if args.out is None and args.quick:
        parser.error("--quick is a smoke run, not the benchmark: give --out FILE")
    return args.out or default


def publish(results: dict, table: str, path: str) -> None:
    """Print ``table``, then write ``results`` as JSON to ``path`` atomically."""
    print(table)
    atomic_write_bytes(json.dumps(results, indent=2).encode(), path)
    print(f"wrote {path}")


def merge_results(old: dict, new: dict, same: tuple, parts: tuple) -> dict:
    """``old`` with the entries of its dicts ``parts`` that ``new`` measured replaced; the
    keys ``same`` must agree (else SystemExit naming the first that differs)."""
    for key in same:
        if old.get(key) != new[key]:
            raise SystemExit(f"--update: {key} differs ({old.get(key)} there, {new[key]} now)")
    cpus = (old.get("machine") or {}).get("cpu"), (new.get("machine") or {}).get("cpu")
    if None not in cpus and cpus[0] != cpus[1]:  # another CPU model trains victims otherwise
        raise SystemExit(f"--update: measured on {cpus[0]} there, on {cpus[1]} now")
    merged = dict(old)
    for key in parts:
        merged[key] = {**old.get(key, {}), **new[key]}
    if old.get("seconds") is not None:  # files merged by hand record none
        merged["seconds"] = old["seconds"] + new["seconds"]
    return merged
