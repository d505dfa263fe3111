"""The grasping cell as a Gymnasium environment: API, determinism, paired rendering, physics sanity."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import rcan  # noqa: F401  (registers rcan/Grasp-v0)
from rcan.sim.domains import DOMAINS
from rcan.sim.grasp_env import GraspEnv
from rcan.sim.scene import DIVIDER, OBJECT, ROBOT, TRAY
from rcan.sim.scripted import ScriptedGraspPolicy, oracle_grasp, wall_parallel_yaw


def _actions(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
    a[:, 5] = -1.0  # never terminate early
    return a


@pytest.fixture(scope="module")
def env():
    e = GraspEnv()
    yield e
    e.close()


def test_make_and_check_env():
    env = gym.make("rcan/Grasp-v0")
    check_env(env.unwrapped, skip_render_check=False)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["gripper_closed"] in (0, 1)
    assert obs["gripper_height"].shape == (1,)
    assert obs["gripper_opening"].shape == (1,)
    assert {"tool", "yaw"} <= set(info)
    env.close()


def test_the_gripper_opening_reads_open_empty_and_held():
    """The position encoder's reading: the full gap when open, ~0 once closed on nothing, an object's width
    when it holds one (what the grasp check's ``empty_opening`` relies on)."""
    e = GraspEnv()
    try:
        obs, _ = e.reset(seed=3)
        assert obs["gripper_opening"][0] == pytest.approx(e.cell.gripper.geometry.max_opening, abs=1e-3)
        stay_closed = np.array([0, 0, 0, 0, 1, -1], np.float32)  # closes high above the tray: on nothing
        for _ in range(3):
            obs, *_ = e.step(stay_closed)
        assert obs["gripper_opening"][0] < 0.005
        lift = np.array([0, 0, 1, 0, 1, -1], np.float32)
        for seed in range(21, 41):  # aimed scripted grasps until one holds an object two steps up
            _, _, a = _run_to_closing(e, seed)
            obs, *_ = e.step(np.append(a[:5], -1.0).astype(np.float32))
            for _ in range(2):
                obs, _, _, _, info = e.step(lift)
            if info["holding"] and e.cell.object_min_z().max() > 0.05:
                assert obs["gripper_opening"][0] > 0.01
                break
        else:
            pytest.fail("no aimed grasp held an object")
    finally:
        e.close()


def test_seeded_determinism():
    a, b = GraspEnv(), GraspEnv()
    try:
        oa, _ = a.reset(seed=11)
        ob, _ = b.reset(seed=11)
        assert np.array_equal(oa["image"], ob["image"])
        for act in _actions(6):
            oa, ra, *_ = a.step(act)
            ob, rb, *_ = b.step(act)
            assert np.array_equal(oa["image"], ob["image"]) and ra == rb
        assert np.array_equal(a.sim_state(), b.sim_state())
        oc, _ = a.reset(seed=12)
        assert not np.array_equal(oc["image"], ob["image"])
    finally:
        a.close()
        b.close()


def test_object_pixels_label_where_the_objects_are() -> None:
    """``object_pixels``: one grasp point per object, on that object's pixels in the segmentation (the arm
    may hide one), in reset's and step's info."""
    size = 96
    env = GraspEnv(image_size=size)
    try:
        obs, info = env.reset(seed=4)
        for _ in range(2):
            pts = info["object_pixels"]
            assert pts.shape == (5, 2) and pts.dtype == np.float32 and np.all(np.abs(pts) < 1)
            seg = env.render_style(env._style, aux=True).segmentation
            cols, rows = ((pts + 1) / 2 * size - 0.5).round().astype(int).T
            on = [
                (seg[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2] == OBJECT).any()
                for r, c in zip(rows, cols, strict=True)
            ]
            assert sum(on) >= 4, on
            obs, _, _, _, info = env.step(np.array([0.5, 0.5, 0.0, 0.0, -1.0, -1.0]))
    finally:
        env.close()


def test_finger_pixels_label_where_the_move_put_the_fingers(env) -> None:
    """``finger_pixels``: the two fingertips in the step's input image once the move is done, open even
    when the step closes; their midpoint is where the fingertips' centre appears."""
    obs, info = env.reset(seed=5)
    tips = env.cell.gripper.fingertip_positions()
    assert np.linalg.norm(tips[0] - tips[1]) == pytest.approx(0.107, abs=0.005)  # 9.5 cm opening + a finger
    np.testing.assert_allclose(tips.mean(axis=0), env.cell.gripper.tool_position(), atol=2e-3)
    obs, _, _, _, info = env.step(np.array([0.5, -0.5, -1.0, 0.3, -1.0, -1.0]))
    f = info["finger_pixels"].reshape(2, 2)
    assert info["finger_pixels"].dtype == np.float32
    np.testing.assert_allclose(f.mean(axis=0), info["tool_pixel"], atol=0.02)  # same pose, same camera
    assert np.linalg.norm(f[0] - f[1]) > 0.25  # open: ~9.5 cm apart, ~10-12 of the 64 pixels
    _, _, _, _, info = env.step(np.array([0.0, 0.0, -1.0, 0.0, 1.0, -1.0]))  # move down, then close
    assert np.linalg.norm(info["finger_pixels"][:2] - info["finger_pixels"][2:]) > 0.25  # labelled open


def test_wall_yaw_sign_labels_the_commanded_point(env) -> None:
    """``wall_yaw_sign`` in step's info: +1 where the wall-parallel yaw at the point the move commanded is
    0, -1 where it is 90 degrees; next to a side wall (x) it is +1, next to the near wall (y) -1."""
    from rcan.sim.scripted import wall_parallel_yaw

    env.reset(seed=2)
    ix, iy = env.cell.config.tray_inner_half
    for action in (np.array([0.3, -0.2, -0.5, 0.0, -1.0, -1.0]), np.array([-1.0, 1.0, 0.0, 0.0, -1.0, -1.0])):
        point = env.commanded_point(action)[:2]
        _, _, _, _, info = env.step(action)
        best = wall_parallel_yaw(point, (ix, iy), env.cell.divider_x)
        assert info["wall_yaw_sign"] == (1.0 if best == 0.0 else -1.0)
    env.cell.place_divider(0.0)
    assert env.wall_yaw_sign(np.array([ix - 0.01, 0.0])) == 1.0  # fingers along y: off the side wall
    assert env.wall_yaw_sign(np.array([-0.1, iy - 0.01])) == -1.0  # fingers along x: off the far wall


@pytest.mark.parametrize("domain", ["heavy", "real"])
def test_rendering_never_changes_the_simulation(domain):
    plain, watched = GraspEnv(domain="canonical"), GraspEnv(domain=domain)
    try:
        plain.reset(seed=5)
        watched.reset(seed=5)
        for act in _actions(8, seed=1):
            plain.step(act)
            watched.render_pair()
            watched.render()
            watched.step(act)
            watched.render_pair("mild")
        assert np.array_equal(plain.sim_state(), watched.sim_state())
    finally:
        plain.close()
        watched.close()


def test_render_pair_contents(env):
    env.reset(seed=2)
    env.step(np.array([0, 0, -1, 0, -1, -1], dtype=np.float32))
    pair = env.render_pair()
    assert set(pair) == {"randomized", "canonical", "segmentation", "depth"}
    assert pair["randomized"].shape == pair["canonical"].shape == (64, 64, 3)
    assert pair["randomized"].dtype == pair["canonical"].dtype == np.uint8
    assert pair["segmentation"].shape == (64, 64) and pair["segmentation"].dtype == np.uint8
    assert pair["depth"].shape == (64, 64) and pair["depth"].dtype == np.float32
    classes = set(np.unique(pair["segmentation"]).tolist())
    assert {TRAY, DIVIDER, ROBOT, OBJECT} <= classes <= {0, 1, 2, 3, 4}
    assert np.all(np.isfinite(pair["depth"])) and 0.1 < pair["depth"].min() < pair["depth"].max() < 3.0
    # Objects lie inside the tray: nearer than the floor beyond its far wall (the top rows of the frame),
    # and within the range of depths the tray itself spans.
    seg, depth = pair["segmentation"], pair["depth"]
    far_floor = depth[:4][seg[:4] == 0]
    assert far_floor.size and np.median(depth[seg == OBJECT]) < far_floor.min()
    tray = depth[seg == TRAY]
    assert tray.min() < np.median(depth[seg == OBJECT]) < tray.max()
    assert not np.array_equal(pair["randomized"], pair["canonical"])
    # Pairs are reproducible per episode and differ from call to call.
    second = env.render_pair()
    assert not np.array_equal(second["randomized"], pair["randomized"])


def test_pairs_reproducible_across_envs():
    a, b = GraspEnv(), GraspEnv()
    try:
        a.reset(seed=9)
        b.reset(seed=9)
        b.render_pair()  # extra calls on b shift only b's later pairs, never the physics
        pa, pb_ = a.render_pair(), a.render_pair()
        b.reset(seed=9)
        qa, qb = b.render_pair(), b.render_pair()
        for k in pa:
            assert np.array_equal(pa[k], qa[k]) and np.array_equal(pb_[k], qb[k])
    finally:
        a.close()
        b.close()


def test_domains_look_different_and_switch(env):
    env.reset(seed=4)
    rng = np.random.default_rng(0)
    images = {d: env.render_style(env.sample_style(d, rng)).rgb.astype(int) for d in DOMAINS}
    for i, d in enumerate(DOMAINS):
        for e in DOMAINS[i + 1 :]:
            assert np.abs(images[d] - images[e]).mean() > 3.0, (d, e)
    obs, _ = env.reset(seed=4, options={"domain": "heavy"})
    assert env.domain == "heavy"
    env.set_domain("canonical")
    obs2, _ = env.reset(seed=4)
    assert not np.array_equal(obs["image"], obs2["image"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"domain": "cartoon"}, "unknown domain"),
        ({"image_size": 0}, "image_size"),
        ({"object_split": "val"}, "object_split"),
        ({"num_objects": 0}, "num_objects"),
        ({"pair_domain": "x"}, "pair_domain"),
        ({"camera": "fisheye"}, "unknown camera"),
        # Physical scales that would run and give wrong results (no physics, everything a success, NaN).
        ({"time_step": 0.0}, "time_step"),
        ({"success_height": -1.0}, "success_height"),
        ({"max_translation": float("nan")}, "max_translation"),
        ({"max_rotation": -0.2}, "max_rotation"),
        ({"label_objects": True, "render_observation": False}, "label_objects"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraspEnv(**kwargs)


def test_unknown_reset_options_are_refused():
    env = GraspEnv(image_size=16, render_observation=False)
    try:
        with pytest.raises(ValueError, match="unknown reset options"):
            env.reset(seed=0, options={"domian": "heavy"})
        env.reset(seed=0, options={})
    finally:
        env.close()


def test_worlds_built_from_threads_leave_the_process_output_alone():
    """PyBullet's connection banner is silenced by pointing fds 1 and 2 at /dev/null for a moment; threads
    doing it at once must not leave them there for good."""
    import os
    import threading

    from rcan.sim.bullet import new_client

    def connect() -> None:
        for _ in range(5):
            new_client().disconnect()

    before = [os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)]
    threads = [threading.Thread(target=connect) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)] == before


def test_tray_camera_zooms_onto_the_tray_and_leaves_the_physics_alone():
    """``camera="tray"`` shows the same scene with more pixels on the tray and its objects; the physics of a
    seeded episode and the labels' consistency with the frame do not depend on the camera."""
    counts, states = {}, {}
    for camera in ("wide", "tray"):
        env = GraspEnv(camera=camera)
        try:
            obs, info = env.reset(seed=4)
            seg = env.render_style(env._style, aux=True).segmentation
            counts[camera] = ((seg == TRAY).sum(), (seg == OBJECT).sum())
            for a in _actions(4, seed=2):
                obs, _, done, _, info = env.step(a)
            tool = env.cell.gripper.tool_position()
            np.testing.assert_allclose(info["tool_pixel"], env.project(tool[None])[0], atol=1e-6)
            states[camera] = env.sim_state()
        finally:
            env.close()
    np.testing.assert_array_equal(states["wide"], states["tray"])
    assert counts["tray"][0] > 1.5 * counts["wide"][0] and counts["tray"][1] > 1.5 * counts["wide"][1], counts


def test_empty_texture_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no PNG/JPEG|no image"):
        GraspEnv(domain="heavy", texture_dir=str(tmp_path))


def test_user_texture_dir(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i + 30, np.uint8)).save(tmp_path / f"t{i}.png")
    env = GraspEnv(domain="heavy", texture_dir=str(tmp_path))
    try:
        obs, _ = env.reset(seed=0)
        assert obs["image"].shape == (64, 64, 3)
    finally:
        env.close()


def test_bad_action_and_step_before_reset():
    env = GraspEnv()
    try:
        with pytest.raises(RuntimeError):
            env.step(np.zeros(6))
        env.reset(seed=0)
        with pytest.raises(ValueError):
            env.step(np.zeros(5))
        with pytest.raises(ValueError):
            env.step(np.array([np.nan] * 6))
    finally:
        env.close()


def test_episode_ends_and_rewards(env):
    env.reset(seed=1)
    total, steps, done = 0.0, 0, False
    info = {}
    while not done:
        _, r, done, trunc, info = env.step(np.array([0.5, 0.5, 0, 0, -1, -1], dtype=np.float32))
        total += r
        steps += 1
        assert not trunc
    assert steps == env.max_steps and info["is_success"] is False
    assert total == pytest.approx(-0.05 * steps)
    env.reset(seed=1)
    _, r, done, _, info = env.step(np.array([0, 0, 0, 0, -1, 1], dtype=np.float32))
    assert done and r == pytest.approx(-0.05) and info["is_success"] is False


def test_aimed_grasps_mostly_succeed():
    """Physics sanity: descending onto an object, fingers parallel to the nearest wall, and closing lifts
    it far more often than a random grasp (~15%); ~80% over larger samples (benchmarks/)."""
    env = GraspEnv(object_family="procedural")
    wins = 0
    try:
        for ep in range(10):
            obs, info = env.reset(seed=100 + ep)
            pol = ScriptedGraspPolicy(np.random.default_rng(ep), tray_half=env.cell.config.tray_inner_half)
            pol.reset(info)
            pol.goal, pol.goal_yaw = oracle_grasp(env.cell, env.cell.object_bodies[ep % env.num_objects])
            done = False
            while not done:
                obs, _, done, _, info = env.step(pol.act(obs, info))
            wins += bool(info["is_success"])
    finally:
        env.close()
    assert wins >= 6, wins


def test_aimed_scripted_exploration_closes_on_objects(env):
    """``aim_prob=1`` sends every scripted episode to an object's centre (from ``reset``'s privileged
    ``objects_xy``); ``aim_prob=0`` draws exactly the goals of the paper's random policy (no extra draws)."""
    half = env.cell.config.tray_inner_half
    obs, info = env.reset(seed=11)
    assert np.allclose(info["objects_xy"], env.object_positions()[:, :2], atol=1e-6)
    aimed = ScriptedGraspPolicy(np.random.default_rng(0), tray_half=half, aim_prob=1.0, aim_noise=0.0)
    plain = ScriptedGraspPolicy(np.random.default_rng(0), tray_half=half)
    gaps, wins = [], {"aimed": 0, "plain": 0}
    for ep in range(12):
        for name, pol in (("aimed", aimed), ("plain", plain)):
            obs, info = env.reset(seed=200 + ep)
            pol.reset(info)
            if name == "aimed":
                gaps.append(np.min(np.linalg.norm(info["objects_xy"] - pol.goal, axis=1)))
            done = False
            while not done:
                obs, _, done, _, info = env.step(pol.act(obs, info))
            wins[name] += bool(info["is_success"])
    assert max(gaps) < 1e-6  # exactly an object's centre (no noise; centres are never within 1 cm of a wall)
    assert wins["aimed"] > wins["plain"], wins
    legacy, rng = ScriptedGraspPolicy(np.random.default_rng(5), tray_half=half, aim_prob=0.0), np.random.default_rng(5)
    for _ in range(3):
        legacy.reset(info)
        m = legacy.margin
        assert np.array_equal(legacy.goal, rng.uniform([-half[0] + m, -half[1] + m], [half[0] - m, half[1] - m]))
        assert legacy.goal_yaw == rng.uniform(-np.pi / 2, np.pi / 2)
    with pytest.raises(KeyError, match="objects_xy"):
        ScriptedGraspPolicy(np.random.default_rng(0), tray_half=half, aim_prob=1.0).reset({"tool": np.zeros(3)})
    with pytest.raises(ValueError, match="aim_prob"):
        ScriptedGraspPolicy(np.random.default_rng(0), aim_prob=1.5)


def test_scripted_retry_reopens_only_an_empty_grasp_with_steps_to_spare():
    """After the lift, the scripted policy reopens (gripper <= 0, no terminate) and moves on to a new goal
    only when nothing is held, ``retry_prob`` says so and ``retry_steps`` steps remain; else it terminates."""
    obs = {"gripper_height": np.array([0.06], np.float32), "gripper_closed": 1}

    def after_lift(retry_prob: float, holding: bool, step: int) -> np.ndarray:
        pol = ScriptedGraspPolicy(np.random.default_rng(0), retry_prob=retry_prob, max_steps=20, retry_steps=6)
        info = {"tool": np.array([0.0, 0.0, 0.06]), "yaw": 0.0, "step": step, "holding": holding}
        pol.reset(info)
        pol.phase = "check"
        return pol.act(obs, info)

    again = after_lift(1.0, holding=False, step=8)
    assert again[4] <= 0 and again[5] <= 0 and again[2] > 0  # open, keep going, back up to the hover height
    for retry_prob, holding, step in ((1.0, True, 8), (0.0, False, 8), (1.0, False, 15)):
        a = after_lift(retry_prob, holding, step)
        assert a[4] > 0 and a[5] > 0, (retry_prob, holding, step)
    with pytest.raises(ValueError, match="retry_prob"):
        ScriptedGraspPolicy(np.random.default_rng(0), retry_prob=-0.1)


def test_scripted_lift_steps_rise_before_the_check():
    """With ``lift_steps=3`` the closed gripper rises three steps after closing, then the check reopens an
    empty grasp (with ``retry_prob=1``) or terminates; bad values raise."""
    obs = {"gripper_height": np.array([0.03], np.float32), "gripper_closed": 1}
    info = {"tool": np.array([0.0, 0.0, 0.03]), "yaw": 0.0, "step": 5, "holding": False}
    pol = ScriptedGraspPolicy(np.random.default_rng(0), retry_prob=1.0, lift_steps=3, noise=0.0)
    pol.reset(info)
    pol.phase = "close"
    assert pol.act(obs, info)[4] > 0
    for _ in range(3):
        a = pol.act(obs, info)
        assert a[2] == 1.0 and a[4] > 0 and a[5] <= 0  # rise, closed, go on
    again = pol.act(obs, info)
    assert again[4] <= 0 and again[5] <= 0  # the check: nothing held, so reopen and try again
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="lift_steps"):
            ScriptedGraspPolicy(np.random.default_rng(0), lift_steps=bad)
    from rcan.qtopt.args import collector_config, make_args

    assert collector_config(make_args("tiny", scripted_lift_steps=2)).scripted_lift_steps == 2
    with pytest.raises(ValueError, match="scripted_lift_steps"):
        make_args("tiny", scripted_lift_steps=0)


def test_wall_yaw_aims_close_parallel_to_the_nearest_obstacle(env):
    """With ``wall_yaw_prob=1`` an aimed goal gets the oracle's yaw (from ``info["divider_x"]``); the goals
    themselves are drawn exactly as without it."""
    half = env.cell.config.tray_inner_half
    obs, info = env.reset(seed=5)
    assert info["divider_x"] == env.cell.divider_x
    plain = ScriptedGraspPolicy(np.random.default_rng(2), tray_half=half, aim_prob=1.0)
    walls = ScriptedGraspPolicy(np.random.default_rng(2), tray_half=half, aim_prob=1.0, wall_yaw_prob=1.0)
    plain.reset(info)
    walls.reset(info)
    assert np.array_equal(plain.goal, walls.goal)
    assert walls.goal_yaw == wall_parallel_yaw(walls.goal, half, env.cell.divider_x)
    # next to a wall that runs along y (x near the tray's end), the fingers close along y: yaw 0
    assert wall_parallel_yaw(np.array([half[0] - 0.02, 0.0]), half, 0.0) == 0.0
    assert wall_parallel_yaw(np.array([0.1, half[1] - 0.02]), half, -0.1) == pytest.approx(np.pi / 2)
    with pytest.raises(KeyError, match="divider_x"):
        walls.reset({"objects_xy": info["objects_xy"]})


def test_holding_and_scripted_retries_in_the_env(env):
    """``info["holding"]`` (privileged) is False with the gripper open and True after the scripted lift of
    every grasp that the final lift then keeps; a retrying scripted policy grasps again after empty lifts."""
    half = env.cell.config.tray_inner_half
    pol = ScriptedGraspPolicy(np.random.default_rng(3), tray_half=half, retry_prob=1.0)
    grasps, held_at_end = [], []
    for ep in range(8):
        obs, info = env.reset(seed=300 + ep)
        assert info["holding"] is False and info["objects_xy"].shape == (len(env.cell.object_bodies), 2)
        pol.reset(info)
        done, n, checked = False, 0, None
        while not done:
            lift = pol.phase == "lift"
            a = pol.act(obs, info)
            n += bool(a[4] > 0 and not obs["gripper_closed"])
            obs, _, done, _, info = env.step(a)
            assert done or info["holding"] == env.holding()  # (a last step's info is from before the lift)
            if lift:
                checked = info["holding"]
        grasps.append(n)
        if info["is_success"]:
            held_at_end.append(checked)
    assert max(grasps) >= 2, grasps
    assert all(held_at_end), held_at_end


def test_async_vector_env():
    envs = gym.make_vec("rcan/Grasp-v0", num_envs=2, vectorization_mode="async")
    try:
        obs, info = envs.reset(seed=[1, 2])
        assert obs["image"].shape == (2, 64, 64, 3)
        obs, r, term, trunc, info = envs.step(_actions(2))
        assert r.shape == (2,) and obs["gripper_height"].shape == (2, 1)
    finally:
        envs.close()


def test_frames_do_not_depend_on_rendering_history():
    """Frames are a function of the state and the style only: the same pairs come out whether or not
    observations (and other renders, at other arm sizes) were drawn before, in a fresh env or not."""
    import hashlib

    def pairs(render_observation: bool, warm: bool) -> list[str]:
        if warm:
            other = GraspEnv()
            other.reset(seed=7)
            other.render_pair("real")
            other.render_pair()
            other.close()
        env = GraspEnv(render_observation=render_observation)
        env.reset(seed=1)
        out = []
        for act in _actions(3, seed=2):
            p = env.render_pair("heavy")
            out.append(hashlib.sha256(b"".join(p[k].tobytes() for k in sorted(p))).hexdigest())
            env.step(act)
        env.close()
        return out

    reference = pairs(True, False)
    assert pairs(False, False) == reference
    assert pairs(False, True) == reference


@pytest.mark.parametrize("domain", ["canonical", "heavy"])
def test_tool_pixel_is_where_the_gripper_appears(domain):
    """``info["tool_pixel"]`` (an auxiliary label) is the fingertips' centre projected into the frame it goes
    with, also under the camera jitter of the randomized domains; the projection puts the (solid) palm on
    robot pixels of the segmentation."""
    size = 96
    env = GraspEnv(domain=domain, image_size=size, restyle_every_step=True)
    try:
        obs, info = env.reset(seed=3)
        for a in _actions(8, seed=5):
            a[2] = -0.5
            frame = env.render_style(env._style, aux=True)
            assert np.array_equal(frame.rgb, obs["image"])
            tool = env.cell.gripper.tool_position()
            np.testing.assert_allclose(info["tool_pixel"], env.renderer.project(env._style, tool[None])[0], atol=1e-6)
            palm = np.asarray(env.cell.gripper.palm_pose()[0])
            x, y = ((env.renderer.project(env._style, palm[None])[0] + 1) / 2 * size - 0.5).round().astype(int)
            assert (frame.segmentation[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] == ROBOT).any(), (x, y)
            obs, _, done, _, info = env.step(a)
            assert info["tool_pixel"].shape == (2,) and np.all(np.abs(info["tool_pixel"]) < 1)
            if done:
                break
    finally:
        env.close()


@pytest.mark.parametrize("domain", ["canonical", "mild"])
def test_a_seeded_episode_is_the_same_after_other_episodes_and_world_rebuilds(domain):
    """Physics and frames of reset(seed) + actions do not depend on what the env did before, including
    the periodic rebuild of its PyBullet servers (which bounds PyBullet's memory growth)."""

    def episode(env: GraspEnv, before: int) -> tuple[np.ndarray, np.ndarray]:
        for s in range(before):
            env.reset(seed=100 + s)
        obs, _ = env.reset(seed=5)
        frames = [obs["image"]]
        for a in _actions(6, seed=1):
            obs, *_ = env.step(a)
            frames.append(obs["image"])
        return env.sim_state(), np.stack(frames)

    fresh, used, rebuilt = GraspEnv(domain=domain), GraspEnv(domain=domain), GraspEnv(domain=domain, rebuild_every=2)
    try:
        state0, frames0 = episode(fresh, 0)
        for env in (used, rebuilt):
            state, frames = episode(env, 5)
            np.testing.assert_array_equal(state, state0)
            np.testing.assert_array_equal(frames, frames0)
        assert rebuilt._episodes_in_world == 2  # it did rebuild: 6 episodes, a new world every 2
    finally:
        for env in (fresh, used, rebuilt):
            env.close()


@pytest.mark.parametrize("domain", ["canonical", "heavy"])
def test_object_mask_marks_the_object_pixels_of_the_returned_image(domain):
    """``label_objects=True`` adds ``info["object_mask"]`` (an auxiliary label): the object pixels of the
    very frame returned, also under camera jitter; the frames themselves are those of an unlabelled env."""
    labelled = GraspEnv(domain=domain, label_objects=True, restyle_every_step=True)
    plain = GraspEnv(domain=domain, restyle_every_step=True)
    try:
        (obs, info), (obs_p, info_p) = labelled.reset(seed=4), plain.reset(seed=4)
        assert "object_mask" not in info_p
        for a in _actions(5, seed=2):
            mask = info["object_mask"]
            assert mask.shape == (64, 64) and mask.dtype == bool and 0 < mask.mean() < 0.5
            seg = labelled.render_style(labelled._style, aux=True).segmentation
            assert np.array_equal(mask, seg == OBJECT)
            assert np.array_equal(obs["image"], obs_p["image"])
            (obs, _, done, _, info), (obs_p, *_) = labelled.step(a), plain.step(a)
            if done:
                break
    finally:
        labelled.close()
        plain.close()


def _run_to_closing(env: GraspEnv, seed: int) -> tuple[dict, dict, np.ndarray]:
    """Reset and run an aimed scripted episode up to the action that closes the gripper (not taken)."""
    obs, info = env.reset(seed=seed)
    pol = ScriptedGraspPolicy(np.random.default_rng(seed), tray_half=env.cell.config.tray_inner_half, aim_prob=1.0)
    pol.reset(info)
    while True:
        a = pol.act(obs, info)
        if a[4] > 0 and obs["gripper_closed"] == 0:
            return obs, info, a
        obs, _, done, _, info = env.step(a)
        assert not done


def test_try_grasps_judges_alternatives_and_puts_the_world_back():
    """Counterfactual grasps: each alternative closing is lifted and judged, then the bodies, the gripper's
    commands and the episode's bookkeeping are exactly as before (the episode goes on; it is seeded-
    reproducible with the same calls, though PyBullet's solver caches make it differ from a run without
    them). Alternatives that do not close and terminate are refused."""
    envs = [GraspEnv(), GraspEnv()]
    try:
        results = []
        for e in envs:
            obs, info, a = _run_to_closing(e, seed=21)
            before, step, tool = e.sim_state(), info["step"], info["tool"]
            alt = np.tile(a, (6, 1))
            alt[:, 5] = 1.0
            alt[:, 0] += np.linspace(-1.0, 1.0, 6)  # from 4 cm to one side to 4 cm to the other
            rewards, fingers = e.try_grasps(alt)
            np.testing.assert_array_equal(e.sim_state(), before)
            assert e._step == step and np.allclose(e._target, tool)
            assert e.cell.gripper.closed is False and obs["gripper_closed"] == 0
            assert np.all(np.isclose(rewards, -0.05) | np.isclose(rewards, 0.95)) and fingers.shape == (6, 4)
            assert np.all(np.abs(fingers) <= 1.0) and np.ptp(fingers[:, 0]) > 0.05  # the moves differ
            done = False
            while not done:
                obs, r, done, _, info = e.step(a)
                a = np.array([0, 0, 0, 0, 1, 1], np.float32)
            results.append((rewards, r, e.sim_state()))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        assert results[0][1] == results[1][1]
        np.testing.assert_array_equal(results[0][2], results[1][2])
        for bad in ([0, 0, 0, 0, -1, 1], [0, 0, 0, 0, 1, -1], [np.nan, 0, 0, 0, 1, 1]):
            with pytest.raises(ValueError, match="close the gripper and terminate"):
                envs[0].try_grasps(np.array([bad], np.float32))
    finally:
        for e in envs:
            e.close()


def test_counterfactual_grasps_succeed_on_objects_and_fail_beside_them():
    """The outcomes ``try_grasps`` reports are the physics': of a 5x5 grid of closings around an aimed
    one (up to 8 cm away), those that close within 3 cm of an object's centre succeed far more often than
    those more than 6 cm from every object's centre (~80% against ~20% over 392 grasps, 2026-11-25)."""
    env = GraspEnv(object_family="procedural")
    near, far = [], []
    try:
        for seed in range(4):
            _, _, a = _run_to_closing(env, seed=300 + seed)
            alt = np.tile(a, (25, 1))
            alt[:, 5] = 1.0
            grid = np.stack(np.meshgrid(np.linspace(-2, 2, 5), np.linspace(-2, 2, 5)), -1).reshape(-1, 2)
            alt[:, :2] = np.clip(alt[:, :2] + grid, -1, 1)
            dist = np.array([env.closing_distance(x) for x in alt])
            rewards, _ = env.try_grasps(alt)
            near += list(rewards[dist < 0.03] > 0)
            far += list(rewards[dist > 0.06] > 0)
    finally:
        env.close()
    assert len(near) >= 4 and len(far) >= 10, (len(near), len(far))
    assert np.mean(near) > 0.5 and np.mean(far) < np.mean(near) - 0.3, (np.mean(near), np.mean(far))


@pytest.mark.parametrize("camera", ["wide", "tray"])
def test_the_mirror_image_of_a_state_is_the_flipped_frame(camera: str) -> None:
    """What ``TrainArgs.mirror_prob`` relies on: a world point mirrored in x projects to the same image row
    and the negated image x, and a move of +dx shows in the image as the mirror of a move of -dx."""
    env = GraspEnv(camera=camera)
    env.reset(seed=3)
    points = np.array([[0.1, 0.05, 0.02], [-0.15, -0.1, 0.0], [0.03, 0.12, 0.1]])
    np.testing.assert_allclose(env.project(points * [-1, 1, 1]), env.project(points) * [-1, 1], atol=1e-9)
    start = env.tool_pixel()
    moves = []
    for dx in (0.5, -0.5):
        env.reset(seed=3)
        env.step(np.array([dx, 0.2, -0.3, 0.0, -1.0, -1.0], np.float32))
        moves.append(env.tool_pixel() - start)
    np.testing.assert_allclose(moves[1], moves[0] * [-1, 1], atol=0.01)
    env.close()
