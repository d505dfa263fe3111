"""Atomic, durable file writes: a kill at any instant leaves the old file or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable (best effort: not every file system lets a directory be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike[str], text: str, tmp: str | os.PathLike[str] | None = None) -> Path:
    """Write ``text`` to a temp file beside ``path`` (``tmp`` if given), fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        fh = os.fdopen(fd, "w", encoding="utf-8")
    else:
        name = str(tmp)
        fh = open(name, "w", encoding="utf-8")  # noqa: SIM115 (closed below, before the rename)
    try:
        with fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, sort_keys: bool = False, tmp: str | os.PathLike[str] | None = None
) -> Path:
    """``obj`` as indented JSON (plus a final newline), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", tmp=tmp)
