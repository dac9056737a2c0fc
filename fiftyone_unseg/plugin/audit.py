"""Operator that audits protection strength (``fiftyone_unseg.evaluate_protection``)."""

import base64

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.audit import DEFAULT_RUN_KEY, evaluate_protection
from fiftyone_unseg.audit.baselines import BASELINES
from fiftyone_unseg.audit.countermeasures import KINDS, Countermeasure
from fiftyone_unseg.audit.victims import DEFAULT_VICTIMS, VICTIMS, per_victim
from fiftyone_unseg.plugin.forms import (
    dropdown,
    form_error,
    has_protection,
    label_field_form,
    param,
    segment_value_inputs,
    segment_value_params,
)
from fiftyone_unseg.plugin.progress import (
    IMMEDIATE_EPOCHS,
    IMMEDIATE_SAMPLES,
    IMMEDIATE_TRAININGS,
    app_progress,
    execution_options,
    target_size,
)
from fiftyone_unseg.settings import MAX_BUDGET

COUNTERMEASURE_VALUES = {
    "jpeg": ("JPEG quality", 75.0),
    "blur": ("Blur sigma (px)", 1.0),
    "downscale": ("Downscale factor", 0.5),
    "median": ("Median window (odd px)", 3.0),
    "bilateral": ("Bilateral colour sigma (/255)", 25.0),
    "texture": ("Class texture: grid period (generator px)", 16.0),
    "tint": ("Class tint: share of training photos the attacker holds clean", 0.1),
}


_BASELINE_LABELS = {
    "random": "random (uniform noise)",
    "random_flat": "random flat (uniform noise at the object budget everywhere)",
    "pattern": "pattern (mask-aligned tiles)",
    "class_pattern": "class pattern (one tile per class: class keys alone)",
    "class_colour": "class colour (one flat colour per class: a low-frequency shortcut)",
    "none": "none (clean images through the counter-measure)",
}


# Local weights victims may start from (nothing is downloaded): input -> (victims, label).
WEIGHTS_INPUTS = {
    "yolo_weights": (("yolo",), "YOLO: local Ultralytics .pt to start from (empty: scratch)"),
    "sam_checkpoint": (
        ("sam", "sam_point"),
        "SAM: local official checkpoint (.pth) to fine-tune (empty: from scratch)",
    ),
    "semantic_weights": (
        ("semantic",),
        "Semantic: local LRASPP-MobileNetV3 state dict (empty: from scratch)",
    ),
}


def _countermeasure(params: dict) -> str:
    """The form's counter-measure as :meth:`Countermeasure.parse` takes it: its kind, with
    its value (the kind's default where the field is empty)."""
    kind = params.get("countermeasure") or "none"
    if kind not in COUNTERMEASURE_VALUES:
        return kind
    return f"{kind}:{param(params, 'countermeasure_value', COUNTERMEASURE_VALUES[kind][1]):g}"


PER_VICTIM_INPUTS = {"epochs": "Epochs", "image_size": "Image size"}
PER_VICTIM_HELP = (
    "Empty: each victim's default; N for every victim, or victim=N pairs as `unseg evaluate` "
    "takes them (e.g. yolo=30 sam=0: sam=0 scores a SAM checkpoint as it is)"
)


def _most_epochs(ctx) -> int | None:
    """The most epochs a chosen victim trains for; None where one trains its default
    (tens) or the field cannot be read."""
    try:
        epochs = per_victim(ctx.params.get("epochs") or None, PER_VICTIM_INPUTS["epochs"])
    except ValueError:
        return None
    if isinstance(epochs, dict):
        victims = ctx.params.get("victims") or DEFAULT_VICTIMS
        return max(epochs[v] for v in victims) if set(victims) <= set(epochs) else None
    return epochs


def _use_protected(ctx) -> bool:
    """The form's choice; by default whether the dataset holds protected images."""
    if "use_protected" in ctx.params:
        return bool(ctx.params["use_protected"])
    return ctx.dataset is not None and has_protection(ctx.dataset)


class EvaluateProtection(foo.Operator):
    """Train victims on clean vs protected images and test them on clean ones."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="evaluate_protection",
            label="UnSeg: evaluate protection",
            description="Audit: train segmentation models on clean vs protected data",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_execution_options(self, ctx):  # a smoke check of a small set, or delegated
        params = ctx.params
        epochs = _most_epochs(ctx)
        variants = 1 + _use_protected(ctx) + len(params.get("baselines") or ())
        victims = len(params.get("victims") or DEFAULT_VICTIMS)
        trainings = victims * variants * (params.get("seeds") or 1)
        small = target_size(ctx) <= IMMEDIATE_SAMPLES and trainings <= IMMEDIATE_TRAININGS
        return execution_options(self, epochs is not None and epochs <= IMMEDIATE_EPOCHS and small)

    def resolve_input(self, ctx):
        inputs, form, ok = label_field_form(
            ctx, "UnSeg: evaluate protection", "Audit", "Label field (instances)"
        )
        if not ok:
            return form
        semantic = sorted(ctx.dataset.get_field_schema(embedded_doc_type=fo.Segmentation))
        label = "Semantic field (none: class maps from the label field)"
        dropdown(inputs, "semantic_field", ["", *semantic], label, "")
        fields = inputs.properties["label_field"].type.values
        class_maps = ctx.params.get("semantic_field") or ctx.params.get("label_field")
        segment_value_inputs(ctx, inputs, class_maps or fields[0])
        dropdown(inputs, "victims", VICTIMS, "Victims", list(DEFAULT_VICTIMS), multiple=True)
        if ctx.params.get("victims") == []:  # emptied, not left at the default
            form_error(inputs, "no_victims", "Choose at least one victim to train")
        protected = _use_protected(ctx)
        inputs.bool("use_protected", default=protected, label="Train on the protected images")
        if protected:
            inputs.str("protected_field", default="protected_filepath", label="Protected field")
        labels = {name: _BASELINE_LABELS.get(name, name) for name in BASELINES}
        dropdown(inputs, "baselines", labels, "Baselines", [], multiple=True)
        clean_only = not ctx.params.get("use_protected", protected) and not ctx.params.get(
            "baselines"
        )
        if clean_only:
            inputs.view(
                "clean_only",
                types.Notice(
                    label="Clean training only: shows whether the victims learn this data "
                    "at these settings (compare the clean score with chance)"
                ),
            )
        dropdown(inputs, "countermeasure", ["none", *KINDS], "Counter-measure", "none")
        kind = ctx.params.get("countermeasure", "none")
        if kind == "none" and "none" in (ctx.params.get("baselines") or []):
            form_error(inputs, "no_countermeasure", "The 'none' baseline needs a counter-measure")
        if kind != "none" and clean_only:
            form_error(
                inputs,
                "countermeasure_unused",
                "A counter-measure applies to protected or baseline images: choose some",
            )
        if kind in COUNTERMEASURE_VALUES:
            label, default = COUNTERMEASURE_VALUES[kind]
            inputs.float("countermeasure_value", label=label, default=default)
            try:
                Countermeasure.parse(_countermeasure(ctx.params))
            except ValueError as error:
                form_error(inputs, "countermeasure_invalid", str(error))
        top = MAX_BUDGET * 255
        inputs.float("eps", label="Baselines' object budget (/255)", default=8.0, min=0.01, max=top)
        inputs.float(
            "eps_bg", label="Baselines' background budget (/255)", default=2.0, min=0, max=top
        )
        inputs.str("train_tag", label="Training samples' tag", default="train")
        inputs.str(
            "test_tag",
            label="Test samples' tag",
            description="Without both tags on the samples: a random split",
            default="test",
        )
        inputs.float(
            "train_fraction",
            label="Random split: share of samples to train on",
            default=0.7,
            min=0.05,
            max=0.95,
        )
        chosen = ctx.params.get("victims") or DEFAULT_VICTIMS
        for name, (victims, label) in WEIGHTS_INPUTS.items():
            if set(victims) & set(chosen):
                inputs.str(name, label=label, default="")
        inputs.bool(
            "retrain_clean",
            default=False,
            label="Train the clean victims again (else taken from an identical earlier audit)",
        )
        for name, label in PER_VICTIM_INPUTS.items():
            inputs.str(name, label=label, default="", description=PER_VICTIM_HELP)
            try:
                per_victim(ctx.params.get(name) or None, label)
            except ValueError as error:
                form_error(inputs, f"{name}_invalid", str(error))
        inputs.int("seed", label="Seed", default=0)
        inputs.int(
            "seeds",
            label="Trainings per victim and variant",
            description="Several give the mean and spread of each score (and take longer)",
            default=1,
            min=1,
        )
        inputs.str("device", label="Device", default="cpu")
        inputs.str("run_key", label="Run key", default=DEFAULT_RUN_KEY)
        return form

    def execute(self, ctx):
        params = ctx.params
        kind = _countermeasure(params)
        background, ignore = segment_value_params(params)
        report = evaluate_protection(
            ctx.target_view(),
            params["label_field"],
            victims=params.get("victims") or DEFAULT_VICTIMS,
            semantic_field=params.get("semantic_field") or None,
            protected_field=(
                params.get("protected_field", "protected_filepath") if _use_protected(ctx) else None
            ),
            baselines=params.get("baselines") or (),
            countermeasure=kind,
            eps=param(params, "eps", 8.0) / 255,
            eps_bg=param(params, "eps_bg", 2.0) / 255,
            epochs=per_victim(params.get("epochs") or None, PER_VICTIM_INPUTS["epochs"]),
            image_size=per_victim(
                params.get("image_size") or None, PER_VICTIM_INPUTS["image_size"]
            ),
            seed=param(params, "seed", 0),
            seeds=params.get("seeds") or 1,
            split_tags=(params.get("train_tag", "train"), params.get("test_tag", "test")),
            train_fraction=param(params, "train_fraction", 0.7),
            yolo_weights=params.get("yolo_weights") or None,
            sam_checkpoint=params.get("sam_checkpoint") or None,
            semantic_weights=params.get("semantic_weights") or None,
            reuse_clean=not params.get("retrain_clean", False),
            device=params.get("device", "cpu"),
            background=background,
            ignore=ignore,
            run_key=params.get("run_key", DEFAULT_RUN_KEY),
            progress=app_progress(ctx, "epochs"),
        )
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        with open(report.chart_path, "rb") as f:
            chart = "data:image/png;base64," + base64.b64encode(f.read()).decode()
        return {
            "table": report.table(),
            "chart": chart,
            "chart_path": report.chart_path,
            "run_key": report.run_key,
            "notes": "\n".join(
                [f"warning: {line}" for line in report.unlearnt()] + report.reused_trainings()
            ),
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("table", label="Protection report", view=types.MarkdownView())
        outputs.str("chart", label="Clean vs protected", view=types.ImageView())
        outputs.str("chart_path", label="Chart file")
        outputs.str("run_key", label="Run key (dataset.load_run_results)")
        outputs.str(
            "notes",
            label="Warnings and reused trainings (empty: none)",
            view=types.MarkdownView(),
        )
        return types.Property(outputs)
