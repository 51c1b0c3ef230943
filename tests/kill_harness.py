"""Run ``clipkd train`` in this process and kill or signal it at a chosen point (fault injection for tests).

    python tests/kill_harness.py POINT N [clipkd train arguments ...]

POINT:
  ``step``           SIGKILL right after the N-th optimizer step, before it is logged or checkpointed;
  ``in-write``       SIGKILL inside the N-th checkpoint write, after its state file, before its checksums;
  ``before-rename``  SIGKILL when the N-th checkpoint is complete in its temporary folder, before the rename;
  ``SIGTERM``, ``SIGINT``  after the N-th optimizer step, send that signal to the whole process group (as Slurm
                     and Ctrl-C do); ``SIGTERM-twice`` sends it twice;
  ``none``           no fault.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from clipkd.cli import main
from clipkd.engine import checkpoint as ckpt
from clipkd.engine.trainer import Trainer


def _on_nth_call(real, n: int, action, before: bool = False, counts=lambda args: True):
    """Wrap ``real`` to run ``action()`` at its n-th counted call (after the call, or ``before`` it)."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        hit = False
        if counts(args):
            calls["n"] += 1
            hit = calls["n"] == n
        if hit and before:
            action()
        out = real(*args, **kwargs)
        if hit and not before:
            action()
        return out

    return wrapped


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _signal_group(name: str, times: int):
    def send() -> None:
        for i in range(times):
            if i:
                time.sleep(1.5)  # a separate event, not the same signal delivered twice
            os.killpg(os.getpgid(0), getattr(signal, name))

    return send


def arm(point: str, n: int) -> None:
    if point.startswith("SIG"):
        name, _, twice = point.partition("-")
        Trainer.train_step = _on_nth_call(Trainer.train_step, n, _signal_group(name, 2 if twice else 1))
    elif point == "step":
        Trainer.train_step = _on_nth_call(Trainer.train_step, n, _kill)
    elif point == "in-write":
        ckpt._write = _on_nth_call(ckpt._write, n, _kill, counts=lambda args: args[0].name == ckpt.STATE_FILE)
    elif point == "before-rename":
        ckpt._move_into_place = _on_nth_call(ckpt._move_into_place, n, _kill, before=True)
    elif point != "none":
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(["train", *sys.argv[3:]]))
