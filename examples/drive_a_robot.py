"""Drive a grasping cell with a trained rcan agent: the loop a real robot needs, with the simulator
standing in for the robot.

To use your own robot, replace ``SimulatedCell`` with a driver that has the same two methods. It must
give the agent what the simulator gives it, and carry out its actions:

- ``observe()``: ``image``, a 64x64x3 uint8 RGB frame from a camera placed like the agent's training
  camera (``rcan.sim.renderer.CAMERAS``: beside the tray, looking down at 45 degrees; crop and resize your
  frame to that view); ``gripper_closed``, 0 or 1; ``gripper_height``, the fingertips' height above the
  tray's floor in metres. (``gripper_opening``, the fingers' gap in metres, is read only by opt-in check
  settings.)
- ``execute(action)``: ``action`` is 6 numbers in [-1, 1]: move the gripper by dx, dy, dz times 4 cm (in
  the tray's frame) and turn it by dyaw times 15 degrees; then close it if ``action[4] > 0``, else open
  it; if ``action[5] > 0``, lift to 30 cm and end the attempt. An attempt also ends after 20 actions.
  Returns the next observation, whether the attempt ended and, if it did, whether an object was lifted.

Real camera frames need an agent trained with ``rcan train-agent --input rcan``: it translates every
frame to the canonical look with its RCAN generator before it acts. The agent shipped with rcan (the
default here) learned on canonical images only and transfers to the held-out ``real`` domain at 1%.

    .venv/bin/python examples/drive_a_robot.py [--agent RUN] [--attempts 5] [--seed 0] [--no-check]
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import numpy as np

import rcan  # noqa: F401  (registers rcan/Grasp-v0)
from rcan.qtopt.agent import load_agent
from rcan.qtopt.evaluate import ASSET_AGENT
from rcan.qtopt.grasp_check import with_check


class SimulatedCell:
    """The simulator behind the interface a robot driver would offer (test objects, canonical look)."""

    def __init__(self, seed: int, image_size: int = 64, camera: str = "wide") -> None:
        self.env = gym.make(
            "rcan/Grasp-v0", domain="canonical", object_split="test", image_size=image_size, camera=camera
        )
        self.rng = np.random.default_rng(seed)
        self._obs: dict[str, Any] = {}

    def reset(self) -> None:
        """A new attempt: the gripper back at its start pose above the tray (here, objects dropped anew)."""
        self._obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))

    def observe(self) -> dict[str, Any]:
        return self._obs

    def execute(self, action: np.ndarray) -> tuple[dict[str, Any], bool, bool]:
        self._obs, _, done, _, info = self.env.step(action)
        return self._obs, bool(done), bool(info.get("is_success", False))

    def close(self) -> None:
        self.env.close()


def run_attempt(policy: Any, cell: SimulatedCell) -> tuple[bool, int]:
    """One grasp attempt; returns (success, actions taken)."""
    cell.reset()
    policy.reset({})
    obs = cell.observe()
    for step in range(1, 21):
        obs, done, success = cell.execute(policy.act(obs, {}))
        if done:
            return success, step
    return False, 20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", default=str(ASSET_AGENT), help="an agent file or run directory")
    p.add_argument("--attempts", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="close once and end, as the agent was trained")
    a = p.parse_args(argv)
    policy = load_agent(a.agent, seed=a.seed)
    if not a.no_check:
        policy = with_check(policy, a.agent)  # the agent's grasp check, if it has one: lift, judge, regrasp
    cell = SimulatedCell(a.seed, policy.network.config.image_size, policy.camera)
    try:
        wins = 0
        for i in range(a.attempts):
            success, steps = run_attempt(policy, cell)
            wins += success
            print(f"attempt {i + 1}: {'lifted an object' if success else 'failed'} in {steps} actions")
        print(f"{wins}/{a.attempts} attempts succeeded")
    finally:
        cell.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
