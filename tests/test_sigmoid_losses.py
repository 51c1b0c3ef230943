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


# --- a softmax teacher's match probabilities, and ensembles mixing both kinds -----------------------------------

def _loop_softmax_probs(t_img, t_txt, scale):
    """p_ij = 1/2 [exp(T_ij) / sum_k exp(T_ik) + exp(T_ij) / sum_k exp(T_kj)], T = scale * <t_img_i, t_txt_j>."""
    n = len(t_img)
    logits = [[scale * float(t_img[i] @ t_txt[j]) for j in range(n)] for i in range(n)]
    rows = [sum(math.exp(v) for v in logits[i]) for i in range(n)]
    cols = [sum(math.exp(logits[k][j]) for k in range(n)) for j in range(n)]
    return [[0.5 * (math.exp(logits[i][j]) / rows[i] + math.exp(logits[i][j]) / cols[j]) for j in range(n)]
            for i in range(n)]


def _loop_bce(s_img, s_txt, scale, bias, p):
    n = len(s_img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            q = _sigmoid(scale * float(s_img[i] @ s_txt[j]) + bias)
            total -= p[i][j] * math.log(q) + (1 - p[i][j]) * math.log(1 - q)
    return total / n


def test_a_softmax_teacher_gives_the_mean_of_its_two_directions():
    """No bias (None, or NaN as in an ensemble's bias vector): the pair's probability is the mean of the teacher's
    image->text and text->image softmax probabilities, by a loop in Python floats; a bias: the sigmoid."""
    from clipkd.losses.functional import sigmoid_teacher_probs

    t_img, t_txt = (x.detach() for x in _pairs(5, 8, 6))
    want = torch.tensor(_loop_softmax_probs(t_img, t_txt, 6.0), dtype=torch.float64)
    torch.testing.assert_close(sigmoid_teacher_probs(t_img, t_txt, 6.0, None), want, rtol=1e-12, atol=1e-14)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    torch.testing.assert_close(sigmoid_teacher_probs(t_img, t_txt, 6.0, nan), want, rtol=1e-12, atol=1e-14)
    sig = sigmoid_teacher_probs(t_img, t_txt, 6.0, torch.tensor(-2.0, dtype=torch.float64))
    assert float(sig[1, 3]) == pytest.approx(_sigmoid(6.0 * float(t_img[1] @ t_txt[3]) - 2.0), rel=1e-12)
    s_img, s_txt = _pairs(5, 8, 7)
    got = sigmoid_crd_loss(s_img, s_txt, 4.0, -1.0, t_img, t_txt, 6.0, None)
    assert float(got.detach()) == pytest.approx(_loop_bce(s_img.detach(), s_txt.detach(), 4.0, -1.0,
                                                          want.tolist()), rel=1e-12)


def _mixed_teachers(n=5):
    """A softmax teacher (size 8, scale 6, no bias) and a sigmoid teacher (size 12, scale 9, bias -4), joined."""
    from clipkd.embeddings import Embeddings, join_teachers

    soft = Embeddings(*(x.detach() for x in _pairs(n, 8, 8)), torch.tensor(6.0, dtype=torch.float64))
    sig = Embeddings(*(x.detach() for x in _pairs(n, 12, 9)), torch.tensor(9.0, dtype=torch.float64),
                     torch.tensor(-4.0, dtype=torch.float64))
    return soft, sig, join_teachers([soft, sig])


def test_an_ensemble_mixes_a_softmax_and_a_sigmoid_teachers_probabilities():
    """Sigmoid CRD of an ensemble: BCE to p = w_0 p_softmax + w_1 p_sigmoid (loop in Python floats); the joined
    bias holds NaN for the softmax teacher; a one-teacher ensemble is the single-teacher formula."""
    from clipkd.losses import ensemble as LE

    soft, sig, joined = _mixed_teachers()
    assert math.isnan(float(joined.bias[0])) and float(joined.bias[1]) == -4.0
    p0 = _loop_softmax_probs(soft.img, soft.txt, 6.0)
    p1 = [[_sigmoid(9.0 * float(sig.img[i] @ sig.txt[j]) - 4.0) for j in range(5)] for i in range(5)]
    p = [[0.3 * p0[i][j] + 0.7 * p1[i][j] for j in range(5)] for i in range(5)]
    s_img, s_txt = _pairs(5, 8, 10)
    ens = LE.Ensemble.create([8, 12], [0.3, 0.7])
    got = LE.sigmoid_crd_loss(ens, s_img, s_txt, 3.0, -2.0, joined.img, joined.txt, joined.scale, joined.bias)
    assert float(got.detach()) == pytest.approx(_loop_bce(s_img.detach(), s_txt.detach(), 3.0, -2.0, p), rel=1e-12)
    one = LE.sigmoid_crd_loss(LE.SINGLE, s_img, s_txt, 3.0, -2.0, sig.img, sig.txt, sig.scale, sig.bias)
    alone = sigmoid_crd_loss(s_img, s_txt, 3.0, -2.0, sig.img, sig.txt, 9.0, sig.bias)
    assert float(one.detach()) == pytest.approx(float(alone.detach()), rel=1e-12)


def test_each_teachers_own_sigmoid_crd_is_logged_with_its_own_kind():
    """``sigmoid_crd/t<i>``: the single-teacher formula with teacher i alone, the softmax one without a bias."""
    from clipkd.embeddings import StudentOutput
    from clipkd.losses import ensemble as LE
    from clipkd.losses.combine import DistillLoss

    soft, sig, joined = _mixed_teachers()
    s_img, s_txt = (x.detach() for x in _pairs(5, 8, 11))
    student = StudentOutput(s_img, s_txt, torch.tensor(3.0, dtype=torch.float64),
                            torch.tensor(-2.0, dtype=torch.float64))
    loss = DistillLoss({"sigmoid_crd": 1.0}, [8, 12], [0.5, 0.5])
    got = LE.per_teacher_terms(loss.ensemble, loss.terms, student, joined)
    assert float(got["sigmoid_crd/t0"]) == pytest.approx(
        float(sigmoid_crd_loss(s_img, s_txt, 3.0, -2.0, soft.img, soft.txt, 6.0, None)), rel=1e-12)
    assert float(got["sigmoid_crd/t1"]) == pytest.approx(
        float(sigmoid_crd_loss(s_img, s_txt, 3.0, -2.0, sig.img, sig.txt, 9.0, -4.0)), rel=1e-12)


def test_joined_biases_are_none_without_a_sigmoid_teacher():
    from clipkd.embeddings import Embeddings, join_teachers

    a = Embeddings(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor(5.0))
    assert join_teachers([a, a]).bias is None
