"""Several runs of a study at once (`clipkd ablate --jobs N`), each in a process of its own.

Each run trains in ``python -m clipkd.ablate.jobs <config.yaml>`` with its share of the machine: ``cores // N``
CPU threads (``OMP_NUM_THREADS``, unless set already) and, when there are GPUs, one GPU (the slot's, in turn over
``CUDA_VISIBLE_DEVICES``). Its output goes to ``<out>/logs/<run>.log``. A small model does not use two cores well
and the data pipeline runs beside the step, so on 2 cores two runs at once finish sooner than one after another
(``benchmarks/RESULTS.md``).

Stopping: a SIGTERM/SIGINT to the study is passed to every running run, which writes its checkpoint and leaves
(the study then returns); the same command continues them. Each run also gets SIGTERM when the study's process
dies in any way (Linux), so no run is left behind. A run that fails stops new runs from starting; the running
ones finish, then the error names the run and shows the end of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from clipkd.errors import RunFailed

EXIT_STOPPED = 75
"""Exit code of a run process that a signal stopped (after writing its checkpoint)."""

POLL_S = 0.5
LOG_TAIL_LINES = 20


@dataclass
class Job:
    """One run to train: its name, the config file it trains from, whether to start anew, and its log."""

    name: str
    config: Path
    log: Path
    fresh: bool = False


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs the runs are spread over: ``CUDA_VISIBLE_DEVICES``'s entries (all devices when unset); none
    without CUDA."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in listed.split(",") if v.strip()] if listed is not None else [str(i) for i in range(count)]
    return ids[:count]


def job_environment(slot: int, jobs: int, cores: int, gpus: Sequence[str], environ: Mapping[str, str]) -> dict:
    """The environment of the run in ``slot`` (0 .. jobs-1): its share of the cores as ``OMP_NUM_THREADS``
    (unless the environment sets it) and, with GPUs, the slot's GPU as its only visible one."""
    from clipkd.runtime.threads import set_thread_environment

    env = dict(environ)
    set_thread_environment(env)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    env["CLIPKD_STUDY_PID"] = str(os.getpid())
    return env


def job_command(job: Job) -> list[str]:
    return [sys.executable, "-m", "clipkd.ablate.jobs", str(job.config), *(["--fresh"] if job.fresh else [])]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Forwarding:
    """While running: SIGTERM/SIGINT to this process set ``signal_name`` and go on to every running run."""

    def __init__(self, running: dict) -> None:
        self.running = running
        self.signal_name: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        for proc, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def __enter__(self) -> "_Forwarding":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_parallel(jobs: list[Job], slots: int, on_done: Callable[[str], None],
                   on_change: Callable[[list[str]], None] = lambda names: None,
                   cores: Optional[int] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Train ``jobs`` with at most ``slots`` at once; ``on_done(name)`` after each finished run, ``on_change``
    with the running runs' names. Returns the signal that stopped the study (None: all finished); raises
    :class:`RunFailed` when a run failed (after the others stopped)."""
    from clipkd.runtime.threads import usable_cores

    environ = os.environ if environ is None else environ
    cores, gpus = cores or usable_cores(), visible_gpus(environ)
    pending, running, failed = list(jobs), {}, []
    with _Forwarding(running) as stop:
        while pending or running:
            while pending and len(running) < slots and stop.signal_name is None and not failed:
                slot = min(set(range(slots)) - set(running))
                job = pending.pop(0)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "ab") as out:
                    proc = subprocess.Popen(job_command(job), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL,
                                            env=job_environment(slot, slots, cores, gpus, environ))
                running[slot] = (proc, job)
                on_change([j.name for _, j in running.values()])
            time.sleep(POLL_S)
            for slot, (proc, job) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[slot]
                if code == 0:
                    on_done(job.name)
                elif code == EXIT_STOPPED or stop.signal_name is not None:  # asked to stop: its checkpoint is written
                    stop.signal_name = stop.signal_name or f"a signal to run {job.name}"
                else:
                    failed.append((job, code))
                on_change([j.name for _, j in running.values()])
    if failed:
        raise RunFailed("\n\n".join(f"run {job.name} failed (exit code {code}); the end of its log {job.log}:\n"
                                    f"{log_tail(job.log)}" for job, code in failed))
    return stop.signal_name


def _die_with_study() -> None:
    """Ask Linux for SIGTERM when the study's process dies (checkpoint, then leave), and leave now if it is gone."""
    parent = int(os.environ.get("CLIPKD_STUDY_PID", "0"))
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent and os.getppid() != parent:
        sys.exit(EXIT_STOPPED)


def main(argv: Sequence[str]) -> int:
    """One run of a study: ``<config.yaml> [--fresh]``; exit 0 when finished (also when a signal came during its
    final evaluation), :data:`EXIT_STOPPED` when a signal stopped it before."""
    _die_with_study()
    from clipkd.runtime.threads import set_thread_environment

    set_thread_environment()
    import logging

    import yaml

    from clipkd.ablate.runs import train
    from clipkd.config import validate_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = validate_config(yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8")))
    outcome = train(cfg, fresh=True) if "--fresh" in argv[1:] else train(cfg)
    return 0 if outcome.complete else EXIT_STOPPED  # complete: the study collects it (a signal stops the study)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
