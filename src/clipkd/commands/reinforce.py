"""The ``clipkd reinforce`` command: arguments and config checked before any compute, then the build (here, or
as ``--nproc`` processes through torchrun).

SIGTERM/SIGINT (Ctrl-C) stop a build cleanly: the sidecars finished so far are kept, the command exits 0 and prints
how many there are and the command that continues the build (the same command).
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from clipkd.config import TrainConfig, teacher_fields
from clipkd.errors import ConfigError
from clipkd.reinforce.settings import MANIFEST_FILE, BuildOptions, build_settings, check_folder, check_request

if TYPE_CHECKING:
    from clipkd.runtime.distributed import DistEnv


def options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(out=Path(args.out).absolute(), views=args.views, dtype=args.dtype,
                        batch_size=args.batch_size, rows_per_shard=args.rows_per_shard)


def preflight(cfg: TrainConfig) -> None:
    """The teacher's model and weights, and the data files, checked without building anything."""
    from clipkd.build.checks import check_data, check_model

    problems = [p for n, mc in teacher_fields(cfg.teacher)
                for p in check_model(f"{n}.model", mc.model, mc.pretrained, f"{n}.pretrained")]
    problems += check_data("data", cfg.data, unique_shards=True)  # one sidecar per shard
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))


def _launch(cfg: TrainConfig, opts: BuildOptions, args: argparse.Namespace) -> int:
    """``--nproc`` workers through torchrun, once the output folder is known to fit (reported once, here); a
    build stopped by a signal is reported here, from the folder (whatever became of the workers)."""
    from clipkd.reinforce.manifest import finished
    from clipkd.reinforce.plan import make_plan
    from clipkd.runtime.preemption import launch_stoppable
    from clipkd.runtime.threads import choose_threads

    plan = make_plan(cfg.data, opts.rows_per_shard)
    check_folder(opts.out, build_settings(cfg, opts, plan.identity))
    threads = choose_threads(cfg.threads, args.nproc)[0]
    code, stopped_by = launch_stoppable(args.nproc, worker_argv(args, opts), threads)
    if not (opts.out / MANIFEST_FILE).is_file():  # unfinished, however it ended: say what is kept and what to run
        kept = sum(finished(opts.out, s) for s in plan.sidecars)
        how = f"stopped by {stopped_by}" if stopped_by else ("stopped by a signal to its workers" if code == 0 or
                                                               code > 128 else f"failed (exit code {code})")
        print(stop_message(how, kept, len(plan.sidecars), opts.out, continue_command(args, opts)))
    return code


def worker_argv(args: argparse.Namespace, opts: BuildOptions) -> list[str]:
    """The ``clipkd reinforce`` arguments each torchrun worker runs (without ``--nproc``)."""
    argv = ["reinforce"] + (["--config", args.config] if args.config else [])
    argv += ["--views", str(opts.views), "--out", str(opts.out), "--dtype", opts.dtype,
             "--batch-size", str(opts.batch_size), "--rows-per-shard", str(opts.rows_per_shard)]
    return argv + list(args.overrides)


def continue_command(args: argparse.Namespace, opts: BuildOptions) -> str:
    """This command as a shell line (``--out`` absolute), ``--nproc`` included: what continues a stopped build."""
    argv = worker_argv(args, opts)
    if args.nproc > 1:
        at = len(argv) - len(args.overrides)
        argv[at:at] = ["--nproc", str(args.nproc)]
    return shlex.join(["clipkd", *argv])


def stop_message(how: str, kept: int, total: int, out: Path, command: str) -> str:
    """What an unfinished build says (``how``: ``stopped by SIGINT``, ...): what it kept, and how to continue."""
    return (f"{how}: {kept} of {total} sidecars built, kept in {out} (the build is resumable)\n"
            f"continue with the same command:\n  {command}")


def verify(out: Path) -> int:
    """`clipkd reinforce --verify --out DIR`: every sidecar against the manifest; 0 when all match, else 1."""
    from clipkd.reinforce.check import verify_build

    checked, problems = verify_build(out)
    if problems:
        print(f"{out}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
        return 1
    print(f"{out}: all {checked} sidecars are what the build wrote (size, header and SHA-256 as in manifest.json)")
    return 0


def run_reinforce(args: argparse.Namespace) -> int:
    from clipkd.config import load_config

    if args.verify:
        given = [f for f, v in (("--config", args.config), ("--views", args.views), ("overrides", args.overrides),
                                ("--nproc", args.nproc > 1)) if v]
        if given:
            raise ConfigError(f"--verify checks the build in --out and takes nothing else ({', '.join(given)} given)")
        return verify(Path(args.out))
    if args.views is None:
        raise ConfigError("--views: required to build (augmented views K per sample; 1 without data.crop_scale)")
    cfg = load_config(args.config, args.overrides)
    opts = options(args)
    check_request(cfg, opts)  # config errors are reported before torch is imported
    from clipkd.runtime.distributed import init_distributed, launched_by_torchrun, local_processes
    from clipkd.runtime.threads import apply_threads

    if not launched_by_torchrun():
        preflight(cfg)
        if args.nproc > 1:
            return _launch(cfg, opts, args)
    apply_threads(cfg.threads, local_processes())
    env = init_distributed(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_minutes)
    return _build(cfg, opts, env, args)


def _build(cfg: TrainConfig, opts: BuildOptions, env: "DistEnv", args: argparse.Namespace) -> int:
    """Build in this process (one rank of a group, or alone), until done or stopped by SIGTERM/SIGINT; rank 0
    prints the summary (of a stopped build: unless the ``--nproc`` launcher does)."""
    from clipkd.build.reinforce import run_build
    from clipkd.runtime.distributed import shutdown
    from clipkd.runtime.preemption import LAUNCHER_REPORTS_STOP, StopRequest

    try:
        with StopRequest() as stop:
            result = run_build(cfg, opts, env, stop=stop)
    finally:
        shutdown()
    if env.is_main and result.stopped_by is not None and not os.environ.get(LAUNCHER_REPORTS_STOP):
        print(stop_message(f"stopped by {result.stopped_by}", result.finished, result.sidecars, opts.out,
                           continue_command(args, opts)))
    if env.is_main and result.manifest is not None:
        m = result.manifest
        unusable = ", ".join(f"{k} {v}" for k, v in m["unusable"].items()) or "none"
        print(f"done: {len(m['data']['sidecars'])} sidecars, {m['records']} records ({m['usable']} usable; unusable: "
              f"{unusable}) in {opts.out}; this process: {result.records} records in {result.seconds:.1f} s "
              f"({result.samples_per_s:.1f} samples/s), {result.skipped} sidecar(s) already built\n"
              f"train from it (no teacher forward): clipkd train <the same config and overrides> "
              f"distill.teacher_cache={opts.out}")
    return 0
