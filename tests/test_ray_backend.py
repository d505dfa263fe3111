"""The Ray backend: same shards as the local collect, clear errors without Ray.

One local Ray instance (2 CPUs, no dashboard) serves the whole module and is shut down after it.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import pytest

from rcan.cli import main
from rcan.data.collect import CollectConfig, collect

CONFIG = CollectConfig(samples=6, shard_size=3, seed=11, image_size=32)


@pytest.fixture(scope="module")
def ray(_rcan_cache):  # after the cache fixture: Ray's workers inherit RCAN_CACHE from this process
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("shard-*.h5"))}


# -- collect -------------------------------------------------------------------------------------------
def test_collect_on_ray_writes_the_local_bytes(ray, tmp_path: Path, capsys) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    collect(local, CONFIG, workers=2, progress=False)
    argv = ["collect", "--out", str(remote), "--samples", str(CONFIG.samples), "--shard-size"]
    argv += [str(CONFIG.shard_size), "--seed", str(CONFIG.seed), "--image-size", str(CONFIG.image_size)]
    assert main([*argv, "--workers", "2", "--backend", "ray", "--no-progress"]) == 0
    assert "wrote 2 shard(s)" in capsys.readouterr().out
    assert _hashes(remote) == _hashes(local) and len(_hashes(local)) == 2
    assert not [p for p in remote.iterdir() if p.name.endswith(".tmp")]
    # Resume: a missing shard is made again by Ray, identical; complete ones are kept.
    (remote / "shard-00001.h5").unlink()
    summary = collect(remote, CONFIG, workers=2, progress=False, backend="ray")
    assert (summary.shards_written, summary.shards_skipped) == (1, 1)
    assert _hashes(remote) == _hashes(local)


def test_without_ray_one_clear_error(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, find_spec says missing
    out = tmp_path / "c"
    assert main(["collect", "--out", str(out), "--samples", "2", "--backend", "ray"]) == 2
    assert "pip install 'rcan[ray]'" in capsys.readouterr().err
    assert not out.exists()  # nothing started
    assert main(["collect", "--out", str(out), "--samples", "2", "--address", "auto"]) == 2
    assert "--address is only for --backend ray" in capsys.readouterr().err
