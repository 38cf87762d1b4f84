"""Attention-difference analysis and PAB calibration (``videosys analyze`` / ``videosys calibrate``).

:class:`DifferenceRecorder` is a PAB observer: attached to a request, it sees every module output the request's
PAB run computes and records its difference from the previous call (MSE and relative L2).
:func:`calibrate` turns such a :class:`DifferenceProfile` into a :class:`~videosys.pab.PABConfig` by the rule
documented in :mod:`videosys.analysis.calibrate` and docs/pab.md.
"""

from .calibrate import (
    Calibration,
    KindCalibration,
    calibrate,
    calibrate_kind,
    calibrate_mlp,
    window_bounds,
    write_pab_yaml,
)
from .record import (
    METRICS,
    DifferenceProfile,
    DifferenceRecorder,
    chain_observers,
    record_generation,
    step_differences,
)

__all__ = [
    "METRICS",
    "Calibration",
    "DifferenceProfile",
    "DifferenceRecorder",
    "KindCalibration",
    "calibrate",
    "calibrate_kind",
    "calibrate_mlp",
    "chain_observers",
    "record_generation",
    "step_differences",
    "window_bounds",
    "write_pab_yaml",
]
