"""``rcan demo`` (``make demo``): the whole pipeline with the shipped weights, end to end on a small sample."""

from __future__ import annotations

import json

from rcan.cli import main


def test_demo_writes_every_section_with_its_pictures(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--frames", "4", "--attempts", "2"]) == 0
    report = (tmp_path / "report.md").read_text()
    for heading in (
        "## 1. One scene in every visual domain",
        "## 2. The shipped RCAN generator",
        "## 3. The shipped grasping agent",
    ):
        assert heading in report
    assert "missing): skipped" not in report  # the generator and the agent ship with the package
    for picture in ("scene_domains.png", "generator/figure3.png", "agent/frames.png"):
        assert (tmp_path / picture).stat().st_size > 1000, picture
        assert picture in report
    agent = json.loads((tmp_path / "agent" / "result.json").read_text())
    assert agent["attempts"] == 2 and f"{agent['successes']}/2 grasp attempts succeeded" in report
    assert "grasp check" in report and "closes on the last step" in report
    assert str(tmp_path / "report.md") in capsys.readouterr().out
