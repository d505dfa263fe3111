"""The grasp check: the acting procedure (close, lift, check, end or reopen), the check file, fitting it
from the agent's own lifted grasps, and ``rcan evaluate`` / ``rcan train-check`` with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rcan.qtopt.agent import save_agent, shifted_views
from rcan.qtopt.cem import CEMConfig
from rcan.qtopt.evaluate import run_evaluation
from rcan.qtopt.grasp_check import (
    LIFT,
    REOPEN,
    TERMINATE_HERE,
    CheckConfig,
    CheckedPolicy,
    auc,
    check_path,
    check_probability,
    fit_check,
    load_check,
    parse_check_settings,
    save_check,
    with_check,
)
from rcan.qtopt.network import QNetConfig, QNetwork

SMALL = QNetConfig(channels=(8, 8), strides=(4, 2), fuse_channels=6, head_channels=4, fc_hidden=8)
CLOSE_AND_END = np.array([0.1, 0.2, -1, 0, 1, 1], np.float32)
MOVE = np.array([0.3, 0, -1, 0, -1, -1], np.float32)


class ClosesAtThird:
    """A stand-in agent: moves twice, then closes and terminates (every time it is asked after that)."""

    network = QNetwork(SMALL)

    def __init__(self) -> None:
        self.calls = 0

    def reset(self, info=None) -> None:
        self.calls = 0

    def prepare(self, obs):
        return np.zeros((3, 64, 64), np.uint8), np.zeros(2, np.float32)

    def act(self, obs, info=None) -> np.ndarray:
        self.calls += 1
        return CLOSE_AND_END.copy() if self.calls % 3 == 0 else MOVE.copy()


class Constant(nn.Module):
    """A check that always gives the same success estimate."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.logit = float(np.log(p / (1 - p)))

    def forward(self, images, states, actions) -> torch.Tensor:
        return torch.full((len(images),), self.logit)


def _run(policy: CheckedPolicy, steps: int = 20, obs: dict | None = None) -> list[np.ndarray]:
    """An attempt of at most ``steps`` steps, every observation ``obs`` (default empty)."""
    policy.reset({})
    out = []
    for _ in range(steps):
        a = policy.act(obs or {}, {})
        out.append(a)
        if a[5] > 0:
            break
    return out


def test_a_held_grasp_is_lifted_checked_and_ended() -> None:
    actions = _run(CheckedPolicy(ClosesAtThird(), Constant(0.9), CheckConfig(lift=2)))
    assert len(actions) == 6
    np.testing.assert_allclose(actions[2], [0.1, 0.2, -1, 0, 1, -1])  # the agent's closing, not ended
    np.testing.assert_array_equal(actions[3], LIFT)
    np.testing.assert_array_equal(actions[4], LIFT)
    np.testing.assert_array_equal(actions[5], TERMINATE_HERE)


def test_an_empty_grasp_reopens_until_retries_or_steps_run_out() -> None:
    p = CheckedPolicy(ClosesAtThird(), Constant(0.1), CheckConfig(lift=1, max_retries=2, min_steps_left=3))
    actions = _run(p)
    reopened = [i for i, a in enumerate(actions) if np.array_equal(a, REOPEN)]
    assert reopened == [4, 9]  # close at 3, lift at 4, check -> reopen at step 5; again 5 steps later
    assert len(p.checks) == 2 and all(c == pytest.approx(0.1) for c in p.checks)
    assert p.decisions == ["reopen", "reopen"]
    assert p.check_steps == [5, 10]  # the attempt's step of each check: the room each decision had
    np.testing.assert_array_equal(actions[-1], CLOSE_AND_END)  # no retry left: the agent's own ending
    # near the step limit: no reopening, the attempt ends as it is
    late = CheckedPolicy(
        ClosesAtThird(), Constant(0.1), CheckConfig(lift=1, max_retries=9, min_steps_left=19)
    )
    acts = _run(late)
    assert not any(np.array_equal(a, REOPEN) for a in acts) and acts[-1][5] > 0


def test_no_room_to_lift_passes_the_agents_terminate_through() -> None:
    p = CheckedPolicy(ClosesAtThird(), Constant(0.1), CheckConfig(lift=2, max_steps=4))
    acts = _run(p)
    np.testing.assert_array_equal(acts[2], CLOSE_AND_END)  # 2 steps left: no lift and check possible
    assert p.checks == []


def test_a_late_reopening_leaves_the_last_closing_unchecked() -> None:
    # lift 1: checks at steps 5, 10, 15; with 18 steps the third comes with 4 left (< min_steps_left 5)
    cfg = CheckConfig(lift=1, max_steps=18, late_threshold=0.2)
    p = CheckedPolicy(ClosesAtThird(), Constant(0.1), cfg)
    acts = _run(p)
    assert [i for i, a in enumerate(acts) if np.array_equal(a, REOPEN)] == [4, 9, 14]
    assert len(acts) == 18 and len(p.checks) == 3 and p.decisions == ["reopen", "reopen", "late-reopen"]
    np.testing.assert_array_equal(acts[-1], CLOSE_AND_END)  # the last closing ends the attempt as is
    for check, config in ((0.1, CheckConfig(lift=1, max_steps=18)), (0.5, cfg)):  # off / not plainly empty
        q = CheckedPolicy(ClosesAtThird(), Constant(check), config)
        acts = _run(q)
        assert len(acts) == 15 and np.array_equal(acts[-1], TERMINATE_HERE)
        assert q.decisions == ["reopen", "reopen", "end"]  # below the threshold, but no room: ended
    with pytest.raises(ValueError):
        CheckConfig(late_min_steps_left=1)


class Wanders:
    """A stand-in agent that never closes; its best closing (``act_prepared`` with close and end held) is
    CLOSE_AND_END."""

    network = QNetwork(SMALL)

    def reset(self, info=None) -> None:
        pass

    def prepare(self, obs):
        return np.zeros((3, 64, 64), np.uint8), np.zeros(2, np.float32)

    def act(self, obs, info=None) -> np.ndarray:
        return MOVE.copy()

    def act_prepared(self, image, state, fixed=None, generator=None):
        assert fixed == {4: 1.0, 5: 1.0} and generator is not None
        return CLOSE_AND_END.copy(), 0.5


def _steps(policy: CheckedPolicy, closed: float = 0.0) -> list[np.ndarray]:
    """An attempt of at most 20 steps with the gripper reported open (or closed) throughout."""
    return _run(policy, obs={"gripper_closed": np.array([closed], np.float32)})


def test_a_closing_is_taken_for_an_agent_that_would_end_with_the_gripper_open() -> None:
    p = CheckedPolicy(Wanders(), Constant(0.9), CheckConfig())  # on by default
    acts = _steps(p)
    assert len(acts) == 20 and p.forced_closings == 1  # the last step closes where the critic likes best
    np.testing.assert_array_equal(acts[-1], CLOSE_AND_END)
    assert all(np.array_equal(a, MOVE) for a in acts[:-1])
    off = CheckedPolicy(Wanders(), Constant(0.9), CheckConfig(last_close=False))
    assert off.forced_closings == 0 and all(np.array_equal(a, MOVE) for a in _steps(off))
    closed = CheckedPolicy(Wanders(), Constant(0.9), CheckConfig(last_close=True))
    assert all(np.array_equal(a, MOVE) for a in _steps(closed, closed=1.0))  # nothing new to grasp

    late = CheckedPolicy(Wanders(), Constant(0.9), CheckConfig(close_by=10, lift=3))
    acts = _steps(late)
    np.testing.assert_allclose(acts[9], [0.1, 0.2, -1, 0, 1, -1])  # the 10th step: closed, then checked
    assert [np.array_equal(a, LIFT) for a in acts[10:13]] == [True] * 3
    np.testing.assert_array_equal(acts[13], TERMINATE_HERE)
    assert late.forced_closings == 1 and late.decisions == ["accept"]
    with pytest.raises(ValueError, match="close_by"):
        CheckConfig(close_by=-1)
    assert parse_check_settings(["last_close=true", "close_by=9"]) == {"last_close": True, "close_by": 9}
    with pytest.raises(ValueError, match="true or false"):
        parse_check_settings(["last_close=maybe"])


def test_check_summary_sorts_a_checked_agents_attempts() -> None:
    from rcan.qtopt.evaluate import check_summary

    attempts = [
        {"success": True, "check_decisions": ["accept"]},
        {"success": False, "check_decisions": ["accept"]},
        {"success": True, "check_decisions": ["reopen", "accept"]},
        {"success": False, "check_decisions": ["reopen"]},  # its retry, unchecked, failed
        {"success": False, "check_decisions": ["early-pass", "early-reopen", "end"]},
        {"success": False, "check_decisions": []},
        {"success": True, "check_decisions": ["early-pass", "accept"]},
        {"success": True, "check_decisions": ["reopen", "late-reopen"]},  # a last unchecked retry held
        {"success": False, "check_decisions": ["accept", "confirm"]},  # held 16 cm up, lost later
        {"success": True, "check_decisions": ["accept", "confirm-reopen", "accept"]},  # slipped, regrasped
    ]
    assert check_summary(attempts) == {
        "first_accepted": 5,
        "held_after_first_accept": 3,
        "first_reopened": 4,
        "succeeded_after_first_reopen": 2,
        "failed_accepted": 2,
        "failed_after_reopen": 1,
        "failed_ended_below_threshold": 1,
        "failed_unchecked": 1,
        "late_reopened": 1,
        "succeeded_after_late_reopen": 1,
        "confirm_reopened": 1,
        "succeeded_after_confirm_reopen": 1,
    }
    assert check_summary([{"success": True}]) is None  # an agent without a check


def test_check_config_and_auc_checks() -> None:
    with pytest.raises(ValueError):
        CheckConfig(threshold=1.5)
    with pytest.raises(ValueError):
        CheckConfig(lift=-1)
    assert auc(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0], bool)) == 1.0
    assert np.isnan(auc(np.array([0.5]), np.array([True])))


def test_check_file_round_trip_and_errors(tmp_path) -> None:
    torch.manual_seed(0)
    net = QNetwork(SMALL)
    path = save_check(
        tmp_path / "check.safetensors", net, CheckConfig(lift=3, threshold=0.7), {"val_auc": "0.9"}
    )
    loaded, config, meta = load_check(path)
    assert config == CheckConfig(lift=3, threshold=0.7) and meta["val_auc"] == "0.9"
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    save_agent(tmp_path / "agent.safetensors", net, "canonical", CEMConfig(8, 2, 1))
    with pytest.raises(ValueError, match="not an rcan"):
        load_check(tmp_path / "agent.safetensors")  # an agent file is not a check
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        load_check(tmp_path / "bad.safetensors")
    wrapped = with_check(ClosesAtThird(), tmp_path, threshold=0.2)
    assert isinstance(wrapped, CheckedPolicy) and wrapped.config.threshold == 0.2 and wrapped.config.lift == 3
    assert (
        with_check("plain", tmp_path / "other" / "agent.safetensors") == "plain"
    )  # no check file: the policy as it is
    assert check_path(tmp_path / "agent.safetensors") == tmp_path / "check.safetensors"


def test_fit_check_takes_any_seed(tmp_path) -> None:
    """A large seed seeds the collection jobs; the grasps' ids come from the jobs' indices (they overflowed
    int64 when derived from the seed)."""
    torch.manual_seed(0)
    run = tmp_path / "agent"
    save_agent(run / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    s = fit_check(run, grasps=10, lift=1, epochs=1, jobs=1, seed=2**40)
    assert s["grasps"] == 10


def test_fit_check_then_evaluate_with_it(tmp_path, capsys) -> None:
    from rcan.cli import main

    torch.manual_seed(0)
    run = tmp_path / "agent"
    save_agent(run / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    s = fit_check(run, grasps=12, lift=1, epochs=2, jobs=1)
    assert s["grasps"] == 12 and len(s["history"]) == 3 and (run / "check_data.h5").is_file()
    net, config, _ = load_check(run / "check.safetensors")
    assert config.lift == 1 and json.loads((run / "check.json").read_text())["grasps"] == 12
    mtime = (run / "check_data.h5").stat().st_mtime_ns
    fit_check(run, grasps=12, lift=1, epochs=1, jobs=1)  # same settings: the collected grasps are reused
    assert (run / "check_data.h5").stat().st_mtime_ns == mtime

    r = run_evaluation(str(run), "canonical", attempts=2, seed=0, out=str(tmp_path / "ev"))
    assert r["grasp_check"]["lift"] == 1 and all("checks" in a for a in r["per_attempt"])
    assert all(len(a["check_decisions"]) == len(a["checks"]) == len(a["check_steps"]) for a in r["per_attempt"])
    assert sum(r["checks"][k] for k in r["checks"] if k.startswith("failed")) == 2 - r["successes"]
    r = run_evaluation(str(run), "canonical", attempts=1, seed=0, out=str(tmp_path / "ev2"), check=False)
    assert r["grasp_check"] is None and "checks" not in r["per_attempt"][0] and r["checks"] is None
    with pytest.raises(ValueError, match="need the grasp check"):
        run_evaluation(
            str(run), "canonical", attempts=1, out=str(tmp_path / "ev3"), check=False, check_threshold=0.5
        )

    r = run_evaluation(
        str(run),
        "canonical",
        attempts=1,
        seed=0,
        out=str(tmp_path / "ev4"),
        check_threshold=0.3,
        check_settings=parse_check_settings(["min_steps_left=3", "max_retries=1"]),
    )
    assert (r["grasp_check"]["min_steps_left"], r["grasp_check"]["max_retries"]) == (3, 1)
    assert r["grasp_check"]["threshold"] == 0.3 and r["grasp_check"]["lift"] == 1  # the rest: the file's
    with pytest.raises(ValueError, match="give the threshold once"):
        run_evaluation(
            str(run),
            "canonical",
            attempts=1,
            out=str(tmp_path / "ev6"),
            check_threshold=0.3,
            check_settings={"threshold": 0.5},
        )
    with pytest.raises(ValueError, match="need the grasp check"):
        run_evaluation(
            str(run),
            "canonical",
            attempts=1,
            out=str(tmp_path / "ev5"),
            check=False,
            check_settings={"views": 5},
        )
    assert main(["evaluate", "--agent", str(run), "--domain", "canonical", "--check-set", "lift=2"]) == 2
    assert "cannot change 'lift'" in capsys.readouterr().err

    (run / "check_data.h5").write_bytes(b"not hdf5")
    assert main(["train-check", "--agent", str(run), "--grasps", "12", "--lift", "1", "--jobs", "1"]) == 2
    assert "not a readable grasp-check dataset" in capsys.readouterr().err
    assert main(["train-check", "--agent", str(tmp_path / "missing")]) == 2

    # An agent without a check: a check threshold is refused, not silently ignored; a bad --out and a bad
    # fitting threshold fail before any attempt or grasp.
    bare = tmp_path / "bare"
    save_agent(bare / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    with pytest.raises(ValueError, match="need a grasp check beside"):
        run_evaluation(str(bare), "canonical", attempts=1, out=str(tmp_path / "ev7"), check_threshold=0.5)
    (tmp_path / "a-file").write_text("x")
    assert main(["evaluate", "--agent", str(bare), "--domain", "canonical", "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="threshold must be in"):
        fit_check(bare, grasps=12, lift=1, threshold=60.0, jobs=1)
    assert not (bare / "check_data.h5").exists()


def test_fit_check_stops_at_its_deadline_with_the_minimum(tmp_path) -> None:
    """A training run's overall budget (``budget_minutes``) ends the collection early: the check is fitted
    on the grasps it got, stored as their own count, and a rerun asking for the full count collects again."""
    import time

    torch.manual_seed(0)
    run = tmp_path / "agent"
    save_agent(run / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    s = fit_check(run, grasps=20, lift=1, epochs=1, jobs=1, deadline=time.time() - 1, min_grasps=10)
    assert s["grasps"] == 10 and s["grasps_asked"] == 20
    mtime = (run / "check_data.h5").stat().st_mtime_ns
    s = fit_check(run, grasps=20, lift=1, epochs=1, jobs=1)  # no deadline: the full count, collected anew
    assert s["grasps"] == 20 and (run / "check_data.h5").stat().st_mtime_ns != mtime


def test_the_overall_budget_must_leave_room_for_the_check() -> None:
    from rcan.qtopt.args import make_args

    assert make_args("default").budget_minutes == 120.0 and make_args("paper").budget_minutes == 0.0
    with pytest.raises(ValueError, match="budget_minutes=120"):
        make_args("default", minutes=0.0)  # no training limit, yet a 2-hour budget: refused
    with pytest.raises(ValueError, match="budget_minutes=120"):
        make_args("default", minutes=118.0)  # too little left for the check
    with pytest.raises(ValueError, match="budget_minutes must be >= 0"):
        make_args("default", budget_minutes=-1.0)
    assert make_args("default", minutes=0.0, budget_minutes=0.0).minutes == 0.0
    assert make_args("default", minutes=0.0, check_grasps=0).minutes == 0.0  # no check: nothing to leave room for


def test_train_agent_fits_the_check_after_training_but_not_after_finetuning(tmp_path) -> None:
    from rcan.qtopt.args import make_args
    from rcan.qtopt.train import train

    run = tmp_path / "run"
    s = train(
        make_args(
            "tiny", out=str(run), collectors=0, check_grasps=10, check_lift=1, check_threshold=0.4, check_confirm=1
        )
    )
    assert s["finished"] and s["check"]["grasps"] == 10 and (run / "check.safetensors").is_file()
    assert load_check(run / "check.safetensors")[1] == CheckConfig(lift=1, threshold=0.4, confirm=1)
    ft = tmp_path / "ft"
    s = train(
        make_args("tiny", out=str(ft), collectors=0, check_grasps=10, finetune_from=str(run), real_episodes=2)
    )
    assert "check" not in s and not (ft / "check.safetensors").exists()
    with pytest.raises(ValueError, match="check_grasps"):
        make_args("tiny", check_grasps=3)
    with pytest.raises(ValueError, match="threshold"):
        make_args("tiny", check_threshold=2.0)
    with pytest.raises(ValueError, match="confirm"):
        make_args("tiny", check_confirm=-1)


def test_an_early_check_reopens_after_the_first_lift_step() -> None:
    p = CheckedPolicy(ClosesAtThird(), Constant(0.1), CheckConfig(lift=3, early_threshold=0.2, max_retries=1))
    acts = _run(p)
    np.testing.assert_array_equal(acts[3], LIFT)  # one step up, then judged: plainly empty
    np.testing.assert_array_equal(acts[4], REOPEN)
    held = CheckedPolicy(
        ClosesAtThird(), Constant(0.5), CheckConfig(lift=3, early_threshold=0.2, threshold=0.4)
    )
    acts = _run(held)  # above the early threshold: lifted all the way, then ended
    assert (
        [np.array_equal(a, LIFT) for a in acts[3:6]] == [True] * 3
        and acts[6][5] > 0
        and len(held.checks) == 3
    )
    assert p.decisions == ["early-reopen"] and held.decisions == ["early-pass", "early-pass", "accept"]
    with pytest.raises(ValueError):
        CheckConfig(early_threshold=-0.1)


def test_check_settings_parse_typed_and_refuse_what_the_fit_fixed() -> None:
    assert parse_check_settings(["min_steps_left=3", "early_threshold=0.35", "early_from=2"]) == {
        "min_steps_left": 3,
        "early_threshold": 0.35,
        "early_from": 2,
    }
    assert parse_check_settings([]) == {}
    for bad, message in [
        (["lift=2"], "cannot change 'lift'"),
        (["max_steps=30"], "cannot change 'max_steps'"),
        (["nope=1"], "KEY=VALUE"),
        (["min_steps_left"], "KEY=VALUE"),
        (["max_retries=1.5"], "needs an integer"),
        (["threshold=high"], "needs a number"),
        (["threshold=2"], "threshold must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_check_settings(bad)


def test_an_early_check_can_wait_for_the_second_lift_step() -> None:
    p = CheckedPolicy(
        ClosesAtThird(), Constant(0.1), CheckConfig(lift=3, early_threshold=0.2, early_from=2, max_retries=1)
    )
    acts = _run(p)
    np.testing.assert_array_equal(acts[3], LIFT)  # the first step up is not judged
    np.testing.assert_array_equal(acts[4], LIFT)
    np.testing.assert_array_equal(acts[5], REOPEN)  # judged after the second: plainly empty
    assert len(p.checks) >= 1
    for bad in (0, 4):
        with pytest.raises(ValueError, match="early_from"):
            CheckConfig(lift=3, early_from=bad)


def test_an_empty_gripper_reopens_at_once_whatever_the_check_says() -> None:
    def run(policy: CheckedPolicy, opening: float) -> list[np.ndarray]:
        return _run(policy, obs={"gripper_opening": np.array([opening], np.float32)})

    config = CheckConfig(lift=3, empty_opening=0.01, max_retries=1)
    p = CheckedPolicy(ClosesAtThird(), Constant(0.9), config)  # a check that would accept
    acts = run(p, 0.002)
    np.testing.assert_array_equal(acts[3], LIFT)  # the first reading comes after one step up
    np.testing.assert_array_equal(acts[4], REOPEN)
    assert p.empty_reopens == 1 and p.checks == []
    np.testing.assert_array_equal(acts[-1], CLOSE_AND_END)  # no retry left: the agent's own ending
    held = CheckedPolicy(ClosesAtThird(), Constant(0.9), config)
    acts = run(held, 0.03)  # fingers apart: lifted all the way, checked, ended
    assert [np.array_equal(a, LIFT) for a in acts[3:6]] == [True] * 3 and acts[6][5] > 0
    assert held.empty_reopens == 0 and len(held.checks) == 1
    off = CheckedPolicy(ClosesAtThird(), Constant(0.9), CheckConfig(lift=3))
    assert len(run(off, 0.002)) == 7  # the reading off: an observation without it is fine too
    assert len(_run(CheckedPolicy(ClosesAtThird(), Constant(0.9), CheckConfig(lift=3)))) == 7
    with pytest.raises(KeyError, match="gripper_opening"):
        _run(CheckedPolicy(ClosesAtThird(), Constant(0.9), config))
    with pytest.raises(ValueError, match="empty_opening"):
        CheckConfig(empty_opening=0.5)


def test_fit_check_on_every_lift_level(tmp_path) -> None:
    torch.manual_seed(0)
    run = tmp_path / "agent"
    save_agent(run / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    with pytest.raises(ValueError, match="every lift level"):
        fit_check(run, grasps=10, lift=2, epochs=1, jobs=1, early_threshold=0.3)
    with pytest.raises(ValueError, match="every lift level"):  # a second look fits only two heights
        fit_check(run, grasps=10, lift=2, epochs=1, jobs=1, early_threshold=0.3, confirm=1)
    s = fit_check(run, grasps=10, lift=2, epochs=1, jobs=1, all_levels=True, early_threshold=0.3)
    assert s["grasps"] == 10 and set(s["val_auc_by_lift_step"]) == {"1", "2"}
    assert load_check(run / "check.safetensors")[1].early_threshold == 0.3


def test_the_check_averages_its_logit_over_shifted_views() -> None:
    torch.manual_seed(0)
    net = QNetwork(SMALL).eval()
    image = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    state = np.array([1.0, 0.12], np.float32)
    one = check_probability(net, image, state)
    five = check_probability(net, image, state, views=5)
    with torch.no_grad():
        views = shifted_views(torch.from_numpy(image)[None], 5)
        states = torch.from_numpy(state)[None].expand(5, -1)
        logits = net(views, states, torch.from_numpy(TERMINATE_HERE)[None].expand(5, -1))
    assert one == pytest.approx(float(torch.sigmoid(logits[0])), abs=1e-6)
    assert five == pytest.approx(float(torch.sigmoid(logits.mean())), abs=1e-6)
    with pytest.raises(ValueError, match="view_shifts"):
        CheckConfig(views=0)


class Sequence(nn.Module):
    """A check that gives the estimates of ``ps`` in turn, then the last one for ever."""

    def __init__(self, *ps: float) -> None:
        super().__init__()
        self.ps, self.calls = list(ps), 0

    def forward(self, images, states, actions) -> torch.Tensor:
        p = self.ps[min(self.calls, len(self.ps) - 1)]
        self.calls += 1
        return torch.full((len(images),), float(np.log(p / (1 - p))))


def test_an_accepted_grasp_rises_once_more_and_is_looked_at_again() -> None:
    held = CheckedPolicy(ClosesAtThird(), Constant(0.9), CheckConfig(lift=2, confirm=1))
    acts = _run(held)
    assert len(acts) == 7 and held.decisions == ["accept", "confirm"] and held.check_steps == [6, 7]
    for i in (3, 4, 5):  # two steps up, the check accepts, one more step up
        np.testing.assert_array_equal(acts[i], LIFT)
    np.testing.assert_array_equal(acts[6], TERMINATE_HERE)

    slipped = CheckedPolicy(ClosesAtThird(), Sequence(0.9, 0.1, 0.9), CheckConfig(lift=2, confirm=1))
    acts = _run(slipped)
    np.testing.assert_array_equal(acts[6], REOPEN)  # lost on the way up: another grasp
    assert slipped.decisions[:2] == ["accept", "confirm-reopen"] and slipped.decisions[-1] == "confirm"
    np.testing.assert_array_equal(acts[-1], TERMINATE_HERE)

    # too few steps for a reopening after the second look: the accepted grasp ends at once, as without it
    late = CheckedPolicy(ClosesAtThird(), Constant(0.9), CheckConfig(lift=2, confirm=1, max_steps=11))
    acts = _run(late)
    assert len(acts) == 6 and late.decisions == ["accept"]
    np.testing.assert_array_equal(acts[-1], TERMINATE_HERE)
    with pytest.raises(ValueError, match="confirm"):
        CheckConfig(confirm=-1)


def test_a_second_look_needs_a_check_fitted_for_it(tmp_path) -> None:
    torch.manual_seed(0)
    run = tmp_path / "agent"
    save_agent(run / "agent.safetensors", QNetwork(SMALL), "canonical", CEMConfig(8, 2, 1))
    s = fit_check(run, grasps=10, lift=1, epochs=1, jobs=1, confirm=1)
    assert s["grasps"] == 10 and set(s["val_auc_by_lift_step"]) == {"1", "2"}  # both looks learned
    config = load_check(run / "check.safetensors")[1]
    assert config.lift == 1 and config.confirm == 1
    assert with_check(ClosesAtThird(), run, confirm=0).config.confirm == 0  # may be switched off
    with pytest.raises(ValueError, match="fitted for a second look up to 1"):
        with_check(ClosesAtThird(), run, confirm=2)
