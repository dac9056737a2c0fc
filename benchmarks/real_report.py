"""The model card's real-data table, from ``benchmarks/results/real/effectiveness.json``.

Its own module, free of side effects: ``real_effectiveness`` opens a private FiftyOne
database on import, which a test process must never do.
"""


def card_table(results: dict) -> str:
    """The model card's markdown table of ``results`` (the card quotes it as it is)."""

    def num(x, digits=2):
        return "n/a" if x is None else f"{x:.{digits}f}"

    lines = [
        "| victim (data, metric) | chance | clean | protected | ratio | gain ratio | random "
        "| random flat | pattern | class pattern | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in results["victims"].items():
        sd = f" (sd {v['spread']:.3f})" if v["seeds"] > 1 else ""
        lines.append(
            f"| {name} ({v['dataset']}, {v['metric']}) | {num(v['chance'], 3)} | "
            f"{num(v['clean'], 3)} | {num(v['protected'], 3)}{sd} | {num(v['ratio'])} | "
            f"{num(v['gain_ratio'])} | {num(v.get('random_ratio'))} | "
            f"{num(v.get('random_flat_ratio'))} | {num(v.get('pattern_ratio'))} | "
            f"{num(v.get('class_pattern_ratio'))} | {v['seeds']} |"
        )
    if results["stress"]:
        lines += [
            "",
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


def preset_table(presets: dict) -> str:
    """The markdown table that compares presets (name -> their results, as
    :func:`card_table` takes them) on the semantic victim: on clean images and after each
    counter-measure, with the pattern's ratio and the counter-measure's own cost."""

    def num(x):
        return "n/a" if x is None else f"{x:.2f}"

    names = list(presets)
    first = presets[names[0]]
    lines = [
        "| training images | "
        + " | ".join(f"`{n}` ratio" for n in names)
        + " | pattern | counter-measure alone |",
        "|---|" + "---|" * (len(names) + 2),
        "| as published | "
        + " | ".join(num(presets[n]["victims"]["semantic"]["ratio"]) for n in names)
        + f" | {num(first['victims']['semantic'].get('pattern_ratio'))} | - |",
    ]
    for key, s in first["stress"].items():
        ratios = [presets[n]["stress"].get(key, {}).get("ratio") for n in names]
        lines.append(
            f"| `{s['countermeasure']}` | "
            + " | ".join(num(r) for r in ratios)
            + f" | {num(s.get('pattern_ratio'))} | {num(s.get('countermeasure_ratio'))} |"
        )
    lines.append(
        "| mean PSNR (dB) | " + " | ".join(f"{presets[n]['psnr']:.1f}" for n in names) + " | | |"
    )
    return "\n".join(lines)
