"""One PyBullet physics server per environment, never the global connection.

PyBullet's C code prints a banner on import and ``argv[0]=`` on every connection, straight to file
descriptors 2 and 1; both are silenced here so command output and logs stay clean. Import ``pb`` from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

_QUIET_LOCK = threading.RLock()
"""The fds are the process's: threads take turns, or one would save the /dev/null another set up and
"restore" it for good (the process's output lost). Other threads' prints during a connection are dropped."""


@contextlib.contextmanager
def _quiet(fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Point the given fds at /dev/null for the duration (C-level prints bypass sys.stdout/stderr)."""
    with _QUIET_LOCK:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = [os.dup(fd) for fd in fds]
        except (OSError, ValueError):  # no real fds (e.g. captured by a test runner): nothing to silence
            yield
            return
        try:
            with open(os.devnull, "w") as devnull:
                for fd in fds:
                    os.dup2(devnull.fileno(), fd)
                yield
        finally:
            _flush_c_stdio()  # C's buffered prints must drain into /dev/null, not later into the real fds
            for fd, old in zip(fds, saved, strict=True):
                os.dup2(old, fd)
                os.close(old)


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


with _quiet():
    import pybullet as pb  # noqa: E402
    from pybullet_utils.bullet_client import BulletClient  # noqa: E402

Client = BulletClient


def new_client() -> BulletClient:
    """A DIRECT (headless) server: many can live in one process, each fully independent."""
    with _quiet():
        return BulletClient(connection_mode=pb.DIRECT)


__all__ = ["Client", "BulletClient", "new_client", "pb"]
