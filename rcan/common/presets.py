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


FLAG_ONLY = ("out", "resume", "preset")
"""Run settings that are flags of their own (where the run lives, whether it continues, what it starts
from): ``--set`` refuses them rather than clash with the flag or be recorded without effect."""


def parse_settings(cls: type, items: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "channels=16,32,32"]`` -> typed overrides for the fields of dataclass ``cls``, for a
    CLI's ``--set``: every hyperparameter is reachable without a flag of its own. Values are converted to
    the type of the field's default (a comma list for tuples); bad names or values raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if name in FLAG_ONLY and name in fields:
            raise ValueError(f"give --{name} as its own flag, not --set {name}=...")
        if not sep or name not in fields:
            known = ", ".join(sorted(fields))
            raise ValueError(f"--set expects NAME=VALUE with NAME one of: {known}; got {item!r}")
        default = fields[name].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1")
            elif isinstance(default, tuple):
                value = tuple(type(default[0])(v) for v in text.split(",")) if default else tuple(text.split(","))
            elif isinstance(default, (int, float)):
                value = type(default)(text)
            elif text.lower() == "none":
                value = None
            else:
                value = text
        except ValueError:
            raise ValueError(f"--set {name}: {text!r} is not a valid {type(default).__name__}") from None
        out[name] = value
    return out
