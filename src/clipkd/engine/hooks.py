"""What the trainer calls to evaluate: a hook is any callable ``hook(distiller, step) -> {name: value}`` with a
``name``, called every ``eval.every_steps`` and at the end; its metrics are logged as ``eval/<name>/*``.

The trainer puts the student in eval mode around the call and back to train mode after. The engine knows only
this protocol: the hooks a config asks for (benchmarks, held-out loss and diagnostics) are built by
:func:`clipkd.build.hooks.eval_hooks` and handed to the trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch

from clipkd.distill import Distiller

if TYPE_CHECKING:
    from clipkd.config import TrainConfig


class EvalHook(Protocol):
    name: str

    def __call__(self, distiller: Distiller, step: int) -> dict[str, float]: ...


HookFactory = Callable[["TrainConfig", Distiller, torch.device], Sequence[EvalHook]]
"""Builds the hooks a config asks for once the run's distiller exists (on the process that evaluates: rank 0)."""
