"""The README's quick tour and the training page's teacher path run as printed; `clipkd smoke` gives both sides the
same crop, like the trainer."""

import random
import re
import subprocess
import sys
from pathlib import Path

import torch

from clipkd.data.synthetic import shape_samples
from clipkd.data.views import PairedViews, sample_crop
from clipkd.commands.smoke import make_batch
from conftest import STUDENT, TEACHER, make_encoder

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TRAINING = ROOT / "docs" / "training.md"  # the manual's training page


def quick_tour_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick tour"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_tour_runs_as_printed(tmp_path):
    script = tmp_path / "tour.py"
    script.write_text(quick_tour_code())
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    printed = eval(out.stdout.strip().splitlines()[-1])  # the tour's last line prints the loss terms
    assert set(printed) == {"loss", "task", "crd", "icl", "fd"}
    terms = printed["task"] + printed["crd"] + printed["icl"] + 2000 * printed["fd"]
    assert abs(printed["loss"] - terms) <= 0.0005 * (4 + 2000) + 1e-9  # each value rounded to 3 decimals


def test_smoke_batches_share_one_crop_per_sample():
    """Student and teacher views of each sample come from one crop box (the trainer's rule), each side then
    resized and normalised its own way: recomputed here from the box drawn with the same seed."""
    student, teacher = make_encoder(STUDENT), make_encoder(TEACHER)
    samples = list(shape_samples(4, size=64, seed=3))
    batch = make_batch(samples, PairedViews(student, teacher, crop_scale=(0.3, 0.5)), random.Random(7))
    rng = random.Random(7)
    for i, s in enumerate(samples):
        top, left, h, w = sample_crop(s.image, (0.3, 0.5), rng)
        region = s.image.crop((left, top, left + w, top + h))
        torch.testing.assert_close(batch.student_images[i], student.preprocess_val(region), rtol=0, atol=0)
        torch.testing.assert_close(batch.teacher_images[i], teacher.preprocess_val(region), rtol=0, atol=0)
    assert torch.equal(batch.student_text, student.tokenize([s.caption for s in samples]))


def teacher_path_commands() -> list[str]:
    """The training page's "A trained teacher" commands, continuation lines joined, comments dropped."""
    text = TRAINING.read_text(encoding="utf-8")
    block = re.search(r"<!-- teacher-path.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    return lines


def test_teacher_path_commands_work(tmp_path, monkeypatch, caplog):
    """Make data, train a teacher with recipe baseline, distil from it: as printed, with 2 steps instead of 200."""
    import shlex

    from clipkd.cli import main

    root = ROOT
    monkeypatch.chdir(tmp_path)
    short = ["optim.steps=2", "checkpoint.every_steps=2", "data.workers=0", "logging.progress=false",
             "logging.tensorboard=false"]
    commands = teacher_path_commands()
    assert [c.split()[0] for c in commands] == ["python", "clipkd", "clipkd"]
    subprocess.run([sys.executable, "-c", shlex.split(commands[0])[2]], check=True)
    for command in commands[1:]:
        argv = shlex.split(command.replace("configs/", f"{root}/configs/").replace("step_00000200", "step_00000002"))
        caplog.clear()
        assert main(argv[1:] + short) == 0, command
        assert not [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]
    assert (tmp_path / "runs/tiny-student/checkpoints/step_00000002/student.safetensors").is_file()
