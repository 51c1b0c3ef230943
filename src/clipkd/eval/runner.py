"""Run configured benchmarks on an encoder and write clip_benchmark-style result JSONs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.data import DataLoader

from clipkd.config import BenchmarkSpec
from clipkd.eval.datasets import Skipped, account_unusable, collate_usable, retrieval_dataset, zeroshot_dataset
from clipkd.eval.prompts import load_classnames, load_templates, template_text
from clipkd.eval.retrieval import evaluate_retrieval
from clipkd.eval.zeroshot import embed_images, zeroshot_classifier, zeroshot_metrics
from clipkd.models.encoders import ClipEncoder, eval_mode

log = logging.getLogger(__name__)

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


class Benchmark:
    """A benchmark whose data is read once and evaluated as often as needed (e.g. every N training steps).

    Images that cannot be used are skipped and counted (``skipped`` after :meth:`evaluate`, in the result JSON,
    and one warning the first time); the metrics are those of the usable images.
    """

    def __init__(self, spec: BenchmarkSpec):
        self.spec = spec
        self._data = None
        self._prompts: Optional[tuple[list[str], list]] = None
        self.skipped: Optional[Skipped] = None  # after evaluate(): the unusable images
        self.images: Optional[int] = None  # after evaluate(): the images the metrics are computed on
        self._warned = False

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

    def prompts(self) -> tuple[list[str], list]:
        """Zero-shot: the class names and templates used (read once, checked against the labels)."""
        if self._prompts is None:
            s, data = self.spec, self.data()
            classnames = load_classnames(s.classnames, data.classnames)
            if data.targets and max(data.targets) >= len(classnames):
                raise ValueError(f"benchmark '{s.name}': labels go up to {max(data.targets)} but there are "
                                 f"only {len(classnames)} class names")
            self._prompts = classnames, load_templates(s.templates)
        return self._prompts

    def prepare(self) -> None:
        """Read the data index, class names and templates now, so that their errors come before a model is built."""
        self.data()
        if self.spec.task == "zeroshot":
            self.prompts()

    def evaluate(self, encoder: ClipEncoder, device: Union[str, torch.device] = "cpu",
                 cache_dir: Optional[Union[str, Path]] = None, model_key: Optional[str] = None) -> dict[str, float]:
        """Metrics of ``encoder`` on the usable images of this benchmark."""
        s, data = self.spec, self.data()
        what = f"benchmark '{s.name}'"
        unusable: list[tuple[int, str]] = []
        if s.task == "retrieval":
            metrics = evaluate_retrieval(encoder, data, device, s.batch_size, s.workers, s.first_caption_only,
                                         unusable=unusable, name=what)
            self.skipped = account_unusable(what, data.names, data.skipped, unusable)
        else:
            classnames, templates = self.prompts()
            classifier = zeroshot_classifier(encoder, classnames, templates, device, cache_dir=cache_dir,
                                             model_key=model_key)
            loader = DataLoader(data.dataset(encoder.preprocess_val, skip_unusable=True), batch_size=s.batch_size,
                                num_workers=s.workers, collate_fn=collate_usable)
            with eval_mode(encoder):
                feats, targets = embed_images(encoder, loader, device, unusable)
            self.skipped = account_unusable(what, data.names, data.skipped, unusable)  # raises if none is usable
            metrics = zeroshot_metrics(feats, targets, classifier)
        self.images = len(data.names) - len(unusable)
        if self.skipped.count and not self._warned:
            log.warning("%s: skipped %d of %d images (%s); the metrics are those of the other %d", what,
                        self.skipped.count, self.images + self.skipped.count, self.skipped.describe(), self.images)
            self._warned = True
        return metrics

    def result(self, metrics: dict[str, float], model: str, pretrained: Optional[str],
               side: Optional[str] = None) -> dict:
        """The clip_benchmark JSON layout, plus what was used: class names and templates (zero-shot), the
        protocol (retrieval), the number of images evaluated and the skipped ones (``side``: of a clipkd run)."""
        s = self.spec
        out = {"dataset": s.name, "model": model, "pretrained": pretrained, "task": TASKS[s.task],
               "metrics": metrics, "language": "en"}
        if side is not None:
            out["side"] = side
        if s.task == "retrieval":
            out["protocol"] = "first_caption_only (official CLIP-KD code)" if s.first_caption_only \
                else "all_captions (standard)"
            if s.format == "karpathy":
                out["split"] = s.split
        else:
            classnames, templates = self.prompts()
            out["classnames"] = list(classnames)
            out["templates"] = [template_text(t) for t in templates]
        out["images"] = self.images
        out["skipped"] = (self.skipped or Skipped()).to_dict()
        return out


TASK_SHORT = {"zeroshot_classification": "zeroshot", "zeroshot_retrieval": "retrieval",
              "distillation_diagnostics": "diagnostics"}


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.")[:limit].strip("-.") or "x"


def _model_short(model: str) -> str:
    """``ViT-B-32`` stays; a model-config path or ``hf-hub:org/name`` becomes its last part without suffix."""
    last = re.split(r"[/\\:]", model.rstrip("/\\"))[-1]
    return last[:-5] if last.lower().endswith(".json") else last


def _absolute(value: Optional[str]) -> Optional[str]:
    return os.path.abspath(value) if value and os.path.exists(value) else value


def model_identity(result: dict) -> str:
    """8 hex digits of what was evaluated: the model, its weights (pretrained tag, or checkpoint path made
    absolute), the side of a run and the checkpoint (diagnostics)."""
    identity = {"model": _absolute(result["model"]) if str(result["model"]).endswith(".json") else result["model"],
                "pretrained": _absolute(result.get("pretrained")), "side": result.get("side"),
                "checkpoint": _absolute(result.get("checkpoint"))}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def result_name(result: dict, short: Optional[str] = None) -> str:
    """``<task>_<benchmark>_<model-short>-<8 hex of the model identity>.json`` (``short`` replaces the model's
    short name; the benchmark part is left out when it only repeats the task, as for diagnostics)."""
    task = TASK_SHORT.get(result["task"], _slug(result["task"]))
    dataset = _slug(result["dataset"])
    parts = [task] if dataset == task else [task, dataset]
    return "_".join(parts + [f"{_slug(short or _model_short(result['model']))}-{model_identity(result)}"]) + ".json"


def write_result(result: dict, out_dir: Union[str, Path], short: Optional[str] = None) -> Path:
    """Write one result JSON in ``out_dir``, named by :func:`result_name`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(result, short)
    path.write_text(json.dumps(result, indent=2))
    return path


class BenchmarkHook:
    """Training eval hook: run a benchmark on the student every ``eval.every_steps`` and at the end."""

    def __init__(self, spec: BenchmarkSpec, device: Union[str, torch.device]):
        self.benchmark, self.device = Benchmark(spec), device
        self.name = spec.name

    def __call__(self, distiller, step: int) -> dict[str, float]:
        return self.benchmark.evaluate(distiller.student.encoder, self.device)
