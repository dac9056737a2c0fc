"""The operator that adapts the shipped generator to the dataset (delegated: it trains)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.adapt import (
    RECIPES,
    adapt_generator,
    default_output_dir,
    training_warnings,
)
from fiftyone_unseg.plugin.forms import label_field_form, param
from fiftyone_unseg.plugin.progress import IMMEDIATE_STEPS, app_progress, execution_options


class AdaptGenerator(foo.Operator):
    """Fine-tune a shipped generator (or a checkpoint) on the target samples' masks."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="adapt_generator",
            label="UnSeg: adapt the generator to this dataset",
            description="Fine-tune the shipped generator on these masks before protecting",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_execution_options(self, ctx):  # a trial run of a few steps, or delegated
        steps = ctx.params.get("steps")
        return execution_options(self, bool(steps) and steps <= IMMEDIATE_STEPS)

    def resolve_input(self, ctx):
        inputs, form, ok = label_field_form(
            ctx, "UnSeg: adapt the generator", "Train on", "Label field (the objects)"
        )
        if not ok:
            return form
        recipes = types.RadioGroup()
        recipes.add_choice(
            "adapt",
            label=f"Fresh surrogate every block ({RECIPES['adapt']} steps, about 10 minutes)",
        )
        recipes.add_choice(
            "adapt_learning",
            label=f"Surrogate that keeps learning ({RECIPES['adapt_learning']} steps, about "
            "40 minutes; on the pets it kept YOLO's protection through JPEG, blur, resizing)",
        )
        inputs.enum(
            "recipe",
            recipes.values(),
            label="Recipe",
            view=recipes,
            default="adapt",
            description="Run it delegated; audit the result before relying on it",
        )
        recipe = ctx.params.get("recipe") or "adapt"
        # No default: the App keeps a field's value when the form changes, so a default
        # would stay at the first recipe's length after choosing the other.
        inputs.int(
            "steps",
            label="Training steps",
            description=f"Empty: the recipe's own, {RECIPES[recipe]}",
            min=2,
        )
        inputs.str(
            "init",
            label="Generator to adapt: a shipped one (default, robust) or a checkpoint folder",
            description="The adaptation simulates no counter-measures: audit an adapted "
            "robust generator after JPEG and resizing before relying on it",
            default="default",
            required=True,
        )
        inputs.str("device", label="Device", default="cpu")
        inputs.str(
            "output_dir",
            label="Output folder",
            description="Empty: a folder of its own under "
            f"{default_output_dir(ctx.dataset.name)}, one per samples, labels and settings "
            "(adapting the same ones again returns that training)",
        )
        inputs.bool(
            "overwrite",
            label="Replace",
            description="Delete what the output folder holds if it was trained on other "
            "samples, labels or settings (without it, that is an error)",
            default=False,
        )
        return form

    def execute(self, ctx):
        params = ctx.params
        generator = adapt_generator(
            ctx.target_view(),
            params["label_field"],
            output_dir=params.get("output_dir") or None,
            steps=params.get("steps"),
            recipe=params.get("recipe") or "adapt",
            init=params.get("init") or "default",
            device=param(params, "device", "cpu"),
            progress=app_progress(ctx, "steps"),
            overwrite=bool(params.get("overwrite")),
        )
        return {"generator": generator, "warnings": "\n".join(training_warnings(generator))}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("generator", label="Adapted generator (give it to 'protect samples')")
        outputs.str("warnings", label="What the training warned about (empty: nothing)")
        return types.Property(outputs)
