"""`clipkd ablate --jobs N`: runs trained at once in processes of their own give the results of runs trained one
after another; a failed run is named with its log; a signal stops every run with a checkpoint, and none outlives
the study, even one killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipkd.ablate.jobs import job_environment
from clipkd.cli import main
from test_ablate import _study, study_dir  # noqa: F401  (the tiny study's fixture)
from test_orphans import alive, children, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def _one_thread_base(root: Path, name: str, **changes) -> str:
    base = yaml.safe_load((root / "base.yaml").read_text())
    base["threads"] = 1  # the same threads in both modes: the same arithmetic, hence the same numbers
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        base[section][key] = value
    (root / name).write_text(yaml.safe_dump(base))
    return name


def _results(out: Path) -> dict:
    runs = json.loads((out / "ablation.json").read_text())["runs"]
    return {arm: [{k: r[k] for k in ("curve", "val", "test", "seed")} for r in rs] for arm, rs in runs.items()}


def test_runs_at_once_give_the_results_of_runs_in_turn(study_dir):  # noqa: F811
    base = _one_thread_base(study_dir, "base-t1.yaml")
    assert main(["ablate", "-c", str(_study(study_dir, base=base, out="in-turn"))]) == 0
    assert main(["ablate", "-c", str(_study(study_dir, base=base, out="at-once")), "--jobs", "2"]) == 0
    at_once = study_dir / "at-once"
    assert _results(at_once) == _results(study_dir / "in-turn")
    for run in ("baseline-seed0", "fd-seed0"):
        assert "starting from scratch" in (at_once / "logs" / f"{run}.log").read_text()
        assert (at_once / "runs" / run / "result.json").is_file()


def test_a_failed_run_is_named_with_its_log_and_the_others_finish(study_dir, capsys):  # noqa: F811
    from clipkd.data.synthetic import write_csv

    csv = Path(write_csv(study_dir / "corrupt", 32, size=40))
    for image in (csv.parent / "images").iterdir():
        image.write_bytes(b"not an image")  # passes the checks before training; every record fails to decode
    path = _study(study_dir, out="failing", variants={"broken": {"distill.recipe": "fd", "data.train": str(csv)}})
    assert main(["ablate", "-c", str(path), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    log = study_dir / "failing" / "logs" / "broken-seed0.log"
    assert f"run broken-seed0 failed (exit code 1); the end of its log {log}" in err
    assert "DataQualityError" in err  # the log's end, shown in the error
    assert (study_dir / "failing" / "runs" / "baseline-seed0" / "result.json").is_file()


def test_each_job_gets_its_share_of_the_cores_and_one_gpu_in_turn():
    env = job_environment(3, 2, 16, ["4", "6"], {"PATH": "/bin"})
    assert (env["OMP_NUM_THREADS"], env["CUDA_VISIBLE_DEVICES"], env["OMP_WAIT_POLICY"]) == ("8", "6", "PASSIVE")
    assert job_environment(0, 4, 2, [], {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's wins
    assert "CUDA_VISIBLE_DEVICES" not in job_environment(0, 3, 2, [], {})
    assert job_environment(0, 3, 2, [], {})["OMP_NUM_THREADS"] == "1"


def _start(study_dir, out: str, base: str) -> tuple[subprocess.Popen, Path]:  # noqa: F811
    path = _study(study_dir, base=base, out=out)
    proc = subprocess.Popen([sys.executable, "-m", "clipkd", "ablate", "-c", str(path), "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    runs = study_dir / out / "runs"

    def both_training():
        return all((runs / r / "metrics.jsonl").is_file() for r in ("baseline-seed0", "fd-seed0"))

    assert wait_for(both_training, 120), proc.kill() or proc.communicate()[0]
    return proc, runs


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_signal_stops_every_run_with_a_checkpoint_and_none_is_left(study_dir, how):  # noqa: F811
    """SIGTERM to the study alone goes on to both runs; SIGKILL leaves no time to pass it on, and the runs get
    SIGTERM from Linux instead. Either way each run writes its checkpoint and leaves (resuming from it is the
    same `train` as in turn: test_ablate)."""
    base = _one_thread_base(study_dir, f"base-long-{how}.yaml", **{"optim.steps": 400, "checkpoint.every_steps": 400})
    proc, runs = _start(study_dir, f"signal-{how}", base)
    jobs = children(proc.pid)
    assert len(jobs) == 2
    proc.send_signal(getattr(signal, how))
    output = proc.communicate(timeout=120)[0]
    assert wait_for(lambda: not any(alive(pid) for pid in jobs), 60), "a run outlived the study"
    if how == "SIGTERM":
        assert proc.returncode == 0 and "study stopped by SIGTERM; run the same command to continue" in output
    for run in ("baseline-seed0", "fd-seed0"):
        saved = sorted((runs / run / "checkpoints").glob("step_*"))
        assert saved and saved[-1].name != "step_00000400", f"{run}: no checkpoint from the stop"
        assert not (runs / run / "result.json").exists()
