"""Sigmoid (SigLIP) students and teachers end to end: the model's own bias feeds the terms (against open_clip's
SigLipLoss on the model's outputs), softmax students are refused for sigmoid terms, and a sigmoid student trains
from a softmax teacher, a sigmoid teacher, a mixed ensemble and reinforced data holding a sigmoid teacher."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from clipkd.commands.train import make_trainer
from clipkd.config import load_config
from clipkd.distill import build_distiller
from clipkd.engine.logger import read_metrics
from clipkd.models.teacher import FrozenTeacher
from clipkd.reinforce.format import SidecarReader
from conftest import TEACHER, make_encoder, random_batch
from test_reinforce import data, one_thread  # noqa: F401
from test_train import base_overrides

SIGLIP = "clipkd-tiny-siglip"
SIGMOID_TERMS = {"siglip": 1.0, "sigmoid_crd": 1.0, "fd": 50.0, "icl": 1.0, "afd": 1.0}


def test_the_tiny_siglip_config_is_a_sigmoid_model_with_clips_tokenizer():
    import open_clip

    enc = make_encoder(SIGLIP)
    assert float(enc.bias().detach()) == -10.0 and float(enc.scale()) == pytest.approx(10.0)
    assert isinstance(enc.tokenizer, open_clip.SimpleTokenizer)  # runs offline, though "siglip" is in its name
    assert make_encoder(TEACHER).bias() is None


def test_the_siglip_term_is_open_clips_loss_on_the_models_own_outputs():
    """A sigmoid student's ``siglip`` term (its own scale and bias) equals open_clip's SigLipLoss on what the
    open_clip model's forward returns."""
    from open_clip.loss import SigLipLoss

    student = make_encoder(SIGLIP, seed=3)
    with torch.no_grad():
        student.model.logit_bias.fill_(-3.0)  # not the initial value: the term reads the model's parameter
    distiller = build_distiller(student, None, {"siglip": 1.0})
    batch = random_batch(student, student, n=6)
    distiller.student.eval()
    out = distiller.student(batch.student_images, batch.student_text)
    ours = distiller.loss(out)["siglip"]
    ref = SigLipLoss()(*student.model(batch.student_images, batch.student_text))
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("weights", [{"siglip": 1.0}, {"task": 1.0, "sigmoid_crd": 1.0}])
def test_sigmoid_terms_refuse_a_student_without_a_bias(weights):
    with pytest.raises(ValueError, match="need a sigmoid student.*clipkd-tiny-vit has none.*init_logit_bias"):
        build_distiller(make_encoder("clipkd-tiny-vit"), make_encoder(SIGLIP), weights)


def test_a_teachers_embeddings_carry_its_bias():
    siglip, clip = make_encoder(SIGLIP, seed=1), make_encoder(TEACHER, seed=2)
    batch = random_batch(siglip, siglip, n=4)
    assert float(FrozenTeacher(siglip)(batch.teacher_images, batch.teacher_text).bias) == -10.0
    batch = random_batch(siglip, clip, n=4)
    assert FrozenTeacher(clip)(batch.teacher_images, batch.teacher_text).bias is None


def _train(tmp_path, data_dir, teacher, steps=4, **extra):
    items = {"student.model": SIGLIP, "teacher": teacher, "distill.weights": SIGMOID_TERMS,
             "optim.steps": steps, "data.batch_size": 8, "optim.lr": 5e-3, **extra}
    cfg = load_config(None, base_overrides(tmp_path / "run", data_dir, **items))
    result = make_trainer(cfg).fit()
    return result, read_metrics(tmp_path / "run", "train")


@pytest.mark.parametrize("teacher", [{"model": TEACHER}, {"model": SIGLIP}])
def test_a_sigmoid_student_trains_from_a_softmax_or_a_sigmoid_teacher(teacher, data_dir, tmp_path):
    result, rows = _train(tmp_path, data_dir, teacher)
    assert result.step == 4 and set(SIGMOID_TERMS) <= set(result.history[0])
    biases = [r["train/logit_bias"] for r in rows]
    assert biases[0] != pytest.approx(-10.0, abs=1e-4)  # the bias trains (a step of lr 5e-3 moves it)
    assert all(math.isfinite(r["train/loss"]) for r in rows)


def test_a_mixed_ensemble_teaches_a_sigmoid_student(data_dir, tmp_path):
    """A softmax and a sigmoid teacher together: each one's sigmoid CRD logged beside the mixture's."""
    result, _ = _train(tmp_path, data_dir, [{"model": TEACHER}, {"model": SIGLIP}], steps=2)
    first = result.history[0]
    assert {"sigmoid_crd/t0", "sigmoid_crd/t1"} <= set(first)
    assert first["sigmoid_crd/t0"] != pytest.approx(first["sigmoid_crd/t1"], rel=1e-3)


# --- reinforced data with a sigmoid teacher ----------------------------------------------------------------------

BIAS, SCALE_LOG = -7.5, math.log(12.0)


@pytest.fixture(scope="module")
def sigmoid_cache(data, module_tmp):  # noqa: F811
    """A reinforced build of a sigmoid teacher whose bias and scale are not the initial ones (from its weights)."""
    from clipkd.build.reinforce import run_build
    from clipkd.reinforce.settings import BuildOptions

    root = module_tmp("sigmoid-cache")
    enc = make_encoder(SIGLIP, seed=4)
    with torch.no_grad():
        enc.model.logit_bias.fill_(BIAS)
        enc.model.logit_scale.fill_(SCALE_LOG)
    weights = root / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(weights))
    cfg = load_config(None, _overrides(data, weights, "unused"))
    with one_thread():
        run_build(cfg, BuildOptions(out=root / "cache", views=2, dtype="fp32", batch_size=8, rows_per_shard=16))
    return root / "cache", weights


def _overrides(data, weights, run_dir, **extra):  # noqa: F811
    from test_reinforce import overrides

    items = {"teacher.model": SIGLIP, "student.model": SIGLIP, "distill.weights": SIGMOID_TERMS,
             "run_dir": str(run_dir), **extra}
    return overrides(data, weights, "csv", **items)


def test_reinforced_data_stores_the_sigmoid_teachers_bias(sigmoid_cache):
    cache, _ = sigmoid_cache
    manifest = json.loads((cache / "manifest.json").read_text())
    teacher = manifest["teachers"][0]
    assert teacher["logit_bias"] == pytest.approx(BIAS) and teacher["logit_scale"] == pytest.approx(12.0, rel=1e-6)
    files = [e["file"] for e in manifest["data"]["sidecars"]]
    record = SidecarReader(cache, files).record(0, 0)
    assert record.biases == [pytest.approx(BIAS)] and record.scales == [pytest.approx(12.0, rel=1e-6)]


def test_training_from_a_sigmoid_teachers_cache_equals_the_online_teacher(sigmoid_cache, data, tmp_path):  # noqa: F811
    """The stored bias reaches the terms: the cached batch's losses and gradients equal those with the online
    teacher's embeddings of the same views."""
    from test_reinforced_training import FP32, first_batch, loss_and_grads, online_batch

    cache, weights = sigmoid_cache
    cfg = load_config(None, _overrides(data, weights, tmp_path / "run", **{
        "distill.teacher_cache": str(cache), "data.batch_size": 8, "data.workers": 0, "data.preprocess": "host",
        "data.max_skip_fraction": 1.0}))
    distiller, batch = first_batch(cfg)
    assert distiller.teacher is None and float(batch.teacher.bias) == pytest.approx(BIAS)
    teacher = make_encoder(SIGLIP, pretrained=str(weights)).eval()
    online = online_batch(distiller.student.encoder, teacher, data, batch.keys, view=0)
    with torch.no_grad():
        t_online = teacher.embed(online.teacher_images, online.teacher_text)
    cached_values, cached_grads = loss_and_grads(distiller, batch.student_images, batch.student_text, batch.teacher)
    online_values, online_grads = loss_and_grads(distiller, online.student_images, online.student_text, t_online)
    assert set(cached_values) == {"loss", *SIGMOID_TERMS}
    for name in cached_values:
        torch.testing.assert_close(cached_values[name], online_values[name], **FP32, msg=name)
    for name, g in online_grads.items():
        worst = float((cached_grads[name] - g).abs().max() / g.abs().max().clamp_min(1e-12))
        assert worst <= 1e-4, (name, worst)
    # the bias matters: a softmax reading of the same teacher gives another sigmoid CRD
    from dataclasses import replace

    no_bias, _ = loss_and_grads(distiller, batch.student_images, batch.student_text, replace(batch.teacher, bias=None))
    assert float(no_bias["sigmoid_crd"]) != pytest.approx(float(cached_values["sigmoid_crd"]), rel=1e-3)


def test_a_hub_only_tokenizer_is_a_clear_error_offline_before_the_model_is_built(monkeypatch):
    """SigLIP 2 models take their (Gemma) tokenizer from the hub: offline and uncached, the error says so, before
    hundreds of millions of random weights are built."""
    import open_clip

    from clipkd.errors import HubUnreachable
    from clipkd.models.open_clip_adapter import create_open_clip_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(HubUnreachable, match=r"tokenizer of ViT-B-16-SigLIP2: it comes from the model hub "
                                             r"\(timm/ViT-B-16-SigLIP2\).*HF_HUB_OFFLINE is set.*local-dir:"):
        create_open_clip_encoder("ViT-B-16-SigLIP2")


def test_the_readmes_sigmoid_smoke_command_distils_with_the_sigmoid_terms(monkeypatch):
    """`clipkd smoke --student clipkd-tiny-siglip --teacher clipkd-tiny-siglip --recipe siglip-clipkd`, shortened:
    the teacher is fitted with its own (sigmoid) loss, about 10 at SigLIP's initial bias -10, where CLIP's loss on 8
    pairs is about ln 8."""
    from clipkd.commands import smoke

    seen = []
    real = smoke.fit_teacher
    monkeypatch.setattr(smoke, "fit_teacher", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    history = smoke.run_smoke("siglip-clipkd", SIGLIP, SIGLIP, steps=2, teacher_steps=2, batch_size=8, log=None)
    assert set(history[0]) == {"loss", "siglip", "sigmoid_crd", "icl", "fd"}
    assert seen[0][0] > 5


def test_a_sigmoid_student_trains_from_a_softmax_teachers_reinforced_data(data, tmp_path):  # noqa: F811
    """Reinforced data of a softmax teacher (no bias stored): its batches carry no bias, sigmoid CRD reads the
    teacher's softmax directions, and a sigmoid student trains from them."""
    from test_reinforce import build, overrides

    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in make_encoder(TEACHER, seed=2).model.state_dict().items()}, str(weights))
    build(tmp_path / "cache", data, weights)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["teachers"][0]["logit_bias"] is None
    cfg = load_config(None, overrides(data, weights, "csv", **{
        "run_dir": str(tmp_path / "run"), "student.model": SIGLIP, "distill.weights": SIGMOID_TERMS,
        "distill.teacher_cache": str(tmp_path / "cache"), "data.batch_size": 8, "data.workers": 0,
        "data.max_skip_fraction": 1.0, "optim.steps": 2, "optim.warmup_steps": 1}))
    result = make_trainer(cfg).fit()
    assert result.step == 2 and result.history[0]["sigmoid_crd"] > 0 and set(SIGMOID_TERMS) <= set(result.history[0])


def test_a_cache_of_a_sigmoid_teacher_built_before_biases_were_stored_is_refused(sigmoid_cache, data):  # noqa: F811
    """A manifest without ``logit_bias`` cannot tell a softmax teacher from a sigmoid one built by an older clipkd:
    for a sigmoid teacher it is a problem naming the fix; a softmax teacher's old cache stays usable."""
    from clipkd.reinforce.check import manifest_problems

    cache, weights = sigmoid_cache
    manifest = json.loads((cache / "manifest.json").read_text())
    cfg = load_config(None, _overrides(data, weights, "unused"))
    assert manifest_problems(manifest, [cfg.teacher], cfg.data, 2) == []
    del manifest["teachers"][0]["logit_bias"]
    problems = manifest_problems(manifest, [cfg.teacher], cfg.data, 2)
    assert problems == ["teacher 0 (clipkd-tiny-siglip): a sigmoid model, but the cache was built before clipkd "
                        "stored a teacher's logit bias; rebuild it with `clipkd reinforce`"]


def test_the_siglip_recipe_trains_a_student_alone(data_dir, tmp_path):
    """``siglip`` needs no teacher (like ``baseline``): a config without one is valid and nothing is built for it."""
    cfg = load_config(None, base_overrides(tmp_path / "run", data_dir, **{
        "student.model": SIGLIP, "distill.recipe": "siglip", "optim.steps": 2, "data.batch_size": 8}) + ["teacher=null"])
    trainer = make_trainer(cfg)
    assert trainer.distiller.teacher is None
    assert set(trainer.fit().history[0]) >= {"loss", "siglip"}


def test_preflight_refuses_sigmoid_terms_for_a_softmax_student_before_building_anything(data_dir, tmp_path):
    from clipkd.build.preflight import preflight
    from clipkd.errors import ConfigError

    cfg = load_config(None, base_overrides(tmp_path / "run", data_dir, **{"distill.recipe": "siglip-crd"}))
    with pytest.raises(ConfigError, match=r"student.model: clipkd-tiny-vit is a softmax model \(no logit bias\), but "
                                          r"siglip, sigmoid_crd of distill.recipe 'siglip-crd' need a sigmoid student"):
        preflight(cfg)
    ok = load_config(None, base_overrides(tmp_path / "run", data_dir, **{"distill.recipe": "siglip-crd",
                                                                         "student.model": SIGLIP}))
    assert preflight(ok) is None
