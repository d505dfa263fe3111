"""Safetensors checkpoint helpers: round trips, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rcan.common.checkpoint import (
    load_optimizer_state,
    load_rng_state,
    load_safetensors,
    optimizer_state_to_tensors,
    read_metadata,
    rng_state_to_tensors,
    save_safetensors_atomic,
)


def test_round_trip_tensors_and_metadata(tmp_path):
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.arange(5),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0),
    }
    path = save_safetensors_atomic(tmp_path / "x.safetensors", tensors, {"format": "test", "step": "7"})
    loaded, meta = load_safetensors(path, expect_format="test")
    assert meta == {"format": "test", "step": "7"}
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k])
    assert read_metadata(path)["step"] == "7"
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left behind


def test_shared_and_noncontiguous_tensors_are_saved(tmp_path):
    base = torch.randn(4, 6)
    tensors = {"t": base.t(), "view": base[:2], "same": base}
    loaded, _ = load_safetensors(save_safetensors_atomic(tmp_path / "s.safetensors", tensors, {}))
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "x.safetensors"
    save_safetensors_atomic(path, {"a": torch.zeros(2)}, {"step": "1"})
    save_safetensors_atomic(path, {"a": torch.ones(2)}, {"step": "2"})
    loaded, meta = load_safetensors(path)
    assert meta["step"] == "2" and torch.equal(loaded["a"], torch.ones(2))


def test_metadata_must_be_strings(tmp_path):
    with pytest.raises(TypeError):
        save_safetensors_atomic(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {"step": 3})


def _adam_with_state(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Adam]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trip(tmp_path):
    model, opt = _adam_with_state()
    tensors, meta = optimizer_state_to_tensors(opt, "opt.")
    path = save_safetensors_atomic(tmp_path / "o.safetensors", tensors, {**meta, "format": "t"})
    loaded, meta2 = load_safetensors(path)

    model2, _ = _adam_with_state(seed=1)
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.Adam(model2.parameters(), lr=5.0)
    load_optimizer_state(opt2, loaded, meta2, "opt.")
    assert opt2.param_groups[0]["betas"] == (0.5, 0.999) and opt2.param_groups[0]["lr"] == 1e-3
    # identical next steps
    x = torch.randn(8, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_optimizer_state_mismatch_is_value_error():
    _, opt = _adam_with_state()
    tensors, meta = optimizer_state_to_tensors(opt)
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError):
        load_optimizer_state(other, tensors, meta)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_optimizer_state(other, tensors, {})
    sgd = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Adam"):
        load_optimizer_state(sgd, tensors, meta)


def test_rng_state_round_trip():
    """torch's generator and numpy's legacy global one (which third-party code may draw from)."""
    torch.manual_seed(3)
    np.random.seed(4)  # noqa: NPY002
    np.random.normal()  # noqa: NPY002 (leaves a cached gaussian in the state)
    tensors, meta = rng_state_to_tensors()
    a = (torch.rand(5), np.random.rand(5), np.random.normal())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    load_rng_state(tensors, meta)
    b = (torch.rand(5), np.random.rand(5), np.random.normal())  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "nope.safetensors")


def test_truncated_file_is_value_error(tmp_path):
    path = save_safetensors_atomic(tmp_path / "x.safetensors", {"a": torch.randn(100)}, {"format": "t"})
    data = path.read_bytes()
    for cut in (len(data) - 10, 40, 5, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            load_safetensors(path)


def test_garbage_file_is_value_error(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_safetensors(path)
    with pytest.raises(ValueError):
        read_metadata(path)


def test_foreign_file_is_value_error(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))  # a valid safetensors file without our metadata
    with pytest.raises(ValueError, match="no rcan metadata"):
        load_safetensors(path, expect_format="rcan.generator")
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "something.else"})
    with pytest.raises(ValueError, match="something.else"):
        load_safetensors(path, expect_format="rcan.generator")


def test_atomic_writes_get_the_umask_s_mode_not_mkstemp_s(tmp_path):
    """A shared results folder or a served report must be readable as any file the user writes is."""
    import os

    from rcan.common.atomic import write_text_atomic
    from rcan.common.images import save_png

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "x")
        save_safetensors_atomic(tmp_path / "w.safetensors", {"a": torch.zeros(1)}, {})
        save_png(tmp_path / "p.png", np.zeros((2, 2, 3), np.uint8))
        os.umask(0o077)
        write_text_atomic(tmp_path / "private.md", "x")
    finally:
        os.umask(old)
    for name in ("report.md", "w.safetensors", "p.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.md").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "private.md", "report.md", "w.safetensors"]
