"""Each formula against an independent computation (float64 brute force, autograd) and its invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipkd.losses import functional as LF


def emb(n, d, seed, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)
    return x.requires_grad_(grad)


def brute_ce(logits):
    """Mean over rows of -log softmax(row)[i], with plain Python math."""
    rows = logits.tolist()
    total = 0.0
    for i, row in enumerate(rows):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += lse - row[i]
    return total / len(rows)


def brute_kl(t_logits, s_logits):
    total = 0.0
    for t_row, s_row in zip(t_logits.tolist(), s_logits.tolist()):
        tm, sm = max(t_row), max(s_row)
        tz = sum(math.exp(v - tm) for v in t_row)
        sz = sum(math.exp(v - sm) for v in s_row)
        for tv, sv in zip(t_row, s_row):
            p, q = math.exp(tv - tm) / tz, math.exp(sv - sm) / sz
            total += p * (math.log(p) - math.log(q))
    return total / len(t_logits)


N, D = 7, 5


def test_clip_loss_matches_brute_force():
    img, txt = emb(N, D, 0), emb(N, D, 1)
    s = 12.5
    logits = s * img @ txt.T
    expected = 0.5 * (brute_ce(logits) + brute_ce(logits.T))
    assert LF.clip_loss(img, txt, s).item() == pytest.approx(expected, rel=1e-12)


def test_crd_matches_brute_force():
    si, st, ti, tt = emb(N, 6, 0), emb(N, 6, 1), emb(N, 9, 2), emb(N, 9, 3)
    S, T = 10.0 * si @ st.T, 30.0 * ti @ tt.T
    expected = 0.5 * (brute_kl(T, S) + brute_kl(T.T, S.T))
    got = LF.crd_loss(si, st, torch.tensor(10.0, dtype=torch.float64), ti, tt, 30.0)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_icl_matches_brute_force():
    si, st, ti, tt = emb(N, D, 0), emb(N, D, 1), emb(N, D, 2), emb(N, D, 3)
    c = 7.0
    expected = 0.5 * (brute_ce(c * si @ tt.T) + brute_ce(c * st @ ti.T))
    assert LF.icl_loss(si, st, ti, tt, c).item() == pytest.approx(expected, rel=1e-12)


def test_fd_matches_elementwise_mean():
    si, st, ti, tt = emb(N, D, 0), emb(N, D, 1), emb(N, D, 2), emb(N, D, 3)
    a = sum((x - y) ** 2 for rx, ry in zip(si.tolist(), ti.tolist()) for x, y in zip(rx, ry)) / (N * D)
    b = sum((x - y) ** 2 for rx, ry in zip(st.tolist(), tt.tolist()) for x, y in zip(rx, ry)) / (N * D)
    assert LF.fd_loss(si, st, ti, tt).item() == pytest.approx(a + b, rel=1e-12)


def test_afd_is_clip_loss_on_fused():
    a, b = emb(N, D, 0), emb(N, D, 1)
    assert LF.afd_loss(a, b, 3.0).item() == pytest.approx(LF.clip_loss(a, b, 3.0).item(), rel=1e-14)


def test_invariants_student_equals_teacher():
    img, txt = emb(N, D, 0), emb(N, D, 1)
    assert LF.fd_loss(img, txt, img, txt).item() == 0.0
    assert LF.crd_loss(img, txt, 20.0, img, txt, 20.0).item() == pytest.approx(0.0, abs=1e-14)
    assert LF.gd_loss(img, txt, 20.0, img, txt, 20.0).item() == pytest.approx(0.0, abs=1e-20)
    # ICL with identical embeddings on both sides is the task loss
    assert LF.icl_loss(img, txt, img, txt, 9.0).item() == pytest.approx(LF.clip_loss(img, txt, 9.0).item(), rel=1e-14)


def test_crd_positive_when_distributions_differ():
    img, txt = emb(N, D, 0), emb(N, D, 1)
    assert LF.crd_loss(img, txt, 5.0, img, txt, 50.0).item() > 1e-3


def test_contrastive_grads_equal_autograd():
    v, t = emb(N, D, 0, grad=True), emb(N, D, 1, grad=True)
    s = torch.tensor(11.0, dtype=torch.float64)
    logits = s * v @ t.T
    y = torch.arange(N)
    i2t, t2i = F.cross_entropy(logits, y), F.cross_entropy(logits.T, y)
    dv1, dt1 = torch.autograd.grad(i2t, (v, t), retain_graph=True)
    dv2, dt2 = torch.autograd.grad(t2i, (v, t))
    g1, g2, g3, g4 = LF.contrastive_grads(v.detach(), t.detach(), s)
    for closed, auto in [(g1, dv1), (g2, dt1), (g3, dt2), (g4, dv2)]:
        torch.testing.assert_close(closed, auto, rtol=1e-12, atol=1e-14)


def _gd_by_autograd(si, st, ss, ti, tt, ts):
    """GD built from autograd gradients (create_graph) instead of the closed form."""

    def grads(v, t, s, create):
        logits = s * v @ t.T
        y = torch.arange(v.shape[0])
        i2t, t2i = F.cross_entropy(logits, y), F.cross_entropy(logits.T, y)
        dv1, dt1 = torch.autograd.grad(i2t, (v, t), create_graph=create, retain_graph=True)
        dt2, dv2 = torch.autograd.grad(t2i, (t, v), create_graph=create)
        return dv1, dt1, dt2, dv2

    gs = grads(si, st, ss, True)
    gt = grads(ti.detach().requires_grad_(True), tt.detach().requires_grad_(True), ts, False)
    return sum(((a - b.detach()) ** 2).mean() for a, b in zip(gs, gt))


def test_gd_value_and_student_gradients_equal_autograd():
    si, st = emb(N, D, 0, grad=True), emb(N, D, 1, grad=True)
    ti, tt = emb(N, D, 2), emb(N, D, 3)
    ss, ts = torch.tensor(8.0, dtype=torch.float64), torch.tensor(40.0, dtype=torch.float64)
    closed = LF.gd_loss(si, st, ss, ti, tt, ts)
    auto = _gd_by_autograd(si, st, ss, ti, tt, ts)
    assert closed.item() == pytest.approx(auto.item(), rel=1e-10)
    g_closed = torch.autograd.grad(closed, (si, st))
    g_auto = torch.autograd.grad(auto, (si, st))
    for a, b in zip(g_closed, g_auto):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)


def test_gd_student_scale_gets_gradient():
    si, st = emb(N, D, 0, grad=True), emb(N, D, 1, grad=True)
    log_s = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    LF.gd_loss(si, st, log_s.exp(), emb(N, D, 2), emb(N, D, 3), 30.0).backward()
    assert log_s.grad is not None and log_s.grad.abs() > 0


def _call(name, s_img, s_txt, t_img, t_txt, s_scale, t_scale):
    return {
        "crd": lambda: LF.crd_loss(s_img, s_txt, s_scale, t_img, t_txt, t_scale),
        "fd": lambda: LF.fd_loss(s_img, s_txt, t_img, t_txt),
        "icl": lambda: LF.icl_loss(s_img, s_txt, t_img, t_txt, s_scale),
        "gd": lambda: LF.gd_loss(s_img, s_txt, s_scale, t_img, t_txt, t_scale),
    }[name]()


@pytest.mark.parametrize("name", ["crd", "fd", "icl", "gd"])
def test_no_gradient_reaches_teacher(name):
    s_img, s_txt = emb(N, D, 0, grad=True), emb(N, D, 1, grad=True)
    t_img, t_txt = emb(N, D, 2, grad=True), emb(N, D, 3, grad=True)
    t_scale = torch.tensor(20.0, dtype=torch.float64, requires_grad=True)
    s_scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    _call(name, s_img, s_txt, t_img, t_txt, s_scale, t_scale).backward()
    assert t_img.grad is None and t_txt.grad is None and t_scale.grad is None
    assert s_img.grad is not None and s_img.grad.abs().sum() > 0


ALL = ["clip", "crd", "fd", "icl", "gd", "afd"]


def _any(name, a, b, c, d):
    if name == "clip":
        return LF.clip_loss(a, b, 10.0)
    if name == "afd":
        return LF.afd_loss(a, b, torch.tensor(10.0))
    return _call(name, a, b, c, d, torch.tensor(10.0), 30.0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtypes(name, dtype):
    ref = [emb(16, 8, i) for i in range(4)]
    expected = _any(name, *ref).item()
    x = [r.to(dtype).requires_grad_(True) for r in ref]
    got = _any(name, *x)
    assert torch.isfinite(got)
    got.backward()
    assert x[0].grad is not None and x[0].grad.dtype == dtype and torch.isfinite(x[0].grad).all()
    # bfloat16 inputs are rounded to 8 bits of mantissa before the (float32) computation
    rel = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    assert got.item() == pytest.approx(expected, rel=rel, abs=rel * 1e-3)
