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


def _load_compare_sets():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_sets", BENCHMARKS / "compare_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_sets_pairs_a_run_with_a_per_set_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    compare_sets = _load_compare_sets()
    run = tmp_path / "run"
    for s, k in ((0, 90), (1, 80), (2, 85)):
        (run / f"eval-s{s}").mkdir(parents=True)
        (run / f"eval-s{s}" / "result.json").write_text(json.dumps({"successes": k, "attempts": 100}))
    counts = tmp_path / "counts.json"  # the newer format, and one set the run lacks
    counts.write_text(json.dumps({"per_set_counts": {"0": [80, 100], "1": [80, 100], "2": [90, 100], "3": [1, 100]}}))
    rates = tmp_path / "eval-sets.json"  # an older eval-sets.json: rates and the pooled attempts
    rates.write_text(json.dumps({"attempts": 300, "per_set": {"0": 0.8, "1": 0.8, "2": 0.9}}))
    assert compare_sets.per_set(rates) == {0: (80, 100), 1: (80, 100), 2: (90, 100)}
    assert compare_sets.per_set(counts)[3] == (1, 100)
    assert compare_sets.main([str(counts), str(run)]) == 0
    out = capsys.readouterr().out
    assert "3 common object sets: 0..2" in out
    assert "B - A: +1.67 points per set" in out  # (+10 + 0 - 5) / 3
    assert "better on 1, worse on 1, equal on 1" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"attempts": 301, "per_set": {"0": 0.8, "1": 0.8}}))
    with pytest.raises(SystemExit, match="not a per-set results file"):
        compare_sets.per_set(bad)
