"""``rcan collect --backend ray``: paired-data shards made by Ray tasks, on one machine or a cluster.

Same bytes as the local backend: shard ``i`` is made by ``write_shard`` (``rcan.data.collect``), whose output
depends only on ``(seed, i, config)``; a Ray task runs it in a private temp directory on whatever node it
lands and returns the finished file's bytes, which the driver writes into ``--out`` atomically under the
collection's temp-name scheme. So nodes need no shared file system, a task whose worker dies is simply run
again (same shard, same bytes), and a killed collection resumes with the same command like a local one.
What every node needs: ``rcan`` installed, and the same absolute ``--texture-dir`` / agent paths if used.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from rcan.common.atomic import open_atomic
from rcan.data.collect import CollectConfig, write_shard
from rcan.data.paired import shard_name, shard_range, temp_name

TASK_RETRIES = 3
"""Times Ray re-runs a shard whose worker process died (the shard is deterministic, so a retry is exact)."""


def shard_bytes(config: CollectConfig, index: int) -> bytes:
    """Make shard ``index`` in a private temp directory and return the file's bytes (runs in a Ray task)."""
    from rcan.qtopt.ray_backend import quiet_stdout

    quiet_stdout()
    with tempfile.TemporaryDirectory(prefix="rcan-shard-") as tmp:
        return write_shard(tmp, config, index).read_bytes()


def run_shards(
    root: Path, config: CollectConfig, pending: list[int], workers: int, bar: Any, address: str | None = None
) -> None:
    """Make the ``pending`` shards of ``config`` in ``root`` with at most ``workers`` Ray tasks at a time.

    Joins the cluster at ``address`` or starts a local Ray with ``workers`` CPUs (and stops it at the end).
    ``bar`` (tqdm) advances by a shard's samples as each shard lands.
    """
    from rcan.qtopt.ray_backend import ray_session

    with ray_session(address, num_cpus=workers) as ray:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(shard_bytes)
        todo = list(pending)
        running: dict[Any, int] = {}
        try:
            while todo or running:
                while todo and len(running) < workers:
                    index = todo.pop(0)
                    running[task.remote(config, index)] = index
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in done:
                    index = running.pop(ref)
                    data = _result(ray, ref, index)
                    final = root / shard_name(index)
                    with open_atomic(final, tmp=root / temp_name(final.name)) as f:
                        f.write(data)
                    start, stop = shard_range(config.samples, config.shard_size, index)
                    bar.update(stop - start)
        finally:
            for ref in running:  # e.g. Ctrl-C on an external cluster: do not leave work running there
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref, force=True)


def _result(ray: Any, ref: Any, index: int) -> bytes:
    """The task's bytes; the user's input errors keep their type (one clear CLI line), the rest say where."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, (ValueError, FileNotFoundError)):
            raise type(cause)(str(cause)) from None
        raise RuntimeError(f"shard {index} failed in a Ray task ({type(cause).__name__}: {cause})") from None
    except ray.exceptions.RayError as err:
        raise RuntimeError(
            f"shard {index} was lost after {TASK_RETRIES} retries ({type(err).__name__}); "
            "rerun the same command to resume"
        ) from None
