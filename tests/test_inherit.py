"""Weight inheritance (TinyCLIP's manual inheritance): a student ViT CLIP initialised from its teacher's weights.

Checked against independent computations: inheriting every layer at full width reproduces the teacher (weights
and embeddings, exactly); a half-depth student equals one assembled by hand from the teacher's state dict (layers
0 and 2); a narrower student's weights are the teacher's at the channels, heads and units the stated magnitude
rule picks, recomputed here by a plain loop; a CNN student is refused with the reason.
"""

import json

import pytest
import torch

from clipkd.models.inherit import evenly_spaced, inherit_from
from clipkd.models.open_clip_adapter import register_config
from conftest import STUDENT, TEACHER, make_encoder


def _variant(tmp_path, name: str, **vision_text) -> str:
    """The tiny teacher's config with some vision/text settings changed, registered under ``name``."""
    from clipkd.models.open_clip_adapter import CONFIG_DIR

    cfg = json.loads((CONFIG_DIR / f"{TEACHER}.json").read_text())
    for key, value in vision_text.items():
        tower, field = key.split("__")
        cfg["model_cfg"][tower][field] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return register_config(path)


def _embed(enc, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, *enc.image_size, generator=g)
    text = enc.tokenizer(["a photo of a cat", "a red car", "two dogs on grass"])
    with torch.no_grad():
        return enc.encode_image(images), enc.encode_text(text)


def _trained_like(model, seed=0):
    """Every parameter perturbed: a fresh model's norms, biases and scale equal any other fresh model's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def test_every_layer_at_full_width_is_the_teacher():
    teacher, student = make_encoder(TEACHER, seed=1).eval(), make_encoder(TEACHER, seed=2).eval()
    _trained_like(teacher.model)
    report = inherit_from(student.model, teacher.model)
    assert report.image_layers == report.text_layers == [0, 1, 2, 3] and not report.own
    t_sd, s_sd = teacher.model.state_dict(), student.model.state_dict()
    assert all(torch.equal(t_sd[k], s_sd[k]) for k in t_sd)
    for a, b in zip(_embed(student), _embed(teacher)):
        assert torch.equal(a, b)


def test_half_depth_equals_the_hand_built_student(tmp_path):
    """Two layers of four (0 and 2, every other one): every weight the teacher's, its blocks renumbered."""
    name = _variant(tmp_path, "tiny-teacher-half", vision_cfg__layers=2, text_cfg__layers=2)
    teacher, student = make_encoder(TEACHER, seed=1).eval(), make_encoder(name, seed=2).eval()
    _trained_like(teacher.model)
    inherit_from(student.model, teacher.model)
    want = {}
    for k, v in teacher.model.state_dict().items():
        for prefix in ("visual.transformer.resblocks.", "transformer.resblocks."):
            if k.startswith(prefix):
                layer, rest = k[len(prefix):].split(".", 1)
                if int(layer) % 2:
                    break
                k = f"{prefix}{int(layer) // 2}.{rest}"
        else:  # a kept (even) teacher layer, renumbered, or no layer at all
            want[k] = v
    got = student.model.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert evenly_spaced(2, 4) == [0, 2] and evenly_spaced(3, 4) == [0, 1, 2]


def _top(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


@torch.no_grad()
def test_a_narrower_student_keeps_the_most_important_channels_heads_and_units():
    """Tiny teacher (image width 256, 4 heads; text 256; embedding 384; 48 px) -> tiny student (192, 3 heads;
    128, 2 heads; 256; 32 px). Every kept index recomputed by a loop over the stated scores."""
    teacher, student = make_encoder(TEACHER, seed=1).eval(), make_encoder(STUDENT, seed=2).eval()
    t, s = teacher.model, student.model
    _trained_like(t)
    report = inherit_from(s, t)
    assert report.widths == {"image": (192, 256), "text": (128, 256), "embedding": (256, 384)}
    assert report.own == ["text positional_embedding rows 24..31"]  # the student's context is longer
    v = t.visual
    blocks = v.transformer.resblocks
    score = [float(v.ln_post.weight[c].abs() + sum(b.ln_1.weight[c].abs() + b.ln_2.weight[c].abs() for b in blocks))
             for c in range(256)]
    ch = _top(score, 192)
    emb_score = [float(v.proj[:, e].abs().sum() + t.text_projection[:, e].abs().sum()) for e in range(384)]
    emb = _top(emb_score, 256)
    assert torch.equal(s.visual.conv1.weight, v.conv1.weight[ch])
    assert torch.equal(s.visual.ln_pre.bias, v.ln_pre.bias[ch])
    assert torch.equal(s.visual.proj, v.proj[ch][:, emb])
    b_t, b_s = blocks[1], s.visual.transformer.resblocks[1]
    w = b_t.attn.in_proj_weight
    head_score = [float(sum(w[p * 256 + h * 64: p * 256 + (h + 1) * 64].abs().sum() for p in range(3)) +
                        b_t.attn.out_proj.weight[:, h * 64:(h + 1) * 64].abs().sum()) for h in range(4)]
    heads = _top(head_score, 3)
    rows = [p * 256 + h * 64 + i for p in range(3) for h in heads for i in range(64)]
    cols = [h * 64 + i for h in heads for i in range(64)]
    assert torch.equal(b_s.attn.in_proj_weight, w[rows][:, ch])
    assert torch.equal(b_s.attn.in_proj_bias, b_t.attn.in_proj_bias[rows])
    assert torch.equal(b_s.attn.out_proj.weight, b_t.attn.out_proj.weight[ch][:, cols])
    assert torch.equal(b_s.ln_2.bias, b_t.ln_2.bias[ch])
    unit_score = [float(b_t.mlp.c_fc.weight[u].abs().sum() + b_t.mlp.c_proj.weight[:, u].abs().sum())
                  for u in range(1024)]
    units = _top(unit_score, 768)
    assert torch.equal(b_s.mlp.c_fc.weight, b_t.mlp.c_fc.weight[units][:, ch])
    assert torch.equal(b_s.mlp.c_proj.weight, b_t.mlp.c_proj.weight[ch][:, units])
    # the grid (6x6 -> 4x4) resized as open_clip's own resize_pos_embed resizes it
    from open_clip.model import resize_pos_embed

    sd = {"visual.positional_embedding": v.positional_embedding[:, ch].clone()}
    resize_pos_embed(sd, s)
    torch.testing.assert_close(s.visual.positional_embedding, sd["visual.positional_embedding"])
    text_ch = _top([float(t.ln_final.weight[c].abs() + sum(b.ln_1.weight[c].abs() + b.ln_2.weight[c].abs()
                                                         for b in t.transformer.resblocks)) for c in range(256)], 128)
    assert torch.equal(s.token_embedding.weight, t.token_embedding.weight[:, text_ch])
    assert torch.equal(s.text_projection, t.text_projection[text_ch][:, emb])
    assert torch.equal(s.transformer.resblocks[2].ln_1.weight, t.transformer.resblocks[2].ln_1.weight[text_ch])
    assert torch.equal(s.logit_scale, t.logit_scale)
    img, txt = _embed(student)
    assert img.shape == (3, 256) and torch.isfinite(img).all() and torch.isfinite(txt).all()


def test_what_cannot_map_is_refused_with_the_reason(tmp_path):
    teacher = make_encoder(TEACHER, seed=1)
    with pytest.raises(ValueError, match="not a VisionTransformer"):
        inherit_from(make_encoder("clipkd-tiny-mobilenet").model, teacher.model)
    with pytest.raises(ValueError, match=r"image width \(320\) is larger"):
        inherit_from(make_encoder(_variant(tmp_path, "wide", vision_cfg__width=320)).model, teacher.model)
    with pytest.raises(ValueError, match="patches"):
        inherit_from(make_encoder(_variant(tmp_path, "p16", vision_cfg__patch_size=16)).model, teacher.model)
    with pytest.raises(ValueError, match="one teacher layer index"):
        inherit_from(make_encoder(TEACHER).model, teacher.model, image_layers=[0, 1, 2, 9])
    with pytest.raises(ValueError, match="MLP"):
        inherit_from(make_encoder(_variant(tmp_path, "mlp8", vision_cfg__mlp_ratio=8.0)).model, teacher.model)
    with pytest.raises(ValueError, match="layer scale"):
        inherit_from(make_encoder(_variant(tmp_path, "ls", vision_cfg__ls_init_value=0.1,
                                           text_cfg__ls_init_value=0.1)).model, teacher.model)
    with pytest.raises(ValueError, match="text pooling"):
        inherit_from(make_encoder(_variant(tmp_path, "last", text_cfg__pool_type="last")).model, teacher.model)


def _cfg(data_dir, tmp_path, **extra):
    from clipkd.config import load_config
    from test_train import base_overrides

    items = {"teacher.model": TEACHER, "student.model": STUDENT, "data.batch_size": 4, "optim.steps": 1,
             "optim.warmup_steps": 0, **extra}
    return load_config(None, base_overrides(tmp_path / "run", data_dir, **items))


def test_student_inherit_in_a_run_starts_from_the_teachers_weights(data_dir, tmp_path):
    """``student.inherit: {}`` (text layers chosen): the run's student starts as inherit_from makes it from the
    same teacher, and it trains."""
    from clipkd.commands.train import make_trainer

    trainer = make_trainer(_cfg(data_dir, tmp_path, **{"student.inherit": {"text_layers": [3, 2, 1, 0]}}))
    want = make_encoder(STUDENT, seed=5)
    report = inherit_from(want.model, trainer.distiller.teacher.encoder.model, text_layers=[3, 2, 1, 0])
    assert report.text_layers == [3, 2, 1, 0]
    got, ref = trainer.distiller.student.encoder.model.state_dict(), want.model.state_dict()
    own = "positional_embedding"  # the text context's rows 24..31 stay each student's own initialisation
    assert all(torch.equal(got[k], v) for k, v in ref.items() if k != own)
    assert torch.equal(got[own][:24], ref[own][:24])
    assert trainer.fit().history[0]["loss"] > 0


@pytest.mark.parametrize("extra,match", [
    ({"teacher": None, "distill.recipe": "baseline"}, "needs one teacher section"),
    ({"student.pretrained": "x.pt"}, "student.pretrained both set"),
])
def test_student_inherit_config_errors(data_dir, tmp_path, extra, match):
    from clipkd.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match=match):
        _cfg(data_dir, tmp_path, **{"student.inherit": {}, **extra})


def test_a_cnn_student_cannot_inherit(data_dir, tmp_path):
    from clipkd.commands.train import make_trainer
    from clipkd.errors import ConfigError

    with pytest.raises(ConfigError, match="student.inherit: .*VisionTransformer"):
        make_trainer(_cfg(data_dir, tmp_path, **{"student.inherit": {}, "student.model": "clipkd-tiny-mobilenet"}))


def test_the_teacher_a_student_inherits_from_is_an_input_of_the_run(data_dir, tmp_path, caplog):
    """With the task loss alone the teacher only gives the student its weights: built for that, not kept, and the
    run's inputs name it (a student started from other weights is another run)."""
    import logging

    from clipkd.build.inputs import run_inputs
    from clipkd.commands.train import make_trainer

    cfg = _cfg(data_dir, tmp_path, **{"student.inherit": {}, "distill.recipe": "baseline"})
    assert "inherited_from" in run_inputs(cfg) and "inherited_from" not in run_inputs(_cfg(data_dir, tmp_path))
    with caplog.at_level(logging.INFO):
        trainer = make_trainer(cfg)
    assert trainer.distiller.teacher is None
    assert "only gave the student its starting weights" in caplog.text
