"""The real-data tables the model cards and the README quote, from
``benchmarks/results/real/`` (``effectiveness.json``: the default preset's;
``<preset>.json``: the other presets'; ``more_countermeasures/<preset>.json``: more
counter-measures, measured in runs of their own, each row with its own clean victims).
The README compares every preset; the robust generator's card, the two generators.

Its own module, free of side effects on import: ``real_effectiveness`` opens a private
FiftyOne database on import, which a test process must never do.

    python benchmarks/real_report.py   # rewrite the tables between their markers
"""

import json
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results", "real")
MORE_COUNTERMEASURES = "more_countermeasures"  # {preset}.json: stress rows of another run
DATASET_NAMES = {"camvid": "CamVid", "pets": "the pets", "coco": "COCO"}
PRESET_RESULTS = {"default": "effectiveness", "robust": "robust", "semantic": "semantic"}
CARDS = ("default", "robust")  # the presets with a generator of their own, and its card
# The semantic preset against victims trained longer: the epochs and their results file
TRAINING_LENGTHS = {24: "class_colour/semantic_epochs24", 40: "class_colour/semantic_epochs40"}


def card_table(results: dict) -> str:
    """The model card's markdown table of ``results`` (the card quotes it as it is)."""

    def num(x, digits=2):
        return "n/a" if x is None else f"{x:.{digits}f}"

    lines = []
    if results["victims"]:
        lines += [
            "| victim (data, metric) | chance | clean | protected | ratio | gain ratio | random "
            "| random flat | pattern | class pattern | seeds |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    for name, v in results["victims"].items():
        sd = f", sd {v['spread']:.3f}" if v["seeds"] > 1 else ""  # of clean or protected
        lines.append(
            f"| {name} ({v['dataset']}, {v['metric']}) | {num(v['chance'], 3)} | "
            f"{num(v['clean'], 3)} | {num(v['protected'], 3)} | {num(v['ratio'])} | "
            f"{num(v['gain_ratio'])} | {num(v.get('random_ratio'))} | "
            f"{num(v.get('random_flat_ratio'))} | {num(v.get('pattern_ratio'))} | "
            f"{num(v.get('class_pattern_ratio'))} | {v['seeds']}{sd} |"
        )
    if results["stress"]:
        lines += [
            *([""] if lines else []),
            "| counter-measure on the training images | victim | ratio | gain ratio | pattern "
            "| counter-measure alone | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
    for s in results["stress"].values():
        lines.append(
            f"| `{s['countermeasure']}` | {s['victim']} | {num(s['ratio'])} | "
            f"{num(s['gain_ratio'])} | {num(s.get('pattern_ratio'))} | "
            f"{num(s.get('countermeasure_ratio'))} | {s['seeds']} |"
        )
    return "\n".join(lines)


def preset_table(presets: dict, victim: str = "semantic") -> str:
    """The markdown table that compares presets (name -> their results, as
    :func:`card_table` takes them) on one victim: each one's ratio (victim seeds) on
    unaltered images and after each counter-measure that victim was measured under, with
    the pattern's ratio and the counter-measure's own cost (generator-independent: from
    the first preset that has them; one per set of victim seeds, with its seeds, where the
    presets' rows were measured at other seeds), the mean PSNR on the victim's dataset, and the CPU
    model that measured each (semantic trainings differ between models)."""

    def num(x):
        return "n/a" if x is None else f"{x:.2f}"

    def cell(row):
        return "n/a" if row is None else f"{row['ratio']:.2f} ({row['seeds']})"

    def first(rows, key):
        return next((r[key] for r in rows if r and r.get(key) is not None), None)

    def baseline(rows, key):  # one value per set of victim seeds the presets' rows have
        measured = {}
        for r in rows:
            if r and r.get(key) is not None:
                measured.setdefault(tuple(r.get("victim_seeds") or ()), r)
        if len(measured) <= 1:
            return num(first(list(measured.values()), key))
        return " / ".join(f"{r[key]:.2f} ({r['seeds']})" for r in measured.values())

    names = list(presets)
    lines = [
        "| training images | "
        + " | ".join(f"`{n}` ratio (seeds)" for n in names)
        + " | pattern | counter-measure alone |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    published = [presets[n]["victims"].get(victim) for n in names]
    lines.append(
        "| as published | "
        + " | ".join(cell(r) for r in published)
        + f" | {num(first(published, 'pattern_ratio'))} | - |"
    )
    stress = {
        n: {r["countermeasure"]: r for r in presets[n]["stress"].values() if r["victim"] == victim}
        for n in names
    }
    for countermeasure in dict.fromkeys(c for n in names for c in stress[n]):
        rows = [stress[n].get(countermeasure) for n in names]
        lines.append(
            f"| `{countermeasure}` | "
            + " | ".join(cell(r) for r in rows)
            + f" | {baseline(rows, 'pattern_ratio')} "
            f"| {baseline(rows, 'countermeasure_ratio')} |"
        )
    dataset = first(published + [r for n in names for r in stress[n].values()], "dataset")
    psnr = [presets[n]["quality"].get(dataset, {}).get("psnr") for n in names]
    lines.append(
        f"| mean PSNR on {DATASET_NAMES.get(dataset, dataset)} (dB) | "
        + " | ".join("n/a" if p is None else f"{p:.1f}" for p in psnr)
        + " | | |"
    )
    cpus = [presets[n].get("machine", {}).get("cpu", "n/a") for n in names]
    lines.append("| measured on | " + " | ".join(cpus) + " | | |")
    return "\n".join(lines)


def epochs_table(results: dict) -> str:
    """The markdown table of one preset's semantic rows by the victim's training length
    (epochs -> results): clean mIoU, the ratio (victim seeds), each seed's ratio, the mean
    PSNR over the runs' keys."""
    lines = [
        "| victim trained for | clean mIoU | ratio (seeds) | per seed | mean PSNR (dB) |",
        "|---|---|---|---|---|",
    ]
    for epochs, result in sorted(results.items()):
        row = result["victims"]["semantic"]
        runs = row.get("runs", {})
        each = [p / c for p, c in zip(runs.get("protected", []), runs.get("clean", []))]
        seeds = ", ".join(f"{r:.2f}" for r in each) or "-"
        lines.append(
            f"| {epochs} epochs | {row['clean']:.3f} | {row['ratio']:.2f} ({row['seeds']}) "
            f"| {seeds} | {result['quality']['camvid']['psnr']:.1f} |"
        )
    return "\n".join(lines)


def semantic_by_epochs(semantic: dict) -> dict:
    """The semantic preset's results by the victim's epochs: the table's (``semantic``)
    and those of :data:`TRAINING_LENGTHS` that are committed."""
    results = {semantic["victims"]["semantic"]["settings"]["epochs"]: semantic}
    for epochs, file in TRAINING_LENGTHS.items():
        path = os.path.join(RESULTS, f"{file}.json")
        if os.path.isfile(path):
            results[epochs] = json.load(open(path))
    return results


def write_tables() -> None:
    """Rewrite the tables between ``<!-- name -->`` and ``<!-- /name -->`` in the README
    and the presets' model cards from the committed results."""
    results = {
        name: json.load(open(os.path.join(RESULTS, f"{file}.json")))
        for name, file in PRESET_RESULTS.items()
    }
    smoke = [name for name, r in results.items() if r.get("quick")]
    if smoke:
        raise SystemExit(f"{', '.join(smoke)}: --quick smoke results, not the benchmark's")
    generators = {name: results[name] for name in CARDS}
    tables = {
        "preset_table": preset_table(results),
        "preset_table_yolo": preset_table(results, "yolo"),
        "generators_table": preset_table(generators),
        "generators_table_yolo": preset_table(generators, "yolo"),
        "semantic_epochs_table": epochs_table(semantic_by_epochs(results["semantic"])),
        **{f"{name}_table": card_table(results[name]) for name in CARDS},
    }
    for name in CARDS:  # counter-measures measured on another CPU model, each row whole
        path = os.path.join(RESULTS, MORE_COUNTERMEASURES, f"{name}.json")
        if os.path.isfile(path):
            tables[f"{name}_more_table"] = card_table(json.load(open(path)))
    cards = [f"fiftyone_unseg/weights/{name}/MODEL_CARD.md" for name in CARDS]
    for path in ("README.md", *cards):
        path = os.path.join(REPO, path)
        with open(path) as f:
            text = f.read()
        for name, table in tables.items():
            pattern = rf"(<!-- {name} -->\n).*?(\n<!-- /{name} -->)"
            text = re.sub(pattern, lambda m, t=table: m.group(1) + t + m.group(2), text, flags=re.S)
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote the tables in {os.path.relpath(path, REPO)}")


if __name__ == "__main__":
    write_tables()
