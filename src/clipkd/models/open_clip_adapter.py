"""open_clip models as clipkd encoders: built-in names, model-config JSON files, pretrained tags, checkpoints.

Timm image towers (MobileViT, EfficientNet, ResNet, MobileNetV3 ... as in the paper's students) come through
open_clip's own timm support: a model config whose ``vision_cfg`` names a ``timm_model_name``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import urllib.error
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import resize_pos_embed
from open_clip.transformer import VisionTransformer

from clipkd.embeddings import TextBatch
from clipkd.errors import HubUnreachable
from clipkd.models.causal_text import CausalTextTower
from clipkd.models.encoders import ClipEncoder, eval_mode
from clipkd.models.masking import vit_token_drop
from clipkd.models.state_dict import read_state_dict

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
_PREPROCESS: dict[str, dict[str, Any]] = {}


def register_config(path: Union[str, Path], name: Optional[str] = None) -> str:
    """Register a model-config JSON with open_clip under ``name`` (default: the file stem); return the name.

    Accepts a plain open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) or the
    ``open_clip_config.json`` layout (``{"model_cfg": ..., "preprocess_cfg": ...}``), whose preprocessing
    (mean, std, interpolation, resize mode) is then used for this model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    cfg = json.loads(path.read_text())
    model_cfg = cfg.get("model_cfg", cfg)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in model_cfg:
            raise ValueError(f"{path}: not an open_clip model config (missing '{key}')")
    name = name or path.stem
    # open_clip keeps its registry in this dict; add_model_config() only takes the plain layout.
    open_clip.factory._MODEL_CONFIGS[name] = model_cfg
    _PREPROCESS[name] = dict(cfg.get("preprocess_cfg", {}))
    return name


def _register_builtin() -> None:
    if not _PREPROCESS.keys() >= {p.stem for p in CONFIG_DIR.glob("*.json")}:
        for path in sorted(CONFIG_DIR.glob("*.json")):
            register_config(path)


def list_models() -> list[str]:
    """All model names open_clip knows, including clipkd's tiny configs."""
    _register_builtin()
    return open_clip.list_models()


def _resolve_model_name(model: str) -> str:
    """A registered model name, or the path of a JSON model config (registered on the fly)."""
    _register_builtin()
    if model.endswith(".json"):
        path = Path(model).resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # open_clip names may hold no '/' or ':'
        return register_config(path, name=f"{path.stem}-{digest}")
    return model


def model_config(model: str) -> dict[str, Any]:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...) of a model name or config file."""
    cfg = open_clip.get_model_config(_resolve_model_name(model))
    if cfg is None:
        raise ValueError(f"no open_clip model config for '{model}' (see `clipkd models`)")
    return cfg


def has_logit_bias(model: str) -> Optional[bool]:
    """Whether the model config of ``model`` gives it a logit bias (``init_logit_bias``: a sigmoid model, SigLIP);
    None when it has no config to read without building it (an ``hf-hub:``/``local-dir:`` model, an unknown name)."""
    try:
        cfg = model_config(model)
    except Exception:  # noqa: BLE001 - no registered config, or one behind a hub: not known before building
        return None
    return cfg.get("init_logit_bias") is not None


class OpenClipEncoder(ClipEncoder):
    """An open_clip ``CLIP``/``CustomTextCLIP`` behind the :class:`ClipEncoder` interface.

    ``trim_text``: the training-only switch of :mod:`clipkd.models.causal_text` (off by default; the trainable
    :class:`~clipkd.models.student.DistillStudent` turns it on). Honoured only in training mode: in eval mode, and
    so in evaluation, export and the model card, ``encode_text`` is open_clip's own forward.
    """

    trim_text: bool = False

    def __init__(self, model: torch.nn.Module, preprocess_train, preprocess_val, tokenizer, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.preprocess_train = preprocess_train
        self.preprocess_val = preprocess_val
        self.tokenizer = tokenizer
        self.image_size = tuple(getattr(model.visual, "image_size", (224, 224)))  # type: ignore[assignment]
        with torch.no_grad():
            self.embed_dim = int(model.text_projection.shape[1]) if _has_text_proj(model) else _probe_dim(model)

    @property
    def logit_scale(self) -> torch.nn.Parameter:  # type: ignore[override]
        return self.model.logit_scale

    @property
    def logit_bias(self) -> Optional[torch.nn.Parameter]:
        """open_clip's ``logit_bias`` (a SigLIP model, ``init_logit_bias`` in its config), None for a CLIP model."""
        return getattr(self.model, "logit_bias", None)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.model.encode_image(images, normalize=normalize)

    def _trimming(self, text: TextBatch) -> Optional[CausalTextTower]:
        """The causal tower that runs ``text`` trimmed (``trim_text``, training mode, a token tensor), or None."""
        trim = self.trim_text and self.training and isinstance(text, torch.Tensor)
        return CausalTextTower.of(self.model) if trim else None

    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        tower = self._trimming(text)
        if tower is None:
            return self.model.encode_text(text, normalize=normalize)
        x = tower.encode(text)
        return F.normalize(x, dim=-1) if normalize else x

    def trimmed_tokens(self, text: TextBatch) -> TextBatch:
        """While trimming (``trim_text``, training mode): ``text`` cut after its last pooled position, so the tower
        on an accelerator runs the width it is given without reading the longest caption back from the device."""
        tower = self._trimming(text)
        return text if tower is None else tower.trimmed(text)

    def encode_image_masked(self, images, ratio, generator=None):
        visual = self.model.visual
        if ratio <= 0 or not isinstance(visual, VisionTransformer):
            return super().encode_image_masked(images, ratio, generator)
        with vit_token_drop(visual, ratio, generator):
            return self.encode_image(images)


def _has_text_proj(model: torch.nn.Module) -> bool:
    proj = getattr(model, "text_projection", None)
    return isinstance(proj, torch.Tensor) and proj.ndim == 2


def _probe_dim(model: torch.nn.Module) -> int:
    size = tuple(getattr(model.visual, "image_size", (224, 224)))
    with eval_mode(model):
        return int(model.encode_image(torch.zeros(1, 3, *size)).shape[-1])


def load_weights(model: torch.nn.Module, checkpoint: Union[str, Path]) -> None:
    """Load an open_clip model's weights from any supported checkpoint layout (strict, clear errors)."""
    state = read_state_dict(checkpoint)
    if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint}: weights do not match the model "
            f"(missing {len(missing)}: {missing[:5]}; unexpected {len(unexpected)}: {unexpected[:5]})"
        )


# open_clip logs these through the root logger while it builds a model. clipkd says itself, more precisely,
# whether an encoder stayed random (after loading a checkpoint that open_clip never saw) and why a download
# failed, so they are held back - only inside clipkd's own model creation, nowhere else.
RANDOM_INIT_MESSAGE = "No pretrained weights loaded for model"
_HELD_BACK = (RANDOM_INIT_MESSAGE, "Failed to download weights for tag", "Failed initial config/weights load")
_OPEN_CLIP_LOGGERS = ("", "open_clip", "open_clip.factory")  # the root logger today; its own loggers later


class _HoldBack(logging.Filter):
    """Drops open_clip's records listed in ``_HELD_BACK`` and keeps their text in ``held``."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_HELD_BACK):
            self.held.append(message)
            return False
        return True


@contextlib.contextmanager
def _open_clip_messages_held() -> Iterator[list[str]]:
    """While open_clip builds a model: its random-initialisation and download-failure messages are held back."""
    hold = _HoldBack()
    loggers = [logging.getLogger(name) for name in _OPEN_CLIP_LOGGERS]
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield hold.held
    finally:
        for logger in loggers:
            logger.removeFilter(hold)


def _causes(exc: Optional[BaseException]) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# huggingface_hub, httpx and requests errors meaning "no connection" (matched by class name: no hard imports)
_NETWORK_ERRORS = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "TransportError", "ConnectError",
                   "ConnectTimeout", "ReadTimeout", "Timeout", "ConnectionError")


def _unreachable(exc: BaseException) -> Optional[BaseException]:
    """The cause in ``exc``'s chain saying that the hub could not be reached (and no cached copy exists), or None."""
    for cause in _causes(exc):
        if isinstance(cause, (ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError)):
            return cause
        if any(cls.__name__ in _NETWORK_ERRORS for cls in type(cause).__mro__):
            return cause
    return None


def _why_unreachable(cause: BaseException) -> str:
    """Why the hub could not be reached, as messages say it."""
    from clipkd.models.shapes import _first_line, hub_offline

    return "HF_HUB_OFFLINE is set" if hub_offline() else _first_line(cause)


def _hub_unreachable(model: str, tag: Optional[str], cause: BaseException) -> HubUnreachable:
    why = _why_unreachable(cause)
    if tag:
        return HubUnreachable(
            f"cannot get the pretrained weights '{tag}' of {model}: the model hub is unreachable ({why}) and they "
            "are not in the local cache; download them once with network access, or pass a local checkpoint file "
            "instead (pretrained: /path/to/weights.safetensors)")
    return HubUnreachable(
        f"cannot load {model}: the model hub is unreachable ({why}) and the model is not in the local cache; "
        "download it once with network access, or use a local copy (local-dir:/path/to/folder, or the "
        "architecture's name or config file with pretrained: /path/to/weights.safetensors)")


BPE_VOCAB = 49408  # CLIP's BPE tokenizer: the vocabulary a text tower without hf_tokenizer_name must hold


def _tokenizer(name: str):
    """open_clip's tokenizer of model ``name``. For a config registered here (clipkd's own, or a JSON file) the
    config decides, never the name: without ``hf_tokenizer_name`` it is CLIP's BPE tokenizer, also for a name with
    "siglip" in it, which open_clip would otherwise give SigLIP's hub-only tokenizer."""
    text_cfg = open_clip.get_model_config(name).get("text_cfg", {}) if name in _PREPROCESS else {}
    if name not in _PREPROCESS or text_cfg.get("hf_tokenizer_name"):
        return open_clip.get_tokenizer(name)
    vocab = text_cfg.get("vocab_size", BPE_VOCAB)
    if vocab < BPE_VOCAB:
        raise ValueError(f"model config {name}: a text tower of {vocab} tokens needs its own tokenizer "
                         f"(text_cfg.hf_tokenizer_name); CLIP's BPE tokenizer has {BPE_VOCAB}")
    context = text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH)
    return open_clip.SimpleTokenizer(context_length=context, **text_cfg.get("tokenizer_kwargs", {}))


def _hub_tokenizer(model: str, name: str):
    """:func:`_tokenizer`, or :class:`~clipkd.errors.HubUnreachable` saying so when it must come from an unreachable
    hub (e.g. SigLIP 2's Gemma tokenizer) and is not cached."""
    try:
        return _tokenizer(name)
    except Exception as exc:
        cause = _unreachable(exc)
        if cause is None:
            raise
        source = (open_clip.get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
        why = _why_unreachable(cause)
        raise HubUnreachable(
            f"cannot load the tokenizer of {model}: it comes from the model hub{f' ({source})' if source else ''}, "
            "which is unreachable "
            f"({why}), and it is not in the local cache; download it once with network access, or use a local copy "
            "of the model with its tokenizer files (local-dir:/path/to/folder)") from exc


def create_open_clip_encoder(
    model: str,
    pretrained: Optional[str] = None,
    *,
    image_mean: Optional[Sequence[float]] = None,
    image_std: Optional[Sequence[float]] = None,
    aug_cfg: Optional[Mapping[str, Any]] = None,
    device: Union[str, torch.device] = "cpu",
    cache_dir: Optional[str] = None,
) -> OpenClipEncoder:
    """Build an open_clip model as a clipkd encoder.

    ``model`` is an open_clip model name (built-in, clipkd's tiny configs, ``hf-hub:``/``local-dir:``) or the
    path of a model-config JSON. ``pretrained`` is an open_clip pretrained tag (downloads from the hub), a
    checkpoint path in any layout :func:`read_state_dict` accepts, or ``None`` for random initialisation
    (``encoder.untrained`` then says "all weights"; this function logs nothing about it,
    :func:`clipkd.models.factory.create_encoder` warns). A tag (or ``hf-hub:`` model) that must come from an
    unreachable hub and is not cached raises :class:`~clipkd.errors.HubUnreachable`.
    """
    name = _resolve_model_name(model)
    pp = {**_PREPROCESS.get(name, {})}
    pp.update({k: v for k, v in (("mean", image_mean), ("std", image_std)) if v is not None})
    checkpoint = pretrained if pretrained and Path(pretrained).is_file() else None
    tag = None if checkpoint else pretrained
    if tag and not open_clip.get_pretrained_cfg(name, tag):
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"'{tag}' is neither a checkpoint file nor a pretrained tag of {name} (tags: {known})")
    from_source = name.startswith(("hf-hub:", "local-dir:"))  # its tokenizer comes with the model: loaded after it
    tokenizer = None if from_source else _hub_tokenizer(model, name)  # first: a hub-only one fails fast offline
    try:
        with _open_clip_messages_held() as held:
            oc_model, train_tf, val_tf = open_clip.create_model_and_transforms(
                name,
                pretrained=tag,
                image_mean=pp.get("mean"),
                image_std=pp.get("std"),
                image_interpolation=pp.get("interpolation"),
                image_resize_mode=pp.get("resize_mode"),
                aug_cfg=dict(aug_cfg) if aug_cfg else None,
                pretrained_text=False,
                cache_dir=cache_dir,
            )
    except Exception as exc:
        cause = _unreachable(exc)
        if cause is None:
            raise
        raise _hub_unreachable(model, tag, cause) from exc
    if checkpoint:
        load_weights(oc_model, checkpoint)
    encoder = OpenClipEncoder(oc_model, train_tf, val_tf, tokenizer or _hub_tokenizer(model, name), name=model)
    # Random when nothing was loaded: no checkpoint, no tag, and no weights from an hf-hub:/local-dir: source
    # (open_clip says so for those; without a schema the decision needs no message).
    said_random = any(m.startswith(RANDOM_INIT_MESSAGE) for m in held)
    if not checkpoint and (said_random or not (tag or from_source)):
        encoder.untrained = "all weights"
    return encoder.to(device)
