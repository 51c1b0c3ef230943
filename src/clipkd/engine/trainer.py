"""The training loop, readable top to bottom: data -> teacher/student -> global-batch loss -> AdamW step.

Runs as one process or as one of ``W`` processes started by ``torchrun`` (DDP over the student module; the
frozen teacher is not wrapped). One optimizer step consumes ``optim.accum_steps`` micro-batches of
``data.batch_size`` on every process, and every loss term sees the global batch of all of them (see
:mod:`clipkd.engine.gradcache`). Rank 0 alone writes the run directory: config, logs, checkpoints, evaluation.

Resuming restores the student, optimizer, scheduler, grad scaler, step and, per rank, the data position
(per-split raw record counters), RNG states and counters, so a resumed run continues with the same losses
as an uninterrupted one (bit-exact on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clipkd.cache import TeacherCache
from clipkd.config import TrainConfig, dump_config
from clipkd.data.stream import DataPosition, make_loader
from clipkd.distill import DistillBatch
from clipkd.engine import checkpoint as ckpt
from clipkd.engine.builders import build_distiller_from_config, build_stream, preflight, resolve_device
from clipkd.engine.distributed import DistEnv, current_env, wrap_ddp
from clipkd.engine.gradcache import GlobalBatchStep
from clipkd.engine.hooks import EvalHook, ValLossHook
from clipkd.engine.logger import MetricLogger, NullLogger
from clipkd.engine.optim import clamp_logit_scales, create_optimizer, create_scheduler
from clipkd.engine.rank_state import RankState, mask_seed, pick_rank_state
from clipkd.errors import DataQualityError
from clipkd.eval.runner import BenchmarkHook

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def autocast(device: torch.device, precision: str):
    """The mixed-precision context of ``precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Trainer:
    """Distil ``cfg.teacher`` into ``cfg.student`` on ``cfg.data``; see :class:`~clipkd.config.TrainConfig`.

    ``env``: the process group this process belongs to (default: the one initialised, or a single process).
    """

    def __init__(self, cfg: TrainConfig, hooks: Sequence[EvalHook] = (), resume: Optional[str] = None,
                 env: Optional[DistEnv] = None):
        self.cfg = cfg
        self.env = env or current_env()
        preflight(cfg)
        self.run_dir = Path(cfg.run_dir)
        self.device = resolve_device(cfg.device, self.env.local_rank)
        random.seed(cfg.seed + self.env.rank)
        np.random.seed(cfg.seed + self.env.rank)
        self.distiller = build_distiller_from_config(cfg)  # seeded: identical initialisation on every rank
        torch.manual_seed(cfg.seed + self.env.rank)
        if cfg.distill.teacher_cache:
            self.distiller.teacher_cache = TeacherCache.load(cfg.distill.teacher_cache)
        self.distiller.teacher.to(self.device)
        self.student = self.distiller.student.to(self.device)
        self.student_fn = wrap_ddp(self.student, self.env, self.device)
        self.stream = build_stream(cfg.data, self.distiller, cfg.seed, rank=self.env.rank,
                                   world_size=self.env.world_size)
        o = cfg.optim
        self.accum = o.accum_steps
        self.total_steps = o.steps or o.epochs * max(1, self.stream.batches_per_epoch // self.accum)
        self.optimizer = create_optimizer(self.student, o.lr, o.weight_decay, o.betas, o.eps)
        self.scheduler = create_scheduler(self.optimizer, min(o.warmup_steps, self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.grad_step = GlobalBatchStep(self.distiller, self.student_fn, self.env, self.device,
                                         functools.partial(autocast, self.device, cfg.precision), self.scaler.scale)
        self.rank_state = RankState(torch.Generator().manual_seed(mask_seed(cfg.seed, self.env.rank)))
        ec = cfg.eval
        self._eval_enabled = bool(hooks) or bool(ec.benchmarks) or ec.val_data is not None  # same on all ranks
        self.hooks = (list(hooks) + self._config_hooks()) if self.env.is_main else []
        self.step = 0
        self._saved_step = self._eval_step = -1
        if resume:
            self._resume(resume)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all processes: ``data.batch_size * accum_steps * world_size``."""
        return self.cfg.data.batch_size * self.accum * self.env.world_size

    @property
    def mask_gen(self) -> torch.Generator:
        return self.rank_state.mask_gen

    def _config_hooks(self) -> list[EvalHook]:
        ec = self.cfg.eval
        hooks: list[EvalHook] = [BenchmarkHook(spec, self.device) for spec in ec.benchmarks]
        if ec.val_data is not None:
            stream = build_stream(ec.val_data, self.distiller, self.cfg.seed, augment=False)
            hooks.append(ValLossHook(stream, ec.val_batches, self.device))
        return hooks

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save(self) -> Optional[Path]:
        """Write a checkpoint (rank 0, with every rank's own state); collective: all ranks must call it."""
        self._saved_step = self.step
        ranks = self.env.gather_objects(self.rank_state.to_dict())
        if not self.env.is_main:
            return None
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "world_size": self.env.world_size,
                 "workers": self.cfg.data.workers, "ranks": ranks}
        return ckpt.save_checkpoint(self.run_dir, self.step, self.student, state, dump_config(self.cfg),
                                    self.cfg.checkpoint.keep_last)

    def _resume(self, resume: str) -> None:
        path = ckpt.resolve_resume(resume, self.run_dir)
        if path is None:
            log.info("no checkpoint in %s: starting from scratch", self.run_dir)
            return
        state = ckpt.load_checkpoint(path, self.student)
        mine = pick_rank_state(state, self.env.rank, self.env.world_size, self.cfg.data.workers, str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rank_state.load(mine)
        self.step = self._saved_step = state["step"]
        log.info("resumed from %s at step %d", path, self.step)

    # -- one step ------------------------------------------------------------------------------------------
    def train_step(self, micro_batches: Sequence[DistillBatch]) -> dict[str, float]:
        """Global-batch loss over the micro-batches of all ranks, gradients, clip, AdamW step, schedule, clamp."""
        self.optimizer.zero_grad(set_to_none=True)
        batches = [b.to(self.device, non_blocking=True) for b in micro_batches]
        out = self.grad_step(batches, self.mask_gen)
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        clamp_logit_scales(self.student)
        return {k: v.item() for k, v in out.items()}

    def _check_skips(self, final: bool) -> int:
        """Abort (on every rank at once) when the unusable share of all ranks' records exceeds the limit.

        Judged from 100 records on, and at the end. Returns the number of unusable records of all ranks.
        """
        bad, consumed = self.env.sum([sum(self.rank_state.skipped.values()), self.rank_state.consumed], self.device)
        limit = self.cfg.data.max_skip_fraction
        if (final or consumed >= 100) and bad > limit * consumed:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.rank_state.skipped.items()))
            raise DataQualityError(f"{bad:.0f} of {consumed:.0f} records ({bad / consumed:.1%}) were unusable "
                                   f"(this process: {reasons}), above data.max_skip_fraction={limit}; "
                                   "check the training data")
        return int(bad)

    # -- the loop ------------------------------------------------------------------------------------------
    def _micro_batches(self):
        """Groups of ``accum_steps`` micro-batches, endlessly over epochs (a group may span two epochs)."""
        group: list[DistillBatch] = []
        while True:
            self.stream.start(self.rank_state.position)
            for batch, info in make_loader(self.stream, self.cfg.data.workers, self.cfg.seed):
                self.rank_state.account(info)
                group.append(batch)
                if len(group) == self.accum:
                    yield group
                    group = []
            self.rank_state.position = DataPosition(self.rank_state.position.epoch + 1)

    def fit(self) -> TrainResult:
        main = self.env.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            log.info("global batch %d = %d per micro-batch x %d accumulation steps x %d processes",
                     self.global_batch, self.cfg.data.batch_size, self.accum, self.env.world_size)
        logger = MetricLogger(self.run_dir, self.cfg.logging.tensorboard) if main else NullLogger()
        result = TrainResult(self.run_dir, self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train",
                   disable=not (self.cfg.logging.progress and main))
        self.student.train()
        tick, seen = time.perf_counter(), 0
        try:
            groups = self._micro_batches()
            while self.step < self.total_steps:
                values = self.train_step(next(groups))
                skipped = self._check_skips(final=False)
                self.step += 1
                seen += self.global_batch
                result.history.append(values)
                bar.update(1)
                if self.step % self.cfg.logging.every_steps == 0 or self.step == self.total_steps:
                    rate = seen / max(time.perf_counter() - tick, 1e-9)
                    logger.log(self.step, {**values, **self._scalars(), "samples_per_s": rate, "skipped": skipped})
                    bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.0f}")
                    tick, seen = time.perf_counter(), 0
                self._maybe_eval(logger)
                if self.step % self.cfg.checkpoint.every_steps == 0:
                    self.save()
            self._check_skips(final=True)
            self._maybe_eval(logger, final=True)
            if self._saved_step != self.step:
                self.save()
            self.env.barrier()
        finally:
            bar.close()
            logger.close()
        result.step, result.skipped = self.step, dict(self.rank_state.skipped)
        if self.rank_state.skipped:
            log.warning("skipped %d unusable records: %s", sum(self.rank_state.skipped.values()),
                        dict(self.rank_state.skipped))
        return result

    def _scalars(self) -> dict[str, float]:
        s = self.student
        out = {"lr": self.optimizer.param_groups[0]["lr"], "logit_scale": s.encoder.scale().item()}
        for name in ("icl_logit_scale", "afd_logit_scale"):
            p = getattr(s, name)
            if p is not None:
                out[name.replace("_logit", "")] = p.detach().exp().item()
        return out

    def _maybe_eval(self, logger, final: bool = False) -> None:
        """Evaluation hooks on rank 0 while the other ranks wait at a barrier."""
        every = self.cfg.eval.every_steps
        due = final or (every is not None and self.step % every == 0)
        if not self._eval_enabled or not due or self._eval_step == self.step:
            return
        self._eval_step = self.step
        if self.hooks:
            self.student.eval()
            try:
                for hook in self.hooks:
                    logger.log(self.step, hook(self.distiller, self.step), prefix=f"eval/{hook.name}")
            finally:
                self.student.train()
        self.env.barrier()
