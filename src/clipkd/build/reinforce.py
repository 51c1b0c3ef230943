"""`clipkd reinforce`: the teacher run once over a run config's training data, into sidecar shards.

* Sidecar by sidecar, records in file order, fixed batches of ``batch_size`` records inside a sidecar, teacher in
  eval mode without gradients: the numbers do not depend on how many processes build them.
* Resumable: ``build.json`` (the settings) is written first; each sidecar is written atomically, then its
  receipt; a re-run of the same command skips finished sidecars, and one with other settings is refused.
* Several processes (under torchrun): sidecar ``i`` is built by rank ``i % world_size``; after a barrier rank 0
  writes ``manifest.json``.
* Stoppable: asked to stop (a :class:`~clipkd.runtime.preemption.StopRequest` set by SIGTERM/SIGINT), a process
  drops the sidecar in progress before its next batch and builds no other; the finished ones are kept. Rank 0
  writes no manifest then, and the same command continues the build.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from tqdm import tqdm

from clipkd.build.device import resolve_device
from clipkd.build.models import build_encoder
from clipkd.config import TrainConfig, teacher_list
from clipkd.files import read_json, remove_leftovers
from clipkd.models.encoders import ClipEncoder
from clipkd.reinforce.identity import describe_teacher
from clipkd.reinforce.manifest import finished, write_manifest
from clipkd.reinforce.plan import SidecarSpec, make_plan
from clipkd.reinforce.rows import ViewSpec
from clipkd.reinforce.settings import (
    MANIFEST_FILE,
    RECEIPTS_DIR,
    SETTINGS_FILE,
    BuildOptions,
    build_digest,
    build_settings,
    check_folder,
    check_request,
    claim_folder,
)
from clipkd.reinforce.writer import SidecarWriter, Stopped
from clipkd.runtime.distributed import DistEnv
from clipkd.runtime.preemption import StopRequest

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """What this process did; ``manifest`` on rank 0 only. A stopped build: ``stopped_by`` names the signal (on
    every rank), ``finished`` counts the sidecars kept (rank 0), of ``sidecars``."""

    built: list[int] = field(default_factory=list)
    skipped: int = 0
    records: int = 0
    seconds: float = 0.0
    manifest: Optional[dict[str, Any]] = None
    stopped_by: Optional[str] = None
    finished: int = 0
    sidecars: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def load_teachers(cfg: TrainConfig, device: torch.device) -> list[ClipEncoder]:
    """The run's teachers (an ensemble's in order; seeded as training seeds them), frozen, in eval mode, on
    ``device``."""
    torch.manual_seed(cfg.seed)
    teachers = [build_encoder(mc, role="teacher").to(device) for mc in teacher_list(cfg.teacher)]
    for t in teachers:
        t.eval().requires_grad_(False)
    return teachers


def _prepare_folder(opts: BuildOptions, settings: dict[str, Any], sidecars: Sequence[SidecarSpec]) -> None:
    """Rank 0, before the others start: claim the folder, drop left-overs of an interrupted write, and the
    manifest while a sidecar is missing."""
    claim_folder(opts.out, settings)
    for path in remove_leftovers(opts.out) + remove_leftovers(opts.out / RECEIPTS_DIR):
        log.info("removed %s (an interrupted write)", path)
    if not all(finished(opts.out, s) for s in sidecars):
        (opts.out / MANIFEST_FILE).unlink(missing_ok=True)


def _claim(opts: BuildOptions, env: DistEnv, plan: Any, settings: dict[str, Any]) -> tuple[list[int], int]:
    """Folder claimed (rank 0 first); (this process's sidecars still to build, how many it has built already)."""
    if env.is_main:
        _prepare_folder(opts, settings, plan.sidecars)
    env.barrier()
    check_folder(opts.out, settings)
    mine = [s for s in plan.sidecars if s.index % env.world_size == env.rank]
    todo = [s.index for s in mine if not finished(opts.out, s)]
    return todo, len(mine) - len(todo)


def _write_all(writer: SidecarWriter, plan: Any, todo: list[int], result: BuildResult,
               after_sidecar: Optional[Callable[[int], None]]) -> None:
    """Build the ``todo`` sidecars in turn, until done or asked to stop (the sidecar in progress dropped)."""
    start, current = time.perf_counter(), None
    try:
        for sidecar, records in plan.chunks(todo):
            current = sidecar.index
            result.records += writer.write(sidecar, records)
            result.built.append(sidecar.index)
            if after_sidecar is not None:
                after_sidecar(sidecar.index)
    except Stopped:
        log.info("stop requested: sidecar %s (in progress) dropped", current)
    result.seconds = time.perf_counter() - start


def _agree_on_stop(env: DistEnv, device: torch.device, stop: Optional[StopRequest], unfinished: bool
                   ) -> Optional[str]:
    """Once every process is done writing (a collective: a barrier): which signal stopped the build, if any
    process left a sidecar of its own unbuilt; None when none did."""
    stopped = env.sum([float(unfinished)], device)[0] > 0
    if not stopped:
        return None
    return stop.signal_name if stop is not None and stop.requested else "a signal to another process"


def run_build(cfg: TrainConfig, opts: BuildOptions, env: DistEnv = DistEnv(),
              after_sidecar: Optional[Callable[[int], None]] = None,
              stop: Optional[StopRequest] = None) -> BuildResult:
    """Build (or finish) the reinforced data of ``cfg`` in ``opts.out``; ``after_sidecar(index)`` runs after each
    sidecar this process writes; ``stop``: the signal handlers whose request stops the build (kept so far)."""
    check_request(cfg, opts)
    plan = make_plan(cfg.data, opts.rows_per_shard)
    # the data's and the teachers' digests: read and hashed once per job, by rank 0
    todo, skipped = _claim(opts, env, plan, env.from_main(lambda: build_settings(cfg, opts, plan.identity)))
    # the folder's own settings from here on (equal to these, as check_folder found): a build resumed by a later
    # clipkd names its sidecars and manifest with the digest its first sidecars got
    settings = read_json(opts.out / SETTINGS_FILE)
    result = BuildResult(skipped=skipped, sidecars=len(plan.sidecars))
    device = resolve_device(cfg.device, env.local_rank)
    teachers = load_teachers(cfg, device) if todo or env.is_main else []
    spec = ViewSpec(cfg.seed, cfg.data.crop_scale, opts.views, cfg.data.max_image_pixels)
    with tqdm(total=plan.size_hint(todo) if todo else 0, unit=" samples", desc="reinforce",
              disable=not (env.is_main and cfg.logging.progress)) as bar:
        writer = SidecarWriter(opts.out, teachers, spec, opts.dtype, opts.batch_size, device, bar,
                               stop_requested=lambda: stop is not None and stop.requested,
                               build=build_digest(settings))
        _write_all(writer, plan, todo, result, after_sidecar)
    result.stopped_by = _agree_on_stop(env, device, stop, len(result.built) < len(todo))
    if env.is_main and result.stopped_by is not None:
        result.finished = sum(finished(opts.out, s) for s in plan.sidecars)
    elif env.is_main:
        described = [describe_teacher(mc, t) for mc, t in zip(teacher_list(cfg.teacher), teachers)]
        result.manifest = write_manifest(opts.out, settings, described, plan.sidecars)
    return result
