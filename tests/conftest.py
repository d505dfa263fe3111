"""Shared fixtures: a private texture/mesh cache per test session, so tests never touch ~/.cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _rcan_cache(tmp_path_factory: pytest.TempPathFactory):
    path = os.environ.get("RCAN_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "rcan-cache")
    old = os.environ.get("RCAN_CACHE")
    os.environ["RCAN_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("RCAN_CACHE", None)
    else:
        os.environ["RCAN_CACHE"] = old
