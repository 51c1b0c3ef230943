"""MobileCLIP and MobileCLIP2 students (open_clip's `MobileCLIP2-S0`, `MobileCLIP-S1`, ...: FastViT-MCi image towers,
a non-causal text transformer): they build offline with random weights, train a step from reinforced data, evaluate
and export to open_clip's folder and to ONNX, checked against PyTorch."""

import json

import pytest
import torch

from clipkd.cli import main
from clipkd.commands.train import make_trainer
from test_export import colours  # noqa: F401
from test_reinforce import data, weights  # noqa: F401
from test_reinforced_training import cache, run_config  # noqa: F401


@pytest.fixture(scope="module")
def mobileclip_run(cache, data, weights, module_tmp):  # noqa: F811
    """MobileCLIP2-S0 distilled for one step from the tiny teacher's reinforced data (stored views)."""
    tmp = module_tmp("mobileclip")
    cfg = run_config(data, weights[0], cache["csv", "fp32"], tmp, **{
        "student.model": "MobileCLIP2-S0", "distill.recipe": "clipkd", "data.batch_size": 4, "optim.steps": 1,
        "checkpoint.every_steps": 1})
    result = make_trainer(cfg).fit()
    return tmp / "run", result


def test_a_mobileclip2_student_trains_a_step_from_reinforced_data(mobileclip_run):
    run, result = mobileclip_run
    assert result.step == 1 and {"task", "crd", "icl", "fd"} <= set(result.history[0])
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())


def test_a_mobileclip_student_evaluates_and_exports(mobileclip_run, colours, tmp_path):  # noqa: F811
    run, _ = mobileclip_run
    assert main(["eval", "--run", str(run), "--zeroshot", f"folder:{colours}", "--out", str(tmp_path / "eval"),
                 "--batch-size", "4"]) == 0
    result = json.loads(next((tmp_path / "eval").glob("*.json")).read_text())
    assert 0 <= result["metrics"]["acc1"] <= 1
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    export = json.loads((tmp_path / "out" / "export.json").read_text())
    assert {"open_clip", "onnx"} <= set(export["formats"])


@pytest.mark.parametrize("name", ["MobileCLIP-S1", "MobileCLIP2-S0"])
def test_mobileclip_towers_build_offline_and_the_text_tower_runs_whole(name):
    """Their text transformer has no causal mask, so the training forward must not trim captions: in training mode
    the student's text embeddings are open_clip's own forward's."""
    from clipkd.distill import build_distiller
    from conftest import make_encoder

    student = make_encoder(name)
    distiller = build_distiller(student, None, {"task": 1.0})
    ids = student.tokenize(["a photo of a dog", "two cats"])
    assert ids.shape == (2, 77) and student.image_size == (256, 256)
    distiller.student.train()
    with torch.no_grad():
        trained = distiller.student.encoder.encode_text(ids)
        whole = torch.nn.functional.normalize(student.model.encode_text(ids), dim=-1)
    torch.testing.assert_close(trained, whole)


def test_onnx_export_fuses_mobileone_branches_on_a_copy():
    """The deployed image tower: MobileOne/FastViT training branches fused by timm (fewer BatchNorms, the same
    embeddings within float32 rounding); the student itself keeps its branches."""
    from clipkd.export.onnx_export import inference_form
    from conftest import make_encoder

    student = make_encoder("MobileCLIP2-S0").eval()
    norms = lambda enc: sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.model.visual.modules())  # noqa: E731
    before = norms(student)
    fused = inference_form(student)
    assert norms(fused) < before // 2 and norms(student) == before
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused.encode_image(images), student.encode_image(images), rtol=0, atol=1e-5)
    tiny = make_encoder("clipkd-tiny-vit")
    assert inference_form(tiny) is tiny
