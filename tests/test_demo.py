"""The embedded demo: the LiT teacher, the teacher cache, and the quick demo end to end."""

import json
from pathlib import Path

import pytest
import torch

from clipkd.cache import TeacherCache
from clipkd.config import ConfigError, load_config
from clipkd.demo.fmnist import DEFAULT_SOURCE

needs_fmnist = pytest.mark.skipif(not (DEFAULT_SOURCE / "t10k-labels-idx1-ubyte.gz").exists(),
                                  reason="dataset-fashion-mnist is not installed (make setup installs it)")


def test_teacher_cache_round_trip_and_missing_key(tmp_path):
    img, txt = torch.randn(3, 4), torch.randn(3, 4)
    path = TeacherCache(["a", "b", "c"], img, txt, 42.0).save(tmp_path / "c.safetensors")
    cache = TeacherCache.load(path)
    e = cache.lookup(["c", "a"])
    assert torch.equal(e.img, img[[2, 0]]) and torch.equal(e.txt, txt[[2, 0]]) and e.scale.item() == 42.0
    with pytest.raises(KeyError, match="no entry for sample 'zz'"):
        cache.lookup(["zz"])


def test_teacher_cache_refuses_augmentation():
    base = ["run_dir=r", "teacher.model=clipkd-tiny-teacher", "student.model=clipkd-tiny-vit", "data.format=csv",
            "data.train=x.csv", "optim.steps=3", "distill.teacher_cache=c.safetensors"]
    with pytest.raises(ConfigError, match="crop_scale: null"):
        load_config(None, base)
    cache = load_config(None, base + ["data.crop_scale=null"]).distill.teacher_cache
    assert cache == str(Path.cwd() / "c.safetensors")  # command-line paths: relative to the working folder


def test_lit_teacher_is_heterogeneous_and_frozen():
    from clipkd.models.composite import create_lit_encoder
    from clipkd.models.teacher import FrozenTeacher

    enc = create_lit_encoder()
    tokens = enc.tokenize(["a photo of a sneaker", "a bag"])
    assert set(tokens) == {"input_ids", "attention_mask"} and tokens["input_ids"].shape == (2, 32)
    assert enc.image_size == (96, 96) and enc.embed_dim == 256
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"image_head.weight", "image_head.bias", "text_head.weight", "text_head.bias", "logit_scale"}
    enc.train()
    assert not enc.image_tower.training and not enc.text_tower.training  # frozen BatchNorm / dropout
    out = FrozenTeacher(enc)(torch.randn(2, 3, 96, 96), tokens)
    assert out.img.shape == (2, 256) and torch.allclose(out.txt.norm(dim=1), torch.ones(2), atol=1e-5)


@needs_fmnist
def test_quick_demo_end_to_end(tmp_path, capsys):
    from clipkd.cli import main

    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert {"teacher", "baseline", "clipkd"} <= set(report)
    for row in ("teacher", "baseline", "clipkd"):
        assert 0.0 <= report[row]["zeroshot_top1"] <= 1.0 and isinstance(report[row]["params"], int)
        for key in ("zeroshot_top5", "t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5", "image_latency_ms"):
            assert key in report[row]
    assert report["teacher"]["zeroshot_top1"] > 0.4  # 10 classes: chance is 0.1
    assert report["teacher"]["params"] > report["clipkd"]["params"]
    for name in ("report.md", "loss_curves.png", "accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "zero-shot top-1" in capsys.readouterr().out
