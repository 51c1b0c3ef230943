"""The pause at each epoch start (issue: feed the GPU): persistent loader workers against a loader per epoch.

A tiny-ViT baseline run on drawn shapes (CSV, 64 px JPEGs, batch 32, 2 loader workers, a few epochs), trained
step by step by the engine's own trainer; for each step, the seconds it waited for its batch. Side by side in one
process, interleaved: the trainer as it is (one loader for the whole run) and the same trainer reading epoch by
epoch with a new loader each time (what it did before). Prints, for each, the wait of the first step of each epoch
after the first and the median step (wait + step), and their ratio (target: first batch of an epoch <= 2x a median
batch).

    python benchmarks/epoch_start.py [--pairs 512] [--epochs 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipkd.commands.train import make_trainer  # noqa: E402
from clipkd.config import load_config  # noqa: E402
from clipkd.data.stream import DataPosition, make_loader  # noqa: E402
from clipkd.data.synthetic import write_csv  # noqa: E402


def per_epoch_loaders(trainer):
    """The micro-batch groups as the trainer made them before: a new loader (new workers) at every epoch."""
    group = []
    while True:
        trainer.stream.start(trainer.rank_state.position)
        for batch, info in make_loader(trainer.stream, trainer.cfg.data.workers, trainer.cfg.seed):
            trainer.rank_state.account(info)
            group.append(batch)
            if len(group) == trainer.accum:
                yield group
                group = []
        trainer.rank_state.position = DataPosition(trainer.rank_state.position.epoch + 1)


def run(csv: str, out: Path, epochs: int, persistent: bool) -> dict:
    items = [f"run_dir={out}", "student.model=clipkd-tiny-vit", "distill.recipe=baseline", "data.format=csv",
             f"data.train={csv}", "data.batch_size=32", "data.workers=2", f"optim.epochs={epochs}",
             "optim.warmup_steps=0", "logging.progress=false", "logging.tensorboard=false", "device=cpu",
             "checkpoint.every_steps=100000"]
    trainer = make_trainer(load_config(None, items))
    groups = trainer._micro_batches() if persistent else per_epoch_loaders(trainer)
    waits, steps, firsts, epoch = [], [], [], 0
    for _ in range(trainer.total_steps):
        start = time.perf_counter()
        batches = next(groups)
        waited = time.perf_counter() - start
        trainer.train_step(batches)
        now_epoch = trainer.rank_state.position.epoch
        if now_epoch != epoch:
            firsts.append(waited)
            epoch = now_epoch
        waits.append(waited)
        steps.append(time.perf_counter() - start)
    groups.close()
    trainer.release()
    return {"firsts": firsts, "median_step": statistics.median(steps), "median_wait": statistics.median(waits)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_csv(Path(tmp) / "data", args.pairs, size=64)
        results = {True: [], False: []}
        for r in range(args.rounds):
            for persistent in (False, True):
                results[persistent].append(run(csv, Path(tmp) / f"run-{r}-{persistent}", args.epochs, persistent))
    print(f"{args.pairs} pairs, batch 32, 2 workers, {args.epochs} epochs, {args.rounds} rounds; seconds")
    for persistent, label in ((False, "a loader per epoch (before)"), (True, "one loader, persistent workers")):
        firsts = [f for r in results[persistent] for f in r["firsts"]]
        median = statistics.median(r["median_step"] for r in results[persistent])
        print(f"  {label:<32} first wait of an epoch: median {statistics.median(firsts):.3f} (max {max(firsts):.3f})"
              f"; median step {median:.3f}; RATIO first/median step {statistics.median(firsts) / median:.2f}")


if __name__ == "__main__":
    main()
