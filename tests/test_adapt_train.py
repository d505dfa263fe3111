"""Generator training: overfitting a fixed batch, exact resume after a stop or a kill, run-directory errors, CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rcan.adapt import commands
from rcan.adapt.args import make_args, resolve_args
from rcan.adapt.inference import load_generator, save_generator
from rcan.adapt.networks import define_G
from rcan.adapt.pairs import BatchOrder, load_arrays, make_batch, split_indices
from rcan.adapt.train import Trainer, train
from rcan.common.checkpoint import load_safetensors, read_metadata

REPO = Path(__file__).resolve().parent.parent
FAST = dict(
    threads=1,
    val_fraction=0.1,
    log_every=2,
    eval_every=3,
    grid_every=100,
    checkpoint_every=100,
    grid_samples=0,
)


def fake_arrays(n: int = 40, size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Structured fake pairs: the canonical image, mask and depth are simple functions of the input."""
    rng = np.random.default_rng(seed)
    rnd = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    grey = rnd.mean(axis=3)
    seg = np.clip(grey // 52, 0, 4).astype(np.uint8)
    canonical = np.stack([grey, 255 - grey, np.full_like(grey, 128)], axis=3).astype(np.uint8)
    depth = (0.3 + grey / 255 * 2.0).astype(np.float32)
    return {"randomized": rnd, "canonical": canonical, "segmentation": seg, "depth": depth}


def quiet(_msg: str) -> None:
    pass


def files_equal(a: Path, b: Path) -> list[str]:
    ta, _ = load_safetensors(a)
    tb, _ = load_safetensors(b)
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    arrays = fake_arrays(n=4, size=32)
    trainer = Trainer(make_args("tiny", lr=5e-3), image_size=32)
    batch = make_batch(arrays, np.arange(4), trainer.depth_scale)
    first = trainer.step(batch)
    for _ in range(30):
        last = trainer.step(batch)
    for key, ratio in (("mpse", 0.3), ("rgb_l2", 0.3), ("depth_l2", 0.3), ("seg_l2", 0.75)):
        assert last[key] < ratio * first[key], (key, first[key], last[key])
    assert 0 < last["D_real"] < 1 and 0 < last["D_fake"] < 1


def test_batch_order_is_a_function_of_seed_and_epoch():
    order = BatchOrder(n_train=10, batch_size=3, seed=5)
    assert order.per_epoch == 3
    epoch0 = np.concatenate([order.batch(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch
    again = BatchOrder(10, 3, 5)
    for s in (4, 0, 7, 2):  # any access order gives the same batches
        assert np.array_equal(again.batch(s), order.batch(s))
    assert not np.array_equal(BatchOrder(10, 3, 6).batch(0), order.batch(0))
    assert order.position(7) == (2, 1)
    with pytest.raises(ValueError, match="fewer than the batch size"):
        BatchOrder(2, 3, 0)


def test_split_holds_out_the_tail():
    assert split_indices(1000, 0.02) == (980, 20)
    assert split_indices(10, 0.02) == (9, 1)
    assert split_indices(10, 0.0) == (10, 0)


def test_train_writes_run_and_exact_resume(tmp_path, capsys):
    arrays = fake_arrays()
    a, b = tmp_path / "straight", tmp_path / "split"
    res = train(
        make_args("tiny", out=str(a), steps=6, **{**FAST, "grid_samples": 2, "grid_every": 6}),
        arrays,
        log=quiet,
    )
    assert res["step"] == 6 and set(res["val"]) >= {
        "mpse",
        "seg_accuracy",
        "depth_mae_m",
        "rgb_mean_offset_255",
    }
    for name in ("config.json", "generator.safetensors", "train_state.safetensors", "grids/step_000006.png"):
        assert (a / name).is_file(), name
    assert any((a / "tb").iterdir())
    assert json.loads((a / "config.json").read_text())["steps"] == 6
    meta = read_metadata(a / "train_state.safetensors")
    assert meta["step"] == "6" and json.loads(meta["data_order"])["batch_size"] == 8

    train(make_args("tiny", out=str(b), steps=3, **FAST), arrays, log=quiet)
    capsys.readouterr()
    train(make_args("tiny", out=str(b), steps=6, resume=True, **FAST), arrays, log=quiet)
    assert "train-generator split: 100%" in capsys.readouterr().err  # the bar resumes at step 3 of 6
    assert files_equal(a / "generator.safetensors", b / "generator.safetensors") == []
    assert files_equal(a / "train_state.safetensors", b / "train_state.safetensors") == []
    G, _ = load_generator(b)
    assert G.step == 6


def test_resume_after_signal_and_stale_generator_file(tmp_path):
    """A Ctrl-C stops at a step boundary with a checkpoint; a generator file left one checkpoint behind
    (a kill between the two writes) is rewritten from the state on resume; the result is still exact."""
    arrays = fake_arrays()
    a, b = tmp_path / "straight", tmp_path / "interrupted"
    train(make_args("tiny", out=str(a), steps=6, **FAST), arrays, log=quiet)

    def interrupt_at_step_2(msg: str) -> None:
        if msg.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(make_args("tiny", out=str(b), steps=6, **FAST), arrays, log=interrupt_at_step_2)
    assert read_metadata(b / "train_state.safetensors")["step"] == "2"
    stale = define_G(load_generator(b)[1])
    save_generator(b / "generator.safetensors", stale, step=0)
    train(make_args("tiny", out=str(b), steps=6, resume=True, **FAST), arrays, log=quiet)
    assert files_equal(a / "generator.safetensors", b / "generator.safetensors") == []


def test_resume_keeps_the_thread_count(tmp_path, monkeypatch):
    """threads=0 means 'automatic' for a new run but 'whatever the run used' on resume (exactness needs it)."""
    import rcan.adapt.train as train_module

    run = tmp_path / "run"
    train(make_args("tiny", out=str(run), steps=2, **{**FAST, "threads": 0}), fake_arrays(), log=quiet)
    used = read_metadata(run / "train_state.safetensors")["threads"]
    assert used == str(train_module.auto_threads())
    monkeypatch.setattr(train_module, "auto_threads", lambda: int(used) + 1)
    train(
        make_args("tiny", out=str(run), steps=3, resume=True, **{**FAST, "threads": 0}),
        fake_arrays(),
        log=quiet,
    )
    assert read_metadata(run / "train_state.safetensors")["threads"] == used


def test_run_directory_errors(tmp_path):
    arrays = fake_arrays()
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(make_args("tiny", out=str(run), steps=2, resume=True, **FAST), arrays, log=quiet)
    train(make_args("tiny", out=str(run), steps=2, **FAST), arrays, log=quiet)
    with pytest.raises(ValueError, match="already has a checkpoint"):
        train(make_args("tiny", out=str(run), steps=4, **FAST), arrays, log=quiet)
    with pytest.raises(ValueError, match="changed settings.*lambda_gan"):
        train(
            make_args("tiny", out=str(run), steps=4, resume=True, lambda_gan=0.5, **FAST), arrays, log=quiet
        )
    with pytest.raises(ValueError, match="data differs"):
        train(make_args("tiny", out=str(run), steps=4, resume=True, **FAST), fake_arrays(seed=1), log=quiet)
    with pytest.raises(ValueError, match="fewer than the batch size"):
        train(make_args("tiny", out=str(tmp_path / "r2"), batch_size=64, **FAST), arrays, log=quiet)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train(make_args("tiny", out=str(tmp_path / "r3"), steps=0, **FAST), arrays, log=quiet)
    with pytest.raises(ValueError, match="unknown preset"):
        make_args("huge")
    bad = fake_arrays()
    del bad["depth"]
    with pytest.raises(ValueError, match="lacks depth"):
        train(make_args("tiny", out=str(tmp_path / "r4"), **FAST), bad, log=quiet)
    with pytest.raises(FileNotFoundError):
        load_arrays(str(tmp_path / "no-such-data"))


def test_resolve_args_takes_saved_settings_on_resume(tmp_path):
    run = tmp_path / "run"
    train(make_args("tiny", out=str(run), steps=2, seed=3, **FAST), fake_arrays(), log=quiet)
    args = resolve_args(str(run), None, True, {"steps": 4, "seed": None})
    assert args.preset == "tiny" and args.seed == 3 and args.steps == 4 and args.resume
    with pytest.raises(ValueError, match="preset tiny"):
        resolve_args(str(run), "default", True, {})
    fresh = resolve_args(str(tmp_path / "new"), "tiny", False, {"batch_size": 4})
    assert fresh.batch_size == 4 and fresh.generator == "tiny"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcan")
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_train_generator_npz(tmp_path, capsys):
    data = tmp_path / "pairs.npz"
    np.savez(data, **fake_arrays())
    run = tmp_path / "run"
    argv = [
        "train-generator",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--threads",
        "1",
    ]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert (run / "generator.safetensors").is_file()
    again = _parser().parse_args(argv)
    with pytest.raises(ValueError, match="--resume"):
        again.func(again)
    resumed = _parser().parse_args(
        ["train-generator", "--out", str(run), "--resume", "--steps", "3", "--threads", "1"]
    )
    assert resumed.func(resumed) == 0
    assert read_metadata(run / "generator.safetensors")["step"] == "3"


def test_sigkill_then_resume_is_exact(tmp_path):
    """A real kill -9 of a training process at a random point, then --resume, gives the same weights."""
    data = tmp_path / "pairs.npz"
    np.savez(data, **fake_arrays(n=60))
    steps = 30
    common = [
        "--data",
        str(data),
        "--preset",
        "tiny",
        "--threads",
        "1",
        "--steps",
        str(steps),
        "--checkpoint-every",
        "1",
    ]
    script = (
        "import argparse, sys; from rcan.adapt import commands; p = argparse.ArgumentParser(); "
        "commands.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    killed = tmp_path / "killed"
    # every step is a checkpoint, so the kill lands at an arbitrary point of the write sequence
    cmd = [sys.executable, "-c", script, "train-generator", *common]
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state = killed / "train_state.safetensors"
    deadline = time.time() + 60
    while time.time() < deadline and not state.exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert state.exists(), proc.stderr.read().decode()
    assert int(read_metadata(state)["step"]) < steps  # the kill landed mid-run
    # resume in this process: the saved arguments (data, preset, seed...) come from the checkpoint
    train(resolve_args(str(killed), None, True, {"threads": 1}), log=quiet)
    train(make_args("tiny", data=str(data), out=str(straight), steps=steps, threads=1), log=quiet)
    assert read_metadata(killed / "generator.safetensors")["step"] == str(steps)
    assert files_equal(straight / "generator.safetensors", killed / "generator.safetensors") == []


def test_trains_from_a_paired_dataset_directory(tmp_path):
    """Through ``rcan.data.paired.PairedDataset``: a collection written with the data package's own writer
    (fake pixels, so no rendering is needed)."""
    from rcan.data.collect import CollectConfig
    from rcan.data.paired import MANIFEST_NAME, ShardWriter, shard_name, write_json_atomic

    data = tmp_path / "pairs"
    data.mkdir()
    arrays = fake_arrays(n=24, size=32)
    manifest = CollectConfig(samples=24, shard_size=16, image_size=32).manifest()
    write_json_atomic(data / MANIFEST_NAME, manifest)
    for shard, (lo, hi) in enumerate(((0, 16), (16, 24))):
        writer = ShardWriter(data / shard_name(shard), manifest, shard, num_objects=5)
        for i in range(lo, hi):
            writer.append(
                {k: v[i] for k, v in arrays.items()}, episode=i // 8, step=i % 8, seed=0, objects=["o"] * 5
            )
        writer.close()
    run = tmp_path / "run"
    res = train(make_args("tiny", data=str(data), out=str(run), steps=3, **FAST), log=quiet)
    assert res["step"] == 3
    _, cfg = load_generator(run)
    assert cfg.image_size == 32
    with pytest.raises(ValueError, match="manifest"):  # a directory that is not a paired dataset
        train(make_args("tiny", data=str(tmp_path), out=str(tmp_path / "r2"), **FAST), log=quiet)
