"""torchrun worker for the multi-process fault test: rank 1 alone gets a non-finite gradient at step 2.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fault_worker.py OUT DATA
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from clipkd.config import load_config
from clipkd.runtime.distributed import init_distributed, shutdown
from clipkd.commands.train import make_trainer
from test_train import base_overrides


def main(out: str, data_dir: str) -> None:
    env = init_distributed("cpu")
    cfg = load_config(None, base_overrides(Path(out) / "run", Path(data_dir), **{"optim.steps": 3,
                                                                                 "data.batch_size": 8}))
    trainer = make_trainer(cfg, env=env)
    real, calls = trainer.grad_step, {"n": 0}

    def poisoned(batches, generator):
        result = real(batches, generator)
        calls["n"] += 1
        if env.rank == 1 and calls["n"] == 2:  # after DDP's all-reduce: only this rank's copy is bad
            next(p for p in trainer.student.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")
        return result

    trainer.grad_step = poisoned
    params = []
    real_step = trainer.train_step

    def recording(batches):
        values = real_step(batches)
        params.append({k: v.detach().clone() for k, v in trainer.student.state_dict().items()})
        return values

    trainer.train_step = recording
    result = trainer.fit()
    rows = env.gather_objects({"steps": result.step, "nonfinite": result.nonfinite_steps, "params": params})
    if env.is_main:
        torch.save(rows, Path(out) / "faults.pt")
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
