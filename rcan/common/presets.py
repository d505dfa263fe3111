"""Argument dataclasses built from named presets plus overrides (shared by the trainers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_preset(cls: type[T], presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any]) -> T:
    """``cls(**presets[preset], preset=preset, **overrides)``; an unknown preset or field raises ValueError."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown training arguments: {', '.join(unknown)}")
    return cls(**{**presets[preset], "preset": preset, **overrides})
