"""The ``clipkd reinforce`` command: arguments and config checked before any compute, then the build (here, or
as ``--nproc`` processes through torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clipkd.config import TrainConfig, teacher_fields
from clipkd.errors import ConfigError
from clipkd.reinforce.settings import BuildOptions, build_settings, check_folder, check_request

if TYPE_CHECKING:
    from clipkd.engine.distributed import DistEnv


def options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(out=Path(args.out).absolute(), views=args.views, dtype=args.dtype,
                        batch_size=args.batch_size, rows_per_shard=args.rows_per_shard)


def preflight(cfg: TrainConfig) -> None:
    """The teacher's model and weights, and the data files, checked without building anything."""
    from clipkd.engine.builders import check_data, check_model

    problems = [p for n, mc in teacher_fields(cfg.teacher)
                for p in check_model(f"{n}.model", mc.model, mc.pretrained, f"{n}.pretrained")]
    problems += check_data("data", cfg.data)
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))


def _launch(cfg: TrainConfig, opts: BuildOptions, args: argparse.Namespace) -> int:
    """``--nproc`` workers through torchrun, once the output folder is known to fit (reported once, here)."""
    from clipkd.engine.distributed import launch_local
    from clipkd.engine.threads import choose_threads
    from clipkd.reinforce.plan import make_plan

    check_folder(opts.out, build_settings(cfg, opts, make_plan(cfg.data, opts.rows_per_shard).identity))
    return launch_local(args.nproc, worker_argv(args, opts), choose_threads(cfg.threads, args.nproc)[0])


def worker_argv(args: argparse.Namespace, opts: BuildOptions) -> list[str]:
    """The ``clipkd reinforce`` arguments each torchrun worker runs (without ``--nproc``)."""
    argv = ["reinforce"] + (["--config", args.config] if args.config else [])
    argv += ["--views", str(opts.views), "--out", str(opts.out), "--dtype", opts.dtype,
             "--batch-size", str(opts.batch_size), "--rows-per-shard", str(opts.rows_per_shard)]
    return argv + list(args.overrides)


def run_reinforce(args: argparse.Namespace) -> int:
    from clipkd.config import load_config

    cfg = load_config(args.config, args.overrides)
    opts = options(args)
    check_request(cfg, opts)  # config errors are reported before torch is imported
    from clipkd.engine.distributed import init_distributed, launched_by_torchrun, local_processes
    from clipkd.engine.threads import apply_threads

    if not launched_by_torchrun():
        preflight(cfg)
        if args.nproc > 1:
            return _launch(cfg, opts, args)
    apply_threads(cfg.threads, local_processes())
    env = init_distributed(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_minutes)
    return _build(cfg, opts, env)


def _build(cfg: TrainConfig, opts: BuildOptions, env: "DistEnv") -> int:
    """Build in this process (one rank of a group, or alone); rank 0 prints the summary."""
    from clipkd.engine.distributed import shutdown
    from clipkd.reinforce.build import run_build

    try:
        result = run_build(cfg, opts, env)
    finally:
        shutdown()
    if env.is_main and result.manifest is not None:
        m = result.manifest
        unusable = ", ".join(f"{k} {v}" for k, v in m["unusable"].items()) or "none"
        print(f"done: {len(m['data']['sidecars'])} sidecars, {m['records']} records ({m['usable']} usable; unusable: "
              f"{unusable}) in {opts.out}; this process: {result.records} records in {result.seconds:.1f} s "
              f"({result.samples_per_s:.1f} samples/s), {result.skipped} sidecar(s) already built\n"
              f"train from it (no teacher forward): clipkd train <the same config and overrides> "
              f"distill.teacher_cache={opts.out}")
    return 0
