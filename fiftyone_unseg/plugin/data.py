"""Operators that create data."""

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg import sample_data
from fiftyone_unseg.plugin.forms import param
from fiftyone_unseg.plugin.progress import IMMEDIATE_SCENES, app_progress, execution_options


class LoadSampleDataset(foo.Operator):
    """Create the realistic sample segmentation dataset and open it."""

    @property
    def config(self):
        return foo.OperatorConfig(
            name="load_sample_dataset",
            label="UnSeg: load sample dataset",
            description="Generate realistic segmentation scenes offline (semantic + instance labels)",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_execution_options(self, ctx):  # scenes cost about their pixel count
        pixels = param(ctx.params, "num", 100) * (param(ctx.params, "size", 512) / 512) ** 2
        return execution_options(self, pixels <= IMMEDIATE_SCENES)

    def resolve_input(self, ctx):
        inputs = types.Object()
        name = ctx.params.get("name") or "unseg-sample"
        inputs.str("name", label="Dataset name", default="unseg-sample", required=True)
        inputs.int("num", label="Number of scenes", default=100, min=1, required=True)
        inputs.int("seed", label="Seed", default=0, required=True)
        inputs.int(
            "size", label="Image size (px)", default=512, min=sample_data.MIN_SIZE, required=True
        )
        styles = types.Dropdown(multiple=True)
        for style in sample_data.STYLES:
            styles.add_choice(style, label=style)
        inputs.list(
            "styles",
            types.String(),
            label="Scene styles",
            default=list(sample_data.DEFAULT_STYLES),
            view=styles,
        )
        inputs.str(
            "dataset_dir",
            label="Folder for the image and mask files (empty: FiftyOne's dataset folder)",
            description="On the machine that runs the operator",
            default="",
        )
        inputs.bool("overwrite", label="Replace an existing dataset of this name", default=False)
        if fo.dataset_exists(name) and not param(ctx.params, "overwrite", False):
            prop = inputs.view(
                "exists", types.Error(label=f"Dataset {name!r} exists: choose another name")
            )
            prop.invalid = True
        return types.Property(inputs, view=types.View(label="Load UnSeg sample dataset"))

    def execute(self, ctx):
        dataset = sample_data.create_sample_dataset(
            ctx.params["name"],
            num=param(ctx.params, "num", 100),
            seed=param(ctx.params, "seed", 0),
            size=param(ctx.params, "size", 512),
            styles=ctx.params.get("styles") or sample_data.DEFAULT_STYLES,
            dataset_dir=ctx.params.get("dataset_dir") or None,
            overwrite=param(ctx.params, "overwrite", False),
            progress=app_progress(ctx, "scenes"),
        )
        if not ctx.delegated:
            ctx.ops.open_dataset(dataset.name)
        return {"dataset": dataset.name, "num_samples": len(dataset)}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("dataset", label="Dataset")
        outputs.int("num_samples", label="Samples")
        return types.Property(outputs)
