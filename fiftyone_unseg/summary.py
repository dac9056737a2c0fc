"""The protection state of a dataset at a glance: what the App's UnSeg panel shows."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from fiftyone_unseg.audit.report import METHOD, load_report
from fiftyone_unseg.protect import optional_values

# The settings that tell protection runs apart, in the order the panel lists them.
SETTING_KEYS = ("generator_id", "eps", "eps_bg", "class_mix", "label_field", "prompt", "format")


def protection_summary(samples, heatmap_field: str = "unseg_noise", bins: int = 20) -> dict:
    """Summarise the protection of ``samples`` (a dataset or view).

    Returns a dict:
      num_samples, num_protected (samples with a ``protected_filepath``), num_replaced
      (protected images that are the ``filepath``), no_segments (protected with
      background noise only), num_visualized (samples with a ``heatmap_field`` heatmap);
      settings: one dict per distinct protection setting (``SETTING_KEYS``, budgets in
      [0, 1]) with its sample ``count``, most samples first;
      psnr: None, or ``min``, ``median``, ``mean``, ``max`` (dB) and a histogram
      (``counts`` over ``edges``: at most ``bins`` bins, sqrt(n) for n values); linf_max and ssim_mean (None without
      values);
      audit: None, or the latest protection audit (by run time): ``run_key``,
      ``timestamp`` (ISO), ``rows`` (``ProtectionReport.rows()``), ``table`` (Markdown)
      and ``chart_path`` (its bar chart PNG).
    """
    protected = [p for p in optional_values(samples, "protected_filepath") if p]
    facts = {
        key: [v for v in optional_values(samples, f"unseg.{key}") if v is not None]
        for key in ("psnr", "linf", "ssim")
    }
    return {
        "num_samples": len(samples),
        "num_protected": len(protected),
        "num_replaced": len(set(protected) & set(samples.values("filepath"))),
        "no_segments": optional_values(samples, "unseg.had_segments").count(False),
        "num_visualized": samples.count(heatmap_field) if samples.has_field(heatmap_field) else 0,
        "settings": _settings(samples),
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


def _settings(samples) -> list[dict]:
    """Distinct protection settings of the protected samples, with their counts."""
    columns = [optional_values(samples, f"unseg.{key}") for key in SETTING_KEYS]
    counts = Counter(row for row in zip(*columns) if row[0] is not None)
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
