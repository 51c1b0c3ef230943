"""The training loop, readable top to bottom: data -> teacher/student -> weighted loss -> AdamW step.

Resuming restores the student, optimizer, scheduler, grad scaler, step, data position (per-split raw
record counters) and RNG states, so a resumed run continues with the same losses as an uninterrupted one
(bit-exact on CPU).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clipkd.cache import TeacherCache
from clipkd.config import TrainConfig, dump_config
from clipkd.data.stream import BatchInfo, DataPosition, make_loader
from clipkd.engine import checkpoint as ckpt
from clipkd.errors import DataQualityError
from clipkd.eval.runner import BenchmarkHook
from clipkd.engine.builders import build_distiller_from_config, build_stream, preflight, resolve_device
from clipkd.engine.hooks import EvalHook, ValLossHook
from clipkd.engine.logger import MetricLogger
from clipkd.engine.optim import clamp_logit_scales, create_optimizer, create_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Distil ``cfg.teacher`` into ``cfg.student`` on ``cfg.data``; see :class:`~clipkd.config.TrainConfig`."""

    def __init__(self, cfg: TrainConfig, hooks: Sequence[EvalHook] = (), resume: Optional[str] = None):
        self.cfg = cfg
        preflight(cfg)
        self.run_dir = Path(cfg.run_dir)
        self.device = resolve_device(cfg.device)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.distiller = build_distiller_from_config(cfg)
        if cfg.distill.teacher_cache:
            self.distiller.teacher_cache = TeacherCache.load(cfg.distill.teacher_cache)
        self.distiller.teacher.to(self.device)
        self.student = self.distiller.student.to(self.device)
        self.stream = build_stream(cfg.data, self.distiller, cfg.seed)
        o = cfg.optim
        self.total_steps = o.steps or o.epochs * self.stream.batches_per_epoch
        self.optimizer = create_optimizer(self.student, o.lr, o.weight_decay, o.betas, o.eps)
        self.scheduler = create_scheduler(self.optimizer, min(o.warmup_steps, self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.mask_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.hooks = list(hooks) + self._config_hooks()
        self.step, self.position = 0, DataPosition()
        self.skipped: Counter = Counter()
        self.consumed = 0
        self._saved_step = self._eval_step = -1
        if resume:
            self._resume(resume)

    def _config_hooks(self) -> list[EvalHook]:
        ec = self.cfg.eval
        hooks: list[EvalHook] = [BenchmarkHook(spec, self.device) for spec in ec.benchmarks]
        if ec.val_data is not None:
            stream = build_stream(ec.val_data, self.distiller, self.cfg.seed, augment=False)
            hooks.append(ValLossHook(stream, ec.val_batches, self.device))
        return hooks

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "position": self.position.to_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "mask_gen": self.mask_gen.get_state(), "rng": _rng_state(), "skipped": dict(self.skipped),
                "consumed": self.consumed}

    def save(self) -> Path:
        self._saved_step = self.step
        return ckpt.save_checkpoint(self.run_dir, self.step, self.student, self._state(), dump_config(self.cfg),
                                    self.cfg.checkpoint.keep_last)

    def _resume(self, resume: str) -> None:
        path = ckpt.resolve_resume(resume, self.run_dir)
        if path is None:
            log.info("no checkpoint in %s: starting from scratch", self.run_dir)
            return
        state = ckpt.load_checkpoint(path, self.student)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.mask_gen.set_state(state["mask_gen"])
        _set_rng_state(state["rng"])
        self.step, self.position = state["step"], DataPosition.from_dict(state["position"])
        self._saved_step = self.step
        self.skipped, self.consumed = Counter(state["skipped"]), state["consumed"]
        log.info("resumed from %s at step %d", path, self.step)

    # -- one step ------------------------------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, float]:
        """Forward both sides, weighted loss, backward, clip, AdamW step, schedule, clamp the scales."""
        with _autocast(self.device, self.cfg.precision):
            out = self.distiller(batch.to(self.device, non_blocking=True), self.mask_gen)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        clamp_logit_scales(self.student)
        return {k: v.detach().item() for k, v in out.items()}

    def _account(self, info: BatchInfo) -> None:
        self.consumed += info.consumed - self.position.consumed.get(info.split, 0)
        self.skipped.update(info.skipped)
        self.position.advance(info)
        self._check_skips(final=False)

    def _check_skips(self, final: bool) -> None:
        """Abort when the unusable share exceeds the limit (judged from 100 records on, and at the end)."""
        bad, limit = sum(self.skipped.values()), self.cfg.data.max_skip_fraction
        if (final or self.consumed >= 100) and bad > limit * self.consumed:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            raise DataQualityError(f"{bad} of {self.consumed} records ({bad / self.consumed:.1%}) were unusable "
                                   f"({reasons}), above data.max_skip_fraction={limit}; check the training data")

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        logger = MetricLogger(self.run_dir, self.cfg.logging.tensorboard)
        result = TrainResult(self.run_dir, self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not self.cfg.logging.progress)
        self.student.train()
        tick, seen = time.perf_counter(), 0
        try:
            while self.step < self.total_steps:
                self.stream.start(self.position)
                for batch, info in make_loader(self.stream, self.cfg.data.workers, self.cfg.seed):
                    self._account(info)
                    values = self.train_step(batch)
                    self.step += 1
                    seen += len(batch)
                    result.history.append(values)
                    bar.update(1)
                    if self.step % self.cfg.logging.every_steps == 0 or self.step == self.total_steps:
                        rate = seen / max(time.perf_counter() - tick, 1e-9)
                        logger.log(self.step, {**values, **self._scalars(), "samples_per_s": rate,
                                               "skipped": sum(self.skipped.values())})
                        bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.0f}")
                        tick, seen = time.perf_counter(), 0
                    self._maybe_eval(logger)
                    if self.step % self.cfg.checkpoint.every_steps == 0:
                        self.save()
                    if self.step >= self.total_steps:
                        break
                else:
                    self.position = DataPosition(self.position.epoch + 1)
            self._check_skips(final=True)
            self._maybe_eval(logger, final=True)
            if self._saved_step != self.step:
                self.save()
        finally:
            bar.close()
            logger.close()
        result.step, result.skipped = self.step, dict(self.skipped)
        if self.skipped:
            log.warning("skipped %d unusable records: %s", sum(self.skipped.values()), dict(self.skipped))
        return result

    def _scalars(self) -> dict[str, float]:
        s = self.student
        out = {"lr": self.optimizer.param_groups[0]["lr"], "logit_scale": s.encoder.scale().item()}
        for name in ("icl_logit_scale", "afd_logit_scale"):
            p = getattr(s, name)
            if p is not None:
                out[name.replace("_logit", "")] = p.detach().exp().item()
        return out

    def _maybe_eval(self, logger: MetricLogger, final: bool = False) -> None:
        every = self.cfg.eval.every_steps
        due = final or (every is not None and self.step % every == 0)
        if not self.hooks or not due or self._eval_step == self.step:
            return
        self._eval_step = self.step
        self.student.eval()
        try:
            for hook in self.hooks:
                logger.log(self.step, hook(self.distiller, self.step), prefix=f"eval/{hook.name}")
        finally:
            self.student.train()
