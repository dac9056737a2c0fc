"""Operator that exports the protected copy of a dataset to publish."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.export import EXPORT_TYPES, export_protected, exportable_fields
from fiftyone_unseg.plugin.forms import (
    form_error,
    param,
    require_protection,
    target_form,
    unusable,
)
from fiftyone_unseg.plugin.progress import (
    IMMEDIATE_SAMPLES,
    app_progress,
    execution_options,
    target_size,
)
from fiftyone_unseg.plugin.protect import operator_config

FORMAT_LABELS = {
    "coco": "COCO (instance masks, polygons)",
    "coco-panoptic": "COCO panoptic (segment-id PNGs + JSON)",
    "segmentation-dir": "Image + class-mask folders (semantic)",
    "yolo": "YOLO (segmentation polygons)",
    "fiftyone": "FiftyOne dataset (any label type)",
    "images": "Images only",
}


class ExportProtected(foo.Operator):
    """Export protected images, under their originals' names, with labels
    (``fiftyone_unseg.export.export_protected``)."""

    @property
    def config(self):
        return operator_config(
            "export_protected",
            "UnSeg: export protected copy",
            "Write the protected images with their labels in a standard format, to publish",
        )

    def resolve_execution_options(self, ctx):
        return execution_options(self, target_size(ctx) <= IMMEDIATE_SAMPLES)

    def resolve_input(self, ctx):
        inputs, form = target_form(ctx, "UnSeg: export protected copy", "Export")
        if unusable(ctx, "Export"):
            return form
        if not require_protection(ctx, inputs):
            return form
        formats = types.Dropdown(label="Format")
        for name, label in FORMAT_LABELS.items():
            formats.add_choice(name, label=label)
        inputs.enum("format", list(EXPORT_TYPES), default="coco", required=True, view=formats)
        data_format = param(ctx.params, "format", "coco")
        fields = exportable_fields(ctx.dataset, data_format)  # of a type this format takes
        if data_format != "images" and not fields:
            name = FORMAT_LABELS[data_format].split(" (")[0]
            form_error(inputs, "no_label_field", f"No label field here can be exported as {name}")
        elif data_format != "images":
            used = [f for f in ctx.dataset.distinct("unseg.label_field") if f in fields]
            if data_format == "coco-panoptic":  # all segments, as load_coco_panoptic named them
                used = [f for f in [ctx.dataset.info.get("panoptic_field")] if f in fields] + used
            default = used[:1] or fields[:1]  # else the field protection was prompted with
            several = data_format == "fiftyone"
            choices = types.Dropdown(
                multiple=several, label="Label fields" if several else "Label field"
            )
            for name in fields:
                choices.add_choice(name, label=name)
            if several:
                inputs.list("label_fields", types.String(), default=default, view=choices)
            else:
                inputs.enum("label_field", fields, default=(default or [None])[0], view=choices)
        inputs.str(
            "export_dir",
            label="Export folder (new or empty)",
            description="On the machine that runs the operator",
            required=True,
        )
        inputs.bool(
            "skip_unprotected",
            default=False,
            label="Leave out samples without a protected copy (otherwise they stop the export)",
        )
        inputs.bool("overwrite", default=False, label="Replace the folder if it is not empty")
        return form

    def execute(self, ctx):
        params = ctx.params
        data_format = param(params, "format", "coco")
        fields = {"images": None, "fiftyone": params.get("label_fields")}.get(
            data_format, params.get("label_field")
        )
        return export_protected(
            ctx.target_view(),
            params["export_dir"],
            dataset_type=data_format,
            label_field=fields or None,
            skip_unprotected=param(params, "skip_unprotected", False),
            overwrite=param(params, "overwrite", False),
            progress=app_progress(ctx, "export steps (stage, read labels, write)"),
        )

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("exported", label="Exported")
        outputs.int("skipped", label="Unprotected, left out")
        outputs.str("export_dir", label="Export folder")
        outputs.list("recovered", types.String(), label="Interrupted exports undone first")
        return types.Property(outputs)
