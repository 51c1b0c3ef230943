"""``student.lock``: open_clip's tower locking, from the config. A locked tower's weights do not move in a training
step while the other tower's do; the last N groups (layers) of a locked tower stay trainable; a student without
open_clip towers, and settings that only apply to a locked tower, are refused."""

import pytest
import torch

from clipkd.commands.train import make_trainer
from conftest import TEACHER
from test_inherit import _cfg


def _step(trainer) -> dict[str, bool]:
    """Which of the student's parameters one training step changed."""
    from clipkd.data.stream import DataPosition

    before = {n: p.detach().clone() for n, p in trainer.distiller.student.encoder.model.named_parameters()}
    trainer.stream.start(DataPosition(), endless=True)
    (batch, _), = [b for b, _ in zip(iter(trainer.stream), range(1))]
    trainer.train_step([batch])
    return {n: not torch.equal(p, before[n]) for n, p in trainer.distiller.student.encoder.model.named_parameters()}


def test_a_locked_image_tower_does_not_move_and_the_text_tower_does(data_dir, tmp_path):
    moved = _step(make_trainer(_cfg(data_dir, tmp_path, **{"student.lock": {"image": True}})))
    assert not any(v for n, v in moved.items() if n.startswith("visual."))
    assert moved["token_embedding.weight"] and moved["text_projection"]


def test_the_last_groups_and_layers_stay_trainable(data_dir, tmp_path):
    """open_clip's groups, last first: the projection, then the last block with the final norm, ... (text alike)."""
    lock = {"image": True, "image_unlocked_groups": 1, "text": True, "text_unlocked_layers": 2}
    trainer = make_trainer(_cfg(data_dir, tmp_path, **{"student.lock": lock}))
    grads = {n: p.requires_grad for n, p in trainer.distiller.student.encoder.model.named_parameters()}
    assert grads["visual.proj"] and not grads["visual.conv1.weight"]
    assert not any(v for n, v in grads.items() if n.startswith("visual.transformer."))
    assert all(v for n, v in grads.items() if n.startswith(("transformer.resblocks.3.", "ln_final.")))
    assert grads["text_projection"]
    assert not any(v for n, v in grads.items() if n.startswith("transformer.resblocks.0."))
    assert not grads["token_embedding.weight"]
    moved = _step(trainer)
    assert moved["visual.proj"] and not moved["visual.conv1.weight"] and not moved["token_embedding.weight"]


@pytest.mark.parametrize("lock,match", [({"image_unlocked_groups": 1}, "locked image tower"),
                                        ({"text_unlocked_layers": 2}, "locked text tower")])
def test_settings_of_an_unlocked_tower_are_refused(data_dir, tmp_path, lock, match):
    with pytest.raises(Exception, match=match):
        _cfg(data_dir, tmp_path, **{"student.lock": lock})


def test_a_student_without_open_clip_towers_is_refused(data_dir, tmp_path):
    from clipkd.errors import ConfigError

    cfg = _cfg(data_dir, tmp_path, **{"student.lock": {"text": True}, "student.model": "lit-effnetlite0-minilm",
                                      "teacher.model": TEACHER})
    with pytest.raises(ConfigError, match="student.lock.text"):
        make_trainer(cfg)

