"""Form helpers shared by the operators."""

import fiftyone.operators.types as types

NO_DATASET = "Open a dataset first"
NOT_PROTECTED = "No sample is protected yet: run 'protect samples'"


def param(params: dict, name: str, default):
    """A form's value, or ``default`` where it is absent or was cleared (the App sends
    null for an emptied number field)."""
    value = params.get(name)
    return default if value is None else value


def form_error(inputs, name: str, message: str) -> None:
    """Show ``message`` in the form and block execution with it."""
    prop = inputs.view(name, types.Error(label=message))
    prop.invalid, prop.error_message = True, message


def target_form(ctx, label: str, action: str) -> tuple[types.Object, types.Property]:
    """The inputs and form ``label`` of an operator that does ``action`` to a view target.

    Without an open dataset of images the form only says why and cannot run: add nothing
    to it then (:func:`unusable`).
    """
    inputs = types.Object()
    problem = unusable(ctx, action)
    if problem:
        form_error(inputs, "no_dataset" if ctx.dataset is None else "grouped", problem)
    else:
        inputs.view_target(ctx, action_description=action)
    return inputs, types.Property(inputs, view=types.View(label=label))


def unusable(ctx, action: str) -> str | None:
    """Why ``action`` cannot run on the App's dataset or view (none open, grouped, or a
    patches view), or None."""
    from fiftyone_unseg.protect import check_images

    if ctx.dataset is None:
        return NO_DATASET
    try:
        check_images(ctx.target_view(), action)
    except ValueError as error:
        return str(error)
    return None


def label_field_form(ctx, label: str, action: str, field_label: str, prefer: tuple = ()):
    """:func:`target_form` with a required dropdown ``label_field`` of the dataset's
    Segmentation, Detections and Polylines fields, by default the first of a type in
    ``prefer`` (else the first); returns (inputs, form, ok): without an open dataset or
    such a field the form says so and cannot run (ok False)."""
    from fiftyone_unseg.labels import label_type, supported_label_fields

    inputs, form = target_form(ctx, label, action)
    if unusable(ctx, action):
        return inputs, form, False
    fields = supported_label_fields(ctx.dataset)
    if not fields:
        form_error(inputs, "no_fields", "No Segmentation, Detections or Polylines field")
        return inputs, form, False
    view = types.Dropdown(label=field_label)
    for name in fields:
        view.add_choice(name, label=name)
    preferred = [name for name in fields if label_type(ctx.dataset, name) in prefer]
    default = (preferred or fields)[0]
    inputs.enum("label_field", fields, default=default, required=True, view=view)
    return inputs, form, True


def has_protection(dataset) -> bool:
    """Whether ``dataset`` has protected samples (a restore that deleted every copy keeps
    the ``protected_filepath`` field, empty)."""
    field = "protected_filepath"
    return dataset.has_field(field) and bool(len(dataset.exists(field).limit(1)))


def require_protection(ctx, inputs) -> bool:
    """Whether the dataset has protected samples; if not, the form says so and cannot run."""
    if has_protection(ctx.dataset):
        return True
    form_error(inputs, "not_protected", NOT_PROTECTED)
    return False


def dropdown(inputs, name: str, values, label: str, default, multiple: bool = False) -> None:
    """A dropdown of ``values``: a list (each shown as itself, the empty value as "none")
    or a dict value -> shown label."""
    labels = values if isinstance(values, dict) else {v: v or "none" for v in values}
    view = types.Dropdown(label=label, multiple=multiple)
    for value, shown in labels.items():
        view.add_choice(value, label=shown)
    if multiple:
        inputs.list(name, types.String(), default=default, view=view)
    else:
        inputs.enum(name, list(labels), default=default, view=view)


def segment_value_inputs(ctx, inputs, field: str | None) -> None:
    """For a Segmentation ``field``: its background value and ignored (void) values, each
    "auto" (from the mask targets, shown) or typed; a value that cannot be read blocks the
    form (read back with :func:`segment_value_params`)."""
    import fiftyone as fo

    from fiftyone_unseg.labels import label_type, segment_values

    if not field or label_type(ctx.dataset, field) is not fo.Segmentation:
        return
    auto = segment_values(ctx.dataset, field)
    shown = "none" if auto.background is None else auto.background
    inputs.str(
        "background",
        label=f"Background value of {field!r} ('auto', a value, or 'none': every class is an object)",
        description=f"auto: {shown}, from its mask targets",
        default="auto",
    )
    inputs.str(
        "ignore",
        label="Ignored (void) values, comma-separated ('auto', or empty for none)",
        description=f"auto: {', '.join(map(str, sorted(auto.ignore))) or 'none'}, from its "
        "mask targets; void pixels get the background budget and are neither learnt nor scored",
        default="auto",
    )
    try:
        background, ignore = segment_value_params(ctx, field)
        segment_values(ctx.dataset, field, background, ignore)
    except ValueError as error:
        form_error(inputs, "segment_values", str(error))


def segment_value_params(ctx, field: str | None) -> tuple:
    """(background, ignore) as ``protect`` and ``evaluate_protection`` take them, from the
    form of :func:`segment_value_inputs` for ``field``: ("auto", "auto") unless it is a
    Segmentation (the form's values stay in the parameters when the field changes);
    ValueError for what is not a pixel value. An emptied ignore field (the App sends null)
    ignores nothing, as its label says."""
    import fiftyone as fo

    from fiftyone_unseg.labels import label_type
    from fiftyone_unseg.settings import parse_pixel_value

    params = ctx.params
    if not field or label_type(ctx.dataset, field) is not fo.Segmentation:
        return "auto", "auto"
    ignore = str(params.get("ignore", "auto") or "").strip()
    try:
        background = parse_pixel_value(str(params.get("background") or "auto"))
        if ignore != "auto":
            ignore = [int(v) for v in ignore.replace(",", " ").split()]
    except ValueError:
        raise ValueError(
            f"background {params.get('background')!r} / ignore {params.get('ignore')!r}: give "
            "whole pixel values (or 'auto'; 'none' for no background)"
        ) from None
    return background, ignore
