"""Student-vs-teacher diagnostics: cosine, linear CKA, similarity KL."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipkd.eval.diagnostics import distillation_diagnostics, linear_cka, mean_cosine, similarity_kl


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def cka_hsic(x, y):
    """Reference CKA via HSIC with the centring matrix H = I - 11^T / n (float64)."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return (hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l))).item()


def kl_brute(s_img, s_txt, s_scale, t_img, t_txt, t_scale):
    """Pure-Python KL(teacher || student) over image -> text softmaxes, averaged over rows."""
    def softmax(row):
        m = max(row)
        e = [math.exp(v - m) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for si, ti in zip(s_img.tolist(), t_img.tolist()):
        q = softmax([s_scale * sum(a * b for a, b in zip(si, st)) for st in s_txt.tolist()])
        p = softmax([t_scale * sum(a * b for a, b in zip(ti, tt)) for tt in t_txt.tolist()])
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return total / s_img.shape[0]


def test_mean_cosine_identical_and_negated():
    a = randn(10, 6)
    assert mean_cosine(a, a) == pytest.approx(1.0, abs=1e-6)
    assert mean_cosine(a, -3 * a) == pytest.approx(-1.0, abs=1e-6)
    assert mean_cosine(a, 2.5 * a) == pytest.approx(1.0, abs=1e-6)  # normalised inside


def test_mean_cosine_matches_formula_and_checks_widths():
    a, b = randn(7, 5, seed=1), randn(7, 5, seed=2)
    assert mean_cosine(a, b) == pytest.approx(F.cosine_similarity(a, b, dim=1).mean().item(), abs=1e-6)
    assert isinstance(mean_cosine(a.bfloat16(), b.bfloat16()), float)
    with pytest.raises(ValueError, match="widths"):
        mean_cosine(a, randn(7, 4))
    with pytest.raises(ValueError, match="rows"):
        mean_cosine(a, randn(6, 5))


def test_cka_invariant_to_rotation_and_isotropic_scale():
    x = randn(200, 16, seed=3)
    q, _ = torch.linalg.qr(randn(16, 16, seed=4, dtype=torch.float64))
    y = 7.5 * (x.double() @ q)
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x + 3.0) == pytest.approx(1.0, abs=1e-9)  # mean shift removed by centring


def test_cka_of_independent_inputs_is_small():
    assert linear_cka(randn(500, 16, seed=5), randn(500, 16, seed=6)) < 0.2


@pytest.mark.parametrize("d2", [16, 9, 40])
def test_cka_matches_hsic_reference(d2):
    x = randn(60, 16, seed=7)
    y = x[:, :1].repeat(1, d2) * 0.5 + randn(60, d2, seed=8)  # partly dependent
    got = linear_cka(x, y)
    assert got == pytest.approx(cka_hsic(x, y), rel=1e-9)
    assert 0.0 < got < 1.0
    assert linear_cka(y, x) == pytest.approx(got, rel=1e-12)


def test_cka_of_constant_input_is_nan():
    assert math.isnan(linear_cka(torch.ones(10, 3), randn(10, 3)))


def _pair(seed, n=6, m=5, d=4):
    return F.normalize(randn(n, d, seed=seed), dim=1), F.normalize(randn(m, d, seed=seed + 100), dim=1)


def test_similarity_kl_zero_for_identical():
    img, txt = _pair(9)
    assert similarity_kl(img, txt, 20.0, img, txt, 20.0) == pytest.approx(0.0, abs=1e-6)


def test_similarity_kl_matches_brute_force():
    s_img, s_txt = _pair(10)
    t_img, t_txt = _pair(11, d=7)  # teacher may be wider
    got = similarity_kl(s_img, s_txt, 10.0, t_img, t_txt, torch.tensor(30.0))
    assert got > 0
    assert got == pytest.approx(kl_brute(s_img, s_txt, 10.0, t_img, t_txt, 30.0), rel=1e-5)
    img, txt = _pair(12)
    assert similarity_kl(img, txt, 5.0, img, txt, 20.0) > 0  # same embeddings, other scale


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_similarity_kl_chunk_invariant(chunk):
    s_img, s_txt = _pair(13, n=9, m=9)
    t_img, t_txt = _pair(14, n=9, m=9, d=6)
    s_img, s_txt, t_img, t_txt = (x.double() for x in (s_img, s_txt, t_img, t_txt))
    want = similarity_kl(s_img, s_txt, 15.0, t_img, t_txt, 25.0, chunk=9)
    assert similarity_kl(s_img, s_txt, 15.0, t_img, t_txt, 25.0, chunk=chunk) == pytest.approx(want, rel=1e-12)


def test_distillation_diagnostics_keys_and_values():
    s_img, s_txt = _pair(15, n=8, m=8, d=4)
    t_img, t_txt = _pair(16, n=8, m=8, d=6)
    proj = torch.nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        s_img_proj, s_txt_proj = proj(s_img), proj(s_txt)
    out = distillation_diagnostics(s_img, s_txt, 20.0, s_img_proj, s_txt_proj, t_img, t_txt, 50.0)
    assert list(out) == ["image_cosine", "text_cosine", "image_cka", "text_cka", "similarity_kl"]
    assert out["image_cosine"] == pytest.approx(mean_cosine(s_img_proj, t_img))
    assert out["text_cka"] == pytest.approx(linear_cka(s_txt, t_txt))
    assert out["similarity_kl"] == pytest.approx(similarity_kl(s_img, s_txt, 20.0, t_img, t_txt, 50.0))
    same = distillation_diagnostics(t_img, t_txt, 50.0, t_img, t_txt, t_img, t_txt, 50.0)
    assert same == pytest.approx({"image_cosine": 1.0, "text_cosine": 1.0, "image_cka": 1.0,
                                  "text_cka": 1.0, "similarity_kl": 0.0}, abs=1e-5)
