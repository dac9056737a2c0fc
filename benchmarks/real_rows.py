"""A row of the real-data results from its per-seed scores, rows of one measurement at
other victim seeds combined (``real_effectiveness.py --update --add-seeds``), and a
generator's row completed with the baselines another generator's run measured
(``--baselines-from``).

Free of side effects on import, like :mod:`real_report`: tests import it.
"""

import numpy as np
from machine import merge_results

SCORED = ("clean", "protected")  # the spread is the larger sample sd of these two
# What a row says besides its scores: kept when its scores are recomputed.
# (``unseen_drive`` holds the scores of one victim seed, which it names.)
NAMING = ("dataset", "victim", "countermeasure", "checkpoint", "pretrained", "unseen_drive")


def summary_row(metric: str, chance: float | None, runs: dict, victim_seeds: list) -> dict:
    """A victim's row from ``runs`` (variant -> one score per victim seed of
    ``victim_seeds``; "clean" and "protected" first, then the baselines): mean scores,
    ratios to clean, gain ratios, ``spread``; ``none`` (clean images through a
    counter-measure) gives ``countermeasure_ratio``."""
    if any(len(scores) != len(victim_seeds) for scores in runs.values()):
        raise ValueError(f"every variant needs one score per seed of {victim_seeds}: {runs}")
    score = {variant: float(np.mean(scores)) for variant, scores in runs.items()}
    clean, protected = score["clean"], score["protected"]
    row = {
        "metric": metric,
        "clean": clean,
        "protected": protected,
        "chance": chance,
        "ratio": _ratio(protected, clean),
        "gain_ratio": gain_ratio(protected, clean, chance),
        "seeds": len(victim_seeds),
        "victim_seeds": list(victim_seeds),
        "spread": max(_sd(runs[v]) for v in SCORED) if len(victim_seeds) > 1 else None,
        "runs": runs,
    }
    for name in runs:
        if name not in SCORED:
            row[name] = score[name]
            row[f"{name}_ratio"] = _ratio(score[name], clean)
            row[f"{name}_gain_ratio"] = gain_ratio(score[name], clean, chance)
    if "none" in runs:
        row["countermeasure_ratio"] = row.pop("none_ratio")
    return row


def add_seeds(old: dict, new: dict, first_seed: int) -> dict:
    """``old``'s row with ``new``'s scores at other victim seeds added: the variants both
    measured, recomputed over all the seeds. Rows written before ``victim_seeds`` was
    recorded ran seeds ``first_seed`` (the file's ``victim_seed``) onwards."""
    if old.get("settings") != new.get("settings") or old["metric"] != new["metric"]:
        raise SystemExit(
            f"--add-seeds: the victim settings differ ({old.get('settings')} there, "
            f"{new.get('settings')} now)"
        )
    if _sha256(old) != _sha256(new):
        raise SystemExit(
            f"--add-seeds: the victims fine-tune another checkpoint ({_sha256(old)} there, "
            f"{_sha256(new)} now)"
        )
    seeds_old, runs_old = _seeds_and_runs(old, first_seed)
    overlap = sorted(set(seeds_old) & set(new["victim_seeds"]))
    if overlap:
        raise SystemExit(f"--add-seeds: victim seeds {overlap} are already in the row")
    runs = {v: runs_old[v] + new["runs"][v] for v in new["runs"] if v in runs_old}
    if "unseen_drive" not in old and "unseen_drive" in new:  # a row from before it was kept
        old = {**old, "unseen_drive": new["unseen_drive"]}
    return _with_runs(old, runs, seeds_old + new["victim_seeds"])


def borrow_baselines(row: dict, donor: dict | None, first_seed: int = 0) -> tuple[dict, list]:
    """``row`` with the baselines ``donor`` (the same test from another generator's run)
    measured and ``row`` did not, and the names of those. The baselines do not depend on
    the generator, so they carry over when both trained the same clean victims: same
    settings, victim seeds (or some of the donor's) and clean scores to the last digit
    (another CPU model trains the semantic victim differently, and its clean scores show
    it). ``first_seed``: the donor file's ``victim_seed``, for rows stored before seeds
    were. Otherwise ``row`` unchanged and ``[]``."""
    if not donor or not row.get("runs"):
        return row, []
    seeds, runs = _seeds_and_runs(donor, first_seed)
    wanted = row.get("victim_seeds") or []
    if wanted and set(wanted) < set(seeds) and all(len(r) == len(seeds) for r in runs.values()):
        at = [seeds.index(seed) for seed in wanted]  # the row's seeds out of more
        seeds, runs = wanted, {v: [r[i] for i in at] for v, r in runs.items()}
    same = (
        donor.get("settings") == row.get("settings")
        and _sha256(donor) == _sha256(row)
        and seeds == row.get("victim_seeds")
        and runs.get("clean") == row["runs"]["clean"]
    )
    missing = [v for v in runs if v not in row["runs"]] if same else []
    if not missing:
        return row, []
    runs = {**row["runs"], **{v: runs[v] for v in missing}}
    return _with_runs(row, runs, row["victim_seeds"]), missing


def measurement_differences(results: dict, donor: dict) -> list[str]:
    """What makes ``donor``'s file another measurement than ``results``' whole: the budgets
    (the baselines' noise follows them), a smoke run, or the split of a dataset both used
    (other test images)."""
    differs = [k for k in ("eps", "eps_bg", "quick") if donor.get(k) != results.get(k)]
    return differs + [f"{n} split" for n in other_splits(donor, results)]


def other_splits(old: dict, new: dict) -> list[str]:
    """The datasets both results used that ``new`` split otherwise (other test images)."""
    before = old.get("data", {})
    return [n for n, d in new.get("data", {}).items() if n in before and before[n] != d]


def without_rows_on(results: dict, datasets: list, kept: dict) -> tuple[dict, list]:
    """``results`` without its rows on ``datasets`` other than those ``kept`` (a results
    document) measures again, and the ``part/key`` names of the rows left out."""
    dropped = [
        f"{part}/{key}"
        for part in ("victims", "stress")
        for key, row in results.get(part, {}).items()
        if row.get("dataset") in datasets and key not in kept.get(part, {})
    ]
    trimmed = {
        **results,
        **{
            part: {k: r for k, r in results.get(part, {}).items() if f"{part}/{k}" not in dropped}
            for part in ("victims", "stress")
        },
    }
    return trimmed, dropped


def pool_keys(old: dict, new: dict) -> dict:
    """Quality per dataset (``psnr``, ``ssim``, ``images``) of ``old`` with ``new``'s, a
    run that drew class keys of its own, pooled in: each key's values in ``per_key``,
    ``psnr`` and ``ssim`` their means, ``keys`` their number."""
    pooled_quality = dict(old)
    for name, quality in new.items():
        before = old.get(name)
        keys = [] if before is None else before.get("per_key") or [_key_quality(before)]
        keys = [*keys, _key_quality(quality)]
        pooled_quality[name] = {
            **quality,
            "psnr": float(np.mean([k["psnr"] for k in keys])),
            "ssim": float(np.mean([k["ssim"] for k in keys])),
            "keys": len(keys),
            "per_key": keys,
        }
    return pooled_quality


def _key_quality(quality: dict) -> dict:
    return {"psnr": quality["psnr"], "ssim": quality["ssim"]}


def pooled(quality: dict, key: str) -> float | None:
    """The mean of ``key`` over every protected training image of all datasets (each
    dataset's mean weighted by its ``images``)."""
    parts = [(q[key], q["images"]) for q in quality.values() if q.get(key) is not None]
    total = sum(n for _, n in parts)
    return sum(v * n for v, n in parts) / total if total else None


def gain_ratio(score: float, clean: float, chance: float | None) -> float | None:
    """The share of the clean victim's gain over its trivial predictor that ``score`` keeps."""
    if chance is None or clean <= chance:
        return None
    return (score - chance) / (clean - chance)


def _with_runs(row: dict, runs: dict, victim_seeds: list) -> dict:
    """``row`` recomputed from ``runs`` at ``victim_seeds``, keeping what names it."""
    kept = {k: v for k, v in row.items() if k in NAMING}
    summary = summary_row(row["metric"], row["chance"], runs, victim_seeds)
    return {**kept, **summary, "settings": row.get("settings")}


def _seeds_and_runs(row: dict, first_seed: int) -> tuple[list, dict]:
    """A row's victim seeds and per-seed scores; rows stored before those were recorded
    ran seeds ``first_seed`` onwards, and hold one mean per variant."""
    seeds = row.get("victim_seeds") or list(range(first_seed, first_seed + row["seeds"]))
    runs = row.get("runs") or {v: [row[v]] for v in (*SCORED, *_baselines(row))}
    return seeds, runs


def _sha256(row: dict) -> str | None:
    """The SAM checkpoint a row's victims fine-tuned, if any."""
    return (row.get("checkpoint") or {}).get("sha256")


def _baselines(row: dict) -> list:
    return [k[: -len("_gain_ratio")] for k in row if k.endswith("_gain_ratio")]


def _ratio(score: float, clean: float) -> float | None:
    return score / clean if clean else None


def _sd(scores: list) -> float:
    return float(np.std(scores, ddof=1))


def merge(old: dict, new: dict, add: bool = False) -> dict:
    """``old`` with the victims and stress tests that ``new`` measured replaced, or with
    ``add``, their scores at ``new``'s victim seeds added (:func:`add_seeds`)."""
    old = {"class_mix": 0.0, "class_style": "texture", "prompt": "all", **old}  # older files
    same = ("generator", "eps", "eps_bg", "class_mix", "class_style", "prompt", "quick")
    changed = other_splits(old, new)
    if changed and add:
        raise SystemExit(f"--add-seeds: the {', '.join(changed)} split differs from the file's")
    if changed:  # rows on the file's split of those datasets would mix with this run's
        old, dropped = without_rows_on(old, changed, new)
        if dropped:
            print(f"--update: left out, measured on another split: {', '.join(dropped)}")
    if add:
        new = {**new, "victim_seed": old["victim_seed"]}
        if old["class_mix"]:  # each run draws class keys of its own: their PSNRs pool
            new["quality"] = pool_keys(old.get("quality", {}), new["quality"])
        for part in ("victims", "stress"):
            new[part] = {
                key: add_seeds(old[part][key], row, old["victim_seed"])
                if key in old.get(part, {})
                else row
                for key, row in new[part].items()
            }
    merged = merge_results(
        old, new, (*same, "victim_seed"), ("victims", "stress", "quality", "data")
    )
    merged["psnr"] = pooled(merged["quality"], "psnr")
    merged["ssim"] = pooled(merged["quality"], "ssim")
    return merged


def borrow(results: dict, donor: dict | None) -> dict:
    """``results`` with every row completed from ``donor``'s same row
    (:func:`borrow_baselines`), saying what each row took or why nothing."""
    if donor is None:
        return results
    differs = measurement_differences(results, donor)
    if differs:
        print(f"--baselines-from: nothing taken, {', '.join(differs)} differ(s) there")
        return results
    results = dict(results)
    for part in ("victims", "stress"):
        results[part] = dict(results[part])
        for key, row in results[part].items():
            other = donor.get(part, {}).get(key)
            results[part][key], taken = borrow_baselines(row, other, donor["victim_seed"])
            why = "absent there" if other is None else "nothing missing, or other clean runs"
            said = f"took {', '.join(taken)} from {donor['generator']}" if taken else why
            print(f"--baselines-from: {part} {key}: {said}")
    return results
