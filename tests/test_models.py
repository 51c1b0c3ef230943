"""Encoders: the open_clip adapter, checkpoint layouts, the frozen teacher, the student module."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from clipkd.distill import build_distiller
from clipkd.models import DistillStudent, FrozenTeacher, create_open_clip_encoder, list_models, read_state_dict
from conftest import STUDENT, TEACHER, make_encoder


def _outputs(enc):
    torch.manual_seed(123)
    enc.eval()
    images = torch.randn(2, 3, *enc.image_size)
    with torch.no_grad():
        return enc.encode_image(images), enc.encode_text(enc.tokenize(["a cat", "two dogs"]))


def test_tiny_configs_are_listed():
    assert {STUDENT, TEACHER, "clipkd-tiny-vit-64", "clipkd-tiny-mobilenet"} <= set(list_models())
    assert "ViT-B-16" in list_models()


def test_encoders_carry_their_own_preprocessing_and_tokenizer(student_encoder, teacher_encoder):
    img = Image.new("RGB", (100, 80), (200, 10, 10))
    s, t = student_encoder.preprocess_val(img), teacher_encoder.preprocess_val(img)
    assert s.shape == (3, 32, 32) and t.shape == (3, 48, 48)
    assert not torch.allclose(s[0].mean(), t[0].mean())  # different normalisation
    assert student_encoder.tokenize(["hi"]).shape == (1, 32) and teacher_encoder.tokenize(["hi"]).shape == (1, 24)
    assert (student_encoder.embed_dim, teacher_encoder.embed_dim) == (256, 384)
    assert student_encoder.preprocess_train(img).shape == (3, 32, 32)


def test_unknown_model_and_tag_errors():
    with pytest.raises(RuntimeError, match="not found"):
        create_open_clip_encoder("no-such-model")
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained tag"):
        create_open_clip_encoder(STUDENT, pretrained="laion2b_nope")
    with pytest.raises(FileNotFoundError):
        create_open_clip_encoder("missing/config.json")


@pytest.mark.parametrize("layout", ["bare", "state_dict", "module", "state_dict_module", "safetensors", "clipkd"])
def test_checkpoint_layouts_load_identically(layout, tmp_path, teacher_encoder):
    src = make_encoder(STUDENT, seed=7)
    state = src.model.state_dict()
    path = tmp_path / ("w.safetensors" if layout in ("safetensors", "clipkd") else "w.pt")
    if layout == "bare":
        torch.save(state, path)
    elif layout == "state_dict":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif layout == "module":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    elif layout == "state_dict_module":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a clipkd student module, heads included
        student = build_distiller(src, teacher_encoder, {"task": 1, "fd": 1}).student
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(path))
    loaded = create_open_clip_encoder(STUDENT, pretrained=str(path))
    for a, b in zip(_outputs(src), _outputs(loaded)):
        torch.testing.assert_close(a, b)
    fresh = make_encoder(STUDENT, seed=8)
    assert not torch.allclose(_outputs(fresh)[0], _outputs(src)[0])


def test_checkpoint_of_wrong_model_is_rejected(tmp_path):
    torch.save(make_encoder(TEACHER).model.state_dict(), tmp_path / "t.pt")
    with pytest.raises((ValueError, RuntimeError)):
        create_open_clip_encoder(STUDENT, pretrained=str(tmp_path / "t.pt"))


def test_read_state_dict_rejects_non_checkpoints(tmp_path):
    torch.save({"epoch": 1, "note": "x"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="no state dict"):
        read_state_dict(tmp_path / "x.pt")


@pytest.mark.parametrize("wrapped", [False, True])
def test_model_config_json_file(tmp_path, wrapped):
    cfg = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 40, "patch_size": 10, "width": 64, "layers": 1, "head_width": 32},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
    }
    if wrapped:
        cfg = {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(cfg))
    enc = create_open_clip_encoder(str(path))
    assert enc.embed_dim == 64 and enc.image_size == (40, 40) and enc.tokenize(["x"]).shape == (1, 12)
    white = enc.preprocess_val(Image.new("RGB", (40, 40), (255, 255, 255)))
    expected = 1.0 if wrapped else (1 - 0.48145466) / 0.26862954
    assert white[0, 0, 0].item() == pytest.approx(expected, rel=1e-4)


def test_bad_model_config_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ValueError, match="missing 'vision_cfg'"):
        create_open_clip_encoder(str(path))


def test_timm_tower_through_open_clip():
    enc = make_encoder("clipkd-tiny-mobilenet")
    assert type(enc.model.visual).__name__ == "TimmModel"
    out = enc.encode_image(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 256) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_teacher_is_frozen_and_stays_in_eval(teacher_encoder):
    teacher = FrozenTeacher(teacher_encoder)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    images = torch.randn(2, 3, 48, 48, requires_grad=True)
    out = teacher(images, teacher_encoder.tokenize(["a", "b"]))
    assert out.img.grad_fn is None and out.txt.grad_fn is None and out.scale.grad_fn is None


def test_student_projection_only_when_sizes_differ(student_encoder, teacher_encoder):
    diff = DistillStudent(student_encoder, teacher_encoder.embed_dim, {"teacher", "projection"})
    assert diff.proj_img.weight.shape == (384, 256) and diff.proj_txt is not None
    same = DistillStudent(make_encoder(STUDENT), 256, {"teacher", "projection"})
    assert same.proj_img is None
    out = same(torch.randn(2, 3, 32, 32), same.encoder.tokenize(["a", "b"]))
    assert out.img_proj is out.img and out.txt_proj is out.txt
    baseline = DistillStudent(make_encoder(STUDENT), 384, set())
    assert baseline.proj_img is None and baseline.icl_logit_scale is None


def test_student_projected_embeddings_are_normalised(student_encoder, teacher_encoder):
    s = DistillStudent(student_encoder, 384, {"teacher", "projection", "icl_scale"})
    out = s(torch.randn(3, 3, 32, 32), student_encoder.tokenize(["a", "b", "c"]))
    assert out.img_proj.shape == (3, 384)
    torch.testing.assert_close(out.img_proj.norm(dim=1), torch.ones(3))
    assert out.icl_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_learnable_scales_are_clamped_at_100(student_encoder):
    s = DistillStudent(student_encoder, 384, {"teacher", "projection", "icl_scale"})
    with torch.no_grad():
        s.icl_logit_scale.fill_(10.0)
        student_encoder.logit_scale.fill_(10.0)
    out = s(torch.randn(2, 3, 32, 32), student_encoder.tokenize(["a", "b"]))
    assert out.icl_scale.item() == pytest.approx(100.0) and out.scale.item() == pytest.approx(100.0)


def test_afd_needs_teacher_and_works_with_different_sizes(student_encoder, teacher_encoder):
    s = DistillStudent(student_encoder, 384, {"teacher", "afd"})
    images, text = torch.randn(2, 3, 32, 32), student_encoder.tokenize(["a", "b"])
    with pytest.raises(ValueError, match="AFD needs the teacher"):
        s(images, text)
    t = FrozenTeacher(teacher_encoder)(torch.randn(2, 3, 48, 48), teacher_encoder.tokenize(["a", "b"]))
    out = s(images, text, teacher=t)
    assert out.afd_img.shape == (2, 384) and s.afd_fuse_img.in_features == 768


def test_student_is_one_module_with_everything_trainable(student_encoder, teacher_encoder):
    d = build_distiller(student_encoder, teacher_encoder, {"task": 1, "icl": 1, "afd": 1, "fd": 1})
    names = {n.split(".")[0] for n, _ in d.student.named_parameters()}
    assert names == {"encoder", "proj_img", "proj_txt", "icl_logit_scale", "afd_fuse_img", "afd_fuse_txt",
                     "afd_logit_scale"}
    keys = set(d.student.state_dict())
    assert {"proj_img.weight", "icl_logit_scale", "afd_logit_scale", "afd_fuse_txt.bias"} <= keys


def test_bad_mask_ratio(student_encoder, teacher_encoder):
    with pytest.raises(ValueError, match="mask_ratio"):
        build_distiller(student_encoder, teacher_encoder, {"task": 1}, mask_ratio=1.0)
