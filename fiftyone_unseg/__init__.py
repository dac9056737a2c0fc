"""UnSeg for FiftyOne: make image-segmentation data unlearnable.

The public SDK lives here; the FiftyOne plugin is a thin layer in
:mod:`fiftyone_unseg.plugin` over these functions.
"""

import importlib
import sys
import types

from fiftyone_unseg import database  # noqa: F401  (quiets FiftyOne's MongoDB notice)

__version__ = "0.1.0"
_HOMES = {  # the SDK's functions and their modules, imported on first use
    "adapt_generator": "adapt",
    "evaluate_protection": "audit",
    "export_protected": "export",
    "load_generator": "checkpoint",
    "protect": "protect",
    "restore": "protect",
    "save_generator": "checkpoint",
    "visualize_noise": "visualize",
}

__all__ = [
    "adapt_generator",
    "evaluate_protection",
    "export_protected",
    "load_generator",
    "protect",
    "restore",
    "save_generator",
    "visualize_noise",
]


def __getattr__(name: str):
    """The SDK's functions, imported on first use: ``import fiftyone_unseg`` (and the
    ``unseg`` command's start) need not load FiftyOne, torch or the audit's libraries."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


class _Package(types.ModuleType):
    """``fiftyone_unseg.protect`` stays the function when its module is imported (Python
    would set the package's attribute to the module)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _HOMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
