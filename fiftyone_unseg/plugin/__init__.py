"""The ``@unseg/unseg`` FiftyOne plugin: thin operators and a panel over the SDK."""

from fiftyone_unseg.plugin.adapt import AdaptGenerator
from fiftyone_unseg.plugin.audit import EvaluateProtection
from fiftyone_unseg.plugin.data import LoadSampleDataset
from fiftyone_unseg.plugin.export import ExportProtected
from fiftyone_unseg.plugin.panel import UnSegPanel
from fiftyone_unseg.plugin.protect import ProtectSamples, RestoreOriginals, VisualizeNoise

OPERATORS = (
    LoadSampleDataset,
    ProtectSamples,
    RestoreOriginals,
    VisualizeNoise,
    ExportProtected,
    EvaluateProtection,
    AdaptGenerator,
    UnSegPanel,
)


def register(p):
    """Called by FiftyOne's plugin loader."""
    for operator in OPERATORS:
        p.register(operator)
