"""Form helpers shared by the operators."""

import fiftyone.operators.types as types


def form_error(inputs, name: str, message: str) -> None:
    """Show ``message`` in the form and block execution with it."""
    prop = inputs.view(name, types.Error(label=message))
    prop.invalid, prop.error_message = True, message
