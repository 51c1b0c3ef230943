"""Preflight once per job: under torchrun rank 0 reads, checks and hashes the inputs, the others get its verdict.

On a shared filesystem N ranks each hashing the teacher's weights and the data read N times the bytes before the
first step; here the teacher file is watched per process with an audit hook.
"""

import json
import os
import subprocess
from pathlib import Path

import torch

from clipkd.build.reinforce import run_build
from clipkd.config import load_config
from clipkd.data.synthetic import write_csv
from clipkd.reinforce.settings import BuildOptions
from clipkd.runtime.distributed import torchrun_command
from conftest import STUDENT, TEACHER, make_encoder

TESTS = Path(__file__).parent


def test_only_rank_zero_reads_the_teacher_file_when_training_from_reinforced_data(tmp_path):
    """Training from reinforced data builds no teacher, so the teacher's weights file is read only by preflight
    (its header against the architecture, its digest against the cache's): by rank 0 alone. Rank 1 never
    opens it; before, every rank ran preflight and read it."""
    teacher = tmp_path / "teacher.pt"
    torch.save(make_encoder(TEACHER, seed=4).model.state_dict(), teacher)
    pairs = write_csv(tmp_path / "pairs", 16, size=40)
    items = {"seed": 3, "device": "cpu", "student.model": STUDENT, "teacher.model": TEACHER,
             "teacher.pretrained": str(teacher), "data.format": "csv", "data.train": str(pairs),
             "data.crop_scale": [0.5, 1.0], "data.batch_size": 4, "data.workers": 0, "optim.steps": 1,
             "optim.warmup_steps": 0, "logging.progress": False, "logging.tensorboard": False,
             "distill.recipe": "fd"}
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()]
    cache = tmp_path / "cache"
    run_build(load_config(None, overrides + [f"run_dir={tmp_path / 'unused'}"]),
              BuildOptions(out=cache, views=1, dtype="fp32", batch_size=8, rows_per_shard=8))
    train = overrides + [f"run_dir={tmp_path / 'run'}", f"distill.teacher_cache={cache}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun_command(2, [str(TESTS / "preflight_worker.py"), str(tmp_path), str(teacher),
                                               json.dumps(train)]),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["step"] for r in ranks] == [1, 1]
    assert ranks[0]["teacher_opens"] >= 1  # preflight's header check and the digest (the watch works)
    assert ranks[1]["teacher_opens"] == 0
