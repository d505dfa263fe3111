"""Checkpoint files as safetensors: weights, optimizer state and RNG state, written atomically.

Why safetensors and never ``torch.save``/pickle: a checkpoint is data, and loading it must not be able to
run code. Everything that is not a tensor (step, configs, optimizer hyperparameters) goes into the file's
string metadata as JSON.

Atomicity: a file is written to a temporary name in the same directory, flushed and fsynced, then
``os.replace``-d over the target, so a reader (or a resumed run after a kill) sees either the old file or
the new one, never a partial file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from rcan.common.atomic import open_atomic

FORMAT_KEY = "format"


def save_safetensors_atomic(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write ``tensors`` and string ``metadata`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, got {key!r}: {type(value).__name__}")
    clean: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share storage; a copy makes each entry independent.
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        clean[name] = t
    blob = _st_save(clean, metadata=dict(metadata))
    with open_atomic(path) as f:
        f.write(blob)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Only the metadata of a safetensors file (cheap: reads the header)."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({_short(err)})") from None


def load_safetensors(
    path: str | os.PathLike[str], expect_format: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata; with ``expect_format``, also check the file is ours.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a truncated, corrupt or foreign one.
    """
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({_short(err)})") from None
    if expect_format is not None and metadata.get(FORMAT_KEY) != expect_format:
        found = metadata.get(FORMAT_KEY)
        what = f"format {found!r}" if found else "no rcan metadata"
        raise ValueError(f"{path} is not an rcan {expect_format!r} file ({what})")
    return tensors, metadata


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


# -- optimizer state -----------------------------------------------------------------------------------
def optimizer_state_to_tensors(
    opt: torch.optim.Optimizer, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten ``opt.state_dict()`` into named tensors plus JSON metadata.

    Tensors are named ``{prefix}state.{param_index}.{key}``; non-tensor per-parameter values and the
    param groups (hyperparameters and parameter indices) go into metadata ``{prefix}optimizer`` as JSON.
    """
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}state.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(value)
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = {
        f"{prefix}optimizer": json.dumps(
            {"class": type(opt).__name__, "param_groups": groups, "scalars": scalars}, sort_keys=True
        )
    }
    return tensors, meta


def load_optimizer_state(
    opt: torch.optim.Optimizer,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    prefix: str = "",
) -> None:
    """Inverse of :func:`optimizer_state_to_tensors`; raises ValueError if the file does not fit ``opt``."""
    key = f"{prefix}optimizer"
    if key not in metadata:
        raise ValueError(f"checkpoint has no optimizer state {key!r}")
    info = json.loads(metadata[key])
    if info.get("class") != type(opt).__name__:
        raise ValueError(f"checkpoint optimizer is {info.get('class')!r}, expected {type(opt).__name__!r}")
    groups = [{k: _from_json(k, v) for k, v in g.items()} for g in info["param_groups"]]
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}state."
    for name, value in tensors.items():
        if not name.startswith(head):
            continue
        idx, _, field = name[len(head) :].partition(".")
        state.setdefault(int(idx), {})[field] = value.clone()
    for idx, values in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"optimizer state does not match the model: {_short(err)}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if torch.is_tensor(value):
        return value.item()
    return value


def _from_json(key: str, value: Any) -> Any:
    # Only ``params`` is a list in torch's param groups; hyperparameters like ``betas`` are tuples.
    if isinstance(value, list) and key != "params":
        return tuple(value)
    return value


# -- RNG state -----------------------------------------------------------------------------------------
def rng_state_to_tensors(prefix: str = "rng.") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """torch's CPU generator and numpy's legacy global generator, as tensors plus metadata."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the legacy global state)
    tensors = {
        f"{prefix}torch": torch.get_rng_state().clone(),
        f"{prefix}numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy()),
    }
    meta = {
        f"{prefix}numpy": json.dumps(
            {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": gauss}
        )
    }
    return tensors, meta


def load_rng_state(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], prefix: str = "rng."
) -> None:
    """Restore what :func:`rng_state_to_tensors` saved."""
    try:
        torch.set_rng_state(tensors[f"{prefix}torch"].clone())
        info = json.loads(metadata[f"{prefix}numpy"])
        keys = tensors[f"{prefix}numpy_keys"].numpy().view(np.uint32).copy()
    except KeyError as err:
        raise ValueError(f"checkpoint has no RNG state {err}") from None
    np.random.set_state((info["kind"], keys, info["pos"], info["has_gauss"], info["gauss"]))  # noqa: NPY002


def load_weights_strict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """``module.load_state_dict(tensors, strict=True)``, a mismatch reported as one clear ValueError."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the stored config ({str(err).splitlines()[0]})") from None
