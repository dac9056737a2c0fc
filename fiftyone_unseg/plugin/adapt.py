"""The operator that adapts the shipped generator to the dataset (delegated: it trains)."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.adapt import STEPS, adapt_generator, default_output_dir
from fiftyone_unseg.plugin.forms import label_field_form
from fiftyone_unseg.plugin.progress import app_progress


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

    def resolve_input(self, ctx):
        inputs, form, ok = label_field_form(
            ctx, "UnSeg: adapt the generator", "Train on", "Label field (the objects)"
        )
        if not ok:
            return form
        inputs.int(
            "steps",
            label="Training steps",
            description=f"{STEPS}: about 10 minutes on a 2-core CPU (run it delegated)",
            default=STEPS,
            min=2,
        )
        inputs.str(
            "init",
            label="Generator to adapt: a preset (default, robust) or a checkpoint folder",
            description="The adaptation simulates no counter-measures: audit an adapted "
            "robust generator after JPEG and resizing before relying on it",
            default="default",
            required=True,
        )
        inputs.str("device", label="Device", default="cpu")
        inputs.str(
            "output_dir",
            label="Output folder",
            default=default_output_dir(ctx.dataset.name),
            required=True,
        )
        return form

    def execute(self, ctx):
        params = ctx.params
        generator = adapt_generator(
            ctx.target_view(),
            params["label_field"],
            output_dir=params.get("output_dir") or None,
            steps=params.get("steps", STEPS),
            init=params.get("init") or "default",
            device=params.get("device", "cpu"),
            progress=app_progress(ctx, "steps"),
        )
        return {"generator": generator}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("generator", label="Adapted generator (give it to 'protect samples')")
        return types.Property(outputs)
