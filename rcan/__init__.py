"""rcan: sim-to-real grasping through randomized-to-canonical adaptation (James et al., CVPR 2019).

Importing the package registers the Gymnasium task ``rcan/Grasp-v0``.
"""

from __future__ import annotations

__version__ = "0.2.0"

from rcan.sim import register_envs as _register_envs

_register_envs()
