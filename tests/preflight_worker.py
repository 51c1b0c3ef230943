"""The worker torchrun starts in test_preflight_once.py: one training step, and how often this process opened the
teacher's weights file (Python's audit hook sees every ``open``, torch.load's and the digests' alike).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/preflight_worker.py OUT TEACHER OVERRIDES
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(out: str, teacher: str, overrides: str) -> None:
    watched = os.path.realpath(teacher)
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and \
                os.path.realpath(os.fsdecode(args[0])) == watched:
            opened.append(event)

    sys.addaudithook(audit)
    from clipkd.commands.train import make_trainer
    from clipkd.config import load_config
    from clipkd.runtime.distributed import init_distributed, shutdown

    cfg = load_config(None, json.loads(overrides))
    env = init_distributed("cpu", "gloo")
    try:
        result = make_trainer(cfg, env=env).fit()
        Path(out, f"rank{env.rank}.json").write_text(json.dumps({"teacher_opens": len(opened), "step": result.step}))
    finally:
        shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
