"""What every reader of a released recogniser returns: its arrays in one named layout, and its preprocessing.

Numpy only, and Preprocessing from common.preprocessing. The readers (torch_file, onnx_file, mxnet_file) fill an
ImportedWeights; nets.pretrained.build turns it into a Keras network; nets.preprocessing wraps that network with
the Preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Defined with the seed's numbers it generalises; here too, as part of what a reader returns.
from common.preprocessing import Preprocessing

__all__ = ["ARCFACE_TORCH_BN_EPSILON", "LAYOUTS", "ImportedWeights", "Preprocessing", "running_var_for_epsilon"]

# The layouts build_from_weights accepts. "arcface_torch": arrays named exactly as insightface's arcface_torch
# iresnet / mobilefacenet state_dict keys, in torch layouts (conv OIHW, linear (out, in), BN weight / bias /
# running_mean / running_var, PReLU weight (C,)), all float32.
LAYOUTS = ("arcface_torch",)
# The batch-norm epsilon of arcface_torch, which build_from_weights gives the networks it builds.
ARCFACE_TORCH_BN_EPSILON = 1e-5


def running_var_for_epsilon(running_var: np.ndarray, epsilon: float) -> np.ndarray:
    """The running variance that makes a BN with arcface_torch's epsilon compute what one with `epsilon` does.

    A BN divides by sqrt(running_var + eps), so running_var + eps - 1e-5 is exact; the BN's weight is untouched,
    which keeps a fixed weight of 1 (MXNet's fix_gamma, arcface_torch's `features`) fixed.
    """
    return (np.asarray(running_var, np.float64) + (epsilon - ARCFACE_TORCH_BN_EPSILON)).astype(np.float32)


@dataclass
class ImportedWeights:
    """A released recogniser's arrays in `layout`, its preprocessing, and where it came from (for messages)."""

    layout: str
    arrays: dict[str, np.ndarray]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    source: str = ""
