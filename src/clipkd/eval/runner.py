"""Run configured benchmarks on an encoder and write clip_benchmark-style result JSONs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import DataLoader

from clipkd.config import BenchmarkSpec
from clipkd.eval.datasets import load_classnames, load_templates, retrieval_dataset, zeroshot_dataset
from clipkd.eval.retrieval import evaluate_retrieval
from clipkd.eval.zeroshot import zeroshot_classifier, zeroshot_evaluate
from clipkd.models.encoders import ClipEncoder

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


class Benchmark:
    """A benchmark whose data is read once and evaluated as often as needed (e.g. every N training steps)."""

    def __init__(self, spec: BenchmarkSpec):
        self.spec = spec
        self._data = None

    @property
    def name(self) -> str:
        return self.spec.name

    def data(self):
        if self._data is None:
            s = self.spec
            if s.task == "zeroshot":
                self._data = zeroshot_dataset(s.format, s.path, root=s.root, image_key=s.image_key,
                                              label_key=s.label_key, separator=s.separator)
            else:
                self._data = retrieval_dataset(s.format, s.path, root=s.root, split=s.split, image_key=s.image_key,
                                               caption_key=s.caption_key, separator=s.separator)
        return self._data

    def evaluate(self, encoder: ClipEncoder, device: Union[str, torch.device] = "cpu",
                 cache_dir: Optional[Union[str, Path]] = None, model_key: Optional[str] = None) -> dict[str, float]:
        """Metrics of ``encoder`` on this benchmark."""
        s = self.spec
        if s.task == "retrieval":
            return evaluate_retrieval(encoder, self.data(), device, s.batch_size, s.workers, s.first_caption_only)
        data = self.data()
        classnames = load_classnames(s.classnames, data.classnames)
        if max(data.targets) >= len(classnames):
            raise ValueError(f"benchmark '{s.name}': labels go up to {max(data.targets)} but there are "
                             f"only {len(classnames)} class names")
        classifier = zeroshot_classifier(encoder, classnames, load_templates(s.templates), device,
                                         cache_dir=cache_dir, model_key=model_key)
        loader = DataLoader(data.dataset(encoder.preprocess_val), batch_size=s.batch_size, num_workers=s.workers)
        return zeroshot_evaluate(encoder, loader, classifier, device)

    def result(self, metrics: dict[str, float], model: str, pretrained: Optional[str]) -> dict:
        """The clip_benchmark JSON layout."""
        out = {"dataset": self.spec.name, "model": model, "pretrained": pretrained, "task": TASKS[self.spec.task],
               "metrics": metrics, "language": "en"}
        if self.spec.task == "retrieval":
            out["protocol"] = "first_caption_only (official CLIP-KD code)" if self.spec.first_caption_only \
                else "all_captions (standard)"
        return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def write_result(result: dict, out_dir: Union[str, Path]) -> Path:
    """Write one result JSON as ``<dataset>__<model>.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    label = result["model"] + (f"_{result['pretrained']}" if result.get("pretrained") else "")
    path = out / f"{_slug(result['dataset'])}__{_slug(label)[-80:]}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


class BenchmarkHook:
    """Training eval hook: run a benchmark on the student every ``eval.every_steps`` and at the end."""

    def __init__(self, spec: BenchmarkSpec, device: Union[str, torch.device]):
        self.benchmark, self.device = Benchmark(spec), device
        self.name = spec.name

    def __call__(self, distiller, step: int) -> dict[str, float]:
        return self.benchmark.evaluate(distiller.student.encoder, self.device)
