"""A trainer killed with SIGKILL (or by the OOM killer) leaves no collector behind: each collector process
notices its parent is gone and exits, instead of filling a queue no one reads beside the resumed run."""

from __future__ import annotations

import subprocess
import sys

from procs import children, cmdline, kill_parent_then_wait, reap

_SCRIPT = """
import sys, time
from rcan.qtopt.args import make_args, make_collectors
coll = make_collectors(make_args("tiny", out=sys.argv[1], collectors=1), seed=0)
deadline = time.monotonic() + 120
while not coll.poll():
    assert time.monotonic() < deadline, "no episode in time"
    time.sleep(0.05)
print("collecting", flush=True)
time.sleep(600)
"""


def test_collectors_exit_when_the_trainer_is_killed(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "collecting"
        workers = [p for p in children(proc.pid) if "spawn_main" in cmdline(p)]
        assert len(workers) == 1, [cmdline(p) for p in children(proc.pid)]
        # The trainer only; the collector notices between episodes.
        assert kill_parent_then_wait(proc, workers, 60), "an orphaned collector kept running"
    finally:
        reap(proc, workers)
