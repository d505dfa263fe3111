"""End to end: ``rcan train-agent --preset tiny`` writes checkpoints, restores exactly, resumes; CLI errors."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from rcan.common.checkpoint import load_safetensors
from rcan.qtopt import commands
from rcan.qtopt.agent import load_agent, load_network
from rcan.qtopt.args import STATE_FILE, learning_rate, make_args, resolve_args
from rcan.qtopt.replay import load_replays
from rcan.qtopt.train import Trainer


def _cli_status(argv: list[str]) -> int:
    from rcan.cli import main

    return main(argv)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rcan")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_tiny_run_checkpoints_restores_and_resumes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = resolve_args(str(run), "tiny", False, {"seed": 3})
    first = Trainer(args)
    summary = first.run()
    assert summary["env_steps"] >= 60 and summary["grad_steps"] > 0
    assert first.budget_used() == 1.0 and "train-agent run: 100%" in capsys.readouterr().err
    for name in ("agent.safetensors", STATE_FILE, "config.json", "progress.jsonl", "episodes.jsonl"):
        assert (run / name).is_file(), name
    assert (run / "tb").is_dir() and len(list(run.glob("replay-*.npz"))) == 1
    assert load_agent(run).act(
        {"image": np.zeros((64, 64, 3), np.uint8), "gripper_closed": 0, "gripper_height": np.array([0.2])}, {}
    ).shape == (6,)

    # Rows logged after the last checkpoint (the stretch a kill throws away) are cut back on resume, so a
    # learning curve never counts them twice.
    logs = ("progress.jsonl", "episodes.jsonl")
    sizes = {name: (run / name).stat().st_size for name in logs}
    for name in logs:
        with open(run / name, "a") as f:
            f.write('{"after_the_checkpoint": 1}\n')

    # The restored state equals the saved one: weights, targets, optimizer, counters, RNGs and replay.
    restored = Trainer(resolve_args(str(run), None, True, {}))
    assert {name: (run / name).stat().st_size for name in logs} == sizes
    saved_t, saved_m = load_safetensors(run / STATE_FILE)
    now_t, now_m = restored.state_tensors()
    assert saved_t.keys() == now_t.keys()
    for k in saved_t:
        assert torch.equal(saved_t[k], now_t[k]), k
    assert json.loads(saved_m["counters"]) == json.loads(now_m["counters"])
    assert saved_m["np_rng"] == now_m["np_rng"]
    for name, buf in first.replays.items():
        assert restored.replays[name].equals(buf), name
    assert (restored.grad_steps, restored.env_steps) == (first.grad_steps, first.env_steps)
    for p, q in zip(restored.net.parameters(), first.net.parameters(), strict=True):
        assert torch.equal(p, q)
    # Same state, same next batch.
    b1, b2 = first.sample(), restored.sample()
    assert b1.keys() == b2.keys()
    assert all(np.array_equal(b1[k].numpy(), b2[k].numpy(), equal_nan=True) for k in b1)

    # Resume through the CLI with a larger budget: the counters continue and the replay grows.
    assert _cli(["train-agent", "--out", str(run), "--resume", "--env-steps", "100"]) == 0
    assert "env steps" in capsys.readouterr().out
    after = Trainer(resolve_args(str(run), None, True, {}))
    assert after.env_steps >= 100 and after.grad_steps > first.grad_steps
    assert after.checkpoint_id == first.checkpoint_id + 1
    replays = load_replays(next(run.glob("replay-*.npz")))
    assert replays["scripted"].steps + replays["policy"].steps == after.env_steps


def test_budget_used_is_the_limit_that_runs_out_first(tmp_path) -> None:
    t = Trainer(make_args("tiny", out=str(tmp_path / "run"), collectors=0, env_steps=100, minutes=2.0))
    t.env_steps, t.train_seconds = 25, 60.0
    assert t.budget_used() == pytest.approx(0.5)  # half the time, a quarter of the steps
    t.env_steps = 80
    assert t.budget_used() == pytest.approx(0.8) and not t.finished()
    t.train_seconds = 200.0
    assert t.budget_used() == 1.0 and t.finished()


def test_cli_errors(tmp_path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        resolve_args(str(tmp_path / "busy"), "tiny", False, {})
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resolve_args(str(tmp_path / "none"), None, True, {})
    with pytest.raises(ValueError, match="needs --generator"):
        resolve_args(str(tmp_path / "r"), "tiny", False, {"input": "rcan"})
    with pytest.raises(ValueError, match="only for --input rcan"):
        resolve_args(str(tmp_path / "r"), "tiny", False, {"generator": "g"})
    with pytest.raises(ValueError, match="unknown preset"):
        make_args("huge")
    with pytest.raises(ValueError, match="unknown training arguments"):
        make_args("tiny", bogus=1)
    with pytest.raises(ValueError, match="collectors"):
        make_args("tiny", collectors=-1)
    assert make_args("tiny", collectors=0).collectors == 0  # one collector inside the trainer
    # --set reaches every field, typed; bad names and values are one clear error.
    from rcan.common.presets import parse_settings
    from rcan.qtopt.args import TrainArgs

    got = parse_settings(TrainArgs, ["lr=1e-3", "channels=8,16", "coord-channels=false", "texture_dir=none"])
    assert got == {"lr": 1e-3, "channels": (8, 16), "coord_channels": False, "texture_dir": None}
    for bad in ("nope=1", "lr=fast", "keypoints"):
        with pytest.raises(ValueError, match="--set"):
            parse_settings(TrainArgs, [bad])
    assert _cli_status(["train-agent", "--out", str(tmp_path / "s"), "--set", "lr=fast"]) == 2
    for flag in ("out=b", "resume=true", "preset=paper"):  # flags of their own, not settings
        with pytest.raises(ValueError, match="as its own flag"):
            parse_settings(TrainArgs, [flag])
    assert _cli_status(["train-agent", "--out", str(tmp_path / "s"), "--set", "out=b"]) == 2
    for bad, message in [
        ({"log_every": 0}, "log_every"),
        ({"push_every": 0}, "push_every"),
        ({"checkpoint_minutes": 0.0}, "checkpoint_minutes"),
        ({"input": "heavy", "texture_dir": str(tmp_path / "no-such-folder")}, "texture directory"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_args("tiny", **bad)
    with pytest.raises(SystemExit):
        _cli(["train-agent", "--out", str(tmp_path / "r"), "--input", "sepia"])


def test_the_camera_is_checked_and_travels_with_the_agent(tmp_path) -> None:
    """A run's camera (and its test-time views) are validated, recorded in its agent file, and used by the
    evaluation of that agent."""
    from rcan.qtopt.evaluate import run_evaluation

    with pytest.raises(ValueError, match="unknown camera"):
        make_args("tiny", camera="fisheye")
    with pytest.raises(ValueError, match="camera=wide"):
        make_args("tiny", input="rcan", generator="g.safetensors", camera="tray")
    run = tmp_path / "run"
    Trainer(make_args("tiny", out=str(run), camera="tray", seed=1, view_shifts=3)).run()
    policy = load_agent(run)
    assert policy.camera == "tray"
    assert (policy.view_shifts, policy.rerank) == (3, 16)  # the acting mode travels with it
    result = run_evaluation(str(run), "canonical", attempts=1, out=str(tmp_path / "eval"))
    assert result["camera"] == "tray" and result["view_shifts"] == 3 and result["rerank"] == 16
    with pytest.raises(ValueError, match="camera=tray"):
        Trainer(make_args("tiny", out=str(tmp_path / "ft"), finetune_from=str(run), real_episodes=2))


def test_first_frame_rides_on_every_state_image(tmp_path) -> None:
    """With ``first_frame`` every state image, in collected episodes (scripted and learned policy) and when
    acting, is the current image with the episode's first one stacked on it; a new episode starts afresh."""
    from rcan.qtopt.args import collector_config
    from rcan.qtopt.collectors import EpisodeRunner

    args = make_args("tiny", out=str(tmp_path / "run"), first_frame=True, seed=2)
    runner = EpisodeRunner(collector_config(args), seed=2)
    try:
        for kind in ("scripted", "policy", "scripted"):
            ep = runner.run_episode(kind)
            assert ep.images.shape[1] == 6, kind
            np.testing.assert_array_equal(ep.images[:, 3:], np.broadcast_to(ep.images[0, :3], ep.images[:, 3:].shape))
            assert len(ep.images) > 1 and not np.array_equal(ep.images[-1, :3], ep.images[0, :3]), kind
    finally:
        runner.close()
    Trainer(args).run()
    policy = load_agent(tmp_path / "run")
    first, later = (np.full((64, 64, 3), v, np.uint8) for v in (10, 200))
    obs = {"gripper_closed": 0, "gripper_height": np.array([0.2])}
    policy.reset()
    assert policy.prepare({**obs, "image": first})[0][3:].max() == 10
    assert policy.prepare({**obs, "image": later})[0][3:].max() == 10
    assert policy.act({**obs, "image": later}, {}).shape == (6,)
    policy.reset()
    assert policy.prepare({**obs, "image": later})[0][3:].min() == 200


def test_resume_refuses_trajectory_changes(tmp_path) -> None:
    run = tmp_path / "run"
    Trainer(make_args("tiny", out=str(run))).save_checkpoint()
    with pytest.raises(ValueError, match="cannot change"):
        resolve_args(str(run), None, True, {"seed": 9})
    with pytest.raises(ValueError, match="preset"):
        resolve_args(str(run), "default", True, {})
    args = resolve_args(str(run), None, True, {"env_steps": 500, "collectors": 2})
    assert args.env_steps == 500 and args.collectors == 2 and args.resume


def test_snapshots_keep_every_checkpoints_agent(tmp_path) -> None:
    run = tmp_path / "run"
    trainer = Trainer(make_args("tiny", out=str(run), keep_snapshots=True))
    trainer.save_checkpoint()
    trainer.grad_steps = 7
    with torch.no_grad():
        next(trainer.net.parameters()).add_(1.0)
    trainer.save_checkpoint()
    snaps = sorted((run / "snapshots").glob("agent-*.safetensors"))
    assert [p.name for p in snaps] == ["agent-0000000.safetensors", "agent-0000007.safetensors"]
    first, last = (load_network(p)[0].state_dict() for p in snaps)
    current = load_network(run / "agent.safetensors")[0].state_dict()
    name = next(iter(current))
    assert torch.equal(last[name], current[name]) and not torch.equal(first[name], current[name])
    Trainer(make_args("tiny", out=str(tmp_path / "plain"))).save_checkpoint()
    assert not (tmp_path / "plain" / "snapshots").exists()


def test_ensemble_members_are_kept_and_ride_in_the_final_agent_file(tmp_path) -> None:
    from rcan.qtopt.agent import load_networks

    run = tmp_path / "run"
    trainer = Trainer(make_args("tiny", out=str(run), seed=2, ensemble_members=3, ensemble_spacing=0.3))
    assert trainer.member_points() == [(2, pytest.approx(0.4)), (1, pytest.approx(0.7))]
    summary = trainer.run()
    kept = {k: load_safetensors(run / "members" / f"member-{k}.safetensors")[1] for k in (1, 2)}
    steps = [int(kept[k]["grad_steps"]) for k in (2, 1)]
    assert steps == sorted(steps) and steps[-1] <= summary["grad_steps"]
    nets, meta = load_networks(run)
    assert meta["members"] == "2" and len(nets) == 3
    for net, k in zip(nets[1:], (1, 2), strict=True):  # the nearest to the end first
        member = load_network(run / "members" / f"member-{k}.safetensors")[0]
        assert all(torch.equal(v, member.state_dict()[n]) for n, v in net.state_dict().items())
    assert len(load_agent(run).networks) == 3
    # a checkpoint before the end carries the network alone
    Trainer(make_args("tiny", out=str(tmp_path / "early"), ensemble_members=3)).save_checkpoint()
    assert load_networks(tmp_path / "early")[1]["members"] == "0"
    for bad in ({"ensemble_members": 0}, {"ensemble_members": 3, "ensemble_spacing": 0.5}):
        with pytest.raises(ValueError, match="ensemble"):
            make_args("tiny", **bad)
    make_args("tiny", ensemble_members=1, ensemble_spacing=0.0)  # one critic: the spacing is unused


def test_an_ensemble_is_distilled_into_one_agent_network(tmp_path) -> None:
    from rcan.qtopt.agent import load_networks
    from rcan.qtopt.train import ENSEMBLE_AGENT_FILE, train

    run = tmp_path / "run"
    args = make_args("tiny", out=str(run), seed=3, ensemble_members=3, ensemble_spacing=0.3, distill_steps=4)
    summary = train(args)
    assert summary["distill"]["steps"] == 4 and summary["distill"]["critics"] == 3
    nets, meta = load_networks(run)
    assert len(nets) == 1 and json.loads(meta["distilled"]) == {"steps": 4, "critics": 3}
    ensemble, ens_meta = load_networks(run / ENSEMBLE_AGENT_FILE)
    assert len(ensemble) == 3 and ens_meta["members"] == "2"
    final, distilled = ensemble[0].state_dict(), nets[0].state_dict()
    assert any(not torch.equal(final[k], distilled[k]) for k in final)  # fitted, not the final critic
    assert load_agent(run).network.config == ensemble[0].config
    with pytest.raises(ValueError, match="distill_steps"):
        make_args("tiny", distill_steps=10)  # one critic: nothing to distil
    with pytest.raises(ValueError, match="distill_steps"):
        make_args("tiny", ensemble_members=3, ensemble_spacing=0.3, distill_steps=-1)


def test_the_default_preset_distils_and_finetuning_keeps_one_critic(tmp_path) -> None:
    default = make_args("default")
    assert (default.ensemble_members, default.distill_steps) == (3, 4000)
    assert default.minutes + 6 + 12 <= default.budget_minutes  # distillation and a slow check still fit
    agent = tmp_path / "agent.safetensors"
    finetune = make_args("default", finetune_from=str(agent), real_episodes=10)
    assert (finetune.ensemble_members, finetune.distill_steps) == (1, 0)
    asked = make_args("default", finetune_from=str(agent), real_episodes=10, ensemble_members=2, distill_steps=0)
    assert asked.ensemble_members == 2  # an explicit choice stands
    assert (make_args("tiny").ensemble_members, make_args("tiny").distill_steps) == (1, 0)


def test_distillation_moves_a_critic_towards_the_ensembles_mean_logit() -> None:
    from rcan.qtopt.distill import distill, distill_candidates, ensemble_logits
    from rcan.qtopt.network import QNetConfig, QNetwork

    cfg = QNetConfig(channels=(8, 8), strides=(4, 2), fuse_channels=6, head_channels=4, fc_hidden=8)
    torch.manual_seed(0)
    teachers = [QNetwork(cfg) for _ in range(3)]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 64, 64), dtype=np.uint8)
    states = np.stack([np.zeros(64), rng.uniform(0, 0.3, 64)], 1).astype(np.float32)
    actions = rng.uniform(-1, 1, (64, 6)).astype(np.float32)

    def sample(n: int) -> dict[str, np.ndarray]:
        i = rng.choice(64, n, replace=False)
        return {"images": images[i], "states": states[i], "actions": actions[i]}

    img, st = torch.from_numpy(images[:16]), torch.from_numpy(states[:16])
    cands = distill_candidates(np.random.default_rng(1), teachers, img, st, actions[:16], k=16, focus=8)
    assert cands.shape == (16, 16, 6) and float(cands.abs().max()) <= 1.0
    target = ensemble_logits(teachers, img, st, cands)

    def error(net: QNetwork) -> float:
        with torch.no_grad():
            return float(((net.head(net.features(img), st, cands) - target) ** 2).mean())

    student = distill(teachers, sample, steps=60, batch=8, cands=16, focus=8, lr=1e-3)
    assert error(student) < 0.5 * error(teachers[0])
    with pytest.raises(ValueError):
        distill(teachers[:1], sample, steps=1)


def test_joint_finetuning_starts_from_the_agent_and_stops_at_the_real_budget(tmp_path) -> None:
    base = tmp_path / "base"
    Trainer(make_args("tiny", out=str(base), seed=1)).run()
    trained = load_agent(base).network.state_dict()
    tuned = tmp_path / "tuned"
    args = make_args("tiny", out=str(tuned), seed=2, finetune_from=str(base), real_episodes=3)
    t = Trainer(args)
    # It starts from the trained weights, in the online and both target networks.
    for net in (t.net, t.target1, t.target2):
        assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
    summary = t.run()
    assert summary["episodes"]["real"] >= 3 and summary["episodes"]["scripted"] == 0
    assert summary["grad_steps"] > 0 and len(t.replays["real"]) > 0
    assert any(not torch.equal(v, trained[k]) for k, v in t.net.state_dict().items())
    episodes = [json.loads(line) for line in (tuned / "episodes.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in episodes} <= {"real", "policy"}
    # Raising the budget on resume finetunes further, with the real buffer restored.
    again = Trainer(resolve_args(str(tuned), None, True, {"real_episodes": 5}))
    assert len(again.replays["real"]) == len(t.replays["real"])
    assert again.run()["episodes"]["real"] >= 5
    with pytest.raises(ValueError, match="finetune"):
        make_args("tiny", out=str(tmp_path / "x"), real_episodes=3)
    # The same through the CLI, in-process collector.
    cli_run = tmp_path / "cli"
    argv = ["train-agent", "--preset", "tiny", "--out", str(cli_run), "--collectors", "0"]
    assert _cli([*argv, "--finetune-from", str(base), "--real-episodes", "2"]) == 0
    kinds = {json.loads(line)["kind"] for line in (cli_run / "episodes.jsonl").read_text().splitlines()}
    assert kinds <= {"real", "policy"} and "real" in kinds


def test_joint_finetuning_waits_for_its_warm_up_data(tmp_path) -> None:
    base = tmp_path / "base"
    Trainer(make_args("tiny", out=str(base), seed=1)).run()
    tuned = tmp_path / "tuned"
    warm = 8
    args = make_args(
        "tiny", out=str(tuned), seed=2, finetune_from=str(base), real_episodes=8, finetune_learning_starts=warm
    )
    summary = Trainer(args).run()
    rows = [json.loads(line) for line in (tuned / "episodes.jsonl").read_text().splitlines()]
    early = [r for r in rows if r["env_steps"] < warm]
    assert len(early) >= 2 and all(r["grad_steps"] == 0 for r in early)
    assert summary["env_steps"] > warm and summary["grad_steps"] > 0
    # Finetuning uses its own (lower) learning rate from the first step.
    assert learning_rate(args, 0) == args.finetune_lr < args.lr
    assert learning_rate(dataclasses.replace(args, finetune_from=None, real_episodes=0), 0) == args.lr
    with pytest.raises(ValueError, match="finetune_learning_starts"):
        make_args("tiny", out=str(tmp_path / "x"), finetune_from=str(base), real_episodes=2, finetune_learning_starts=-1)


def test_joint_finetuning_can_continue_the_training_run(tmp_path) -> None:
    base = tmp_path / "base"
    trained = Trainer(make_args("tiny", out=str(base), seed=1))
    trained.run()
    state_meta = json.loads(json.dumps(load_safetensors(base / STATE_FILE)[1]))
    source = load_replays(base / state_meta["replay_file"])
    args = make_args(
        "tiny", out=str(tmp_path / "tuned"), seed=2, finetune_from=str(base), real_episodes=2, finetune_continue=True
    )
    t = Trainer(args)
    for kind in ("scripted", "policy"):
        assert t.replays[kind].equals(source[kind])  # starts from everything the agent learned from
    # The learner carries on: online and target networks and the optimizer's moments as the run left them.
    for mine, theirs in ((t.net, trained.net), (t.target1, trained.target1), (t.target2, trained.target2)):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    moments, expected = t.opt.state_dict()["state"], trained.opt.state_dict()["state"]
    assert moments.keys() == expected.keys() and len(moments) > 0
    assert all(torch.equal(moments[i]["exp_avg_sq"], expected[i]["exp_avg_sq"]) for i in expected)
    assert len(t.replays["real"]) == 0
    assert t.batch_mix() == (("real", 0.5), ("policy", 0.25), ("scripted", 1.0))
    before = len(t.replays["policy"])
    t.run()
    assert len(t.replays["real"]) > 0 and len(t.replays["policy"]) >= before
    # The labels of the gripper keypoint come from simulated episodes only.
    assert np.isnan(t.replays["real"].tool_pixels[: len(t.replays["real"])]).all()
    assert np.isnan(t.replays["real"].tool_yaws[: len(t.replays["real"])]).all()
    assert np.isnan(t.replays["real"].finger_pixels[: len(t.replays["real"])]).all()
    assert not np.isnan(t.replays["scripted"].tool_pixels[: len(t.replays["scripted"])]).any()
    with pytest.raises(ValueError, match="finetune_continue"):
        make_args("tiny", out=str(tmp_path / "x"), finetune_continue=True)
    agent_file = base / "agent.safetensors"
    with pytest.raises(ValueError, match="training run directory"):
        Trainer(make_args("tiny", out=str(tmp_path / "y"), finetune_from=str(agent_file), real_episodes=2, finetune_continue=True))


def test_runs_saved_before_the_new_defaults_resume_as_they_were() -> None:
    from rcan.qtopt.args import args_from_json, args_to_json

    d = json.loads(args_to_json(make_args("default")))
    for name in ("mc_lower_bound", "gripper_keypoint", "finetune_continue", "ensemble_members", "distill_steps"):
        del d[name]
    old = args_from_json(json.dumps(d))
    assert not old.mc_lower_bound and not old.gripper_keypoint and not old.finetune_continue
    assert (old.ensemble_members, old.distill_steps) == (1, 0)  # one critic, as such runs trained
    assert make_args("default").mc_lower_bound and make_args("default").gripper_keypoint


def test_object_masks_shift_with_their_images() -> None:
    from rcan.qtopt.losses import shift_images

    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(6, 64, 64, generator=gen) > 0.7).to(torch.uint8)
    images = torch.cat([masks[:, None] * 255, torch.zeros(6, 2, 64, 64, dtype=torch.uint8)], 1)
    a, shifts_a, _ = shift_images(images, None, 4, torch.Generator().manual_seed(1))
    b, shifts_b, shifted = shift_images(images, masks, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(shifts_a, shifts_b)  # the masks do not change the images' shifts
    assert shifted is not None and torch.equal(shifted * 255, b[:, 0]) and shifts_b.abs().sum() > 0


def test_object_map_auxiliary_loss_from_simulated_masks(tmp_path) -> None:
    from rcan.qtopt.losses import object_aux_loss

    t = Trainer(make_args("tiny", out=str(tmp_path / "run"), collectors=0, object_aux_weight=1.0, seed=3))
    assert t.net.config.object_map
    summary = t.run()
    scripted = t.replays["scripted"]
    n = len(scripted)
    assert n > 0 and scripted.mask_known[:n].all()
    masks = np.unpackbits(scripted.object_masks[:n], axis=-1, count=64)
    assert 0 < masks.mean() < 0.5  # some pixels of every frame are objects, most are not
    progress = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["object_aux"]) and row["object_aux"] > 0 for row in progress)
    assert summary["env_steps"] >= t.args.env_steps
    # Resume restores the masks; rows without a mask count for nothing.
    again = Trainer(resolve_args(str(tmp_path / "run"), None, True, {}))
    assert again.replays["scripted"].equals(scripted)
    with torch.no_grad():
        feats = t.net.features(torch.zeros(2, 3, 64, 64))
    none_known = object_aux_loss(t.net, feats, torch.ones(2, 64, 64), torch.zeros(2, dtype=torch.bool))
    assert float(none_known) == 0.0
    # A perfect prediction of an all-empty map costs little, a confident wrong one a lot.
    with torch.no_grad():
        t.net.object_conv.weight.zero_()
        t.net.object_conv.bias.fill_(-10.0)
    known = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        assert float(object_aux_loss(t.net, feats, torch.zeros(2, 64, 64), known)) < 1e-3
        assert float(object_aux_loss(t.net, feats, torch.ones(2, 64, 64), known)) > 9.0


def test_target_readout_trains_with_aimed_exploration(tmp_path) -> None:
    """A tiny run with the target read-out and aimed scripted exploration: the move loss gets labels from
    the replay (every step but an episode's last), is logged, and the agent it saves acts."""
    args = make_args(
        "tiny",
        out=str(tmp_path / "run"),
        collectors=0,
        target_readout=True,
        gripper_yaw=True,
        finger_readout=True,
        object_offset_weight=1.0,
        wall_yaw_weight=1.0,
        scripted_aim_prob=1.0,
        outcome_fraction=0.5,  # and batches weighted to closings, half of them mirrored: every label mirrors
        mirror_prob=0.5,
        seed=4,
    )
    t = Trainer(args)
    assert t.net.config.target_readout
    t.run()
    scripted = t.replays["scripted"]
    n = len(scripted)
    labelled = np.isfinite(scripted.tool_pixels_after[:n]).all(axis=1)
    assert 0 < labelled.sum() < n and scripted.episodes == n - labelled.sum()  # one unlabelled step per episode
    progress = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    assert progress and all(np.isfinite(row["move_aux"]) and row["move_aux"] > 0 for row in progress)
    assert all(np.isfinite(row["yaw_aux"]) and row["yaw_aux"] > 0 for row in progress)
    assert np.isfinite(scripted.tool_yaws[:n]).all() and (np.abs(scripted.tool_yaws[:n]) <= np.pi).all()
    assert np.isfinite(scripted.finger_pixels[:n]).all()  # every step, the last one too
    assert all(np.isfinite(row["finger_aux"]) and row["finger_aux"] > 0 for row in progress)
    agent = load_agent(tmp_path / "run")
    assert agent.network.config.target_readout and agent.network.config.gripper_yaw
    assert agent.network.config.finger_readout and agent.network.config.object_offsets
    present = np.isfinite(scripted.object_pixels[:n]).all(axis=2)  # (n, MAX_OBJECTS)
    assert (present.sum(axis=1) == t.args.num_objects).all()  # every step labels the cell's objects
    assert all(np.isfinite(row["offset_aux"]) and row["offset_aux"] > 0 for row in progress)
    assert set(np.unique(scripted.wall_yaw_signs[:n])) <= {-1.0, 1.0}  # every step is labelled
    assert all(np.isfinite(row["wall_aux"]) and row["wall_aux"] > 0 for row in progress)
    assert agent.network.config.wall_yaw
    with pytest.raises(ValueError, match="scripted_aim_prob"):
        Trainer(make_args("tiny", out=str(tmp_path / "bad"), collectors=0, scripted_aim_prob=2.0))
    with pytest.raises(ValueError, match="mirror_prob must be in"):
        make_args("tiny", mirror_prob=1.5)
    with pytest.raises(ValueError, match="outcome_fraction must be in"):
        make_args("tiny", outcome_fraction=-0.1)
    with pytest.raises(ValueError, match="gripper_yaw needs target_readout"):
        make_args("tiny", target_readout=False, gripper_yaw=True)
    with pytest.raises(ValueError, match="finger_readout needs gripper_yaw"):
        make_args("tiny", finger_readout=True)
    with pytest.raises(ValueError, match="object_offset_weight needs target_readout"):
        make_args("tiny", target_readout=False, object_offset_weight=1.0)
    with pytest.raises(ValueError, match="wall_yaw needs gripper_yaw"):
        make_args("tiny", wall_yaw_weight=1.0)
    with pytest.raises(ValueError, match="wall_yaw_weight must be >= 0"):
        make_args("tiny", gripper_yaw=True, wall_yaw_weight=-1.0)


def test_retry_practice_rehearses_the_checked_regrasp(tmp_path) -> None:
    """With ``retry_practice_prob`` an on-policy episode's closing is judged first (a one-step terminal
    counterfactual of the agent's own action); a failing one is executed as the grasp check's rejection
    (close without ending, 3 lift steps, reopen one step down) and the agent acts again, at most 3 times
    and only with room left; a closing that would hold ends the episode as the agent chose."""
    from rcan.qtopt.args import collector_config
    from rcan.qtopt.collectors import EpisodeRunner, RetryPractice
    from rcan.qtopt.grasp_check import LIFT, REOPEN

    args = make_args("tiny", out=str(tmp_path / "run"), collectors=0, retry_practice_prob=1.0, noise_std=0.0, seed=3)
    runner = EpisodeRunner(collector_config(args), seed=3)
    runner.version = 0  # as if weights had arrived
    close_high = np.array([0, 0, 0, 0, 1, 1], np.float32)  # close and end at once, 24 cm above the tray
    runner.policy.act_prepared = lambda img, state: (close_high.copy(), 0.0)
    try:
        ep = runner.run_episode("policy")
        assert not ep.success and ep.length == 16  # three practised rejections of 5 steps, then the 4th ends it
        assert list(ep.branch_steps) == [0, 5, 10]
        for t, action, reward, _ in ep.branch_transitions():
            assert np.array_equal(action, close_high) and np.isclose(reward, -0.05)
            assert ep.actions[t, 5] == -1.0 and ep.actions[t, 4] == 1.0  # closed without ending
            assert np.array_equal(ep.actions[t + 1 : t + 4], np.tile(LIFT, (3, 1)))
            assert np.array_equal(ep.actions[t + 4], REOPEN)
        assert np.array_equal(ep.actions[15], close_high)
        assert runner.run_episode("eval").branches == 0  # greedy test episodes never practise
    finally:
        runner.close()

    class Judge:  # a stand-in env whose closings all hold, or all fail; it counts what it judged
        max_steps = 20

        def __init__(self, reward: float) -> None:
            self.reward, self.judged = reward, 0

        def try_grasps(self, actions):
            self.judged += len(actions)
            return np.array([self.reward], np.float32), np.zeros((1, 4), np.float32)

    holds = RetryPractice(Judge(0.95))  # a closing that holds is executed as chosen
    a, judged = holds.intercept(close_high, 0)
    assert judged is None and np.array_equal(a, close_high) and not holds.lifting and holds.env.judged == 1
    fails = RetryPractice(Judge(-0.05))
    a, judged = fails.intercept(close_high, 12)  # 4 steps left at the reopening (< 5): not even judged
    assert judged is None and np.array_equal(a, close_high) and fails.env.judged == 0
    a, judged = fails.intercept(close_high, 11)  # 5 left: judged, rejected, practised
    assert judged is not None and a[5] == -1.0 and fails.lifting and fails.env.judged == 1
    with pytest.raises(ValueError, match="retry_practice_prob"):
        make_args("tiny", retry_practice_prob=1.5)


def test_counterfactual_grasps_become_one_step_terminal_transitions(tmp_path) -> None:
    """With ``grasp_branches`` every closing of a scripted or on-policy episode brings that many alternative
    closings from the same state (never in greedy or ``real`` episodes); each enters the replay as a
    one-step terminal transition with that state's image and labels, its own action, reward and finger
    labels; the episode log records how many came with each episode."""
    from rcan.qtopt.args import collector_config
    from rcan.qtopt.collectors import EpisodeRunner

    args = make_args("tiny", out=str(tmp_path / "run"), collectors=0, grasp_branches=3, scripted_aim_prob=1.0, seed=6)
    runner = EpisodeRunner(collector_config(args), seed=6)
    try:
        ep = runner.run_episode("scripted")
        assert ep.grasps >= 1 and ep.branches == 3 * ep.grasps
        for t, action, reward, fingers in ep.branch_transitions():
            assert ep.states[t, 0] == 0 and ep.actions[t, 4] > 0  # branched where an open gripper closed
            assert action[4] == 1 and action[5] == 1 and abs(action[3]) <= 1
            assert np.isclose(reward, -0.05) or np.isclose(reward, 0.95)
            assert np.isfinite(fingers).all()
        assert runner.run_episode("eval").branches == 0
    finally:
        runner.close()
    aimed_args = make_args("tiny", grasp_branches=200, branch_aim_prob=0.5, seed=6)
    aimer = EpisodeRunner(collector_config(aimed_args), seed=6)
    try:  # half aimed at the centre nearest to where the action closes (1 cm noise), half around the action
        info = {"tool": np.array([0.0, 0.0, 0.05]), "objects_xy": np.array([[0.03, 0.01], [0.2, -0.1]])}
        alt = aimer.branch_actions(np.array([-1.0, 0.0, -1.0, 0.3, 1.0, -1.0], np.float32), info, 0.04)
        dist = np.linalg.norm(alt[:, :2] * 0.04 - info["objects_xy"][0], axis=1)
        aimed = dist < 0.03  # the others close ~7 cm away
        assert 70 < aimed.sum() < 130 and np.median(dist[aimed]) < 0.015
        assert (alt[:, 2] == -1.0).all() and (alt[:, 4:] == 1.0).all() and np.ptp(alt[:, 3]) > 1.5
    finally:
        aimer.close()
    for bad in ({"grasp_branches": -1}, {"branch_aim_prob": 1.5}):
        with pytest.raises(ValueError, match="grasp_branches"):
            make_args("tiny", **bad)

    t = Trainer(args)
    before = len(t.replays["scripted"])
    t.add_episode(ep)
    scripted = t.replays["scripted"]
    assert len(scripted) == before + ep.length + ep.branches
    rows = slice(before + ep.length, before + ep.length + ep.branches)
    steps = [b[0] for b in ep.branch_transitions()]
    np.testing.assert_array_equal(scripted.images[rows], ep.images[steps])
    np.testing.assert_array_equal(scripted.actions[rows], ep.branch_actions)
    np.testing.assert_allclose(scripted.returns[rows], ep.branch_rewards + args.reward_offset)
    assert (scripted.discounts[rows] == 0).all() and np.isfinite(scripted.tool_pixels[rows]).all()
    np.testing.assert_array_equal(scripted.finger_pixels[rows], ep.branch_fingers)
    t.run()
    logged = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert logged[0]["branches"] == ep.branches
    assert sum(r["branches"] for r in logged if r["kind"] == "scripted") >= ep.branches


def test_independent_critics_take_turns_and_all_ride_in_the_agent_file(tmp_path) -> None:
    from rcan.qtopt.agent import load_networks

    run = tmp_path / "run"
    trainer = Trainer(make_args("tiny", out=str(run), seed=4, critics=2, ensemble_members=2, ensemble_spacing=0.3))
    first, second = (c.net.state_dict() for c in trainer.critics)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # independent initializations
    summary = trainer.run()
    steps = [int(c.opt.state_dict()["state"][0]["step"]) for c in trainer.critics]
    assert sum(steps) == summary["grad_steps"] and abs(steps[0] - steps[1]) <= 1  # turn by turn
    for i in (0, 1):
        assert (run / "members" / ("member-1" + ("-c1" if i else "") + ".safetensors")).is_file()
    nets, meta = load_networks(run)
    assert meta["members"] == "3" and len(nets) == 4
    for net, critic in zip(nets[:2], trainer.critics, strict=True):  # both final critics first
        assert all(torch.equal(v, critic.net.state_dict()[n]) for n, v in net.state_dict().items())
    member = load_network(run / "members" / "member-1-c1.safetensors")[0]
    assert all(torch.equal(v, member.state_dict()[n]) for n, v in nets[3].state_dict().items())

    # Exact round trip of both critics' weights, targets and optimizers.
    restored = Trainer(resolve_args(str(run), None, True, {}))
    saved_t, _ = load_safetensors(run / "train_state.safetensors")
    now_t, _ = restored.state_tensors()
    assert saved_t.keys() == now_t.keys() and any(k.startswith("critic1.opt.") for k in saved_t)
    assert all(torch.equal(saved_t[k], now_t[k]) for k in saved_t)
    # A one-critic state does not load into a two-critic trainer.
    one = tmp_path / "one"
    Trainer(make_args("tiny", out=str(one))).save_checkpoint()
    two = Trainer(make_args("tiny", out=str(tmp_path / "two"), critics=2))
    tensors, meta = load_safetensors(one / "train_state.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        two._load_learner(one / "train_state.safetensors", tensors, meta)

    with pytest.raises(ValueError, match="critics must be >= 1"):
        make_args("tiny", critics=0)
    with pytest.raises(ValueError, match="local backend"):
        make_args("tiny", critics=2, backend="ray")
    with pytest.raises(ValueError, match="trained 2 critics"):  # not silently critic 0 alone
        Trainer(make_args("tiny", out=str(tmp_path / "ft"), finetune_from=str(run), real_episodes=2, finetune_continue=True))
    make_args("tiny", critics=2, distill_steps=5)  # two critics are an ensemble to distil


def test_two_critics_are_distilled_into_one_agent_network(tmp_path) -> None:
    from rcan.qtopt.agent import load_networks
    from rcan.qtopt.train import ENSEMBLE_AGENT_FILE, train

    run = tmp_path / "run"
    summary = train(make_args("tiny", out=str(run), seed=5, critics=2, distill_steps=3))
    assert summary["distill"]["critics"] == 2
    assert len(load_networks(run)[0]) == 1 and len(load_networks(run / ENSEMBLE_AGENT_FILE)[0]) == 2


def test_a_run_killed_before_its_first_checkpoint_is_started_again(tmp_path, monkeypatch, capsys) -> None:
    """Before its first checkpoint a run has written its config, TensorBoard folder and logs but nothing to
    resume: the same command without --resume takes the folder over (it was refused for good), with
    empty logs; anything else in the folder still makes it refuse."""
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    for name in ("episodes.jsonl", "progress.jsonl"):
        (run / name).write_text('{"leftover": 1}\n')
    with pytest.raises(FileNotFoundError, match="before its first checkpoint"):
        resolve_args(str(run), None, True, {})
    args = resolve_args(str(run), "tiny", False, {"collectors": 0, "env_steps": 40})
    Trainer(args).run()
    for name in ("episodes.jsonl", "progress.jsonl"):
        assert "leftover" not in (run / name).read_text(), name
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        resolve_args(str(tmp_path / "other"), "tiny", False, {})

    # Stopped by a signal: the command says how to go on and does not exit 0.
    import rcan.qtopt.train as qtrain

    stopped = {"finished": False, "recent_success": {}, "env_steps": 5, "grad_steps": 0, "minutes": 0.1}
    monkeypatch.setattr(qtrain, "train", lambda a: {**stopped, "agent": str(tmp_path / "s" / "agent.safetensors")})
    assert _cli_status(["train-agent", "--out", str(tmp_path / "s"), "--preset", "tiny"]) == 130
    assert "--resume" in capsys.readouterr().err


def test_an_rcan_run_resumes_only_with_its_generator(tmp_path) -> None:
    from rcan.adapt.inference import save_generator
    from rcan.adapt.networks import define_G

    torch.manual_seed(0)
    gen_file = tmp_path / "gen" / "generator.safetensors"
    save_generator(gen_file, define_G("tiny"), step=1)
    with pytest.raises(ValueError, match="translates 64x64 frames"):
        make_args("tiny", input="rcan", generator=str(gen_file), image_size=32)
    run = tmp_path / "run"
    Trainer(make_args("tiny", out=str(run), input="rcan", generator=str(gen_file), collectors=0)).save_checkpoint()
    Trainer(resolve_args(str(run), None, True, {}))  # the same file: fine
    save_generator(gen_file, define_G("tiny"), step=2)  # overwritten by a generator run that went on
    with pytest.raises(ValueError, match="not the generator"):
        Trainer(resolve_args(str(run), None, True, {}))


def test_a_batch_is_drawn_only_from_the_mix_s_buffers(tmp_path) -> None:
    """A finetuning run's collector may deliver a scripted episode before it has the agent's weights; the
    finetuning mix (real + policy) cannot sample it, so training must wait (it crashed on Ray)."""
    base = tmp_path / "base"
    Trainer(make_args("tiny", out=str(base), seed=1)).save_checkpoint()
    t = Trainer(make_args("tiny", out=str(tmp_path / "ft"), finetune_from=str(base), real_episodes=2))
    assert {name for name, _ in t.batch_mix()} == {"real", "policy"}
    t.replay.sizes = lambda: {"scripted": 40, "policy": 0, "real": 0}
    assert not t.ready()
    t.replay.sizes = lambda: {"scripted": 40, "policy": 0, "real": 3}
    assert t.ready()
