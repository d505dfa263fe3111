"""The benchmark and probe scripts stay documented and runnable as the package under them changes.

Why: ``benchmarks/RESULTS.md`` cites their figures, so a script that no longer starts (an import the
package renamed) or that nobody can find in ``benchmarks/README.md`` makes a recorded figure impossible to
re-make. Each script's ``--help`` runs its imports and its argument parser, not its measurement.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def test_every_script_is_in_the_readme() -> None:
    readme = (BENCHMARKS / "README.md").read_text()
    missing = [name for name in SCRIPTS if f"`{name}`" not in readme]
    assert not missing, f"benchmarks/README.md has no entry for {missing}"


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n != "machine.py"])
def test_script_answers_help(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--help"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only: --help takes ~1.5 s, far longer on a loaded machine
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
