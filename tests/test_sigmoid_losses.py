"""The sigmoid formulas (SigLIP's task loss and its relational distillation), each against an independent
computation: open_clip's ``SigLipLoss`` (value and gradients, float64) and a pair-by-pair loop in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipkd.losses.functional import siglip_loss, sigmoid_crd_loss


def _pairs(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    return img, txt


@pytest.mark.parametrize("n,scale,bias", [(6, 10.0, -10.0), (9, 2.3, 0.7), (1, 5.0, -3.0)])
def test_siglip_loss_is_open_clips(n, scale, bias):
    """Value and gradients (images, texts, scale, bias) equal open_clip's SigLipLoss at world size 1 to 1e-10."""
    from open_clip.loss import SigLipLoss

    img, txt = _pairs(n, 16, n)
    s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    ours = siglip_loss(img, txt, s, b)
    g_ours = torch.autograd.grad(ours, (img, txt, s, b))
    ref = SigLipLoss()(img, txt, s, b)
    g_ref = torch.autograd.grad(ref, (img, txt, s, b))
    assert ours.dtype == torch.float64
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-10)
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_sigmoid_crd_is_the_pairwise_binary_cross_entropy():
    """A loop over the N x N pairs in Python floats: -1/N sum p log q + (1 - p) log(1 - q), q and p the student's
    and the teacher's match probabilities; the teacher gets no gradient."""
    s_img, s_txt = _pairs(5, 8, 1)
    t_img, t_txt = _pairs(5, 12, 2)
    got = sigmoid_crd_loss(s_img, s_txt, 4.0, -2.0, t_img, t_txt, 9.0, -5.0)
    want = 0.0
    s_img_, s_txt_, t_img_, t_txt_ = (x.detach() for x in (s_img, s_txt, t_img, t_txt))
    for i in range(5):
        for j in range(5):
            q = _sigmoid(4.0 * float(s_img_[i] @ s_txt_[j]) - 2.0)
            p = _sigmoid(9.0 * float(t_img_[i] @ t_txt_[j]) - 5.0)
            want -= p * math.log(q) + (1 - p) * math.log(1 - q)
    assert float(got.detach()) == pytest.approx(want / 5, rel=1e-12)
    got.backward()
    assert t_img.grad is None and t_txt.grad is None and s_img.grad is not None


def test_sigmoid_crd_gradient_and_minimum():
    """d L / d S_ij = (sigmoid(S_ij) - p_ij) / N (autograd through the logits); a student equal to its teacher
    (same embeddings, scale and bias) is at the minimum: zero gradient, the loss the teacher's own entropy."""
    s_img, s_txt = _pairs(4, 8, 3)
    t_img, t_txt = _pairs(4, 8, 4)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    loss = sigmoid_crd_loss(s_img, s_txt, scale, bias, t_img, t_txt, 7.0, -3.0)
    (g_bias,) = torch.autograd.grad(loss, (bias,))
    with torch.no_grad():
        q = torch.sigmoid(3.0 * s_img @ s_txt.T - 1.0)
        p = torch.sigmoid(7.0 * t_img @ t_txt.T - 3.0)
    assert float(g_bias) == pytest.approx(float((q - p).sum() / 4), rel=1e-10)  # d S_ij / d b = 1
    same = sigmoid_crd_loss(t_img, t_txt, 7.0, -3.0, t_img.detach(), t_txt.detach(), 7.0, -3.0)
    grads = torch.autograd.grad(same, (t_img, t_txt))
    assert all(float(g.abs().max()) < 1e-12 for g in grads)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum() / 4
    assert float(same.detach()) == pytest.approx(float(entropy), rel=1e-10)


def test_low_precision_inputs_are_computed_in_float32():
    """bfloat16 embeddings inside autocast: computed in float32 (the file's convention), close to float64."""
    img, txt = _pairs(8, 16, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = siglip_loss(img.detach().bfloat16(), txt.detach().bfloat16(), 10.0, -10.0)
    assert low.dtype == torch.float32
    assert float(low) == pytest.approx(float(siglip_loss(img.detach(), txt.detach(), 10.0, -10.0)), rel=2e-2)
