"""Losses are computed in float32 with autocast off, also inside an autocast region (the trainer's path)."""

import pytest
import torch
import torch.nn.functional as F

from clipkd.distill import build_distiller
from clipkd.losses import TERMS
from clipkd.losses import functional as LF
from conftest import random_batch

N, D = 64, 32


def _unit(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(N, D, generator=g), dim=1)


def _formulas() -> dict:
    """Every public formula on the same float32 embeddings, with CLIP-like scales (student 1/0.07, teacher 100)."""
    s_img, s_txt, t_img, t_txt = (_unit(i) for i in range(4))
    s_scale, t_scale = torch.tensor(1 / 0.07), torch.tensor(100.0)
    return {
        "task": lambda: LF.clip_loss(s_img, s_txt, s_scale),
        "crd": lambda: LF.crd_loss(s_img, s_txt, s_scale, t_img, t_txt, t_scale),
        "fd": lambda: LF.fd_loss(s_img, s_txt, t_img, t_txt),
        "icl": lambda: LF.icl_loss(s_img, s_txt, t_img, t_txt, s_scale),
        "gd": lambda: LF.gd_loss(s_img, s_txt, s_scale, t_img, t_txt, t_scale),
        "afd": lambda: LF.afd_loss(s_img, s_txt, s_scale),
        "siglip": lambda: LF.siglip_loss(s_img, s_txt, torch.tensor(10.0), torch.tensor(-10.0)),
        "sigmoid_crd": lambda: LF.sigmoid_crd_loss(s_img, s_txt, torch.tensor(10.0), torch.tensor(-10.0), t_img,
                                                   t_txt, t_scale, torch.tensor(-5.0)),
        "sigmoid_crd_softmax_teacher": lambda: LF.sigmoid_crd_loss(s_img, s_txt, torch.tensor(10.0),
                                                                   torch.tensor(-10.0), t_img, t_txt, t_scale, None),
        "grads": lambda: torch.stack([g.abs().sum() for g in LF.contrastive_grads(s_img, s_txt, s_scale)]),
    }


def test_formulas_cover_every_term():
    assert set(TERMS) <= set(_formulas())


@pytest.mark.parametrize("name", sorted(_formulas()))
def test_formula_under_bf16_autocast_equals_float32(name):
    fn = _formulas()[name]
    expected = fn()
    assert expected.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0.0)


def test_float64_stays_float64_under_autocast():
    a, b = _unit(0).double(), _unit(1).double()
    expected = LF.clip_loss(a, b, 1 / 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = LF.clip_loss(a, b, 1 / 0.07)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_distill_loss_with_every_term_under_autocast(teacher_encoder):
    """The trainer's path: DistillLoss called inside torch.autocast on float32 embeddings (a sigmoid student: every
    term applies to it)."""
    from conftest import make_encoder

    student_encoder = make_encoder("clipkd-tiny-siglip", seed=1)
    weights = {name: 1.0 for name in TERMS}
    d = build_distiller(student_encoder, teacher_encoder, weights)
    s, t = d.embed(random_batch(student_encoder, teacher_encoder, n=16), torch.Generator().manual_seed(0))
    expected = d.loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = d.loss(s, t)
    assert set(got) == {"loss", *TERMS}
    for name in got:
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=0.0, msg=name)
