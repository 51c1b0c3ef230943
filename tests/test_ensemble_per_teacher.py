"""A teacher ensemble logs each teacher's value of every term (``train/crd/t0``, ``train/crd/t1`` beside
``train/crd``, in metrics.jsonl and TensorBoard), and the summed terms stay what they were.

Each teacher's value is checked against the single-teacher hand formulas of test_ensemble (float64), and through
the training step against clipkd.losses.functional on that teacher's block of the embeddings.
"""

import json

import pytest
import torch

from clipkd.data.batch import DistillBatch
from clipkd.distill import build_distiller
from clipkd.runtime.distributed import DistEnv
from clipkd.engine.gradcache import GlobalBatchStep
from clipkd.losses import DistillLoss
from clipkd.losses import functional as LF
from clipkd.losses.ensemble import per_teacher_terms
from clipkd.embeddings import Embeddings
from conftest import STUDENT, TEACHER, make_encoder
from test_ensemble import (ALL_WEIGHTS, DIMS, T_SCALES, W, blocks, hand_clip, hand_crd, hand_fd, hand_gd,
                           hand_icl, student_output, two_teacher_inputs)

TEACHER_TERMS = ("crd", "fd", "icl", "gd", "afd")


def hand_alone(name, s, t, k):
    """Teacher k's term, alone: the single-teacher hand formula on its block (weight 1, one size)."""
    d, one = (DIMS[k],), (1.0,)
    pi, pt, fi, ft = (blocks(s[x])[k] for x in ("pi", "pt", "fi", "ft"))
    ti, tt = blocks(t.img)[k], blocks(t.txt)[k]
    return {
        "crd": lambda: hand_crd(s["si"], s["st"], s["ss"], ti, tt, (T_SCALES[k],), w=one, dims=d),
        "fd": lambda: hand_fd(pi, pt, ti, tt, w=one, dims=d),
        "icl": lambda: hand_icl(pi, pt, ti, tt, s["icl"][k:k + 1], w=one, dims=d),
        "gd": lambda: hand_gd(pi, pt, s["ss"], ti, tt, (T_SCALES[k],), w=one, dims=d),
        "afd": lambda: hand_clip(fi, ft, s["afd"][k]),
    }[name]()


def test_each_teachers_term_is_the_single_teacher_formula_and_the_sums_are_unchanged():
    s, t = two_teacher_inputs()
    loss = DistillLoss(ALL_WEIGHTS, DIMS, W)
    student = student_output(s)
    got = per_teacher_terms(loss.ensemble, loss.terms, student, t)
    assert set(got) == {f"{n}/t{k}" for n in TEACHER_TERMS for k in (0, 1)}  # no task/t<k>: it has no teacher
    for name in TEACHER_TERMS:
        for k in (0, 1):
            expected = hand_alone(name, s, t, k).item()
            assert got[f"{name}/t{k}"].item() == pytest.approx(expected, rel=1e-10), (name, k)
    summed = loss(student, t)
    for name in ("fd", "icl", "gd", "afd"):  # weighted sums of the per-teacher values
        assert summed[name].item() == pytest.approx(sum(W[k] * got[f"{name}/t{k}"].item() for k in (0, 1)),
                                                    rel=1e-12)
    assert summed["crd"].item() == pytest.approx(hand_crd(s["si"], s["st"], s["ss"], t.img, t.txt, T_SCALES).item(),
                                                 rel=1e-10)  # still the mixture's CRD


def test_one_teacher_adds_nothing():
    s, t = two_teacher_inputs()
    one = Embeddings(blocks(t.img)[0], blocks(t.txt)[0], t.scale[0])
    loss = DistillLoss(ALL_WEIGHTS)
    student = student_output(dict(s, pi=blocks(s["pi"])[0], pt=blocks(s["pt"])[0], fi=blocks(s["fi"])[0],
                                  ft=blocks(s["ft"])[0], icl=s["icl"][0], afd=s["afd"][0]))
    assert per_teacher_terms(loss.ensemble, loss.terms, student, one) == {}
    assert set(loss(student, one)) == {"loss", *ALL_WEIGHTS}


def _ensemble_batch(teachers, n, seed):
    g = torch.Generator().manual_seed(seed)
    captions = [f"a photo of shape {i} in colour {i % 3}" for i in range(n)]
    student = make_encoder(STUDENT, seed=9)
    return DistillBatch(torch.randn(n, 3, *student.image_size, generator=g), student.tokenize(captions),
                        tuple(torch.randn(n, 3, *t.image_size, generator=g) for t in teachers),
                        tuple(t.tokenize(captions) for t in teachers))


def test_the_training_step_returns_each_teachers_terms_of_the_global_batch():
    """Two micro-batches of 4 (accumulation): the per-teacher values are those of the global batch of 8,
    computed here with the single-teacher functions on each teacher's block; the summed terms are unchanged."""
    teachers = [make_encoder(TEACHER, seed=2), make_encoder(STUDENT, seed=3)]  # 384-d and 256-d
    distiller = build_distiller(make_encoder(STUDENT, seed=1), teachers, ALL_WEIGHTS, teacher_weights=(0.25, 0.75))
    micro = [_ensemble_batch(teachers, 4, seed) for seed in (0, 1)]
    step = GlobalBatchStep(distiller, distiller.student, DistEnv(), torch.device("cpu"))
    got = step(micro)
    s, t = [], []
    with torch.no_grad():
        for b in micro:
            out, emb = distiller.embed(b)
            s.append(out)
            t.append(emb)
    cat = lambda name, xs: torch.cat([getattr(x, name) for x in xs])  # noqa: E731
    full = {n: cat(n, s) for n in ("img", "txt", "img_proj", "txt_proj", "afd_img", "afd_txt")}
    ti, tt = cat("img", t), cat("txt", t)
    ss, icl, afd, ts = s[0].scale, s[0].icl_scale, s[0].afd_scale, t[0].scale
    dims = (384, 256)
    part = lambda x, k: x.split(dims, dim=1)[k]  # noqa: E731
    for k in (0, 1):
        pi, pt, fi, ft, a, b = (part(x, k) for x in (full["img_proj"], full["txt_proj"], full["afd_img"],
                                                      full["afd_txt"], ti, tt))
        expected = {"crd": LF.crd_loss(full["img"], full["txt"], ss, a, b, ts[k]), "fd": LF.fd_loss(pi, pt, a, b),
                    "icl": LF.icl_loss(pi, pt, a, b, icl[k]), "gd": LF.gd_loss(pi, pt, ss, a, b, ts[k]),
                    "afd": LF.afd_loss(fi, ft, afd[k])}
        for name, value in expected.items():
            torch.testing.assert_close(got[f"{name}/t{k}"], value.float(), rtol=1e-5, atol=1e-6,
                                       msg=f"{name}/t{k}")
    summed = distiller.loss(type(s[0])(**{**vars(s[0]), **full}), Embeddings(ti, tt, ts))
    for name in ("loss", *ALL_WEIGHTS):
        torch.testing.assert_close(got[name], summed[name].detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_a_training_run_logs_each_teachers_terms_to_metrics_and_tensorboard(data_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from clipkd.config import load_config
    from clipkd.engine.logger import read_metrics
    from clipkd.commands.train import make_trainer
    from test_train import base_overrides

    members = [{"model": TEACHER, "weight": 1}, {"model": STUDENT, "weight": 3}]
    run = tmp_path / "run"
    val = {"format": "csv", "train": str(data_dir / "csv" / "data.csv"), "batch_size": 8, "workers": 0}
    cfg = load_config(None, base_overrides(run, data_dir, "csv", **{
        "teacher": members, "optim.steps": 2, "logging.tensorboard": True, "data.batch_size": 8,
        "eval.val_data": val, "eval.val_batches": 1, "eval.every_steps": 2}))
    result = make_trainer(cfg).fit()
    rows = read_metrics(run, "train")
    keys = {f"train/{n}/t{k}" for n in ("crd", "icl", "fd") for k in (0, 1)}  # recipe clipkd: task crd icl fd
    assert [r["step"] for r in rows] == [1, 2]
    for row, values in zip(rows, result.history):
        assert keys <= set(row) and "train/task/t0" not in row
        assert row["train/fd"] == pytest.approx(0.25 * row["train/fd/t0"] + 0.75 * row["train/fd/t1"], rel=1e-5)
        assert all(row[f"train/{k}"] == pytest.approx(v) for k, v in values.items())
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in keys:
        assert [e.value for e in events.Scalars(key)] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train/crd/t1"] > 0
    (held,) = read_metrics(run, "eval/val")  # the held-out loss: each teacher's terms too
    assert {f"eval/val/{n}/t{k}" for n in ("crd", "icl", "fd") for k in (0, 1)} <= set(held)
    assert held["eval/val/fd"] == pytest.approx(0.25 * held["eval/val/fd/t0"] + 0.75 * held["eval/val/fd/t1"],
                                                rel=1e-5)
