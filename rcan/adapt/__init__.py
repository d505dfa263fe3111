"""RCAN: the randomized-to-canonical generator (paper section 4) and its training.

Submodules: ``networks`` (generator and discriminator factories), ``losses``, ``args`` (training
arguments and presets), ``pairs`` (paired data and batch order), ``train`` (the training loop),
``inference`` (loading a trained generator and translating images), ``commands`` (CLI wiring).
Names are imported lazily so that ``rcan --help`` does not pay for importing torch. (The training
function is ``rcan.adapt.train.train``: a package attribute named ``train`` would clash with the submodule.)
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "define_G": "rcan.adapt.networks",
    "define_D": "rcan.adapt.networks",
    "GeneratorConfig": "rcan.adapt.networks",
    "DiscriminatorConfig": "rcan.adapt.networks",
    "load_generator": "rcan.adapt.inference",
    "translate_batch": "rcan.adapt.inference",
    "TrainArgs": "rcan.adapt.args",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rcan.adapt' has no attribute {name!r}")
