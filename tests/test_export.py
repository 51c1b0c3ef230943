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
    from clipkd.commands.train import make_trainer
    from test_train import base_overrides

    csv = write_csv(tmp / "pairs", 32, size=40)
    run = tmp / f"run-{student}"
    items = {"data.format": "csv", "data.train": csv, "optim.steps": 2, "checkpoint.every_steps": 2,
             "student.model": student, **extra}
    make_trainer(load_config(None, base_overrides(run, tmp, "csv", **items))).fit()
    return run


@pytest.fixture(scope="module")
def colours(module_tmp):
    root = module_tmp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir()
        for i in range(3):
            pixels = np.clip(np.array(rgb) + rng.integers(-25, 25, (36, 44, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vit_run(module_tmp, colours):
    bench = {"name": "colours", "task": "zeroshot", "format": "folder", "path": str(colours), "batch_size": 8}
    return _train(module_tmp("vit"), "clipkd-tiny-vit", **{"eval.every_steps": 2,
                                                                        "eval.benchmarks": json.dumps([bench])})


@pytest.fixture(scope="module")
def vit_export(vit_run, colours, module_tmp):
    out = module_tmp("vit-export") / "out"
    # the bar's accuracy part off: on 9 images one changed prediction is 11 points, which a 2-step student's
    # near-tied logits can give on some CPU; the bar itself is tested with a deliberately damaged variant
    assert main(["export", str(vit_run), "--out", str(out), "--quantize", "int8", "--fp16",
                 "--zeroshot", f"folder:{colours}", "--batch-size", "4", "--max-acc1-drop", "100"]) == 0
    return out


@pytest.fixture(scope="module")
def cnn_export(module_tmp):
    tmp = module_tmp("cnn")
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


def _per_input(session, name, rows):
    """``session`` run on each row alone (batch of one), as the recorded drift is defined."""
    return np.concatenate([session.run(None, {name: rows[i:i + 1]})[0] for i in range(len(rows))])


def _unit(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_variants_report_drift_and_accuracy_change(vit_export, vit_run, colours):
    """The recorded drift and accuracy are those of each image and caption run alone through onnxruntime (sessions
    opened here), whatever --batch-size the export used (4), and the cosine is a true cosine (the fp16 variant's
    outputs are not exactly unit vectors)."""
    entry = json.loads((vit_export / "export.json").read_text())["formats"]["onnx"]
    assert max(d for side in entry["max_abs_diff"].values() for d in side.values()) <= 1e-4
    student = _student(vit_run)
    paths = sorted(colours.glob("*/*.png"))
    images = np.stack([student.preprocess_val(Image.open(p)).numpy() for p in paths])
    classes = sorted(COLOURS)  # the folder names: the class names and, with the bare template, the prompts
    labels = np.array([classes.index(p.parent.name) for p in paths])
    ids = student.tokenize(classes).numpy()
    onnx = vit_export / "onnx"
    ref = {"image": _per_input(ort.InferenceSession(str(onnx / "image_encoder.onnx")), "image", images),
           "text": _per_input(ort.InferenceSession(str(onnx / "text_encoder.onnx")), "text", ids)}
    for kind in ("int8", "fp16"):
        v = entry["variants"][kind]
        got = {"image": _per_input(ort.InferenceSession(str(onnx / f"image_encoder.{kind}.onnx")), "image", images),
               "text": _per_input(ort.InferenceSession(str(onnx / f"text_encoder.{kind}.onnx")), "text", ids)}
        for side in ("image", "text"):
            cosine = float((_unit(got[side]) * _unit(ref[side])).sum(1).mean())
            assert v["cosine"][side] == pytest.approx(cosine, abs=1e-6), (kind, side)
            assert 0.98 < v["cosine"][side] <= 1.0 + 1e-12
        for acc, emb in ((v["acc1"], got), (v["acc1_float32"], ref)):
            logits = emb["image"].astype(np.float64) @ _unit(emb["text"]).astype(np.float64).T
            top2 = np.sort(logits, axis=1)[:, -2:]
            near = int((top2[:, 1] - top2[:, 0] < 1e-5).sum())  # near-ties: the library counts them against
            assert abs(acc - (logits.argmax(1) == labels).mean()) <= near / len(labels) + 1e-12, kind
        assert v["acc1_change"] == pytest.approx(v["acc1"] - v["acc1_float32"])
        assert v["accepted"] is True and v["reasons"] == []
    assert entry["bar"] == {"min_cosine": 0.99, "max_acc1_drop": 100.0}
    assert {"cpu", "isa", "onnxruntime"} <= set(entry["variants"]["int8"]["measured_on"])
    assert entry["variants"]["int8"]["bytes"] < 0.5 * entry["files"]["image_encoder.onnx"] + \
        0.5 * entry["files"]["text_encoder.onnx"]


def test_drift_does_not_depend_on_how_the_inputs_are_batched(vit_run, vit_export):
    """onnxruntime's dynamic int8 quantisation scales activations per tensor: batched together, an image's int8
    embedding depends on the others. The recorder runs every input alone, so batching changes nothing."""
    from clipkd.export.onnx_encoder import DriftRecorder, OnnxEncoder

    student, onnx = _student(vit_run), vit_export / "onnx"
    images = _images(9, student.image_size, seed=3)
    cosines = []
    for sizes in ((9,), (4, 4, 1)):
        recorder = DriftRecorder(OnnxEncoder(onnx / "image_encoder.int8.onnx", onnx / "text_encoder.int8.onnx",
                                             student), OnnxEncoder(onnx / "image_encoder.onnx",
                                                                   onnx / "text_encoder.onnx", student))
        for chunk in images.split(list(sizes)):
            recorder.encode_image(chunk)
        cosines.append(torch.cat(recorder.cosines["image"]))
    torch.testing.assert_close(cosines[0], cosines[1], rtol=0, atol=1e-12)


def _damaged_int8(src, dst):
    """A real int8 variant whose weight matrices are then replaced by seeded noise of the same dtype and shape."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    model, rng = onnx.load(str(dst)), np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.int8 and w.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(rng.integers(-127, 128, w.shape).astype(np.int8), init.name))
    onnx.save(model, str(dst))


def test_a_variant_below_the_bar_is_flagged_and_not_written(vit_run, colours, tmp_path, monkeypatch, capsys):
    import clipkd.export.variants as variants

    monkeypatch.setattr(variants, "_int8", _damaged_int8)
    out = tmp_path / "out"
    assert main(["export", str(vit_run), "--format", "onnx", "--out", str(out), "--quantize", "int8", "--fp16",
                 "--zeroshot", f"folder:{colours}"]) == 1  # the export is there, but not all that was asked for
    printed = capsys.readouterr().out
    entry = json.loads((out / "export.json").read_text())["formats"]["onnx"]
    bad, good = entry["variants"]["int8"], entry["variants"]["fp16"]
    assert bad["accepted"] is False and good["accepted"] is True
    assert any(r.startswith("mean image cosine") and "< 0.99" in r for r in bad["reasons"]), bad["reasons"]
    assert bad["cosine"]["image"] < 0.99
    assert sorted(p.name for p in out.glob("*.int8.onnx")) == [] and "image_encoder.int8.onnx" not in entry["files"]
    assert (out / "image_encoder.fp16.onnx").is_file() and "image_encoder.fp16.onnx" in entry["files"]
    assert re.search(r"int8: REFUSED \(not written\): mean image cosine", printed), printed


def test_acceptance_bar_reasons():
    from clipkd.export.variants import Bar

    bar = Bar(min_cosine=0.995, max_acc1_drop=1.0)
    assert bar.reasons({"cosine": {"image": 0.999, "text": 0.999}}) == []
    assert bar.reasons({"cosine": {"image": 0.999, "text": 0.999}, "acc1_change": -0.01}) == []  # exactly 1 point
    assert bar.reasons({"cosine": {"image": 0.999, "text": 0.98}, "acc1_change": -0.02}) == [
        "mean text cosine 0.98000 < 0.995", "zero-shot acc1 -2.00 points against float32 (at most 1 may be lost)"]
    assert bar.reasons({"cosine": {"image": 0.999, "text": 0.999}, "acc1_change": 0.05}) == []
    nan = float("nan")  # an overflowing variant: NaN embeddings fail, they do not slip through every comparison
    assert bar.reasons({"cosine": {"image": nan, "text": 0.999}, "acc1_change": nan}) == [
        "mean image cosine nan < 0.995", "zero-shot acc1 +nan points against float32 (at most 1 may be lost)"]
    assert bar.reasons({"cosine": {"image": 0.999}}) == ["no text embeddings were compared"]


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


def test_the_card_names_a_runs_own_loss_weights_beside_its_recipe():
    """A run with ``distill.weights`` does not train its recipe's weights: the card must not read as the recipe."""
    from clipkd.export.card_render import recipe_words

    assert recipe_words({"recipe": "fd", "weights": None}) == "recipe `fd`"
    assert recipe_words({"recipe": "clipkd", "weights": {"task": 1.0, "crd": 1.0, "icl": 0.0, "fd": 500.0}}) == (
        "recipe `clipkd` with its own loss weights: task + crd + 500*fd")


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
    # text FLOPs by hand, at the whole context (as open_clip and the ONNX graph run it): 32 tokens, width 128,
    # 4 layers, MLP x4; then the pooled token's projection to 256
    t, w = 32, 128
    per_layer = 2 * t * w * 3 * w + 2 * 2 * t * t * w + 2 * t * w * w + 2 * 2 * t * w * 4 * w
    assert student["flops"]["text"] == layers * per_layer + 2 * w * 256
    for engine in ("pytorch", "onnxruntime"):
        assert set(student["latency_ms"][engine]["image"]) == {"1", "2"}
    md = (tmp_path / "card.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| GFLOPs per image"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) == pytest.approx(student["flops"]["image"] / teacher["flops"]["image"], abs=1e-3)
    acc1 = card["evaluation"]["run"]["eval/colours/acc1"]  # the run's evaluation results, in percent
    assert 0 <= acc1 <= 1 and f"| colours/acc1 (%) | {100 * acc1:.2f} |" in md
    assert set(card["variants"]) == {"int8", "fp16"}  # the export's variants, with their verdicts
    assert re.search(r"\| int8 \| [0-9.]+ \| [0-9.]+ / [0-9.]+ \| [-+0-9.]+ \| accepted \|", md), md


def run_deploy_snippet(run, export, colours, tmp_path):
    """The "Using the ONNX folder without PyTorch" script of the manual's deploy page (docs/deploy.md), as printed,
    run with torch made unimportable on a green image and three captions: ``(printed probabilities, the student,
    the image, the captions)``."""
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = text[text.index("## Using the ONNX folder without PyTorch"):]
    script = tmp_path / "runtime.py"
    script.write_text("import sys\nsys.modules['torch'] = None\n" + re.search(r"```python\n(.*?)```", section, re.S)
                      .group(1))
    image, captions = colours / "green" / "1.png", ["a red thing", "a green thing", "a blue thing"]
    out = subprocess.run([sys.executable, str(script), str(export / "onnx"), str(image), *captions],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip().splitlines()[-1]), _student(run), Image.open(image), captions


def test_deploy_page_runtime_snippet_runs_without_torch(vit_run, vit_export, colours, tmp_path):
    """The deploy page's runtime script: its probabilities equal the student's in PyTorch (a softmax over the
    captions; a sigmoid student: tests/test_siglip_export.py)."""
    printed, student, image, captions = run_deploy_snippet(vit_run, vit_export, colours, tmp_path)
    with torch.no_grad():
        img = student.encode_image(student.preprocess_val(image).unsqueeze(0))
        scale = student.model.logit_scale.exp().clamp(max=100)  # the student's learned temperature, not 100
        probs = (scale * img @ student.encode_text(student.tokenize(captions)).T).softmax(-1)[0]
    assert list(printed) == captions
    assert np.allclose(list(printed.values()), probs.numpy(), atol=2e-4)


def test_an_export_failing_its_check_or_killed_leaves_nothing(vit_run, tmp_path, monkeypatch):
    import clipkd.export.onnx_export as onnx_export
    from clipkd.commands.export import export_student
    from clipkd.commands.source import resolve_source

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


def test_onnx_folder_records_the_learned_logit_scale(vit_run, vit_export):
    """model.json holds the multiplier a runtime applies to cosine similarities: exp(logit_scale) of the checkpoint,
    read here with safetensors."""
    import math

    checkpoint = sorted((vit_run / "checkpoints").glob("step_*"))[-1] / "student.safetensors"
    with safe_open(str(checkpoint), "np") as f:
        log_scale = float(f.get_tensor("encoder.model.logit_scale"))
    model = json.loads((vit_export / "onnx" / "model.json").read_text())
    assert model["logit_scale"] == pytest.approx(math.exp(log_scale), rel=1e-6) and model["logit_scale"] < 50
    assert model["embed_dim"] == 256
    assert "model.json" in json.loads((vit_export / "export.json").read_text())["formats"]["onnx"]["files"]


def test_model_json_clamps_the_scale_as_clip_does(tmp_path):
    from clipkd.export.onnx_export import write_model_info

    student = create_encoder("clipkd-tiny-vit", None, role="student")
    with torch.no_grad():
        student.model.logit_scale.fill_(5.0)  # exp(5) = 148: CLIP applies at most 100
    scale = json.loads(write_model_info(student, tmp_path / "model.json").read_text())["logit_scale"]
    assert scale == pytest.approx(100.0, rel=1e-6)


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_export_into_a_folder_holding_files_is_refused_unless_replace(vit_run, tmp_path, capsys):
    out = tmp_path / "deploy"
    (out / "onnx").mkdir(parents=True)
    (out / "onnx" / "image_encoder.int8.onnx").write_bytes(b"an earlier export's")
    (out / "export.json").write_text("{}")
    before = _tree(tmp_path)
    err = _error(["export", str(vit_run), "--format", "open_clip", "--out", str(out)], capsys)
    assert f"--out: {out} is not empty" in err and "--replace" in err
    assert _tree(tmp_path) == before  # nothing written, nothing moved
    assert main(["export", str(vit_run), "--format", "open_clip", "--out", str(out), "--replace"]) == 0
    aside = sorted(tmp_path.glob("deploy.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "onnx" / "image_encoder.int8.onnx").read_bytes() == b"an earlier export's"
    assert f"moved the earlier contents of {out} to {aside[0]}" in capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    assert list(manifest["formats"]) == ["open_clip"]
    assert _tree(out) == sorted(["export.json", *manifest["formats"]["open_clip"]["files"]])  # the new export alone
    (tmp_path / "empty").mkdir()  # an empty folder (or none) needs no --replace
    assert main(["export", str(vit_run), "--format", "open_clip", "--out", str(tmp_path / "empty")]) == 0
    assert not list(tmp_path.glob("empty.replaced-*"))
    for inside in (vit_run, vit_run.parent):  # --replace there would move the run itself aside
        err = _error(["export", str(vit_run), "--format", "open_clip", "--out", str(inside), "--replace"], capsys)
        assert "holds the checkpoint being exported" in err
    assert (vit_run / "checkpoints").is_dir()


def test_export_help_states_the_acceptance_bar(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--min-cosine \S+ .*\(default: 0\.99\)", text), text
    assert re.search(r"--max-acc1-drop \S+ .*\(default: 1\.0\)", text), text
    assert "--replace" in text


def test_int8_weights_are_unsigned_so_no_cpu_saturates(vit_export):
    """U8S8 integer products saturate 16-bit sums on x86 CPUs without VNNI and not on VNNI ones (one file, other
    embeddings per CPU); the int8 variant's quantised weights are uint8 (U8U8: exact sums on every CPU)."""
    import onnx

    for name in ("image_encoder.int8.onnx", "text_encoder.int8.onnx"):
        graph = onnx.load(str(vit_export / "onnx" / name)).graph
        dtypes = {i.name: i.data_type for i in graph.initializer}
        weights = [dtypes[x] for n in graph.node if n.op_type in ("MatMulInteger", "ConvInteger")
                   for x in n.input[1:2] if x in dtypes]
        assert weights and set(weights) == {onnx.TensorProto.UINT8}, name
