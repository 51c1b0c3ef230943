"""Pre-emption: SIGTERM / SIGINT ask the run to stop after the current step, with a checkpoint.

Slurm and Ctrl-C signal the whole process group. The first signal only sets a flag, which the trainer reads
once per step (agreed over all ranks, so every rank stops at the same step). A second signal, later than
:data:`REPEAT_WINDOW_S`, exits at once.
Loader workers ignore both signals (``clipkd.data.stream.worker_init``) and leave with their parent.

Processes started through torchrun (:func:`launch_stoppable`): torchrun starts each worker in a session of its
own, so a Ctrl-C reaches the launcher and torchrun only. torchrun passes the signal on to its workers and waits
for them (then it would print a traceback: :func:`torchrun_main` is torchrun that leaves quietly instead); the
launcher passes a signal sent to it alone on to torchrun, and says how it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 1.0
"""A signal this soon after the first is the same event delivered twice (Slurm signals every process of a job
and torchrun forwards the signal it got to its workers), not a second request."""


class StopRequest:
    """Context manager installing the handlers; ``signal_name`` is set once a stop was asked for."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first_at < REPEAT_WINDOW_S:
                return  # the same event delivered twice (e.g. by Slurm and by torchrun forwarding it)
            signal.signal(signum, signal.SIG_DFL)  # a second signal: leave now, the default way
            os.kill(os.getpid(), signum)
            return
        self.signal_name = signal.Signals(signum).name
        self._first_at = time.monotonic()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


LAUNCHER_REPORTS_STOP = "CLIPKD_LAUNCHER_REPORTS_STOP"
"""Set (to ``1``) in the environment of processes started by :func:`launch_stoppable`: their launcher says how
the command stopped, they need not."""


def _exit_quietly(signum: int, frame) -> None:
    raise SystemExit(0)


def _kill_children() -> None:
    """SIGKILL this process's direct children (Linux: /proc); their own children (loader workers) follow them by
    their parent-death signal."""
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            pids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def torchrun_main(argv: Sequence[str]) -> int:
    """``torchrun argv``, except that on SIGTERM/SIGINT it passes the signal on to its workers, waits for them
    (torchrun's ``--shutdown_timeout``, 30 s by default, then SIGKILL) and exits 0 without a traceback. The same
    signal delivered twice within :data:`REPEAT_WINDOW_S` (to the group and by the launcher) counts once; a second
    one, later, kills the workers at once and exits with 128 + the signal's number."""
    for sig in SIGNALS:  # until torchrun installs its own handler (as it starts the workers): nothing to wait for
        signal.signal(sig, _exit_quietly)
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.run import main

    real, first = api._terminate_process_handler, [0.0]

    def once(signum: int, frame) -> None:
        if first[0] and time.monotonic() - first[0] < REPEAT_WINDOW_S:
            return
        if first[0]:  # a second request: end the workers now (torchrun's own handler would leave them running)
            _kill_children()
            os._exit(128 + signum)
        first[0] = time.monotonic()
        real(signum, frame)

    api._terminate_process_handler = once  # torchrun installs it by its module name when it starts the workers
    try:
        main(list(argv))
    except api.SignalException:
        pass  # the workers were told and waited for
    return 0


def launch_stoppable(nproc: int, clipkd_args: Sequence[str], threads: Optional[int] = None
                     ) -> tuple[int, Optional[str]]:
    """Run ``clipkd <clipkd_args>`` as ``nproc`` processes on this machine through :func:`torchrun_main`;
    (its exit code, the name of the signal that stopped it or None).

    A SIGTERM/SIGINT to this process is passed on to torchrun (which passes it on to the workers); a second
    one, later than :data:`REPEAT_WINDOW_S`, makes torchrun end the workers at once. ``threads``: CPU threads of
    each process, as ``OMP_NUM_THREADS`` unless that is set already.
    """
    from clipkd.runtime.distributed import torchrun_command
    from clipkd.runtime.threads import set_thread_environment

    env = {**os.environ, LAUNCHER_REPORTS_STOP: "1"}
    set_thread_environment(env)
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    command = torchrun_command(nproc, ["-m", "clipkd", *clipkd_args], runner="clipkd.runtime.preemption")
    stopped: list[str] = []
    started: list[subprocess.Popen] = []

    def forward(signum: int, frame) -> None:
        stopped.append(signal.Signals(signum).name)
        if started and started[0].poll() is None:
            started[0].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNALS}
    try:
        started.append(subprocess.Popen(command, env=env))
        if stopped:  # it came while torchrun was being started: pass it on now
            started[0].send_signal(getattr(signal, stopped[0]))
        return started[0].wait(), (stopped[0] if stopped else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(torchrun_main(sys.argv[1:]))
