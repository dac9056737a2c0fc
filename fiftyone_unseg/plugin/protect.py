"""Operators that protect samples, restore originals and show the noise."""

import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_unseg.checkpoint import WEIGHTS_FILE, shipped_generator_dir
from fiftyone_unseg.labels import class_names, segment_values
from fiftyone_unseg.plugin.forms import (
    form_error,
    label_field_form,
    param,
    require_protection,
    segment_value_inputs,
    segment_value_params,
    target_form,
    unusable,
)
from fiftyone_unseg.plugin.progress import (
    IMMEDIATE_SAMPLES,
    app_progress,
    execution_options,
    target_size,
)
from fiftyone_unseg.protect import protect, restore, unnamed_warning
from fiftyone_unseg.settings import (
    CLASS_KEY_SECRET,
    DEFAULT_CLASS_MIX,
    MAX_BUDGET,
    PRESETS,
    visibility_warning,
)
from fiftyone_unseg.summary import visibility_line
from fiftyone_unseg.visualize import visualize_noise

PROMPTS = {
    "all": "All segments (union; the reference's default)",
    "classes": "Only some classes",
    "instance": "Each segment with its own prompt",
}
CLASS_KEY_SOURCES = {
    "dataset": "This dataset's own key",
    "secret": f"The {CLASS_KEY_SECRET} secret (the key `unseg protect` takes from the "
    "environment variable of that name)",
}
CLASS_STYLE_LABELS = {
    "texture": "A secret 8x8 texture (survives little: JPEG and blur remove it)",
    "colour": "A secret flat colour, for semantic datasets (at share 1, the semantic preset: "
    "CamVid's semantic model at 0.63 of clean, 0.68 after JPEG 75; survives blur and "
    "rescaling, not grayscale or clean reference photos; a tint can "
    "show on flat regions; no help against instance models)",
}
MAX_FAILURES = 50  # failures a result lists; ``failed`` counts them all


def operator_config(name: str, label: str, description: str) -> foo.OperatorConfig:
    return foo.OperatorConfig(
        name=name,
        label=label,
        description=description,
        icon="/assets/icon.svg",
        dynamic=True,
        allow_immediate_execution=True,
        allow_delegated_execution=True,
    )


def _finish(ctx, summary: dict) -> dict:
    """``summary`` as the result, with its first ``MAX_FAILURES`` failures; reloads the App."""
    if not ctx.delegated:
        ctx.trigger("reload_dataset")
    if "failures" in summary:
        summary = {**summary, "failures": summary["failures"][:MAX_FAILURES]}
    return summary


def _problems(ctx, outputs) -> None:
    """Why the run stopped early and its listed failures (one row each), if any."""
    results = ctx.results or {}
    if results.get("stopped"):
        message = f"Stopped early: {results['stopped']}; run again to finish"
        outputs.view("stopped", types.Warning(label=message))
    failures = results.get("failures")
    if failures:
        table = types.TableView()
        for key, label in (("id", "Sample id"), ("filepath", "File"), ("reason", "Reason")):
            table.add_column(key, label=label)
        shown = f"first {len(failures)} of " if len(failures) < results["failed"] else ""
        label = f"Failures ({shown}{results['failed']})"
        outputs.list("failures", types.Object(), label=label, view=table)


def _class_keys(params: dict) -> tuple[float, str | None]:
    """(class_mix, class_style) a run of the form protects with: the preset's own class
    keys where it has some (with a checkpoint folder too), else the form's; at share 1 no
    generator runs."""
    preset = PRESETS.get(params.get("preset") or "default", PRESETS["default"])
    if preset.class_mix:
        return preset.class_mix, preset.class_style
    return param(params, "class_mix", DEFAULT_CLASS_MIX), params.get("class_style")


def _class_key(ctx, class_mix: float) -> str | None:
    """The class key a run with class keys at share ``class_mix`` draws them from: None
    for the dataset's own, else the plugin secret, resolved where the run executes, so
    the key never enters its params."""
    if ctx.params.get("class_key_source") != "secret" or not class_mix:
        return None
    key = ctx.secret(CLASS_KEY_SECRET)
    if not key:
        raise ValueError(
            f"The class key's secret {CLASS_KEY_SECRET} is not set where this run executes: "
            "set that environment variable for the App (or the delegated executor) and run "
            "again, or choose this dataset's own key"
        )
    return key


class ProtectSamples(foo.Operator):
    """Write protected copies of the target samples' images (``fiftyone_unseg.protect``)."""

    @property
    def config(self):
        return operator_config(
            "protect_samples",
            "UnSeg: protect samples",
            "Make images unlearnable with bounded noise from the UnSeg generator",
        )

    def resolve_execution_options(self, ctx):
        count = ctx.params.get("preview") or target_size(ctx)
        return execution_options(self, count <= IMMEDIATE_SAMPLES)

    def resolve_input(self, ctx):
        inputs, form, ok = label_field_form(
            ctx, "UnSeg: protect samples", "Protect", "Label field (prompts and object budget)"
        )
        if not ok:
            return form
        fields = inputs.properties["label_field"].type.values
        label_field = ctx.params.get("label_field") or fields[0]
        self._prompt_inputs(ctx, inputs, label_field)
        segment_value_inputs(ctx, inputs, label_field)
        inputs.float(
            "eps", label="Object budget (/255)", default=8.0, min=0.01, max=MAX_BUDGET * 255
        )
        inputs.float(
            "eps_bg",
            label="Background budget (/255)",
            description=(
                "2 is the paper's setting (about 40 dB). 8, the object budget everywhere, is "
                "more visible (about 34 dB) but stronger and more robust to JPEG and resizing "
                "(docs/GENERATOR_HISTORY.md)"
            ),
            default=2.0,
            min=0.0,
            max=MAX_BUDGET * 255,
        )
        eps, eps_bg = param(ctx.params, "eps", 8.0), param(ctx.params, "eps_bg", 2.0)
        if eps_bg > eps:  # a cleared field is its default, as in execute
            form_error(
                inputs, "budget_order", "The background budget must not exceed the object one"
            )
        warning = visibility_warning(max(eps, eps_bg) / 255)
        if warning:
            inputs.view("budget_visible", types.Warning(label=sentence(warning)))
        presets = types.RadioGroup(label="Preset")
        for name, chosen in PRESETS.items():
            presets.add_choice(name, label=name, description=chosen.what)
        inputs.enum("preset", list(PRESETS), default="default", view=presets)
        preset = PRESETS.get(ctx.params.get("preset") or "default", PRESETS["default"])
        class_mix = _class_keys(ctx.params)[0]
        keys_alone = class_mix == 1  # the class keys are the whole noise
        if not keys_alone:
            inputs.str(
                "generator",
                label="Or a generator checkpoint folder (empty: the preset's; given, it takes "
                "the preset's class keys, if any)",
                default="",
            )
        installed = (shipped_generator_dir(preset.generator) / WEIGHTS_FILE).is_file()
        if not keys_alone and not ctx.params.get("generator") and not installed:
            form_error(
                inputs,
                "no_generator",
                f"No {preset.generator} generator installed: give a checkpoint",
            )
        if preset.class_mix:  # the preset's class keys, as they were measured
            inputs.view(
                "preset_class_keys",
                types.Notice(
                    label=f"Class keys: the preset's, one secret {preset.class_style} per "
                    f"class at share {preset.class_mix:g} of the noise"
                ),
            )
        else:
            inputs.float(
                "class_mix",
                label="Class key: share of each class's secret texture in its noise (0: none)",
                default=DEFAULT_CLASS_MIX,
                min=0.0,
                max=1.0,
            )
            if param(ctx.params, "class_mix", DEFAULT_CLASS_MIX) > 0:
                styles = types.RadioGroup(label="Class key: what each class gets")
                for style, label in CLASS_STYLE_LABELS.items():
                    styles.add_choice(style, label=label)
                inputs.enum("class_style", list(CLASS_STYLE_LABELS), default="texture", view=styles)
        if class_mix > 0:
            sources = types.RadioGroup(label="Class key's secret")
            for source, label in CLASS_KEY_SOURCES.items():
                sources.add_choice(source, label=label)
            has_secret = bool(ctx.secret(CLASS_KEY_SECRET))
            inputs.enum(
                "class_key_source",
                list(CLASS_KEY_SOURCES),
                default="secret" if has_secret else "dataset",
                view=sources,
            )
            if ctx.params.get("class_key_source") == "secret" and not has_secret:
                inputs.view(
                    "no_class_key",
                    types.Warning(
                        label=f"{CLASS_KEY_SECRET} is not set for this App; a delegated run "
                        "needs it in its executor's environment"
                    ),
                )
        inputs.enum(
            "image_format",
            ["png", "jpg"],
            default="png",
            label="Output format (PNG is lossless; JPEG weakens the noise)",
            view=types.RadioGroup(),
        )
        if ctx.params.get("image_format") == "jpg":
            inputs.int("jpeg_quality", label="JPEG quality", default=95, min=1, max=100)
        inputs.bool(
            "replace_filepath",
            default=False,
            label="Make the protected images the samples' filepath (undo: restore originals)",
        )
        inputs.str(
            "output_dir",
            label="Output folder (empty: <FiftyOne dataset dir>/unseg-protected/<dataset>)",
            default="",
        )
        inputs.bool("overwrite", default=False, label="Protect already protected samples again")
        inputs.int(
            "preview",
            label="Preview first: protect only N samples (0: all)",
            description=(
                "N samples spread over the target (the same N each time), to see the noise "
                "and its PSNR before a whole run; a later run skips them"
            ),
            default=0,
            min=0,
        )
        inputs.str("device", label="Device (cpu, cuda, cuda:N, mps)", default="cpu")
        return form

    @staticmethod
    def _prompt_inputs(ctx, inputs, label_field: str) -> None:
        modes = types.RadioGroup(label="Prompt")
        for mode, label in PROMPTS.items():
            modes.add_choice(mode, label=label)
        inputs.enum("prompt", list(PROMPTS), default="all", view=modes)
        if ctx.params.get("prompt") != "classes":
            return
        try:  # the classes of the background and ignore values typed in this form
            roles = segment_values(
                ctx.dataset, label_field, *segment_value_params(ctx, label_field)
            )
        except ValueError:  # the form says what is wrong with them
            roles = None
        names = class_names(ctx.dataset, label_field, roles)
        choices = types.Dropdown(multiple=True, label="Classes")
        for name in names:
            choices.add_choice(name, label=name)
        inputs.list("classes", types.String(), required=True, view=choices)
        if not names:
            form_error(inputs, "no_classes", f"{label_field!r} has no class names to choose from")

    def execute(self, ctx):
        params = ctx.params
        prompt = param(params, "prompt", "all")
        samples = ctx.target_view()
        if params.get("preview"):  # as `unseg protect --limit N`
            samples = samples.take(params["preview"], seed=0)
        background, ignore = segment_value_params(ctx, params["label_field"])
        class_mix, class_style = _class_keys(params)
        generator = params.get("generator") if class_mix < 1 else None  # the form hides it
        summary = protect(
            samples,
            params["label_field"],
            generator=generator or None,
            preset=None if generator else params.get("preset") or None,
            eps=param(params, "eps", 8.0) / 255,
            eps_bg=param(params, "eps_bg", 2.0) / 255,
            prompt=params.get("classes") if prompt == "classes" else prompt,
            image_format=param(params, "image_format", "png"),
            jpeg_quality=param(params, "jpeg_quality", 95),
            replace_filepath=param(params, "replace_filepath", False),
            overwrite=param(params, "overwrite", False),
            progress=app_progress(ctx, "images"),
            class_mix=class_mix,
            class_key=_class_key(ctx, class_mix),
            class_style=class_style,
            device=param(params, "device", "cpu"),
            output_dir=params.get("output_dir") or None,
            background=background,
            ignore=ignore,
        )
        return _finish(ctx, summary)

    def resolve_output(self, ctx):
        outputs = types.Object()
        for name in ("protected", "replaced", "skipped", "no_segments", "failed"):
            outputs.int(name, label=name.replace("_", " ").capitalize())
        outputs.str("output_dir", label="Protected images in")
        busy = (ctx.results or {}).get("busy")
        if busy:
            message = (
                f"{busy} samples were left to another protection run that holds them (a "
                "delegated run still going?): they are protected once it finishes; run "
                "again afterwards if it failed"
            )
            outputs.view("busy", types.Warning(label=message))
        visibility = (ctx.results or {}).get("visibility")
        if visibility:
            line = sentence(visibility_line(visibility))
            if ctx.params.get("preview"):
                line += (
                    ". To look at them, pick protected_filepath as the grid's media field "
                    "(gear icon); protecting the rest skips them"
                )
            outputs.view("visibility_line", types.Notice(label=line))
        unnamed = (ctx.results or {}).get("unnamed_values")
        if unnamed:
            message = unnamed_warning(param(ctx.params, "label_field", ""), unnamed)
            outputs.view("unnamed_values", types.Warning(label=sentence(message)))
        _problems(ctx, outputs)
        return types.Property(outputs)


class RestoreOriginals(foo.Operator):
    """Put the original images back as the samples' filepath (``fiftyone_unseg.restore``)."""

    @property
    def config(self):
        return operator_config(
            "restore_originals",
            "UnSeg: restore originals",
            "Undo 'replace filepath': the original images become the samples' filepath again",
        )

    def resolve_input(self, ctx):
        inputs, form = target_form(ctx, "UnSeg: restore originals", "Restore")
        if not unusable(ctx, "Restore"):
            inputs.bool("delete_protected", default=False, label="Also delete the protected images")
        return form

    def resolve_execution_options(self, ctx):
        return execution_options(self, target_size(ctx) <= IMMEDIATE_SAMPLES)

    def execute(self, ctx):
        summary = restore(
            ctx.target_view(),
            delete_protected=param(ctx.params, "delete_protected", False),
            progress=app_progress(ctx, "samples"),
        )
        return _finish(ctx, summary)

    def resolve_output(self, ctx):
        outputs = types.Object()
        for name in ("restored", "unchanged", "deleted", "failed"):
            outputs.int(name, label=name.capitalize())
        _problems(ctx, outputs)
        return types.Property(outputs)


class VisualizeNoise(foo.Operator):
    """Heatmaps (and amplified images) of the added noise (``fiftyone_unseg.visualize_noise``)."""

    @property
    def config(self):
        return operator_config(
            "visualize_noise",
            "UnSeg: visualize noise",
            "Show where and how much noise protection added, as heatmaps",
        )

    def resolve_execution_options(self, ctx):
        return execution_options(self, target_size(ctx) <= IMMEDIATE_SAMPLES)

    def resolve_input(self, ctx):
        inputs, form = target_form(ctx, "UnSeg: visualize noise", "Visualize")
        if unusable(ctx, "Visualize"):
            return form
        inputs.str("heatmap_field", label="Heatmap field", default="unseg_noise", required=True)
        inputs.bool(
            "amplified", default=False, label="Also store an amplified noise image (media field)"
        )
        if ctx.params.get("amplified"):
            inputs.str("amplified_field", default="unseg_noise_image", label="Media field")
            inputs.float(
                "amplification",
                label="Noise gain of that image (0: 0.5 / eps, the budget spans the range)",
                default=0.0,
                min=0.0,
            )
        require_protection(ctx, inputs)
        return form

    def execute(self, ctx):
        params = ctx.params
        summary = visualize_noise(
            ctx.target_view(),
            heatmap_field=param(params, "heatmap_field", "unseg_noise"),
            amplified_field=(
                param(params, "amplified_field", "unseg_noise_image")
                if params.get("amplified")
                else None
            ),
            amplification=params.get("amplification") or None,
            progress=app_progress(ctx, "images"),
        )
        return _finish(ctx, summary)

    def resolve_output(self, ctx):
        outputs = types.Object()
        for name in ("visualized", "not_protected", "failed"):
            outputs.int(name, label=name.replace("_", " ").capitalize())
        _problems(ctx, outputs)
        return types.Property(outputs)


def sentence(text: str) -> str:
    """``text`` with its first letter upper-case and the rest as it is (field names, dB)."""
    return text[:1].upper() + text[1:]
