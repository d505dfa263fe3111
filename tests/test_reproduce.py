"""``rcan reproduce --preset tiny``: every piece runs, the report has Table 1 and Figure 4, a killed run
carries on from its last finished piece, and a changed command is refused."""

from __future__ import annotations

import json

import pytest

import rcan.experiments.reproduce as rep
from rcan.cli import main


@pytest.mark.slow
def test_tiny_reproduction_reports_and_resumes(tmp_path, monkeypatch) -> None:
    out = tmp_path / "repro"
    args = rep.make_args("tiny", out=str(out), attempts=2)
    real_evaluate = rep._evaluate

    def killed_at_medium_real(a, o, name, *rest, **kw):
        if name == "eval:medium:real":
            raise RuntimeError("killed")
        return real_evaluate(a, o, name, *rest, **kw)

    monkeypatch.setattr(rep, "_evaluate", killed_at_medium_real)
    with pytest.raises(RuntimeError, match="killed"):
        rep.reproduce(args)
    done = json.loads((out / rep.PIECES_FILE).read_text())["results"]
    assert "eval:medium:sim" in done and "eval:medium:real" not in done and "train:heavy" not in done

    calls: list[str] = []

    def counting(a, o, name, *rest, **kw):
        calls.append(name)
        return real_evaluate(a, o, name, *rest, **kw)

    monkeypatch.setattr(rep, "_evaluate", counting)
    paths = rep.reproduce(args)
    assert calls[0] == "eval:medium:real" and not any(c.startswith("eval:canonical") for c in calls)
    results = json.loads((out / rep.PIECES_FILE).read_text())["results"]
    for agent in rep.AGENTS:
        for piece in ("sim", "real", "ft1", "ft5"):
            r = results[f"eval:{agent}:{piece}"]
            assert r["attempts"] == 2 and 0 <= r["successes"] <= 2
        assert results[f"finetune:{agent}:5"]["real_episodes"] >= results[f"finetune:{agent}:5"]["budget"]
    # Figure 4 agents are evaluated after every stage, the others after the first and last only.
    assert "eval:mild:ft3" in results and "eval:heavy:ft3" not in results
    md = paths["report_md"].read_text()
    assert md.count("| RCAN |") == 1 and "70%" in md and "Canonical sim" in md
    assert (out / "figure4.png").stat().st_size > 0 and (out / "figure3_real.png").stat().st_size > 0
    assert "<table>" in paths["report_html"].read_text()
    assert "torch" in json.loads((out / "config.json").read_text())["environment"]

    # Started again with other arguments: one clear refusal, nothing overwritten.
    with pytest.raises(ValueError, match="other arguments"):
        rep.reproduce(rep.make_args("tiny", out=str(out), attempts=3))


def test_reproduce_cli_errors(tmp_path, capsys) -> None:
    assert main(["reproduce", "--preset", "tiny", "--out", str(tmp_path / "r"), "--attempts", "0"]) == 2
    assert "attempts" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / rep.PIECES_FILE).write_text("{not json")
    assert main(["reproduce", "--preset", "tiny", "--out", str(bad)]) == 2
    assert "not an rcan reproduce record" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finetune"):
        rep.make_args("tiny", finetune="warm")
    assert rep.make_args("tiny", finetune="continue").finetune == "continue"


def test_learning_curves_of_the_agents_that_have_greedy_episodes(tmp_path) -> None:
    out = tmp_path / "repro"
    assert rep.learning_curves(out) is None  # nothing trained yet
    for agent, n_eval in (("canonical", 6), ("mild", 0)):  # mild: no greedy episodes (like the tiny preset)
        run = out / "agents" / agent
        run.mkdir(parents=True)
        rows = [{"kind": "scripted", "success": False}] * 4 + [{"kind": "eval", "success": i % 2 == 0} for i in range(n_eval)]
        (run / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = rep.learning_curves(out)
    assert path == out / "learning_curves.png" and path.read_bytes()[:4] == b"\x89PNG"


def test_table1_agents_train_as_the_paper_s_one_critic_without_a_check() -> None:
    from rcan.qtopt.args import make_args

    args = rep.ReproduceArgs(out="unused")
    for agent in ("canonical", "rcan"):
        o = rep._train_overrides(args, agent, "gen.safetensors")
        targs = make_args(args.agent_preset, **{k: v for k, v in o.items() if v is not None})
        assert (targs.ensemble_members, targs.distill_steps, targs.check_grasps) == (1, 0, 0)


def test_a_signal_during_training_is_not_a_finished_piece(tmp_path, monkeypatch) -> None:
    """The trainer checkpoints and returns on Ctrl-C / SIGTERM; reproduce must stop there, not record the
    half-trained agent as trained and evaluate it."""
    import rcan.qtopt.train as qtrain

    monkeypatch.setattr(qtrain, "train", lambda args: {"finished": False, "episodes": {}, "env_steps": 1})
    out = tmp_path / "repro"
    with pytest.raises(KeyboardInterrupt):
        rep.reproduce(rep.make_args("tiny", out=str(out), attempts=2))
    pieces = out / rep.PIECES_FILE
    assert not pieces.is_file() or "train:canonical" not in json.loads(pieces.read_text())["results"]
    assert main(["reproduce", "--preset", "tiny", "--out", str(out)]) == 130


def test_bad_records_and_arguments_are_refused(tmp_path) -> None:
    for text in ("[]", json.dumps({"format": rep.FORMAT}), json.dumps({"format": rep.FORMAT, "config": []})):
        bad = tmp_path / f"bad{len(text)}"
        bad.mkdir()
        (bad / rep.PIECES_FILE).write_text(text)
        with pytest.raises(ValueError, match="not an rcan reproduce record"):
            rep.Pieces(bad, rep.make_args("tiny", out=str(bad)))
    for bad_arg in ({"agent_minutes": -1.0}, {"agent_env_steps": -5}, {"grid_frames": 0}):
        with pytest.raises(ValueError, match=">= 0|>= 1"):
            rep.make_args("tiny", **bad_arg)


def test_the_report_names_the_source_commit() -> None:
    commit = rep.source_commit()
    assert commit == "unknown" or len(commit.split("+")[0]) >= 7


def test_the_tiny_preset_on_ray_gets_a_collector_actor() -> None:
    assert rep.make_args("tiny", backend="ray").collectors == 1  # tiny's in-process collector has no Ray form
    assert rep.make_args("tiny").collectors == 0
    assert rep.make_args("tiny", backend="ray", collectors=2).collectors == 2
