"""`clipkd reinforce` stopped by SIGINT (Ctrl-C) or SIGTERM: no traceback, finished sidecars kept, the command to
continue printed, no process left; running that command finishes the build with the manifest of an unbroken build.

The signal is sent from outside, to a real subprocess, once its first sidecar is on disk: to the whole process
group (as Ctrl-C and Slurm do) or to the launching process alone (as ``kill PID`` does).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from clipkd.config import load_config
from clipkd.data.synthetic import write_csv
from clipkd.build.reinforce import run_build
from clipkd.reinforce.settings import BuildOptions
from conftest import STUDENT, TEACHER, make_encoder
from test_orphans import alive, children, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

ROWS, ROWS_PER_SIDECAR = 240, 8  # 30 sidecars: the build goes on for seconds after its first sidecar


@pytest.fixture(scope="module")
def setup(module_tmp):
    """(run overrides, options, the manifest of an unbroken build in this process)."""
    root = module_tmp("reinforce-stop")
    csv_path = write_csv(root / "csv", ROWS, size=48)
    enc = make_encoder(TEACHER, seed=2)
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(root / "teacher.safetensors"))
    items = {"run_dir": "unused", "seed": 3, "device": "cpu", "student.model": STUDENT, "teacher.model": TEACHER,
             "teacher.pretrained": str(root / "teacher.safetensors"), "data.format": "csv", "data.train": csv_path,
             "data.crop_scale": [0.5, 1.0], "optim.steps": 1, "logging.progress": False}
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()]
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same arithmetic, the same bytes
    try:
        opts = BuildOptions(out=root / "unbroken", views=2, dtype="fp32", batch_size=4,
                            rows_per_shard=ROWS_PER_SIDECAR)
        manifest = run_build(load_config(None, overrides), opts).manifest
    finally:
        torch.set_num_threads(saved)
    return overrides, manifest


def _argv(out: Path, overrides: list[str], nproc: int) -> list[str]:
    return ["reinforce", "--views", "2", "--out", str(out), "--dtype", "fp32", "--batch-size", "4",
            "--rows-per-shard", str(ROWS_PER_SIDECAR), *(["--nproc", str(nproc)] if nproc > 1 else []), *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _stop_mid_build(argv: list[str], out: Path, sig: str, group: bool, nproc: int):
    """Start the build, signal it once its first sidecar is written; (exit code, stdout, stderr, its processes)."""
    proc = subprocess.Popen([sys.executable, "-m", "clipkd", *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = wait_for(lambda: (out / "done" / "sidecar-00000.json").is_file() or proc.poll() is not None, 240,
                         step=0.02)
        assert first and proc.poll() is None, proc.communicate()
        procs = _descendants(proc.pid)
        assert len(procs) >= (nproc + 1 if nproc > 1 else 0)  # torchrun and its workers
        if group:
            os.killpg(proc.pid, getattr(signal, sig))
        else:
            proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, stderr, procs


@pytest.mark.parametrize("sig, group, nproc", [
    ("SIGINT", True, 1),   # Ctrl-C in a terminal
    ("SIGTERM", False, 1),  # kill PID
    ("SIGINT", True, 2),   # Ctrl-C: the launcher and torchrun get it, torchrun's workers (own sessions) do not
    ("SIGTERM", False, 2),  # kill PID of the launcher: it passes the signal on
])
def test_a_signal_stops_the_build_cleanly_and_the_printed_command_finishes_it(setup, tmp_path, sig, group, nproc):
    overrides, unbroken = setup
    out = tmp_path / "cache"
    code, stdout, stderr, procs = _stop_mid_build(_argv(out, overrides, nproc), out, sig, group, nproc)
    assert code == 0, stdout + stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    assert not (out / "manifest.json").exists()
    kept = sorted(p.name for p in (out / "done").iterdir())
    assert 1 <= len(kept) < ROWS // ROWS_PER_SIDECAR, "stopped before its end"
    assert f"stopped by {sig}: {len(kept)} of {ROWS // ROWS_PER_SIDECAR} sidecars built, kept in {out}" in stdout
    assert wait_for(lambda: not any(alive(p) for p in procs), 30), "a process outlived the build"
    lines = stdout.splitlines()
    command = lines[lines.index("continue with the same command:") + 1].strip()
    assert shlex.split(command) == ["clipkd", *_argv(out, overrides, nproc)]
    resumed = subprocess.run([sys.executable, "-m", "clipkd", *shlex.split(command)[1:]], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(kept)} sidecar(s) already built" in resumed.stdout or nproc > 1
    assert json.loads((out / "manifest.json").read_text()) == unbroken


STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker slow to stop: still writing its sidecar
signal.signal(signal.SIGINT, signal.SIG_IGN)
open(__import__("sys").argv[1] + "/started-" + __import__("os").environ["RANK"], "w").close()
time.sleep(120)
"""


def test_a_second_signal_ends_the_workers_at_once_and_none_is_left(tmp_path):
    """Ctrl-C twice (more than a second apart) through clipkd's torchrun: the first asks the workers to stop and
    waits; the second kills them at once (torchrun's own handler returned and left them running, in sessions of
    their own) and exits 128 + SIGINT."""
    import time

    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    proc = subprocess.Popen([sys.executable, "-m", "clipkd.runtime.preemption", "--standalone", "--nproc_per_node=2",
                             str(script), str(tmp_path)], env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(list(tmp_path.glob("started-*"))) == 2 or proc.poll() is not None, 60)
        workers = _descendants(proc.pid)
        assert len(workers) >= 2
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1.5)  # later than the repeat window: a second request
        assert proc.poll() is None and all(alive(p) for p in workers)  # the first one waits for them
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 128 + signal.SIGINT
    assert wait_for(lambda: not any(alive(p) for p in workers), 10), "a worker outlived torchrun"
