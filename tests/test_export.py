"""`clipkd export` and `clipkd card`: what open_clip, onnxruntime and a runtime without PyTorch get from the files.

Expected values come from the peers themselves: open_clip's own `local-dir:` loader and tokenizer, onnxruntime
sessions opened here, PIL + numpy preprocessing written here from preprocess.json, and hand-counted ViT FLOPs.
"""

import json
import re

import numpy as np
import onnxruntime as ort
import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from clipkd.cli import main
from clipkd.errors import ExportError
from clipkd.models.factory import create_encoder

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
CAPTIONS = ["a photo of a dog", "Ünïcödé: café, 北京, Ελληνικά, emoji 🐕 and “quotes”", "",
            "an over-long caption " + "with many many words " * 20, "T-shirt/top", "Ankle boot"]


def _train(tmp, student, **extra):
    from clipkd.config import load_config
    from clipkd.data.synthetic import write_csv
    from clipkd.engine.trainer import Trainer
    from test_train import base_overrides

    csv = write_csv(tmp / "pairs", 32, size=40)
    run = tmp / f"run-{student}"
    items = {"data.format": "csv", "data.train": csv, "optim.steps": 2, "checkpoint.every_steps": 2,
             "student.model": student, **extra}
    Trainer(load_config(None, base_overrides(run, tmp, "csv", **items))).fit()
    return run


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(3):
            pixels = np.clip(np.array(rgb) + rng.integers(-25, 25, (36, 44, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, colours):
    bench = {"name": "colours", "task": "zeroshot", "format": "folder", "path": str(colours), "batch_size": 8}
    return _train(tmp_path_factory.mktemp("vit"), "clipkd-tiny-vit", **{"eval.every_steps": 2,
                                                                        "eval.benchmarks": json.dumps([bench])})


@pytest.fixture(scope="module")
def vit_export(vit_run, colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("vit-export") / "out"
    assert main(["export", str(vit_run), "--out", str(out), "--quantize", "int8", "--fp16",
                 "--zeroshot", f"folder:{colours}", "--batch-size", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def cnn_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn")
    run = _train(tmp, "clipkd-tiny-mobilenet")  # a timm MobileNetV3 image tower
    assert main(["export", str(run / "checkpoints" / "step_00000002"), "--out", str(tmp / "out")]) == 0
    return run, tmp / "out"


def _student(run):
    """The student as `clipkd eval --run` builds it: the run's model with the checkpoint's weights."""
    from clipkd.config import load_config

    cfg = load_config(run / "config.yaml")
    weights = str(sorted((run / "checkpoints").glob("step_*"))[-1] / "student.safetensors")
    return create_encoder(cfg.student.model, weights, role="student").eval()


def _images(n, size, seed=0):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _open_clip_matches(run, folder):
    student = _student(run)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    assert torch.equal(tokenizer(CAPTIONS), student.tokenize(CAPTIONS))
    images = _images(5, student.image_size)
    with torch.no_grad():
        assert (model.encode_image(images, normalize=True) - student.encode_image(images)).abs().max() <= 1e-6
        ids = tokenizer(CAPTIONS)
        assert (model.encode_text(ids, normalize=True) - student.encode_text(ids)).abs().max() <= 1e-6
    with safe_open(str(folder / "open_clip_model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())  # the distillation heads are not in the file
    return model, preprocess, tokenizer


def _zeroshot_matches_clipkd_eval(run, folder, colours, tmp_path):
    """Zero-shot accuracy with open_clip alone from ``folder``, from the prompts `clipkd eval --run` recorded, equals
    clipkd's."""
    model, preprocess, tokenizer = _open_clip_matches(run, folder)
    assert main(["eval", "--run", str(run), "--zeroshot", f"folder:{colours}", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    with torch.no_grad():
        weights = []
        for name in result["classnames"]:
            emb = model.encode_text(tokenizer([t.format(name) for t in result["templates"]]), normalize=True)
            weights.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
        classifier = torch.stack(weights, dim=1)
        hits = []
        for i, name in enumerate(result["classnames"]):
            for path in sorted((colours / name).glob("*.png")):
                feats = model.encode_image(preprocess(Image.open(path)).unsqueeze(0), normalize=True)
                hits.append(int((feats @ classifier).argmax()) == i)
    assert result["metrics"]["acc1"] == pytest.approx(sum(hits) / len(hits))


def test_open_clip_folder_loads_in_open_clip_with_clipkd_eval_accuracy(vit_run, vit_export, colours, tmp_path):
    _zeroshot_matches_clipkd_eval(vit_run, vit_export / "open_clip", colours, tmp_path)
    manifest = json.loads((vit_export / "export.json").read_text())
    assert {"proj_img.weight", "icl_logit_scale"} <= set(manifest["left_out"])


def test_open_clip_config_is_what_open_clips_own_hub_writer_writes(vit_run, vit_export, tmp_path):
    from open_clip.push_to_hf_hub import save_config_for_hf

    student = _student(vit_run)
    save_config_for_hf(student.model, tmp_path / "cfg.json", model_config=open_clip.get_model_config(student.name))
    theirs = json.loads((tmp_path / "cfg.json").read_text())
    ours = json.loads((vit_export / "open_clip" / "open_clip_config.json").read_text())
    assert ours["model_cfg"] == theirs["model_cfg"]
    assert {k: ours["preprocess_cfg"][k] for k in theirs["preprocess_cfg"]} == \
        {k: list(v) if isinstance(v, tuple) else v for k, v in theirs["preprocess_cfg"].items()}


def test_timm_student_open_clip_folder(cnn_export, colours, tmp_path):
    run, out = cnn_export
    _zeroshot_matches_clipkd_eval(run, out / "open_clip", colours, tmp_path)


def _onnx_matches(run, folder):
    from clipkd.export.tokenizer_files import load_exported_tokenizer

    student = _student(run)
    image = ort.InferenceSession(str(folder / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(folder / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    tokenize = load_exported_tokenizer(folder)
    for n in (1, 8):
        images = _images(n, student.image_size, seed=n)
        captions = (CAPTIONS * 2)[:n]
        ids = tokenize(captions)
        assert np.array_equal(ids["text"], student.tokenize(captions).numpy())
        with torch.no_grad():
            ref_image = student.encode_image(images).numpy()
            ref_text = student.encode_text(torch.from_numpy(ids["text"])).numpy()
        assert np.abs(image.run(None, {"image": images.numpy()})[0] - ref_image).max() <= 1e-4
        assert np.abs(text.run(None, ids)[0] - ref_text).max() <= 1e-4
    return student


def _preprocess_from_json(spec, path):
    """preprocess.json applied with PIL and numpy only."""
    h, w = spec["size"]
    assert spec["resize_mode"] == "shortest" and h == w
    img = Image.open(path).convert(spec["mode"])
    scale = h / min(img.size)
    size = (max(h, round(img.size[0] * scale)), max(h, round(img.size[1] * scale)))
    img = img.resize(size, {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[spec["interpolation"]])
    left, top = int(round((size[0] - w) / 2)), int(round((size[1] - h) / 2))
    x = np.asarray(img.crop((left, top, left + w, top + h)), dtype=np.float32) / 255
    return ((x - np.array(spec["mean"])) / np.array(spec["std"])).transpose(2, 0, 1).astype(np.float32)


def test_onnx_encoders_match_pytorch_and_files_suffice(vit_run, vit_export, colours):
    folder = vit_export / "onnx"
    student = _onnx_matches(vit_run, folder)
    spec = json.loads((folder / "preprocess.json").read_text())
    path = colours / "red" / "0.png"
    expected = student.preprocess_val(Image.open(path)).numpy()
    assert np.abs(_preprocess_from_json(spec, path) - expected).max() < 1e-5


def test_timm_student_onnx(cnn_export):
    run, out = cnn_export
    _onnx_matches(run, out / "onnx")


def test_variants_report_drift_and_accuracy_change(vit_export, vit_run, colours):
    entry = json.loads((vit_export / "export.json").read_text())["formats"]["onnx"]
    assert max(d for side in entry["max_abs_diff"].values() for d in side.values()) <= 1e-4
    student = _student(vit_run)
    fp32 = ort.InferenceSession(str(vit_export / "onnx" / "image_encoder.onnx"))
    images = np.stack([student.preprocess_val(Image.open(p)).numpy() for p in sorted(colours.glob("*/*.png"))])
    ref = fp32.run(None, {"image": images})[0]
    for kind in ("int8", "fp16"):
        v = entry["variants"][kind]
        assert v["acc1_change"] == pytest.approx(v["acc1"] - v["acc1_float32"])
        got = ort.InferenceSession(str(vit_export / "onnx" / f"image_encoder.{kind}.onnx")).run(None, {"image": images})[0]
        cosine = float((got * ref).sum(1).mean() / 1)  # both are unit vectors
        assert v["cosine"]["image"] == pytest.approx(cosine, abs=1e-4)
        assert 0.98 < v["cosine"]["image"] < 1.0 and 0.98 < v["cosine"]["text"] <= 1.0
    assert entry["variants"]["int8"]["bytes"] < 0.5 * entry["files"]["image_encoder.onnx"] + \
        0.5 * entry["files"]["text_encoder.onnx"]


def _error(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_refusals(vit_run, tmp_path, capsys):
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.yaml").write_text((vit_run / "config.yaml").read_text())
    assert "has no checkpoint yet" in _error(["export", str(tmp_path / "fresh"), "--out", str(tmp_path / "o")], capsys)
    err = _error(["export", str(vit_run), "--format", "tflite", "--out", str(tmp_path / "o")], capsys)
    assert "unknown format 'tflite'" in err and "open_clip, onnx, all" in err
    err = _error(["export", str(vit_run), "--format", "open_clip", "--fp16", "--out", str(tmp_path / "o")], capsys)
    assert "--format onnx or all" in err
    assert "not a clipkd run folder" in _error(["export", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()  # nothing written by a refused export


def test_untraceable_tower_is_named(tmp_path):
    from clipkd.export.onnx_export import export_onnx

    student = create_encoder("clipkd-tiny-vit", None, role="student").eval()

    def data_dependent(images, normalize=True):  # control flow on values: torch.export cannot trace it
        return student.model.encode_image(images) if images.sum() > 0 else -student.model.encode_image(images)

    student.encode_image = data_dependent
    with pytest.raises(ExportError, match=r"cannot trace the image tower of clipkd-tiny-vit for ONNX \(.+\)"):
        export_onnx(student, tmp_path)


def test_card_measures_student_beside_teacher(vit_run, vit_export, cnn_export, tmp_path, capsys):
    argv = ["card", str(vit_run), "--out", str(tmp_path), "--batch-sizes", "1", "2", "--repeats", "3", "--onnx"]
    err = _error([*argv, str(cnn_export[1] / "onnx")], capsys)  # another student's export
    assert "the ONNX encoders are not clipkd-tiny-vit's" in err
    assert main([*argv, str(vit_export / "onnx")]) == 0
    card = json.loads((tmp_path / "card.json").read_text())
    student, teacher = card["models"]
    assert (student["role"], student["model"], teacher["model"]) == ("student", "clipkd-tiny-vit", "clipkd-tiny-teacher")
    model = _student(vit_run).model
    assert student["params"]["image"] == sum(p.numel() for p in model.visual.parameters())
    assert student["params"]["total"] == sum(p.numel() for p in model.parameters())
    # ViT FLOPs by hand: 32 px, patch 8 -> 16 patches + class token, width 192, 4 layers, MLP x4, embed 256
    t, w, layers = 17, 192, 4
    per_layer = 2 * t * w * 3 * w + 2 * 2 * t * t * w + 2 * t * w * w + 2 * 2 * t * w * 4 * w
    assert student["flops"]["image"] == 2 * 16 * (3 * 8 * 8) * w + layers * per_layer + 2 * w * 256
    for engine in ("pytorch", "onnxruntime"):
        assert set(student["latency_ms"][engine]["image"]) == {"1", "2"}
    md = (tmp_path / "card.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| GFLOPs per image"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) == pytest.approx(student["flops"]["image"] / teacher["flops"]["image"], abs=1e-3)
    assert re.search(r"\| colours/acc1 \| [0-9.]+ \|", md)  # the run's evaluation results


def test_readme_runtime_snippet_runs_without_torch(vit_run, vit_export, colours, tmp_path):
    """The README's "Using the ONNX folder without PyTorch" script, as printed, with torch made unimportable:
    its probabilities equal the student's in PyTorch."""
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Deploy: `clipkd export` and `clipkd card`"):]
    script = tmp_path / "runtime.py"
    script.write_text("import sys\nsys.modules['torch'] = None\n" + re.search(r"```python\n(.*?)```", section, re.S)
                      .group(1))
    image, captions = colours / "green" / "1.png", ["a red thing", "a green thing", "a blue thing"]
    out = subprocess.run([sys.executable, str(script), str(vit_export / "onnx"), str(image), *captions],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = eval(out.stdout.strip().splitlines()[-1])
    student = _student(vit_run)
    with torch.no_grad():
        img = student.encode_image(student.preprocess_val(Image.open(image)).unsqueeze(0))
        probs = (100 * img @ student.encode_text(student.tokenize(captions)).T).softmax(-1)[0]
    assert list(printed) == captions
    assert np.allclose(list(printed.values()), probs.numpy(), atol=2e-4)


def test_an_export_failing_its_check_or_killed_leaves_nothing(vit_run, tmp_path, monkeypatch):
    import clipkd.export.onnx_export as onnx_export
    from clipkd.export.command import export_student
    from clipkd.export.source import resolve_source

    out = tmp_path / "deploy"
    out.mkdir()
    (out / "keep.txt").write_text("a file the user had")
    killed = tmp_path / ".tmp-deploy-99999"  # the staging folder of an export killed with SIGKILL
    killed.mkdir()
    (killed / "image_encoder.onnx").write_bytes(b"half a file")
    real = onnx_export.run_session
    monkeypatch.setattr(onnx_export, "run_session", lambda sess, feed: real(sess, feed) + 1e-3)  # a wrong runtime
    with pytest.raises(ExportError, match="differs from PyTorch by"):
        export_student(resolve_source(vit_run), out, ["onnx"], [])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deploy", "keep.txt"]
