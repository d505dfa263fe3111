"""Atomic, durable file writes: a kill at any instant leaves the old file or the complete new one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


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


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def open_atomic(
    path: str | os.PathLike[str], mode: str = "wb", tmp: str | os.PathLike[str] | None = None
) -> Iterator[IO[Any]]:
    """Write through a temp file beside ``path`` (``tmp`` if given); on success fsync it and rename it over
    ``path``, on any error remove it and leave ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(name, 0o666 & ~_umask())  # mkstemp's 0600 would follow the file through the rename
        fh = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    else:
        name = str(tmp)
        fh = open(name, mode, **({} if "b" in mode else {"encoding": "utf-8"}))  # noqa: SIM115
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, tmp: str | os.PathLike[str] | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (see ``open_atomic``)."""
    with open_atomic(path, "w", tmp=tmp) as fh:
        fh.write(text)
    return Path(path)


def write_json_atomic(
    path: str | os.PathLike[str], obj: Any, sort_keys: bool = False, tmp: str | os.PathLike[str] | None = None
) -> Path:
    """``obj`` as indented JSON (plus a final newline), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n", tmp=tmp)
