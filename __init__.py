"""FiftyOne plugin entry point for ``@unseg/unseg``.

FiftyOne loads the ``__init__.py`` next to ``fiftyone.yml`` as a standalone
module and calls its ``register(p)``. The plugin's code lives in the
``fiftyone_unseg`` package: installed with pip, or, when the repository was
downloaded as a plugin, the folder next to this file.
"""

import os
import sys

try:
    import fiftyone_unseg  # noqa: F401
except ImportError:  # plugin folder downloaded, package not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fiftyone_unseg.plugin import register  # noqa: E402,F401
