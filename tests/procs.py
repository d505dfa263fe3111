"""Process helpers for the kill tests: a process's children and whether one still runs (Linux /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """The process ids of ``pid``'s direct children ([] once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    """``pid``'s command line, its arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_parent_then_wait(proc: subprocess.Popen, workers: list[int], timeout: float) -> bool:
    """SIGKILL ``proc`` alone (not its workers) and wait up to ``timeout`` s for ``workers`` to exit by
    themselves; True when none runs any more."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in workers)


def reap(proc: subprocess.Popen, workers: list[int]) -> None:
    """Whatever a failed test left running: ``proc`` and every worker still alive."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for p in workers:
        if alive(p):
            os.kill(p, signal.SIGKILL)
