"""Teacher-embedding cache: the teacher's normalised embeddings per sample key, computed once.

With a frozen teacher and no augmentation, a sample's teacher embeddings never change, so training can
look them up instead of running the teacher every step. (Replaying random crops is not supported yet: the
config refuses a cache together with ``data.crop_scale``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

import torch
from safetensors.torch import load_file, save_file

from clipkd.models.encoders import Embeddings


class TeacherCache:
    """``key -> (image embedding, text embedding)`` plus the teacher's scale."""

    def __init__(self, keys: Sequence[str], img: torch.Tensor, txt: torch.Tensor, scale: float):
        if not (len(keys) == img.shape[0] == txt.shape[0]):
            raise ValueError("teacher cache: keys and embeddings differ in length")
        self.index = {k: i for i, k in enumerate(keys)}
        self.img, self.txt, self.scale = img, txt, float(scale)

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: Sequence[str], device: Union[str, torch.device] = "cpu") -> Embeddings:
        """The cached teacher embeddings of a batch, in batch order."""
        try:
            rows = torch.tensor([self.index[k] for k in keys])
        except KeyError as exc:
            raise KeyError(f"teacher cache has no entry for sample {exc.args[0]!r}: was it built for this data?") from None
        return Embeddings(self.img[rows].to(device), self.txt[rows].to(device),
                          torch.tensor(self.scale, device=device))

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        keys = sorted(self.index, key=self.index.get)
        save_file({"img": self.img.contiguous(), "txt": self.txt.contiguous()}, str(tmp),
                  metadata={"keys": json.dumps(keys), "scale": repr(self.scale)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TeacherCache":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        return cls(json.loads(meta["keys"]), tensors["img"], tensors["txt"], float(meta["scale"]))
