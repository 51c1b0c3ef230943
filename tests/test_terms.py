"""Terms, combiner and recipes on real tiny encoders; parametrized over the registries."""

import copy

import pytest
import torch

from clipkd.distill import build_distiller
from clipkd.losses import RECIPES, TERMS, DistillLoss, get_recipe
from clipkd.losses.recipes import GD_WEIGHT, gd_weight_for
from clipkd.losses import functional as LF
from conftest import STUDENT, make_encoder, random_batch

HEADS = {  # which student parameters each term must train (besides the encoder)
    "task": [],
    "crd": [],
    "fd": ["proj_img", "proj_txt"],
    "icl": ["proj_img", "proj_txt", "icl_logit_scale"],
    "gd": ["proj_img", "proj_txt"],
    "afd": ["proj_img", "proj_txt", "afd_fuse_img", "afd_fuse_txt", "afd_logit_scale"],
    "siglip": [],
    "sigmoid_crd": [],
}
SIGMOID_TERMS = {"siglip", "sigmoid_crd"}  # read the student's logit bias: a sigmoid student
SIGLIP = "clipkd-tiny-siglip"


def _student_for(weights, student_encoder):
    """The fixture's softmax student, or a sigmoid one (same sizes) when a term needs its logit bias."""
    return make_encoder(SIGLIP, seed=1) if SIGMOID_TERMS & set(weights) else student_encoder


def test_every_registered_term_is_covered_here():
    assert set(TERMS) == set(HEADS)


def _params(module, prefix):
    return [p for n, p in module.named_parameters() if n == prefix or n.startswith(prefix + ".")]


@pytest.mark.parametrize("name", sorted(TERMS))
def test_term_trains_student_and_its_heads_only(name, student_encoder, teacher_encoder):
    student_encoder = _student_for({name}, student_encoder)
    d = build_distiller(student_encoder, teacher_encoder, {name: 1.0})
    batch = random_batch(student_encoder, teacher_encoder)
    out = d(batch)
    assert set(out) == {"loss", name} and torch.isfinite(out["loss"])
    out["loss"].backward()
    for head in HEADS[name]:
        params = _params(d.student, head)
        assert params, f"{name}: head {head} missing"
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), f"{name}: {head} got no grad"
    for head in {h for hs in HEADS.values() for h in hs} - set(HEADS[name]):
        assert getattr(d.student, head) is None, f"{name}: unneeded head {head} was created"
    enc_grads = [p.grad for p in d.student.encoder.parameters() if p.grad is not None]
    assert enc_grads and any(g.abs().sum() > 0 for g in enc_grads)
    assert all(p.grad is None for p in d.teacher.parameters())
    bias = d.student.encoder.bias()
    assert (bias is not None and bias.grad is not None and float(bias.grad.abs()) > 0) == (name in SIGMOID_TERMS)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_teacher_unchanged_after_optimizer_steps(name, student_encoder, teacher_encoder):
    student_encoder = _student_for({name}, student_encoder)
    d = build_distiller(student_encoder, teacher_encoder, {"task": 1.0, name: 1.0})
    before = copy.deepcopy(d.teacher.state_dict())
    opt = torch.optim.AdamW(d.student.parameters(), lr=1e-2)
    d.teacher.train()
    for step in range(2):
        out = d(random_batch(student_encoder, teacher_encoder, seed=step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert not d.teacher.training
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_combiner_weighted_sum_and_zero_weight_skipped(student_encoder, teacher_encoder):
    loss = DistillLoss({"task": 1.0, "fd": 3.0, "crd": 0.0, "gd": 0})
    assert set(loss.terms) == {"task", "fd"}
    d = build_distiller(student_encoder, teacher_encoder, {"task": 1.0, "fd": 3.0, "crd": 0.0})
    out = d(random_batch(student_encoder, teacher_encoder))
    assert "crd" not in out
    assert out["loss"].item() == pytest.approx(out["task"].item() + 3.0 * out["fd"].item(), rel=1e-6)


def test_baseline_does_not_run_teacher(student_encoder, teacher_encoder, monkeypatch):
    d = build_distiller(student_encoder, teacher_encoder, {"task": 1.0})
    monkeypatch.setattr(d.teacher.encoder, "embed", lambda *a: pytest.fail("teacher ran for the baseline"))
    d(random_batch(student_encoder, teacher_encoder))


@pytest.mark.parametrize(
    "weights, message",
    [({"nope": 1.0}, "unknown loss term"), ({"task": -1.0}, "'task'"), ({"task": float("nan")}, "finite"),
     ({"task": 0.0}, "at least one")],
)
def test_combiner_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        DistillLoss(weights)


def test_unknown_recipe_message():
    with pytest.raises(KeyError, match="unknown recipe 'nope'"):
        get_recipe("nope")


def test_recipes_match_the_paper():
    assert RECIPES["clipkd"].weights == {"task": 1.0, "crd": 1.0, "icl": 1.0, "fd": 2000.0}
    assert RECIPES["mfd"].weights == RECIPES["fd"].weights and RECIPES["mfd"].mask_ratio == 0.75
    assert RECIPES["baseline"].weights == {"task": 1.0}
    assert {n: r.weights for n, r in RECIPES.items() if n.startswith("siglip")} == {
        "siglip": {"siglip": 1.0}, "siglip-crd": {"siglip": 1.0, "sigmoid_crd": 1.0},
        "siglip-fd": {"siglip": 1.0, "fd": 2000.0}, "siglip-mfd": {"siglip": 1.0, "fd": 2000.0},
        "siglip-icl": {"siglip": 1.0, "icl": 1.0}, "siglip-afd": {"siglip": 1.0, "afd": 1.0},
        "siglip-clipkd": {"siglip": 1.0, "sigmoid_crd": 1.0, "icl": 1.0, "fd": 2000.0}}
    assert RECIPES["siglip-mfd"].mask_ratio == 0.75
    assert set(RECIPES) == {"baseline", "crd", "fd", "mfd", "gd", "icl", "afd", "clipkd", "siglip", "siglip-crd",
                            "siglip-fd", "siglip-mfd", "siglip-icl", "siglip-afd", "siglip-clipkd"}


@pytest.mark.parametrize("recipe, student_name", [
    (r, s) for r in sorted(RECIPES) for s in ([SIGLIP] if r.startswith("siglip") else [STUDENT, "clipkd-tiny-mobilenet"])])
def test_every_recipe_one_step_heterogeneous(recipe, student_name, teacher_encoder):
    """Teacher and student differ in embedding size, tokenizer context, resolution and normalisation (a sigmoid
    recipe: the tiny ViT's sigmoid twin as the student)."""
    student = make_encoder(student_name, seed=3)
    assert student.embed_dim != teacher_encoder.embed_dim and student.image_size != teacher_encoder.image_size
    r = get_recipe(recipe)
    d = build_distiller(student, teacher_encoder, r.weights, r.mask_ratio)
    opt = torch.optim.AdamW(d.student.parameters(), lr=1e-3)
    batch = random_batch(student, teacher_encoder, n=6)
    assert batch.student_text.shape[1] != batch.teacher_text.shape[1]
    out = d(batch, torch.Generator().manual_seed(0))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"]) and set(r.weights) <= set(out)


@pytest.mark.parametrize("n, d", [(1024, 512), (256, 256), (128, 384)])
def test_gd_weight_calibration(n, d):
    """lambda*GD is of the order of the task loss at a typical start: random student, sharp teacher (scale 100)."""
    g = torch.Generator().manual_seed(0)
    unit = lambda: torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)  # noqa: E731
    base = unit()
    t_img = torch.nn.functional.normalize(base + 0.5 * unit(), dim=1)  # positive pairs at cosine ~0.8
    t_txt = torch.nn.functional.normalize(base + 0.5 * unit(), dim=1)
    s_img, s_txt = unit(), unit()
    gd = LF.gd_loss(s_img, s_txt, 1 / 0.07, t_img, t_txt, 100.0)
    ratio = gd_weight_for(n, d) * gd / LF.clip_loss(s_img, s_txt, 1 / 0.07)
    assert 0.5 < ratio.item() < 2.0
    assert gd_weight_for(1024, 512) == GD_WEIGHT


# GD weight of a recipe: gd_weight_for(global batch N, teacher dim D); hand values of
# 5e6 * (N/1024)^2 * (D/512) * ln N / ln 1024 (ln N / ln 1024 = log2 N / 10 for powers of two):
GD_N256_D384 = 5e6 * (1 / 16) * 0.75 * 0.8  # = 187500
GD_N16_D384 = 5e6 * (1 / 64**2) * 0.75 * 0.4  # = 366.2109375
GD_N64_D384 = 5e6 * (1 / 16**2) * 0.75 * 0.6  # = 8789.0625


def test_recipe_gd_weight_follows_global_batch_and_teacher_dim(caplog):
    from clipkd.losses.recipes import resolve_weights

    with caplog.at_level("INFO", logger="clipkd.losses.recipes"):
        weights = resolve_weights("gd", None, global_batch=256, teacher_dim=384)
    assert weights == {"task": 1.0, "gd": pytest.approx(GD_N256_D384, rel=1e-12)}
    assert GD_N256_D384 == 187500.0
    assert "N=256" in caplog.text and "D=384" in caplog.text and "187500" in caplog.text
    assert resolve_weights("gd", None, 1024, 512)["gd"] == GD_WEIGHT  # the reference setting
    assert resolve_weights("clipkd", None, 256, 384) == RECIPES["clipkd"].weights  # no GD: nothing changes
    with pytest.raises(ValueError, match="global batch >= 2"):
        resolve_weights("gd", None, 1, 384)  # ln 1 = 0 would silently drop GD


def test_explicit_gd_weight_is_used_as_given(caplog):
    from clipkd.losses.recipes import resolve_weights

    with caplog.at_level("INFO", logger="clipkd.losses.recipes"):
        assert resolve_weights("gd", {"task": 1.0, "gd": 3.0}, 256, 384) == {"task": 1.0, "gd": 3.0}
    assert "N=256" not in caplog.text


@pytest.mark.parametrize("world_size, expected", [(1, GD_N16_D384), (4, GD_N64_D384)])
def test_config_recipe_gd_weight_uses_global_batch(world_size, expected):
    """data.batch_size 8 x optim.accum_steps 2 x world_size processes; the teacher (tiny-teacher) has D=384."""
    from clipkd.config import load_config
    from clipkd.build.models import build_distiller_from_config

    cfg = load_config(None, ["run_dir=r", "teacher.model=clipkd-tiny-teacher", "student.model=clipkd-tiny-vit",
                             "data.format=csv", "data.train=x.csv", "optim.steps=1", "distill.recipe=gd",
                             "data.batch_size=8", "optim.accum_steps=2"])
    d = build_distiller_from_config(cfg) if world_size == 1 else build_distiller_from_config(cfg, world_size=world_size)
    assert d.teacher.embed_dim == 384
    assert d.loss.weights == {"task": 1.0, "gd": pytest.approx(expected, rel=1e-12)}
    cfg.distill.weights = {"task": 1.0, "gd": 7.0}
    assert build_distiller_from_config(cfg, world_size=world_size).loss.weights == {"task": 1.0, "gd": 7.0}


def test_weights_print_as_one_weighted_sum():
    """One text for a set of loss weights: `clipkd losses`, the demo's report and the model card all use it."""
    from clipkd.losses.recipes import weights_text

    assert weights_text({"task": 1.0, "crd": 1.0, "fd": 500.0}) == "task + crd + 500*fd"
    assert weights_text({"task": 0.0, "icl": 2.0}) == "2*icl"  # a zero weight is not a term
    assert weights_text({"task": 1.0, "gd": 27343.75}) == "task + 27343.75*gd"  # a calibrated weight is not rounded
    assert weights_text({"task": 1.0, "gd": 0.0}, named={"gd": "lambda_GD"}) == "task + lambda_GD*gd"
    assert weights_text({"task": 0.0}) == "nothing"
