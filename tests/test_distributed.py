"""Global-batch exactness: 2 processes (gloo) and gradient accumulation equal one big batch; torchrun runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipkd.cli import main as cli_main
from clipkd.engine.checkpoint import list_checkpoints
from clipkd.runtime.distributed import DistEnv, torchrun_command
from clipkd.engine.gradcache import GlobalBatchStep
from clipkd.engine.logger import read_metrics
from clipkd.engine.trainer import Trainer
from clipkd.commands.train import make_trainer
from clipkd.errors import DataQualityError
from dist_worker import SIGMOID, SIGMOID_TERMS, config, global_batch, one_step, rows
from test_train import base_overrides

TESTS = Path(__file__).parent
TOL = 1e-5


def _torchrun(*args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun_command(nproc, args), env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def _assert_same(a: dict, b: dict) -> None:
    assert a["values"].keys() == b["values"].keys()
    for name in a["values"]:
        assert a["values"][name] == pytest.approx(b["values"][name], rel=TOL, abs=TOL), name
    for name, p in a["params"].items():
        torch.testing.assert_close(p, b["params"][name], rtol=TOL, atol=TOL, msg=name)
    assert a["grads"].keys() == b["grads"].keys()
    for name, g in a["grads"].items():
        scale = b["grads"][name].abs().max().item()
        # float32 sums over 1, 2 or 4 micro-batches and ranks differ by ~1e-5 of the largest entry (seen:
        # 1.4e-5 for a bias); a wrong accumulation would be off by the order of the entries themselves
        torch.testing.assert_close(g, b["grads"][name], rtol=1e-4, atol=5 * TOL * max(scale, 1e-3), msg=name)


@pytest.fixture(scope="module")
def reference(data_dir, module_tmp):
    """One process, one batch of all GLOBAL samples, one step; plus the initial parameters."""
    trainer = make_trainer(config(module_tmp("ref"), data_dir))
    init = {k: v.detach().clone() for k, v in trainer.student.state_dict().items()}
    return one_step(trainer, DistEnv()), init


@pytest.fixture(scope="module")
def sigmoid_reference(data_dir, module_tmp):
    """The same for a sigmoid student and teacher (SigLIP terms): one process, one batch of all GLOBAL samples."""
    trainer = make_trainer(config(module_tmp("sigmoid-ref"), data_dir, **SIGMOID))
    init = {k: v.detach().clone() for k, v in trainer.student.state_dict().items()}
    return one_step(trainer, DistEnv()), init


def test_sigmoid_reference_step_trains_the_logit_bias(sigmoid_reference):
    ref, init = sigmoid_reference
    assert set(ref["values"]) == {"loss", *SIGMOID_TERMS}
    assert float(ref["grads"]["encoder.model.logit_bias"].abs()) > 1e-3
    assert not torch.allclose(init["encoder.model.logit_bias"], ref["params"]["encoder.model.logit_bias"])


@pytest.mark.parametrize("accum", [2, 4])
def test_sigmoid_accumulation_equals_one_big_batch(accum, sigmoid_reference, data_dir, tmp_path):
    """The sigmoid terms on the global batch: scale and bias get their full gradient once, whatever the split."""
    trainer = make_trainer(config(tmp_path, data_dir, accum=accum, **SIGMOID))
    _assert_same(one_step(trainer, DistEnv()), sigmoid_reference[0])


def test_reference_step_changes_every_trained_tensor(reference):
    ref, init = reference
    assert set(ref["values"]) == {"loss", "task", "crd", "fd", "icl", "gd", "afd"}
    moved = [k for k in init if not torch.allclose(init[k], ref["params"][k], atol=1e-4)]
    assert len(moved) > 0.9 * len(init)  # the comparison below is not between untouched weights


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulation_equals_one_big_batch(accum, reference, data_dir, tmp_path):
    trainer = make_trainer(config(tmp_path, data_dir, accum=accum))
    _assert_same(one_step(trainer, DistEnv()), reference[0])


def test_two_processes_equal_one_process(reference, sigmoid_reference, data_dir, tmp_path):
    """2 ranks x batch 8, and 2 ranks x 2 micro-batches of 4, each equal one process with batch 16; also with the
    sigmoid terms (SigLIP student and teacher: gathered embeddings, the N x N sigmoid loss on every rank)."""
    _torchrun(str(TESTS / "dist_worker.py"), str(tmp_path), str(data_dir))
    results = torch.load(tmp_path / "dist.pt", weights_only=True)
    for accum in (1, 2):
        _assert_same(results[accum], reference[0])
        _assert_same(results[f"sigmoid-{accum}"], sigmoid_reference[0])


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("teacher", ["clipkd-tiny-teacher", "clipkd-tiny-vit"])
def test_gradcache_replays_masks_and_matches_one_graph(teacher, data_dir, tmp_path):
    """MFD masks are drawn per micro-batch; the replay must use the same ones (and equal sizes alias heads)."""
    trainer = make_trainer(config(tmp_path, data_dir, accum=4, teacher=teacher, mask_ratio=0.5))
    batch = global_batch(trainer)
    micro = [rows(batch, 4 * k, 4 * (k + 1)) for k in range(4)]
    gen_state = trainer.mask_gen.get_state()
    trainer.grad_step(micro, trainer.mask_gen)
    cached, after = _grads(trainer), trainer.mask_gen.get_state()
    trainer.student.zero_grad(set_to_none=True)
    trainer.mask_gen.set_state(gen_state)
    d = trainer.distiller  # the direct way: one graph over all micro-batches
    outs = [d.embed(b, trainer.mask_gen) for b in micro]
    s = outs[0][0].map(lambda _: None)
    for name in ("img", "txt", "img_proj", "txt_proj", "afd_img", "afd_txt"):
        setattr(s, name, torch.cat([getattr(o[0], name) for o in outs]))
    t = outs[0][1].map(lambda _: None)
    t.img, t.txt = torch.cat([o[1].img for o in outs]), torch.cat([o[1].txt for o in outs])
    d.loss(s, t)["loss"].backward()
    direct = _grads(trainer)
    assert torch.equal(trainer.mask_gen.get_state(), after)
    assert cached.keys() == direct.keys()
    for name in direct:  # float32 noise is relative to the largest entry (seen: 4e-7 of it, token embedding)
        scale = max(direct[name].abs().max().item(), 1.0)
        torch.testing.assert_close(cached[name], direct[name], rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_accumulation_updates_batchnorm_statistics_once_per_micro_batch(data_dir, tmp_path):
    trainer = make_trainer(config(tmp_path, data_dir, accum=2, student="clipkd-tiny-mobilenet"))
    student = trainer.student
    before = {n: b.clone() for n, b in student.named_buffers()}
    assert any("running_mean" in n for n in before)
    batch = global_batch(trainer)
    micro = [rows(batch, 0, 8), rows(batch, 8, 16)]
    trainer.grad_step(micro, trainer.mask_gen)
    after = {n: b.clone() for n, b in student.named_buffers()}
    with torch.no_grad():  # reference: each micro-batch seen once
        for n, b in student.named_buffers():
            b.copy_(before[n])
        for b in micro:
            trainer.distiller.embed(b)
    for n, b in student.named_buffers():
        torch.testing.assert_close(after[n], b, msg=n)


def test_step_rejects_empty_group(data_dir, tmp_path):
    trainer = make_trainer(config(tmp_path, data_dir))
    with pytest.raises(ValueError, match="at least one micro-batch"):
        GlobalBatchStep(trainer.distiller, trainer.student, DistEnv(), trainer.device)([])


def test_resume_with_other_process_count_is_refused(data_dir, tmp_path, capsys):
    args = base_overrides(tmp_path / "run", data_dir, **{"data.batch_size": 8, "optim.warmup_steps": 0,
                                                         "optim.steps": 1})
    assert cli_main(["train", *args]) == 0
    assert cli_main(["train", "--resume", "latest", *args, "optim.steps=2", "data.workers=1"]) == 2
    assert "written by 1 process(es) with data.workers=0" in capsys.readouterr().err


def test_cli_nproc_two_writes_one_run_and_resumes_exactly(data_dir, tmp_path):
    """`clipkd train --nproc 2`: one checkpoint folder, one log, rank 0 only; resume equals an unbroken run."""
    def args(run, steps):
        return base_overrides(run, data_dir, **{
            "distill.recipe": "clipkd", "data.batch_size": 4, "data.workers": 1, "data.shuffle_buffer": 8,
            "optim.warmup_steps": 1, "optim.steps": steps, "optim.accum_steps": 2, "logging.tensorboard": True})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    cmd = [sys.executable, "-m", "clipkd", "train", "--nproc", "2"]
    val = [f"eval.val_data={{format: webdataset, train: '{data_dir}/wds/shard-00000.tar', batch_size: 8, workers: 0}}",
           "eval.val_batches=1", "eval.every_steps=2"]  # rank 0 evaluates, rank 1 waits at a barrier
    resume = ["--resume", "latest", "--allow-config-change"]  # the budget grows from 2 to 3 steps
    for run, steps, extra in ((full, 3, val), (part, 2, []), (part, 3, resume)):
        done = subprocess.run(cmd + args(run, steps) + extra, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        assert done.stdout.count("done: step") == 1  # only rank 0 reports
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["full", "part"]  # + locks
    assert sorted(p.name for p in full.iterdir()) == ["checkpoints", "config.yaml", "inputs.json", "metrics.jsonl",
                                                      "tensorboard"]
    assert [p.name for p in list_checkpoints(full)] == ["step_00000002", "step_00000003"]
    assert len(list((full / "tensorboard").iterdir())) == 1
    rows_full = read_metrics(full, "train")
    assert [r["step"] for r in rows_full] == [1, 2, 3]  # one line per step: one writer
    assert [r["step"] for r in read_metrics(full, "eval/val")] == [2, 3]
    state = torch.load(list_checkpoints(full)[-1] / "train_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["position"]["consumed"].keys() != state["ranks"][1]["position"]["consumed"].keys()
    resumed = read_metrics(part, "train")[-1]
    assert resumed["step"] == 3
    for key in ("train/loss", "train/task", "train/crd", "train/icl", "train/fd"):
        assert resumed[key] == rows_full[-1][key], key


def test_scaling_benchmark_runs_under_torchrun(tmp_path):
    """The GPU-ready benchmark script stays runnable: 2 CPU processes, global batch with accumulation."""
    script = TESTS.parent / "benchmarks" / "scaling.py"
    done = _torchrun(str(script), "--mode", "global", "--accum", "2", "--batch", "4", "--steps", "1", "--warmup", "0")
    line = [x for x in done.stdout.splitlines() if x.startswith("{")]
    assert len(line) == 1  # rank 0 reports
    report = json.loads(line[0])
    assert report["world_size"] == 2 and report["global_batch"] == 16 and report["samples_per_s"] > 0


def test_nproc_reports_config_problems_once_before_launching(tmp_path, capsys):
    args = [f"run_dir={tmp_path}", "teacher.model=clipkd-tiny-teacher", "student.model=clipkd-tiny-vit",
            "data.format=webdataset", f"data.train={tmp_path}/missing-{{00000..00001}}.tar", "optim.steps=1"]
    assert cli_main(["train", "--nproc", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("2 of 2 shards not found") == 1


class _TwoRanks(DistEnv):
    """A rank whose partner's counters are ``other`` (what the all-reduce would add)."""

    def __init__(self, other):
        super().__init__(0, 2, 0)
        object.__setattr__(self, "other", other)

    def sum(self, values, device):
        return [a + b for a, b in zip(values, self.other)]

    def all_reduce(self, t):
        return t + torch.tensor(self.other, dtype=t.dtype)


@pytest.mark.parametrize("other_bad, raises", [(0, False), (60, True)])
def test_skip_limit_is_judged_on_all_ranks_records(other_bad, raises, data_dir, tmp_path):
    """Each rank decides from the same global counts, so all stop together (no rank left waiting)."""
    trainer = make_trainer(config(tmp_path, data_dir))
    trainer.env = _TwoRanks([0, 0, other_bad, 100])  # partner: finite, no stop, its unusable and read records
    trainer.rank_state.consumed = 100
    trainer.rank_state.skipped.update({"bad_image": 5})
    values, trainer.agreed = trainer._agree({"loss": torch.tensor(1.5)}, torch.tensor(True))  # the step's one
    assert values == {"loss": 1.5}  # all-reduce carries the counts, read back with the step's values
    if raises:
        with pytest.raises(DataQualityError, match=r"65 of 200 records"):
            trainer._check_skips(final=False)
    else:
        assert trainer._check_skips(final=False) == 5


def test_nproc_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--nproc", "0"])
    assert "--nproc: must be >= 1" in capsys.readouterr().err
