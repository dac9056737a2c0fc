"""Operator that audits protection strength (``fiftyone_unseg.evaluate_protection``)."""

import base64

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.audit import DEFAULT_RUN_KEY, evaluate_protection, output_prefixes
from fiftyone_unseg.audit.baselines import BASELINES
from fiftyone_unseg.audit.countermeasures import KINDS, Countermeasure
from fiftyone_unseg.audit.report import METHOD
from fiftyone_unseg.audit.victims import DEFAULT_VICTIMS, VICTIMS, per_victim
from fiftyone_unseg.labels import label_type
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
from fiftyone_unseg.settings import DEFAULT_EPS, DEFAULT_EPS_BG, MAX_BUDGET

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
        victims = _victims(ctx.params)
        return max(epochs[v] for v in victims) if victims and set(victims) <= set(epochs) else None
    return epochs


def _victims(params: dict) -> list:
    """The chosen victims: the default where the form has not sent them, none where the
    user emptied the list (the App sends null for an emptied list with a default)."""
    if "victims" not in params:
        return list(DEFAULT_VICTIMS)
    return list(params["victims"] or ())


def _class_maps(ctx) -> tuple[str | None, str]:
    """(semantic field, the field the class maps come from): the semantic field only for
    an instance label field (a Segmentation gives its class maps itself)."""
    label_field = ctx.params["label_field"]
    semantic = ctx.params.get("semantic_field") or None
    if semantic is None or label_type(ctx.dataset, label_field) is fo.Segmentation:
        return None, label_field
    return semantic, semantic


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
        victims = len(_victims(params))
        trainings = victims * variants * (params.get("seeds") or 1)
        small = target_size(ctx) <= IMMEDIATE_SAMPLES and trainings <= IMMEDIATE_TRAININGS
        return execution_options(self, epochs is not None and epochs <= IMMEDIATE_EPOCHS and small)

    def resolve_input(self, ctx):
        inputs, form, ok = label_field_form(
            ctx,
            "UnSeg: evaluate protection",
            "Audit",
            "Label field (instances)",
            prefer=(fo.Detections, fo.Polylines),  # a Segmentation's instances are its regions
        )
        if not ok:
            return form
        ctx.params.setdefault("label_field", inputs.properties["label_field"].default)
        if label_type(ctx.dataset, ctx.params["label_field"]) is not fo.Segmentation:
            semantic = sorted(ctx.dataset.get_field_schema(embedded_doc_type=fo.Segmentation))
            audits = tuple(  # the fields audits wrote: their ground truth and predictions
                p for key in ctx.dataset.list_runs(method=METHOD) for p in output_prefixes(key)
            )
            semantic = [f for f in semantic if not f.startswith(audits)]
            label = "Semantic field (none: class maps from the label field)"
            dropdown(inputs, "semantic_field", ["", *semantic], label, "")
        segment_value_inputs(ctx, inputs, _class_maps(ctx)[1])
        dropdown(inputs, "victims", VICTIMS, "Victims", list(DEFAULT_VICTIMS), multiple=True)
        if not _victims(ctx.params):
            form_error(inputs, "no_victims", "Choose at least one victim to train")
        protected = _use_protected(ctx)
        inputs.bool("use_protected", default=protected, label="Train on the protected images")
        if protected:
            inputs.str("protected_field", default="protected_filepath", label="Protected field")
        labels = {name: _BASELINE_LABELS.get(name, name) for name in BASELINES}
        dropdown(inputs, "baselines", labels, "Baselines", [], multiple=True)
        clean_only = not param(ctx.params, "use_protected", protected) and not ctx.params.get(
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
        kind = param(ctx.params, "countermeasure", "none")
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
        if ctx.params.get("baselines"):  # the budgets are theirs alone
            top = MAX_BUDGET * 255
            inputs.float(
                "eps", label="Baselines' object budget (/255)", default=8.0, min=0.01, max=top
            )
            inputs.float(
                "eps_bg", label="Baselines' background budget (/255)", default=2.0, min=0, max=top
            )
            if param(ctx.params, "eps_bg", 2.0) > param(ctx.params, "eps", 8.0):
                message = "The baselines' background budget must not exceed the object one"
                form_error(inputs, "budget_order", message)
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
        chosen = _victims(ctx.params)
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
        semantic_field, class_maps = _class_maps(ctx)
        background, ignore = segment_value_params(ctx, class_maps)
        baselines = params.get("baselines") or ()
        report = evaluate_protection(
            ctx.target_view(),
            params["label_field"],
            victims=_victims(params),
            semantic_field=semantic_field,
            protected_field=(
                param(params, "protected_field", "protected_filepath")
                if _use_protected(ctx)
                else None
            ),
            baselines=baselines,
            countermeasure=kind,
            eps=param(params, "eps", 8.0) / 255 if baselines else DEFAULT_EPS,
            eps_bg=param(params, "eps_bg", 2.0) / 255 if baselines else DEFAULT_EPS_BG,
            epochs=per_victim(params.get("epochs") or None, PER_VICTIM_INPUTS["epochs"]),
            image_size=per_victim(
                params.get("image_size") or None, PER_VICTIM_INPUTS["image_size"]
            ),
            seed=param(params, "seed", 0),
            seeds=params.get("seeds") or 1,
            split_tags=(param(params, "train_tag", "train"), param(params, "test_tag", "test")),
            train_fraction=param(params, "train_fraction", 0.7),
            yolo_weights=params.get("yolo_weights") or None,
            sam_checkpoint=params.get("sam_checkpoint") or None,
            semantic_weights=params.get("semantic_weights") or None,
            reuse_clean=not param(params, "retrain_clean", False),
            device=param(params, "device", "cpu"),
            background=background,
            ignore=ignore,
            run_key=param(params, "run_key", DEFAULT_RUN_KEY),
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
