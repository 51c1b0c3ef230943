"""The embedded demo: the LiT teacher, and the quick demo end to end (reinforced data, augmented students)."""

import json

import pytest
import torch
from PIL import Image

from clipkd.demo.fmnist import DEFAULT_SOURCE

needs_fmnist = pytest.mark.skipif(not (DEFAULT_SOURCE / "t10k-labels-idx1-ubyte.gz").exists(),
                                  reason="dataset-fashion-mnist is not installed (make setup installs it)")


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


def test_channels_last_image_tower_computes_what_the_plain_one_does_and_exports(tmp_path):
    """The tower runs NHWC for speed: its features are those of the same weights in the default layout (within
    float32 reordering noise), and its ONNX export matches PyTorch."""
    import copy

    from clipkd.export.onnx_export import check_onnx, export_onnx
    from clipkd.models.composite import create_lit_encoder

    enc = create_lit_encoder(image_size=32).eval()
    assert enc.image_tower.net._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(enc.image_tower.net).to(memory_format=torch.contiguous_format)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = plain.extract_features(images).mean(dim=(2, 3)).double()
        got = enc.image_tower(images).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    export_onnx(enc, tmp_path)
    assert max(check_onnx(enc, tmp_path)["image"].values()) < 1e-3


def test_heads_file_records_the_resolution_the_teacher_was_trained_at(tmp_path):
    """Heads trained at 64 px load at 64 px (the file's metadata), not at the default 96: the reinforced views and
    the evaluation must see the teacher as it was trained. Files without it are the 96 px heads of earlier demos."""
    from safetensors.torch import load_file, save_file

    from clipkd.models.composite import create_lit_encoder, heads_image_size, save_heads

    enc = create_lit_encoder(image_size=64)
    assert enc.image_size == (64, 64)
    save_heads(enc, tmp_path / "heads.safetensors")
    loaded = create_lit_encoder(heads=tmp_path / "heads.safetensors")
    assert loaded.image_size == (64, 64) and loaded.preprocess_val(Image.new("RGB", (56, 56))).shape == (3, 64, 64)
    save_file(load_file(str(tmp_path / "heads.safetensors")), str(tmp_path / "old.safetensors"))  # no metadata
    assert heads_image_size(tmp_path / "old.safetensors") == 96
    save_file(load_file(str(tmp_path / "heads.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={"image_size": "big"})
    with pytest.raises(ValueError, match="image_size metadata"):
        create_lit_encoder(heads=tmp_path / "bad.safetensors")


def test_the_teacher_is_reused_for_the_same_data_under_another_path_and_retrained_for_other_data(tmp_path,
                                                                                                 monkeypatch):
    """benchmarks/demo_seeds.py gives the cached data by an absolute path where `make demo` gave a relative one:
    the same shards must reuse the trained teacher (it was trained again), and changed shards must not."""
    from clipkd.demo.teacher import teacher_params

    (tmp_path / "a.tar").write_bytes(b"shard one")
    monkeypatch.chdir(tmp_path)
    relative = teacher_params(["a.tar"], 10, 0, 64)
    assert teacher_params([str(tmp_path / "a.tar")], 10, 0, 64) == relative
    (tmp_path / "a.tar").write_bytes(b"shard two")
    assert teacher_params(["a.tar"], 10, 0, 64) != relative
    assert teacher_params(["a.tar"], 10, 0, 96) != teacher_params(["a.tar"], 10, 0, 64)


def test_build_teacher_reuses_trains_again_and_reads_old_manifests(tmp_path, monkeypatch):
    """The same shards under another path: reused; changed shards or a manifest of an older demo (no pair count):
    trained again. The frozen towers' features and the heads' training are stubbed (their cost is not the point)."""
    import clipkd.demo.teacher as teacher

    trained = []
    monkeypatch.setattr(teacher, "read_records", lambda shards: [None] * 3)
    monkeypatch.setattr(teacher, "tower_features", lambda enc, records: (torch.zeros(len(records), 1280),
                                                                         torch.zeros(len(records), 384)))
    monkeypatch.setattr(teacher, "fit_heads", lambda enc, img, txt, steps, seed=0: trained.append(steps) or [1.0])
    (tmp_path / "a.tar").write_bytes(b"one")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t"
    assert teacher.build_teacher(out, ["a.tar"], 5, image_size=64)[1:] == (out / "heads.safetensors", 3)
    enc, _, pairs = teacher.build_teacher(out, [str(tmp_path / "a.tar")], 5, image_size=64)
    assert trained == [5] and pairs == 3 and enc.image_size == (64, 64)  # reused, at its own resolution
    manifest = json.loads((out / "teacher.json").read_text())
    del manifest["pairs"]  # as an older demo wrote it
    (out / "teacher.json").write_text(json.dumps(manifest))
    teacher.build_teacher(out, ["a.tar"], 5, image_size=64)
    (tmp_path / "a.tar").write_bytes(b"two")
    teacher.build_teacher(out, ["a.tar"], 5, image_size=64)
    assert trained == [5, 5, 5]


def test_the_demo_stops_when_a_students_training_is_stopped(monkeypatch, capsys):
    """Ctrl-C or SIGTERM during a student's training: the demo must not evaluate and report a half-trained student
    (it did); it stops, exit 0 as `clipkd train`, and says how to continue. A run complete when the signal came
    during its final evaluation is kept."""
    import types

    import clipkd.ablate.runs as runs
    from clipkd.commands import demo

    cfg = types.SimpleNamespace(run_dir="runs/demo/runs/baseline-seed0")
    monkeypatch.setattr(runs, "train", lambda c: runs.Outcome("SIGINT", complete=False))
    with pytest.raises(SystemExit) as stop:
        demo._train(cfg)
    assert stop.value.code == 0 and "stopped by SIGINT" in capsys.readouterr().out
    monkeypatch.setattr(runs, "train", lambda c: runs.Outcome("SIGTERM", complete=True))
    demo._train(cfg)


@needs_fmnist
def test_quick_demo_end_to_end(tmp_path, capsys, monkeypatch):
    from clipkd.cli import main

    work = tmp_path
    monkeypatch.chdir(work)
    tmp_path = work / "demo"
    assert main(["demo", "--quick", "--out", "demo"]) == 0  # a relative --out, as `make demo` gives
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
    # the clipkd student exported, and its card beside the teacher
    for name in ("open_clip/open_clip_config.json", "onnx/image_encoder.onnx", "onnx/text_encoder.int8.onnx"):
        assert (tmp_path / "export" / name).is_file()
    card = json.loads((tmp_path / "card" / "card.json").read_text())
    assert [m["role"] for m in card["models"]] == ["student", "teacher"]
    from clipkd.commands.demo import DISTILL

    assert card["weights"] == DISTILL["weights"]  # the distilled student trained the demo's chosen weights
    setup = report["setup"]
    assert setup["teacher_pairs"] == 2000 and setup["teacher_px"] == 64  # its own split, not the students' pairs
    assert card["models"][1]["model"] == "lit-effnetlite0-minilm" and card["models"][1]["latency_ms"]["onnxruntime"]
    md = (tmp_path / "report.md").read_text()
    assert "## Deployment" in md and "| GFLOPs per image |" in md
    assert "`clipkd` = task + crd + 500*fd (chosen on the val split)" in md  # the weights it trained, not a name
    # the base of the shipped ablation study: read from another folder, its runs check out (paths, models, cache)
    (work / "study").mkdir()
    (work / "study" / "s.yaml").write_text("base: ../demo/ablation-base.yaml\nout: out\nrecipes: [baseline, fd]\n"
                                           "select: {val: fashion-mnist-val, test: fashion-mnist}\n")
    monkeypatch.chdir(work / "study")
    assert main(["ablate", "-c", "s.yaml", "--dry-run"]) == 0
    assert "fd-seed0: to train" in capsys.readouterr().out


def test_the_ablation_base_is_written_into_a_new_folder(tmp_path):
    """With the data and teacher cached in another folder (`run_demo(work=...)`, as benchmarks/demo_seeds.py runs
    it) nothing has made the seed's output folder yet when its ablation base is written: it crashed there."""
    import yaml

    from clipkd.commands.demo import write_ablation_base

    out = tmp_path / "seeds" / "seed1"
    config = {"seed": 1, "logging": {"every_steps": 5, "progress": True}}
    data = {"val_zeroshot": [str(tmp_path / "val.tar")], "test_zeroshot": [str(tmp_path / "test.tar")]}
    path = write_ablation_base(out, config, tmp_path, data)
    base = yaml.safe_load(path.read_text())
    assert path == out / "ablation-base.yaml" and base["logging"]["progress"] is False
    assert [b["name"] for b in base["eval"]["benchmarks"]] == ["fashion-mnist-val", "fashion-mnist"]
