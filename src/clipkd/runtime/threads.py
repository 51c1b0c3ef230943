"""How many CPU threads a training process uses for tensor ops.

PyTorch starts one OpenMP thread per core and its threads spin while they wait for each other. When anything
else uses those cores (the loader workers, another job) a spinning thread holds a core the others need, and
a small model's step becomes many times slower. clipkd therefore

* lets OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, set by the ``clipkd`` command
  before torch loads, unless the environment says otherwise), and
* uses the cores this process may run on (CPU affinity and cgroup quota), shared among the processes on this
  machine: :func:`choose_threads`. Loader workers are not subtracted: with sleeping waits, the compute threads
  leave the cores to the workers whenever they wait, and on 2 cores with 2 workers subtracting them (1 thread)
  cost 20-30% of the throughput, idle or busy (``benchmarks/threads.py``).

``threads:`` in the config or ``OMP_NUM_THREADS`` in the environment override the choice. Loader workers run
single-threaded (PyTorch sets one thread in each DataLoader worker).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Mapping, Optional

log = logging.getLogger(__name__)

WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment set before torch loads (see :func:`set_thread_environment`)."""


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> Optional[float]:
    """Cores allowed by the cgroup v2 CPU quota (``cpu.max``), or None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def choose_threads(requested: Optional[int], local_processes: int = 1, cores: Optional[int] = None,
                   environ: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
    """(threads, why): ``requested`` (config ``threads``); else ``OMP_NUM_THREADS``; else this process's share
    of the usable cores, at least 1."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return requested, "threads in the config"
    env_value = environ.get("OMP_NUM_THREADS", "").strip()
    if env_value.isdigit() and int(env_value) > 0:
        return int(env_value), "OMP_NUM_THREADS"
    cores = cores or usable_cores()
    return max(1, cores // max(1, local_processes)), f"{cores} usable cores, {local_processes} process(es)"


def set_thread_environment(environ: Optional[dict] = None) -> None:
    """Before torch is imported: OpenMP threads sleep while waiting (unless the environment already says)."""
    environ = os.environ if environ is None else environ
    for key, value in WAIT_POLICY.items():
        environ.setdefault(key, value)


def apply_threads(requested: Optional[int], local_processes: int = 1) -> int:
    """Set PyTorch's intra-op threads for this process (see :func:`choose_threads`); the number set."""
    import torch

    threads, why = choose_threads(requested, local_processes)
    torch.set_num_threads(threads)
    log.info("using %d CPU thread(s) for tensor ops (%s)", threads, why)
    return threads
