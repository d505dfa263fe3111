"""The policy object, the agent file, the evaluation protocol and the Wilson interval."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from rcan.qtopt.agent import QTOptPolicy, load_agent, load_network, load_networks, save_agent, state_images
from rcan.qtopt.cem import CEMConfig
from rcan.qtopt.evaluate import (
    evaluate_policy,
    protocol_scenes,
    reset_seeds,
    run_evaluation,
    save_frame_strip,
    wilson_interval,
)
from rcan.qtopt.network import QNetConfig, QNetwork

SMALL = QNetConfig(channels=(8, 8), strides=(4, 2), fuse_channels=6, head_channels=4, fc_hidden=8)


def _obs(rng: np.random.Generator) -> dict:
    return {
        "image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "gripper_closed": 0,
        "gripper_height": np.array([0.2], np.float32),
    }


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (70, 102, 0.5909, 0.7682)],
)
def test_wilson_interval_known_values(k: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_errors() -> None:
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


def test_policy_acts_and_agent_file_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    net = QNetwork(SMALL)
    policy = QTOptPolicy(net, CEMConfig(16, 4, 2), "canonical", seed=3)
    rng = np.random.default_rng(0)
    obs = _obs(rng)
    policy.reset({})
    a = policy.act(obs, {})
    assert a.shape == (6,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    path = save_agent(tmp_path / "run" / "agent.safetensors", net, "canonical", CEMConfig(16, 4, 2))
    loaded = load_agent(tmp_path / "run", seed=3)
    assert loaded.cem == CEMConfig(16, 4, 2) and loaded.input_mode == "canonical"
    np.testing.assert_array_equal(loaded.act(obs, {}), a)  # same weights, same CEM seed
    assert path.is_file()


def test_policy_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="6-channel"):
        QTOptPolicy(QNetwork(SMALL), input_mode="rcan")
    with pytest.raises(ValueError, match="generator"):
        QTOptPolicy(QNetwork(QNetConfig(in_channels=6)), input_mode="rcan")
    with pytest.raises(ValueError, match="unknown input mode"):
        QTOptPolicy(QNetwork(SMALL), input_mode="sepia")
    with pytest.raises(FileNotFoundError, match="no agent checkpoint"):
        load_agent(tmp_path / "nothing")
    (tmp_path / "agent.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError):
        load_agent(tmp_path / "agent.safetensors")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image": np.zeros((64, 64, 3), np.float32)}, "uint8"),
        ({"image": np.zeros((128, 128, 3), np.uint8)}, "64x64x3"),
        ({"image": np.zeros((64, 64, 4), np.uint8)}, "64x64x3"),
        ({"image": None}, "no 'image'"),
        ({"gripper_height": None}, "no 'gripper_height'"),
        ({"gripper_height": np.array([np.nan])}, "one finite number"),
        ({"gripper_closed": np.zeros(2)}, "one finite number"),
    ],
)
def test_policy_refuses_a_wrong_observation(change: dict, match: str) -> None:
    """A camera frame of another size or type, or a missing state, gets one clear message, never
    actions computed from a misread image."""
    policy = QTOptPolicy(QNetwork(SMALL), CEMConfig(8, 2, 1))
    obs = {**_obs(np.random.default_rng(0)), **change}
    obs = {k: v for k, v in obs.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        policy.act(obs, {})


def test_rcan_mode_concatenates_generator_output(tmp_path) -> None:
    from rcan.adapt.inference import save_generator
    from rcan.adapt.networks import define_G

    torch.manual_seed(0)
    gen = define_G("tiny").eval()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = state_images(images, "rcan", gen)
    assert x.shape == (2, 6, 64, 64) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 3:], images.transpose(0, 3, 1, 2))  # x itself after G(x)
    net = QNetwork(QNetConfig(**{**SMALL.__dict__, "in_channels": 6}))
    save_agent(tmp_path / "agent.safetensors", net, "rcan", CEMConfig(8, 2, 1))
    with pytest.raises(FileNotFoundError, match="generator"):
        load_agent(tmp_path)
    save_generator(tmp_path / "generator.safetensors", gen, step=0)  # found beside the agent
    policy = load_agent(tmp_path)
    assert policy.input_mode == "rcan" and policy.act(_obs(rng), {}).shape == (6,)


def test_an_rcan_agent_never_takes_a_changed_generator_for_its_own(tmp_path) -> None:
    """The agent records its generator's fingerprint: a generator file overwritten since (a resumed or
    retrained generator run) is refused unless passed explicitly."""
    from rcan.adapt.inference import generator_fingerprint, save_generator
    from rcan.adapt.networks import define_G

    torch.manual_seed(0)
    gen = define_G("tiny").eval()
    run = tmp_path / "gen"
    save_generator(run / "generator.safetensors", gen, step=10)
    net = QNetwork(QNetConfig(**{**SMALL.__dict__, "in_channels": 6}))
    extra = {"generator": str(run / "generator.safetensors"), "generator_id": generator_fingerprint(run)}
    save_agent(tmp_path / "agent" / "agent.safetensors", net, "rcan", CEMConfig(8, 2, 1), extra)
    assert load_agent(tmp_path / "agent").input_mode == "rcan"  # found at the recorded path, unchanged
    save_generator(run / "generator.safetensors", gen, step=20)  # the generator run went on
    with pytest.raises(ValueError, match="another generator"):
        load_agent(tmp_path / "agent")
    assert load_agent(tmp_path / "agent", generator=run).input_mode == "rcan"  # the user's explicit choice


def test_evaluate_protocol_with_tiny_agent(tmp_path) -> None:
    torch.manual_seed(0)
    save_agent(tmp_path / "agent" / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    r = run_evaluation(str(tmp_path / "agent"), "canonical", attempts=3, seed=1, out=str(tmp_path / "ev"))
    saved = json.loads((tmp_path / "ev" / "result.json").read_text())
    assert saved["attempts"] == 3 and 0 <= saved["successes"] <= 3
    lo, hi = saved["wilson95"]
    assert (lo, hi) == pytest.approx(wilson_interval(saved["successes"], 3))
    assert 5 <= len(saved["objects"]) <= 6 and all(len(a) == 2 for a in [saved["wilson95"]])
    assert (tmp_path / "ev" / "frames.png").is_file() and r["success_rate"] == saved["success_rate"]
    assert (tmp_path / "ev" / "closings.png").is_file() and saved["closings_png"].endswith("closings.png")
    assert saved["cem"] == {"samples": 8, "elites": 2, "iterations": 1}  # the agent's own
    r = run_evaluation(str(tmp_path / "agent"), "canonical", attempts=1, seed=1, out=str(tmp_path / "e2"), cem=CEMConfig(4, 2, 3))
    assert r["cem"] == {"samples": 4, "elites": 2, "iterations": 3}


def test_evaluate_command_prints_rate_failures_and_retries(tmp_path, capsys) -> None:
    from rcan.cli import main

    torch.manual_seed(0)
    save_agent(tmp_path / "agent" / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    argv = ["evaluate", "--agent", str(tmp_path / "agent"), "--domain", "canonical", "--attempts", "1"]
    assert main([*argv, "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "Wilson 95%" in out and "failures:" in out and "grasps per attempt:" in out
    closed = any("close_yaw_offset" in a for a in json.loads((tmp_path / "ev" / "result.json").read_text())["per_attempt"])
    assert ("closing yaw vs the wall-parallel yaw" in out) == closed


def test_evaluation_reuses_the_same_objects() -> None:
    class Lift:
        def reset(self, info: dict) -> None:
            pass

        def act(self, obs: dict, info: dict) -> np.ndarray:
            return np.array([0, 0, 0, 0, 1, 1], np.float32)  # close and end at once

    r = evaluate_policy(Lift(), "canonical", attempts=2, seed=4, strip_attempts=1)
    assert r["mean_steps"] == 1 and len(r["frames"]) == 1 and len(r["frames"][0]) == 2
    r2 = evaluate_policy(Lift(), "canonical", attempts=1, seed=4, strip_attempts=0)
    assert r2["objects"] == r["objects"]
    # Closing at the start pose, high above the tray: recorded, and counted by how far from objects.
    first = r["per_attempt"][0]
    assert first["close_height"] > 0.15 and first["close_distance"] >= 0
    failed = sum(not a["success"] for a in r["per_attempt"])
    assert sum(r["failures"].values()) == failed == 2
    assert r["object_split"] == "test"


def test_evaluation_on_training_objects() -> None:
    """``objects="train"`` draws the set from the training split (the generalization-gap diagnostic)."""
    from rcan.sim.grasp_env import GraspEnv

    class Lift:
        def reset(self, info: dict) -> None:
            pass

        def act(self, obs: dict, info: dict) -> np.ndarray:
            return np.array([0, 0, 0, 0, 1, 1], np.float32)

    r = evaluate_policy(Lift(), "canonical", attempts=1, seed=4, strip_attempts=0, objects="train")
    env = GraspEnv(object_split="train", render_observation=False)
    train_names = {o.name for o in env.objects}
    env.close()
    assert r["object_split"] == "train" and set(r["objects"]) <= train_names
    test = evaluate_policy(Lift(), "canonical", attempts=1, seed=4, strip_attempts=0)
    assert not set(test["objects"]) & train_names
    with pytest.raises(ValueError, match="objects must be"):
        evaluate_policy(Lift(), "canonical", attempts=1, objects="val")


def test_evaluation_records_the_last_closing() -> None:
    """An agent that closes high above the tray, reopens and goes down is judged by the grasp it lifts."""

    class CloseHighThenLow:
        def reset(self, info: dict) -> None:
            self.t = 0

        def act(self, obs: dict, info: dict) -> np.ndarray:
            self.t += 1
            if self.t == 1:
                return np.array([0, 0, 0, 0, 1, -1], np.float32)  # close at the start pose
            if self.t <= 5:
                return np.array([0, 0, -1, 0, -1, -1], np.float32)  # open and go down
            return np.array([0, 0, 0, 0, 1, 1], np.float32)  # close again and end

    r = evaluate_policy(CloseHighThenLow(), "canonical", attempts=1, seed=4, strip_attempts=0)
    assert r["per_attempt"][0]["steps"] == 6
    assert r["per_attempt"][0]["close_height"] < 0.15  # the low closing, not the first one (~0.24 m)
    assert r["per_attempt"][0]["grasps"] == 2  # it reopened and grasped again
    assert r["retries"]["attempts_with_retries"] == 1 and r["retries"]["mean_grasps"] == 2.0


def test_retry_summary_and_grasp_count() -> None:
    from rcan.qtopt.collectors import count_grasps
    from rcan.qtopt.evaluate import retry_summary

    attempts = [
        {"success": True, "grasps": 1},
        {"success": True, "grasps": 3},
        {"success": False, "grasps": 2},
        {"success": False, "grasps": 0},
    ]
    assert retry_summary(attempts) == {"mean_grasps": 1.5, "attempts_with_retries": 2, "successes_after_a_retry": 1}
    # closed flags before each action, and the gripper action: a close while closed is no new grasp
    closed = np.array([0, 1, 1, 0, 1], np.float32)
    gripper = np.array([1.0, 1.0, -1.0, 0.5, 1.0], np.float32)
    assert count_grasps(closed, gripper) == 2


def test_failure_breakdown_kinds() -> None:
    from rcan.qtopt.evaluate import failure_breakdown

    attempts = [
        {"success": True, "close_distance": 0.01},
        {"success": False},
        {"success": False, "close_distance": 0.08},
        {"success": False, "close_distance": 0.02},
        {"success": False, "close_distance": 0.025},
    ]
    assert failure_breakdown(attempts) == {
        "never_closed": 1,
        "closed_away_from_objects": 1,
        "closed_at_an_object": 2,
    }


def test_evaluate_errors(tmp_path, monkeypatch) -> None:
    import rcan.qtopt.evaluate as ev

    monkeypatch.setattr(ev, "ASSET_AGENT", tmp_path / "assets" / "agent")
    with pytest.raises(FileNotFoundError, match="shipped agent"):
        run_evaluation(None, "canonical", attempts=1)
    with pytest.raises(ValueError, match="unknown domain"):
        run_evaluation(None, "sepia", attempts=1)
    with pytest.raises(ValueError, match="attempts"):
        evaluate_policy(None, "canonical", attempts=0)
    assert save_frame_strip(tmp_path / "s.png", [], []).is_file()


def test_evaluate_cem_option() -> None:
    from rcan.qtopt.commands import _parse_cem

    assert _parse_cem(None) is None
    assert _parse_cem("128,10,3") == CEMConfig(128, 10, 3)
    for bad in ("64,6", "a,b,c", "64,6,3,1"):
        with pytest.raises(ValueError, match="SAMPLES,ELITES,ITERATIONS"):
            _parse_cem(bad)
    with pytest.raises(ValueError, match="elites"):
        _parse_cem("4,6,2")


def test_wall_yaw_offset_follows_the_closing_yaw() -> None:
    """The diagnostic measures the yaw the action closes at against the wall-parallel one, folded to 0-90."""
    import math

    from rcan.qtopt.evaluate import wall_yaw_offset
    from rcan.sim.grasp_env import GraspEnv
    from rcan.sim.scripted import wall_parallel_yaw

    env = GraspEnv(image_size=16, object_split="test", render_observation=False)
    try:
        env.reset(seed=3)
        close = np.array([0, 0, 0, 0, 1, 1], np.float32)
        point = env.commanded_point(close)[:2]
        best = wall_parallel_yaw(point, env.cell.config.tray_inner_half, env.cell.divider_x)
        for turn_deg in (0.0, 20.0, 75.0):
            env.cell.gripper.teleport(env.gripper_state()["tool"], best + math.radians(turn_deg))
            env._yaw = env.cell.gripper.target_yaw
            assert wall_yaw_offset(env, close) == pytest.approx(turn_deg, abs=1e-6)
        # the action's own rotation counts, and a half turn is the same gripper
        env.cell.gripper.teleport(env.gripper_state()["tool"], best + math.pi - math.radians(15.0))
        env._yaw = env.cell.gripper.target_yaw
        turned = close.copy()
        turned[3] = 1.0  # +15 degrees
        assert wall_yaw_offset(env, turned) == pytest.approx(0.0, abs=1e-6)
        assert wall_yaw_offset(env, close) == pytest.approx(15.0, abs=1e-6)
    finally:
        env.close()


def test_yaw_summary() -> None:
    from rcan.qtopt.evaluate import yaw_summary

    attempts = [
        {"success": True, "close_yaw_offset": 10.0},
        {"success": True, "close_yaw_offset": 50.0},
        {"success": False, "close_yaw_offset": 80.0},
        {"success": False, "close_yaw_offset": 20.0},
        {"success": False},  # never closed: no yaw
    ]
    assert yaw_summary(attempts) == {
        "mean_offset_successes": 30.0,
        "mean_offset_failures": 50.0,
        "closings_within_30": 2,
        "success_within_30": 0.5,
        "success_beyond_30": 0.5,
    }
    assert yaw_summary([{"success": False}])["mean_offset_failures"] is None


def test_shifted_views_move_the_content() -> None:
    from rcan.qtopt.agent import VIEW_SHIFTS, shifted_views

    img = torch.zeros(1, 3, 16, 16)
    img[0, :, 8, 5] = 255.0  # one bright pixel at x=5, y=8
    views = shifted_views(img, len(VIEW_SHIFTS))
    assert views.shape == (len(VIEW_SHIFTS), 3, 16, 16)
    for view, (dx, dy) in zip(views, VIEW_SHIFTS, strict=True):
        ys, xs = torch.nonzero(view[0] > 0, as_tuple=True)
        assert (xs.tolist(), ys.tolist()) == ([5 + dx], [8 + dy])
    assert shifted_views(img, 1) is img


def test_policy_averages_q_over_shifted_views() -> None:
    from rcan.qtopt.agent import shifted_views

    torch.manual_seed(0)
    net = QNetwork(SMALL).eval()
    obs = _obs(np.random.default_rng(1))
    one = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3)
    five = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3, view_shifts=5)
    image, state = five.prepare(obs)
    a5, q5 = five.act_prepared(image, state)
    # the score it maximized: the mean logit of the five views at the chosen action
    views = shifted_views(torch.from_numpy(image)[None], 5)
    with torch.no_grad():
        logits = net(views, torch.from_numpy(state)[None].expand(5, -1), torch.from_numpy(a5)[None, None].expand(5, 1, 6))
    assert q5 == pytest.approx(float(torch.sigmoid(logits.mean())), abs=1e-5)
    _, q1 = one.act_prepared(image, state)
    assert q1 != pytest.approx(q5, abs=1e-7)
    with pytest.raises(ValueError, match="view_shifts"):
        QTOptPolicy(net, view_shifts=10)


def test_rerank_rescores_the_one_view_search_on_all_views() -> None:
    from rcan.qtopt.agent import shifted_views

    torch.manual_seed(0)
    net = QNetwork(SMALL).eval()
    obs = _obs(np.random.default_rng(4))
    one = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3)
    image, state = one.prepare(obs)
    views = shifted_views(torch.from_numpy(image)[None], 5)

    def mean_logit(action: np.ndarray) -> float:
        a = torch.from_numpy(action)[None, None].expand(5, 1, 6)
        with torch.no_grad():
            return float(net(views, torch.from_numpy(state)[None].expand(5, -1), a).mean())

    a1, _ = one.act_prepared(image, state)
    for m in (1, 4, 32):
        rr = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3, view_shifts=5, rerank=m)
        a, q = rr.act_prepared(image, state)
        assert q == pytest.approx(float(torch.sigmoid(torch.tensor(mean_logit(a)))), abs=1e-5)  # the 5-view score
        if m == 1:  # re-scoring one candidate keeps the one-view search's choice
            np.testing.assert_allclose(a, a1, atol=1e-6)
        else:  # the one-view choice is among the re-scored ones, so the pick scores at least as well on 5 views
            assert mean_logit(a) >= mean_logit(a1) - 1e-5
    # without shifted views re-ranking is the plain search
    plain = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3, rerank=8)
    np.testing.assert_allclose(plain.act_prepared(image, state)[0], a1, atol=1e-6)
    with pytest.raises(ValueError, match="rerank"):
        QTOptPolicy(net, rerank=-1)


def test_act_prepared_holds_fixed_dimensions_and_can_draw_from_another_generator() -> None:
    torch.manual_seed(0)
    net = QNetwork(SMALL).eval()
    obs = _obs(np.random.default_rng(6))
    for rerank, views in ((0, 1), (8, 5)):
        policy = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3, view_shifts=views, rerank=rerank)
        twin = QTOptPolicy(net, CEMConfig(16, 4, 2), seed=3, view_shifts=views, rerank=rerank)
        image, state = policy.prepare(obs)
        a, q = policy.act_prepared(image, state, fixed={4: 1.0, 5: 1.0}, generator=torch.Generator().manual_seed(9))
        assert a[4] == 1.0 and a[5] == 1.0 and 0.0 < q < 1.0
        with torch.no_grad():  # its Q is the critic's for the action returned, held dimensions included
            logit = net(torch.from_numpy(image)[None], torch.from_numpy(state)[None], torch.from_numpy(a)[None])
        if views == 1:
            assert q == pytest.approx(float(torch.sigmoid(logit[0])), abs=1e-5)
        # the policy's own stream was not drawn from: its next action is its twin's
        np.testing.assert_array_equal(policy.act_prepared(image, state)[0], twin.act_prepared(image, state)[0])
    with pytest.raises(ValueError, match="fixed action dimensions"):
        policy.act_prepared(image, state, fixed={6: 1.0})


def test_ensemble_averages_the_critics(tmp_path) -> None:
    torch.manual_seed(0)
    a, b = QNetwork(SMALL).eval(), QNetwork(SMALL).eval()
    obs = _obs(np.random.default_rng(2))
    both = QTOptPolicy(a, CEMConfig(16, 4, 2), seed=5, ensemble=[b])
    image, state = both.prepare(obs)
    act, q = both.act_prepared(image, state)
    img, st, c = torch.from_numpy(image)[None], torch.from_numpy(state)[None], torch.from_numpy(act)[None, None]
    with torch.no_grad():
        mean_logit = (a(img, st, c) + b(img, st, c)) / 2
    assert q == pytest.approx(float(torch.sigmoid(mean_logit)), abs=1e-5)
    # two copies of one critic act exactly as that critic alone
    twice = QTOptPolicy(a, CEMConfig(16, 4, 2), seed=5, ensemble=[a])
    alone = QTOptPolicy(a, CEMConfig(16, 4, 2), seed=5)
    np.testing.assert_allclose(twice.act_prepared(image, state)[0], alone.act_prepared(image, state)[0], atol=1e-6)
    with pytest.raises(ValueError, match="same images"):
        QTOptPolicy(a, ensemble=[QNetwork(QNetConfig(in_channels=6))])
    save_agent(tmp_path / "a" / "agent.safetensors", a, "canonical", CEMConfig(16, 4, 2))
    save_agent(tmp_path / "b" / "agent.safetensors", b, "canonical", CEMConfig(16, 4, 2))
    loaded = load_agent(tmp_path / "a", seed=5, ensemble=[tmp_path / "b" / "agent.safetensors"])
    assert len(loaded.networks) == 2
    np.testing.assert_allclose(loaded.act_prepared(image, state)[0], act, atol=1e-6)
    rcan_net = QNetwork(dataclasses.replace(SMALL, in_channels=6))
    save_agent(tmp_path / "c" / "agent.safetensors", rcan_net, "rcan", CEMConfig(16, 4, 2))
    with pytest.raises(ValueError, match="input_mode"):
        load_agent(tmp_path / "a", ensemble=[tmp_path / "c" / "agent.safetensors"])


def test_search_with_one_critic_rescores_on_all() -> None:
    torch.manual_seed(1)
    a, b = QNetwork(SMALL).eval(), QNetwork(SMALL).eval()
    image = np.random.default_rng(4).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    state = np.array([0.0, 0.15], np.float32)
    cem = CEMConfig(16, 4, 2)

    def mean_logit(act: np.ndarray) -> float:
        img, st = torch.from_numpy(image)[None], torch.from_numpy(state)[None]
        c = torch.from_numpy(act)[None, None]
        with torch.no_grad():
            return float((a(img, st, c) + b(img, st, c)).squeeze() / 2)

    alone, _ = QTOptPolicy(a, cem, seed=5).act_prepared(image, state)
    cheap = QTOptPolicy(a, cem, seed=5, ensemble=[b], rerank=8, search_critics=1)
    act, q = cheap.act_prepared(image, state)
    assert q == pytest.approx(float(torch.sigmoid(torch.tensor(mean_logit(act)))), abs=1e-5)
    assert mean_logit(act) >= mean_logit(alone) - 1e-5  # a's own pick is among the re-scored ones
    # searching with every critic is the plain ensemble, whatever rerank says
    full = QTOptPolicy(a, cem, seed=5, ensemble=[b], rerank=8, search_critics=2)
    plain = QTOptPolicy(a, cem, seed=5, ensemble=[b])
    np.testing.assert_allclose(full.act_prepared(image, state)[0], plain.act_prepared(image, state)[0], atol=1e-6)
    with pytest.raises(ValueError, match="search_critics"):
        QTOptPolicy(a, search_critics=-1)


def test_agent_file_carries_its_ensemble_members(tmp_path) -> None:
    torch.manual_seed(3)
    a, b, c = QNetwork(SMALL), QNetwork(SMALL), QNetwork(SMALL)
    path = save_agent(tmp_path / "e" / "agent.safetensors", a, "canonical", CEMConfig(16, 4, 2), members=[b, c])
    nets, meta = load_networks(path)
    assert meta["members"] == "2" and len(nets) == 3
    for want, got in zip((a, b, c), nets, strict=True):
        for k, v in want.state_dict().items():
            assert torch.equal(v, got.state_dict()[k])
    assert torch.equal(load_network(path)[0].state_dict()["fc.2.weight"], a.state_dict()["fc.2.weight"])
    # acting with the file is acting with its critics as an ensemble, plus any given on the command line
    image = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    state = np.array([0.0, 0.2], np.float32)
    loaded = load_agent(path, seed=5)
    assert len(loaded.networks) == 3
    direct = QTOptPolicy(a, CEMConfig(16, 4, 2), seed=5, ensemble=[b, c])
    np.testing.assert_allclose(loaded.act_prepared(image, state)[0], direct.act_prepared(image, state)[0], atol=1e-6)
    save_agent(tmp_path / "d" / "agent.safetensors", a, "canonical", CEMConfig(16, 4, 2))
    assert len(load_agent(tmp_path / "d", ensemble=[path]).networks) == 4
    with pytest.raises(ValueError, match="config"):
        save_agent(tmp_path / "x.safetensors", a, "canonical", CEMConfig(), members=[QNetwork(dataclasses.replace(SMALL, fc_hidden=SMALL.fc_hidden + 8))])
    # a file whose member weights do not match what it records is refused with one clear message
    from rcan.common.checkpoint import load_safetensors, save_safetensors_atomic

    tensors, meta = load_safetensors(path)
    save_safetensors_atomic(tmp_path / "bad.safetensors", tensors, {**meta, "members": "1"})
    with pytest.raises(ValueError, match="member 2"):
        load_networks(tmp_path / "bad.safetensors")
    del tensors["member1.fc.2.weight"]
    save_safetensors_atomic(tmp_path / "bad2.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="member 1"):
        load_networks(tmp_path / "bad2.safetensors")


def test_agent_file_carries_its_view_shifts_and_rerank(tmp_path) -> None:
    from rcan.qtopt.args import args_from_json, make_args

    net = QNetwork(SMALL)
    meta = {"view_shifts": "5", "rerank": "8"}
    save_agent(tmp_path / "a" / "agent.safetensors", net, "canonical", CEMConfig(16, 4, 2), meta)
    a = load_agent(tmp_path / "a")
    assert (a.view_shifts, a.rerank) == (5, 8)  # the file's own
    a = load_agent(tmp_path / "a", view_shifts=1, rerank=0)
    assert (a.view_shifts, a.rerank) == (1, 0)  # an explicit choice wins
    save_agent(tmp_path / "b" / "agent.safetensors", net, "canonical", CEMConfig(16, 4, 2))
    b = load_agent(tmp_path / "b")
    assert (b.view_shifts, b.rerank) == (1, 0)  # files from before the options
    for key in ("view_shifts", "rerank"):
        bad_meta = {**meta, key: "x"}
        save_agent(tmp_path / key / "agent.safetensors", net, "canonical", CEMConfig(16, 4, 2), bad_meta)
        with pytest.raises(ValueError, match=key):
            load_agent(tmp_path / key)
    args = make_args("tiny")
    assert (args.view_shifts, args.rerank) == (5, 16)  # the default acting mode of a trained agent
    assert make_args("tiny", view_shifts=3, rerank=0).view_shifts == 3
    for bad in (0, 10):
        with pytest.raises(ValueError, match="view_shifts"):
            make_args("tiny", view_shifts=bad)
    with pytest.raises(ValueError, match="rerank"):
        make_args("tiny", rerank=-1)
    old = args_from_json('{"input": "canonical"}')  # a run saved before the options acted with one view
    assert (old.view_shifts, old.rerank) == (1, 0)


def test_protocol_scenes_replay_the_evaluation_resets() -> None:
    """Probes that drive the env themselves see the scenes ``rcan evaluate`` sees."""
    policy = QTOptPolicy(QNetwork(SMALL), CEMConfig(8, 2, 1))
    seen = [(rs, obs["image"].shape) for _, obs, _, rs in protocol_scenes(policy, 3, 2)]
    assert [rs for rs, _ in seen] == reset_seeds(3, 2) and seen[0][1] == (64, 64, 3)


def test_protocol_first_closings_stop_before_the_first_close_and_end() -> None:
    from rcan.qtopt.evaluate import protocol_first_closings

    class ClosesAtSecond:
        network, camera = QNetwork(SMALL), "wide"

        def reset(self, info=None) -> None:
            self.calls = 0

        def act(self, obs, info=None) -> np.ndarray:
            self.calls += 1
            return np.array([0, 0, -1, 0, 1, 1] if self.calls == 2 else [0, 0, -1, 0, -1, -1], np.float32)

    got = [(env._step, a[4], a[5], rs) for env, _, _, rs, a in protocol_first_closings(ClosesAtSecond(), 3, 2)]
    assert got == [(1, 1.0, 1.0, rs) for rs in reset_seeds(3, 2)]  # one step taken, the closing not
    assert list(protocol_first_closings(ClosesAtSecond(), 3, 2, steps_left=19)) == []  # too late: skipped
