"""UnSeg for FiftyOne: make image-segmentation data unlearnable.

The public SDK lives here; the FiftyOne plugin is a thin layer in
:mod:`fiftyone_unseg.plugin` over these functions.
"""

__version__ = "0.1.0"

# The functions shadow their modules' names on purpose (``fiftyone_unseg.protect(...)``);
# the modules stay importable as ``from fiftyone_unseg.protect import ...``.
from fiftyone_unseg.checkpoint import load_generator, save_generator  # noqa: E402
from fiftyone_unseg.export import export_protected  # noqa: E402
from fiftyone_unseg.protect import protect, restore  # noqa: E402
from fiftyone_unseg.visualize import visualize_noise  # noqa: E402

__all__ = [
    "evaluate_protection",
    "export_protected",
    "load_generator",
    "protect",
    "restore",
    "save_generator",
    "visualize_noise",
]


def __getattr__(name: str):
    """``evaluate_protection`` is imported on first use: the audit pulls in its victims'
    libraries (torchvision models, matplotlib), which ``import fiftyone_unseg`` need not."""
    if name == "evaluate_protection":
        from fiftyone_unseg.audit import evaluate_protection

        return evaluate_protection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
