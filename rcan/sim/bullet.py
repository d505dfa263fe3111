"""One PyBullet physics server per environment, never the global connection."""

from __future__ import annotations

import pybullet as pb
from pybullet_utils.bullet_client import BulletClient

Client = BulletClient


def new_client() -> BulletClient:
    """A DIRECT (headless) server: many can live in one process, each fully independent."""
    return BulletClient(connection_mode=pb.DIRECT)
