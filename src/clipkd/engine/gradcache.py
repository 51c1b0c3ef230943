"""The gradients of one optimizer step, with every loss term computed on the GLOBAL batch.

The global batch is ``K`` micro-batches on each of ``W`` processes, ``N = K * B * W`` samples. The step is
split at the embeddings (the GradCache approach, Gao et al. 2021):

1. **Embed.** Each micro-batch goes through the teacher and the student. With ``K > 1`` the student runs
   without a graph, so memory stays at one micro-batch; RNG states are recorded for the replay.
2. **Loss on the global batch.** The per-sample embeddings of all micro-batches are all-gathered across
   processes (one collective) and become leaf tensors; the weighted loss of every term is computed on all
   ``N`` samples, identically on every rank, and differentiated w.r.t. the leaves only (cheap: ``N x d``).
3. **Backward through the student.** Each micro-batch is embedded again (same RNG states, so the same MFD
   masks) and back-propagated with its slice of the cached embedding gradients. With ``K == 1`` the graph of
   step 1 is reused: no extra forward.

Exactness: every rank holds the same ``dL/d(embeddings)``; rank ``r`` back-propagates its own rows times
``W``, and DDP's average over ranks divides by ``W`` again, so the parameters get exactly ``dL/dtheta``.
The scales (logit scales) are not per-sample: their gradient is already the full one on every rank and is
applied once, with the last micro-batch, unscaled. DDP synchronises only on the last micro-batch. Buffers
(BatchNorm running statistics) are restored after step 1, so each micro-batch updates them once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Callable, ContextManager, Optional, Sequence

import torch

from clipkd.data.batch import DistillBatch
from clipkd.distill import Distiller
from clipkd.embeddings import Embeddings, StudentOutput, is_batched_field
from clipkd.runtime.distributed import DistEnv


def _aliases(out: Embeddings) -> dict[str, str]:
    """Fields that are the same tensor as an earlier field (e.g. ``img_proj is img`` when sizes match)."""
    first: dict[int, str] = {}
    alias = {}
    for f in fields(out):
        value = getattr(out, f.name)
        if value is None:
            continue
        alias[f.name] = first.setdefault(id(value), f.name)
    return {k: v for k, v in alias.items() if k != v}


def _tensor_fields(out: Embeddings, scales: bool) -> list[str]:
    """Names of the set tensor fields of ``out`` (scalar or per-sample), one name per distinct tensor."""
    aliases = _aliases(out)
    return [f.name for f in fields(out) if getattr(out, f.name) is not None and f.name not in aliases
            and is_batched_field(f.name) != scales]


def _concat(outs: Sequence[Embeddings]) -> Embeddings:
    """Micro-batch embeddings -> one batch (scales from the first; they are equal within a step)."""
    if len(outs) == 1:
        return outs[0]
    cat = {}
    for name in _tensor_fields(outs[0], scales=False):
        cat[name] = torch.cat([getattr(o, name) for o in outs])
    merged = replace(outs[0], **cat)
    for name, target in _aliases(outs[0]).items():
        setattr(merged, name, getattr(merged, target))
    return merged


def _snapshot_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in module.named_buffers()}


def _restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in module.named_buffers():
            b.copy_(saved[name])


@dataclass
class _RngSnapshot:
    cpu: torch.Tensor
    cuda: Optional[torch.Tensor]
    generator: Optional[torch.Tensor]

    @classmethod
    def take(cls, device: torch.device, generator: Optional[torch.Generator]) -> "_RngSnapshot":
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, generator.get_state() if generator is not None else None)

    def restore(self, device: torch.device, generator: Optional[torch.Generator]) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, device)
        if generator is not None and self.generator is not None:
            generator.set_state(self.generator)


@dataclass
class _Cached:
    """Step 1's results for one micro-batch."""

    student: StudentOutput
    teacher: Optional[Embeddings]
    rng: Optional[_RngSnapshot]  # set when the micro-batch will be embedded again (no graph kept)


class GlobalBatchStep:
    """Accumulate ``dL/dtheta`` of the global-batch loss into the student's ``.grad``; see the module docstring.

    Args:
        distiller: teacher, student and loss.
        student_fn: what runs the student forward with a graph: its DDP wrapper, or the module itself.
        env: the process group (single process: no gathers).
        device: where the student runs (for the CUDA RNG state).
        autocast: a factory of the mixed-precision context for forwards and the loss.
        scale_loss: applied to the total before differentiating (the fp16 grad scaler's ``scale``).
    """

    def __init__(self, distiller: Distiller, student_fn: Callable[..., StudentOutput], env: DistEnv,
                 device: torch.device, autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda x: x):
        self.distiller, self.student_fn, self.env, self.device = distiller, student_fn, env, device
        self.autocast, self.scale_loss = autocast, scale_loss

    def __call__(self, micro_batches: Sequence[DistillBatch],
                 generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Gradients of one optimizer step; returns ``{"loss": total, <term>: value}`` (detached, global), with a
        teacher ensemble also each teacher's ``<term>/t<i>`` (:meth:`Distiller.per_teacher`)."""
        if not micro_batches:
            raise ValueError("a step needs at least one micro-batch")
        replay = len(micro_batches) > 1
        buffers = _snapshot_buffers(self.distiller.student) if replay else None
        cached = [self._embed(b, generator, keep_graph=not replay) for b in micro_batches]
        if buffers:  # the replay updates running statistics (BatchNorm) once per micro-batch, not twice
            _restore_buffers(self.distiller.student, buffers)
        values, sample_grads, scale_grads = self._global_loss(cached)
        for k, (batch, c) in enumerate(zip(micro_batches, cached)):
            last = k == len(micro_batches) - 1
            self._backward(batch, c, generator, [g[k] for g in sample_grads], scale_grads if last else None, last)
        return {name: v.detach() for name, v in values.items()}

    # -- 1. embed ------------------------------------------------------------------------------------------
    def _embed(self, batch: DistillBatch, generator: Optional[torch.Generator], keep_graph: bool) -> _Cached:
        with self.autocast():
            teacher = self.distiller.teacher_for(batch)
            rng = None if keep_graph else _RngSnapshot.take(self.device, generator)
            with contextlib.nullcontext() if keep_graph else torch.no_grad():
                student_fn = self.student_fn if keep_graph else self.distiller.student
                student, _ = self.distiller.embed(batch, generator, student=student_fn, teacher=teacher)
        return _Cached(student, teacher, rng)

    # -- 2. the loss on the global batch -------------------------------------------------------------------
    def _global_loss(self, cached: Sequence[_Cached]):
        local = _concat([c.student for c in cached])
        rows = _tensor_fields(local, scales=False)
        scalars = _tensor_fields(local, scales=True)
        t_local = None if cached[0].teacher is None else _concat([c.teacher for c in cached])
        t_rows = [] if t_local is None else [t_local.img, t_local.txt]
        gathered = self.env.gather_rows([getattr(local, n) for n in rows] + t_rows)  # one collective for all
        teacher = None if t_local is None else replace(t_local, img=gathered[len(rows)], txt=gathered[len(rows) + 1])
        leaves = {n: g.requires_grad_() for n, g in zip(rows, gathered)}
        leaves.update({n: getattr(local, n).detach().requires_grad_() for n in scalars})
        student = replace(local, **leaves)
        for name, target in _aliases(local).items():
            setattr(student, name, leaves[target])
        with self.autocast():
            values = self.distiller.loss(student, teacher)
        order = rows + scalars
        grads = torch.autograd.grad(self.scale_loss(values["loss"]), [leaves[n] for n in order], allow_unused=True)
        grads = [torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(order, grads)]
        with self.autocast():  # an ensemble's per-teacher values, for the log (no graph)
            values.update(self.distiller.per_teacher(student, teacher))
        sizes = [len(c.student.img) for c in cached]
        n_local, w = sum(sizes), self.env.world_size
        sample_grads = [(g[self.env.rank * n_local:(self.env.rank + 1) * n_local] * w).split(sizes)
                        for g in grads[:len(rows)]]
        return values, sample_grads, grads[len(rows):]

    # -- 3. backward through the student -------------------------------------------------------------------
    def _backward(self, batch: DistillBatch, c: _Cached, generator: Optional[torch.Generator],
                  sample_grads: list[torch.Tensor], scale_grads: Optional[list[torch.Tensor]], last: bool) -> None:
        sync = last or not hasattr(self.student_fn, "no_sync")
        with contextlib.nullcontext() if sync else self.student_fn.no_sync():
            student = c.student
            if c.rng is not None:  # no graph was kept: embed again with the same randomness
                c.rng.restore(self.device, generator)
                with self.autocast():
                    student, _ = self.distiller.embed(batch, generator, student=self.student_fn, teacher=c.teacher)
            outputs = [getattr(student, n) for n in _tensor_fields(student, scales=False)]
            grads = list(sample_grads)
            if scale_grads is not None:
                outputs += [getattr(student, n) for n in _tensor_fields(student, scales=True)]
                grads += scale_grads
            live = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]  # a locked tower's give none
            if live:
                torch.autograd.backward(*map(list, zip(*live)))
