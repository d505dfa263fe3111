"""Paired data collection and the rcan-paired-v1 format: round trip, determinism, resume, validation."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from procs import children, kill_parent_then_wait, reap

from rcan.data import FORMAT, CollectConfig, PairedDataset, collect
from rcan.data import commands as data_commands
from rcan.data.collect import LOCK_NAME, PAIR_DOMAINS
from rcan.data.paired import CONFIG_FIELDS, MANIFEST_NAME, shard_name
from rcan.sim.domains import DOMAINS

# 30 samples in shards of 8: four shards, the last one smaller (6).
CONFIG = CollectConfig(samples=30, shard_size=8, seed=7)
SHARDS = 4


def _hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("shard-*.h5"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-worker collection, shared (read-only) by the tests below."""
    root = tmp_path_factory.mktemp("paired") / "ref"
    summary = collect(root, CONFIG, workers=1, progress=False)
    assert summary.shards_written == SHARDS and summary.samples_written == 30
    return root


@pytest.fixture
def copy(reference: Path, tmp_path: Path) -> Path:
    """A private copy of the reference collection, for tests that damage it."""
    return Path(shutil.copytree(reference, tmp_path / "copy"))


# -- round trip ------------------------------------------------------------------------------------------
def test_round_trip_and_metadata(reference: Path) -> None:
    ds = PairedDataset(reference)
    assert len(ds) == 30 and ds.image_size == 64 and ds.complete
    m = ds.manifest
    assert list(m) == list(CONFIG_FIELDS) and m["format"] == FORMAT
    assert (m["samples"], m["shard_size"], m["seed"], m["domain"]) == (30, 8, 7, "heavy")
    assert (m["policy"], m["texture_dir"], m["object_split"]) == ("scripted", None, "train")

    data = ds.load()
    n, s = 30, 64
    expected = {
        "randomized": ((n, s, s, 3), np.uint8),
        "canonical": ((n, s, s, 3), np.uint8),
        "segmentation": ((n, s, s), np.uint8),
        "depth": ((n, s, s), np.float32),
        "episode": ((n,), np.int64),
        "step": ((n,), np.int64),
        "seed": ((n,), np.int64),
    }
    assert set(data) == set(expected)
    for k, (shape, dtype) in expected.items():
        assert data[k].shape == shape and data[k].dtype == dtype, k
    assert data["segmentation"].max() <= 4 and len(np.unique(data["segmentation"])) >= 4
    assert np.all(np.isfinite(data["depth"])) and 0.05 < data["depth"].min() < data["depth"].max() <= 3.0
    assert np.abs(data["randomized"].astype(int) - data["canonical"].astype(int)).mean() > 5

    # Trajectories: each shard starts a new episode at step 0; steps count up within an episode, whose
    # seed and objects are constant; episode ids are unique across shards.
    ep, step, seed = data["episode"], data["step"], data["seed"]
    for start in range(0, 30, 8):
        assert step[start] == 0 and ep[start] == start
    for i in range(1, n):
        if ep[i] == ep[i - 1]:
            assert step[i] == step[i - 1] + 1 and seed[i] == seed[i - 1]
            assert ds.objects(i) == ds.objects(i - 1)
        else:
            assert step[i] == 0 and ep[i] > ep[i - 1]
    assert step.max() >= 3  # real trajectories, not just resets
    names = ds.objects(0)
    assert len(names) == 5 and all(isinstance(x, str) and "/" in x for x in names)

    # __getitem__ agrees with load(), across shard boundaries and with negative indices.
    for i in (0, 7, 8, 29, -1):
        item = ds[i]
        assert set(item) == set(expected)
        for k in expected:
            assert np.array_equal(item[k], data[k][i]), (i, k)
    part = ds.load(5, 20)
    for k in expected:
        assert np.array_equal(part[k], data[k][5:20])
    assert len(ds.load(20, 10)["depth"]) == 0
    with pytest.raises(IndexError):
        ds[30]
    clone = pickle.loads(pickle.dumps(ds))  # e.g. into DataLoader workers: handles reopen lazily
    assert np.array_equal(clone[9]["randomized"], data["randomized"][9])
    clone.close()
    ds.close()


def test_other_domain_and_texture_dir(tmp_path: Path) -> None:
    from PIL import Image

    textures = tmp_path / "textures"
    textures.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 90 * i + 40, np.uint8)).save(textures / f"t{i}.png")
    root = tmp_path / "real"
    config = CollectConfig(samples=3, shard_size=2, seed=1, domain="real", texture_dir=str(textures))
    collect(root, config, workers=1, progress=False)
    ds = PairedDataset(root)
    assert len(ds) == 3 and ds.domain == "real"
    assert ds.manifest["texture_dir"] == str(textures.resolve())
    assert set(PAIR_DOMAINS) <= set(DOMAINS)


# -- determinism and resume ------------------------------------------------------------------------------
def test_same_seed_same_bytes_with_two_workers(reference: Path, tmp_path: Path) -> None:
    root = tmp_path / "two"
    summary = collect(root, CONFIG, workers=2, progress=False)
    assert summary.shards_written == SHARDS
    assert _hashes(root) == _hashes(reference)
    assert len(_hashes(root)) == SHARDS
    assert (root / MANIFEST_NAME).read_bytes() == (reference / MANIFEST_NAME).read_bytes()


def test_rerun_of_complete_collection_does_nothing(copy: Path) -> None:
    before = _hashes(copy)
    summary = collect(copy, CONFIG, workers=2, progress=False)
    assert summary.shards_written == 0 and summary.shards_skipped == SHARDS and summary.samples_written == 0
    assert _hashes(copy) == before


_COLLECT_SCRIPT = f"""
import json, sys
from rcan.data import CollectConfig, collect
s = collect(sys.argv[1], CollectConfig(samples={CONFIG.samples}, shard_size={CONFIG.shard_size}, seed={CONFIG.seed}),
            workers=2, progress=False)
print(json.dumps({{"written": s.shards_written, "skipped": s.shards_skipped}}))
"""


def test_resume_after_sigkill(reference: Path, tmp_path: Path) -> None:
    root = tmp_path / "killed"
    command = [sys.executable, "-c", _COLLECT_SCRIPT, str(root)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not (root / shard_name(0)).exists() and not (root / shard_name(1)).exists():
            assert proc.poll() is None, "collection ended before it could be killed"
            assert time.monotonic() < deadline, "no shard appeared in time"
            workers = children(proc.pid) or workers
            time.sleep(0.02)
        workers = children(proc.pid) or workers
        # The parent only: its workers must notice and stop by themselves.
        assert workers and kill_parent_then_wait(proc, workers, 30), "orphaned workers kept running"
    finally:
        reap(proc, workers)

    present = set(_hashes(root))
    assert 1 <= len(present) < SHARDS, present  # really interrupted mid-way
    with pytest.raises(ValueError, match="missing shard"):
        PairedDataset(root)
    partial = PairedDataset(root, allow_partial=True)
    assert 0 < len(partial) < 30 and not partial.complete

    # The same command again finishes the job: kept shards untouched, the rest made, no leftovers.
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == {"written": SHARDS - len(present), "skipped": len(present)}
    assert _hashes(root) == _hashes(reference)
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert len(PairedDataset(root)) == 30


def test_leftover_temp_file_is_removed(copy: Path) -> None:
    (copy / shard_name(3)).unlink()
    tmp = copy / f".{shard_name(3)}.12345.tmp"
    tmp.write_bytes(b"half a shard")
    assert len(PairedDataset(copy, allow_partial=True)) == 24  # temp files are never read
    collect(copy, CONFIG, workers=1, progress=False)
    assert not tmp.exists()
    assert len(PairedDataset(copy)) == 30


# -- config and option errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, field",
    [
        ({"seed": 8}, "seed"),
        ({"samples": 31}, "samples"),
        ({"domain": "mild"}, "domain"),
        ({"shard_size": 4}, "shard_size"),
    ],
)
def test_resume_with_other_config_is_an_error(copy: Path, change: dict, field: str) -> None:
    before = _hashes(copy)
    with pytest.raises(ValueError, match=rf"different config \({field}: manifest.json has .*, this run has"):
        collect(copy, CollectConfig(**{**CONFIG.__dict__, **change}), workers=1, progress=False)
    assert _hashes(copy) == before


def test_other_package_version_is_an_error(copy: Path) -> None:
    path = copy / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["version"] = "0.0.1"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="version: manifest.json has '0.0.1', this run has"):
        collect(copy, CONFIG, workers=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, workers, match",
    [
        ({"samples": 0}, 1, "samples must be an integer >= 1"),
        ({"samples": 4}, 0, "workers must be an integer >= 1"),
        ({"samples": 4, "shard_size": 0}, 1, "shard_size"),
        ({"samples": 4, "seed": -1}, 1, "seed"),
        ({"samples": 4, "domain": "cartoon"}, 1, "unknown domain 'cartoon'"),
        ({"samples": 4, "domain": "canonical"}, 1, "unknown domain 'canonical'"),
        ({"samples": 4, "object_split": "val"}, 1, "object split"),
        ({"samples": 4, "policy": "agent"}, 1, "unknown policy 'agent'"),
        ({"samples": 4, "image_size": 4}, 1, "image_size"),
        ({"samples": 4, "texture_dir": "/nonexistent/textures"}, 1, "does not exist"),
    ],
)
def test_bad_options(tmp_path: Path, kwargs: dict, workers: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        collect(tmp_path / "out", CollectConfig(**kwargs), workers=workers, progress=False)
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_bad_texture_dirs(tmp_path: Path) -> None:
    (tmp_path / "file.png").write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="not a directory"):
        CollectConfig(samples=1, texture_dir=str(tmp_path / "file.png")).validated()
    with pytest.raises(ValueError, match="no image files"):
        CollectConfig(samples=1, texture_dir=str(empty)).validated()


def test_error_in_a_worker_is_reported(tmp_path: Path) -> None:
    textures = tmp_path / "textures"
    textures.mkdir()
    (textures / "broken.png").write_bytes(b"not a png")
    config = CollectConfig(samples=2, shard_size=1, domain="heavy", texture_dir=str(textures))
    with pytest.raises(ValueError, match="broken.png"):
        collect(tmp_path / "out", config, workers=2, progress=False)
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob("*.h5"))


def test_out_must_be_a_directory_without_foreign_shards(tmp_path: Path, reference: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        collect(tmp_path / "afile", CONFIG, progress=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    shutil.copy(reference / shard_name(0), stray / shard_name(0))
    with pytest.raises(ValueError, match="without manifest.json"):
        collect(stray, CONFIG, progress=False)


def test_concurrent_collection_is_refused(copy: Path) -> None:
    with open(copy / LOCK_NAME, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="another `rcan collect`"):
            collect(copy, CONFIG, progress=False)


def test_command_wiring(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="rcan")
    data_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["collect", "--out", str(tmp_path / "o"), "--samples", "5"])
    assert (args.workers, args.seed, args.domain, args.image_size, args.shard_size) == (
        1,
        0,
        "heavy",
        64,
        256,
    )
    assert (args.policy, args.texture_dir, args.object_split) == (["scripted"], None, "train")
    bad = parser.parse_args(["collect", "--out", str(tmp_path / "o"), "--samples", "0", "--workers", "2"])
    with pytest.raises(ValueError, match="samples"):
        bad.func(bad)
    bad = parser.parse_args(["collect", "--out", str(tmp_path / "o"), "--samples", "2", "--workers", "0"])
    with pytest.raises(ValueError, match="workers"):
        bad.func(bad)


# -- damaged, foreign and missing files ------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _foreign(path: Path) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((4, 8, 8, 3), np.uint8))


def _other_collection(path: Path) -> None:
    with h5py.File(path, "a") as f:
        config = json.loads(f.attrs["collection"])
        config["seed"] = 99
        f.attrs["collection"] = json.dumps(config)


def _wrong_shard(path: Path) -> None:
    shutil.copy(path.with_name(shard_name(0)), path)


def _missing_dataset(path: Path) -> None:
    with h5py.File(path, "a") as f:
        del f["depth"]


def _wrong_dtype(path: Path) -> None:
    with h5py.File(path, "a") as f:
        data = f["segmentation"][...]
        del f["segmentation"]
        f.create_dataset("segmentation", data=data.astype(np.int32))


@pytest.mark.parametrize(
    "damage, match",
    [
        (_truncate, "not a readable HDF5 file"),
        (_garbage, "not a readable HDF5 file"),
        (_foreign, "not an rcan-paired-v1 shard"),
        (_other_collection, r"different collection .*seed: shard has 99, manifest.json has 7"),
        (_wrong_shard, "attribute shard is 0, expected 1"),
        (_missing_dataset, r"missing \['depth'\]"),
        (_wrong_dtype, "dataset segmentation is int32"),
        (lambda p: p.unlink(), "missing shard"),
    ],
    ids=[
        "truncated",
        "garbage",
        "foreign",
        "other-collection",
        "wrong-shard",
        "no-dataset",
        "dtype",
        "missing",
    ],
)
def test_damaged_shard_is_a_clear_error(copy: Path, damage, match: str) -> None:
    path = copy / shard_name(1)
    damage(path)
    with pytest.raises(ValueError, match=match) as err:
        PairedDataset(copy)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    # Resuming does not silently overwrite or skip a damaged shard either.
    if path.exists():
        with pytest.raises(ValueError, match="delete it and rerun"):
            collect(copy, CONFIG, progress=False)


def test_flipped_bytes_fail_on_read(copy: Path) -> None:
    path = copy / shard_name(2)
    with h5py.File(path, "r") as f:
        offset = f["randomized"].id.get_chunk_info(3).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 0xFF]))
    ds = PairedDataset(copy)  # the structure is intact, and so are the other chunks
    assert ds[16 + 2]["randomized"].shape == (64, 64, 3)
    with pytest.raises(ValueError, match=shard_name(2)):
        ds[16 + 3]
    with pytest.raises(ValueError, match=shard_name(2)):
        ds.load()
    ds.close()
    # A restart keeps finished shards for good, so it reads every checksum of the ones it keeps.
    with pytest.raises(ValueError, match=rf"{shard_name(2)}.*delete it and rerun"):
        collect(copy, CONFIG, progress=False)


def test_a_flipped_byte_in_the_labels_is_refused_on_open(copy: Path) -> None:
    """Episode ids, steps, seeds and object names carry checksums too, and are read on open: a damaged
    label is an error, never a wrong label served for good."""
    path = copy / shard_name(1)
    with h5py.File(path, "r") as f:
        info = f["step"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        byte = fh.read(1)
        fh.seek(info.byte_offset)
        fh.write(bytes([byte[0] ^ 0x07]))
    with pytest.raises(ValueError, match=rf"{shard_name(1)}: damaged"):
        PairedDataset(copy)


def test_extra_shard_is_an_error(copy: Path) -> None:
    shutil.copy(copy / shard_name(0), copy / shard_name(9))
    with pytest.raises(ValueError, match=rf"{shard_name(9)}: unexpected shard file"):
        PairedDataset(copy)


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "manifest.json: missing"),
        ("{not json", "manifest.json: not a readable JSON manifest"),
        ('{"format": "something-else"}', "manifest.json: format is 'something-else'"),
        ('{"format": "rcan-paired-v1", "samples": 30}', "manifest.json: missing field"),
    ],
)
def test_bad_manifest_is_a_clear_error(copy: Path, content: str | None, match: str) -> None:
    path = copy / MANIFEST_NAME
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        PairedDataset(copy)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PairedDataset(tmp_path / "nowhere")


def test_agent_policy_drives_collection(tmp_path: Path) -> None:
    """`rcan collect --policy agent CHECKPOINT`: a trained QT-Opt agent (here untrained) drives episodes."""
    from rcan.cli import main
    from rcan.qtopt.agent import save_agent
    from rcan.qtopt.cem import CEMConfig
    from rcan.qtopt.network import QNetConfig, QNetwork

    agent = save_agent(tmp_path / "run" / "agent.safetensors", QNetwork(QNetConfig()), "mild", CEMConfig(8, 2, 1))
    out = tmp_path / "by-agent"
    argv = ["collect", "--out", str(out), "--samples", "6", "--shard-size", "3", "--no-progress"]
    assert main([*argv, "--policy", "agent", str(agent.parent)]) == 0
    ds = PairedDataset(out)
    assert len(ds) == 6 and ds.manifest["policy"] == f"agent:{agent.resolve()}"
    assert main([*argv, "--policy", "agent"]) == 2
    assert main(["collect", "--out", str(tmp_path / "x"), "--samples", "2", "--policy", "agent", str(tmp_path / "none")]) == 2
