"""The data path measured as training runs it: a stream's batches through its loader, without the model step.

What a batch costs: wall time (the first batch of an epoch, which starts the loader's workers, apart from the
median one), CPU seconds over all processes (this one, and each loader worker's own account of the batches it
made: :attr:`clipkd.data.stream.BatchInfo.cpu_s`), and the CPU seconds of each stage of the path
(:mod:`clipkd.data.stages`). Used by `clipkd bench-data`.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

from clipkd.data.batch import DistillBatch
from clipkd.data.stages import STAGES
from clipkd.data.stream import BatchInfo, DataPosition, DistillStream, make_loader


@dataclass
class DataPathFigures:
    """``samples_per_s``: after the first batch (steady state); ``cpu_s_per_sample``: over all processes and all
    batches; ``stages``: CPU seconds per sample of each stage (``other``: the rest of the producing processes'
    time; ``device``: this process's CPU moving each batch to the device and making the views there
    (``data.preprocess: device``); ``consumer``: the rest of this process's own CPU outside the producers'
    clocks, such as receiving batches); ``first_batch_s`` / ``median_batch_s``: wall seconds of the first batch
    of each epoch and of the median batch."""

    batches: int
    samples: int
    workers: int
    seconds: float
    samples_per_s: float
    cpu_s_per_sample: float
    stages: dict[str, float] = field(default_factory=dict)
    first_batch_s: list[float] = field(default_factory=list)
    median_batch_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _epochs(stream: DistillStream, workers: int, seed: int,
            pin: bool) -> Iterator[tuple[bool, DistillBatch, BatchInfo]]:
    """(first batch of its epoch, batch, info), epoch after epoch, as the trainer reads them (one loader)."""
    stream.start(DataPosition(), endless=True)
    epoch = None
    for batch, info in make_loader(stream, workers, seed, pin_memory=pin):
        yield info.epoch != epoch, batch, info
        epoch = info.epoch


def measure_stream(stream: DistillStream, workers: int, seed: int, batches: int,
                   device: torch.device) -> DataPathFigures:
    """``batches`` batches of ``stream`` (over as many epochs as that takes), each moved to ``device``."""
    walls, firsts, samples = [], [], 0
    stages: dict[str, float] = defaultdict(float)
    produced = on_device = 0.0
    cpu0, start = time.process_time(), time.perf_counter()
    tick = start
    steady_from, steady_samples = start, 0
    for n, (first, batch, info) in enumerate(_epochs(stream, workers, seed, device.type == "cuda")):
        c0 = time.process_time()
        batch.to(device, non_blocking=True).rendered()  # views made on the device (data.preprocess: device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        on_device += time.process_time() - c0
        now = time.perf_counter()
        (firsts if first else walls).append(now - tick)
        tick = now
        samples += len(batch)
        produced += info.cpu_s
        for k, v in info.stages.items():
            stages[k] += v
        if n == 0:
            steady_from = now
        else:
            steady_samples += len(batch)
        if n + 1 == batches:
            break
    seconds = time.perf_counter() - start
    # this process's own CPU outside the producers' clocks (with workers=0 it is also the producer)
    consumer = time.process_time() - cpu0 - (0.0 if workers else produced)
    per = {k: stages.get(k, 0.0) / samples for k in STAGES}
    per["other"] = max(produced - sum(stages.values()), 0.0) / samples
    per["device"] = on_device / samples
    per["consumer"] = (consumer - on_device) / samples
    total = consumer + produced
    steady = steady_samples / (tick - steady_from) if steady_samples else samples / seconds
    return DataPathFigures(batches=n + 1, samples=samples, workers=workers, seconds=seconds, samples_per_s=steady,
                           cpu_s_per_sample=total / samples, stages=per, first_batch_s=firsts,
                           median_batch_s=statistics.median(walls) if walls else firsts[0])
