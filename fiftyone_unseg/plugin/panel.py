"""The UnSeg panel: the dataset's protection state, the latest audit and the operators."""

import base64
import os
from datetime import datetime, timezone

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.audit.report import table_cell
from fiftyone_unseg.summary import SETTING_LABELS, headline, protection_summary, setting_rows

PLUGIN = "@unseg/unseg"
AUDIT_HIDDEN = ("countermeasure", "px", "seconds")  # audit columns the panel leaves out
ACTIONS = (
    ("protect_samples", "Protect", "shield"),
    ("visualize_noise", "Noise", "grain"),
    ("evaluate_protection", "Audit", "assessment"),
    ("export_protected", "Export", "download"),
    ("restore_originals", "Restore", "restore"),
)


class UnSegPanel(foo.Panel):
    """Shows :func:`fiftyone_unseg.summary.protection_summary` of the current dataset."""

    @property
    def config(self):
        return foo.PanelConfig(
            name="unseg_panel",
            label="UnSeg",
            icon="/assets/icon.svg",
            surfaces="grid",
            help_markdown="Protection state of this dataset; buttons open the UnSeg operators.",
        )

    def on_load(self, ctx):
        self.refresh(ctx)

    def on_change_dataset(self, ctx):
        self.refresh(ctx)

    def refresh(self, ctx):
        """Compute the summary and put it into the panel's state and data."""
        summary = protection_summary(ctx.dataset)
        as_of = datetime.now(timezone.utc).strftime("%H:%M:%S")
        ctx.panel.state.headline = f"{headline(summary)} *(as of {as_of} UTC)*"
        ctx.panel.state.notice = None
        ctx.panel.state.settings = setting_rows(summary)
        ctx.panel.state.has_protection = bool(summary["num_protected"])
        ctx.panel.data.psnr_plot = _histogram(summary["psnr"]) if summary["psnr"] else []
        audit = summary["audit"]
        rows = audit["rows"] if audit else []
        ctx.panel.state.audit_title = _audit_title(audit)
        ctx.panel.state.audit_columns = (
            [c for c in rows[0] if c not in AUDIT_HIDDEN] if rows else []
        )
        ctx.panel.state.audit_table = [
            {k: table_cell(k, v) for k, v in row.items()} for row in rows
        ]
        ctx.panel.data.audit_chart = _data_uri(audit["chart_path"]) if audit else None

    def open_operator(self, ctx):
        """Prompt for the operator named by the button; refresh the panel when it ran."""
        name = ctx.params["operator"]
        ctx.prompt(f"{PLUGIN}/{name}", on_success=self.operator_done)

    def operator_done(self, ctx):
        """Refresh after an operator ran; a scheduled one has not run yet (the App calls
        back once it is queued, with its delegated operation as the result)."""
        result = ctx.params.get("result")
        if isinstance(result, dict) and "run_state" in result:
            ctx.panel.state.notice = (
                f"*{result.get('label') or result.get('operator')}* is scheduled: these "
                "numbers are from before it; press **Refresh** once it has run."
            )
            return
        self.refresh(ctx)

    def render(self, ctx):
        panel = types.Object()
        panel.md(ctx.panel.state.headline or "", name="headline")
        if ctx.panel.state.notice:
            panel.view("notice", types.Notice(label=ctx.panel.state.notice))
        actions = panel.h_stack("actions", gap=1, align_x="left")
        for name, label, icon in ACTIONS:
            actions.btn(
                name,
                label=label,
                icon=icon,
                variant="contained" if name == "protect_samples" else "outlined",
                on_click=self.open_operator,
                params={"operator": name},
            )
        actions.btn("refresh", label="Refresh", icon="refresh", on_click=self.refresh)
        if ctx.panel.state.has_protection:
            settings = types.TableView()
            for key, label in SETTING_LABELS.items():
                settings.add_column(key, label=label)
            panel.list("settings", types.Object(), view=settings, label="Protection settings")
            panel.plot(
                "psnr_plot",
                label="PSNR of the protected images",
                layout={
                    "height": 240,
                    "margin": {"t": 10, "b": 40, "l": 40, "r": 10},
                    "xaxis": {"title": "PSNR (dB)"},
                    "yaxis": {"title": "samples", "rangemode": "tozero"},
                    "bargap": 0.05,
                },
            )
        panel.md(ctx.panel.state.audit_title or "", name="audit_title")
        if ctx.panel.state.audit_columns:
            table = types.TableView()
            for column in ctx.panel.state.audit_columns:
                table.add_column(column, label=column.replace("_", " "))
            panel.list("audit_table", types.Object(), view=table)
            panel.view("audit_chart", types.ImageView(alt="Clean vs protected"))
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))


def _histogram(psnr: dict) -> list[dict]:
    edges = psnr["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    return [{"type": "bar", "x": centres, "y": psnr["counts"], "name": "PSNR (dB)"}]


def _audit_title(audit) -> str:
    if not audit:
        return (
            "**Audit**: none yet. *Evaluate protection* trains models on clean vs protected data."
        )
    title = f"**Latest audit** `{audit['run_key']}` ({audit['timestamp']} UTC)"
    countermeasure = audit["rows"][0]["countermeasure"] if audit["rows"] else None
    if countermeasure:
        title += f", counter-measure `{countermeasure}`"
    return title + ": scores on clean test images after training on each variant"


def _data_uri(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()
