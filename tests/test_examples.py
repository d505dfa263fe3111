"""The examples users copy from run as they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("check", [True, False])
def test_drive_a_robot_runs_the_shipped_agent(check: bool, capsys) -> None:
    example = _load("drive_a_robot")
    assert example.main(["--attempts", "1", *([] if check else ["--no-check"])]) == 0
    out = capsys.readouterr().out
    assert "attempt 1:" in out and "attempts succeeded" in out
