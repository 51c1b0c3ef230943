"""A sigmoid (SigLIP) student through eval, export and card: open_clip's load keeps its bias, model.json gives a
runtime scale and bias, the deploy page's runtime script gives the student's sigmoid probabilities, `clipkd eval`
agrees with open_clip alone, and `clipkd card` measures it."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from clipkd.cli import main
from test_export import _train, _zeroshot_matches_clipkd_eval, colours, run_deploy_snippet  # noqa: F401

SIGLIP = "clipkd-tiny-siglip"


@pytest.fixture(scope="module")
def siglip_run(module_tmp, colours):  # noqa: F811
    bench = {"name": "colours", "task": "zeroshot", "format": "folder", "path": str(colours), "batch_size": 8}
    return _train(module_tmp("siglip"), SIGLIP, **{
        "distill.recipe": "siglip-clipkd", "teacher.model": SIGLIP, "eval.every_steps": 2,
        "eval.benchmarks": json.dumps([bench])})


@pytest.fixture(scope="module")
def siglip_export(siglip_run, module_tmp):
    out = module_tmp("siglip-export") / "out"
    assert main(["export", str(siglip_run), "--out", str(out)]) == 0
    return out


def _checkpoint_value(run, name):
    checkpoint = sorted((run / "checkpoints").glob("step_*"))[-1] / "student.safetensors"
    with safe_open(str(checkpoint), "np") as f:
        return float(f.get_tensor(name))


def test_open_clip_load_keeps_the_trained_bias_and_evaluates_as_clipkd(siglip_run, siglip_export, colours, tmp_path):  # noqa: F811
    import open_clip

    bias = _checkpoint_value(siglip_run, "encoder.model.logit_bias")
    assert bias != pytest.approx(-10.0, abs=1e-6)  # it trained: the check below is not of the initial value
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{siglip_export / 'open_clip'}")
    assert float(model.logit_bias.detach()) == pytest.approx(bias, rel=1e-7)
    _zeroshot_matches_clipkd_eval(siglip_run, siglip_export / "open_clip", colours, tmp_path)


def test_model_json_has_scale_and_bias_and_the_runtime_script_gives_sigmoid_probabilities(siglip_run, siglip_export,
                                                                                          colours, tmp_path):  # noqa: F811
    info = json.loads((siglip_export / "onnx" / "model.json").read_text())
    assert info["logit_bias"] == pytest.approx(_checkpoint_value(siglip_run, "encoder.model.logit_bias"), rel=1e-6)
    assert info["logit_scale"] == pytest.approx(math.exp(_checkpoint_value(siglip_run, "encoder.model.logit_scale")),
                                                rel=1e-6)
    assert "sigmoid" in info["logits"]
    printed, student, image, captions = run_deploy_snippet(siglip_run, siglip_export, colours, tmp_path)
    with torch.no_grad():
        img = student.encode_image(student.preprocess_val(image).unsqueeze(0))
        logits = student.scale() * img @ student.encode_text(student.tokenize(captions)).T + student.bias()
    assert list(printed) == captions
    assert list(printed.values()) == pytest.approx(torch.sigmoid(logits)[0].tolist(), abs=2e-4)


def test_card_measures_a_sigmoid_student(siglip_run, siglip_export, tmp_path):
    argv = ["card", str(siglip_run), "--out", str(tmp_path), "--batch-sizes", "1", "--repeats", "3", "--onnx",
            str(siglip_export / "onnx")]
    assert main(argv) == 0
    card = json.loads((tmp_path / "card.json").read_text())
    assert [m["model"] for m in card["models"]] == [SIGLIP, SIGLIP]
    assert "eval/colours/acc1" in card["evaluation"]["run"]
