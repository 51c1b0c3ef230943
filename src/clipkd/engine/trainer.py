"""The training loop, readable top to bottom: data -> teacher/student -> global-batch loss -> AdamW step.

Runs as one process or as one of ``W`` processes started by ``torchrun`` (DDP over the student module; the
frozen teacher is not wrapped). One optimizer step consumes ``optim.accum_steps`` micro-batches of
``data.batch_size`` on every process, and every loss term sees the global batch of all of them (see
:mod:`clipkd.engine.gradcache`). Rank 0 alone writes the run directory: config, logs, checkpoints, evaluation.

Resuming restores the student, optimizer, scheduler, grad scaler, step and, per rank, the data position
(per-split raw record counters), RNG states and counters, so a resumed run continues with the same losses
as an uninterrupted one (bit-exact on CPU). Faults: a non-finite loss or gradient skips the optimizer step on
every rank alike (``optim.max_nonfinite_steps`` consecutive ones stop the run); SIGTERM/SIGINT stop after the
current step with a checkpoint; a run folder holding another run is refused; a resume from an older checkpoint
moves the newer ones aside and drops their log rows.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import warnings
from pathlib import Path
from typing import IO, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from clipkd.build.data import build_stream, stored_views
from clipkd.build.device import resolve_device
from clipkd.build.inputs import record_inputs, run_inputs
from clipkd.build.models import build_distiller_from_config, global_batch_size
from clipkd.build.preflight import preflight
from clipkd.config import TrainConfig, dump_config
from clipkd.data.batch import DistillBatch
from clipkd.data.stream import make_loader
from clipkd.engine import checkpoint as ckpt
from clipkd.engine.gradcache import GlobalBatchStep
from clipkd.engine.hooks import EvalHook, HookFactory
from clipkd.engine.logger import MetricLogger, NullLogger
from clipkd.engine.optim import clamp_logit_scales, create_optimizer, create_scheduler
from clipkd.engine.rank_state import RankState, mask_seed, pick_rank_state
from clipkd.engine.resume import check_resume, forget_after
from clipkd.engine.run_dir import lock_run_dir, prepare_run_dir, truncate_metrics
from clipkd.engine.step import StepAgreement, TrainResult, autocast, logged_scalars
from clipkd.errors import DataQualityError, TrainingDiverged
from clipkd.runtime.distributed import DistEnv, current_env, local_processes, wrap_ddp
from clipkd.runtime.preemption import StopRequest
from clipkd.runtime.threads import apply_threads

log = logging.getLogger(__name__)


class Trainer:
    """Distil ``cfg.teacher`` into ``cfg.student`` on ``cfg.data``; see :class:`~clipkd.config.TrainConfig`.

    ``env``: the process group this process belongs to (default: the one initialised, or a single process).
    ``resume``: ``latest`` or a checkpoint folder. ``overwrite``: move a run already in ``run_dir`` aside.
    ``allow_config_change``: resume even when the config differs in keys that break exactness (logged).
    ``hooks``: evaluation hooks to call (rank 0); ``eval_hooks``: builds the hooks ``cfg.eval`` asks for once the
    student exists (:func:`clipkd.build.hooks.eval_hooks`; None: ``cfg.eval``'s benchmarks and held-out data are
    not evaluated). The engine imports no evaluation code of its own.
    """

    def __init__(self, cfg: TrainConfig, hooks: Sequence[EvalHook] = (), resume: Optional[str] = None,
                 env: Optional[DistEnv] = None, overwrite: bool = False, allow_config_change: bool = False,
                 eval_hooks: Optional[HookFactory] = None):
        self.cfg = cfg
        self.env = env or current_env()
        # files are read, checked and hashed once per job, by rank 0; every rank gets its verdict (or its error)
        manifest = self.env.from_main(lambda: preflight(cfg))  # reinforced data's, when the run trains from it
        self.inputs = self.env.from_main(lambda: run_inputs(cfg))  # what the result depends on, by content
        apply_threads(cfg.threads, local_processes())
        self.run_dir = Path(cfg.run_dir)
        self.allow_config_change = allow_config_change
        self._lock: Optional[IO[str]] = None
        self.env.from_main(self._lock_run_dir)  # rank 0 holds the folder; refused on every rank when it is in use
        try:
            self._build(cfg, hooks, resume, overwrite, manifest, eval_hooks)
        except BaseException:
            self.release()
            raise

    def _lock_run_dir(self) -> None:
        self._lock = lock_run_dir(self.run_dir)

    def release(self) -> None:
        """Let another process train into ``run_dir`` (done by :meth:`fit` when it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _build(self, cfg: TrainConfig, hooks: Sequence[EvalHook], resume: Optional[str], overwrite: bool,
               manifest: Optional[dict], eval_hooks: Optional[HookFactory]) -> None:
        prepare_run_dir(self.run_dir, resume, overwrite, self.env.is_main)
        self.env.barrier()
        self.device = resolve_device(cfg.device, self.env.local_rank)
        random.seed(cfg.seed + self.env.rank)
        np.random.seed(cfg.seed + self.env.rank)
        stored = stored_views(cfg, manifest)  # reinforced data: no teacher is built
        # seeded: identical initialisation on every rank
        self.distiller = build_distiller_from_config(cfg, world_size=self.env.world_size, stored=stored)
        torch.manual_seed(cfg.seed + self.env.rank)
        if self.distiller.teacher is not None:  # None for recipe baseline and for reinforced data
            self.distiller.teacher.to(self.device)
        self.student = self.distiller.student.to(self.device)
        self.student_fn = wrap_ddp(self.student, self.env, self.device)
        self.stream = build_stream(cfg.data, self.distiller, cfg.seed, rank=self.env.rank,
                                   world_size=self.env.world_size, stored=stored)
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
        asked = bool(ec.benchmarks) or ec.val_data is not None
        if asked and eval_hooks is None and self.env.is_main:
            log.warning("eval.benchmarks/eval.val_data are set but no eval_hooks were given: not evaluated (build the "
                        "trainer with clipkd.commands.train.make_trainer, or pass eval_hooks=clipkd.build.hooks."
                        "eval_hooks)")
        configured = asked and eval_hooks is not None
        self._eval_enabled = bool(hooks) or configured  # the same on all ranks
        made = list(eval_hooks(cfg, self.distiller, self.device)) if configured and self.env.is_main else []
        self.hooks = list(hooks) + made if self.env.is_main else []
        self.step = 0
        self.nonfinite_total = self.nonfinite_streak = self.fp16_overflows = 0
        self.stop_request = StopRequest()
        self.agreed = StepAgreement(False, False, 0, 0)
        self._saved_step = self._eval_step = -1
        self._resumed = False
        if resume:
            self._resume(resume)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all processes: ``data.batch_size * accum_steps * world_size``."""
        return global_batch_size(self.cfg, self.env.world_size)

    @property
    def mask_gen(self) -> torch.Generator:
        return self.rank_state.mask_gen

    # -- the run folder and checkpoints --------------------------------------------------------------------
    def _state(self) -> dict:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "world_size": self.env.world_size,
                "workers": self.cfg.data.workers, "nonfinite": [self.nonfinite_total, self.nonfinite_streak],
                "fp16_overflows": self.fp16_overflows}

    def save(self) -> Optional[Path]:
        """Write a checkpoint (rank 0, with every rank's own state); collective: all ranks must call it."""
        self._saved_step = self.step
        ranks = self.env.gather_objects(self.rank_state.to_dict())
        if not self.env.is_main:
            return None
        return ckpt.save_checkpoint(self.run_dir, self.step, self.student, {**self._state(), "ranks": ranks},
                                    dump_config(self.cfg), self.cfg.checkpoint.keep_last)

    def _resume(self, resume: str) -> None:
        path = ckpt.resolve_resume(resume, self.run_dir)
        if path is None:
            log.info("no checkpoint in %s: starting from scratch", self.run_dir)
            if self.env.is_main:
                truncate_metrics(self.run_dir, 0)  # rows of a run that never checkpointed: logged anew
            return
        state = ckpt.load_state(path)
        mine = pick_rank_state(state, self.env.rank, self.env.world_size, self.cfg.data.workers, str(path))
        check_resume(self.run_dir, path, self.cfg, self.inputs, self.distiller.loss.needs_teacher,
                     self.allow_config_change)
        ckpt.load_student(path, self.student)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.rank_state.load(mine)
        self.step = self._saved_step = state["step"]
        self.nonfinite_total, self.nonfinite_streak = state["nonfinite"]
        self.fp16_overflows = int(state.get("fp16_overflows", 0))
        self._resumed = True
        if self.env.is_main:
            forget_after(self.run_dir, self.step)
        self.env.barrier()
        log.info("resumed from %s at step %d", path, self.step)

    # -- one step ------------------------------------------------------------------------------------------
    def train_step(self, micro_batches: Sequence[DistillBatch]) -> dict[str, float]:
        """Global-batch loss over the micro-batches of all ranks, gradients, clip, AdamW step, schedule, clamp.

        A non-finite loss or gradient on any rank skips the update on every rank: parameters, buffers, optimizer
        moments, scheduler and grad scaler stay as they were (``self.agreed.nonfinite`` tells).
        """
        self.optimizer.zero_grad(set_to_none=True)
        buffers = {k: b.clone() for k, b in self.student.named_buffers()}
        scaler_state = self.scaler.state_dict()
        batches = [self.distiller.on_device(b, self.device) for b in micro_batches]
        out = self.grad_step(batches, self.mask_gen)
        norm = self._grad_norm()
        finite = torch.isfinite(out["loss"])
        if not self.scaler.is_enabled():  # fp16: non-finite gradients are the scaler's business
            finite = finite & torch.isfinite(norm)
        values, self.agreed = self._agree(out, finite)
        if self.agreed.nonfinite:
            self._undo_step(buffers, scaler_state)
        else:
            self._optimizer_step()
            clamp_logit_scales(self.student)
            self.nonfinite_streak = 0
        return values

    def _optimizer_step(self) -> None:
        """AdamW through the grad scaler, then the schedule. Under fp16 the scaler skips the update when the
        scaled gradients overflowed (and lowers the scale): counted in ``fp16_overflow_steps``; the schedule
        advances all the same, without PyTorch's "scheduler before optimizer" warning for that case."""
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        overflowed = scale is not None and self.scaler.get_scale() < scale
        self.fp16_overflows += int(overflowed)
        with warnings.catch_warnings():
            if overflowed:
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()

    def _grad_norm(self) -> torch.Tensor:
        """Global gradient norm, clipped to ``optim.grad_clip`` when set (unscaled first under fp16)."""
        params = [p for p in self.student.parameters() if p.grad is not None]
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            return torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def _agree(self, out: dict[str, torch.Tensor], finite: torch.Tensor) -> tuple[dict[str, float], StepAgreement]:
        """The step's values and what all ranks agree on (any rank non-finite, any rank asked to stop, unusable and
        consumed records of all: one all-reduce), read from the device in one transfer: the step's one host sync."""
        rs = self.rank_state
        local = torch.tensor([float(self.stop_request.requested), sum(rs.skipped.values()), rs.consumed],
                             dtype=torch.float64)
        flags = torch.cat([(~finite).to(torch.float64).view(1), local.to(finite.device, non_blocking=True)])
        flags = self.env.all_reduce(flags)
        read = torch.cat([torch.stack([v.detach().to(torch.float64) for v in out.values()]), flags]).tolist()
        bad, stop, skipped, consumed = read[len(out):]
        return dict(zip(out, read)), StepAgreement(bad > 0, stop > 0, int(skipped), int(consumed))

    def _undo_step(self, buffers: dict[str, torch.Tensor], scaler_state: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in self.student.named_buffers():
                b.copy_(buffers[name])
        if self.scaler.is_enabled():
            self.scaler.update()  # resets the per-step unscale bookkeeping...
            self.scaler.load_state_dict(scaler_state)  # ...and the scale as it was
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        log.warning("non-finite loss or gradient: optimizer step %d skipped (%d in a row)", self.step + 1,
                    self.nonfinite_streak)

    def _check_skips(self, final: bool) -> int:
        """Abort (on every rank at once) when the unusable share of all ranks' records exceeds the limit.

        Judged from 100 records on, and at the end. Returns the number of unusable records of all ranks.
        """
        bad, consumed = self.agreed.bad_records, self.agreed.consumed
        if final:
            bad, consumed = self.env.sum([sum(self.rank_state.skipped.values()), self.rank_state.consumed],
                                         self.device)
        limit = self.cfg.data.max_skip_fraction
        if (final or consumed >= 100) and bad > limit * consumed:
            raise DataQualityError(f"{bad:.0f} of {consumed:.0f} records ({bad / consumed:.1%}) were unusable "
                                   f"(this process: {self.rank_state.describe_skips()}), above "
                                   f"data.max_skip_fraction={limit}; "
                                   "check the training data")
        return int(bad)

    def _check_divergence(self) -> None:
        limit = self.cfg.optim.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            found = ckpt.list_checkpoints(self.run_dir)
            last = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written"
            raise TrainingDiverged(f"{self.nonfinite_streak} consecutive optimizer steps had a non-finite loss or "
                                   f"gradient (optim.max_nonfinite_steps={limit}) after step {self.step}; {last}. "
                                   "Lower optim.lr, enable optim.grad_clip, or use bf16 instead of fp16")

    # -- the loop ------------------------------------------------------------------------------------------
    def _micro_batches(self):
        """Groups of ``accum_steps`` micro-batches, endlessly over epochs (a group may span two epochs), from one
        loader whose workers live as long as the run."""
        group: list[DistillBatch] = []
        self.stream.start(self.rank_state.position, endless=True)
        for batch, info in make_loader(self.stream, self.cfg.data.workers, self.cfg.seed,
                                       pin_memory=self.device.type == "cuda"):
            self.rank_state.account(info)
            group.append(batch)
            if len(group) == self.accum:
                yield group
                group = []

    def fit(self) -> TrainResult:
        """Train to the end, or until SIGTERM/SIGINT (heard from the first file this run writes on: a signal
        then stops it after the step in progress, with a checkpoint, even during start-up or the final evaluation)."""
        try:
            with self.stop_request:
                return self._fit()
        finally:
            self.release()

    def _fit(self) -> TrainResult:
        main = self.env.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            record_inputs(self.run_dir, self.inputs)
            log.info("global batch %d = %d per micro-batch x %d accumulation steps x %d processes",
                     self.global_batch, self.cfg.data.batch_size, self.accum, self.env.world_size)
        purge = self.step + 1 if self._resumed else None
        logger = MetricLogger(self.run_dir, self.cfg.logging.tensorboard, purge) if main else NullLogger()
        result = TrainResult(self.run_dir, self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train",
                   disable=not (self.cfg.logging.progress and main))
        self.student.train()
        try:
            self._loop(logger, bar, result)
            if not self.agreed.stop:
                self._check_skips(final=True)
                self._maybe_eval(logger, final=True)
            if self._saved_step != self.step:
                self.save()
            self.env.barrier()
        finally:
            bar.close()
            logger.close()
        result.step, result.skipped = self.step, dict(self.rank_state.skipped)
        result.nonfinite_steps, result.stopped_by = self.nonfinite_total, self._stopped_by()
        result.complete = not self.agreed.stop
        result.fp16_overflow_steps = self.fp16_overflows
        if self.rank_state.skipped:
            log.warning("skipped %d unusable records: %s", sum(self.rank_state.skipped.values()),
                        self.rank_state.describe_skips())
        return result

    def _stopped_by(self) -> Optional[str]:
        """The signal that asked this process's run to stop, also one that came during the final evaluation (the
        run is then complete, but whoever runs it, e.g. a study, must stop too), or None."""
        if self.stop_request.requested:
            return self.stop_request.signal_name
        return "a signal to another process" if self.agreed.stop else None

    def _loop(self, logger, bar, result: TrainResult) -> None:
        groups = self._micro_batches()
        try:
            self._steps(groups, logger, bar, result)
        finally:
            groups.close()  # the loader's workers end with the loop, also while an exception propagates

    def _steps(self, groups, logger, bar, result: TrainResult) -> None:
        tick, seen = time.perf_counter(), 0
        while self.step < self.total_steps:
            values = self.train_step(next(groups))
            skipped = self._check_skips(final=False)
            if self.agreed.nonfinite:
                logger.log(self.step, {"nonfinite_steps": self.nonfinite_total})
                self._check_divergence()
            else:
                self.step += 1
                seen += self.global_batch
                result.history.append(values)
                bar.update(1)
                if self.step % self.cfg.logging.every_steps == 0 or self.step == self.total_steps:
                    rate = seen / max(time.perf_counter() - tick, 1e-9)
                    scalars = logged_scalars(self.student, self.optimizer, self.scaler, self.fp16_overflows)
                    logger.log(self.step, {**values, **scalars, "samples_per_s": rate, "skipped": skipped,
                                           "nonfinite_steps": self.nonfinite_total})
                    bar.set_postfix(loss=f"{values['loss']:.4f}", samples_s=f"{rate:.0f}")
                    tick, seen = time.perf_counter(), 0
                self._maybe_eval(logger)
                if self.step % self.cfg.checkpoint.every_steps == 0:
                    self.save()
            if self.agreed.stop:
                log.warning("stop requested (%s): writing a checkpoint at step %d and exiting; continue with "
                            "--resume latest", self._stopped_by(), self.step)
                return

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
