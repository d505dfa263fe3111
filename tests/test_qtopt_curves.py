"""Learning curves from a run's episode log: the numbers, the plot, the command and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rcan.cli import main
from rcan.qtopt.curves import learning_curve


def _write_run(run: Path, kinds_and_outcomes: list[tuple[str, bool]]) -> Path:
    run.mkdir(parents=True)
    rows = []
    for i, (kind, success) in enumerate(kinds_and_outcomes):
        rows.append({"episode": i + 1, "kind": kind, "success": success, "grad_steps": 10 * i})
    (run / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    progress = [{"grad_steps": 10 * i, "minutes": i / 10} for i in range(0, len(rows), 5)]
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in progress))
    return run


def test_curve_counts_grasps_and_windows_greedy_successes(tmp_path) -> None:
    # 3 training episodes, then greedy F, T; 2 more training, greedy T, T (the "real" kind counts as training).
    log = [("scripted", True), ("policy", False), ("real", True), ("eval", False), ("eval", True)]
    log += [("scripted", False), ("policy", False), ("eval", True), ("eval", True)]
    c = learning_curve(_write_run(tmp_path / "run", log), window=2)
    assert c.grasps.tolist() == [3, 3, 5, 5]
    np.testing.assert_allclose(c.success, [0.0, 0.5, 1.0, 1.0])
    assert np.all(c.low <= c.success) and np.all(c.success <= c.high)
    assert np.all(np.isfinite(c.minutes)) and np.all(np.diff(c.minutes) >= 0)
    c_all = learning_curve(tmp_path / "run", window=100)
    np.testing.assert_allclose(c_all.success, [0.0, 0.5, 2 / 3, 0.75])


def test_counterfactual_grasps_count_as_grasps_collected(tmp_path) -> None:
    run = _write_run(tmp_path / "run", [("scripted", True), ("policy", False), ("eval", True)])
    rows = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    rows[0]["branches"], rows[1]["branches"] = 4, 2  # runs written before branching have no field: 0
    (run / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert learning_curve(run).grasps.tolist() == [2 + 4 + 2]


def test_curve_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a training run"):
        learning_curve(tmp_path)
    run = _write_run(tmp_path / "no-eval", [("scripted", False)])
    with pytest.raises(ValueError, match="no greedy"):
        learning_curve(run)
    (run / "episodes.jsonl").write_text('{"kind": "eval", "success": true}\n{not json\n')
    with pytest.raises(ValueError, match="not JSON"):
        learning_curve(run)
    with pytest.raises(ValueError, match="window"):
        learning_curve(run, window=0)


def test_a_live_or_killed_run_s_unfinished_last_row_is_left_out(tmp_path) -> None:
    run = _write_run(tmp_path / "run", [("scripted", True), ("eval", True), ("eval", False)])
    with open(run / "episodes.jsonl", "a") as f:
        f.write('{"episode": 4, "kind": "ev')  # a row being appended, or cut by a kill
    assert learning_curve(run, window=100).success.tolist() == [1.0, 0.5]
    text = (run / "episodes.jsonl").read_text()
    (run / "episodes.jsonl").write_text(text.replace('{"episode": 2', '{"episode" 2'))  # mid-file damage
    with pytest.raises(ValueError, match=":2 is not JSON"):
        learning_curve(run)


def test_learning_curve_command(tmp_path, capsys) -> None:
    log = [("scripted", False), ("eval", False), ("policy", True), ("eval", True)] * 5
    run = _write_run(tmp_path / "run-a", log)
    out = tmp_path / "plots" / "curve.png"
    assert main(["learning-curve", str(run), "--out", str(out), "--window", "4"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "run-a:" in printed and "grasps" in printed
    assert main(["learning-curve", str(tmp_path / "missing"), "--out", str(out)]) != 0
    assert "not a training run" in capsys.readouterr().err
