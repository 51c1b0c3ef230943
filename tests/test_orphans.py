"""Loader workers must not outlive their training process, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clipkd.data.synthetic import _jpeg, shape_samples
from test_train import base_overrides

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def children(pid: int) -> set[int]:
    """Direct child processes of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(check, seconds: float, step: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return check()


def _slow_csv(root: Path, missing: int = 100_000, good: int = 100) -> Path:
    """Mostly rows naming missing files: a batch of many usable records takes the workers minutes to fill."""
    (root / "img").mkdir(parents=True)
    lines = ["filepath,title"]
    for i, s in enumerate(shape_samples(good, size=32, seed=1)):
        (root / "img" / f"{i}.jpg").write_bytes(_jpeg(s.image))
        lines.append(f"img/{i}.jpg,{s.caption}")
    lines += [f"nope/{i}.jpg,caption {i}" for i in range(missing)]
    path = root / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigkilled_training_leaves_no_loader_worker(tmp_path):
    csv = _slow_csv(tmp_path / "data")
    args = base_overrides(tmp_path / "run", tmp_path, "csv", **{
        "data.train": str(csv), "data.workers": 2, "data.batch_size": 4096, "data.max_skip_fraction": 1.0})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipkd", "train", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        workers = wait_for(lambda: len(children(proc.pid)) >= 2 and children(proc.pid), 180)
        assert workers and proc.poll() is None, "no loader workers started"
        time.sleep(3)  # let them get into their record loop
        assert all(alive(w) for w in workers), "workers ended on their own"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        survivors = wait_for(lambda: not any(alive(w) for w in workers), 5)
        assert survivors, f"loader workers {sorted(w for w in workers if alive(w))} outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in children(proc.pid) | set(locals().get("workers") or ()):
            if alive(w):
                os.kill(w, signal.SIGKILL)


def test_record_loop_exits_when_its_parent_is_gone(tmp_path):
    """The portable check: a worker whose parent pid changed stops reading, whatever its loop is doing."""
    script = textwrap.dedent("""
        import itertools
        from clipkd.data import stream as s
        from clipkd.data.sources import RawSample

        class Endless:  # one endless pass of unusable records: the loop never yields a batch on its own
            def __len__(self):
                return 10
            def passes(self, epoch, split, num_splits, seed):
                for i in itertools.count():
                    yield RawSample(key=str(i), image=None, caption=None)

        s._PARENT_PID = -1  # as if recorded at start by a parent that has since gone
        st = s.DistillStream(Endless(), views=None, batch_size=2)  # no skip limit
        next(iter(st))
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pytest.fail("the record loop kept running without its parent")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
