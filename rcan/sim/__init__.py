"""The simulated grasping cell: PyBullet scene, visual domains, paired rendering, scripted policy."""

from __future__ import annotations

ENV_ID = "rcan/Grasp-v0"


def register_envs() -> None:
    """Register ``rcan/Grasp-v0`` with Gymnasium (idempotent)."""
    import gymnasium as gym

    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="rcan.sim.grasp_env:GraspEnv", max_episode_steps=None)
