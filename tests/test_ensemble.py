"""Teacher ensembles: every term against an independent float64 hand computation, the one-teacher case against
the single-teacher formulas (exactly), and the student's per-teacher heads."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipkd.losses import DistillLoss, TERMS
from clipkd.losses import catalog
from clipkd.losses import ensemble as LE
from clipkd.losses import functional as LF
from clipkd.losses.ensemble import Ensemble
from clipkd.embeddings import join_teachers
from clipkd.models.encoders import INIT_LOGIT_SCALE, ClipEncoder
from clipkd.embeddings import Embeddings
from clipkd.models.student import DistillStudent
from clipkd.embeddings import StudentOutput

N = 7
DIMS = (6, 10)
W = (0.3, 0.7)
T_SCALES = (20.0, 50.0)
ALL_NEEDS = {"teacher", "projection", "icl_scale", "afd"}
ALL_WEIGHTS = {"task": 1.0, "crd": 1.0, "fd": 3.0, "icl": 1.0, "gd": 2.0, "afd": 1.0}
F64 = torch.float64


def unit(n, d, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1).to(dtype)


def cat_units(dims, seed, dtype=F64):
    """Per-block L2-normalised ``[N, sum dims]``, the ensemble layout."""
    return torch.cat([unit(N, d, seed * 100 + k, dtype) for k, d in enumerate(dims)], dim=1)


# ---------------------------------------------------------------- independent hand formulas (plain torch ops)

def hand_softmax(x):
    e = (x - x.max(dim=1, keepdim=True).values).exp()
    return e / e.sum(dim=1, keepdim=True)


def hand_ce(logits):
    """Mean over rows of log(sum_j exp(l_ij)) - l_ii."""
    m = logits.max(dim=1, keepdim=True).values
    lse = (m + (logits - m).exp().sum(dim=1, keepdim=True).log()).squeeze(1)
    return (lse - logits.diagonal()).mean()


def hand_kl(p, q):
    return (p * (p.log() - q.log())).sum(dim=1).mean()


def blocks(x, dims=DIMS):
    out, start = [], 0
    for d in dims:
        out.append(x[:, start:start + d])
        start += d
    return out


def hand_crd(si, st, ss, ti, tt, t_scales, w=W, dims=DIMS):
    q_i2t, q_t2i = hand_softmax(ss * si @ st.T), hand_softmax(ss * st @ si.T)
    p_i2t = torch.zeros(N, N, dtype=F64)
    p_t2i = torch.zeros(N, N, dtype=F64)
    for k, (a, b) in enumerate(zip(blocks(ti, dims), blocks(tt, dims))):
        p_i2t = p_i2t + w[k] * hand_softmax(t_scales[k] * a @ b.T)
        p_t2i = p_t2i + w[k] * hand_softmax(t_scales[k] * b @ a.T)
    return 0.5 * (hand_kl(p_i2t, q_i2t) + hand_kl(p_t2i, q_t2i))


def hand_fd(pi, pt, ti, tt, w=W, dims=DIMS):
    total = 0.0
    for k in range(len(dims)):
        total = total + w[k] * (((blocks(pi, dims)[k] - blocks(ti, dims)[k]) ** 2).mean()
                                + ((blocks(pt, dims)[k] - blocks(tt, dims)[k]) ** 2).mean())
    return total


def hand_icl(pi, pt, ti, tt, c, w=W, dims=DIMS):
    total = 0.0
    for k in range(len(dims)):
        a, b = blocks(pi, dims)[k], blocks(pt, dims)[k]
        u, v = blocks(ti, dims)[k], blocks(tt, dims)[k]
        total = total + w[k] * 0.5 * (hand_ce(c[k] * a @ v.T) + hand_ce(c[k] * b @ u.T))
    return total


def hand_clip(a, b, s):
    return 0.5 * (hand_ce(s * a @ b.T) + hand_ce(s * b @ a.T))


def hand_afd(fi, ft, c, w=W, dims=DIMS):
    return sum(w[k] * hand_clip(blocks(fi, dims)[k], blocks(ft, dims)[k], c[k]) for k in range(len(dims)))


def autograd_contrastive_grads(v, t, s, create):
    """dL_i2t/dV, dL_i2t/dT, dL_t2i/dT, dL_t2i/dV by autograd (no closed form)."""
    i2t, t2i = hand_ce(s * v @ t.T), hand_ce(s * t @ v.T)
    dv1, dt1 = torch.autograd.grad(i2t, (v, t), create_graph=create, retain_graph=True)
    dt2, dv2 = torch.autograd.grad(t2i, (t, v), create_graph=create)
    return dv1, dt1, dt2, dv2


def hand_gd(pi, pt, ss, ti, tt, t_scales, w=W, dims=DIMS):
    total = 0.0
    for k in range(len(dims)):
        a, b = blocks(pi, dims)[k], blocks(pt, dims)[k]
        u = blocks(ti, dims)[k].detach().clone().requires_grad_(True)
        v = blocks(tt, dims)[k].detach().clone().requires_grad_(True)
        if not a.requires_grad:  # value-only calls: autograd needs a graph for the student too
            a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        g_s = autograd_contrastive_grads(a, b, ss, create=True)
        g_t = autograd_contrastive_grads(u, v, torch.tensor(t_scales[k], dtype=F64), create=False)
        total = total + w[k] * sum(((x - y.detach()) ** 2).mean() for x, y in zip(g_s, g_t))
    return total


# ---------------------------------------------------------------- fixtures of embeddings

def two_teacher_inputs(grad=False):
    """Student (own size 8, projected/fused in the ensemble layout) and two teachers, float64."""
    s = dict(si=unit(N, 8, 1), st=unit(N, 8, 2), pi=cat_units(DIMS, 3), pt=cat_units(DIMS, 4),
             fi=cat_units(DIMS, 5), ft=cat_units(DIMS, 6), ss=torch.tensor(14.0, dtype=F64),
             icl=torch.tensor([9.0, 30.0], dtype=F64), afd=torch.tensor([12.0, 5.0], dtype=F64))
    if grad:
        s = {k: v.requires_grad_(True) for k, v in s.items()}
    t = Embeddings(cat_units(DIMS, 7), cat_units(DIMS, 8), torch.tensor(T_SCALES, dtype=F64))
    return s, t


ENS = Ensemble.create(DIMS, W)


def ensemble_term(name, ens, s, t):
    return {
        "crd": lambda: LE.crd_loss(ens, s["si"], s["st"], s["ss"], t.img, t.txt, t.scale),
        "fd": lambda: LE.fd_loss(ens, s["pi"], s["pt"], t.img, t.txt),
        "icl": lambda: LE.icl_loss(ens, s["pi"], s["pt"], t.img, t.txt, s["icl"]),
        "gd": lambda: LE.gd_loss(ens, s["pi"], s["pt"], s["ss"], t.img, t.txt, t.scale),
        "afd": lambda: LE.afd_loss(ens, s["fi"], s["ft"], s["afd"]),
    }[name]()


def hand_term(name, s, t):
    return {
        "task": lambda: hand_clip(s["si"], s["st"], s["ss"]),
        "crd": lambda: hand_crd(s["si"], s["st"], s["ss"], t.img, t.txt, T_SCALES),
        "fd": lambda: hand_fd(s["pi"], s["pt"], t.img, t.txt),
        "icl": lambda: hand_icl(s["pi"], s["pt"], t.img, t.txt, s["icl"]),
        "gd": lambda: hand_gd(s["pi"], s["pt"], s["ss"], t.img, t.txt, T_SCALES),
        "afd": lambda: hand_afd(s["fi"], s["ft"], s["afd"]),
    }[name]()


TEACHER_TERMS = ["crd", "fd", "icl", "gd", "afd"]


@pytest.mark.parametrize("name", TEACHER_TERMS)
def test_two_teachers_match_hand_computation(name):
    s, t = two_teacher_inputs()
    got = ensemble_term(name, ENS, s, t)
    expected = hand_term(name, s, t)
    assert got.dtype == F64
    assert got.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-16)
    assert got.item() > 0


def test_crd_target_is_the_mixture_not_the_mean_of_kls():
    """Mixing distributions differs from averaging the per-teacher CRD losses (KL is convex in p)."""
    s, t = two_teacher_inputs()
    mixture = ensemble_term("crd", ENS, s, t).item()
    per = [LF.crd_loss(s["si"], s["st"], s["ss"], a, b, c)
           for a, b, c in zip(blocks(t.img), blocks(t.txt), T_SCALES)]
    assert mixture < sum(w * v.item() for w, v in zip(W, per)) - 1e-6


@pytest.mark.parametrize("name", ["fd", "icl", "gd", "afd"])
def test_weighted_terms_are_weighted_sums_of_single_teacher_terms(name):
    s, t = two_teacher_inputs()
    singles = []
    for k, d in enumerate(DIMS):
        sk = dict(s, pi=blocks(s["pi"])[k], pt=blocks(s["pt"])[k], fi=blocks(s["fi"])[k], ft=blocks(s["ft"])[k],
                  icl=s["icl"][k], afd=s["afd"][k])
        tk = Embeddings(blocks(t.img)[k], blocks(t.txt)[k], t.scale[k])
        singles.append(ensemble_term(name, Ensemble.create([d]), sk, tk))
    expected = W[0] * singles[0] + W[1] * singles[1]
    assert ensemble_term(name, ENS, s, t).item() == pytest.approx(expected.item(), rel=1e-13)


def student_output(s):
    return StudentOutput(img=s["si"], txt=s["st"], scale=s["ss"], img_proj=s["pi"], txt_proj=s["pt"],
                         icl_scale=s["icl"], afd_img=s["fi"], afd_txt=s["ft"], afd_scale=s["afd"])


def test_ensemble_loss_value_and_student_gradients_equal_autograd_of_hand_formula():
    s, t = two_teacher_inputs(grad=True)
    out = DistillLoss(ALL_WEIGHTS, DIMS, W)(student_output(s), t)
    expected = sum(w * hand_term(name, s, t) for name, w in ALL_WEIGHTS.items())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-10)
    for name in ALL_WEIGHTS:
        assert out[name].item() == pytest.approx(hand_term(name, s, t).item(), rel=1e-10), name
    leaves = list(s.values())
    got = torch.autograd.grad(out["loss"], leaves)
    ref = torch.autograd.grad(expected, leaves)
    for key, a, b in zip(s, got, ref):
        assert a.abs().sum() > 0, key
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12, msg=key)


def test_no_gradient_reaches_the_teachers():
    s, _ = two_teacher_inputs(grad=True)
    t = Embeddings(cat_units(DIMS, 7).requires_grad_(True), cat_units(DIMS, 8).requires_grad_(True),
                   torch.tensor(T_SCALES, dtype=F64, requires_grad=True))
    DistillLoss(ALL_WEIGHTS, DIMS, W)(student_output(s), t)["loss"].backward()
    assert t.img.grad is None and t.txt.grad is None and t.scale.grad is None


# ---------------------------------------------------------------- one teacher = the single-teacher formulas

D1 = 9


def one_teacher_inputs(dtype):
    s = dict(si=unit(N, 5, 1, dtype), st=unit(N, 5, 2, dtype), pi=unit(N, D1, 3, dtype), pt=unit(N, D1, 4, dtype),
             fi=unit(N, D1, 5, dtype), ft=unit(N, D1, 6, dtype), ss=torch.tensor(14.0, dtype=dtype),
             icl=torch.tensor(9.0, dtype=dtype), afd=torch.tensor(12.0, dtype=dtype))
    return {k: v.requires_grad_(True) for k, v in s.items()}, (unit(N, D1, 7, dtype), unit(N, D1, 8, dtype))


def single_term(name, s, ti, tt, t_scale):
    return {
        "crd": lambda: LF.crd_loss(s["si"], s["st"], s["ss"], ti, tt, t_scale),
        "fd": lambda: LF.fd_loss(s["pi"], s["pt"], ti, tt),
        "icl": lambda: LF.icl_loss(s["pi"], s["pt"], ti, tt, s["icl"]),
        "gd": lambda: LF.gd_loss(s["pi"], s["pt"], s["ss"], ti, tt, t_scale),
        "afd": lambda: LF.afd_loss(s["fi"], s["ft"], s["afd"]),
    }[name]()


def _value_and_grads(fn, leaves):
    v = fn()
    return v.detach(), torch.autograd.grad(v, leaves, allow_unused=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
@pytest.mark.parametrize("name", TEACHER_TERMS)
def test_one_teacher_ensemble_is_exactly_the_single_teacher(name, dtype):
    s, (ti, tt) = one_teacher_inputs(dtype)
    leaves = list(s.values())
    expected, g_exp = _value_and_grads(lambda: single_term(name, s, ti, tt, torch.tensor(50.0)), leaves)
    for ens in (LE.SINGLE, Ensemble.create([D1], [1.0])):
        for t_scale in (torch.tensor(50.0), torch.tensor([50.0])):
            t = Embeddings(ti, tt, t_scale)
            got, g_got = _value_and_grads(lambda: ensemble_term(name, ens, s, t), leaves)
            assert got.dtype == expected.dtype and torch.equal(got, expected), (name, ens, t_scale.shape)
            for key, a, b in zip(s, g_got, g_exp):
                assert (a is None and b is None) or torch.equal(a, b), (name, key)


def test_one_teacher_distill_loss_is_exactly_the_single_teacher_loss():
    s, (ti, tt) = one_teacher_inputs(torch.float32)
    out = student_output(s)
    leaves = list(s.values())
    plain = DistillLoss(ALL_WEIGHTS)(out, Embeddings(ti, tt, torch.tensor(50.0)))
    g_plain = torch.autograd.grad(plain["loss"], leaves)
    for t_scale in (torch.tensor(50.0), torch.tensor([50.0])):
        for dims, weights in (([D1], [1.0]), ([D1], None), (None, [1.0])):
            got = DistillLoss(ALL_WEIGHTS, dims, weights)(out, Embeddings(ti, tt, t_scale))
            for name in plain:
                assert torch.equal(got[name], plain[name]), (name, dims, weights)
            for a, b in zip(torch.autograd.grad(got["loss"], leaves), g_plain):
                assert torch.equal(a, b)


# ---------------------------------------------------------------- precision conventions

@pytest.mark.parametrize("name", TEACHER_TERMS)
def test_ensemble_terms_under_bf16_autocast_equal_float32(name):
    s, t = two_teacher_inputs()
    s = {k: v.float() for k, v in s.items()}
    t = Embeddings(t.img.float(), t.txt.float(), t.scale.float())
    expected = ensemble_term(name, ENS, s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ensemble_term(name, ENS, s, t)
    assert expected.dtype == torch.float32 and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0.0)
    low = ensemble_term(name, ENS, {k: v.bfloat16() for k, v in s.items()},
                        Embeddings(t.img.bfloat16(), t.txt.bfloat16(), t.scale.bfloat16()))
    assert low.dtype == torch.float32 and torch.isfinite(low)


# ---------------------------------------------------------------- the Ensemble object, the layout, the catalog

@pytest.mark.parametrize("dims, weights, message", [
    ((6, 10), (0.5, 0.6), "sum to 1"),
    ((6, 10), (1.0, 0.0), "> 0"),
    ((6, 10), (1.5, -0.5), "> 0"),
    ((6, 10), (1.0, float("nan")), "> 0"),
    ((6, 10), (1.0,), "2 teacher dims but 1"),
    ((6, 0), (0.5, 0.5), "positive integers"),
    ((6, 2.5), (0.5, 0.5), "positive integers"),
    (None, (0.5, 0.5), "needs their embedding sizes"),
    ((), None, "at least one teacher"),
])
def test_ensemble_validation(dims, weights, message):
    with pytest.raises(ValueError, match=message):
        Ensemble.create(dims, weights)
    with pytest.raises(ValueError, match=message):
        DistillLoss({"fd": 1.0}, dims, weights)


def test_ensemble_defaults_and_tolerance():
    assert Ensemble.create((4, 4, 4)).weights == (1 / 3, 1 / 3, 1 / 3)
    assert Ensemble.create(None, None) == LE.SINGLE and LE.SINGLE.size == 1
    assert Ensemble.create((6, 10), (0.3, 0.7 + 5e-7)).size == 2  # within 1e-6


def test_split_and_scales_reject_wrong_shapes():
    with pytest.raises(ValueError, match="16 = 6 \\+ 10, got 15"):
        ENS.split(torch.zeros(N, 15))
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        ENS.scales(torch.tensor(3.0))
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        ENS.scales(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="size 9, got 8"):
        Ensemble.create([9]).split(torch.zeros(N, 8))
    with pytest.raises(ValueError, match="shape \\[1\\]"):
        LE.SINGLE.scales(torch.tensor([1.0, 2.0]))


def test_join_teachers_layout():
    a = Embeddings(unit(N, 6, 1), unit(N, 6, 2), torch.tensor(20.0, dtype=F64))
    b = Embeddings(unit(N, 10, 3), unit(N, 10, 4), torch.tensor([50.0], dtype=F64))
    joined = join_teachers([a, b])
    assert joined.img.shape == (N, 16) and joined.scale.shape == (2,)
    assert torch.equal(joined.img[:, :6], a.img) and torch.equal(joined.txt[:, 6:], b.txt)
    assert joined.scale.tolist() == [20.0, 50.0]
    assert join_teachers([a]) is a


def test_every_builtin_term_has_an_ensemble_rule_and_catalog_stays_torch_free():
    assert {"task", "crd", "fd", "icl", "gd", "afd"} <= set(catalog.ENSEMBLE_RULES) <= set(catalog.EQUATIONS)
    assert all(isinstance(v, str) and v for v in catalog.ENSEMBLE_RULES.values())
    assert "torch" not in catalog.__dict__


def test_a_term_without_ensemble_rule_is_refused_for_several_teachers(monkeypatch):
    monkeypatch.setattr(catalog, "ENSEMBLE_RULES", {k: v for k, v in catalog.ENSEMBLE_RULES.items() if k != "gd"})
    from clipkd.losses import combine

    monkeypatch.setattr(combine, "ENSEMBLE_RULES", catalog.ENSEMBLE_RULES)
    with pytest.raises(ValueError, match="'gd'.*cannot combine several teachers"):
        DistillLoss({"task": 1.0, "gd": 1.0}, DIMS, W)
    DistillLoss({"task": 1.0, "gd": 1.0}, [DIMS[0]], [1.0])  # one teacher: no rule needed


def test_distill_loss_sets_the_ensemble_on_every_term():
    every = {**ALL_WEIGHTS, "siglip": 1.0, "sigmoid_crd": 1.0}  # the sigmoid terms: tests/test_sigmoid_losses.py
    loss = DistillLoss(every, DIMS, W)
    assert loss.teacher_dims == DIMS and all(t.ensemble is loss.ensemble for t in loss.terms.values())
    assert DistillLoss({"fd": 1.0}).teacher_dims is None
    assert set(every) == set(TERMS)


# ---------------------------------------------------------------- the student's per-teacher heads

class ToyEncoder(ClipEncoder):
    """A linear CLIP on flat inputs: images ``[N, 3, 2, 2]``, "text" ``[N, 12]`` floats."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed_dim, self.image_size = dim, (2, 2)
        self.image_tower, self.text_tower = nn.Linear(12, dim), nn.Linear(12, dim)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))

    def encode_image(self, images, normalize=True):
        x = self.image_tower(images.flatten(1))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text, normalize=True):
        x = self.text_tower(text)
        return F.normalize(x, dim=-1) if normalize else x


def make_student(dims, needs, seed=0, d_s=6):
    torch.manual_seed(seed)
    return DistillStudent(ToyEncoder(d_s), dims, needs)


def toy_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, 2, 2, generator=g), torch.randn(N, 12, generator=g)


def toy_teacher(dims=DIMS, seed=0):
    return join_teachers([Embeddings(unit(N, d, seed + 10 * k, torch.float32), unit(N, d, seed + 10 * k + 1,
                                                                                     torch.float32),
                                     torch.tensor(T_SCALES[k])) for k, d in enumerate(dims)])


SINGLE_NAMES = ["proj_img", "proj_txt", "icl_logit_scale", "afd_fuse_img", "afd_fuse_txt", "afd_logit_scale"]
ENSEMBLE_NAMES = ["ensemble_" + n for n in SINGLE_NAMES]


def test_two_teacher_student_heads_and_shapes():
    s = make_student(DIMS, ALL_NEEDS)  # d_s = 6 = D_0: identity projection for teacher 0
    assert s.teacher_dims == DIMS and s.teacher_dim == 6
    assert all(getattr(s, n) is None for n in SINGLE_NAMES)
    assert isinstance(s.ensemble_proj_img[0], nn.Identity) and isinstance(s.ensemble_proj_txt[0], nn.Identity)
    assert s.ensemble_proj_img[1].weight.shape == (10, 6) and s.ensemble_proj_txt[1].weight.shape == (10, 6)
    assert [f.weight.shape for f in s.ensemble_afd_fuse_img] == [(6, 12), (10, 20)]
    assert [f.weight.shape for f in s.ensemble_afd_fuse_txt] == [(6, 12), (10, 20)]
    assert s.ensemble_icl_logit_scale.shape == (2,) and s.ensemble_afd_logit_scale.shape == (2,)
    keys = [k for k in s.state_dict() if not k.startswith("encoder.")]
    assert sorted(keys) == sorted([
        "ensemble_icl_logit_scale", "ensemble_afd_logit_scale",
        "ensemble_proj_img.1.weight", "ensemble_proj_img.1.bias", "ensemble_proj_txt.1.weight",
        "ensemble_proj_txt.1.bias", *[f"ensemble_afd_fuse_{side}.{k}.{p}" for side in ("img", "txt")
                                      for k in (0, 1) for p in ("weight", "bias")]])

    images, text = toy_batch()
    t = toy_teacher()
    out = s(images, text, teacher=t)
    assert out.img.shape == (N, 6)
    assert out.img_proj.shape == (N, 16) and out.txt_proj.shape == (N, 16)
    assert torch.equal(out.img_proj[:, :6], out.img) and torch.equal(out.txt_proj[:, :6], out.txt)
    for x in (out.img_proj, out.txt_proj, out.afd_img, out.afd_txt):
        for block in blocks(x):
            torch.testing.assert_close(block.norm(dim=1), torch.ones(N))
    torch.testing.assert_close(out.img_proj[:, 6:], F.normalize(s.ensemble_proj_img[1](out.img), dim=1))
    fused_1 = F.normalize(s.ensemble_afd_fuse_txt[1](torch.cat([out.txt_proj[:, 6:], t.txt[:, 6:]], 1)), dim=1)
    torch.testing.assert_close(out.afd_txt[:, 6:], fused_1)
    assert out.afd_img.shape == (N, 16)
    for scale in (out.icl_scale, out.afd_scale):
        assert scale.shape == (2,)
        torch.testing.assert_close(scale, torch.full((2,), 1 / 0.07))
    with pytest.raises(ValueError, match="AFD needs the teacher"):
        s(images, text)
    with pytest.raises(ValueError, match="do not match the teachers' sizes"):
        s(images, text, teacher=toy_teacher((6, 9)))


@pytest.mark.parametrize("needs, present", [
    (set(), []),
    ({"teacher"}, []),
    ({"teacher", "projection"}, ["ensemble_proj_img", "ensemble_proj_txt"]),
    ({"teacher", "projection", "icl_scale"}, ["ensemble_proj_img", "ensemble_proj_txt", "ensemble_icl_logit_scale"]),
    ({"teacher", "afd"}, ["ensemble_proj_img", "ensemble_proj_txt", "ensemble_afd_fuse_img",
                          "ensemble_afd_fuse_txt", "ensemble_afd_logit_scale"]),
])
def test_two_teacher_heads_created_only_when_needed(needs, present):
    s = make_student(DIMS, needs)
    for name in SINGLE_NAMES:
        assert getattr(s, name) is None
    for name in ENSEMBLE_NAMES:
        assert (getattr(s, name) is not None) == (name in present), name
    out = s(*toy_batch(), teacher=toy_teacher())
    has_proj = bool(set(needs) & {"projection", "afd"})
    assert (out.img_proj is not None) == has_proj and (out.icl_scale is not None) == ("icl_scale" in needs)


def test_no_projection_heads_when_every_teacher_has_the_student_size():
    s = make_student((6, 6), {"teacher", "projection"})
    assert s.ensemble_proj_img is None and s.ensemble_proj_txt is None
    out = s(*toy_batch())
    assert torch.equal(out.img_proj, torch.cat([out.img, out.img], dim=1))


@pytest.mark.parametrize("needs", [set(), {"teacher", "projection"}, ALL_NEEDS])
@pytest.mark.parametrize("d_t", [6, 10])
def test_one_teacher_sequence_is_the_int_student(needs, d_t):
    """Same parameters in the same creation order (seeded init), same state-dict keys, same outputs."""
    by_int, by_seq = make_student(d_t, needs, seed=3), make_student([d_t], needs, seed=3)
    assert by_seq.teacher_dims == by_int.teacher_dims == (d_t,) and by_seq.teacher_dim == by_int.teacher_dim == d_t
    a, b = by_int.state_dict(), by_seq.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(getattr(by_int, n) is None for n in ENSEMBLE_NAMES)
    t = Embeddings(unit(N, d_t, 1, torch.float32), unit(N, d_t, 2, torch.float32), torch.tensor(50.0))
    oa, ob = by_int(*toy_batch(), teacher=t), by_seq(*toy_batch(), teacher=t)
    for field in ("img", "txt", "scale", "img_proj", "txt_proj", "icl_scale", "afd_img", "afd_txt", "afd_scale"):
        x, y = getattr(oa, field), getattr(ob, field)
        assert (x is None and y is None) or (x.shape == y.shape and torch.equal(x, y)), field
    if "icl_scale" in needs:
        assert oa.icl_scale.shape == () and by_int.icl_logit_scale.shape == ()


def test_single_teacher_state_dict_keys_are_unchanged():
    keys = [k for k in make_student(10, ALL_NEEDS).state_dict() if not k.startswith("encoder.")]
    assert keys == ["icl_logit_scale", "afd_logit_scale", "proj_img.weight", "proj_img.bias", "proj_txt.weight",
                    "proj_txt.bias", "afd_fuse_img.weight", "afd_fuse_img.bias", "afd_fuse_txt.weight",
                    "afd_fuse_txt.bias"]


def test_teacher_dims_is_read_only_and_validated():
    s = make_student(DIMS, set())
    with pytest.raises(AttributeError):
        s.teacher_dims = (1,)
    for bad in ([], [6, 0], -1):
        with pytest.raises(ValueError, match="teacher_dim"):
            make_student(bad, set())


def test_two_teacher_training_step_trains_every_head():
    s = make_student(DIMS, ALL_NEEDS, d_s=8)  # no identity: both teachers get projection heads
    loss = DistillLoss(ALL_WEIGHTS, DIMS, W)
    t = toy_teacher()
    out = loss(s(*toy_batch(), teacher=t), t)
    assert set(out) == {"loss", *ALL_WEIGHTS} and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in s.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if p.ndim == 1 and name.endswith("logit_scale"):
            assert (p.grad != 0).all(), name  # each teacher's scale gets its own gradient
        else:
            assert p.grad.abs().sum() > 0, name


def test_engine_clamps_the_ensemble_logit_scales():
    from clipkd.engine.optim import clamp_logit_scales

    s = make_student(DIMS, ALL_NEEDS)
    with torch.no_grad():
        s.ensemble_icl_logit_scale.copy_(torch.tensor([-1.0, 9.0]))
    clamp_logit_scales(s)
    assert s.ensemble_icl_logit_scale.tolist() == [0.0, pytest.approx(math.log(100.0))]
