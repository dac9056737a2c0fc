"""The protection report: per victim, clean vs protected (vs baselines) on clean test data.

It is stored three ways: a FiftyOne run on the dataset (``dataset.list_runs()``;
:func:`load_report` reads it back), ``report.json`` and a bar chart ``report.png`` in
the audit's folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field

import fiftyone.core.runs as fors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fiftyone_unseg.io import atomic_write_bytes

METHOD = "unseg.evaluate_protection"
_COLORS = {
    "clean": "#4c72b0",
    "protected": "#c44e52",
    "random": "#8c8c8c",
    "pattern": "#dd8452",
    "none": "#55a868",
}


LEARNT_MARGIN = 0.10
"""How far above its trivial predictor a victim's clean score must be for its ratios to
mean something (the real-data benchmark's calibration rule)."""


@dataclass
class VictimResult:
    """One victim's scores on the clean test split, per training variant.

    scores: variant ("clean", "protected", "random", "pattern", "none") -> metric in [0, 1] (the
      mean over seeds when the audit ran several).
    spread / runs: with several seeds, variant -> sample standard deviation / each seed's
      score (empty with one seed).
    chance: the metric of a trivial predictor (see the victim's module).
    fields / eval_keys: variant -> prediction field / FiftyOne evaluation key.
    settings: epochs, image_size, batch_size, lr it trained with.
    reused: variant -> the earlier audit whose trainings it took (see
      :mod:`fiftyone_unseg.audit.reuse`).
    """

    victim: str
    metric: str
    scores: dict = field(default_factory=dict)
    spread: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    chance: float | None = None
    seconds: float = 0.0
    fields: dict = field(default_factory=dict)
    eval_keys: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    reused: dict = field(default_factory=dict)

    def ratio(self, variant: str) -> float | None:
        """score(variant) / score(clean); None when either is missing or clean is 0."""
        clean, other = self.scores.get("clean"), self.scores.get(variant)
        return None if not clean or other is None else other / clean


@dataclass
class ProtectionReport:
    """What :func:`fiftyone_unseg.evaluate_protection` returns and records."""

    run_key: str
    dataset: str
    split: str
    num_train: int
    num_test: int
    protected_field: str | None
    countermeasure: str | None
    baselines: tuple
    results: list
    folder: str
    image_side: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)  # unreadable samples: id, filepath, reason

    @property
    def chart_path(self) -> str:
        return os.path.join(self.folder, "report.png")

    @property
    def report_path(self) -> str:
        return os.path.join(self.folder, "report.json")

    @property
    def variants(self) -> list[str]:
        return ["clean"] + (["protected"] if self.protected_field else []) + list(self.baselines)

    def rows(self) -> list[dict]:
        """One dict per victim: victim, metric, clean, protected, ratio, <baseline>,
        <baseline>_ratio, chance, countermeasure, px (the victim's image size), seconds
        (only the columns that ran); with several seeds also <variant>_sd after each
        variant's mean."""
        rows = []
        for r in self.results:
            row = {"victim": r.victim, "metric": r.metric}
            for variant in self.variants:
                row[variant] = r.scores.get(variant)
                if r.spread:
                    row[f"{variant}_sd"] = r.spread.get(variant)
                if variant != "clean":
                    row["ratio" if variant == "protected" else f"{variant}_ratio"] = r.ratio(
                        variant
                    )
            row.update(
                chance=r.chance,
                countermeasure=self.countermeasure,
                px=r.settings.get("image_size"),
                seconds=round(r.seconds, 1),
            )
            rows.append(row)
        return rows

    def unlearnt(self) -> list[str]:
        """One line per victim whose clean score is less than :data:`LEARNT_MARGIN`
        above its trivial predictor's: it did not learn the data at these settings, so
        its ratios say little."""
        return [
            f"{r.victim}: clean {r.scores['clean']:.3f} is not {LEARNT_MARGIN} above the "
            f"trivial predictor's {r.chance:.3f}: the victim did not learn this data at these "
            "settings (train it longer or on larger images); its ratios say little"
            for r in self.results
            if r.chance is not None and r.scores.get("clean", 1.0) < r.chance + LEARNT_MARGIN
        ]

    def reused_trainings(self) -> list[str]:
        """One line per variant whose trainings were taken from another audit."""
        return [
            f"{r.victim}: the {variant} trainings are those of audit {key!r} (identical)"
            for r in self.results
            for variant, key in r.reused.items()
        ]

    def table(self) -> str:
        """The rows as a Markdown table."""
        rows = self.rows()
        header = list(rows[0]) if rows else ["victim"]
        cells = [[table_cell(h, row[h]) for h in header] for row in rows]
        return markdown_table([h.replace("_", " ") for h in header], cells)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProtectionReport:
        data = dict(data, baselines=tuple(data["baselines"]))
        data["results"] = [VictimResult(**r) for r in data["results"]]
        return cls(**data)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of ``header`` and ``rows`` (cells already as text)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table_cell(column: str, value) -> str:
    """A value of ``column`` as a table cell: floats to 3 decimals, None as a dash."""
    if value is None:
        return "-"
    if column == "seconds":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_report(report: ProtectionReport) -> None:
    """Write ``report.json`` and the bar chart ``report.png`` into the report's folder."""
    atomic_write_bytes(json.dumps(report.to_dict(), indent=2).encode(), report.report_path)
    atomic_write_bytes(_chart_png(report), report.chart_path)


def _chart_png(report: ProtectionReport) -> bytes:
    """Grouped bars: per victim, its metric after training on each variant (with error
    bars of one standard deviation over seeds, when there were several)."""
    results = report.results
    report_has_spread = any(r.spread for r in results)
    variants = report.variants
    figure = Figure(figsize=(1.6 + 1.2 * max(len(results), 1) * len(variants) / 2, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        xs = [i + (k - (len(variants) - 1) / 2) * width for i in range(len(results))]
        heights = [r.scores.get(variant) or 0.0 for r in results]
        errors = [r.spread.get(variant, 0.0) for r in results] if report_has_spread else None
        axes.bar(xs, heights, width, yerr=errors, label=variant, color=_COLORS.get(variant))
    axes.set_xticks(range(len(results)), [f"{r.victim}\n{r.metric}" for r in results], fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score on clean test images")
    title = (
        "Trained on clean data" if variants == ["clean"] else "Trained on clean vs protected data"
    )
    if report.countermeasure:
        title += f" (counter-measure {report.countermeasure})"
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


def record_run(samples, report: ProtectionReport, config: dict) -> None:
    """Register the audit as the FiftyOne run ``report.run_key`` with the report as results."""
    run_config = samples.init_run(method=METHOD, **config)
    results = fors.RunResults(samples, run_config, report.run_key, report=report.to_dict())
    samples.register_run(report.run_key, run_config, results=results, overwrite=True)


def load_report(samples, run_key: str) -> ProtectionReport:
    """The report of the audit recorded as ``run_key`` on ``samples``' dataset."""
    if run_key not in samples.list_runs(method=METHOD):
        raise ValueError(
            f"no protection audit {run_key!r}; audits here: {samples.list_runs(method=METHOD)}"
        )
    return ProtectionReport.from_dict(samples.load_run_results(run_key, cache=False).report)
