"""Pre-emption: SIGTERM / SIGINT ask the run to stop after the current step, with a checkpoint.

Slurm and Ctrl-C signal the whole process group. The first signal only sets a flag, which the trainer reads
once per step (agreed over all ranks, so every rank stops at the same step). A second signal, later than
:data:`REPEAT_WINDOW_S`, exits at once.
Loader workers ignore both signals (``clipkd.data.stream.worker_init``) and leave with their parent.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

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

