"""Causal text towers run only as far as the token they pool, while training: the same output as open_clip's full
forward. Everywhere else (evaluation, export, the card's measurements) the tower runs open_clip's own forward."""

import json

import pytest
import torch

from clipkd.models import create_open_clip_encoder
from clipkd.models.causal_text import CausalTextTower

CAPTIONS = ["a bag", "a small low-resolution photo of a pair of trousers.", "two items: a shirt and then a coat", ""]


def _encoder(tmp_path, custom_text: bool, trim: bool = True, **text_cfg):
    cfg = {"embed_dim": 16, "custom_text": custom_text,
           "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, **text_cfg}}
    path = tmp_path / f"text-{custom_text}-{'-'.join(map(str, text_cfg.values())) or 'plain'}.json"
    path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    enc = create_open_clip_encoder(str(path)).double().train()
    enc.trim_text = trim  # as DistillStudent sets it
    return enc


def _seen_lengths(enc, text):
    """Sequence lengths the text transformer was run on."""
    tower = getattr(enc.model, "text", enc.model)
    seen = []
    handle = tower.transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        out = enc.encode_text(text)
    finally:
        handle.remove()
    return out, seen


def _grads(enc, out):
    enc.zero_grad(set_to_none=True)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("custom_text,text_cfg", [
    (False, {}),                                 # CLIP's own text tower, EOT pooled by argmax
    (True, {}),                                  # CustomTextCLIP's TextTransformer
    (True, {"pool_type": "eos", "eos_id": 49407}),
    (False, {"pool_type": "first"}),
])
def test_trimmed_text_equals_open_clip_full_forward(tmp_path, custom_text, text_cfg):
    enc = _encoder(tmp_path, custom_text, **text_cfg)
    text = enc.tokenize(CAPTIONS)
    out, seen = _seen_lengths(enc, text)
    full = enc.model.encode_text(text, normalize=True)  # open_clip, all 24 positions
    torch.testing.assert_close(out, full, rtol=0, atol=1e-12)
    longest = int((text != 0).sum(1).max()) if text_cfg.get("pool_type") != "first" else 1
    assert seen == [longest] and longest < text.shape[1]
    mine, theirs = _grads(enc, out), _grads(enc, enc.model.encode_text(text, normalize=True))
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("text_cfg", [{"pool_type": "last"}, {"no_causal_mask": True}, {"embed_cls": True}])
def test_towers_whose_pooled_feature_sees_the_padding_run_in_full(tmp_path, text_cfg):
    enc = _encoder(tmp_path, True, **text_cfg)
    assert CausalTextTower.of(enc.model) is None
    text = enc.tokenize(CAPTIONS)
    out, seen = _seen_lengths(enc, text)
    assert len(seen) == 1 and seen[0] >= text.shape[1]  # CoCa appends its class token
    torch.testing.assert_close(out, enc.model.encode_text(text, normalize=True), rtol=0, atol=0)


def test_an_empty_batch_keeps_its_shape(tmp_path):
    enc = _encoder(tmp_path, False)
    assert enc.encode_text(enc.tokenize([])).shape == (0, 16)


def test_an_exported_text_tower_keeps_every_position(tmp_path):
    """A traced graph must not keep the example's trimmed length: longer captions than the example's still count.
    Export runs in eval mode, where even a training student's encoder (switch on) runs open_clip's forward."""
    enc = _encoder(tmp_path, False).float().eval()

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = enc

        def forward(self, text):
            return self.enc.encode_text(text)

    short, long = enc.tokenize(["a bag", "a coat"]), enc.tokenize(CAPTIONS[1:3])
    program = torch.export.export(Text(), (short,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.testing.assert_close(program.module()(long), enc.model.encode_text(long, normalize=True))


def test_trimming_is_off_unless_switched_on(tmp_path):
    enc = _encoder(tmp_path, False, trim=False)  # an encoder as create_open_clip_encoder builds it: switch off
    assert create_open_clip_encoder(str(next(tmp_path.glob("*.json")))).trim_text is False
    text = enc.tokenize(CAPTIONS)
    assert _seen_lengths(enc, text)[1] == [text.shape[1]]  # in training mode too


def test_the_training_student_trims_and_the_same_student_in_eval_mode_does_not(tmp_path):
    from clipkd.models.student import DistillStudent

    enc = _encoder(tmp_path, False, trim=False)
    student = DistillStudent(enc, 16)
    text = enc.tokenize(CAPTIONS)
    longest = int((text != 0).sum(1).max())
    student.train()
    out, seen = _seen_lengths(enc, text)
    assert seen == [longest] and longest < text.shape[1]
    student.eval()  # evaluation during training (eval_mode), export, the card
    full, seen = _seen_lengths(enc, text)
    assert seen == [text.shape[1]]
    torch.testing.assert_close(out, full, rtol=0, atol=1e-12)


def _hand_count(context, width, layers, embed_dim):
    """Text-tower FLOPs by hand: per layer QKV, attention scores and mixing, output projection, MLP x4; the pooled
    token's projection."""
    t, w = context, width
    per_layer = 2 * t * w * 3 * w + 2 * 2 * t * t * w + 2 * t * w * w + 2 * 2 * t * w * 4 * w
    return layers * per_layer + 2 * w * embed_dim


def test_card_counts_the_whole_context_even_for_a_training_students_encoder(tmp_path):
    """The card measures what is deployed: open_clip's forward over all 24 positions, not the trimmed tower."""
    from clipkd.export.measure import encoder_flops
    from clipkd.models.student import DistillStudent

    enc = _encoder(tmp_path, False, trim=False).float()
    DistillStudent(enc, 16).train()  # switch on, training mode: as after a run, before the card puts it in eval
    assert encoder_flops(enc.eval())["text"] == _hand_count(24, 32, 2, 16)
