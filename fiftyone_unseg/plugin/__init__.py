"""The ``@unseg/unseg`` FiftyOne plugin: thin operators over the SDK."""

from fiftyone_unseg.plugin.data import LoadSampleDataset

OPERATORS = (LoadSampleDataset,)


def register(p):
    """Called by FiftyOne's plugin loader."""
    for operator in OPERATORS:
        p.register(operator)
