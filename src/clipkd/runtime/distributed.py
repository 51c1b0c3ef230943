"""The process group: who am I, how many are we, and the few collectives training needs.

Works the same under ``torchrun`` (any number of processes and nodes) and as a plain single process, where
every collective is the identity. Backend: NCCL for CUDA, gloo for CPU.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the group (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def gather_rows(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """All-gather ``[n, d_i]`` tensors along dim 0 (rank order) in ONE collective; no autograd.

        The tensors are packed side by side into one ``[n, sum d_i]`` buffer, gathered, and split back.
        Every rank must pass the same shapes.
        """
        if not self.active or not tensors:
            return [t.detach() for t in tensors]
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        packed = torch.cat([t.detach().to(dtype) for t in tensors], dim=1).contiguous()
        out = torch.empty((self.world_size * packed.shape[0], packed.shape[1]), dtype=dtype, device=packed.device)
        dist.all_gather_into_tensor(out, packed)
        widths = [t.shape[1] for t in tensors]
        return [p.to(t.dtype) for p, t in zip(out.split(widths, dim=1), tensors)]

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks."""
        if not self.active:
            return [float(v) for v in values]
        return self.all_reduce(torch.tensor(values, dtype=torch.float64, device=device)).tolist()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all ranks, in place (itself in one process); no host sync."""
        if self.active:
            dist.all_reduce(t)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()`` run on rank 0 alone, its result (picklable) on every rank; an error it raises is raised
        on every rank (instead of leaving the others waiting)."""
        if not self.active:
            return compute()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", compute())
            except Exception as exc:  # noqa: BLE001 - passed on, raised on every rank below
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def current_env() -> DistEnv:
    """The env of the process group already initialised in this process (single process when none)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv()


def local_processes() -> int:
    """Processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 in a plain process)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1") if launched_by_torchrun() else "1"
    return int(value) if value.isdigit() and int(value) > 0 else 1


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (or anything that sets its environment variables)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def init_distributed(device_name: str = "auto", backend: str = "auto", timeout_minutes: float = 60) -> DistEnv:
    """Join the process group described by torchrun's environment; a no-op single process without it.

    ``backend="auto"`` picks NCCL when this process trains on CUDA and gloo otherwise. With CUDA, each
    process uses device ``LOCAL_RANK``.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return current_env()
    if not dist.is_initialized():
        local_rank = int(os.environ["LOCAL_RANK"])
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank)
        name = ("nccl" if cuda else "gloo") if backend == "auto" else backend
        dist.init_process_group(name, timeout=datetime.timedelta(minutes=timeout_minutes))
    return current_env()


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: torch.nn.Module, env: DistEnv, device: torch.device):
    """``module`` in DDP when the group has several processes (its GPU as ``device_ids``), else itself."""
    if not env.active:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def torchrun_command(nproc: int, program: Sequence[str], runner: str = "torch.distributed.run") -> list[str]:
    """The command that runs ``program`` (a script and its arguments, or ``-m module ...``) as ``nproc``
    processes on this machine through torchrun (``runner``: torchrun's module, or a wrapper taking its flags)."""
    return [sys.executable, "-m", runner, "--standalone", f"--nproc_per_node={nproc}", *program]
