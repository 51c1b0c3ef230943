"""Optimizer groups, the warmup + cosine schedule and logit-scale clamping."""

import math

import pytest
import torch

from clipkd.distill import build_distiller
from clipkd.engine.optim import clamp_logit_scales, create_optimizer, create_scheduler, warmup_cosine


def test_no_weight_decay_for_gains_biases_and_scales(student_encoder, teacher_encoder):
    d = build_distiller(student_encoder, teacher_encoder, {"task": 1, "icl": 1, "afd": 1})
    opt = create_optimizer(d.student, 1e-3, 0.1, (0.9, 0.98), 1e-6)
    decay, rest = opt.param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in d.student.named_parameters()}
    no_decay = {names[id(p)] for p in rest["params"]}
    assert {"encoder.model.logit_scale", "icl_logit_scale", "afd_logit_scale", "proj_img.bias"} <= no_decay
    assert all(names[id(p)].endswith("weight") or "proj" in names[id(p)] or "embedding" in names[id(p)]
               for p in decay["params"])
    assert "proj_img.weight" in {names[id(p)] for p in decay["params"]}
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(d.student.parameters()))


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = create_scheduler(opt, 4, 20)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0]) and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_clamp_logit_scales(student_encoder, teacher_encoder):
    d = build_distiller(student_encoder, teacher_encoder, {"task": 1, "icl": 1})
    with torch.no_grad():
        d.student.encoder.logit_scale.fill_(7.0)
        d.student.icl_logit_scale.fill_(-1.0)
    clamp_logit_scales(d.student)
    assert d.student.encoder.logit_scale.item() == pytest.approx(math.log(100))
    assert d.student.icl_logit_scale.item() == 0.0


def _adamw_by_hand(p, grads, lr, wd, betas, eps):
    """AdamW written out (Loshchilov & Hutter, torch's decoupled decay order), float64."""
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_fused_adamw_on_cpu_is_adamw():
    torch.manual_seed(0)
    module = torch.nn.Linear(7, 5).double()
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = create_optimizer(module, 1e-2, 0.1, (0.9, 0.98), 1e-6)
    assert all(g["fused"] for g in opt.param_groups)
    assert not any(g["fused"] for g in create_optimizer(module, 1e-2, 0.1, (0.9, 0.98), 1e-6, fused=False).param_groups)
    grads = {n: [torch.randn_like(p) for _ in range(5)] for n, p in module.named_parameters()}
    for step in range(5):
        for n, p in module.named_parameters():
            p.grad = grads[n][step]
        opt.step()
    for n, p in module.named_parameters():
        wd = 0.1 if n == "weight" else 0.0
        torch.testing.assert_close(p.detach(), _adamw_by_hand(start[n], grads[n], 1e-2, wd, (0.9, 0.98), 1e-6))
