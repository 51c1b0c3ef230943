"""Random weights are reported exactly when an encoder stays random; an unreachable hub is a clean user error."""

import logging

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipkd.config import validate_config
from clipkd.build.models import build_distiller_from_config
from clipkd.errors import USER_ERRORS
from conftest import STUDENT, TEACHER, make_encoder

OPEN_CLIP_RANDOM = "initialized randomly"  # open_clip's "No pretrained weights loaded ... initialized randomly."
TEACHER_ALARM = "THE TEACHER HAS RANDOM WEIGHTS"


def _config(student=None, teacher=None, recipe="fd"):
    raw = {"run_dir": "/tmp/unused", "student": {"model": STUDENT, "pretrained": student},
           "teacher": {"model": TEACHER, "pretrained": teacher}, "distill": {"recipe": recipe},
           "data": {"format": "csv", "train": "unused.csv"}, "optim": {"steps": 1}}
    return validate_config(raw)


@pytest.fixture(scope="module")
def checkpoints(module_tmp):
    """A student checkpoint (safetensors) and a teacher checkpoint (torch, DDP-style keys)."""
    d = module_tmp("weights")
    student = make_encoder(STUDENT, seed=3).model.state_dict()
    save_file({k: v.contiguous() for k, v in student.items()}, str(d / "student.safetensors"))
    teacher = make_encoder(TEACHER, seed=4).model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in teacher.items()}}, d / "teacher.pt")
    return {"student": str(d / "student.safetensors"), "teacher": str(d / "teacher.pt")}


def _messages(caplog, name=None):
    return [r.getMessage() for r in caplog.records if name is None or r.name.startswith(name)]


def test_weights_from_checkpoints_no_random_warning(checkpoints, caplog):
    caplog.set_level(logging.DEBUG)
    d = build_distiller_from_config(_config(checkpoints["student"], checkpoints["teacher"]))
    text = "\n".join(_messages(caplog)).lower()
    assert OPEN_CLIP_RANDOM not in text and "random" not in text
    # and the weights really are the checkpoints'
    want = make_encoder(TEACHER, seed=4).model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in d.teacher.encoder.model.state_dict().items())
    assert d.student.encoder.untrained is None and d.teacher.encoder.untrained is None


def test_random_student_is_reported_mildly(checkpoints, caplog):
    caplog.set_level(logging.DEBUG)
    build_distiller_from_config(_config(None, checkpoints["teacher"]))
    ours = [r for r in caplog.records if r.name.startswith("clipkd") and "random" in r.getMessage()]
    assert len(ours) == 1 and ours[0].levelno <= logging.WARNING
    assert f"student.model {STUDENT}" in ours[0].getMessage() and "student.pretrained" in ours[0].getMessage()
    assert TEACHER_ALARM not in ours[0].getMessage()
    assert not any(OPEN_CLIP_RANDOM in m for m in _messages(caplog))  # open_clip's own message is held back


def test_random_teacher_is_reported_loudly(checkpoints, caplog):
    caplog.set_level(logging.DEBUG)
    build_distiller_from_config(_config(checkpoints["student"], None))
    alarms = [r for r in caplog.records if r.name.startswith("clipkd") and TEACHER_ALARM in r.getMessage()]
    assert len(alarms) == 1 and alarms[0].levelno == logging.WARNING
    text = alarms[0].getMessage()
    assert f"teacher.model {TEACHER}" in text and "teacher.pretrained" in text and "almost never" in text
    assert "distill.recipe: baseline" in text and "student.safetensors" in text  # how to get teacher weights
    assert not any(OPEN_CLIP_RANDOM in m for m in _messages(caplog))


def test_open_clip_message_is_held_back_only_inside_clipkd(caplog):
    from clipkd.models import list_models

    assert STUDENT in list_models()  # clipkd's tiny configs registered with open_clip
    caplog.set_level(logging.WARNING)
    open_clip.create_model(STUDENT)  # open_clip's own call, outside clipkd's model creation
    assert any(OPEN_CLIP_RANDOM in m for m in _messages(caplog))
    assert not logging.getLogger().filters  # the hold-back filter was removed again


def test_lit_teacher_random_only_without_its_heads(tmp_path, caplog):
    pytest.importorskip("efficientnet_lite_pytorch")
    from clipkd.models.composite import LIT_NAME, save_heads
    from clipkd.models.factory import create_encoder

    caplog.set_level(logging.DEBUG)
    bare = create_encoder(LIT_NAME, role="teacher")  # pretrained towers, heads random
    alarms = [m for m in _messages(caplog, "clipkd") if TEACHER_ALARM in m]
    assert len(alarms) == 1 and "heads" in alarms[0] and "towers are pretrained" in alarms[0]
    save_heads(bare, tmp_path / "heads.safetensors")
    caplog.clear()
    loaded = create_encoder(LIT_NAME, str(tmp_path / "heads.safetensors"), role="teacher")
    assert loaded.untrained is None
    assert not [m for m in _messages(caplog) if "random" in m.lower()]


def test_offline_pretrained_tag_is_a_clean_user_error(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 (conftest) and an empty cache: ViT-B-32 + openai cannot be fetched; fails at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from clipkd.models import create_open_clip_encoder

    with pytest.raises(Exception) as info:
        create_open_clip_encoder("ViT-B-32", "openai", cache_dir=str(tmp_path))
    exc = info.value
    assert isinstance(exc, USER_ERRORS), type(exc)
    msg = str(exc)
    assert "\n" not in msg and "ViT-B-32" in msg and "'openai'" in msg
    assert "hub is unreachable" in msg and "HF_HUB_OFFLINE" in msg
    assert "pretrained: /path/to/weights.safetensors" in msg


def test_offline_hf_hub_model_is_a_clean_user_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from clipkd.models import create_open_clip_encoder

    with pytest.raises(Exception) as info:
        create_open_clip_encoder("hf-hub:timm/ViT-B-16-SigLIP", cache_dir=str(tmp_path))
    assert isinstance(info.value, USER_ERRORS) and "hub is unreachable" in str(info.value)
    assert "local-dir:" in str(info.value)


def test_offline_hub_model_in_train_is_one_clean_line(data_dir, tmp_path, monkeypatch, capsys):
    """`clipkd train` with an hf-hub: student offline (not cached): `clipkd: error: ...` on one line, exit 2."""
    from huggingface_hub import constants

    from clipkd.cli import main
    from test_train import base_overrides

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    overrides = base_overrides(tmp_path / "run", data_dir, **{"student.model": "hf-hub:timm/ViT-B-16-SigLIP"})
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clipkd: error: cannot load hf-hub:timm/ViT-B-16-SigLIP: the model "
                                               "hub is unreachable (HF_HUB_OFFLINE is set)"), err
