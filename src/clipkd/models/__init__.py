"""Encoders (teacher and student), the frozen-teacher wrapper, the trainable student module, masking."""

from clipkd.embeddings import Embeddings, StudentOutput, TextBatch
from clipkd.models.encoders import ClipEncoder
from clipkd.models.open_clip_adapter import OpenClipEncoder, create_open_clip_encoder, list_models, register_config
from clipkd.models.state_dict import read_state_dict
from clipkd.models.student import DistillStudent
from clipkd.models.teacher import FrozenTeacher

__all__ = [
    "ClipEncoder", "Embeddings", "TextBatch", "OpenClipEncoder", "create_open_clip_encoder", "list_models",
    "register_config", "read_state_dict", "DistillStudent", "StudentOutput", "FrozenTeacher",
]
