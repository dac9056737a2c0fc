"""The protection state of a dataset at a glance: what the App's UnSeg panel shows."""

from __future__ import annotations

import math
from collections import Counter

import fiftyone as fo
import numpy as np

from fiftyone_unseg.audit.report import METHOD, load_report, markdown_table, table_cell
from fiftyone_unseg.protect import (
    CURRENT,
    STALE,
    noise_names,
    optional_values,
    protection_states,
    recorded_settings,
    stored_samples,
)

# The settings that tell protection runs apart, and their sample count, with their column
# labels in the order the panel and `unseg status` list them.
SETTING_LABELS = {
    "generator_id": "Generator",
    "eps": "eps (/255)",
    "eps_bg": "eps bg (/255)",
    "class_mix": "Class mix",
    "label_field": "Label field",
    "prompt": "Prompt",
    "format": "Format",
    "count": "Samples",
}
SETTING_KEYS = tuple(key for key in SETTING_LABELS if key != "count")


def protection_summary(samples, heatmap_field: str | None = None, bins: int = 20) -> dict:
    """Summarise the protection of ``samples`` (a dataset or view).

    Only samples whose copy was made from what they hold now count as protected
    (:func:`fiftyone_unseg.protect.protection_states`); the facts below are theirs.

    Returns a dict:
      num_samples, num_protected, num_stale (copies made from an image or label that has
      changed since: protect again), num_replaced (protected images that are the
      ``filepath``), no_segments (protected with background noise only), num_visualized
      (protected samples whose noise a heatmap shows: in ``heatmap_field``, or by default
      in any ``fo.Heatmap`` field, as :func:`fiftyone_unseg.visualize_noise` wrote it);
      settings: one dict per distinct protection setting (``SETTING_KEYS``, budgets in
      [0, 1]) with its sample ``count``, most samples first;
      psnr: None, or ``min``, ``median``, ``mean``, ``max`` (dB) and a histogram
      (``counts`` over ``edges``: at most ``bins`` bins, sqrt(n) for n values); linf_max and ssim_mean (None without
      values);
      audit: None, or the latest protection audit (by run time): ``run_key``,
      ``timestamp`` (ISO), ``rows`` (``ProtectionReport.rows()``), ``table`` (Markdown)
      and ``chart_path`` (its bar chart PNG).
    """
    stored = stored_samples(samples)  # a view may leave the fields read here out
    states = protection_states(stored)

    def current(field: str) -> list:  # the values of the protected samples
        return [v for v, s in zip(optional_values(stored, field), states) if s == CURRENT]

    protected = current("protected_filepath")
    facts = {
        key: [v for v in current(f"unseg.{key}") if v is not None]
        for key in ("psnr", "linf", "ssim")
    }
    copies = dict(zip(current("id"), protected))
    return {
        "num_samples": len(samples),
        "num_protected": len(protected),
        "num_stale": states.count(STALE),
        "num_replaced": len(set(protected) & set(stored.values("filepath"))),
        "no_segments": current("unseg.had_segments").count(False),
        "num_visualized": _visualized(stored, copies, heatmap_field),
        "settings": _settings([current(f"unseg.{key}") for key in SETTING_KEYS]),
        "psnr": _distribution(facts["psnr"], bins),
        "linf_max": max(facts["linf"], default=None),
        "ssim_mean": float(np.mean(facts["ssim"])) if facts["ssim"] else None,
        "audit": latest_audit(samples),
    }


def latest_audit(samples) -> dict | None:
    """The most recent protection audit recorded on ``samples``' dataset, or None."""
    keys = samples.list_runs(method=METHOD)
    if not keys:
        return None
    infos = [samples.get_run_info(key) for key in keys]
    info = max(infos, key=lambda i: i.timestamp)
    report = load_report(samples, info.key)
    return {
        "run_key": info.key,
        "timestamp": info.timestamp.isoformat(timespec="seconds"),
        "rows": report.rows(),
        "table": report.table(),
        "chart_path": report.chart_path,
    }


def _visualized(samples, copies: dict, heatmap_field: str | None) -> int:
    """How many of ``copies`` (sample id -> protected copy) have a heatmap of their noise,
    in ``heatmap_field`` or in any heatmap field."""
    heatmaps = samples.get_field_schema(embedded_doc_type=fo.Heatmap)
    shown, dataset = set(), samples._dataset
    for name in [heatmap_field] if heatmap_field else heatmaps:
        if name not in heatmaps:
            continue
        ids, maps = samples.values(["id", f"{name}.map_path"])
        shown |= {
            i for i, m in zip(ids, maps) if i in copies and m in noise_names(copies[i], dataset)
        }
    return len(shown)


def _settings(columns: list[list]) -> list[dict]:
    """Distinct protection settings (``columns``: the protected samples' values of each
    of ``SETTING_KEYS``), with their counts."""
    rows = [recorded_settings(dict(zip(SETTING_KEYS, row))) for row in zip(*columns)]
    counts = Counter(tuple(row.values()) for row in rows)
    return [{**dict(zip(SETTING_KEYS, row)), "count": count} for row, count in counts.most_common()]


def _distribution(values: list, bins: int) -> dict | None:
    if not values:
        return None
    counts, edges = np.histogram(values, bins=min(bins, math.isqrt(len(values))))
    return {
        "min": float(np.min(values)),
        "median": float(np.median(values)),
        "mean": float(np.mean(values)),
        "max": float(np.max(values)),
        "counts": counts.tolist(),
        "edges": edges.tolist(),
    }


def headline(summary: dict) -> str:
    """One Markdown line: how many samples are protected, and their image quality."""
    n, total, stale = summary["num_protected"], summary["num_samples"], summary["num_stale"]
    stale_part = (
        f"{stale} stale (image or label changed since they were protected, or a "
        "re-protection that did not finish or still runs: protect again)"
    )
    if not n:
        start = f"**0 of {total}** samples protected"
        start_hint = "protect them to start (`unseg protect`, or *Protect samples* in the App)"
        return f"{start} · {stale_part}" if stale else f"{start}: {start_hint}."
    parts = [f"**{n} of {total}** samples protected"]
    if stale:
        parts.append(stale_part)
    if summary["num_replaced"]:
        parts.append(f"{summary['num_replaced']} replace their originals")
    if summary["no_segments"]:
        parts.append(f"{summary['no_segments']} without segments (background budget only)")
    psnr = summary["psnr"]
    if psnr:
        parts.append(
            f"PSNR median {psnr['median']:.1f} dB (min {psnr['min']:.1f}, max {psnr['max']:.1f})"
        )
    if summary["linf_max"] is not None:
        parts.append(f"L-inf max {summary['linf_max'] * 255:.2f}/255")
    if summary["ssim_mean"] is not None:
        parts.append(f"SSIM mean {summary['ssim_mean']:.3f}")
    parts.append(f"{summary['num_visualized']} with noise heatmaps")
    return " · ".join(parts)


def visibility_line(visibility: dict) -> str:
    """One line on how visible a protect run's noise is (its summary's ``visibility``)."""
    count = visibility["count"]
    if not count:
        return "no protected samples to measure"
    head = f"{count} protected sample{'s' if count != 1 else ''}"
    parts = []
    if visibility["psnr_mean"] is not None:
        parts.append(
            f"PSNR mean {visibility['psnr_mean']:.1f} dB (min {visibility['psnr_min']:.1f})"
        )
    if visibility["linf_max"] is not None:
        parts.append(f"largest change {visibility['linf_max'] * 255:.1f}/255 per channel (L-inf)")
    return head + (": " + ", ".join(parts) if parts else "")


def setting_rows(summary: dict) -> list[dict]:
    """The summary's settings as display strings (budgets in 1/255)."""
    rows = []
    for setting in summary["settings"]:
        row = {k: table_cell(k, v) for k, v in setting.items()}
        for key in ("eps", "eps_bg"):
            row[key] = f"{setting[key] * 255:.2f}"
        rows.append(row)
    return rows


def summary_markdown(summary: dict) -> str:
    """The whole summary as Markdown: headline, settings table, latest audit."""
    lines = [headline(summary)]
    rows = setting_rows(summary)
    if rows:
        keys = list(SETTING_LABELS)
        table = markdown_table(
            [SETTING_LABELS[k] for k in keys], [[r[k] for k in keys] for r in rows]
        )
        lines += ["", table]
    audit = summary["audit"]
    if audit:
        lines += ["", f"Latest audit `{audit['run_key']}` ({audit['timestamp']} UTC):", ""]
        lines += [audit["table"], "", f"Chart: {audit['chart_path']}"]
    else:
        lines += ["", "No protection audit yet (unseg evaluate)."]
    return "\n".join(lines)
