"""The Ray backend: same shards as the local collect, Bellman targets as computed locally, a killed collector
replaced without losing replay data, checkpoints that resume on either backend, clear errors without Ray.

One local Ray instance (2 CPUs, no dashboard) serves the whole module and is shut down after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rcan.cli import main
from rcan.data.collect import CollectConfig, collect
from rcan.qtopt.args import collector_config, make_args, network_config, resolve_args, target_cem
from rcan.qtopt.collectors import Episode
from rcan.qtopt.losses import next_state_values
from rcan.qtopt.replay import EpisodeSteps, ReplayBuffer, mixed_sample
from rcan.qtopt.train import Trainer

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
    run = tmp_path / "run"
    assert main(["train-agent", "--out", str(run), "--preset", "tiny", "--backend", "ray"]) == 2
    assert "pip install 'rcan[ray]'" in capsys.readouterr().err
    assert not run.exists()
    assert main(["collect", "--out", str(out), "--samples", "2", "--address", "auto"]) == 2
    assert "--address is only for --backend ray" in capsys.readouterr().err
    assert main(["train-agent", "--out", str(run), "--preset", "tiny", "--address", "auto"]) == 2
    with pytest.raises(ValueError, match="unknown backend"):
        make_args("tiny", backend="spark")
    # The local backend never imports Ray.
    assert make_args("tiny").backend == "local"


# -- training --------------------------------------------------------------------------------------------
def _episode(rng: np.random.Generator, kind: str, steps: int, success: bool) -> Episode:
    rewards = np.full(steps, -0.05, np.float32)
    rewards[-1] = 1.0 if success else -0.05
    return Episode(
        images=rng.integers(0, 256, (steps, 3, 64, 64), dtype=np.uint8),
        states=rng.random((steps, 2), dtype=np.float32),
        actions=rng.uniform(-1, 1, (steps, 6)).astype(np.float32),
        rewards=rewards,
        success=success,
        kind=kind,
    )


def _scripted_buffers(args, rng: np.random.Generator) -> dict[str, ReplayBuffer]:
    """Six short scripted episodes (every other one a success) and an empty on-policy buffer."""
    buf = ReplayBuffer(100, (3, 64, 64), args.gamma, args.n_step)
    for e in range(6):
        ep = _episode(rng, "scripted", 5, e % 2 == 1)
        buf.add_episode(EpisodeSteps(ep.images, ep.states, ep.actions, ep.rewards))
    return {"scripted": buf, "policy": ReplayBuffer(10, (3, 64, 64))}


def test_bellman_actor_matches_the_local_target_computation(ray) -> None:
    from rcan.qtopt.ray_backend import BellmanActor, to_arrays

    args = make_args("tiny")
    rng = np.random.default_rng(0)
    buffers = _scripted_buffers(args, rng)
    batch = mixed_sample(buffers, 8, (("policy", 0.5), ("scripted", 1.0)), rng)
    trainer = Trainer(args)
    with torch.no_grad():
        for p in trainer.target2.parameters():
            p.add_(0.1)  # two different target networks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actor: same kernels, same sums
    try:
        local = next_state_values(
            {k: torch.from_numpy(v) for k, v in batch.items()},
            trainer.target1,
            trainer.target2,
            target_cem(args),
            args.aug_pad,
            torch.Generator().manual_seed(5),
        )
    finally:
        torch.set_num_threads(threads)
    actor = ray.remote(num_cpus=1)(BellmanActor).remote(
        network_config(args).to_json(), dataclasses.asdict(target_cem(args)), args.aug_pad
    )
    weights = ray.put((to_arrays(trainer.target1.state_dict()), to_arrays(trainer.target2.state_dict())))
    actor.set_targets.remote(weights, 7)
    out = ray.get(actor.targets.remote(batch, 5))
    ray.kill(actor)
    assert "next_images" not in out and int(out["target_version"]) == 7
    assert np.array_equal(out["returns"], batch["returns"])
    assert (local > 0).sum() > 0 and torch.allclose(torch.tensor(out["next_values"]), local, atol=1e-6)


def test_plain_ray_samples_need_no_targets_and_match_the_local_draw(ray) -> None:
    from rcan.qtopt.ray_backend import RayReplay

    args = make_args("tiny")
    buffers = _scripted_buffers(args, np.random.default_rng(1))
    mix = (("policy", 0.5), ("scripted", 1.0))
    remote = RayReplay(buffers, args, bellman_actors=1)
    try:  # no sync_targets: a plain batch is drawn by the replay actor alone, with a seed from our RNG
        got = remote.sample_plain(8, mix, np.random.default_rng(4))
    finally:
        remote.close()
    seed = int(np.random.default_rng(4).integers(2**62))
    want = mixed_sample(buffers, 8, mix, np.random.default_rng(seed))
    assert "next_values" not in got and set(got) == set(want)
    for k, v in want.items():
        assert np.array_equal(got[k], v, equal_nan=v.dtype.kind == "f"), k


class _KillOnce:
    """Delegates to RayCollectors; once data has arrived, snapshots the replay and kills collector 0."""

    def __init__(self, inner, trainer: Trainer, after_steps: int) -> None:
        self.inner, self.trainer, self.after_steps = inner, trainer, after_steps
        self.snapshot: dict[str, ReplayBuffer] | None = None

    def set_weights(self, weights, version: int = 0) -> None:
        self.inner.set_weights(weights, version)

    def poll(self) -> list[Episode]:
        episodes = self.inner.poll()
        if self.snapshot is None and self.trainer.env_steps >= self.after_steps:
            self.snapshot = self.trainer.replays  # a copy fetched from the replay actor
            import ray

            ray.kill(self.inner.actors[0])
        return episodes

    def close(self) -> None:
        self.inner.close()


def test_ray_training_survives_a_killed_collector_and_resumes_on_either_backend(ray, tmp_path: Path) -> None:
    from rcan.qtopt.ray_backend import RayCollectors, RayReplay

    run = tmp_path / "run"
    args = resolve_args(str(run), "tiny", False, {"seed": 3, "backend": "ray"})
    trainer = Trainer(args)
    assert isinstance(trainer.replay, RayReplay)
    inner = RayCollectors(1, collector_config(args), seed=3)
    coll = _KillOnce(inner, trainer, after_steps=20)
    try:
        summary = trainer.run(coll)
        assert inner.replacements == 1 and coll.snapshot is not None
        assert summary["env_steps"] >= args.env_steps and summary["grad_steps"] > 0
        final = trainer.replays
        # Nothing that was in the replay when the collector died is lost (no wrap-around at this size).
        assert coll.snapshot["scripted"].filled > 0
        for name, before in coll.snapshot.items():
            n = before.filled
            assert n <= final[name].filled, name
            assert np.array_equal(final[name].images[:n], before.images[:n]), name
            assert np.array_equal(final[name].actions[:n], before.actions[:n]), name
        assert sum(b.steps for b in final.values()) == trainer.env_steps
        # Episodes after the kill came from the replacement (same slot, new seed).
        assert trainer.counts["scripted"] + trainer.counts["policy"] > 0
    finally:
        coll.close()
        trainer.close()

    # The checkpoint holds the replay fetched from the actor: resume on the local backend, then on Ray.
    local = Trainer(resolve_args(str(run), None, True, {"backend": "local"}))
    assert local.args.backend == "local" and local.env_steps == trainer.env_steps
    for name, buf in final.items():
        assert local.replays[name].equals(buf), name
    remote = Trainer(resolve_args(str(run), None, True, {}))
    try:
        assert remote.args.backend == "ray"
        for name, buf in final.items():
            assert remote.replays[name].equals(buf), name
        assert remote.replay.sizes() == local.replay.sizes()
    finally:
        remote.close()
    # And through the CLI on Ray (its own collector actors), training a little further.
    assert main(["train-agent", "--out", str(run), "--resume", "--env-steps", "80", "--backend", "ray"]) == 0
    after = Trainer(resolve_args(str(run), None, True, {"backend": "local"}))
    assert after.env_steps >= 80 and after.grad_steps > trainer.grad_steps
    assert sum(b.steps for b in after.replays.values()) == after.env_steps
