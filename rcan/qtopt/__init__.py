"""QT-Opt grasping agent (Kalashnikov et al. 2018) as used by RCAN (paper sections 3 and 4.3).

Modules, one job each: ``network`` (the Q-function), ``cem`` (action selection), ``replay`` (the buffer),
``collectors`` (data collection processes), ``agent`` (a policy others can use), ``train`` (the loop),
``evaluate`` (the paper's protocol), ``commands`` (CLI wiring). Import the submodules directly; this package
imports nothing heavy so ``rcan --help`` stays fast.
"""

from __future__ import annotations

INPUT_MODES = ("canonical", "mild", "medium", "heavy", "rcan")
"""``--input`` choices: a domain's own images, or ``rcan`` = concat(G(x), x) with x from the heavy domain."""
