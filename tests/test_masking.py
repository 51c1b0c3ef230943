"""MFD masking: ViT token dropping really shortens the sequence; other towers get pixel-patch masking."""

import pytest
import torch

from clipkd.distill import build_distiller
from clipkd.models.masking import TokenDrop, num_masked, pixel_patch_mask, vit_token_drop
from conftest import make_encoder, random_batch


def test_num_masked_floor_and_range():
    assert num_masked(0.75, 16) == 12 and num_masked(0.75, 17) == 12 and num_masked(0.0, 5) == 0
    assert num_masked(0.99, 4) == 3  # at least one token stays
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            num_masked(bad, 4)


def test_token_drop_keeps_cls_and_a_random_ordered_subset():
    n, length, width = 4, 16, 3
    patches = torch.arange(n * length, dtype=torch.float32).view(n, length, 1).expand(n, length, width)
    x = torch.cat([torch.full((n, 1, width), -1.0), patches], dim=1)
    out = TokenDrop(0.75, torch.Generator().manual_seed(0))(x)
    assert out.shape == (n, 1 + 4, width)
    assert (out[:, 0] == -1).all()
    ids = out[:, 1:, 0]
    assert (ids[:, 1:] > ids[:, :-1]).all()  # original order kept
    rel = ids - torch.arange(n).view(n, 1) * length
    assert ((rel >= 0) & (rel < length)).all()  # each sample keeps its own tokens
    assert len({tuple(r.tolist()) for r in rel}) > 1  # a different subset per sample


def test_vit_masking_shortens_the_transformer_input():
    enc = make_encoder("clipkd-tiny-vit-64")  # 64 patch tokens
    seen = []
    hook = enc.model.visual.transformer.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    images = torch.randn(2, 3, 64, 64)
    enc.encode_image(images)
    masked = enc.encode_image_masked(images, 0.75, torch.Generator().manual_seed(0))
    hook.remove()
    assert seen[0][1] == 65 and seen[1][1] == 65 - 48
    assert isinstance(enc.model.visual.patch_dropout, torch.nn.Identity)  # restored
    assert not torch.allclose(masked, enc.encode_image(images))
    torch.testing.assert_close(enc.encode_image_masked(images, 0.0), enc.encode_image(images))


def test_vit_masking_restores_module_on_error():
    enc = make_encoder("clipkd-tiny-vit")
    original = enc.model.visual.patch_dropout
    with pytest.raises(RuntimeError):
        with vit_token_drop(enc.model.visual, 0.5):
            raise RuntimeError("boom")
    assert enc.model.visual.patch_dropout is original


def test_pixel_patch_mask_zeroes_exactly_floor_r_patches():
    images = torch.rand(3, 3, 64, 64) + 0.5
    out = pixel_patch_mask(images, 0.75, patch=8, generator=torch.Generator().manual_seed(0))
    blocks = out.view(3, 3, 8, 8, 8, 8).permute(0, 2, 4, 1, 3, 5).reshape(3, 64, -1)
    zero = (blocks == 0).all(dim=2)
    assert (zero.sum(dim=1) == 48).all()
    kept = ~zero
    orig = images.view(3, 3, 8, 8, 8, 8).permute(0, 2, 4, 1, 3, 5).reshape(3, 64, -1)
    assert torch.equal(blocks[kept], orig[kept])


def test_cnn_student_uses_pixel_masking():
    enc = make_encoder("clipkd-tiny-mobilenet").eval()
    images = torch.randn(2, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    masked = enc.encode_image_masked(images, 0.75, g)
    expected = enc.encode_image(pixel_patch_mask(images, 0.75, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(masked, expected)


def test_mfd_student_sees_masked_images_teacher_sees_full(student_encoder, teacher_encoder):
    batch = random_batch(student_encoder, teacher_encoder, n=4)
    masked = build_distiller(student_encoder, teacher_encoder, {"task": 1, "fd": 2000}, mask_ratio=0.75)
    s_m, t_m = masked.embed(batch, torch.Generator().manual_seed(0))
    masked.loss(s_m, t_m)["loss"].backward()
    assert masked.student.encoder.model.visual.conv1.weight.grad is not None
    plain = build_distiller(student_encoder, teacher_encoder, {"task": 1, "fd": 2000})  # same encoder
    s_p, t_p = plain.embed(batch)
    torch.testing.assert_close(t_m.img, t_p.img)  # teacher: the full image either way
    assert not torch.allclose(s_m.img, s_p.img)  # student: really masked (the official code's MFD == FD)
    torch.testing.assert_close(s_m.txt, s_p.txt)
