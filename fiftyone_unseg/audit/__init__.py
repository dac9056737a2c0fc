"""Audit protection strength: train victims on clean vs protected data, test on clean data.

:func:`evaluate_protection` runs the audit; :func:`load_report` reads a recorded one back.
Modules: :mod:`.splits` (train / test samples), :mod:`.targets` (labels -> victim
targets), :mod:`.variants` (training images per variant), :mod:`.baselines` (reference
noises), :mod:`.countermeasures`, :mod:`.training` (the shared loop), :mod:`.victims`
(one module per model), :mod:`.report`.
"""

from fiftyone_unseg.audit.evaluate import DEFAULT_RUN_KEY, evaluate_protection, output_prefixes
from fiftyone_unseg.audit.report import ProtectionReport, VictimResult, load_report

__all__ = [
    "DEFAULT_RUN_KEY",
    "ProtectionReport",
    "VictimResult",
    "evaluate_protection",
    "load_report",
    "output_prefixes",
]
