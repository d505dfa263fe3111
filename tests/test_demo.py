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


def test_show_renders_a_scene_grid_and_refuses_a_bad_texture_folder(tmp_path, capsys) -> None:
    import numpy as np
    from PIL import Image

    textures = tmp_path / "textures"
    textures.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 80 * i + 40, np.uint8)).save(textures / f"t{i}.png")
    out = tmp_path / "scene.png"
    argv = ["show", "--out", str(out), "--size", "64", "--split", "test", "--texture-dir", str(textures)]
    assert main(argv) == 0
    grid = np.asarray(Image.open(out))
    assert grid.ndim == 3 and grid.shape[1] > 64 * 5  # the panels side by side
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["show", "--out", str(tmp_path / "x.png"), "--texture-dir", str(tmp_path / "none")]) == 2
    assert "error" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    # A folder where the picture goes: one message, and no temp file left beside it.
    (tmp_path / "taken.png").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["show", "--out", str(tmp_path / "taken.png"), "--size", "64"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_demo_refuses_empty_samples_before_any_work(tmp_path, capsys) -> None:
    for flag in ("--frames", "--attempts"):
        out = tmp_path / flag.strip("-")
        assert main(["demo", "--out", str(out), flag, "0"]) == 2
        assert ">= 1" in capsys.readouterr().err and not out.exists()
