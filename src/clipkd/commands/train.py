"""`clipkd train`: a config -> a trainer with the evaluation hooks the config asks for -> fit."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipkd.config import TrainConfig
    from clipkd.engine.trainer import Trainer


def make_trainer(cfg: "TrainConfig", **kwargs: Any) -> "Trainer":
    """The engine's :class:`~clipkd.engine.trainer.Trainer` of ``cfg`` with the benchmarks and held-out loss its
    ``eval`` section asks for (:func:`clipkd.build.hooks.eval_hooks`); ``kwargs`` as the trainer takes them."""
    from clipkd.build.hooks import eval_hooks
    from clipkd.engine.trainer import Trainer

    return Trainer(cfg, eval_hooks=eval_hooks, **kwargs)


def _train_argv(args: argparse.Namespace) -> list[str]:
    """The `clipkd train` arguments of this call, without --nproc (what each worker process runs)."""
    argv = ["train"] + (["--config", args.config] if args.config else [])
    argv += ["--resume", args.resume] if args.resume else []
    argv += ["--overwrite"] if args.overwrite else []
    argv += ["--allow-config-change"] if args.allow_config_change else []
    return argv + list(args.overrides)


def run_train(args: argparse.Namespace) -> int:
    """`clipkd train`: one process, one process of a torchrun job, or the launcher of ``--nproc`` local ones."""
    from clipkd.config import load_config

    cfg = load_config(args.config, args.overrides)  # config errors are reported before torch is imported
    from clipkd.runtime.distributed import init_distributed, launched_by_torchrun, shutdown

    if args.nproc > 1 and not launched_by_torchrun():
        from clipkd.build.preflight import preflight
        from clipkd.engine.run_dir import check_run_dir
        from clipkd.runtime.preemption import launch_stoppable
        from clipkd.runtime.threads import choose_threads

        preflight(cfg)  # report config problems once, here, not once per worker
        check_run_dir(cfg.run_dir, args.resume, args.overwrite)
        threads, _ = choose_threads(cfg.threads, args.nproc)
        return launch_stoppable(args.nproc, _train_argv(args), threads)[0]
    env = init_distributed(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_minutes)
    try:
        result = make_trainer(cfg, resume=args.resume, env=env, overwrite=args.overwrite,
                              allow_config_change=args.allow_config_change).fit()
    finally:
        shutdown()
    if not env.is_main:
        return 0
    if result.stopped_by and not result.complete:
        print(f"stopped by {result.stopped_by} at step {result.step}; checkpoint written; continue with "
              "--resume latest")
        return 0
    last = result.history[-1] if result.history else {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"done: step {result.step} in {result.run_dir}" + (f"; last {summary}" if summary else "")
          + (f" ({result.stopped_by} came during the final evaluation, after the last step)" if result.stopped_by
             else ""))
    if result.skipped:
        print(f"skipped records: {result.skipped}")
    if result.nonfinite_steps:
        print(f"optimizer steps skipped for a non-finite loss or gradient: {result.nonfinite_steps}")
    if result.fp16_overflow_steps:
        print(f"fp16 steps skipped by the grad scaler (scaled gradients overflowed; it lowered its scale): "
              f"{result.fp16_overflow_steps}")
    return 0
