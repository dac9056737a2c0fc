"""UnSeg for FiftyOne: make image-segmentation data unlearnable.

The public SDK lives here; the FiftyOne plugin is a thin layer in
:mod:`fiftyone_unseg.plugin` over these functions.
"""

__version__ = "0.1.0"
